//! `lumina projector` and `lumina ledger`: one consumer on its own — on the Kafka topic as a
//! member of its consumer group when the configuration has `[kafka]`, else over a data dir's
//! local log — and their `rebuild`, which empties the consumer's tables and replays.

use std::time::Duration;

use lumina_eventlog::{
    Consumer, ConsumerOptions, EventSource, LocalLogSource, LogReader, Projection, handled_types,
};
use lumina_kafka::KafkaSource;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::serve::connect_database;

/// Runs `projection` until a signal, or with `once` until it applied the log as it was at start
/// (local log only: a topic has no end).
pub async fn run<P: Projection>(config: &Config, projection: P, once: bool) -> anyhow::Result<()> {
    let db = connect_database(config).await?;
    let options = ConsumerOptions {
        batch_size: config.consumers.batch_size,
        idle_wait: Duration::from_millis(200),
        ..ConsumerOptions::default()
    };
    if let Some(kafka) = &config.kafka {
        if once {
            anyhow::bail!("--once reads a local log; with [kafka] the consumer runs until stopped");
        }
        kafka
            .ensure_topics()
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
        let source = KafkaSource::connect(kafka, db.clone(), projection.name()).await?;
        let consumer = Consumer::new(db, source, projection, options);
        return drive(consumer, None).await;
    }
    let reader = LogReader::open(config.log_path())?;
    let end = i64::try_from(reader.end_position().await?).unwrap_or(i64::MAX);
    let source = LocalLogSource::new(reader).only(&handled_types(&projection));
    let consumer = Consumer::new(db, source, projection, options);
    drive(consumer, once.then_some(end)).await
}

/// Runs `consumer` until a signal, or until it passed position `until` of partition 0.
async fn drive<S, P>(consumer: Consumer<S, P>, until: Option<i64>) -> anyhow::Result<()>
where
    S: EventSource + Sync + 'static,
    P: Projection,
{
    let name = consumer.watch().name;
    let mut progress = consumer.progress();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(consumer.run(cancel.clone()));
    match until {
        Some(end) => {
            let caught_up =
                progress.wait_for(|p| p.next_offsets.get(&0).copied().unwrap_or(1) > end);
            tokio::select! {
                _ = caught_up => {}
                _ = shutdown() => {}
            }
        }
        None => shutdown().await,
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

/// Ctrl-C or SIGTERM.
async fn shutdown() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
