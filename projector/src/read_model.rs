//! Read models of accounts, projects, credit grants and API keys.
//!
//! [`ReadModelProjection`] applies `AccountOpened`, the project events, `CreditsGranted`, the
//! key events, `LimitsChanged` and the budget events (and, through [`crate::policies`], the routing policies;
//! the request views in [`crate::requests`]; eval results in [`crate::eval_results`]);
//! [`ReadModel`] answers the queries of the admin API and
//! the gateway's key cache. Every column comes from an event (timestamps are `occurred_at`,
//! never the wall clock), so a rebuild produces identical rows.

use lumina_eventlog::consumer::reset_consumer;
use lumina_eventlog::{ApplyError, Database};
use lumina_schemas::money::MAX_ACCOUNT_CREDITS;
use lumina_schemas::{Event, EventType, Payload};
use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use crate::CONSUMER;

/// Applies account and key events to the read-model tables.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadModelProjection;

impl lumina_eventlog::Projection for ReadModelProjection {
    fn name(&self) -> &'static str {
        CONSUMER
    }

    fn handles(&self, event_type: EventType) -> bool {
        matches!(
            event_type,
            EventType::AccountOpened
                | EventType::ProjectCreated
                | EventType::ProjectRenamed
                | EventType::ProjectArchived
                | EventType::CreditsGranted
                | EventType::ApiKeyCreated
                | EventType::ApiKeyRevoked
                | EventType::ApiKeyExpirySet
                | EventType::LimitsChanged
                | EventType::BudgetSet
                | EventType::BudgetRemoved
                | EventType::BudgetThresholdCrossed
                | EventType::AdminKeyCreated
                | EventType::AdminKeyRevoked
                | EventType::RequestRouted
                | EventType::UpstreamAttempted
                | EventType::RequestSettled
                | EventType::FeedbackReceived
                | EventType::RequestContentRecorded
                | EventType::PolicyPublished
                | EventType::PolicyActivated
                | EventType::EvalCompleted
        )
    }

    async fn apply(&self, conn: &mut AnyConnection, event: &Event) -> Result<(), ApplyError> {
        self.apply_batch(conn, &[event]).await
    }

    async fn apply_batch(
        &self,
        conn: &mut AnyConnection,
        events: &[&Event],
    ) -> Result<(), ApplyError> {
        for event in events {
            apply_one(conn, event).await?;
            crate::policies::apply(conn, event).await?;
        }
        crate::requests::apply_batch(conn, events).await?;
        crate::requests::update_stats(conn, events).await?;
        crate::requests::update_series(conn, events).await?;
        crate::eval_results::apply_batch(conn, events).await
    }
}

async fn apply_one(conn: &mut AnyConnection, event: &Event) -> Result<(), ApplyError> {
    {
        let env = &event.envelope;
        match &event.payload {
            Payload::AccountOpened(p) => {
                sqlx::query(
                    "INSERT INTO accounts
                         (id, name, default_project_id, granted_nano, created_at, opened_event_id)
                     VALUES ($1, $2, $3, 0, $4, $5) ON CONFLICT (id) DO NOTHING",
                )
                .bind(&env.account_id)
                .bind(&p.name)
                .bind(&p.default_project_id)
                .bind(env.occurred_at)
                .bind(env.event_id.to_string())
                .execute(&mut *conn)
                .await?;
                sqlx::query(
                    "INSERT INTO projects (id, account_id, name, created_at)
                     VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING",
                )
                .bind(&p.default_project_id)
                .bind(&env.account_id)
                .bind(&p.default_project_name)
                .bind(env.occurred_at)
                .execute(&mut *conn)
                .await?;
            }
            Payload::ProjectCreated(p) => {
                sqlx::query(
                    "INSERT INTO projects (id, account_id, name, created_at)
                     VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING",
                )
                .bind(&p.project_id)
                .bind(&env.account_id)
                .bind(&p.name)
                .bind(env.occurred_at)
                .execute(&mut *conn)
                .await?;
            }
            Payload::ProjectRenamed(p) => {
                sqlx::query("UPDATE projects SET name = $1 WHERE id = $2 AND account_id = $3")
                    .bind(&p.name)
                    .bind(&p.project_id)
                    .bind(&env.account_id)
                    .execute(&mut *conn)
                    .await?;
            }
            Payload::ProjectArchived(p) => {
                sqlx::query(
                    "UPDATE projects SET archived_at = $1
                     WHERE id = $2 AND account_id = $3 AND archived_at IS NULL",
                )
                .bind(env.occurred_at)
                .bind(&p.project_id)
                .bind(&env.account_id)
                .execute(&mut *conn)
                .await?;
            }
            Payload::CreditsGranted(p) => {
                if p.amount_nano <= 0 || p.amount_nano > MAX_ACCOUNT_CREDITS.0 {
                    return Err(ApplyError::Rejected(format!(
                        "a grant of {} nano-credits is out of range",
                        p.amount_nano
                    )));
                }
                let inserted = sqlx::query(
                    "INSERT INTO credit_grants
                         (event_id, account_id, amount_nano, reason, granted_by, granted_at)
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (event_id) DO NOTHING",
                )
                .bind(env.event_id.to_string())
                .bind(&env.account_id)
                .bind(p.amount_nano)
                .bind(p.reason.as_deref())
                .bind(&p.granted_by)
                .bind(env.occurred_at)
                .execute(&mut *conn)
                .await?
                .rows_affected();
                if inserted == 1 {
                    add_grant(conn, &env.account_id, p.amount_nano).await?;
                }
            }
            Payload::ApiKeyCreated(p) => {
                let project_id = match &env.project_id {
                    Some(project) => project.clone(),
                    None => default_project(conn, &env.account_id).await?,
                };
                sqlx::query(
                    "INSERT INTO api_keys
                         (id, account_id, project_id, name, key_hash, key_prefix, status,
                          store_content, rpm, tpm, created_at, revoked_at, updated_at,
                          created_event_id, routing_prefer, fusion_barred, expires_at, paths,
                          surfaces, read_only, max_parallel_requests)
                     VALUES ($1, $2, $3, $4, $5, $6, 'active', $7, $8, $9, $10, NULL, $10, $11, $12,
                             $13, $14, $15, $16, $17, $18)
                     ON CONFLICT (id) DO NOTHING",
                )
                .bind(&p.key_id)
                .bind(&env.account_id)
                .bind(project_id)
                .bind(&p.name)
                .bind(&p.key_hash)
                .bind(&p.key_prefix)
                .bind(i64::from(p.store_content))
                .bind(p.rpm)
                .bind(p.tpm)
                .bind(env.occurred_at)
                .bind(env.event_id.to_string())
                .bind(p.routing_prefer.as_deref())
                .bind(i64::from(p.fusion_barred))
                .bind(p.expires_at)
                .bind(names_json(p.paths.as_deref()))
                .bind(names_json(p.surfaces.as_deref()))
                .bind(i64::from(p.read_only))
                .bind(p.max_parallel_requests)
                .execute(&mut *conn)
                .await?;
            }
            Payload::ApiKeyExpirySet(p) => {
                sqlx::query(
                    "UPDATE api_keys SET expires_at = $1, updated_at = $2
                     WHERE id = $3 AND account_id = $4",
                )
                .bind(p.expires_at)
                .bind(env.occurred_at)
                .bind(&p.key_id)
                .bind(&env.account_id)
                .execute(&mut *conn)
                .await?;
            }
            Payload::ApiKeyRevoked(p) => {
                sqlx::query(
                    "UPDATE api_keys SET status = 'revoked', revoked_at = $1, updated_at = $1
                     WHERE id = $2 AND account_id = $3 AND status = 'active'",
                )
                .bind(env.occurred_at)
                .bind(&p.key_id)
                .bind(&env.account_id)
                .execute(&mut *conn)
                .await?;
            }
            Payload::AdminKeyCreated(p) => {
                sqlx::query(
                    "INSERT INTO admin_keys
                         (id, name, role, key_hash, key_prefix, status, created_at, created_by)
                     VALUES ($1, $2, $3, $4, $5, 'active', $6, $7) ON CONFLICT (id) DO NOTHING",
                )
                .bind(&p.key_id)
                .bind(&p.name)
                .bind(&p.role)
                .bind(&p.key_hash)
                .bind(&p.key_prefix)
                .bind(env.occurred_at)
                .bind(p.admin_key_id.as_deref())
                .execute(&mut *conn)
                .await?;
            }
            Payload::AdminKeyRevoked(p) => {
                sqlx::query(
                    "UPDATE admin_keys SET status = 'revoked', revoked_at = $1, revoked_by = $2
                     WHERE id = $3 AND status = 'active'",
                )
                .bind(env.occurred_at)
                .bind(p.admin_key_id.as_deref())
                .bind(&p.key_id)
                .execute(&mut *conn)
                .await?;
            }
            Payload::BudgetSet(p) => {
                sqlx::query(
                    "INSERT INTO budgets
                         (id, account_id, scope, scope_id, limit_nano, soft_limit_nano, period,
                          timezone, created_at, updated_at, removed_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, NULL)
                     ON CONFLICT (id) DO UPDATE SET
                         limit_nano = excluded.limit_nano,
                         soft_limit_nano = excluded.soft_limit_nano,
                         period = excluded.period, timezone = excluded.timezone,
                         updated_at = excluded.updated_at
                     WHERE budgets.account_id = excluded.account_id
                       AND budgets.removed_at IS NULL",
                )
                .bind(&p.budget_id)
                .bind(&env.account_id)
                .bind(&p.scope)
                .bind(&p.scope_id)
                .bind(p.limit_nano)
                .bind(p.soft_limit_nano)
                .bind(&p.period)
                .bind(&p.timezone)
                .bind(env.occurred_at)
                .execute(&mut *conn)
                .await?;
            }
            Payload::BudgetRemoved(p) => {
                sqlx::query(
                    "UPDATE budgets SET removed_at = $1, updated_at = $1
                     WHERE id = $2 AND account_id = $3 AND removed_at IS NULL",
                )
                .bind(env.occurred_at)
                .bind(&p.budget_id)
                .bind(&env.account_id)
                .execute(&mut *conn)
                .await?;
            }
            Payload::BudgetThresholdCrossed(p) => {
                sqlx::query(
                    "INSERT INTO budget_thresholds (budget_id, period_start, crossed_at, used_nano)
                     VALUES ($1, $2, $3, $4) ON CONFLICT (budget_id, period_start) DO NOTHING",
                )
                .bind(&p.budget_id)
                .bind(p.period_start)
                .bind(env.occurred_at)
                .bind(p.used_nano)
                .execute(&mut *conn)
                .await?;
            }
            Payload::LimitsChanged(p) => {
                sqlx::query(
                    "UPDATE api_keys SET rpm = $1, tpm = $2, updated_at = $3
                     WHERE id = $4 AND account_id = $5",
                )
                .bind(p.rpm)
                .bind(p.tpm)
                .bind(env.occurred_at)
                .bind(&p.key_id)
                .bind(&env.account_id)
                .execute(&mut *conn)
                .await?;
            }
            _ => {}
        }
        Ok(())
    }
}

/// Adds a grant to its account's total, refusing one that would take the total past
/// [`MAX_ACCOUNT_CREDITS`] (the check and the addition are one statement, so concurrent grants
/// cannot pass it together).
async fn add_grant(
    conn: &mut AnyConnection,
    account_id: &str,
    amount_nano: i64,
) -> Result<(), ApplyError> {
    let updated = sqlx::query(
        "UPDATE accounts SET granted_nano = granted_nano + $1 WHERE id = $2 AND granted_nano <= $3",
    )
    .bind(amount_nano)
    .bind(account_id)
    .bind(MAX_ACCOUNT_CREDITS.0 - amount_nano)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if updated == 0 {
        let exists = sqlx::query("SELECT 1 FROM accounts WHERE id = $1")
            .bind(account_id)
            .fetch_optional(&mut *conn)
            .await?
            .is_some();
        if exists {
            return Err(ApplyError::Rejected(format!(
                "a grant of {amount_nano} nano-credits would take account {account_id} past {MAX_ACCOUNT_CREDITS} granted credits"
            )));
        }
    }
    Ok(())
}

/// A list of names as stored: a JSON array, or NULL for none.
fn names_json(names: Option<&[String]>) -> Option<String> {
    names.and_then(|n| serde_json::to_string(n).ok())
}

/// The inverse of [`names_json`].
fn names_from_json(text: Option<String>) -> Option<Vec<String>> {
    text.and_then(|t| serde_json::from_str(&t).ok())
}

async fn default_project(
    conn: &mut AnyConnection,
    account_id: &str,
) -> Result<String, sqlx::Error> {
    let row = sqlx::query("SELECT default_project_id FROM accounts WHERE id = $1")
        .bind(account_id)
        .fetch_optional(&mut *conn)
        .await?;
    match row {
        Some(row) => row.try_get(0),
        None => Err(sqlx::Error::Protocol(format!(
            "key for unknown account {account_id}"
        ))),
    }
}

/// An account as the read model holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AccountRow {
    /// `acct_…`
    pub id: String,
    /// Display name.
    pub name: String,
    /// The project created with the account.
    pub default_project_id: String,
    /// Sum of all grants, nano-credits.
    pub granted_nano: i64,
    /// µs since the epoch.
    pub created_at: i64,
}

/// A project.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProjectRow {
    /// `proj_…`
    pub id: String,
    /// Owning account.
    pub account_id: String,
    /// Display name.
    pub name: String,
    /// µs since the epoch.
    pub created_at: i64,
    /// When it was archived, µs since the epoch.
    pub archived_at: Option<i64>,
}

fn project_row(r: &AnyRow) -> Result<ProjectRow, sqlx::Error> {
    Ok(ProjectRow {
        id: r.try_get(0)?,
        account_id: r.try_get(1)?,
        name: r.try_get(2)?,
        created_at: r.try_get(3)?,
        archived_at: r.try_get(4)?,
    })
}

const PROJECT_COLUMNS: &str = "id, account_id, name, created_at, archived_at";

/// An API key as the read model holds it: never the key itself, only its keyed hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyRow {
    /// `key_…`
    pub id: String,
    /// Owning account.
    pub account_id: String,
    /// Project the key's usage is attributed to.
    pub project_id: String,
    /// Display name.
    pub name: String,
    /// Hex HMAC-SHA-256 of the key.
    #[serde(skip)]
    pub key_hash: String,
    /// First characters of the key.
    pub key_prefix: String,
    /// `active`, `revoked`, or `archived` (its project was archived).
    pub status: String,
    /// Whether prompts and answers may be kept for eval datasets.
    pub store_content: bool,
    /// Requests per minute, if limited.
    pub rpm: Option<i64>,
    /// Tokens per minute, if limited.
    pub tpm: Option<i64>,
    /// µs since the epoch.
    pub created_at: i64,
    /// µs since the epoch, once revoked.
    pub revoked_at: Option<i64>,
    /// Default routing preference of its requests (`cost`, `balanced`, `quality`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub routing_prefer: Option<String>,
    /// Whether the key is refused Model Fusion.
    pub fusion_barred: bool,
    /// When it stops authenticating, µs since the epoch.
    pub expires_at: Option<i64>,
    /// The paths it may be routed to; `None`: all.
    pub paths: Option<Vec<String>>,
    /// The inbound APIs it may call; `None`: all.
    pub surfaces: Option<Vec<String>>,
    /// It reads usage and requests but makes no completion.
    pub read_only: bool,
    /// Its requests in flight at once on one gateway.
    pub max_parallel_requests: Option<i64>,
}

impl KeyRow {
    /// Whether the key still authenticates.
    pub fn is_active(&self) -> bool {
        self.status == "active"
    }
}

/// Keys with their projects.
const KEY_SOURCE: &str = "api_keys k LEFT JOIN projects p ON p.id = k.project_id";

/// A key's columns, read from `KEY_SOURCE`; its status is `archived` while its project is.
const KEY_COLUMNS: &str = "k.id, k.account_id, k.project_id, k.name, k.key_hash, k.key_prefix, \
     CASE WHEN k.status = 'active' AND p.archived_at IS NOT NULL THEN 'archived' ELSE k.status END, \
     k.store_content, k.rpm, k.tpm, k.created_at, k.revoked_at, k.routing_prefer, k.fusion_barred, \
     k.expires_at, k.paths, k.surfaces, k.read_only, k.max_parallel_requests";

fn key_row(r: &AnyRow) -> Result<KeyRow, sqlx::Error> {
    Ok(KeyRow {
        id: r.try_get(0)?,
        account_id: r.try_get(1)?,
        project_id: r.try_get(2)?,
        name: r.try_get(3)?,
        key_hash: r.try_get(4)?,
        key_prefix: r.try_get(5)?,
        status: r.try_get(6)?,
        store_content: r.try_get::<i64, _>(7)? != 0,
        rpm: r.try_get(8)?,
        tpm: r.try_get(9)?,
        created_at: r.try_get(10)?,
        revoked_at: r.try_get(11)?,
        routing_prefer: r.try_get(12)?,
        fusion_barred: r.try_get::<i64, _>(13)? != 0,
        expires_at: r.try_get(14)?,
        paths: names_from_json(r.try_get(15)?),
        surfaces: names_from_json(r.try_get(16)?),
        read_only: r.try_get::<i64, _>(17)? != 0,
        max_parallel_requests: r.try_get(18)?,
    })
}

/// An admin key as the read model holds it: never the key, only its keyed hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AdminKeyRow {
    /// `adm_…`
    pub id: String,
    /// Display name.
    pub name: String,
    /// `owner`, `operator`, `finance` or `viewer`.
    pub role: String,
    /// Hex HMAC-SHA-256 of the key.
    #[serde(skip)]
    pub key_hash: String,
    /// First characters of the key.
    pub key_prefix: String,
    /// `active` or `revoked`.
    pub status: String,
    /// µs since the epoch.
    pub created_at: i64,
    /// The admin key that issued it.
    pub created_by: Option<String>,
    /// µs since the epoch, once revoked.
    pub revoked_at: Option<i64>,
    /// The admin key that revoked it.
    pub revoked_by: Option<String>,
}

const ADMIN_KEY_COLUMNS: &str = "id, name, role, key_hash, key_prefix, status, created_at, \
     created_by, revoked_at, revoked_by";

fn admin_key_row(r: &AnyRow) -> Result<AdminKeyRow, sqlx::Error> {
    Ok(AdminKeyRow {
        id: r.try_get(0)?,
        name: r.try_get(1)?,
        role: r.try_get(2)?,
        key_hash: r.try_get(3)?,
        key_prefix: r.try_get(4)?,
        status: r.try_get(5)?,
        created_at: r.try_get(6)?,
        created_by: r.try_get(7)?,
        revoked_at: r.try_get(8)?,
        revoked_by: r.try_get(9)?,
    })
}

/// A budget as the read model holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BudgetRow {
    /// `bud_…`
    pub id: String,
    /// Owning account.
    pub account_id: String,
    /// `account`, `project` or `key`.
    pub scope: String,
    /// The account, project or key id.
    pub scope_id: String,
    /// The most its scope may spend in a period, nano-credits.
    pub limit_nano: i64,
    /// The soft limit, nano-credits.
    pub soft_limit_nano: Option<i64>,
    /// `day`, `week`, `month` or `total`.
    pub period: String,
    /// IANA time zone of its calendar.
    pub timezone: String,
    /// µs since the epoch.
    pub created_at: i64,
    /// µs since the epoch, of the last change.
    pub updated_at: i64,
    /// The latest period start (µs) whose soft limit was crossed.
    pub crossed_period_start: Option<i64>,
}

/// A budget's columns, read from `budgets b`.
const BUDGET_COLUMNS: &str = "b.id, b.account_id, b.scope, b.scope_id, b.limit_nano, \
     b.soft_limit_nano, b.period, b.timezone, b.created_at, b.updated_at, \
     (SELECT MAX(t.period_start) FROM budget_thresholds t WHERE t.budget_id = b.id)";

fn budget_row(r: &AnyRow) -> Result<BudgetRow, sqlx::Error> {
    Ok(BudgetRow {
        id: r.try_get(0)?,
        account_id: r.try_get(1)?,
        scope: r.try_get(2)?,
        scope_id: r.try_get(3)?,
        limit_nano: r.try_get(4)?,
        soft_limit_nano: r.try_get(5)?,
        period: r.try_get(6)?,
        timezone: r.try_get(7)?,
        created_at: r.try_get(8)?,
        updated_at: r.try_get(9)?,
        crossed_period_start: r.try_get(10)?,
    })
}

fn account_row(r: &AnyRow) -> Result<AccountRow, sqlx::Error> {
    Ok(AccountRow {
        id: r.try_get(0)?,
        name: r.try_get(1)?,
        default_project_id: r.try_get(2)?,
        granted_nano: r.try_get(3)?,
        created_at: r.try_get(4)?,
    })
}

/// Queries over the read models.
#[derive(Debug, Clone)]
pub struct ReadModel {
    db: Database,
}

impl ReadModel {
    /// Read models in `db`.
    pub fn new(db: Database) -> ReadModel {
        ReadModel { db }
    }

    /// The database behind the read models.
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Every key, active and revoked (the gateway's cache needs both to answer 401 vs 403).
    pub async fn all_keys(&self) -> Result<Vec<KeyRow>, sqlx::Error> {
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {KEY_COLUMNS} FROM {KEY_SOURCE} ORDER BY k.id"
        ));
        let rows = sqlx::query(sql).fetch_all(&self.db.pool).await?;
        rows.iter().map(key_row).collect()
    }

    /// Keys of `account_id`, or of every account, in creation order.
    pub async fn keys(&self, account_id: Option<&str>) -> Result<Vec<KeyRow>, sqlx::Error> {
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {KEY_COLUMNS} FROM {KEY_SOURCE} WHERE ($1 IS NULL OR k.account_id = $1) ORDER BY k.id"
        ));
        let rows = sqlx::query(sql)
            .bind(account_id)
            .fetch_all(&self.db.pool)
            .await?;
        rows.iter().map(key_row).collect()
    }

    /// The key whose HMAC is `key_hash` (hex), if any.
    pub async fn key_by_hash(&self, key_hash: &str) -> Result<Option<KeyRow>, sqlx::Error> {
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {KEY_COLUMNS} FROM {KEY_SOURCE} WHERE k.key_hash = $1"
        ));
        let row = sqlx::query(sql)
            .bind(key_hash)
            .fetch_optional(&self.db.pool)
            .await?;
        row.as_ref().map(key_row).transpose()
    }

    /// One key by id.
    pub async fn key(&self, id: &str) -> Result<Option<KeyRow>, sqlx::Error> {
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {KEY_COLUMNS} FROM {KEY_SOURCE} WHERE k.id = $1"
        ));
        let row = sqlx::query(sql)
            .bind(id)
            .fetch_optional(&self.db.pool)
            .await?;
        row.as_ref().map(key_row).transpose()
    }

    /// One account by id.
    pub async fn account(&self, id: &str) -> Result<Option<AccountRow>, sqlx::Error> {
        let row = sqlx::query(
            "SELECT id, name, default_project_id, granted_nano, created_at
             FROM accounts WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.db.pool)
        .await?;
        row.as_ref().map(account_row).transpose()
    }

    /// The newest `limit` accounts, newest first (through the accounts' primary key order
    /// of creation).
    pub async fn accounts(&self, limit: i64) -> Result<Vec<AccountRow>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT id, name, default_project_id, granted_nano, created_at
             FROM accounts ORDER BY created_at DESC, id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.db.pool)
        .await?;
        rows.iter().map(account_row).collect()
    }

    /// Number of accounts.
    pub async fn account_count(&self) -> Result<i64, sqlx::Error> {
        sqlx::query("SELECT COUNT(*) FROM accounts")
            .fetch_one(&self.db.pool)
            .await?
            .try_get(0)
    }

    /// Every admin key issued through the API, oldest first.
    pub async fn admin_keys(&self) -> Result<Vec<AdminKeyRow>, sqlx::Error> {
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {ADMIN_KEY_COLUMNS} FROM admin_keys ORDER BY created_at, id"
        ));
        let rows = sqlx::query(sql).fetch_all(&self.db.pool).await?;
        rows.iter().map(admin_key_row).collect()
    }

    /// One admin key by id.
    pub async fn admin_key(&self, id: &str) -> Result<Option<AdminKeyRow>, sqlx::Error> {
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {ADMIN_KEY_COLUMNS} FROM admin_keys WHERE id = $1"
        ));
        let row = sqlx::query(sql)
            .bind(id)
            .fetch_optional(&self.db.pool)
            .await?;
        row.as_ref().map(admin_key_row).transpose()
    }

    /// Budgets in force: of `account_id`, or of every account; oldest first.
    pub async fn budgets(&self, account_id: Option<&str>) -> Result<Vec<BudgetRow>, sqlx::Error> {
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {BUDGET_COLUMNS} FROM budgets b
             WHERE b.removed_at IS NULL AND ($1 IS NULL OR b.account_id = $1)
             ORDER BY b.created_at, b.id"
        ));
        let rows = sqlx::query(sql)
            .bind(account_id)
            .fetch_all(&self.db.pool)
            .await?;
        rows.iter().map(budget_row).collect()
    }

    /// One budget in force by id.
    pub async fn budget(&self, id: &str) -> Result<Option<BudgetRow>, sqlx::Error> {
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {BUDGET_COLUMNS} FROM budgets b WHERE b.id = $1 AND b.removed_at IS NULL"
        ));
        let row = sqlx::query(sql)
            .bind(id)
            .fetch_optional(&self.db.pool)
            .await?;
        row.as_ref().map(budget_row).transpose()
    }

    /// One project by id.
    pub async fn project(&self, id: &str) -> Result<Option<ProjectRow>, sqlx::Error> {
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {PROJECT_COLUMNS} FROM projects WHERE id = $1"
        ));
        let row = sqlx::query(sql)
            .bind(id)
            .fetch_optional(&self.db.pool)
            .await?;
        row.as_ref().map(project_row).transpose()
    }

    /// An account's projects, oldest first.
    pub async fn projects(&self, account_id: &str) -> Result<Vec<ProjectRow>, sqlx::Error> {
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {PROJECT_COLUMNS} FROM projects WHERE account_id = $1 ORDER BY created_at, id"
        ));
        let rows = sqlx::query(sql)
            .bind(account_id)
            .fetch_all(&self.db.pool)
            .await?;
        rows.iter().map(project_row).collect()
    }
}

/// Tables the projector writes, in deletion order.
pub const TABLES: [&str; 16] = [
    "admin_keys",
    "budget_thresholds",
    "budgets",
    "policy_activations",
    "policies",
    "api_keys",
    "credit_grants",
    "projects",
    "accounts",
    "requests",
    "request_attempts",
    "usage_minutes",
    "route_stats",
    "path_hours",
    "request_content",
    "eval_results",
];

/// Drops every read-model row and the projector's positions in one transaction, so the next
/// projector run replays the log from the start into empty tables.
pub async fn rebuild(db: &Database) -> Result<(), sqlx::Error> {
    let mut tx = db.pool.begin().await?;
    for table in TABLES {
        sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {table}")))
            .execute(&mut *tx)
            .await?;
    }
    reset_consumer(&mut tx, CONSUMER).await?;
    tx.commit().await
}
