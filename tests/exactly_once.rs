//! Exactly-once effects of a consumer process killed at random points, on SQLite and
//! PostgreSQL: the final tables equal a clean run's, feeding the same events twice changes
//! nothing, and `lumina projector rebuild` reproduces the same rows from position 0.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{bin, dump_read_models, run, signal};
use lumina_eventlog::{Backend, EventLog, LogOptions, LogRecord};
use lumina_schemas::payloads::{
    AccountOpened, ApiKeyCreated, ApiKeyRevoked, CreditsGranted, LimitsChanged,
};
use lumina_schemas::{Envelope, Event};
use lumina_testkit::{BACKENDS, fresh_database};
use rand::RngExt;
use sqlx::{Connection, Row};

const ACCOUNTS: usize = 4000;

fn history() -> Vec<LogRecord> {
    let mut events = Vec::new();
    for a in 0..ACCOUNTS {
        let account = format!("acct_{a:032x}");
        let env = || Envelope::new(account.as_str(), "history");
        events.push(Event::new(
            env(),
            AccountOpened {
                admin_key_id: None,
                name: format!("Account {a}"),
                default_project_id: format!("proj_{a:032x}"),
                default_project_name: "Default".into(),
            },
        ));
        for g in 1..=4 {
            events.push(Event::new(
                env(),
                CreditsGranted {
                    amount_nano: (a as i64 + 1) * g * 1_000_003,
                    reason: None,
                    granted_by: "test".into(),
                },
            ));
        }
        for k in 0..3 {
            events.push(Event::new(
                env(),
                ApiKeyCreated {
                    admin_key_id: None,
                    key_id: format!("key_{a:030x}{k:02x}"),
                    name: format!("k{k}"),
                    key_hash: format!("{:064x}", a * 3 + k),
                    key_prefix: format!("lum_{:08x}", a * 3 + k),
                    store_content: k == 2,
                    rpm: Some(10 * k as i64 + 1),
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
                rpm: None,
                tpm: Some(5000),
            },
        ));
        events.push(Event::new(
            env(),
            ApiKeyRevoked {
                admin_key_id: None,
                key_id: format!("key_{a:030x}01"),
                reason: Some("rotated".into()),
            },
        ));
    }
    events
        .iter()
        .map(|e| LogRecord::from_event(e).unwrap())
        .collect()
}

async fn write_log(dir: &std::path::Path, records: &[LogRecord]) -> u64 {
    let log = EventLog::open(dir.join("events.db"), LogOptions::default()).unwrap();
    let mut last = 0;
    for chunk in records.chunks(1000) {
        let appends: Vec<_> = chunk.iter().map(|r| log.append_nowait(r.clone())).collect();
        for a in appends {
            a.await.unwrap();
        }
    }
    // A final waited append flushes everything queued before it.
    let garbage = LogRecord {
        event_id: uuid::Uuid::now_v7(),
        event_type: "Garbage",
        account_id: "acct_garbage".into(),
        bytes: vec![0xC3, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 42],
    };
    last = last.max(log.append(garbage).await.unwrap());
    log.close();
    last
}

fn projector_args<'a>(dir: &'a str, config: &'a str, url: &'a str) -> Vec<&'a str> {
    vec![
        "projector",
        "--data-dir",
        dir,
        "--config",
        config,
        "--database-url",
        url,
    ]
}

/// Positions once the consumer has committed anything, else `None`.
async fn positions_or_none(url: &str) -> Option<(i64, i64, i64)> {
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(url).await.ok()?;
    let stored = sqlx::query("SELECT 1 FROM consumer_positions WHERE consumer = 'projector'")
        .fetch_optional(&mut conn)
        .await
        .ok()?;
    let _ = conn.close().await;
    stored?;
    Some(positions(url).await)
}

async fn positions(url: &str) -> (i64, i64, i64) {
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(url).await.unwrap();
    let next: i64 =
        sqlx::query("SELECT next_offset FROM consumer_positions WHERE consumer = 'projector'")
            .fetch_one(&mut conn)
            .await
            .unwrap()
            .get(0);
    let applied: i64 =
        sqlx::query("SELECT COUNT(*) FROM consumer_applied_events WHERE consumer = 'projector'")
            .fetch_one(&mut conn)
            .await
            .unwrap()
            .get(0);
    let dead: i64 = sqlx::query("SELECT COUNT(*) FROM dead_letters WHERE consumer = 'projector'")
        .fetch_one(&mut conn)
        .await
        .unwrap()
        .get(0);
    let _ = conn.close().await;
    (next, applied, dead)
}

async fn scenario(backend: Backend) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    std::fs::create_dir_all(&dir).unwrap();
    let config = tmp.path().join("lumina.toml");
    std::fs::write(&config, "[consumers]\nbatch_size = 25\n").unwrap();
    let records = history();
    let end = write_log(&dir, &records).await;
    let (dir_s, config_s) = (dir.to_str().unwrap(), config.to_str().unwrap());

    // The clean run, timed so the kills below land throughout a run.
    let clean_db = fresh_database(backend).await;
    let mut args = projector_args(dir_s, config_s, &clean_db.url);
    args.push("--once");
    let started = std::time::Instant::now();
    let (ok, _, stderr) = run(&args, &[]);
    let clean_run = started.elapsed();
    assert!(ok, "clean run failed: {stderr}");
    let clean = dump_read_models(&clean_db.url).await;
    assert_eq!(clean.len(), ACCOUNTS * (1 + 1 + 4 + 3));

    // The same events, killed with SIGKILL at random moments, restarted each time.
    let killed_db = fresh_database(backend).await;
    let mut rng = rand::rng();
    let mut interrupted = 0;
    let mut last_next = 0;
    for _ in 0..12 {
        let mut child = Command::new(bin())
            .args(projector_args(dir_s, config_s, &killed_db.url))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Kill once this run has committed something new, after a random further moment, so
        // every kill lands while the consumer works: a fixed share of the clean run's time
        // often fell into start-up (before the first commit) on a loaded machine.
        let deadline = std::time::Instant::now() + clean_run * 2 + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            match positions_or_none(&killed_db.url).await {
                Some((next, _, _)) if next > last_next => break,
                _ => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
        tokio::time::sleep(clean_run.mul_f64(rng.random_range(0.0..0.05))).await;
        signal(child.id(), "-KILL");
        let _ = child.wait();
        if let Some((next, _, _)) = positions_or_none(&killed_db.url).await {
            if next > last_next && next < end as i64 + 1 {
                interrupted += 1;
            }
            last_next = next;
        }
        if last_next == end as i64 + 1 {
            break;
        }
    }
    assert!(
        interrupted >= 3,
        "only {interrupted} kills landed in the middle of the run"
    );
    let mut args = projector_args(dir_s, config_s, &killed_db.url);
    args.push("--once");
    let (ok, _, stderr) = run(&args, &[]);
    assert!(ok, "final run failed: {stderr}");
    assert_eq!(
        dump_read_models(&killed_db.url).await,
        clean,
        "{backend:?}: killed run differs"
    );
    let expected = (end as i64 + 1, records.len() as i64, 1);
    assert_eq!(positions(&killed_db.url).await, expected, "{backend:?}");
    assert_eq!(positions(&clean_db.url).await, expected, "{backend:?}");

    // Feeding the same events again changes nothing.
    let log = EventLog::open(dir.join("events.db"), LogOptions::default()).unwrap();
    for r in &records {
        log.append_nowait(r.clone()).await.unwrap();
    }
    let new_end = log
        .append_event(&Event::new(
            Envelope::new("acct_x", "t"),
            LimitsChanged {
                admin_key_id: None,
                key_id: "key_none".into(),
                rpm: None,
                tpm: None,
            },
        ))
        .await
        .unwrap();
    log.close();
    let (ok, _, stderr) = run(&args, &[]);
    assert!(ok, "{stderr}");
    assert_eq!(
        dump_read_models(&killed_db.url).await,
        clean,
        "{backend:?}: duplicates changed rows"
    );
    assert_eq!(
        positions(&killed_db.url).await,
        (new_end as i64 + 1, records.len() as i64 + 1, 1)
    );

    // Rebuild from position 0 gives identical rows.
    let rebuild = vec![
        "projector",
        "rebuild",
        "--data-dir",
        dir_s,
        "--config",
        config_s,
        "--database-url",
        &killed_db.url,
    ];
    let (ok, _, stderr) = run(&rebuild, &[]);
    assert!(ok, "rebuild failed: {stderr}");
    assert_eq!(
        dump_read_models(&killed_db.url).await,
        clean,
        "{backend:?}: rebuild differs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_killed_at_random_points_ends_with_a_clean_runs_tables() {
    for backend in BACKENDS {
        scenario(backend).await;
    }
}
