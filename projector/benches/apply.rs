//! Events/s a consumer applies into the read models, on SQLite and on PostgreSQL.
//!
//! Each sample projects a 20,000-event local log (account openings, grants, keys, limit
//! changes, revocations) from position 0 into a fresh database, with the default batch size.
//! PostgreSQL needs `LUMINA_TEST_DATABASE_URL` (`scripts/test.sh` prints how it starts it);
//! without it only SQLite is measured.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout
)]

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use lumina_eventlog::{Backend, Consumer, ConsumerOptions, EventLog, LocalLogSource, LogOptions};
use lumina_projector::ReadModelProjection;
use lumina_schemas::payloads::{
    AccountOpened, ApiKeyCreated, ApiKeyRevoked, CreditsGranted, LimitsChanged,
};
use lumina_schemas::{Envelope, Event};
use tokio_util::sync::CancellationToken;

const ACCOUNTS: usize = 2000;
const EVENTS: u64 = (ACCOUNTS * 10) as u64;

fn history() -> Vec<Event> {
    let mut events = Vec::new();
    for a in 0..ACCOUNTS {
        let account = format!("acct_{a:032x}");
        let env = || Envelope::new(account.as_str(), "bench");
        events.push(Event::new(
            env(),
            AccountOpened {
                name: format!("Account {a}"),
                default_project_id: format!("proj_{a:032x}"),
                default_project_name: "Default".into(),
            },
        ));
        for g in 1..=5 {
            events.push(Event::new(
                env(),
                CreditsGranted {
                    amount_nano: g * 1_000_000,
                    reason: None,
                    granted_by: "bench".into(),
                },
            ));
        }
        for k in 0..2 {
            events.push(Event::new(
                env(),
                ApiKeyCreated {
                    key_id: format!("key_{a:030x}{k:02x}"),
                    name: "k".into(),
                    key_hash: format!("{:064x}", a * 2 + k),
                    key_prefix: "lum_bench".into(),
                    store_content: false,
                    rpm: None,
                    tpm: None,
                },
            ));
        }
        events.push(Event::new(
            env(),
            LimitsChanged {
                key_id: format!("key_{a:030x}00"),
                rpm: Some(60),
                tpm: None,
            },
        ));
        events.push(Event::new(
            env(),
            ApiKeyRevoked {
                key_id: format!("key_{a:030x}01"),
                reason: None,
            },
        ));
    }
    events
}

async fn project_once(log: &EventLog, backend: Backend) -> Duration {
    let (_t, db) = lumina_testkit::migrated_database(backend).await;
    let source = LocalLogSource::new(log.reader().unwrap());
    let consumer = Consumer::new(db, source, ReadModelProjection, ConsumerOptions::default());
    let mut progress = consumer.progress();
    let cancel = CancellationToken::new();
    let start = Instant::now();
    let task = tokio::spawn(consumer.run(cancel.clone()));
    progress
        .wait_for(|p| p.next_offsets.get(&0).copied().unwrap_or(0) > EVENTS as i64)
        .await
        .unwrap();
    let elapsed = start.elapsed();
    cancel.cancel();
    task.await.unwrap().unwrap();
    elapsed
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(dir.path().join("events.db"), LogOptions::default()).unwrap();
    rt.block_on(async {
        for e in history() {
            log.append_event_nowait(&e).await.unwrap();
        }
        while log.committed_position() < EVENTS {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let mut backends = vec![Backend::Sqlite];
    if std::env::var_os(lumina_testkit::PG_ENV).is_some() {
        backends.push(Backend::Postgres);
    } else {
        println!("{} not set: measuring SQLite only", lumina_testkit::PG_ENV);
    }
    let mut criterion = Criterion::default().configure_from_args();
    let mut group = criterion.benchmark_group("projector_apply");
    group.throughput(Throughput::Elements(EVENTS));
    group.sample_size(10);
    for backend in backends {
        group.bench_function(
            BenchmarkId::new("read_models_20k_events", format!("{backend:?}")),
            |b| {
                b.to_async(&rt).iter_custom(|iters| {
                    let log = log.clone();
                    async move {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            total += project_once(&log, backend).await;
                        }
                        total
                    }
                })
            },
        );
    }
    group.finish();
    criterion.final_summary();
}
