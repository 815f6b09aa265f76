//! `lumina projector` and `lumina ledger`: one consumer on its own — on the Kafka topic as a
//! member of its consumer group when the configuration has `[kafka]`, else over a data dir's
//! local log — and their `rebuild`, which empties the consumer's tables and replays.

use std::time::Duration;

use lumina_eventlog::{
    Consumer, ConsumerOptions, EventSource, LocalLogSource, LogReader, Projection, handled_types,
};
use lumina_kafka::{Assignment, KafkaSource};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::serve::connect_database;

/// Runs `projection` until a signal, or with `once` until it applied the log (or every
/// partition of the topic) as it was at start. A one-shot run on the topic takes every partition
/// itself rather than joining the consumer group, so it never moves partitions away from the
/// running members.
pub async fn run<P: Projection>(config: &Config, projection: P, once: bool) -> anyhow::Result<()> {
    let db = connect_database(config).await?;
    let options = ConsumerOptions {
        batch_size: config.consumers.batch_size,
        coalesce: std::time::Duration::from_millis(config.consumers.coalesce_ms),
        idle_wait: Duration::from_millis(200),
    };
    if let Some(kafka) = &config.kafka {
        kafka
            .ensure_topics()
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
        let mut kafka = kafka.clone();
        if once {
            kafka.assignment = Assignment::All;
        }
        let source = KafkaSource::connect(&kafka, db.clone(), projection.name()).await?;
        let until = if once {
            Some(source.ends().await?)
        } else {
            None
        };
        let consumer = Consumer::new(db, source, projection, options);
        return drive(consumer, until).await;
    }
    let reader = LogReader::open(config.log_path())?;
    let end = i64::try_from(reader.end_position().await?).unwrap_or(i64::MAX);
    let source = LocalLogSource::new(reader).only(&handled_types(&projection));
    let consumer = Consumer::new(db, source, projection, options);
    // Positions are dense from 1: the log as it is now is applied once the next one is end + 1.
    let ends = if end > 0 {
        vec![(0, end + 1)]
    } else {
        Vec::new()
    };
    drive(consumer, once.then_some(ends)).await
}

/// Runs `consumer` until a signal, or until its next offset in each partition of `until`
/// reached the one given there.
async fn drive<S, P>(consumer: Consumer<S, P>, until: Option<Vec<(i32, i64)>>) -> anyhow::Result<()>
where
    S: EventSource + Sync + 'static,
    P: Projection,
{
    let name = consumer.watch().name;
    let mut progress = consumer.progress();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(consumer.run(cancel.clone()));
    match until {
        Some(ends) => {
            let caught_up = progress.wait_for(|p| {
                ends.iter()
                    .all(|(partition, end)| p.next_offsets.get(partition).is_some_and(|n| n >= end))
            });
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
