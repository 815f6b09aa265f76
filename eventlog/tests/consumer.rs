//! Exactly-once consumers on SQLite and PostgreSQL: duplicates are no-ops, undecodable and
//! poison messages are dead-lettered without blocking, positions resume after a restart.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

use std::time::Duration;

use lumina_eventlog::{
    ApplyError, Backend, Consumer, ConsumerOptions, Database, EventLog, LocalLogSource, LogOptions,
    LogRecord, Progress, Projection,
};
use lumina_schemas::payloads::CreditsGranted;
use lumina_schemas::{Envelope, Event, Payload};
use lumina_testkit::{BACKENDS, migrated_database};
use sqlx::{AnyConnection, Row};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Sums grants per account: a non-idempotent effect, so any double application shows.
struct Tally;

/// Amount that makes `Tally` fail with a constraint violation (a poison event).
const POISON: i64 = 13;

impl Projection for Tally {
    fn name(&self) -> &'static str {
        "tally"
    }

    async fn apply(&self, conn: &mut AnyConnection, event: &Event) -> Result<(), ApplyError> {
        let Payload::CreditsGranted(g) = &event.payload else {
            return Ok(());
        };
        let amount = if g.amount_nano == POISON {
            None
        } else {
            Some(g.amount_nano)
        };
        sqlx::query("INSERT INTO tally_events (event_id, account_id, amount) VALUES ($1, $2, $3)")
            .bind(event.envelope.event_id.to_string())
            .bind(&event.envelope.account_id)
            .bind(amount)
            .execute(&mut *conn)
            .await?;
        sqlx::query(
            "INSERT INTO tally_totals (account_id, total, n) VALUES ($1, $2, 1)
             ON CONFLICT (account_id) DO UPDATE
             SET total = tally_totals.total + excluded.total, n = tally_totals.n + 1",
        )
        .bind(&event.envelope.account_id)
        .bind(g.amount_nano)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}

async fn create_tally_tables(db: &Database) {
    for sql in [
        "CREATE TABLE tally_events (event_id TEXT PRIMARY KEY, account_id TEXT NOT NULL, amount BIGINT NOT NULL)",
        "CREATE TABLE tally_totals (account_id TEXT PRIMARY KEY, total BIGINT NOT NULL, n BIGINT NOT NULL)",
    ] {
        sqlx::query(sql).execute(&db.pool).await.unwrap();
    }
}

async fn totals(db: &Database) -> Vec<(String, i64, i64)> {
    sqlx::query("SELECT account_id, total, n FROM tally_totals ORDER BY account_id")
        .fetch_all(&db.pool)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

fn grant(account: &str, amount: i64) -> Event {
    Event::new(
        Envelope::new(account, "test"),
        CreditsGranted {
            amount_nano: amount,
            reason: None,
            granted_by: "test".into(),
        },
    )
}

struct Running {
    cancel: CancellationToken,
    handle: tokio::task::JoinHandle<()>,
    progress: watch::Receiver<Progress>,
}

fn start(db: &Database, log: &EventLog) -> Running {
    let source =
        LocalLogSource::new(log.reader().unwrap()).with_commit_notifications(log.subscribe());
    let options = ConsumerOptions {
        batch_size: 7,
        idle_wait: Duration::from_millis(50),
        ..ConsumerOptions::default()
    };
    let consumer = Consumer::new(db.clone(), source, Tally, options);
    let progress = consumer.progress();
    let cancel = CancellationToken::new();
    let token = cancel.clone();
    let handle = tokio::spawn(async move { consumer.run(token).await.unwrap() });
    Running {
        cancel,
        handle,
        progress,
    }
}

impl Running {
    async fn until_offset(&mut self, end: u64) -> Progress {
        let end = end as i64;
        tokio::time::timeout(
            Duration::from_secs(20),
            self.progress
                .wait_for(|p| p.next_offsets.get(&0).copied().unwrap_or(0) > end),
        )
        .await
        .expect("consumer did not catch up")
        .unwrap()
        .clone()
    }

    async fn stop(self) {
        self.cancel.cancel();
        self.handle.await.unwrap();
    }
}

async fn scenario_duplicates_are_no_ops(backend: Backend) {
    let (_t, db) = migrated_database(backend).await;
    create_tally_tables(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(dir.path().join("events.db"), LogOptions::default()).unwrap();
    let events: Vec<Event> = (1..=40)
        .map(|i| grant(&format!("acct_{}", i % 4), 100 + i))
        .collect();
    let records: Vec<LogRecord> = events
        .iter()
        .map(|e| LogRecord::from_event(e).unwrap())
        .collect();
    for r in &records {
        log.append(r.clone()).await.unwrap();
    }
    let mut running = start(&db, &log);
    running.until_offset(40).await;
    let clean = totals(&db).await;
    assert_eq!(clean.iter().map(|t| t.2).sum::<i64>(), 40);

    // The same 40 events again, as a re-sending shipper would deliver them.
    for r in &records {
        log.append(r.clone()).await.unwrap();
    }
    let progress = running.until_offset(80).await;
    assert_eq!(
        totals(&db).await,
        clean,
        "{backend:?}: duplicates changed the tables"
    );
    assert_eq!(progress.duplicates, 40);
    assert_eq!(progress.applied, 40);
    running.stop().await;

    // A restarted consumer resumes at its stored position: nothing is applied again.
    let mut running = start(&db, &log);
    log.append_event(&grant("acct_0", 1000)).await.unwrap();
    let progress = running.until_offset(81).await;
    assert_eq!(
        progress.applied, 1,
        "{backend:?}: restart re-applied events"
    );
    running.stop().await;
    let after = totals(&db).await;
    assert_eq!(after[0].1, clean[0].1 + 1000);
}

async fn scenario_bad_messages_are_dead_lettered(backend: Backend) {
    let (_t, db) = migrated_database(backend).await;
    create_tally_tables(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(dir.path().join("events.db"), LogOptions::default()).unwrap();
    log.append_event(&grant("acct_a", 1)).await.unwrap();
    log.append(LogRecord {
        event_id: uuid::Uuid::now_v7(),
        event_type: "Garbage",
        account_id: "acct_a".into(),
        bytes: b"not avro at all".to_vec(),
    })
    .await
    .unwrap();
    log.append_event(&grant("acct_a", POISON)).await.unwrap();
    log.append_event(&grant("acct_a", 2)).await.unwrap();
    let mut running = start(&db, &log);
    let progress = running.until_offset(4).await;
    running.stop().await;
    assert_eq!(progress.dead_letters, 2);
    assert_eq!(totals(&db).await, vec![("acct_a".to_string(), 3, 2)]);
    let rows = sqlx::query(
        "SELECT msg_offset, reason, payload FROM dead_letters WHERE consumer = 'tally' ORDER BY msg_offset",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].get::<i64, _>(0), 2);
    assert!(rows[0].get::<String, _>(1).contains("single-object"));
    assert_eq!(rows[0].get::<Vec<u8>, _>(2), b"not avro at all");
    assert_eq!(rows[1].get::<i64, _>(0), 3);
    assert!(rows[1].get::<String, _>(1).starts_with("projection failed"));
}

#[tokio::test]
async fn duplicate_event_ids_are_no_ops_and_positions_resume() {
    for backend in BACKENDS {
        scenario_duplicates_are_no_ops(backend).await;
    }
}

#[tokio::test]
async fn undecodable_and_poison_messages_go_to_dead_letters_and_consumption_continues() {
    for backend in BACKENDS {
        scenario_bad_messages_are_dead_lettered(backend).await;
    }
}

#[tokio::test]
async fn migrations_apply_once_and_are_idempotent_on_restart() {
    for backend in BACKENDS {
        let (t, db) = migrated_database(backend).await;
        db.migrate().await.unwrap();
        let again = Database::connect(&t.url).await.unwrap();
        let n: i64 = sqlx::query("SELECT COUNT(*) FROM consumer_positions")
            .fetch_one(&again.pool)
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 0);
    }
}
