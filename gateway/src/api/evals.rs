//! `POST /v1/evals/results`: a batch of scored eval items (`lumina eval run`), recorded as one
//! `EvalCompleted` event each.
//!
//! The client says what only it knows — run, dataset, item, check, score, its own latency —
//! and names the request that produced the answer (and the judge's request, for judge checks).
//! Everything else comes from the gateway's record of those requests: the model asked for, the
//! path and deployment, the classifier's task class and the settled charges. Each named request
//! must be a settled request of the calling key's account; another account's request is
//! refused exactly like an unknown id, so nobody can record results for, or learn about, other
//! accounts. A batch is checked whole before any of it is recorded, and the answer comes once
//! the read model holds it.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use lumina_projector::eval_results::EvaluatedRequest;
use lumina_schemas::ids::has_shape;
use lumina_schemas::payloads::EvalCompleted;
use lumina_schemas::{Envelope, Event};
use serde::{Deserialize, Serialize};

use crate::api::error::ApiError;
use crate::api::extract::{ApiJson, CustomerKey};
use crate::auth::KeyIdentity;
use crate::state::AppState;

/// Most results in one batch.
pub const MAX_RESULTS: usize = 100;
/// Longest run id, dataset name, item id or task class, in characters.
const MAX_NAME_CHARS: usize = 256;
/// Longest latency accepted: a day.
const MAX_LATENCY_MS: f64 = 86_400_000.0;
/// How long a lookup waits for the read model to show requests it does not show yet.
const LOOKUP_WAIT: Duration = Duration::from_secs(5);
/// Polling interval when the consumers run in other processes.
const LOOKUP_POLL: Duration = Duration::from_millis(50);

/// How an answer was scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckKind {
    /// The answer equals the expected text.
    Exact,
    /// The answer matches a regular expression.
    Regex,
    /// The answer is JSON valid under a JSON Schema.
    JsonSchema,
    /// A number in the answer is within a tolerance of the expected one.
    Numeric,
    /// A judge route graded the answer.
    Judge,
}

impl CheckKind {
    /// The kind's name, as in `EvalCompleted.check_kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckKind::Exact => "exact",
            CheckKind::Regex => "regex",
            CheckKind::JsonSchema => "json_schema",
            CheckKind::Numeric => "numeric",
            CheckKind::Judge => "judge",
        }
    }
}

/// One scored item, as a client sends it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalResult {
    /// The eval run.
    pub run_id: String,
    /// The dataset's name.
    pub dataset: String,
    /// The item's id.
    pub item_id: String,
    /// The request that produced the answer (`x-request-id`).
    pub request_id: String,
    /// The item's task class from the dataset.
    #[serde(default)]
    pub task_class: Option<String>,
    /// How the answer was scored.
    pub check_kind: CheckKind,
    /// The score, 0 to 1.
    pub score: f64,
    /// Whether the score met the check's bar.
    pub passed: bool,
    /// The request's latency as the client measured it, milliseconds.
    pub latency_ms: f64,
    /// The judge's request, for judge checks (and only for them).
    #[serde(default)]
    pub judge_request_id: Option<String>,
}

/// Body of `POST /v1/evals/results`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalResultsBody {
    /// 1 to [`MAX_RESULTS`] results.
    pub results: Vec<EvalResult>,
}

/// One recorded result: the event's id, its request, and its payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedResult {
    /// `eval.result`.
    pub object: String,
    /// The `EvalCompleted` event's id.
    pub event_id: String,
    /// The item's request.
    pub request_id: String,
    /// What was recorded.
    #[serde(flatten)]
    pub result: EvalCompleted,
}

/// The answer: the recorded results, in the order sent.
#[derive(Debug, Serialize, Deserialize)]
pub struct RecordedResults {
    /// `list`.
    pub object: String,
    /// One per result sent.
    pub data: Vec<RecordedResult>,
}

/// `POST /v1/evals/results`
pub async fn record(
    State(state): State<AppState>,
    CustomerKey(key): CustomerKey,
    ApiJson(body): ApiJson<EvalResultsBody>,
) -> Result<(StatusCode, Json<RecordedResults>), ApiError> {
    validate(&body.results)?;
    let named = named_requests(&body.results);
    let requests = settled_requests(&state, key.account_id.as_str(), &named).await?;
    let item_ids: Vec<&str> = body.results.iter().map(|r| r.request_id.as_str()).collect();
    let evaluated = state
        .read_model
        .evaluated_requests(key.account_id.as_str(), &item_ids)
        .await
        .map_err(unavailable)?;
    if let Some(i) = body
        .results
        .iter()
        .position(|r| evaluated.contains(&r.request_id))
    {
        return Err(ApiError::invalid(
            format!(
                "Request '{}' already has an eval result.",
                body.results[i].request_id
            ),
            Some(&format!("results[{i}].request_id")),
        ));
    }
    let events: Vec<Event> = body
        .results
        .into_iter()
        .map(|r| event(&state, &key, &requests, r))
        .collect();
    state.admin.record(&events).await?;
    let data = events
        .into_iter()
        .filter_map(|e| {
            let lumina_schemas::Payload::EvalCompleted(result) = e.payload else {
                return None;
            };
            Some(RecordedResult {
                object: "eval.result".into(),
                event_id: e.envelope.event_id.to_string(),
                request_id: e.envelope.request_id.unwrap_or_default(),
                result,
            })
        })
        .collect();
    Ok((
        StatusCode::CREATED,
        Json(RecordedResults {
            object: "list".into(),
            data,
        }),
    ))
}

fn unavailable(e: sqlx::Error) -> ApiError {
    ApiError::Unavailable(format!("request views unavailable: {e}"))
}

fn name(value: &str, param: &str) -> Result<(), ApiError> {
    if value.trim().is_empty() || value.chars().count() > MAX_NAME_CHARS {
        return Err(ApiError::invalid(
            format!("'{param}' must be 1 to {MAX_NAME_CHARS} characters"),
            Some(param),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            format!("'{param}' must not contain control characters"),
            Some(param),
        ));
    }
    Ok(())
}

fn request_id(value: &str, param: &str) -> Result<(), ApiError> {
    if has_shape(value, "req") {
        Ok(())
    } else {
        Err(ApiError::invalid(
            format!("'{param}' must be a request id (req_ and 32 hex digits, as in x-request-id)"),
            Some(param),
        ))
    }
}

/// Checks every bound of the batch, naming the first field that breaks one.
fn validate(results: &[EvalResult]) -> Result<(), ApiError> {
    if results.is_empty() || results.len() > MAX_RESULTS {
        return Err(ApiError::invalid(
            format!("'results' must hold 1 to {MAX_RESULTS} results"),
            Some("results"),
        ));
    }
    let mut seen = HashSet::new();
    for (i, r) in results.iter().enumerate() {
        let at = |field: &str| format!("results[{i}].{field}");
        name(&r.run_id, &at("run_id"))?;
        name(&r.dataset, &at("dataset"))?;
        name(&r.item_id, &at("item_id"))?;
        if let Some(class) = &r.task_class {
            name(class, &at("task_class"))?;
        }
        if !(0.0..=1.0).contains(&r.score) {
            return Err(ApiError::invalid(
                "'score' must be a number from 0 to 1",
                Some(&at("score")),
            ));
        }
        if !(0.0..=MAX_LATENCY_MS).contains(&r.latency_ms) {
            return Err(ApiError::invalid(
                format!("'latency_ms' must be a number from 0 to {MAX_LATENCY_MS}"),
                Some(&at("latency_ms")),
            ));
        }
        request_id(&r.request_id, &at("request_id"))?;
        match (&r.judge_request_id, r.check_kind) {
            (Some(judge), CheckKind::Judge) => request_id(judge, &at("judge_request_id"))?,
            (None, CheckKind::Judge) => {
                return Err(ApiError::invalid(
                    "A judge check must name the judge's request in 'judge_request_id'",
                    Some(&at("judge_request_id")),
                ));
            }
            (Some(_), _) => {
                return Err(ApiError::invalid(
                    "Only judge checks have a 'judge_request_id'",
                    Some(&at("judge_request_id")),
                ));
            }
            (None, _) => {}
        }
        let named = [
            Some((&r.request_id, "request_id")),
            r.judge_request_id.as_ref().map(|j| (j, "judge_request_id")),
        ];
        for (id, field) in named.into_iter().flatten() {
            if !seen.insert(id.as_str()) {
                return Err(ApiError::invalid(
                    format!("Request '{id}' is named twice in this batch"),
                    Some(&at(field)),
                ));
            }
        }
    }
    Ok(())
}

/// The requests a batch names, each with the field that names it.
fn named_requests(results: &[EvalResult]) -> Vec<(&str, String)> {
    let mut named = Vec::with_capacity(results.len() * 2);
    for (i, r) in results.iter().enumerate() {
        named.push((r.request_id.as_str(), format!("results[{i}].request_id")));
        if let Some(judge) = &r.judge_request_id {
            named.push((judge.as_str(), format!("results[{i}].judge_request_id")));
        }
    }
    named
}

/// The settled requests of `account_id` among `named`, waiting (up to [`LOOKUP_WAIT`]) for
/// the read model to apply what the log already holds; the first one missing is refused,
/// naming its field.
async fn settled_requests(
    state: &AppState,
    account_id: &str,
    named: &[(&str, String)],
) -> Result<HashMap<String, EvaluatedRequest>, ApiError> {
    let ids: Vec<&str> = named.iter().map(|(id, _)| *id).collect();
    let lookup = || async {
        let found = state
            .read_model
            .requests_of_account(account_id, &ids)
            .await
            .map_err(unavailable)?;
        let pending = named.iter().find(|(id, _)| {
            !found
                .get(*id)
                .is_some_and(|r| r.outcome.is_some() && r.path.is_some())
        });
        Ok::<_, ApiError>(match pending {
            None => Ok(found),
            Some((id, param)) => Err(refusal(found.contains_key(*id), id, param)),
        })
    };
    let local: Vec<_> = state
        .readiness
        .consumers
        .iter()
        .filter(|c| c.name == lumina_projector::CONSUMER)
        .collect();
    let deadline = tokio::time::Instant::now() + LOOKUP_WAIT;
    loop {
        let refused = match lookup().await? {
            Ok(found) => return Ok(found),
            Err(refused) => refused,
        };
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Err(refused);
        }
        if local.is_empty() {
            tokio::time::sleep(LOOKUP_POLL).await;
            continue;
        }
        // Embedded mode: once the projector applied the log as it is now, what is still
        // missing was never committed here.
        let end = state.log.committed_position();
        for consumer in &local {
            consumer
                .wait_applied(end, deadline.saturating_duration_since(now))
                .await;
        }
        return lookup().await?;
    }
}

/// Why a named request is refused: in flight, or not the account's (unknown alike).
fn refusal(exists: bool, id: &str, param: &str) -> ApiError {
    if exists {
        return ApiError::invalid(
            format!("Request '{id}' has not settled yet; record its result once it has."),
            Some(param),
        );
    }
    ApiError::NotFound {
        message: format!("No request found with id '{id}'"),
        param: Some(param.to_string()),
    }
}

fn event(
    state: &AppState,
    key: &KeyIdentity,
    requests: &HashMap<String, EvaluatedRequest>,
    r: EvalResult,
) -> Event {
    let item = requests.get(&r.request_id);
    let judge = r.judge_request_id.as_ref().and_then(|id| requests.get(id));
    let mut envelope = Envelope::new(key.account_id.as_str(), &*state.instance);
    envelope.request_id = Some(r.request_id.clone());
    envelope.project_id = Some(key.project_id.to_string());
    envelope.api_key_id = Some(key.key_id.to_string());
    Event::new(
        envelope,
        EvalCompleted {
            run_id: r.run_id,
            dataset: r.dataset,
            item_id: r.item_id,
            model: item
                .and_then(|i| i.requested_model.clone())
                .unwrap_or_default(),
            path: item.and_then(|i| i.path.clone()).unwrap_or_default(),
            deployment: item.and_then(|i| i.deployment.clone()),
            task_class: r.task_class,
            routed_task_class: item.and_then(|i| i.task_class.clone()),
            check_kind: r.check_kind.as_str().into(),
            score: r.score,
            passed: r.passed,
            cost_nano: item.and_then(|i| i.charge_nano).unwrap_or(0),
            latency_ms: r.latency_ms,
            judge_cost_nano: judge.map(|j| j.charge_nano.unwrap_or(0)),
            judge_request_id: r.judge_request_id,
        },
    )
}
