//! `/healthz` (the process answers) and `/readyz` (migrations ran, the log takes writes, and
//! the projector has caught up with the log as it was at startup).

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
    let committed = state.log.committed_position();
    let next = readiness.projector_next();
    let progress = readiness.projector.borrow().clone();
    let lag_events = i64::try_from(committed).unwrap_or(i64::MAX) - (next - 1);
    let lag_ms = if progress.newest_event_at > 0 && lag_events > 0 {
        (lumina_schemas::now_micros() - progress.newest_event_at) / 1000
    } else {
        0
    };
    let log_healthy = state.log.is_healthy();
    let ready = readiness.caught_up() && log_healthy;
    let body = json!({
        "status": if ready { "ready" } else { "starting" },
        "migrations": "applied",
        "log": {
            "committed_position": committed,
            "healthy": log_healthy,
            "queued": state.log.queue_len(),
        },
        "consumers": {
            "projector": {
                "next_position": next,
                "lag_events": lag_events.max(0),
                "lag_ms": lag_ms,
                "caught_up_with_startup": readiness.caught_up(),
                "dead_letters": progress.dead_letters,
            }
        },
        "keys_cached": state.keys.len(),
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}
