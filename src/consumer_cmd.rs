//! `lumina projector` and `lumina ledger`: one consumer on its own over a data dir's local log,
//! and their `rebuild`, which empties the consumer's tables and replays the whole log.

use std::time::Duration;

use lumina_eventlog::{
    Consumer, ConsumerOptions, LocalLogSource, LogReader, Projection, handled_types,
};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::serve::connect_database;

/// Runs `projection` until a signal, or with `once` until it applied the log as it was at start.
pub async fn run<P: Projection>(config: &Config, projection: P, once: bool) -> anyhow::Result<()> {
    let reader = LogReader::open(config.log_path())?;
    let end = i64::try_from(reader.end_position().await?).unwrap_or(i64::MAX);
    let db = connect_database(config).await?;
    let name = projection.name();
    let consumer = Consumer::new(
        db,
        LocalLogSource::new(reader).only(&handled_types(&projection)),
        projection,
        ConsumerOptions {
            batch_size: config.consumers.batch_size,
            idle_wait: Duration::from_millis(200),
            ..ConsumerOptions::default()
        },
    );
    let mut progress = consumer.progress();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(consumer.run(cancel.clone()));
    if once {
        let caught_up = progress.wait_for(|p| p.next_offsets.get(&0).copied().unwrap_or(1) > end);
        tokio::select! {
            _ = caught_up => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    } else {
        let _ = tokio::signal::ctrl_c().await;
    }
    cancel.cancel();
    task.await??;
    let p = progress.borrow().clone();
    tracing::info!(
        consumer = name,
        applied = p.applied,
        duplicates = p.duplicates,
        dead_letters = p.dead_letters,
        "consumer stopped"
    );
    Ok(())
}
