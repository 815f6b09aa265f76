//! The local log: order, unique positions, group commit, and durability under `kill -9`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lumina_eventlog::{EventLog, FsyncMode, LogOptions, LogReader, LogRecord};
use lumina_schemas::payloads::CreditsGranted;
use lumina_schemas::{Envelope, Event, Payload, decode};
use rand::RngExt;

fn grant(account: &str, seq: i64) -> Event {
    Event::new(
        Envelope::new(account, "test"),
        CreditsGranted {
            amount_nano: seq,
            reason: None,
            granted_by: "test".into(),
        },
    )
}

fn seq_of(bytes: &[u8]) -> (String, i64) {
    let event = decode(bytes).unwrap().event;
    let Payload::CreditsGranted(g) = event.payload else {
        panic!("unexpected payload")
    };
    (event.envelope.account_id, g.amount_nano)
}

fn read_all(path: &std::path::Path) -> Vec<lumina_eventlog::LogEntry> {
    let reader = LogReader::open(path).unwrap();
    let mut all = Vec::new();
    loop {
        let after = all
            .last()
            .map_or(0, |e: &lumina_eventlog::LogEntry| e.position);
        let batch = reader.read_after_blocking(after, 10_000).unwrap();
        if batch.is_empty() {
            return all;
        }
        all.extend(batch);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_keep_per_account_order_and_unique_positions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let log = EventLog::open(&path, LogOptions::default()).unwrap();
    const TASKS: usize = 32;
    const PER_TASK: i64 = 300;
    let mut handles = Vec::new();
    for t in 0..TASKS {
        let log = log.clone();
        handles.push(tokio::spawn(async move {
            let account = format!("acct_{t}");
            let mut positions = Vec::new();
            for seq in 0..PER_TASK {
                let event = grant(&account, seq);
                let position = if seq % 3 == 0 {
                    log.append_event_nowait(&event).await.unwrap();
                    None
                } else {
                    Some(log.append_event(&event).await.unwrap())
                };
                positions.push(position);
            }
            positions
        }));
    }
    let mut returned = Vec::new();
    for h in handles {
        returned.extend(h.await.unwrap().into_iter().flatten());
    }
    // A waited append after every task finished commits behind all queued nowait records.
    let last = log.append_event(&grant("acct_end", 0)).await.unwrap();
    let total = TASKS as u64 * PER_TASK as u64 + 1;
    assert_eq!(last, total);
    assert_eq!(log.committed_position(), total);

    let mut unique = returned.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(
        unique.len(),
        returned.len(),
        "a position was returned twice"
    );

    let entries = read_all(&path);
    assert_eq!(entries.len() as u64, total);
    let mut next_seq: HashMap<String, i64> = HashMap::new();
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e.position, i as u64 + 1, "positions are dense and ordered");
        let (account, seq) = seq_of(&e.bytes);
        assert_eq!(e.account_id, account);
        let expected = next_seq.entry(account.clone()).or_insert(0);
        assert_eq!(
            seq, *expected,
            "{account} out of order at position {}",
            e.position
        );
        *expected += 1;
    }
}

#[tokio::test]
async fn batches_group_many_appends_into_one_commit() {
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(dir.path().join("events.db"), LogOptions::default()).unwrap();
    let mut commits = log.subscribe();
    let mut seen = Vec::new();
    let watcher = tokio::spawn(async move {
        while commits.changed().await.is_ok() {
            seen.push(*commits.borrow());
            if seen.last() == Some(&2000) {
                break;
            }
        }
        seen
    });
    let appends: Vec<_> = (0..2000)
        .map(|i| {
            let log = log.clone();
            tokio::spawn(async move { log.append_event(&grant("acct_g", i)).await.unwrap() })
        })
        .collect();
    for a in appends {
        a.await.unwrap();
    }
    let seen = watcher.await.unwrap();
    assert!(
        seen.len() < 2000,
        "2000 concurrent appends took {} commits: no grouping",
        seen.len()
    );
}

#[tokio::test]
async fn reopened_log_continues_positions_after_the_last_commit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let log = EventLog::open(&path, LogOptions::default()).unwrap();
    for i in 0..10 {
        log.append_event(&grant("acct_r", i)).await.unwrap();
    }
    log.close();
    let log = EventLog::open(&path, LogOptions::default()).unwrap();
    assert_eq!(log.committed_position(), 10);
    assert_eq!(log.append_event(&grant("acct_r", 10)).await.unwrap(), 11);
}

#[tokio::test]
async fn lingering_writer_still_acknowledges_every_append() {
    let dir = tempfile::tempdir().unwrap();
    let options = LogOptions {
        linger_us: 2_000,
        max_batch: 64,
        fsync: FsyncMode::Always,
        ..LogOptions::default()
    };
    let log = EventLog::open(dir.path().join("events.db"), options).unwrap();
    let appends: Vec<_> = (0..300)
        .map(|i| {
            let log = log.clone();
            tokio::spawn(async move { log.append_event(&grant("acct_l", i)).await.unwrap() })
        })
        .collect();
    let mut positions = Vec::new();
    for a in appends {
        positions.push(a.await.unwrap());
    }
    positions.sort_unstable();
    assert_eq!(positions, (1..=300).collect::<Vec<u64>>());
}

const CHILD_DIR: &str = "LUMINA_TEST_APPEND_CHILD_DIR";
const CHILD_FSYNC: &str = "LUMINA_TEST_APPEND_CHILD_FSYNC";

/// Child-process body of the kill test: appends as fast as it can from several tasks and
/// prints `position event_id` for every append that returned. Does nothing unless spawned
/// by `appends_that_returned_survive_kill_9`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_appender() {
    let Some(dir) = std::env::var_os(CHILD_DIR) else {
        return;
    };
    let fsync = match std::env::var(CHILD_FSYNC).as_deref() {
        Ok("always") => FsyncMode::Always,
        Ok("off") => FsyncMode::Off,
        _ => FsyncMode::Batch,
    };
    let options = LogOptions {
        fsync,
        ..LogOptions::default()
    };
    let log = EventLog::open(std::path::Path::new(&dir).join("events.db"), options).unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<(u64, uuid::Uuid)>();
    for t in 0..8 {
        let log = log.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            for seq in 0.. {
                let event = grant(&format!("acct_{t}"), seq);
                let record = LogRecord::from_event(&event).unwrap();
                let position = log.append(record).await.unwrap();
                tx.send((position, event.envelope.event_id)).unwrap();
            }
        });
    }
    drop(tx);
    tokio::task::spawn_blocking(move || {
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        for (position, id) in rx {
            writeln!(out, "{position} {id}").unwrap();
            out.flush().unwrap();
        }
    })
    .await
    .unwrap();
}

#[test]
fn appends_that_returned_survive_kill_9() {
    let mut rng = rand::rng();
    for (round, fsync) in ["batch", "always", "off", "batch"].into_iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        let mut acknowledged: Vec<(u64, String)> = Vec::new();
        // Two kills per directory: the second run appends to a log that was itself killed.
        for _ in 0..2 {
            let mut child = Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "child_appender",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD_DIR, dir.path())
                .env(CHILD_FSYNC, fsync)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let stdout = child.stdout.take().unwrap();
            let wanted = rng.random_range(200..5000);
            let started = Instant::now();
            let mut lines = BufReader::new(stdout).lines();
            let mut got = 0;
            while got < wanted && started.elapsed() < Duration::from_secs(20) {
                let Some(Ok(line)) = lines.next() else { break };
                let Some((position, id)) = line.split_once(' ') else {
                    continue;
                };
                let Ok(position) = position.parse::<u64>() else {
                    continue;
                };
                acknowledged.push((position, id.to_string()));
                got += 1;
            }
            // SIGKILL while the child is mid-append.
            unsafe_free_kill(child.id());
            let _ = child.wait();
            // Lines already in the pipe were acknowledged too.
            for line in lines.map_while(Result::ok) {
                if let Some((p, id)) = line.split_once(' ')
                    && let Ok(p) = p.parse::<u64>()
                {
                    acknowledged.push((p, id.to_string()));
                }
            }
            assert!(got > 0, "round {round}: the child appended nothing");
        }
        let entries = read_all(&dir.path().join("events.db"));
        let by_position: HashMap<u64, String> = entries
            .iter()
            .map(|e| (e.position, e.event_id.to_string()))
            .collect();
        for (i, e) in entries.iter().enumerate() {
            assert_eq!(e.position, i as u64 + 1, "round {round}: gap in positions");
            decode(&e.bytes).unwrap();
        }
        for (position, id) in &acknowledged {
            assert_eq!(
                by_position.get(position),
                Some(id),
                "round {round} ({fsync}): acknowledged append at {position} lost after kill -9"
            );
        }
        // Per-account order survives too.
        let mut next_seq: HashMap<String, i64> = HashMap::new();
        for e in &entries {
            let (account, seq) = seq_of(&e.bytes);
            let prev = next_seq.insert(account.clone(), seq);
            if let Some(prev) = prev {
                // A restart begins each account at 0 again; otherwise sequences increase.
                assert!(seq == 0 || seq == prev + 1, "{account}: {prev} then {seq}");
            }
        }
        // The killed log reopens writable and continues after its last entry.
        let rt = tokio::runtime::Runtime::new().unwrap();
        let next = rt.block_on(async {
            let log = EventLog::open(dir.path().join("events.db"), LogOptions::default()).unwrap();
            log.append_event(&grant("acct_after", 0)).await.unwrap()
        });
        assert_eq!(next, entries.len() as u64 + 1);
    }
}

/// Sends SIGKILL through the `kill` command, keeping this crate free of `unsafe`.
fn unsafe_free_kill(pid: u32) {
    let status = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// The largest the WAL file grew while `appends` events were committed one by one with a
/// reader polling the log all along, as consumers do.
async fn largest_wal(wal_limit_mib: u32, appends: i64) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.db");
    let options = LogOptions {
        wal_limit_mib,
        ..LogOptions::default()
    };
    let log = EventLog::open(&path, options).unwrap();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let reader = log.reader().unwrap();
        let done = done.clone();
        std::thread::spawn(move || {
            let mut after = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(last) = reader.read_after_blocking(after, 100).unwrap().last() {
                    after = last.position;
                }
            }
        })
    };
    let wal = dir.path().join("events.db-wal");
    let mut largest = 0;
    for i in 0..appends {
        log.append_event(&grant("acct_w", i)).await.unwrap();
        if i % 100 == 0 {
            largest = largest.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
        }
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    reader.join().unwrap();
    largest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wal_stays_bounded_under_a_steady_stream_of_commits_and_reads() {
    // Without the limit the WAL of these 80,000 commits passes 300 MiB; with it, it stays
    // within what two checkpoint intervals of this fast a writer add.
    let largest = largest_wal(1, 80_000).await;
    assert!(
        largest < 80 * 1024 * 1024,
        "the WAL grew to {} MiB with a 1 MiB limit",
        largest / (1024 * 1024)
    );
}

#[tokio::test]
async fn a_requests_records_share_the_commit_of_the_one_waited_for() {
    let dir = tempfile::tempdir().unwrap();
    let options = LogOptions {
        // Far longer than the three appends take, however busy the machine.
        relaxed_wait_us: 5_000_000,
        ..LogOptions::default()
    };
    let log = EventLog::open(dir.path().join("events.db"), options).unwrap();
    log.append_event(&grant("acct_c", 0)).await.unwrap();
    let before = log.commits();
    // What a request queues: its routing (position wanted later), an attempt (not waited
    // for), its settlement (waited for); apart, as the upstream call sets them apart, so a
    // writer that commits what it is handed commits each on its own.
    let routed = log
        .append_deferred(LogRecord::from_event(&grant("acct_c", 1)).unwrap())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    log.append_event_nowait(&grant("acct_c", 2)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let settled = log.append_event(&grant("acct_c", 3)).await.unwrap();
    assert_eq!(routed.await.unwrap().unwrap(), settled - 2);
    assert_eq!(
        log.commits() - before,
        1,
        "one commit for the three records"
    );
    assert_eq!(log.committed_position(), 4);
}

#[tokio::test]
async fn records_nobody_waits_for_are_committed_within_the_relaxed_wait() {
    let dir = tempfile::tempdir().unwrap();
    let options = LogOptions {
        relaxed_wait_us: 20_000,
        ..LogOptions::default()
    };
    let log = EventLog::open(dir.path().join("events.db"), options).unwrap();
    let mut committed = log.subscribe();
    for round in 0..3 {
        // An idle writer wakes for the first record, then commits it without a waited one.
        log.append_event_nowait(&grant("acct_n", round))
            .await
            .unwrap();
        let position = u64::try_from(round + 1).unwrap();
        let seen = tokio::time::timeout(
            Duration::from_secs(10),
            committed.wait_for(|&p| p >= position),
        )
        .await;
        assert!(seen.is_ok(), "round {round}: never committed");
    }
    let queued = log
        .append_deferred(LogRecord::from_event(&grant("acct_n", 3)).unwrap())
        .await
        .unwrap();
    let position = tokio::time::timeout(Duration::from_secs(10), queued).await;
    assert_eq!(position.unwrap().unwrap().unwrap(), 4);
}
