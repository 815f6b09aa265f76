//! `/healthz` (the process answers) and `/readyz` (migrations ran, the log takes writes, and
//! the projector has caught up with the log as it was at startup), with each consumer's backlog
//! and the event-to-view lag of its last batch.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::state::AppState;

/// Liveness: 200 while the process serves HTTP.
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Readiness with detail; 503 until ready.
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let readiness = &state.readiness;
    let committed = i64::try_from(state.log.committed_position()).unwrap_or(i64::MAX);
    let now = lumina_schemas::now_micros();
    let consumers: serde_json::Map<String, Value> = readiness
        .consumers
        .iter()
        .map(|c| {
            let next = c.next_position();
            let progress = c.progress.borrow().clone();
            let lag_events = (committed - (next - 1)).max(0);
            let lag_ms = if progress.newest_event_at > 0 && lag_events > 0 {
                (now - progress.newest_event_at) / 1000
            } else {
                0
            };
            let detail = json!({
                "next_position": next,
                "lag_events": lag_events,
                "lag_ms": lag_ms,
                "event_to_view_ms": progress.last_batch_lag_us as f64 / 1000.0,
                "applied": progress.applied,
                "dead_letters": progress.dead_letters,
            });
            (c.name.to_string(), detail)
        })
        .collect();
    let log_healthy = state.log.is_healthy();
    let caught_up = readiness.caught_up();
    let ready = caught_up && log_healthy;
    let body = json!({
        "status": if ready { "ready" } else { "starting" },
        "migrations": "applied",
        "caught_up_with_startup": caught_up,
        "log": {
            "committed_position": committed,
            "healthy": log_healthy,
            "queued": state.log.queue_len(),
        },
        "consumers": consumers,
        "keys_cached": state.keys.len(),
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}
