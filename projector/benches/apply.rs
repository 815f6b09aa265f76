//! Events/s a consumer applies into the read models, on SQLite and on PostgreSQL.
//!
//! Two logs, each projected from position 0 into a fresh database per sample with the default
//! batch size: `read_models` — 20,000 admin events (account openings, grants, keys, limit
//! changes, revocations); `request_traffic` — 10,000 requests as the gateway writes them
//! (`RequestRouted`, `UpstreamAttempted`, `RequestSettled`, over 200 accounts and 3 paths),
//! which feed the request rows, attempts, usage rollups and route-statistics sketches.
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
    AccountOpened, ApiKeyCreated, ApiKeyRevoked, CreditHold, CreditsGranted, LimitsChanged,
    RequestRouted, RequestSettled, UpstreamAttempted, Usage,
};
use lumina_schemas::{Envelope, Event};
use tokio_util::sync::CancellationToken;

const ACCOUNTS: usize = 2000;
const EVENTS: u64 = (ACCOUNTS * 10) as u64;
const TRAFFIC_ACCOUNTS: usize = 200;
const REQUESTS: usize = 10_000;
const TRAFFIC_EVENTS: u64 = (TRAFFIC_ACCOUNTS + 3 * REQUESTS) as u64;

fn traffic() -> Vec<Event> {
    let mut events = Vec::new();
    for a in 0..TRAFFIC_ACCOUNTS {
        events.push(Event::new(
            Envelope::new(format!("acct_{a:032x}"), "bench"),
            AccountOpened {
                admin_key_id: None,
                name: format!("Account {a}"),
                default_project_id: format!("proj_{a:032x}"),
                default_project_name: "Default".into(),
            },
        ));
    }
    let paths = ["fast", "balanced", "reasoning"];
    for r in 0..REQUESTS {
        let a = r % TRAFFIC_ACCOUNTS;
        let account = format!("acct_{a:032x}");
        let request = format!("req_{r:032x}");
        let path = paths[r % 3];
        let deployment = format!("sim/{path}");
        let env = || {
            let mut e = Envelope::new(account.as_str(), "bench");
            e.request_id = Some(request.clone());
            e.project_id = Some(format!("proj_{a:032x}"));
            e.api_key_id = Some(format!("key_{a:032x}"));
            e
        };
        events.push(Event::new(
            env(),
            RequestRouted {
                requested_model: "lumina-auto".into(),
                path: path.into(),
                task_class: ["chat", "code", "math"][r % 3].into(),
                stream: r % 2 == 0,
                policy_version: 1,
                features: [
                    ("prompt_tokens".to_string(), 40.0),
                    ("code_score".to_string(), 0.1),
                ]
                .into_iter()
                .collect(),
                scores: [("fast".to_string(), 0.7), ("balanced".to_string(), 0.2)]
                    .into_iter()
                    .collect(),
                candidates: vec![deployment.clone(), "other/fallback".into()],
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
            UpstreamAttempted {
                attempt: 1,
                provider: "sim".into(),
                deployment: deployment.clone(),
                upstream_model: path.into(),
                started_at: 1_764_000_000_000_000 + r as i64,
                ttfb_us: Some(90_000 + (r as i64 % 1000)),
                duration_us: 400_000 + (r as i64 % 5000) * 10,
                outcome: "ok".into(),
                error_class: None,
                http_status: None,
                fell_back: false,
                role: None,
            },
        ));
        events.push(Event::new(
            env(),
            RequestSettled {
                outcome: "completed".into(),
                path: path.into(),
                provider: Some("sim".into()),
                deployment: Some(deployment.clone()),
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
                latency_us: 410_000 + (r as i64 % 5000) * 10,
                ttft_us: Some(95_000 + (r as i64 % 1000)),
                attempts: 1,
                error_class: None,
                usage_anomaly: None,
                reported_completion_tokens: None,
            },
        ));
    }
    events
}

fn history() -> Vec<Event> {
    let mut events = Vec::new();
    for a in 0..ACCOUNTS {
        let account = format!("acct_{a:032x}");
        let env = || Envelope::new(account.as_str(), "bench");
        events.push(Event::new(
            env(),
            AccountOpened {
                admin_key_id: None,
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
                    admin_key_id: None,
                    key_id: format!("key_{a:030x}{k:02x}"),
                    name: "k".into(),
                    key_hash: format!("{:064x}", a * 2 + k),
                    key_prefix: "lum_bench".into(),
                    store_content: false,
                    rpm: None,
                    tpm: None,
                    routing_prefer: None,
                    fusion_barred: false,
                    ..Default::default()
                },
            ));
        }
        events.push(Event::new(
            env(),
            LimitsChanged {
                admin_key_id: None,
                key_id: format!("key_{a:030x}00"),
                rpm: Some(60),
                tpm: None,
            },
        ));
        events.push(Event::new(
            env(),
            ApiKeyRevoked {
                admin_key_id: None,
                key_id: format!("key_{a:030x}01"),
                reason: None,
            },
        ));
    }
    events
}

async fn project_once(log: &EventLog, backend: Backend, events: u64) -> Duration {
    let (_t, db) = lumina_testkit::migrated_database(backend).await;
    let source = LocalLogSource::new(log.reader().unwrap());
    let consumer = Consumer::new(db, source, ReadModelProjection, ConsumerOptions::default());
    let mut progress = consumer.progress();
    let cancel = CancellationToken::new();
    let start = Instant::now();
    let task = tokio::spawn(consumer.run(cancel.clone()));
    progress
        .wait_for(|p| p.next_offsets.get(&0).copied().unwrap_or(0) > events as i64)
        .await
        .unwrap();
    let elapsed = start.elapsed();
    cancel.cancel();
    task.await.unwrap().unwrap();
    elapsed
}

fn build_log(rt: &tokio::runtime::Runtime, path: &std::path::Path, events: Vec<Event>) -> EventLog {
    let log = EventLog::open(path, LogOptions::default()).unwrap();
    let n = events.len() as u64;
    rt.block_on(async {
        for e in events {
            log.append_event_nowait(&e).await.unwrap();
        }
        while log.committed_position() < n {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    log
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let logs = [
        (
            "read_models_20k_events",
            build_log(&rt, &dir.path().join("admin.db"), history()),
            EVENTS,
        ),
        (
            "request_traffic_30k_events",
            build_log(&rt, &dir.path().join("traffic.db"), traffic()),
            TRAFFIC_EVENTS,
        ),
    ];
    let mut backends = vec![Backend::Sqlite];
    if std::env::var_os(lumina_testkit::PG_ENV).is_some() {
        backends.push(Backend::Postgres);
    } else {
        println!("{} not set: measuring SQLite only", lumina_testkit::PG_ENV);
    }
    let mut criterion = Criterion::default().configure_from_args();
    for (name, log, events) in &logs {
        let mut group = criterion.benchmark_group("projector_apply");
        group.throughput(Throughput::Elements(*events));
        group.sample_size(10);
        for &backend in &backends {
            group.bench_function(BenchmarkId::new(*name, format!("{backend:?}")), |b| {
                b.to_async(&rt).iter_custom(|iters| {
                    let log = log.clone();
                    let events = *events;
                    async move {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            total += project_once(&log, backend, events).await;
                        }
                        total
                    }
                })
            });
        }
        group.finish();
    }
    criterion.final_summary();
}
