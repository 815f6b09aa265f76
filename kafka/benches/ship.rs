//! Events/s one gateway's shipper moves from its local log to a local Apache Kafka.
//!
//! Starts a single-node Kafka (the jars in `LUMINA_TEST_KAFKA_LIBS`, which `scripts/test.sh`
//! copies from Maven Central) on free ports with its storage in a temp dir, the JVM set for
//! throughput; fills a local log with 200,000 request events (three per request, 1,000
//! accounts); then ships it from position 0 three times with the `event_type`/`event_id`
//! headers and three times without, each into a fresh topic of 6 partitions, timing from the
//! shipper's start to the broker's acknowledgement of the last event.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout
)]

use std::time::{Duration, Instant};

use lumina_eventlog::{EventLog, LogOptions};
use lumina_kafka::{KafkaConfig, Shipper};
use lumina_schemas::EventType;
use lumina_schemas::samples::sample;
use lumina_testkit::kafka::{Broker, Jvm};
use tokio_util::sync::CancellationToken;

const EVENTS: u64 = 200_000;
const RUNS: usize = 3;

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let broker = Broker::start_with(&dir.path().join("kafka"), Jvm::Throughput);
    println!(
        "kafka serving on {} after {:.1} s",
        broker.address,
        started.elapsed().as_secs_f64()
    );
    let address = broker.address.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let log = EventLog::open(dir.path().join("events.db"), LogOptions::default()).unwrap();
    rt.block_on(async {
        let kinds = [
            EventType::RequestRouted,
            EventType::UpstreamAttempted,
            EventType::RequestSettled,
        ];
        for seed in 0..EVENTS {
            let mut event = sample(kinds[(seed % 3) as usize], seed);
            event.envelope.account_id = format!("acct_{:032x}", (seed / 3) % 1000);
            event.envelope.event_id = uuid::Uuid::now_v7();
            log.append_event_nowait(&event).await.unwrap();
        }
        while log.committed_position() < EVENTS {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for run in 0..2 * RUNS {
            let headers = run < RUNS;
            let mut config = KafkaConfig::new(address.clone());
            config.topic = format!("bench.ship.{run}");
            config.headers = headers;
            config.partitions = 6;
            config.ensure_topics().await.unwrap();
            let data = dir.path().join(format!("run{run}"));
            std::fs::create_dir_all(&data).unwrap();
            let shipper = Shipper::new(&config, log.clone(), &data).unwrap();
            let mut status = shipper.status();
            let cancel = CancellationToken::new();
            let start = Instant::now();
            let task = tokio::spawn(shipper.run(cancel.clone()));
            status.wait_for(|s| s.acked >= EVENTS).await.unwrap();
            let elapsed = start.elapsed();
            cancel.cancel();
            task.await.unwrap().unwrap();
            println!(
                "ship run {run} (headers {headers}): {EVENTS} events in {:.2} s = {:.0} events/s",
                elapsed.as_secs_f64(),
                EVENTS as f64 / elapsed.as_secs_f64()
            );
        }
    });
    drop(broker);
}
