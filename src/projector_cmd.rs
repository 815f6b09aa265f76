//! `lumina projector`: the read-model projector on its own, over a data dir's local log, and
//! `lumina projector rebuild`, which empties the read models and replays the log.

use std::time::Duration;

use lumina_eventlog::{Consumer, ConsumerOptions, LocalLogSource, LogReader, handled_types};
use lumina_projector::ReadModelProjection;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::serve::connect_database;

/// Runs the projector until a signal, or with `once` until it applied the log as it was at start.
pub async fn run(config: &Config, once: bool) -> anyhow::Result<()> {
    let log_path = config.log_path();
    let reader = LogReader::open(&log_path)?;
    let end = i64::try_from(reader.end_position().await?).unwrap_or(i64::MAX);
    let db = connect_database(config).await?;
    let consumer = Consumer::new(
        db,
        LocalLogSource::new(reader).only(&handled_types(&ReadModelProjection)),
        ReadModelProjection,
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
        applied = p.applied,
        duplicates = p.duplicates,
        dead_letters = p.dead_letters,
        "projector stopped"
    );
    Ok(())
}

/// Empties the read models and replays the whole log into them.
pub async fn rebuild(config: &Config) -> anyhow::Result<()> {
    let db = connect_database(config).await?;
    lumina_projector::read_model::rebuild(&db).await?;
    run(config, true).await
}
