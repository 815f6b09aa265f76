//! Budgets over HTTP: setting, replacing and removing them on an account, a project or a key
//! (admin key), and `GET /v1/budgets`, the calling key's budgets with what their current period
//! spent and holds as the ledger has it.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::Utc;
use lumina_ledger::{SpendQuery, SpendScope, Spends};
use lumina_projector::BudgetRow;
use lumina_schemas::NanoCredits;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::admin::{AdminError, BudgetRequest};
use crate::api::admin::{parse_credits, unix_seconds};
use crate::api::error::ApiError;
use crate::api::extract::{AdminKey, ApiJson, CustomerKey};
use crate::metering::budget::Budget;
use crate::state::AppState;

/// The body that sets a budget. Unknown members are refused, so a misspelt field never leaves
/// a budget silently unset.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetBody {
    limit: Box<RawValue>,
    period: String,
    #[serde(default)]
    timezone: Option<String>,
    #[serde(default)]
    soft_limit: Option<Box<RawValue>>,
}

impl BudgetBody {
    fn request(self) -> Result<BudgetRequest, ApiError> {
        Ok(BudgetRequest {
            limit: parse_credits(&self.limit, "limit")?,
            period: self.period,
            timezone: self.timezone,
            soft_limit: self
                .soft_limit
                .as_deref()
                .map(|s| parse_credits(s, "soft_limit"))
                .transpose()?,
        })
    }
}

/// A budget as the API shows it: its definition, and its current period as the ledger has it.
#[derive(Serialize)]
pub struct BudgetView {
    id: String,
    object: &'static str,
    account_id: String,
    scope: String,
    scope_id: String,
    period: String,
    timezone: String,
    limit: String,
    limit_nano: i64,
    soft_limit: Option<String>,
    soft_limit_nano: Option<i64>,
    /// Start and end of the current period, Unix seconds (`null` for `total`).
    period_start: Option<i64>,
    period_end: Option<i64>,
    /// Settled charges in the current period.
    spent: String,
    spent_nano: i64,
    /// Open holds of its scope.
    held: String,
    held_nano: i64,
    /// `limit − spent − held`, never below zero.
    remaining: String,
    remaining_nano: i64,
    created_at: i64,
    updated_at: i64,
}

/// The views of `rows`, each with its current period's spend read from the ledger in one
/// statement.
async fn views(state: &AppState, rows: Vec<BudgetRow>) -> Result<Vec<BudgetView>, ApiError> {
    let now = Utc::now();
    let budgets: Vec<Option<Budget>> = rows.iter().map(Budget::from_row).collect();
    let queries: Vec<SpendQuery> = budgets.iter().flatten().map(|b| b.query(now)).collect();
    let spends: Spends = state
        .ledger
        .spend(&queries)
        .await
        .map_err(|e| ApiError::Unavailable(format!("ledger unavailable: {e}")))?;
    Ok(rows
        .into_iter()
        .zip(budgets)
        .map(|(row, budget)| {
            let window = budget
                .as_ref()
                .and_then(|b| b.period.window(b.tz, now))
                .map(|(start, end)| (unix_seconds(start), unix_seconds(end)));
            let spend = spends.get(&row.id).copied().unwrap_or_default();
            let remaining = (row.limit_nano - spend.settled - spend.held).max(0);
            BudgetView {
                object: "budget",
                limit: NanoCredits(row.limit_nano).to_string(),
                soft_limit: row.soft_limit_nano.map(|s| NanoCredits(s).to_string()),
                period_start: window.map(|w| w.0),
                period_end: window.map(|w| w.1),
                spent: NanoCredits(spend.settled).to_string(),
                spent_nano: spend.settled,
                held: NanoCredits(spend.held).to_string(),
                held_nano: spend.held,
                remaining: NanoCredits(remaining).to_string(),
                remaining_nano: remaining,
                created_at: unix_seconds(row.created_at),
                updated_at: unix_seconds(row.updated_at),
                id: row.id,
                account_id: row.account_id,
                scope: row.scope,
                scope_id: row.scope_id,
                period: row.period,
                timezone: row.timezone,
                limit_nano: row.limit_nano,
                soft_limit_nano: row.soft_limit_nano,
            }
        })
        .collect())
}

async fn view(state: &AppState, row: BudgetRow) -> Result<BudgetView, ApiError> {
    views(state, vec![row])
        .await?
        .pop()
        .ok_or_else(|| ApiError::Internal("a budget view went missing".into()))
}

/// A list of budgets.
#[derive(Serialize)]
pub struct BudgetList {
    object: &'static str,
    data: Vec<BudgetView>,
}

async fn list(state: &AppState, rows: Vec<BudgetRow>) -> Result<Json<BudgetList>, ApiError> {
    Ok(Json(BudgetList {
        object: "list",
        data: views(state, rows).await?,
    }))
}

async fn create(
    state: &AppState,
    admin: &AdminKey,
    scope: SpendScope,
    id: &str,
    body: BudgetBody,
) -> Result<(StatusCode, Json<BudgetView>), ApiError> {
    let row = admin
        .admin(state)
        .set_budget(scope, id, None, body.request()?)
        .await?;
    Ok((StatusCode::CREATED, Json(view(state, row).await?)))
}

/// `POST /admin/accounts/{id}/budgets`
pub async fn create_on_account(
    State(state): State<AppState>,
    admin: AdminKey,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<BudgetBody>,
) -> Result<(StatusCode, Json<BudgetView>), ApiError> {
    create(&state, &admin, SpendScope::Account, &id, body).await
}

/// `POST /admin/projects/{id}/budgets`
pub async fn create_on_project(
    State(state): State<AppState>,
    admin: AdminKey,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<BudgetBody>,
) -> Result<(StatusCode, Json<BudgetView>), ApiError> {
    create(&state, &admin, SpendScope::Project, &id, body).await
}

/// `POST /admin/keys/{id}/budgets`
pub async fn create_on_key(
    State(state): State<AppState>,
    admin: AdminKey,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<BudgetBody>,
) -> Result<(StatusCode, Json<BudgetView>), ApiError> {
    create(&state, &admin, SpendScope::Key, &id, body).await
}

/// `GET /admin/accounts/{id}/budgets`: every budget of the account, on any of its scopes.
pub async fn list_of_account(
    State(state): State<AppState>,
    _admin: AdminKey,
    Path(id): Path<String>,
) -> Result<Json<BudgetList>, ApiError> {
    let account = state.admin.account(&id).await?;
    let rows = state
        .read_model
        .budgets(Some(&account.id))
        .await
        .map_err(AdminError::Db)?;
    list(&state, rows).await
}

/// `GET /admin/projects/{id}/budgets`: the budgets on the project itself.
pub async fn list_on_project(
    State(state): State<AppState>,
    _admin: AdminKey,
    Path(id): Path<String>,
) -> Result<Json<BudgetList>, ApiError> {
    let rows = state.admin.budgets_on(SpendScope::Project, &id).await?;
    list(&state, rows).await
}

/// `GET /admin/keys/{id}/budgets`: the budgets on the key itself.
pub async fn list_on_key(
    State(state): State<AppState>,
    _admin: AdminKey,
    Path(id): Path<String>,
) -> Result<Json<BudgetList>, ApiError> {
    let rows = state.admin.budgets_on(SpendScope::Key, &id).await?;
    list(&state, rows).await
}

/// `GET /admin/budgets/{id}`
pub async fn get_budget(
    State(state): State<AppState>,
    _admin: AdminKey,
    Path(id): Path<String>,
) -> Result<Json<BudgetView>, ApiError> {
    let row = state.admin.budget(&id).await?;
    Ok(Json(view(&state, row).await?))
}

/// `PUT /admin/budgets/{id}`: replaces the budget's limit, period, zone and soft limit.
pub async fn replace_budget(
    State(state): State<AppState>,
    admin: AdminKey,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<BudgetBody>,
) -> Result<Json<BudgetView>, ApiError> {
    let row = admin
        .admin(&state)
        .update_budget(&id, body.request()?)
        .await?;
    Ok(Json(view(&state, row).await?))
}

/// What removing a budget answers.
#[derive(Serialize)]
pub struct Removed {
    id: String,
    object: &'static str,
    deleted: bool,
}

/// `DELETE /admin/budgets/{id}`
pub async fn remove_budget(
    State(state): State<AppState>,
    admin: AdminKey,
    Path(id): Path<String>,
) -> Result<Json<Removed>, ApiError> {
    let row = admin.admin(&state).remove_budget(&id).await?;
    Ok(Json(Removed {
        id: row.id,
        object: "budget",
        deleted: true,
    }))
}

/// `GET /v1/budgets`: the budgets that limit the calling key: its own, its project's and its
/// account's.
pub async fn mine(
    State(state): State<AppState>,
    CustomerKey(key): CustomerKey,
) -> Result<Json<BudgetList>, ApiError> {
    let mut rows = state
        .read_model
        .budgets(Some(key.account_id.as_str()))
        .await
        .map_err(AdminError::Db)?;
    rows.retain(|b| match SpendScope::parse(&b.scope) {
        Some(SpendScope::Account) => b.scope_id == key.account_id.as_str(),
        Some(SpendScope::Project) => b.scope_id == key.project_id.as_str(),
        Some(SpendScope::Key) => b.scope_id == key.key_id.as_str(),
        None => false,
    });
    list(&state, rows).await
}
