//! Sustained ledger ingest: events/s the ledger consumer journals from the local log into
//! SQLite and PostgreSQL (target ≥ 20,000/s into PostgreSQL), with the default batch size (2,048).
//!
//! Each sample journals a 30,000-event log — grants to 1,000 accounts, then 14,500 requests,
//! each a `RequestRouted` with a hold and its `RequestSettled` — from position 0 into a fresh
//! database. PostgreSQL needs `LUMINA_TEST_DATABASE_URL`; without it only SQLite is measured.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout
)]

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use lumina_eventlog::{
    Backend, Consumer, ConsumerOptions, EventLog, LocalLogSource, LogOptions, handled_types,
};
use lumina_ledger::LedgerProjection;
use lumina_schemas::payloads::{CreditHold, CreditsGranted, RequestRouted, RequestSettled, Usage};
use lumina_schemas::{Envelope, Event};
use tokio_util::sync::CancellationToken;

const ACCOUNTS: usize = 1000;
const REQUESTS: usize = 14_500;
const EVENTS: u64 = (ACCOUNTS + 2 * REQUESTS) as u64;

fn history() -> Vec<Event> {
    let mut events = Vec::with_capacity(EVENTS as usize);
    for a in 0..ACCOUNTS {
        events.push(Event::new(
            Envelope::new(format!("acct_{a:032x}"), "bench"),
            CreditsGranted {
                amount_nano: 1_000_000_000_000,
                reason: None,
                granted_by: "bench".into(),
            },
        ));
    }
    for r in 0..REQUESTS {
        let account = format!("acct_{:032x}", r % ACCOUNTS);
        let request = format!("req_{r:032x}");
        let env = || {
            let mut e = Envelope::new(account.as_str(), "bench");
            e.request_id = Some(request.clone());
            e
        };
        events.push(Event::new(
            env(),
            RequestRouted {
                requested_model: "lumina-auto".into(),
                path: "fast".into(),
                task_class: "chat".into(),
                stream: false,
                policy_version: 1,
                features: Default::default(),
                scores: Default::default(),
                candidates: vec!["sim/fast".into()],
                prompt_tokens_estimate: 40,
                max_tokens: Some(256),
                hold: Some(CreditHold {
                    amount_nano: 250_000,
                    price_table_version: "bench".into(),
                    ttl_ms: 600_000,
                }),
                top_features: Vec::new(),
                prefer: "balanced".into(),
                min_path: None,
                max_path: None,
                classified_path: None,
                api: "chat_completions".into(),
            },
        ));
        events.push(Event::new(
            env(),
            RequestSettled {
                outcome: "completed".into(),
                path: "fast".into(),
                provider: Some("sim".into()),
                deployment: Some("sim/fast".into()),
                usage: Usage {
                    prompt_tokens: 40,
                    completion_tokens: 120,
                    cached_tokens: 0,
                    reasoning_tokens: 0,
                    estimated: false,
                },
                charge_nano: 104_000,
                price_table_version: "bench".into(),
                rounding: "half_up_nano".into(),
                hold_released_nano: 250_000,
                latency_us: 1000,
                ttft_us: Some(100),
                attempts: 1,
                error_class: None,
                usage_anomaly: None,
                reported_completion_tokens: None,
            },
        ));
    }
    events
}

async fn ingest_once(log: &EventLog, backend: Backend) -> Duration {
    let (_t, db) = lumina_testkit::migrated_database(backend).await;
    let source = LocalLogSource::new(log.reader().unwrap()).only(&handled_types(&LedgerProjection));
    let consumer = Consumer::new(db, source, LedgerProjection, ConsumerOptions::default());
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
    let mut group = criterion.benchmark_group("ledger_ingest");
    group.throughput(Throughput::Elements(EVENTS));
    group.sample_size(10);
    for backend in backends {
        group.bench_function(
            BenchmarkId::new("30k_money_events", format!("{backend:?}")),
            |b| {
                b.to_async(&rt).iter_custom(|iters| {
                    let log = log.clone();
                    async move {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            total += ingest_once(&log, backend).await;
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
