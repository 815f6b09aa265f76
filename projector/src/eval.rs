//! Eval dataset export: one JSON line per settled request — route decision, deployment,
//! outcome, latency, usage, cost, feedback, eval results, and the prompt and answer for keys that opted in
//! with `store_content`. The line format is `schemas/eval/v<EVAL_SCHEMA_VERSION>.schema.json`.

use std::io::Write;

use lumina_schemas::NanoCredits;
use lumina_schemas::events::micros_to_rfc3339;
use serde::Serialize;
use serde_json::value::RawValue;
use sqlx::Row;

use crate::ReadModel;
use crate::views::{REQUEST_COLUMNS, RequestRow, request_row};

/// Version of the eval line format; every line carries it as `schema_version`.
pub const EVAL_SCHEMA_VERSION: u32 = 2;

/// Rows read per query while exporting.
const PAGE: i64 = 500;

/// Which settled requests to export.
#[derive(Debug, Clone, Default)]
pub struct ExportRange {
    /// Settled at or after, µs since the epoch.
    pub since: i64,
    /// Settled before, µs since the epoch (`None`: up to now).
    pub until: Option<i64>,
    /// Only this account.
    pub account_id: Option<String>,
}

/// Why an export stopped.
#[derive(Debug)]
pub enum ExportError {
    /// The database failed.
    Db(sqlx::Error),
    /// Writing the output failed.
    Io(std::io::Error),
}

impl std::fmt::Display for ExportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExportError::Db(e) => write!(f, "reading the request views failed: {e}"),
            ExportError::Io(e) => write!(f, "writing the export failed: {e}"),
        }
    }
}

impl std::error::Error for ExportError {}

impl From<sqlx::Error> for ExportError {
    fn from(e: sqlx::Error) -> Self {
        ExportError::Db(e)
    }
}

impl From<std::io::Error> for ExportError {
    fn from(e: std::io::Error) -> Self {
        ExportError::Io(e)
    }
}

#[derive(Serialize)]
struct Line<'a> {
    schema_version: u32,
    request_id: &'a str,
    settled_at: String,
    account_id: &'a str,
    project_id: Option<&'a str>,
    api_key_id: Option<&'a str>,
    requested_model: Option<&'a str>,
    route: Route<'a>,
    provider: Option<&'a str>,
    deployment: Option<&'a str>,
    outcome: &'a str,
    error_class: Option<&'a str>,
    attempts: Vec<Attempt>,
    latency_ms: Option<f64>,
    ttft_ms: Option<f64>,
    usage: Usage,
    cost: Cost,
    feedback: Option<Feedback<'a>>,
    evals: Vec<EvalResult>,
    content: Option<Content>,
}

#[derive(Serialize)]
struct Route<'a> {
    path: Option<&'a str>,
    task_class: Option<&'a str>,
    stream: Option<bool>,
    policy_version: Option<i64>,
    features: &'a Option<serde_json::Value>,
    scores: &'a Option<serde_json::Value>,
    candidates: &'a Option<serde_json::Value>,
}

#[derive(Serialize)]
struct Attempt {
    deployment: String,
    provider: String,
    outcome: String,
    error_class: Option<String>,
    duration_ms: f64,
    fell_back: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<String>,
}

#[derive(Serialize)]
struct Usage {
    prompt_tokens: i64,
    completion_tokens: i64,
    cached_tokens: i64,
    reasoning_tokens: i64,
    estimated: bool,
}

#[derive(Serialize)]
struct Cost {
    credits: String,
    credits_nano: i64,
    price_table_version: Option<String>,
}

#[derive(Serialize)]
struct Feedback<'a> {
    score: Option<f64>,
    label: Option<&'a str>,
    comment: Option<&'a str>,
}

#[derive(Serialize)]
struct EvalResult {
    run_id: String,
    dataset: String,
    item_id: String,
    check_kind: String,
    score: f64,
    passed: bool,
}

#[derive(Serialize)]
struct Content {
    messages: Box<RawValue>,
    answer: Option<String>,
    tool_calls: Option<Box<RawValue>>,
}

/// Stored JSON text as it is; text that is not JSON (never written by the gateway) as a string.
fn raw_json(text: String) -> Result<Box<RawValue>, ExportError> {
    match RawValue::from_string(text) {
        Ok(raw) => Ok(raw),
        Err(_) => Ok(serde_json::value::to_raw_value("(not JSON)").map_err(std::io::Error::from)?),
    }
}

fn ms(us: i64) -> f64 {
    us as f64 / 1000.0
}

impl ReadModel {
    /// Settled requests in `range`: the number an export will write.
    pub async fn count_settled(&self, range: &ExportRange) -> Result<u64, sqlx::Error> {
        let n: i64 = sqlx::query(
            "SELECT COUNT(*) FROM requests WHERE settled_at IS NOT NULL AND settled_at >= $1
                 AND ($2 IS NULL OR settled_at < $2) AND ($3 IS NULL OR account_id = $3)",
        )
        .bind(range.since)
        .bind(range.until)
        .bind(range.account_id.as_deref())
        .fetch_one(&self.database().pool)
        .await?
        .try_get(0)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Writes one JSON line per settled request in `range`, oldest first, calling `progress`
    /// with the running count after each page. Returns the number of lines written.
    pub async fn export_eval(
        &self,
        range: &ExportRange,
        out: &mut impl Write,
        mut progress: impl FnMut(u64),
    ) -> Result<u64, ExportError> {
        let pool = &self.database().pool;
        let sql = format!(
            "SELECT {REQUEST_COLUMNS},
                 (SELECT messages_json FROM request_content c WHERE c.request_id = r.request_id),
                 (SELECT answer FROM request_content c WHERE c.request_id = r.request_id),
                 (SELECT tool_calls_json FROM request_content c WHERE c.request_id = r.request_id)
             FROM requests r
             WHERE settled_at IS NOT NULL AND settled_at >= $1 AND ($2 IS NULL OR settled_at < $2)
               AND ($3 IS NULL OR account_id = $3)
               AND (settled_at > $4 OR (settled_at = $4 AND request_id > $5))
             ORDER BY settled_at, request_id LIMIT $6"
        );
        let mut written = 0u64;
        let mut cursor = (i64::MIN, String::new());
        loop {
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(range.since)
                .bind(range.until)
                .bind(range.account_id.as_deref())
                .bind(cursor.0)
                .bind(&cursor.1)
                .bind(PAGE)
                .fetch_all(pool)
                .await?;
            let Some(last) = rows.last() else { break };
            cursor = (last.try_get(30)?, last.try_get(0)?);
            // The content columns follow the request row's.
            let base = REQUEST_COLUMNS.split(',').count();
            for r in &rows {
                let row = request_row(r)?;
                let content = match r.try_get::<Option<String>, _>(base)? {
                    Some(messages) => Some(Content {
                        messages: raw_json(messages)?,
                        answer: r.try_get(base + 1)?,
                        tool_calls: r
                            .try_get::<Option<String>, _>(base + 2)?
                            .map(raw_json)
                            .transpose()?,
                    }),
                    None => None,
                };
                let attempts = self.attempt_summaries(&row.request_id).await?;
                let evals = self.eval_results_of(&row.request_id).await?;
                write_line(out, &row, attempts, evals, content)?;
                written += 1;
            }
            progress(written);
            if (rows.len() as i64) < PAGE {
                break;
            }
        }
        out.flush()?;
        Ok(written)
    }

    /// The eval results recorded for `request_id`, oldest first (through its index).
    async fn eval_results_of(&self, request_id: &str) -> Result<Vec<EvalResult>, sqlx::Error> {
        sqlx::query(
            "SELECT run_id, dataset, item_id, check_kind, score, passed
             FROM eval_results WHERE request_id = $1 ORDER BY completed_at, event_id",
        )
        .bind(request_id)
        .fetch_all(&self.database().pool)
        .await?
        .iter()
        .map(|r| {
            Ok(EvalResult {
                run_id: r.try_get(0)?,
                dataset: r.try_get(1)?,
                item_id: r.try_get(2)?,
                check_kind: r.try_get(3)?,
                score: r.try_get(4)?,
                passed: r.try_get::<i64, _>(5)? != 0,
            })
        })
        .collect()
    }

    async fn attempt_summaries(&self, request_id: &str) -> Result<Vec<Attempt>, sqlx::Error> {
        sqlx::query(
            "SELECT deployment, provider, outcome, error_class, duration_us, fell_back, role
             FROM request_attempts WHERE request_id = $1 ORDER BY attempt",
        )
        .bind(request_id)
        .fetch_all(&self.database().pool)
        .await?
        .iter()
        .map(|a| {
            Ok(Attempt {
                deployment: a.try_get(0)?,
                provider: a.try_get(1)?,
                outcome: a.try_get(2)?,
                error_class: a.try_get(3)?,
                duration_ms: ms(a.try_get(4)?),
                fell_back: a.try_get::<i64, _>(5)? != 0,
                role: a.try_get(6)?,
            })
        })
        .collect()
    }
}

fn write_line(
    out: &mut impl Write,
    row: &RequestRow,
    attempts: Vec<Attempt>,
    evals: Vec<EvalResult>,
    content: Option<Content>,
) -> Result<(), ExportError> {
    let charge = row.charge_nano.unwrap_or(0);
    let feedback = (row.feedback_score.is_some()
        || row.feedback_label.is_some()
        || row.feedback_comment.is_some())
    .then_some(Feedback {
        score: row.feedback_score,
        label: row.feedback_label.as_deref(),
        comment: row.feedback_comment.as_deref(),
    });
    let line = Line {
        schema_version: EVAL_SCHEMA_VERSION,
        request_id: &row.request_id,
        settled_at: micros_to_rfc3339(row.settled_at.unwrap_or(0)),
        account_id: &row.account_id,
        project_id: row.project_id.as_deref(),
        api_key_id: row.api_key_id.as_deref(),
        requested_model: row.requested_model.as_deref(),
        route: Route {
            path: row.path.as_deref(),
            task_class: row.task_class.as_deref(),
            stream: row.stream,
            policy_version: row.policy_version,
            features: &row.features,
            scores: &row.scores,
            candidates: &row.candidates,
        },
        provider: row.provider.as_deref(),
        deployment: row.deployment.as_deref(),
        outcome: row.outcome.as_deref().unwrap_or("unknown"),
        error_class: row.error_class.as_deref(),
        attempts,
        latency_ms: row.latency_us.map(ms),
        ttft_ms: row.ttft_us.map(ms),
        usage: Usage {
            prompt_tokens: row.prompt_tokens.unwrap_or(0),
            completion_tokens: row.completion_tokens.unwrap_or(0),
            cached_tokens: row.cached_tokens.unwrap_or(0),
            reasoning_tokens: row.reasoning_tokens.unwrap_or(0),
            estimated: row.usage_estimated.unwrap_or(false),
        },
        cost: Cost {
            credits: NanoCredits(charge).to_string(),
            credits_nano: charge,
            price_table_version: row.price_table_version.clone(),
        },
        feedback,
        evals,
        content,
    };
    serde_json::to_writer(&mut *out, &line).map_err(std::io::Error::from)?;
    out.write_all(b"\n")?;
    Ok(())
}
