//! The admin service: accounts, projects, keys, grants, budgets and routing policies. Every admin write is an event appended to the log, and the call returns
//! only once the read models and the ledger have applied it (and this gateway's key cache has reloaded), so a
//! key it issues works on the very next request and a key it revokes fails on the next one.
//!
//! HTTP handlers and `lumina serve`'s first-start bootstrap both go through this service.

use std::sync::Arc;
use std::time::Duration;

use lumina_eventlog::consumer::has_applied;
use lumina_eventlog::{ConsumerWatch, EventLog, LogError, Projection};
use lumina_ledger::SpendScope;
use lumina_ledger::{Balance, Ledger};
use lumina_projector::policies::PolicyRow;
use lumina_projector::{AccountRow, AdminKeyRow, BudgetRow, KeyRow, ProjectRow, ReadModel};
use lumina_schemas::ids::new_id;
use lumina_schemas::money::MAX_ACCOUNT_CREDITS;
use lumina_schemas::payloads::{
    AccountOpened, AdminKeyCreated, AdminKeyRevoked, ApiKeyCreated, ApiKeyExpirySet, ApiKeyRevoked,
    BudgetRemoved, BudgetSet, CreditsGranted, LimitsChanged, PolicyActivated, PolicyPublished,
    ProjectArchived, ProjectCreated, ProjectRenamed,
};
use lumina_schemas::{Envelope, Event, NanoCredits, SYSTEM_ACCOUNT};

use crate::auth::{
    ADMIN_PREFIX_LEN, AdminRole, KeyCache, SecretError, generate_admin_key, generate_key,
};
use crate::metering::budget::{self, Period};
use crate::metering::credit::CreditBook;
use crate::metering::events::InboundApi;
use crate::routing::catalog::RoutePath;
use crate::routing::policy::Prefer;

/// Why an admin operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// An id named in the request does not exist.
    #[error("No {what} found with id '{id}'")]
    NotFound {
        /// What kind of thing.
        what: &'static str,
        /// The id asked for.
        id: String,
        /// The request field that named it.
        param: &'static str,
    },
    /// A field is invalid.
    #[error("{message}")]
    Invalid {
        /// What is wrong, for people.
        message: String,
        /// The offending field.
        param: &'static str,
    },
    /// The event could not be appended to the log.
    #[error("the event log cannot take writes: {0}")]
    Log(#[from] LogError),
    /// The read model did not apply the event in time; the write is durable and will apply.
    #[error(
        "the change was recorded but the read model did not apply it within {0:?}; retry the read shortly"
    )]
    NotApplied(Duration),
    /// The read model could not be queried.
    #[error("read model unavailable: {0}")]
    Db(#[from] sqlx::Error),
    /// No randomness for a key.
    #[error(transparent)]
    Secret(#[from] SecretError),
}

/// What a budget is set to.
#[derive(Debug, Clone)]
pub struct BudgetRequest {
    /// The most its scope may spend in a period.
    pub limit: NanoCredits,
    /// `day`, `week`, `month` or `total`.
    pub period: String,
    /// IANA time zone of its calendar; UTC when `None`.
    pub timezone: Option<String>,
    /// Use past which the crossing is recorded and clients are told what is left.
    pub soft_limit: Option<NanoCredits>,
}

/// What a new key needs.
#[derive(Debug, Clone, Default)]
pub struct KeyRequest {
    /// Owning account.
    pub account_id: String,
    /// Display name.
    pub name: String,
    /// Project; the account's default project when `None`.
    pub project_id: Option<String>,
    /// Requests per minute.
    pub rpm: Option<i64>,
    /// Tokens per minute.
    pub tpm: Option<i64>,
    /// Keep prompts and answers for eval datasets.
    pub store_content: bool,
    /// Default routing preference of its requests.
    pub routing_prefer: Option<Prefer>,
    /// Refuse it Model Fusion.
    pub fusion_barred: bool,
    /// When it stops authenticating, µs since the epoch.
    pub expires_at: Option<i64>,
    /// The paths it may be routed to (`fast`, `balanced`, `reasoning`, `fusion`,
    /// `embeddings`); `None`: all.
    pub paths: Option<Vec<String>>,
    /// The inbound APIs it may call (`chat_completions`, `messages`, `responses`,
    /// `embeddings`); `None`: all.
    pub surfaces: Option<Vec<String>>,
    /// It reads usage and requests but makes no completion.
    pub read_only: bool,
    /// Its requests in flight at once on one gateway.
    pub max_parallel_requests: Option<i64>,
}

/// `names`, each checked by `known`: a non-empty list without repeats.
fn valid_names(
    names: Option<Vec<String>>,
    known: impl Fn(&str) -> bool,
    accepted: &str,
    param: &'static str,
) -> Result<Option<Vec<String>>, AdminError> {
    let Some(names) = names else {
        return Ok(None);
    };
    if names.is_empty() {
        return Err(AdminError::Invalid {
            message: format!("'{param}' must name at least one of {accepted}, or be left out"),
            param,
        });
    }
    for (i, name) in names.iter().enumerate() {
        if !known(name) || names[..i].contains(name) {
            return Err(AdminError::Invalid {
                message: format!(
                    "'{param}[{i}]' is '{name}': expected one of {accepted}, each once"
                ),
                param,
            });
        }
    }
    Ok(Some(names))
}

/// The controls of a new key, checked: its expiry in the future, known paths and surfaces, a
/// positive parallel limit.
fn valid_controls(request: &KeyRequest) -> Result<(), AdminError> {
    if request
        .expires_at
        .is_some_and(|at| at <= lumina_schemas::now_micros())
    {
        return Err(AdminError::Invalid {
            message: "'expires_at' must be in the future".into(),
            param: "expires_at",
        });
    }
    valid_limit(request.max_parallel_requests, "max_parallel_requests")?;
    Ok(())
}

/// Issues admin events and waits for the read model to apply them.
#[derive(Clone)]
pub struct Admin {
    /// The admin key its events name as the one that made each change.
    actor: Option<Arc<str>>,
    log: EventLog,
    read_model: ReadModel,
    ledger: Ledger,
    keys: Arc<KeyCache>,
    credits: Arc<CreditBook>,
    consumers: Vec<ConsumerWatch>,
    remote_consumers: bool,
    instance: String,
    apply_timeout: Duration,
}

const MAX_NAME_LEN: usize = 256;

fn valid_name(name: &str, param: &'static str) -> Result<String, AdminError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME_LEN {
        return Err(AdminError::Invalid {
            message: format!("'{param}' must be 1 to {MAX_NAME_LEN} characters"),
            param,
        });
    }
    Ok(name.to_string())
}

fn valid_limit(limit: Option<i64>, param: &'static str) -> Result<Option<i64>, AdminError> {
    match limit {
        Some(n) if n <= 0 => Err(AdminError::Invalid {
            message: format!("'{param}' must be a positive integer"),
            param,
        }),
        Some(n) if n > i64::from(u32::MAX) => Err(AdminError::Invalid {
            message: format!("'{param}' must be at most {} per minute", u32::MAX),
            param,
        }),
        other => Ok(other),
    }
}

/// Refuses a grant that would take an account's granted credits past
/// [`MAX_ACCOUNT_CREDITS`], the bound that keeps every balance far inside an `i64`.
fn within_account_limit(
    granted: NanoCredits,
    amount: NanoCredits,
    param: &'static str,
) -> Result<(), AdminError> {
    match granted.checked_add(amount) {
        Some(total) if total <= MAX_ACCOUNT_CREDITS => Ok(()),
        _ => Err(AdminError::Invalid {
            message: format!(
                "'{param}' would take the account's granted credits to more than {MAX_ACCOUNT_CREDITS}, the most an account can hold (it has {granted})."
            ),
            param,
        }),
    }
}

impl Admin {
    /// An admin service writing to `log`, reading `read_model` and `ledger`, and waiting on
    /// `consumers` (those consuming `log` in this process) before it answers.
    pub fn new(
        log: EventLog,
        read_model: ReadModel,
        ledger: Ledger,
        keys: Arc<KeyCache>,
        credits: Arc<CreditBook>,
        consumers: Vec<ConsumerWatch>,
        instance: impl Into<String>,
    ) -> Admin {
        Admin {
            actor: None,
            log,
            read_model,
            ledger,
            keys,
            credits,
            consumers,
            remote_consumers: false,
            instance: instance.into(),
            apply_timeout: Duration::from_secs(10),
        }
    }

    /// Distributed mode: the projector and the ledger run elsewhere, reading the shipped topic;
    /// a write waits until the shared database shows each of them applied its events.
    pub fn with_remote_consumers(mut self) -> Admin {
        self.remote_consumers = true;
        self
    }

    /// How long a write waits for the consumers before answering 503 (default 10 s).
    pub fn with_apply_timeout(mut self, timeout: Duration) -> Admin {
        self.apply_timeout = timeout;
        self
    }

    /// This service acting for admin key `admin_key_id`: its events name that key.
    pub fn acting_as(&self, admin_key_id: &str) -> Admin {
        Admin {
            actor: Some(admin_key_id.into()),
            ..self.clone()
        }
    }

    fn actor(&self) -> Option<String> {
        self.actor.as_deref().map(str::to_string)
    }

    /// Issues an admin key with `role`; returns its row and the key itself, shown only once.
    pub async fn create_admin_key(
        &self,
        name: &str,
        role: &str,
    ) -> Result<(AdminKeyRow, String), AdminError> {
        let name = valid_name(name, "name")?;
        let Some(role) = AdminRole::parse(role) else {
            return Err(AdminError::Invalid {
                message: format!("'role' is '{role}': expected owner, operator, finance or viewer"),
                param: "role",
            });
        };
        let key = generate_admin_key()?;
        let key_id = new_id("adm");
        let event = Event::new(
            self.envelope(SYSTEM_ACCOUNT),
            AdminKeyCreated {
                key_id: key_id.clone(),
                name,
                role: role.as_str().into(),
                key_hash: hex::encode(self.keys.secret().hash(&key)),
                key_prefix: key.chars().take(ADMIN_PREFIX_LEN).collect(),
                admin_key_id: self.actor(),
            },
        );
        self.record(&[event]).await?;
        self.refresh_keys().await?;
        Ok((self.admin_key(&key_id).await?, key))
    }

    /// One admin key, or `NotFound`.
    pub async fn admin_key(&self, key_id: &str) -> Result<AdminKeyRow, AdminError> {
        self.read_model
            .admin_key(key_id)
            .await?
            .ok_or_else(|| AdminError::NotFound {
                what: "admin key",
                id: key_id.to_string(),
                param: "id",
            })
    }

    /// Every admin key issued through the API, oldest first (the bootstrap key is not one).
    pub async fn admin_keys(&self) -> Result<Vec<AdminKeyRow>, AdminError> {
        Ok(self.read_model.admin_keys().await?)
    }

    /// Revokes an admin key: it fails from the next request on.
    pub async fn revoke_admin_key(&self, key_id: &str) -> Result<AdminKeyRow, AdminError> {
        let key = self.admin_key(key_id).await?;
        if key.status == "active" {
            let event = Event::new(
                self.envelope(SYSTEM_ACCOUNT),
                AdminKeyRevoked {
                    key_id: key.id.clone(),
                    admin_key_id: self.actor(),
                },
            );
            self.record(&[event]).await?;
            self.refresh_keys().await?;
        }
        self.admin_key(key_id).await
    }

    /// The read model this service answers from.
    pub fn read_model(&self) -> &ReadModel {
        &self.read_model
    }

    fn envelope(&self, account_id: &str) -> Envelope {
        Envelope::new(account_id, self.instance.as_str())
    }

    /// Appends `events` in order, then waits until every consumer has applied the last one:
    /// admin writes, and customer writes that must be readable once answered (eval results).
    pub async fn record(&self, events: &[Event]) -> Result<(), AdminError> {
        let mut last = 0;
        for event in events {
            last = self.log.append_event(event).await?;
        }
        let deadline = tokio::time::Instant::now() + self.apply_timeout;
        if self.remote_consumers {
            return self.wait_remote(events, deadline).await;
        }
        for consumer in &self.consumers {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if !consumer.wait_applied(last, left).await {
                return Err(AdminError::NotApplied(self.apply_timeout));
            }
        }
        Ok(())
    }

    /// Polls the shared database until the projector and the ledger (each for the events it
    /// handles) recorded every one of `events` as applied.
    async fn wait_remote(
        &self,
        events: &[Event],
        deadline: tokio::time::Instant,
    ) -> Result<(), AdminError> {
        let projector = lumina_projector::ReadModelProjection;
        let ledger = lumina_ledger::LedgerProjection;
        let db = self.read_model.database();
        for event in events {
            let id = &event.envelope.event_id;
            let kind = event.event_type();
            let wanted = [
                (projector.name(), projector.handles(kind)),
                (ledger.name(), ledger.handles(kind)),
            ];
            for (consumer, handles) in wanted {
                if !handles {
                    continue;
                }
                loop {
                    if has_applied(db, consumer, id).await? {
                        break;
                    }
                    if tokio::time::Instant::now() >= deadline {
                        return Err(AdminError::NotApplied(self.apply_timeout));
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
        Ok(())
    }

    /// The ledger.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// The ledger balance of an account.
    pub async fn balance(&self, account_id: &str) -> Result<Balance, AdminError> {
        Ok(self.ledger.balance(account_id).await?)
    }

    async fn refresh_keys(&self) -> Result<(), AdminError> {
        self.keys.refresh(&self.read_model).await?;
        Ok(())
    }

    /// Opens an account with its default project and, when `credits` is positive, grants them.
    pub async fn open_account(
        &self,
        name: &str,
        credits: NanoCredits,
        granted_by: &str,
    ) -> Result<AccountRow, AdminError> {
        let name = valid_name(name, "name")?;
        within_account_limit(NanoCredits::ZERO, credits, "credits")?;
        let account_id = new_id("acct");
        let mut envelope = self.envelope(&account_id);
        let project_id = new_id("proj");
        envelope.project_id = Some(project_id.clone());
        let mut events = vec![Event::new(
            envelope,
            AccountOpened {
                admin_key_id: self.actor(),
                name,
                default_project_id: project_id,
                default_project_name: "Default".into(),
            },
        )];
        if credits.is_positive() {
            events.push(Event::new(
                self.envelope(&account_id),
                CreditsGranted {
                    amount_nano: credits.0,
                    reason: Some("initial credits".into()),
                    granted_by: granted_by.into(),
                },
            ));
        }
        self.record(&events).await?;
        self.refresh_credits().await?;
        self.account(&account_id).await
    }

    async fn refresh_credits(&self) -> Result<(), AdminError> {
        self.credits.refresh_budgets(&self.read_model).await?;
        self.credits.refresh(&self.ledger).await?;
        Ok(())
    }

    /// One account, or `NotFound`.
    pub async fn account(&self, account_id: &str) -> Result<AccountRow, AdminError> {
        self.read_model
            .account(account_id)
            .await?
            .ok_or_else(|| AdminError::NotFound {
                what: "account",
                id: account_id.to_string(),
                param: "account_id",
            })
    }

    /// Creates a project in an existing account.
    pub async fn create_project(
        &self,
        account_id: &str,
        name: &str,
    ) -> Result<ProjectRow, AdminError> {
        let name = valid_name(name, "name")?;
        let account = self.account(account_id).await?;
        let project_id = new_id("proj");
        let mut envelope = self.envelope(&account.id);
        envelope.project_id = Some(project_id.clone());
        let event = Event::new(
            envelope,
            ProjectCreated {
                admin_key_id: self.actor(),
                project_id: project_id.clone(),
                name,
            },
        );
        self.record(&[event]).await?;
        self.project(&project_id).await
    }

    /// One project, or `NotFound`.
    pub async fn project(&self, project_id: &str) -> Result<ProjectRow, AdminError> {
        self.read_model
            .project(project_id)
            .await?
            .ok_or_else(|| AdminError::NotFound {
                what: "project",
                id: project_id.to_string(),
                param: "project_id",
            })
    }

    /// The projects of an existing account, oldest (the default one) first.
    pub async fn projects(&self, account_id: &str) -> Result<Vec<ProjectRow>, AdminError> {
        self.account(account_id).await?;
        Ok(self.read_model.projects(account_id).await?)
    }

    /// Renames a project.
    pub async fn rename_project(
        &self,
        project_id: &str,
        name: &str,
    ) -> Result<ProjectRow, AdminError> {
        let name = valid_name(name, "name")?;
        let project = self.project(project_id).await?;
        let mut envelope = self.envelope(&project.account_id);
        envelope.project_id = Some(project.id.clone());
        let event = Event::new(
            envelope,
            ProjectRenamed {
                admin_key_id: self.actor(),
                project_id: project.id.clone(),
                name,
            },
        );
        self.record(&[event]).await?;
        self.project(project_id).await
    }

    /// Archives a project (not the account's default one): its keys stop authenticating and
    /// no key can be issued in it. Archiving an archived project changes nothing.
    pub async fn archive_project(&self, project_id: &str) -> Result<ProjectRow, AdminError> {
        let project = self.project(project_id).await?;
        let account = self.account(&project.account_id).await?;
        if account.default_project_id == project.id {
            return Err(AdminError::Invalid {
                message: format!(
                    "'{project_id}' is the account's default project, which cannot be archived"
                ),
                param: "project_id",
            });
        }
        if project.archived_at.is_none() {
            let mut envelope = self.envelope(&project.account_id);
            envelope.project_id = Some(project.id.clone());
            let event = Event::new(
                envelope,
                ProjectArchived {
                    admin_key_id: self.actor(),
                    project_id: project.id.clone(),
                },
            );
            self.record(&[event]).await?;
            self.refresh_keys().await?;
        }
        self.project(project_id).await
    }

    /// The account a budget on `scope_id` belongs to, and the project and key it names in its
    /// events' envelope; `NotFound` for an unknown id.
    async fn budget_owner(
        &self,
        scope: SpendScope,
        scope_id: &str,
    ) -> Result<(String, Option<String>, Option<String>), AdminError> {
        Ok(match scope {
            SpendScope::Account => (self.account(scope_id).await?.id, None, None),
            SpendScope::Project => {
                let project = self.project(scope_id).await?;
                (project.account_id, Some(project.id), None)
            }
            SpendScope::Key => {
                let key = self.key(scope_id).await?;
                (key.account_id, Some(key.project_id), Some(key.id))
            }
        })
    }

    /// Sets a budget on an account, a project or a key: a new one, or with `budget_id` the
    /// replacement of one in force on the same scope. In force on this gateway on return.
    pub async fn set_budget(
        &self,
        scope: SpendScope,
        scope_id: &str,
        budget_id: Option<&str>,
        request: BudgetRequest,
    ) -> Result<BudgetRow, AdminError> {
        if Period::parse(&request.period).is_none() {
            return Err(AdminError::Invalid {
                message: format!(
                    "'period' is '{}': expected day, week, month or total",
                    request.period
                ),
                param: "period",
            });
        }
        let timezone = request.timezone.unwrap_or_else(|| "UTC".into());
        if budget::timezone(&timezone).is_none() {
            return Err(AdminError::Invalid {
                message: format!(
                    "'timezone' is '{timezone}': expected an IANA time zone such as Europe/Paris or UTC"
                ),
                param: "timezone",
            });
        }
        if request.limit > MAX_ACCOUNT_CREDITS {
            return Err(AdminError::Invalid {
                message: format!(
                    "'limit' is more than {MAX_ACCOUNT_CREDITS}, the most an account can hold"
                ),
                param: "limit",
            });
        }
        if let Some(soft) = request.soft_limit
            && soft > request.limit
        {
            return Err(AdminError::Invalid {
                message: format!(
                    "'soft_limit' ({soft}) must not be more than 'limit' ({})",
                    request.limit
                ),
                param: "soft_limit",
            });
        }
        let (account_id, project_id, key_id) = self.budget_owner(scope, scope_id).await?;
        let budget_id = match budget_id {
            Some(id) => id.to_string(),
            None => new_id("bud"),
        };
        let mut envelope = self.envelope(&account_id);
        envelope.project_id = project_id;
        envelope.api_key_id = key_id;
        let event = Event::new(
            envelope,
            BudgetSet {
                admin_key_id: self.actor(),
                budget_id: budget_id.clone(),
                scope: scope.as_str().into(),
                scope_id: scope_id.to_string(),
                limit_nano: request.limit.0,
                period: request.period,
                timezone,
                soft_limit_nano: request.soft_limit.map(|s| s.0),
            },
        );
        self.record(&[event]).await?;
        self.refresh_credits().await?;
        self.budget(&budget_id).await
    }

    /// Replaces a budget in force with `request`, on the same scope.
    pub async fn update_budget(
        &self,
        budget_id: &str,
        request: BudgetRequest,
    ) -> Result<BudgetRow, AdminError> {
        let budget = self.budget(budget_id).await?;
        let scope = SpendScope::parse(&budget.scope).ok_or_else(|| AdminError::NotFound {
            what: "budget",
            id: budget_id.to_string(),
            param: "budget_id",
        })?;
        self.set_budget(scope, &budget.scope_id, Some(&budget.id), request)
            .await
    }

    /// Removes a budget; requests are no longer held against it from the return on.
    pub async fn remove_budget(&self, budget_id: &str) -> Result<BudgetRow, AdminError> {
        let budget = self.budget(budget_id).await?;
        let event = Event::new(
            self.envelope(&budget.account_id),
            BudgetRemoved {
                admin_key_id: self.actor(),
                budget_id: budget.id.clone(),
            },
        );
        self.record(&[event]).await?;
        self.refresh_credits().await?;
        Ok(budget)
    }

    /// One budget in force, or `NotFound`.
    pub async fn budget(&self, budget_id: &str) -> Result<BudgetRow, AdminError> {
        self.read_model
            .budget(budget_id)
            .await?
            .ok_or_else(|| AdminError::NotFound {
                what: "budget",
                id: budget_id.to_string(),
                param: "budget_id",
            })
    }

    /// The budgets in force on `scope_id` (an existing account, project or key).
    pub async fn budgets_on(
        &self,
        scope: SpendScope,
        scope_id: &str,
    ) -> Result<Vec<BudgetRow>, AdminError> {
        let (account_id, ..) = self.budget_owner(scope, scope_id).await?;
        let mut budgets = self.read_model.budgets(Some(&account_id)).await?;
        budgets.retain(|b| b.scope == scope.as_str() && b.scope_id == scope_id);
        Ok(budgets)
    }

    /// Grants `amount` (positive) to an existing account; returns the account afterwards.
    pub async fn grant_credits(
        &self,
        account_id: &str,
        amount: NanoCredits,
        reason: Option<String>,
        granted_by: &str,
    ) -> Result<AccountRow, AdminError> {
        if !amount.is_positive() {
            return Err(AdminError::Invalid {
                message: "'amount' must be a positive number of credits".into(),
                param: "amount",
            });
        }
        let account = self.account(account_id).await?;
        within_account_limit(NanoCredits(account.granted_nano), amount, "amount")?;
        let event = Event::new(
            self.envelope(account_id),
            CreditsGranted {
                amount_nano: amount.0,
                reason,
                granted_by: granted_by.into(),
            },
        );
        self.record(&[event]).await?;
        self.refresh_credits().await?;
        self.account(account_id).await
    }

    /// Issues a key; returns its row and the key itself, which is never available again.
    pub async fn create_key(&self, request: KeyRequest) -> Result<(KeyRow, String), AdminError> {
        let name = valid_name(&request.name, "name")?;
        let rpm = valid_limit(request.rpm, "rpm")?;
        let tpm = valid_limit(request.tpm, "tpm")?;
        valid_controls(&request)?;
        let paths = valid_names(
            request.paths.clone(),
            |n| RoutePath::parse(n).is_some(),
            "fast, balanced, reasoning, fusion, embeddings",
            "scopes.paths",
        )?;
        let surfaces = valid_names(
            request.surfaces.clone(),
            |n| InboundApi::parse(n).is_some(),
            "chat_completions, messages, responses, embeddings",
            "scopes.surfaces",
        )?;
        let account = self.account(&request.account_id).await?;
        let project_id = match request.project_id {
            None => account.default_project_id.clone(),
            Some(project_id) => match self.read_model.project(&project_id).await? {
                Some(p) if p.account_id == account.id && p.archived_at.is_some() => {
                    return Err(AdminError::Invalid {
                        message: format!("project '{project_id}' is archived"),
                        param: "project_id",
                    });
                }
                Some(p) if p.account_id == account.id => p.id,
                _ => {
                    return Err(AdminError::NotFound {
                        what: "project",
                        id: project_id,
                        param: "project_id",
                    });
                }
            },
        };
        let new_key = generate_key(self.keys.secret())?;
        let key_id = new_id("key");
        let mut envelope = self.envelope(&account.id);
        envelope.project_id = Some(project_id);
        envelope.api_key_id = Some(key_id.clone());
        let event = Event::new(
            envelope,
            ApiKeyCreated {
                admin_key_id: self.actor(),
                key_id: key_id.clone(),
                name,
                key_hash: new_key.hash_hex,
                key_prefix: new_key.prefix,
                store_content: request.store_content,
                rpm,
                tpm,
                routing_prefer: request.routing_prefer.map(|p| p.as_str().to_string()),
                fusion_barred: request.fusion_barred,
                expires_at: request.expires_at,
                paths,
                surfaces,
                read_only: request.read_only,
                max_parallel_requests: request.max_parallel_requests,
            },
        );
        self.record(&[event]).await?;
        self.refresh_keys().await?;
        let row = self.key(&key_id).await?;
        Ok((row, new_key.key))
    }

    /// Rotates a key: a new key with the same account, project, limits and scopes now, and the
    /// old one expiring after `overlap` (or at its own expiry, if sooner). Returns the new key's
    /// row and secret, and the old key's row.
    pub async fn rotate_key(
        &self,
        key_id: &str,
        overlap: Duration,
    ) -> Result<(KeyRow, String, KeyRow), AdminError> {
        let old = self.key(key_id).await?;
        if !old.is_active() {
            return Err(AdminError::Invalid {
                message: format!(
                    "key '{key_id}' is {}; only an active key rotates",
                    old.status
                ),
                param: "id",
            });
        }
        if old
            .expires_at
            .is_some_and(|at| at <= lumina_schemas::now_micros())
        {
            return Err(AdminError::Invalid {
                message: format!("key '{key_id}' has expired; issue a new key instead"),
                param: "id",
            });
        }
        let overlap_us = i64::try_from(overlap.as_micros()).unwrap_or(i64::MAX);
        let ends = lumina_schemas::now_micros().saturating_add(overlap_us);
        let (new, key) = self
            .create_key(KeyRequest {
                account_id: old.account_id.clone(),
                name: old.name.clone(),
                project_id: Some(old.project_id.clone()),
                rpm: old.rpm,
                tpm: old.tpm,
                store_content: old.store_content,
                routing_prefer: old.routing_prefer.as_deref().and_then(Prefer::parse),
                fusion_barred: old.fusion_barred,
                expires_at: old.expires_at,
                paths: old.paths.clone(),
                surfaces: old.surfaces.clone(),
                read_only: old.read_only,
                max_parallel_requests: old.max_parallel_requests,
            })
            .await?;
        let mut envelope = self.envelope(&old.account_id);
        envelope.project_id = Some(old.project_id.clone());
        envelope.api_key_id = Some(old.id.clone());
        let event = Event::new(
            envelope,
            ApiKeyExpirySet {
                admin_key_id: self.actor(),
                key_id: old.id.clone(),
                expires_at: old.expires_at.map_or(ends, |at| at.min(ends)),
                replaced_by: Some(new.id.clone()),
            },
        );
        self.record(&[event]).await?;
        self.refresh_keys().await?;
        Ok((new, key, self.key(key_id).await?))
    }

    /// One key, or `NotFound`.
    pub async fn key(&self, key_id: &str) -> Result<KeyRow, AdminError> {
        self.read_model
            .key(key_id)
            .await?
            .ok_or_else(|| AdminError::NotFound {
                what: "API key",
                id: key_id.to_string(),
                param: "id",
            })
    }

    /// Keys of one account (which must exist) or of all accounts.
    pub async fn keys(&self, account_id: Option<&str>) -> Result<Vec<KeyRow>, AdminError> {
        if let Some(account_id) = account_id {
            self.account(account_id).await?;
        }
        Ok(self.read_model.keys(account_id).await?)
    }

    /// Revokes a key; revoking a revoked key changes nothing and is not an error.
    pub async fn revoke_key(&self, key_id: &str) -> Result<KeyRow, AdminError> {
        let key = self.key(key_id).await?;
        if key.is_active() {
            let mut envelope = self.envelope(&key.account_id);
            envelope.project_id = Some(key.project_id.clone());
            envelope.api_key_id = Some(key.id.clone());
            let event = Event::new(
                envelope,
                ApiKeyRevoked {
                    admin_key_id: self.actor(),
                    key_id: key.id.clone(),
                    reason: None,
                },
            );
            self.record(&[event]).await?;
        }
        self.refresh_keys().await?;
        self.key(key_id).await
    }

    /// Sets a key's limits (`None` removes one); answers once the change applies.
    pub async fn change_limits(
        &self,
        key_id: &str,
        rpm: Option<i64>,
        tpm: Option<i64>,
    ) -> Result<KeyRow, AdminError> {
        let rpm = valid_limit(rpm, "rpm")?;
        let tpm = valid_limit(tpm, "tpm")?;
        let key = self.key(key_id).await?;
        let mut envelope = self.envelope(&key.account_id);
        envelope.project_id = Some(key.project_id.clone());
        envelope.api_key_id = Some(key.id.clone());
        let event = Event::new(
            envelope,
            LimitsChanged {
                admin_key_id: self.actor(),
                key_id: key.id.clone(),
                rpm,
                tpm,
            },
        );
        self.record(&[event]).await?;
        self.refresh_keys().await?;
        self.key(key_id).await
    }
}

impl Admin {
    /// Records `snapshot_json` (a policy document, already validated) as `version` and makes it
    /// the active policy; a version must be higher than every one published before.
    pub async fn publish_policy(
        &self,
        version: i64,
        snapshot_json: String,
        reason: &str,
    ) -> Result<PolicyRow, AdminError> {
        if let Some(latest) = self.read_model.latest_policy_version().await?
            && version <= latest
        {
            return Err(AdminError::Invalid {
                message: format!(
                    "'version' must be higher than every published policy's (the latest is {latest}); got {version}"
                ),
                param: "version",
            });
        }
        let event = Event::new(
            self.envelope(SYSTEM_ACCOUNT),
            PolicyPublished {
                admin_key_id: self.actor(),
                policy_version: version,
                snapshot_json,
                reason: reason.to_string(),
            },
        );
        self.record(&[event]).await?;
        self.policy(version).await
    }

    /// Makes the published policy `version` the active one again.
    pub async fn activate_policy(
        &self,
        version: i64,
        reason: &str,
    ) -> Result<PolicyRow, AdminError> {
        self.policy(version).await?;
        let event = Event::new(
            self.envelope(SYSTEM_ACCOUNT),
            PolicyActivated {
                admin_key_id: self.actor(),
                policy_version: version,
                reason: reason.to_string(),
            },
        );
        self.record(&[event]).await?;
        self.policy(version).await
    }

    /// The published policy `version`.
    pub async fn policy(&self, version: i64) -> Result<PolicyRow, AdminError> {
        self.read_model
            .policy(version)
            .await?
            .ok_or_else(|| AdminError::NotFound {
                what: "policy",
                id: version.to_string(),
                param: "version",
            })
    }

    /// Every published policy, newest first.
    pub async fn policies(&self) -> Result<Vec<PolicyRow>, AdminError> {
        Ok(self.read_model.policies().await?)
    }
}
