//! Eval results: one `eval_results` row per `EvalCompleted` event (`lumina eval run`), the
//! score of an item's answer with the path, deployment, task classes and charges of the request
//! that gave it, and the lookups the gateway makes before it records a result (which requests
//! of an account exist and which already have a result).
//!
//! Rows are keyed by `event_id`, so a replayed event is a no-op; every column comes from the
//! event (`completed_at` is its `occurred_at`), so a rebuild writes identical rows.

use std::collections::HashMap;

use lumina_eventlog::ApplyError;
use lumina_eventlog::db::{fetch_in, insert_rows};
use lumina_schemas::{Event, Payload};
use sqlx::{AnyConnection, Row};

use crate::ReadModel;

/// Rows per multi-row statement (21 columns each, within SQLite's 32,766 parameters).
const ROWS: usize = 256;

/// Ids per `IN` list of a lookup.
const IDS: usize = 256;

/// Inserts the batch's `EvalCompleted` events; one already applied is skipped.
pub async fn apply_batch(conn: &mut AnyConnection, events: &[&Event]) -> Result<(), ApplyError> {
    let mut rows = Vec::new();
    for &event in events {
        let Payload::EvalCompleted(e) = &event.payload else {
            continue;
        };
        if !(0.0..=1.0).contains(&e.score) || !e.latency_ms.is_finite() || e.latency_ms < 0.0 {
            return Err(ApplyError::Rejected(format!(
                "eval result {} has score {} and latency {} ms; scores are 0 to 1, latencies finite and not negative",
                event.envelope.event_id, e.score, e.latency_ms
            )));
        }
        if event.envelope.request_id.is_none() {
            return Err(ApplyError::Rejected(format!(
                "eval result {} names no request",
                event.envelope.event_id
            )));
        }
        rows.push(event);
    }
    insert_rows(
        conn,
        "INSERT INTO eval_results (event_id, account_id, project_id, api_key_id, run_id, dataset,
             item_id, model, path, deployment, task_class, routed_task_class, check_kind, score,
             passed, cost_nano, latency_ms, request_id, judge_request_id, judge_cost_nano,
             completed_at)",
        21,
        "ON CONFLICT (event_id) DO NOTHING",
        ROWS,
        &rows,
        |q, event| {
            let Payload::EvalCompleted(e) = &event.payload else {
                return q;
            };
            let env = &event.envelope;
            q.bind(env.event_id.to_string())
                .bind(env.account_id.as_str())
                .bind(env.project_id.as_deref())
                .bind(env.api_key_id.as_deref())
                .bind(e.run_id.as_str())
                .bind(e.dataset.as_str())
                .bind(e.item_id.as_str())
                .bind(e.model.as_str())
                .bind(e.path.as_str())
                .bind(e.deployment.as_deref())
                .bind(e.task_class.as_deref())
                .bind(e.routed_task_class.as_deref())
                .bind(e.check_kind.as_str())
                .bind(e.score)
                .bind(i64::from(e.passed))
                .bind(e.cost_nano)
                .bind(e.latency_ms)
                .bind(env.request_id.as_deref().unwrap_or_default())
                .bind(e.judge_request_id.as_deref())
                .bind(e.judge_cost_nano)
                .bind(env.occurred_at)
        },
    )
    .await?;
    Ok(())
}

/// What the request views know of a request an eval result names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvaluatedRequest {
    /// `req_…`
    pub request_id: String,
    /// The `model` asked for.
    pub requested_model: Option<String>,
    /// Path taken.
    pub path: Option<String>,
    /// The classifier's task class.
    pub task_class: Option<String>,
    /// Deployment that answered.
    pub deployment: Option<String>,
    /// How it ended; `None` while in flight.
    pub outcome: Option<String>,
    /// The charge, nano-credits, once settled.
    pub charge_nano: Option<i64>,
}

impl ReadModel {
    /// The requests among `ids` that belong to `account_id`, by id. Another account's request
    /// is left out exactly like an unknown id.
    pub async fn requests_of_account(
        &self,
        account_id: &str,
        ids: &[&str],
    ) -> Result<HashMap<String, EvaluatedRequest>, sqlx::Error> {
        let mut conn = self.database().pool.acquire().await?;
        let mut found = HashMap::new();
        let rows = fetch_in(
            &mut conn,
            "SELECT request_id, account_id, requested_model, path, task_class, deployment,
                 outcome, charge_nano
             FROM requests WHERE request_id",
            "",
            IDS,
            ids,
        )
        .await?;
        for r in rows {
            if r.try_get::<String, _>(1)? != account_id {
                continue;
            }
            let request = EvaluatedRequest {
                request_id: r.try_get(0)?,
                requested_model: r.try_get(2)?,
                path: r.try_get(3)?,
                task_class: r.try_get(4)?,
                deployment: r.try_get(5)?,
                outcome: r.try_get(6)?,
                charge_nano: r.try_get(7)?,
            };
            found.insert(request.request_id.clone(), request);
        }
        Ok(found)
    }

    /// The requests among `ids` that already have an eval result of `account_id`.
    pub async fn evaluated_requests(
        &self,
        account_id: &str,
        ids: &[&str],
    ) -> Result<Vec<String>, sqlx::Error> {
        let mut conn = self.database().pool.acquire().await?;
        let mut found = Vec::new();
        let rows = fetch_in(
            &mut conn,
            "SELECT request_id, account_id FROM eval_results WHERE request_id",
            "",
            IDS,
            ids,
        )
        .await?;
        for r in rows {
            if r.try_get::<String, _>(1)? == account_id {
                found.push(r.try_get(0)?);
            }
        }
        Ok(found)
    }
}
