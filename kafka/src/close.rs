//! Closing Kafka clients at shutdown within a bound. librdkafka's close of a consumer (leave the
//! group, answer the revoke) and of a producer (purge, flush) waits on the broker, and an
//! unresponsive broker would hold a process for as long as its request timeouts. Nothing is
//! lost by not waiting: unshipped events stay in the local log with the shipper's position
//! behind them, and a consumer's positions are in the database with its effects.

use std::sync::Arc;
use std::time::Duration;

/// How long a process waits for one Kafka client to close at shutdown.
pub const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// How often the closer looks whether a handle shared with a poll in flight came back.
const RECLAIM_EVERY: Duration = Duration::from_millis(10);

/// Drops `client` on a thread of its own once this holds its last handle (a poll in flight may
/// hold another for up to its wait), and returns when that is done or after `limit`, leaving a
/// close still waiting on the broker to end with the process. Blocking.
pub fn close_within<T: Send + Sync + 'static>(client: Arc<T>, limit: Duration, what: &'static str) {
    let (done, closed) = std::sync::mpsc::channel::<()>();
    let spawned = std::thread::Builder::new()
        .name(format!("close-{what}"))
        .spawn(move || {
            let mut client = client;
            loop {
                match Arc::try_unwrap(client) {
                    Ok(last) => {
                        drop(last);
                        break;
                    }
                    Err(shared) => {
                        client = shared;
                        std::thread::sleep(RECLAIM_EVERY);
                    }
                }
            }
            let _ = done.send(());
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, what, "cannot start a thread to close a Kafka client; leaving it open");
        return;
    }
    if closed.recv_timeout(limit).is_err() {
        tracing::warn!(
            what,
            ?limit,
            "the broker did not let a Kafka client close in time; exiting without waiting"
        );
    }
}
