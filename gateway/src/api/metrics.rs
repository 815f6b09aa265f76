//! `GET /metrics`: Prometheus text exposition. Consumers record their own series (events
//! applied, duplicates, dead letters, and `lumina_event_to_view_lag_seconds`, the time from an
//! event's `occurred_at` to the commit that made it visible); the gauges of the local log, of
//! the credit book's holds not yet in the ledger's balances and of each consumer's backlog are
//! set here, at scrape time, with each deployment's breaker state. The GenAI histograms and
//! the gateway's overhead (`telemetry::instruments`) have buckets; other histograms are
//! summaries.

use std::time::Duration;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::state::AppState;
use crate::telemetry::instruments;

/// How often histogram samples are folded into their summaries when nobody scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Installs the process-wide Prometheus recorder; call once, from the runtime, before
/// consumers start. A task folds recorded histogram samples into their summaries every few
/// seconds: the recorder keeps every sample until upkeep runs, so without it a gateway nobody
/// scrapes would grow by every event's lag sample.
pub fn install_recorder() -> Result<PrometheusHandle, String> {
    let builder = PrometheusBuilder::new()
        .set_quantiles(&[0.5, 0.9, 0.99, 0.999])
        .map_err(|e| e.to_string())?;
    let handle = instruments::with_buckets(builder)
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| e.to_string())?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(UPKEEP_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// The scrape.
pub async fn metrics(State(state): State<AppState>) -> Response {
    let Some(handle) = state.metrics.as_ref() else {
        return (StatusCode::NOT_FOUND, "metrics are not enabled\n").into_response();
    };
    let committed = i64::try_from(state.log.committed_position()).unwrap_or(i64::MAX);
    metrics::gauge!("lumina_log_committed_position").set(committed as f64);
    metrics::gauge!("lumina_log_queue_length").set(state.log.queue_len() as f64);
    metrics::gauge!("lumina_log_healthy").set(f64::from(u8::from(state.log.is_healthy())));
    metrics::gauge!("lumina_log_dropped_records").set(state.log.dropped_records() as f64);
    metrics::gauge!("lumina_keys_cached").set(state.keys.len() as f64);
    metrics::gauge!("lumina_credit_pending_holds").set(state.credits.pending_holds() as f64);
    for c in &state.readiness.consumers {
        let next = c.next_position();
        let last_lag = c.progress.borrow().last_batch_lag_us;
        metrics::gauge!("lumina_consumer_lag_events", "consumer" => c.name)
            .set((committed - (next - 1)).max(0) as f64);
        metrics::gauge!("lumina_consumer_last_batch_lag_seconds", "consumer" => c.name)
            .set(last_lag as f64 / 1e6);
    }
    for d in state.routes.every_deployment() {
        metrics::gauge!(
            instruments::BREAKER_STATE,
            "deployment" => d.id.clone(),
            "gen_ai_provider_name" => d.kind.as_str()
        )
        .set(d.breaker.state().gauge());
    }
    handle.run_upkeep();
    let mut response = handle.render().into_response();
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}
