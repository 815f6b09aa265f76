//! Helpers of the projector's tests: project a log into a database, dump every read-model row.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

use std::time::Duration;

use lumina_eventlog::{Consumer, ConsumerOptions, Database, EventLog, LocalLogSource};
use lumina_projector::ReadModelProjection;
use lumina_projector::read_model::TABLES;
use sqlx::Row;
use tokio_util::sync::CancellationToken;

/// Applies the whole of `log` to `db` in batches of at most `batch_size` events.
pub async fn project(db: &Database, log: &EventLog, batch_size: usize) {
    let source =
        LocalLogSource::new(log.reader().unwrap()).with_commit_notifications(log.subscribe());
    let consumer = Consumer::new(
        db.clone(),
        source,
        ReadModelProjection,
        ConsumerOptions {
            batch_size,
            idle_wait: Duration::from_millis(20),
            ..ConsumerOptions::default()
        },
    );
    let mut progress = consumer.progress();
    let cancel = CancellationToken::new();
    let token = cancel.clone();
    let task = tokio::spawn(consumer.run(token));
    let end = log.committed_position() as i64;
    tokio::time::timeout(
        Duration::from_secs(60),
        progress.wait_for(|p| p.next_offsets.get(&0).copied().unwrap_or(0) > end),
    )
    .await
    .unwrap()
    .unwrap();
    cancel.cancel();
    task.await.unwrap().unwrap();
}

/// Every read-model row, rendered as text, sorted.
pub async fn dump(db: &Database) -> Vec<String> {
    let mut out = Vec::new();
    for table in TABLES {
        let sql = sqlx::AssertSqlSafe(format!("SELECT * FROM {table}"));
        for row in sqlx::query(sql).fetch_all(&db.pool).await.unwrap() {
            let mut line = format!("{table}:");
            for i in 0..row.len() {
                let text = row
                    .try_get::<Option<String>, _>(i)
                    .map(|v| format!("{v:?}"))
                    .or_else(|_| row.try_get::<Option<i64>, _>(i).map(|v| format!("{v:?}")))
                    .or_else(|_| row.try_get::<Option<f64>, _>(i).map(|v| format!("{v:?}")))
                    .unwrap();
                line.push_str(&format!(" {text}"));
            }
            out.push(line);
        }
    }
    out.sort();
    out
}
