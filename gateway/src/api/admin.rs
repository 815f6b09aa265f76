//! The admin API (behind an admin key whose role allows the request): accounts, projects,
//! credit grants, API keys and admin keys.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use lumina_ledger::Balance;
use lumina_projector::{AccountRow, AdminKeyRow, KeyRow, ProjectRow};
use lumina_schemas::NanoCredits;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::admin::KeyRequest;
use crate::api::error::ApiError;
use crate::api::extract::{AdminKey, ApiJson, ApiQuery};
use crate::routing::policy::Prefer;
use crate::state::AppState;

/// Parses a credit amount given as a JSON number or a decimal string, exactly.
pub(crate) fn parse_credits(raw: &RawValue, param: &str) -> Result<NanoCredits, ApiError> {
    let text = raw.get().trim();
    let decimal_text = if text.starts_with('"') {
        serde_json::from_str::<String>(text).map_err(|_| {
            ApiError::invalid(
                format!("'{param}' must be a number or a decimal string"),
                Some(param),
            )
        })?
    } else if text.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
        text.to_string()
    } else {
        return Err(ApiError::invalid(
            format!("'{param}' must be a number or a decimal string, got {text}"),
            Some(param),
        ));
    };
    let amount = NanoCredits::parse_credits(&decimal_text)
        .map_err(|e| ApiError::invalid(format!("Invalid '{param}': {e}"), Some(param)))?;
    if !amount.is_positive() {
        return Err(ApiError::invalid(
            format!("'{param}' must be positive, got {decimal_text}"),
            Some(param),
        ));
    }
    Ok(amount)
}

pub(crate) fn unix_seconds(micros: i64) -> i64 {
    micros.div_euclid(1_000_000)
}

/// An account as the admin API shows it.
#[derive(Serialize)]
pub struct AccountView {
    id: String,
    object: &'static str,
    name: String,
    project_id: String,
    created_at: i64,
    credits_granted: String,
    credits_granted_nano: i64,
    balance: BalanceView,
}

/// A ledger balance: integer nano-credits and their decimal credit renderings.
#[derive(Serialize)]
pub struct BalanceView {
    available_nano: i64,
    held_nano: i64,
    spent_nano: i64,
    granted_nano: i64,
    available: String,
    held: String,
    spent: String,
    granted: String,
}

impl From<Balance> for BalanceView {
    fn from(b: Balance) -> Self {
        BalanceView {
            available: NanoCredits(b.available_nano).to_string(),
            held: NanoCredits(b.held_nano).to_string(),
            spent: NanoCredits(b.spent_nano).to_string(),
            granted: NanoCredits(b.granted_nano).to_string(),
            available_nano: b.available_nano,
            held_nano: b.held_nano,
            spent_nano: b.spent_nano,
            granted_nano: b.granted_nano,
        }
    }
}

impl AccountView {
    fn new(a: AccountRow, balance: Balance) -> Self {
        AccountView {
            credits_granted: NanoCredits(a.granted_nano).to_string(),
            credits_granted_nano: a.granted_nano,
            created_at: unix_seconds(a.created_at),
            id: a.id,
            object: "account",
            name: a.name,
            project_id: a.default_project_id,
            balance: balance.into(),
        }
    }
}

async fn account_view(state: &AppState, account: AccountRow) -> Result<AccountView, ApiError> {
    let balance = state.admin.balance(&account.id).await?;
    Ok(AccountView::new(account, balance))
}

/// Body of `POST /admin/accounts`.
#[derive(Deserialize)]
pub struct CreateAccount {
    name: String,
    #[serde(default)]
    credits: Option<Box<RawValue>>,
}

/// `POST /admin/accounts`: opens an account, granting its initial credits.
pub async fn create_account(
    State(state): State<AppState>,
    admin: AdminKey,
    ApiJson(body): ApiJson<CreateAccount>,
) -> Result<(StatusCode, Json<AccountView>), ApiError> {
    let credits = match &body.credits {
        Some(raw) => parse_credits(raw, "credits")?,
        None => NanoCredits::ZERO,
    };
    let account = admin
        .admin(&state)
        .open_account(&body.name, credits, &admin.0.id)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(account_view(&state, account).await?),
    ))
}

/// `GET /admin/accounts/{id}`.
pub async fn get_account(
    State(state): State<AppState>,
    _admin: AdminKey,
    Path(id): Path<String>,
) -> Result<Json<AccountView>, ApiError> {
    let account = state.admin.account(&id).await?;
    Ok(Json(account_view(&state, account).await?))
}

/// Body of `POST /admin/accounts/{id}/credits`.
#[derive(Deserialize)]
pub struct GrantCredits {
    amount: Box<RawValue>,
    #[serde(default)]
    reason: Option<String>,
}

/// A grant as the admin API shows it.
#[derive(Serialize)]
pub struct GrantView {
    object: &'static str,
    account_id: String,
    amount: String,
    amount_nano: i64,
    account: AccountView,
}

/// `POST /admin/accounts/{id}/credits`: grants credits.
pub async fn grant_credits(
    State(state): State<AppState>,
    admin: AdminKey,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<GrantCredits>,
) -> Result<(StatusCode, Json<GrantView>), ApiError> {
    let amount = parse_credits(&body.amount, "amount")?;
    let account = admin
        .admin(&state)
        .grant_credits(&id, amount, body.reason, &admin.0.id)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(GrantView {
            object: "credit_grant",
            account_id: account.id.clone(),
            amount: amount.to_string(),
            amount_nano: amount.0,
            account: account_view(&state, account).await?,
        }),
    ))
}

/// A key as the admin API shows it; `key` only in the response that created it.
#[derive(Serialize)]
pub struct KeyView {
    id: String,
    object: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    name: String,
    account_id: String,
    project_id: String,
    prefix: String,
    status: String,
    rpm: Option<i64>,
    tpm: Option<i64>,
    store_content: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    routing: Option<serde_json::Value>,
    allow_fusion: bool,
    expires_at: Option<i64>,
    scopes: ScopesView,
    max_parallel_requests: Option<i64>,
    created_at: i64,
    revoked_at: Option<i64>,
}

impl KeyView {
    fn new(k: KeyRow, key: Option<String>) -> KeyView {
        KeyView {
            id: k.id,
            object: "api_key",
            key,
            name: k.name,
            account_id: k.account_id,
            project_id: k.project_id,
            prefix: k.key_prefix,
            status: k.status,
            rpm: k.rpm,
            tpm: k.tpm,
            store_content: k.store_content,
            routing: k.routing_prefer.map(|p| serde_json::json!({ "prefer": p })),
            allow_fusion: !k.fusion_barred,
            expires_at: k.expires_at.map(unix_seconds),
            scopes: ScopesView {
                paths: k.paths,
                surfaces: k.surfaces,
                read_only: k.read_only,
            },
            max_parallel_requests: k.max_parallel_requests,
            created_at: unix_seconds(k.created_at),
            revoked_at: k.revoked_at.map(unix_seconds),
        }
    }
}

/// Body of `POST /admin/keys`.
#[derive(Deserialize)]
pub struct CreateKey {
    account_id: String,
    name: String,
    #[serde(default)]
    project_id: Option<String>,
    #[serde(default)]
    rpm: Option<i64>,
    #[serde(default)]
    tpm: Option<i64>,
    #[serde(default)]
    store_content: bool,
    #[serde(default)]
    routing: Option<KeyRouting>,
    /// `false` refuses the key Model Fusion.
    #[serde(default = "allowed")]
    allow_fusion: bool,
    /// Unix seconds from which the key no longer authenticates.
    #[serde(default)]
    expires_at: Option<i64>,
    #[serde(default)]
    scopes: Option<KeyScopes>,
    #[serde(default)]
    max_parallel_requests: Option<i64>,
}

/// What a key may do: paths, inbound APIs, or only reading.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct KeyScopes {
    #[serde(default)]
    paths: Option<Vec<String>>,
    #[serde(default)]
    surfaces: Option<Vec<String>>,
    #[serde(default)]
    read_only: bool,
}

/// A key's scopes as the admin API shows them.
#[derive(Serialize)]
pub struct ScopesView {
    paths: Option<Vec<String>>,
    surfaces: Option<Vec<String>>,
    read_only: bool,
}

fn allowed() -> bool {
    true
}

/// A key's `routing` defaults.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRouting {
    #[serde(default)]
    prefer: Option<Prefer>,
}

/// `POST /admin/keys`: issues a key, returned once.
pub async fn create_key(
    State(state): State<AppState>,
    admin: AdminKey,
    ApiJson(body): ApiJson<CreateKey>,
) -> Result<(StatusCode, Json<KeyView>), ApiError> {
    let scopes = body.scopes.unwrap_or_default();
    let (row, key) = admin
        .admin(&state)
        .create_key(KeyRequest {
            account_id: body.account_id,
            name: body.name,
            project_id: body.project_id,
            rpm: body.rpm,
            tpm: body.tpm,
            store_content: body.store_content,
            routing_prefer: body.routing.and_then(|r| r.prefer),
            fusion_barred: !body.allow_fusion,
            expires_at: match body.expires_at {
                Some(secs) => Some(secs.checked_mul(1_000_000).ok_or_else(|| {
                    ApiError::invalid("'expires_at' is out of range", Some("expires_at"))
                })?),
                None => None,
            },
            paths: scopes.paths,
            surfaces: scopes.surfaces,
            read_only: scopes.read_only,
            max_parallel_requests: body.max_parallel_requests,
        })
        .await?;
    Ok((StatusCode::CREATED, Json(KeyView::new(row, Some(key)))))
}

/// Query of `GET /admin/keys`.
#[derive(Deserialize)]
pub struct KeysQuery {
    #[serde(default)]
    account_id: Option<String>,
}

/// A list in OpenAI's shape.
#[derive(Serialize)]
pub struct ListView<T> {
    object: &'static str,
    data: Vec<T>,
}

/// `GET /admin/keys?account_id=`: keys of an account, or all keys.
pub async fn list_keys(
    State(state): State<AppState>,
    _admin: AdminKey,
    ApiQuery(query): ApiQuery<KeysQuery>,
) -> Result<Json<ListView<KeyView>>, ApiError> {
    let keys = state.admin.keys(query.account_id.as_deref()).await?;
    Ok(Json(ListView {
        object: "list",
        data: keys.into_iter().map(|k| KeyView::new(k, None)).collect(),
    }))
}

/// `GET /admin/keys/{id}`.
pub async fn get_key(
    State(state): State<AppState>,
    _admin: AdminKey,
    Path(id): Path<String>,
) -> Result<Json<KeyView>, ApiError> {
    Ok(Json(KeyView::new(state.admin.key(&id).await?, None)))
}

/// `DELETE /admin/keys/{id}`: revokes a key; it fails from the next request on.
pub async fn revoke_key(
    State(state): State<AppState>,
    admin: AdminKey,
    Path(id): Path<String>,
) -> Result<Json<KeyView>, ApiError> {
    Ok(Json(KeyView::new(
        admin.admin(&state).revoke_key(&id).await?,
        None,
    )))
}

/// Body of `POST /admin/keys/{id}/limits`.
#[derive(Deserialize)]
pub struct ChangeLimits {
    #[serde(default)]
    rpm: Option<i64>,
    #[serde(default)]
    tpm: Option<i64>,
}

/// `POST /admin/keys/{id}/limits`: sets or removes a key's rpm and tpm (a `LimitsChanged`).
pub async fn change_limits(
    State(state): State<AppState>,
    admin: AdminKey,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ChangeLimits>,
) -> Result<Json<KeyView>, ApiError> {
    let key = admin
        .admin(&state)
        .change_limits(&id, body.rpm, body.tpm)
        .await?;
    Ok(Json(KeyView::new(key, None)))
}

/// A project as the admin API shows it.
#[derive(Serialize)]
pub struct ProjectView {
    id: String,
    object: &'static str,
    account_id: String,
    name: String,
    status: &'static str,
    created_at: i64,
    archived_at: Option<i64>,
}

impl From<ProjectRow> for ProjectView {
    fn from(p: ProjectRow) -> ProjectView {
        ProjectView {
            id: p.id,
            object: "project",
            account_id: p.account_id,
            name: p.name,
            status: if p.archived_at.is_some() {
                "archived"
            } else {
                "active"
            },
            created_at: unix_seconds(p.created_at),
            archived_at: p.archived_at.map(unix_seconds),
        }
    }
}

/// Body of `POST /admin/accounts/{id}/projects` and `PATCH /admin/projects/{id}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectName {
    name: String,
}

/// `POST /admin/accounts/{id}/projects`: creates a project in the account.
pub async fn create_project(
    State(state): State<AppState>,
    admin: AdminKey,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ProjectName>,
) -> Result<(StatusCode, Json<ProjectView>), ApiError> {
    let project = admin.admin(&state).create_project(&id, &body.name).await?;
    Ok((StatusCode::CREATED, Json(project.into())))
}

/// `GET /admin/accounts/{id}/projects`: the account's projects, the default one first.
pub async fn list_projects(
    State(state): State<AppState>,
    _admin: AdminKey,
    Path(id): Path<String>,
) -> Result<Json<ListView<ProjectView>>, ApiError> {
    let projects = state.admin.projects(&id).await?;
    Ok(Json(ListView {
        object: "list",
        data: projects.into_iter().map(ProjectView::from).collect(),
    }))
}

/// `GET /admin/projects/{id}`
pub async fn get_project(
    State(state): State<AppState>,
    _admin: AdminKey,
    Path(id): Path<String>,
) -> Result<Json<ProjectView>, ApiError> {
    Ok(Json(state.admin.project(&id).await?.into()))
}

/// `PATCH /admin/projects/{id}`: renames a project.
pub async fn rename_project(
    State(state): State<AppState>,
    admin: AdminKey,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<ProjectName>,
) -> Result<Json<ProjectView>, ApiError> {
    Ok(Json(
        admin
            .admin(&state)
            .rename_project(&id, &body.name)
            .await?
            .into(),
    ))
}

/// `POST /admin/projects/{id}/archive`: archives a project; its keys stop authenticating.
pub async fn archive_project(
    State(state): State<AppState>,
    admin: AdminKey,
    Path(id): Path<String>,
) -> Result<Json<ProjectView>, ApiError> {
    Ok(Json(admin.admin(&state).archive_project(&id).await?.into()))
}

/// Body of `POST /admin/keys/{id}/rotate`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rotate {
    /// How long the old key keeps working: `24h`, `30m`, `90s`, `2d` or seconds.
    #[serde(default)]
    overlap: Option<serde_json::Value>,
}

/// A rotation: the new key (with its secret, shown once) and the old one with its expiry.
#[derive(Serialize)]
pub struct RotatedView {
    #[serde(flatten)]
    key: KeyView,
    replaces: KeyView,
}

/// The most a rotation's overlap may be.
const MAX_OVERLAP: Duration = Duration::from_secs(90 * 24 * 3600);

/// `24h`, `30m`, `90s`, `2d`, or a number of seconds.
pub fn parse_overlap(value: &serde_json::Value) -> Option<Duration> {
    let secs = match value {
        serde_json::Value::Number(n) => n.as_u64()?,
        serde_json::Value::String(s) => {
            let s = s.trim();
            let (digits, unit) =
                s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
            let n: u64 = digits.parse().ok()?;
            n.checked_mul(match unit {
                "" | "s" => 1,
                "m" => 60,
                "h" => 3600,
                "d" => 86_400,
                _ => return None,
            })?
        }
        _ => return None,
    };
    Some(Duration::from_secs(secs)).filter(|d| *d <= MAX_OVERLAP)
}

/// `POST /admin/keys/{id}/rotate`: a new key now (same account, project, limits and scopes),
/// the old one expiring after the overlap (default 24 h).
pub async fn rotate_key(
    State(state): State<AppState>,
    admin: AdminKey,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<Rotate>,
) -> Result<(StatusCode, Json<RotatedView>), ApiError> {
    let overlap = match &body.overlap {
        None => Duration::from_secs(24 * 3600),
        Some(v) => parse_overlap(v).ok_or_else(|| {
            ApiError::invalid(
                "'overlap' must be a duration such as 24h, 30m, 90s or 2d (at most 90 days), or a number of seconds",
                Some("overlap"),
            )
        })?,
    };
    let (new, key, old) = admin.admin(&state).rotate_key(&id, overlap).await?;
    Ok((
        StatusCode::CREATED,
        Json(RotatedView {
            key: KeyView::new(new, Some(key)),
            replaces: KeyView::new(old, None),
        }),
    ))
}

/// An admin key as the admin API shows it; `key` only in the response that issued it.
#[derive(Serialize)]
pub struct AdminKeyView {
    id: String,
    object: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    name: String,
    role: String,
    key_prefix: String,
    status: String,
    created_at: i64,
    created_by: Option<String>,
    revoked_at: Option<i64>,
    revoked_by: Option<String>,
}

impl AdminKeyView {
    fn new(row: AdminKeyRow, key: Option<String>) -> AdminKeyView {
        AdminKeyView {
            id: row.id,
            object: "admin_key",
            key,
            name: row.name,
            role: row.role,
            key_prefix: row.key_prefix,
            status: row.status,
            created_at: unix_seconds(row.created_at),
            created_by: row.created_by,
            revoked_at: row.revoked_at.map(unix_seconds),
            revoked_by: row.revoked_by,
        }
    }
}

/// The body that issues an admin key.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateAdminKey {
    name: String,
    role: String,
}

/// `POST /admin/admin-keys` (owner): issues an admin key; the key is shown only here.
pub async fn create_admin_key(
    State(state): State<AppState>,
    admin: AdminKey,
    ApiJson(body): ApiJson<CreateAdminKey>,
) -> Result<(StatusCode, Json<AdminKeyView>), ApiError> {
    let (row, key) = admin
        .admin(&state)
        .create_admin_key(&body.name, &body.role)
        .await?;
    Ok((StatusCode::CREATED, Json(AdminKeyView::new(row, Some(key)))))
}

/// `GET /admin/admin-keys` (owner): every admin key issued, never the key itself.
pub async fn list_admin_keys(
    State(state): State<AppState>,
    _admin: AdminKey,
) -> Result<Json<ListView<AdminKeyView>>, ApiError> {
    let rows = state.admin.admin_keys().await?;
    Ok(Json(ListView {
        object: "list",
        data: rows
            .into_iter()
            .map(|r| AdminKeyView::new(r, None))
            .collect(),
    }))
}

/// `DELETE /admin/admin-keys/{id}` (owner): revokes an admin key.
pub async fn revoke_admin_key(
    State(state): State<AppState>,
    admin: AdminKey,
    Path(id): Path<String>,
) -> Result<Json<AdminKeyView>, ApiError> {
    let row = admin.admin(&state).revoke_admin_key(&id).await?;
    Ok(Json(AdminKeyView::new(row, None)))
}
