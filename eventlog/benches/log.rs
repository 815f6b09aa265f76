//! Local-log benchmarks: appends/s with group commit, and the commit wait each appender sees.
//!
//! `cargo bench -p lumina-eventlog --bench log` first prints a latency report (many tasks
//! appending for a few seconds, per fsync mode: events/s, p50/p99/p99.9/max commit wait),
//! then runs criterion's throughput measurement of 10,240 concurrent appends (64 tasks × 160).
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use lumina_eventlog::{EventLog, FsyncMode, LogOptions, LogRecord};
use lumina_schemas::EventType;
use lumina_schemas::samples::sample;

const APPENDERS: usize = 64;

fn record(i: u64) -> LogRecord {
    LogRecord::from_event(&sample(EventType::RequestSettled, i)).unwrap()
}

fn open(fsync: FsyncMode) -> (tempfile::TempDir, EventLog) {
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(
        dir.path().join("events.db"),
        LogOptions {
            fsync,
            ..LogOptions::default()
        },
    )
    .unwrap();
    (dir, log)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn latency_report(rt: &tokio::runtime::Runtime, fsync: FsyncMode, seconds: u64) {
    let (_dir, log) = open(fsync);
    let template = Arc::new(record(1));
    let (events, mut waits) = rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let tasks: Vec<_> = (0..APPENDERS)
            .map(|_| {
                let log = log.clone();
                let template = template.clone();
                tokio::spawn(async move {
                    let mut waits = Vec::new();
                    while Instant::now() < deadline {
                        let start = Instant::now();
                        log.append(LogRecord::clone(&template)).await.unwrap();
                        waits.push(start.elapsed());
                    }
                    waits
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        (all.len(), all)
    });
    waits.sort_unstable();
    println!(
        "log append, fsync={fsync:?}, {APPENDERS} appenders: {:.0} events/s; commit wait p50 {:?} p99 {:?} p99.9 {:?} max {:?}",
        events as f64 / seconds as f64,
        percentile(&waits, 0.50),
        percentile(&waits, 0.99),
        percentile(&waits, 0.999),
        waits[waits.len() - 1],
    );
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let quick = std::env::args().any(|a| a == "--test");
    let seconds = if quick { 1 } else { 5 };
    for fsync in [FsyncMode::Batch, FsyncMode::Always] {
        latency_report(&rt, fsync, seconds);
    }

    let mut criterion = Criterion::default().configure_from_args();
    let mut group = criterion.benchmark_group("log_append");
    const BATCH: u64 = 10_240;
    group.throughput(Throughput::Elements(BATCH));
    group.sample_size(20);
    for fsync in [FsyncMode::Batch, FsyncMode::Always] {
        let (_dir, log) = open(fsync);
        let template = Arc::new(record(2));
        group.bench_function(
            BenchmarkId::new("concurrent_10240", format!("{fsync:?}")),
            |b| {
                b.to_async(&rt).iter(|| {
                    let log = log.clone();
                    let template = template.clone();
                    async move {
                        let per = BATCH / APPENDERS as u64;
                        let tasks: Vec<_> = (0..APPENDERS)
                            .map(|_| {
                                let log = log.clone();
                                let template = template.clone();
                                tokio::spawn(async move {
                                    for _ in 0..per {
                                        log.append(LogRecord::clone(&template)).await.unwrap();
                                    }
                                })
                            })
                            .collect();
                        for t in tasks {
                            t.await.unwrap();
                        }
                    }
                })
            },
        );
    }
    group.finish();
    criterion.final_summary();
}
