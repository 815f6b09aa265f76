//! Request logs and traces: `GET /v1/requests` and `GET /v1/requests/{id}` for the calling
//! key's account (another account's request is a 404, never a 403, so ids do not leak), the
//! admin variants across accounts, route statistics, and `POST /v1/feedback`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use lumina_projector::views::{AttemptRow, RequestFilter, RequestRow, RouteStatsView};
use lumina_schemas::payloads::FeedbackReceived;
use lumina_schemas::{Envelope, Event, NanoCredits};
use serde::{Deserialize, Serialize};

use crate::api::error::ApiError;
use crate::api::extract::{AdminKey, ApiJson, CustomerKey};
use crate::api::usage::{ensure_owned, query_lists};
use crate::state::AppState;

fn unix(us: Option<i64>) -> Option<i64> {
    us.map(|v| v.div_euclid(1_000_000))
}

fn ms(us: Option<i64>) -> Option<f64> {
    us.map(|v| v as f64 / 1000.0)
}

/// Token counts of a logged request.
#[derive(Serialize)]
pub struct UsageView {
    prompt_tokens: i64,
    completion_tokens: i64,
    cached_tokens: i64,
    reasoning_tokens: i64,
    estimated: bool,
}

/// One line of the request log.
#[derive(Serialize)]
pub struct RequestSummary {
    id: String,
    object: &'static str,
    created: Option<i64>,
    account_id: String,
    project_id: Option<String>,
    api_key_id: Option<String>,
    requested_model: Option<String>,
    /// The inbound API (`chat_completions`, `messages`, `embeddings`, `responses`).
    api: Option<String>,
    path: Option<String>,
    provider: Option<String>,
    deployment: Option<String>,
    status: String,
    latency_ms: Option<f64>,
    ttft_ms: Option<f64>,
    usage: Option<UsageView>,
    credits: Option<String>,
    credits_nano: Option<i64>,
}

impl From<&RequestRow> for RequestSummary {
    fn from(r: &RequestRow) -> Self {
        RequestSummary {
            id: r.request_id.clone(),
            object: "request",
            created: unix(r.routed_at.or(r.settled_at)),
            account_id: r.account_id.clone(),
            project_id: r.project_id.clone(),
            api_key_id: r.api_key_id.clone(),
            requested_model: r.requested_model.clone(),
            api: r.api.clone(),
            path: r.path.clone(),
            provider: r.provider.clone(),
            deployment: r.deployment.clone(),
            status: r.outcome.clone().unwrap_or_else(|| "in_progress".into()),
            latency_ms: ms(r.latency_us),
            ttft_ms: ms(r.ttft_us),
            usage: r.prompt_tokens.map(|p| UsageView {
                prompt_tokens: p,
                completion_tokens: r.completion_tokens.unwrap_or(0),
                cached_tokens: r.cached_tokens.unwrap_or(0),
                reasoning_tokens: r.reasoning_tokens.unwrap_or(0),
                estimated: r.usage_estimated.unwrap_or(false),
            }),
            credits: r.charge_nano.map(|c| NanoCredits(c).to_string()),
            credits_nano: r.charge_nano,
        }
    }
}

/// A page of the request log.
#[derive(Serialize)]
pub struct RequestPage {
    object: &'static str,
    data: Vec<RequestSummary>,
    has_more: bool,
    first_id: Option<String>,
    last_id: Option<String>,
}

/// The request-log filter and page size of a query string (`account_id` fixed when given).
pub(crate) fn filter_from(
    uri: &Uri,
    account_id: Option<String>,
) -> Result<(RequestFilter, i64), ApiError> {
    let q = query_lists(uri);
    let one = |n: &str| q.get(n).and_then(|v| v.first()).cloned();
    let time = |n: &str| -> Result<Option<i64>, ApiError> {
        one(n)
            .map(|v| {
                v.parse::<i64>()
                    .map(|s| s.saturating_mul(1_000_000))
                    .map_err(|_| ApiError::invalid(format!("'{n}' must be Unix seconds"), Some(n)))
            })
            .transpose()
    };
    let limit = match one("limit") {
        Some(l) => l
            .parse::<i64>()
            .ok()
            .filter(|l| (1..=1000).contains(l))
            .ok_or_else(|| {
                ApiError::invalid("'limit' must be between 1 and 1000", Some("limit"))
            })?,
        None => 50,
    };
    let path = one("path")
        .or_else(|| one("model"))
        .map(|p| p.trim_start_matches("lumina-").to_string());
    Ok((
        RequestFilter {
            account_id: account_id.or_else(|| one("account_id")),
            api_key_id: one("api_key_id"),
            path,
            status: one("status"),
            since: time("since")?,
            until: time("until")?,
            after: one("after"),
        },
        limit,
    ))
}

async fn page(
    state: &AppState,
    filter: RequestFilter,
    limit: i64,
) -> Result<Json<RequestPage>, ApiError> {
    request_page(state, filter, limit).await.map(Json)
}

/// A page of the request log: the newest `limit` requests `filter` matches (one indexed
/// query).
pub(crate) async fn request_page(
    state: &AppState,
    filter: RequestFilter,
    limit: i64,
) -> Result<RequestPage, ApiError> {
    let mut rows = state
        .read_model
        .requests(&filter, limit + 1)
        .await
        .map_err(|e| ApiError::Unavailable(format!("request views unavailable: {e}")))?;
    let has_more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    Ok(RequestPage {
        object: "list",
        first_id: rows.first().map(|r| r.request_id.clone()),
        last_id: rows.last().map(|r| r.request_id.clone()),
        has_more,
        data: rows.iter().map(RequestSummary::from).collect(),
    })
}

/// `GET /v1/requests?api_key_id=&path=&status=&since=&until=&limit=&after=`
pub async fn list(
    State(state): State<AppState>,
    CustomerKey(key): CustomerKey,
    uri: Uri,
) -> Result<Json<RequestPage>, ApiError> {
    let (filter, limit) = filter_from(&uri, Some(key.account_id.to_string()))?;
    if let Some(id) = &filter.api_key_id {
        ensure_owned(
            &state,
            key.account_id.as_str(),
            std::slice::from_ref(id),
            &[],
        )
        .await?;
    }
    page(&state, filter, limit).await
}

/// `GET /admin/requests?account_id=&…`
pub async fn admin_list(
    State(state): State<AppState>,
    _admin: AdminKey,
    uri: Uri,
) -> Result<Json<RequestPage>, ApiError> {
    let (filter, limit) = filter_from(&uri, None)?;
    page(&state, filter, limit).await
}

/// The whole story of a request.
#[derive(Serialize)]
pub struct Trace {
    #[serde(flatten)]
    summary: RequestSummary,
    route: RouteView,
    attempts: Vec<AttemptRow>,
    settlement: Option<SettlementView>,
    feedback: Option<FeedbackView>,
}

/// The route decision.
#[derive(Serialize)]
pub struct RouteView {
    task_class: Option<String>,
    policy_version: Option<i64>,
    features: Option<serde_json::Value>,
    scores: Option<serde_json::Value>,
    top_features: Option<serde_json::Value>,
    prefer: Option<String>,
    min_path: Option<String>,
    max_path: Option<String>,
    classified_path: Option<String>,
    candidates: Option<serde_json::Value>,
    stream: Option<bool>,
    prompt_tokens_estimate: Option<i64>,
    max_tokens: Option<i64>,
    hold_nano: Option<i64>,
}

/// How the request ended and what it cost.
#[derive(Serialize)]
pub struct SettlementView {
    outcome: String,
    error_class: Option<String>,
    attempts: Option<i64>,
    charge_nano: Option<i64>,
    price_table_version: Option<String>,
    settled_at: Option<i64>,
}

/// Feedback given.
#[derive(Serialize)]
pub struct FeedbackView {
    score: Option<f64>,
    label: Option<String>,
    comment: Option<String>,
}

/// The trace of a request from its views.
pub(crate) fn trace(row: RequestRow, attempts: Vec<AttemptRow>) -> Trace {
    Trace {
        route: RouteView {
            task_class: row.task_class.clone(),
            policy_version: row.policy_version,
            features: row.features.clone(),
            scores: row.scores.clone(),
            top_features: row.top_features.clone(),
            prefer: row.prefer.clone(),
            min_path: row.min_path.clone(),
            max_path: row.max_path.clone(),
            classified_path: row.classified_path.clone(),
            candidates: row.candidates.clone(),
            stream: row.stream,
            prompt_tokens_estimate: row.prompt_tokens_estimate,
            max_tokens: row.max_tokens,
            hold_nano: row.hold_nano,
        },
        settlement: row.outcome.clone().map(|outcome| SettlementView {
            outcome,
            error_class: row.error_class.clone(),
            attempts: row.attempts,
            charge_nano: row.charge_nano,
            price_table_version: row.price_table_version.clone(),
            settled_at: unix(row.settled_at),
        }),
        feedback: (row.feedback_score.is_some()
            || row.feedback_label.is_some()
            || row.feedback_comment.is_some())
        .then(|| FeedbackView {
            score: row.feedback_score,
            label: row.feedback_label.clone(),
            comment: row.feedback_comment.clone(),
        }),
        summary: RequestSummary::from(&row),
        attempts,
    }
}

fn not_found(id: &str) -> ApiError {
    ApiError::NotFound {
        message: format!("No request found with id '{id}'"),
        param: Some("id".into()),
    }
}

/// A request and its attempts (of `account` only, when given), or a 404.
pub(crate) async fn load(
    state: &AppState,
    id: &str,
    account: Option<&str>,
) -> Result<(RequestRow, Vec<AttemptRow>), ApiError> {
    let found = state
        .read_model
        .request(id, account)
        .await
        .map_err(|e| ApiError::Unavailable(format!("request views unavailable: {e}")))?;
    found.ok_or_else(|| not_found(id))
}

/// `GET /v1/requests/{id}`: the trace, if the request is the calling account's.
pub async fn get(
    State(state): State<AppState>,
    CustomerKey(key): CustomerKey,
    Path(id): Path<String>,
) -> Result<Json<Trace>, ApiError> {
    let (row, attempts) = load(&state, &id, Some(key.account_id.as_str())).await?;
    Ok(Json(trace(row, attempts)))
}

/// `GET /admin/requests/{id}`
pub async fn admin_get(
    State(state): State<AppState>,
    _admin: AdminKey,
    Path(id): Path<String>,
) -> Result<Json<Trace>, ApiError> {
    let (row, attempts) = load(&state, &id, None).await?;
    Ok(Json(trace(row, attempts)))
}

/// Route statistics.
#[derive(Serialize)]
pub struct StatsList {
    object: &'static str,
    data: Vec<RouteStatsView>,
}

/// `GET /admin/routes/stats`
pub async fn route_stats(
    State(state): State<AppState>,
    _admin: AdminKey,
) -> Result<Json<StatsList>, ApiError> {
    let data = state
        .read_model
        .route_stats()
        .await
        .map_err(|e| ApiError::Unavailable(format!("route statistics unavailable: {e}")))?;
    Ok(Json(StatsList {
        object: "list",
        data,
    }))
}

/// Body of `POST /v1/feedback`.
#[derive(Deserialize)]
pub struct FeedbackBody {
    request_id: String,
    #[serde(default)]
    score: Option<f64>,
    #[serde(default)]
    label: Option<String>,
    #[serde(default)]
    comment: Option<String>,
}

/// `POST /v1/feedback`: a rating of one of the account's requests (a `FeedbackReceived`).
pub async fn feedback(
    State(state): State<AppState>,
    CustomerKey(key): CustomerKey,
    ApiJson(body): ApiJson<FeedbackBody>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    if body.score.is_none() && body.label.is_none() && body.comment.is_none() {
        return Err(ApiError::invalid(
            "Give at least one of 'score', 'label' or 'comment'.",
            Some("score"),
        ));
    }
    if body.score.is_some_and(|s| !s.is_finite()) {
        return Err(ApiError::invalid(
            "'score' must be a finite number",
            Some("score"),
        ));
    }
    let (row, _) = load(&state, &body.request_id, Some(key.account_id.as_str())).await?;
    let mut envelope = Envelope::new(row.account_id.as_str(), &*state.instance);
    envelope.request_id = Some(row.request_id.clone());
    envelope.project_id = row.project_id.clone();
    envelope.api_key_id = Some(key.key_id.to_string());
    let event = Event::new(
        envelope,
        FeedbackReceived {
            score: body.score,
            label: body.label,
            comment: body.comment,
            source: "api".into(),
        },
    );
    state
        .log
        .append_event(&event)
        .await
        .map_err(|e| ApiError::Unavailable(format!("The feedback could not be recorded: {e}")))?;
    Ok((
        StatusCode::CREATED,
        Json(
            serde_json::json!({"object": "feedback", "request_id": row.request_id, "event_id": event.envelope.event_id.to_string()}),
        ),
    ))
}
