//! Releases orphaned holds: a hold with no settlement after its TTL (the gateway that placed it
//! crashed, or lost its settlement) gets a `HoldExpired` event, which the ledger journals as an
//! expiry. Outside crashes the count of such events stays 0.

use std::collections::HashSet;
use std::time::Duration;

use lumina_eventlog::{Database, EventLog};
use lumina_schemas::payloads::HoldExpired;
use lumina_schemas::{Envelope, Event, now_micros};
use sqlx::Row;
use tokio_util::sync::CancellationToken;

/// How often open holds are checked.
pub const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// One sweep: appends `HoldExpired` for every open hold past its TTL not already expired by
/// an earlier sweep (`sent`). Returns how many it expired.
pub async fn sweep(
    db: &Database,
    log: &EventLog,
    instance: &str,
    sent: &mut HashSet<String>,
) -> Result<usize, String> {
    let rows = sqlx::query(
        "SELECT request_id, account_id, amount_nano, placed_at, ttl_ms FROM ledger_holds
         WHERE status = 'open' AND placed_at + ttl_ms * 1000 < $1 ORDER BY placed_at LIMIT 1000",
    )
    .bind(now_micros())
    .fetch_all(&db.pool)
    .await
    .map_err(|e| e.to_string())?;
    let mut still_open = HashSet::new();
    let mut expired = 0;
    for row in rows {
        let request_id: String = row.try_get(0).map_err(|e| e.to_string())?;
        still_open.insert(request_id.clone());
        if sent.contains(&request_id) {
            continue;
        }
        let mut envelope = Envelope::new(
            row.try_get::<String, _>(1).map_err(|e| e.to_string())?,
            instance,
        );
        envelope.request_id = Some(request_id.clone());
        let event = Event::new(
            envelope,
            HoldExpired {
                amount_nano: row.try_get(2).map_err(|e| e.to_string())?,
                hold_placed_at: row.try_get(3).map_err(|e| e.to_string())?,
                ttl_ms: row.try_get(4).map_err(|e| e.to_string())?,
            },
        );
        log.append_event(&event).await.map_err(|e| e.to_string())?;
        tracing::warn!(request_id, "hold expired without a settlement (orphan)");
        sent.insert(request_id);
        expired += 1;
    }
    sent.retain(|id| still_open.contains(id));
    Ok(expired)
}

/// Sweeps every [`SWEEP_EVERY`] until cancelled.
pub async fn run(db: Database, log: EventLog, instance: String, cancel: CancellationToken) {
    let mut sent = HashSet::new();
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {
                if let Err(e) = sweep(&db, &log, &instance, &mut sent).await {
                    tracing::warn!(error = %e, "hold sweep failed");
                }
            }
        }
    }
}
