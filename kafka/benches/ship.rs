//! Events/s one gateway's shipper moves from its local log to a local Kafka-protocol broker.
//!
//! Starts Tansu (`LUMINA_TEST_TANSU`, installed by `scripts/test.sh`) on a free port with SQLite
//! storage in a temp dir, fills a local log with 200,000 request events (three per request,
//! 1,000 accounts), then ships it from position 0 three times with the `event_type`/`event_id`
//! headers and three times without, each into a fresh topic, timing from the shipper's start to
//! the broker's acknowledgement of the last event. `LUMINA_BENCH_TANSU_STORAGE=null://` runs
//! Tansu with its storage engine that keeps nothing: the shipper and the wire alone.
#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout
)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lumina_eventlog::{EventLog, LogOptions};
use lumina_kafka::{KafkaConfig, Shipper};
use lumina_schemas::EventType;
use lumina_schemas::samples::sample;
use tokio_util::sync::CancellationToken;

const EVENTS: u64 = 200_000;
const RUNS: usize = 3;

fn main() {
    let tansu = std::env::var("LUMINA_TEST_TANSU")
        .expect("LUMINA_TEST_TANSU: the Tansu binary (scripts/test.sh installs it)");
    let storage =
        std::env::var("LUMINA_BENCH_TANSU_STORAGE").unwrap_or_else(|_| "sqlite://tansu.db".into());
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address = format!("127.0.0.1:{port}");
    let url = format!("tcp://{address}");
    let mut broker = Command::new(tansu)
        .current_dir(dir.path())
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ])
        .args(["--storage-engine", &storage])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let log = EventLog::open(dir.path().join("events.db"), LogOptions::default()).unwrap();
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(&address).await.is_err() {
            let exited = broker.try_wait().unwrap();
            assert!(
                exited.is_none(),
                "tansu exited ({exited:?}) with --storage-engine {storage}"
            );
            assert!(
                Instant::now() < deadline,
                "tansu did not listen on {address}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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
    let _ = broker.kill();
    let _ = broker.wait();
}
