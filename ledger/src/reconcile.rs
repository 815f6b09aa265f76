//! `lumina reconcile`: checks the journal against the event log beside a live system.
//!
//! It replays the log's money events through the same pure journal logic the ledger uses (with
//! hold states kept in memory) to get the entries the journal must hold — exactly once each,
//! with exactly these postings — and compares them with the database; it checks that every
//! entry sums to zero and every balance equals the sum of its postings, and lists open and
//! orphaned holds.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use lumina_eventlog::{Database, LogReader};
use lumina_schemas::{Event, Payload, decode};
use serde::Serialize;
use sqlx::Row;

use crate::CONSUMER;
use crate::journal::{HoldState, MONEY_EVENTS, entry_for};

/// What reconciliation found.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// Log position the ledger had to reach.
    pub log_end: u64,
    /// Whether the ledger reached it within the wait.
    pub caught_up: bool,
    /// Money events read from the log (duplicates counted once).
    pub money_events: u64,
    /// Entries the journal must hold.
    pub expected_entries: u64,
    /// Entries the journal holds.
    pub journal_entries: u64,
    /// Settlements in the log and the sum they charged.
    pub settlements: u64,
    /// Sum of all charges in the log, nano-credits.
    pub charged_nano: i64,
    /// Holds still open.
    pub open_holds: u64,
    /// Holds released by expiry (orphans).
    pub orphaned_holds: u64,
    /// Every discrepancy, for people.
    pub problems: Vec<String>,
}

impl Report {
    /// Whether nothing is wrong.
    pub fn is_clean(&self) -> bool {
        self.caught_up && self.problems.is_empty()
    }
}

type Postings = Vec<(String, i64)>;

/// Waits until the ledger's stored positions on `stream` reach `ends` (next offset per
/// partition) or `wait` passes; says which partition lags when it does not.
async fn wait_for_ledger(
    db: &Database,
    stream: &str,
    ends: &BTreeMap<i32, i64>,
    wait: Duration,
) -> Result<Option<String>, String> {
    let deadline = Instant::now() + wait;
    loop {
        let rows = sqlx::query(
            "SELECT partition_id, next_offset FROM consumer_positions WHERE consumer = $1 AND stream = $2",
        )
        .bind(CONSUMER)
        .bind(stream)
        .fetch_all(&db.pool)
        .await
        .map_err(|e| e.to_string())?;
        let mut at: HashMap<i64, i64> = HashMap::new();
        for r in rows {
            at.insert(
                r.try_get(0).map_err(|e| e.to_string())?,
                r.try_get(1).map_err(|e| e.to_string())?,
            );
        }
        let behind = ends.iter().find(|(p, end)| {
            let next = at.get(&i64::from(**p)).copied().unwrap_or(0);
            **end > 0 && next < **end
        });
        let Some((p, end)) = behind else {
            return Ok(None);
        };
        if Instant::now() >= deadline {
            let next = at.get(&i64::from(*p)).copied().unwrap_or(0);
            return Ok(Some(format!(
                "the ledger has not applied {stream} partition {p} up to offset {end} (its next is {next})"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits up to `wait` for the ledger to apply the local log as it is now, then reconciles.
pub async fn reconcile(
    db: &Database,
    reader: &LogReader,
    wait: Duration,
) -> Result<Report, String> {
    let log_end = reader.end_position().await.map_err(|e| e.to_string())?;
    let end = i64::try_from(log_end).unwrap_or(i64::MAX);
    // The local log's next position to apply is stored as partition 0's next offset.
    let ends = BTreeMap::from([(0, if end > 0 { end + 1 } else { 0 })]);
    let lag = wait_for_ledger(db, lumina_eventlog::LOCAL_STREAM, &ends, wait).await?;
    let mut events = Vec::new();
    let mut after = 0;
    loop {
        let batch = reader
            .read_after(after, 5000)
            .await
            .map_err(|e| e.to_string())?;
        let Some(last) = batch.last() else { break };
        after = last.position;
        for entry in batch {
            if entry.position > log_end
                || !MONEY_EVENTS.iter().any(|t| t.as_str() == entry.event_type)
            {
                continue;
            }
            if let Ok(decoded) = decode(&entry.bytes) {
                events.push(decoded.event);
            }
        }
        if after >= log_end {
            break;
        }
    }
    compare(db, log_end, lag, events).await
}

/// Reconciles against events read from the topic `stream` (each partition in order) up to
/// `ends`, after waiting up to `wait` for the ledger to apply them.
pub async fn reconcile_stream(
    db: &Database,
    stream: &str,
    ends: &BTreeMap<i32, i64>,
    events: Vec<Event>,
    wait: Duration,
) -> Result<Report, String> {
    let lag = wait_for_ledger(db, stream, ends, wait).await?;
    let total = ends.values().map(|e| u64::try_from(*e).unwrap_or(0)).sum();
    compare(db, total, lag, events).await
}

/// The comparison itself: `events` (money events in order per account) against the journal.
async fn compare(
    db: &Database,
    log_end: u64,
    lag: Option<String>,
    events: Vec<Event>,
) -> Result<Report, String> {
    let mut report = Report {
        log_end,
        caught_up: lag.is_none(),
        problems: lag.into_iter().collect(),
        ..Report::default()
    };

    // The entries the log implies.
    let mut expected: BTreeMap<String, Postings> = BTreeMap::new();
    let mut seen = HashSet::new();
    let mut holds: HashMap<String, HoldState> = HashMap::new();
    {
        for event in events {
            if !MONEY_EVENTS.contains(&event.event_type()) {
                continue;
            }
            if !seen.insert(event.envelope.event_id) {
                continue;
            }
            report.money_events += 1;
            if let Payload::RequestSettled(s) = &event.payload {
                report.settlements += 1;
                match report.charged_nano.checked_add(s.charge_nano) {
                    Some(total) => report.charged_nano = total,
                    None => report.problems.push(format!(
                        "the charges in the log overflow at event {} ({} nano-credits)",
                        event.envelope.event_id, s.charge_nano
                    )),
                }
            }
            let request = event.envelope.request_id.clone();
            let state = match (&event.payload, &request) {
                (Payload::CreditsGranted(_), _) | (_, None) => HoldState::Missing,
                (_, Some(r)) => holds.get(r).copied().unwrap_or(HoldState::Missing),
            };
            let Ok(Some(journal_entry)) = entry_for(&event, state) else {
                continue;
            };
            if let Some(r) = request {
                match (&event.payload, state) {
                    (Payload::RequestRouted(_), _) => {
                        let held: i64 = journal_entry
                            .postings
                            .iter()
                            .filter(|p| p.account.code().ends_with(":held"))
                            .map(|p| p.amount.0)
                            .sum();
                        holds.insert(r, HoldState::Open(held));
                    }
                    (_, HoldState::Open(_)) => {
                        holds.insert(r, HoldState::Closed);
                    }
                    _ => {}
                }
            }
            expected.insert(
                event.envelope.event_id.to_string(),
                journal_entry
                    .postings
                    .iter()
                    .map(|p| (p.account.code(), p.amount.0))
                    .collect(),
            );
        }
    }
    report.expected_entries = expected.len() as u64;

    // The entries the journal holds.
    let rows = sqlx::query(
        "SELECT p.entry_event_id, p.ledger_account, p.amount_nano
         FROM ledger_postings p JOIN ledger_entries e ON e.event_id = p.entry_event_id
         ORDER BY p.entry_event_id, p.line",
    )
    .fetch_all(&db.pool)
    .await
    .map_err(|e| e.to_string())?;
    let mut journal: BTreeMap<String, Postings> = BTreeMap::new();
    for r in rows {
        let id: String = r.try_get(0).map_err(|e| e.to_string())?;
        journal.entry(id).or_default().push((
            r.try_get(1).map_err(|e| e.to_string())?,
            r.try_get(2).map_err(|e| e.to_string())?,
        ));
    }
    report.journal_entries = journal.len() as u64;
    if report.caught_up {
        for (id, postings) in &expected {
            match journal.get(id) {
                None => report.problems.push(format!("event {id} is not journaled")),
                Some(found) if found != postings => report.problems.push(format!(
                    "event {id} is journaled as {found:?}, the log implies {postings:?}"
                )),
                Some(_) => {}
            }
        }
        for id in journal.keys().filter(|id| !expected.contains_key(*id)) {
            report
                .problems
                .push(format!("journal entry {id} has no money event in the log"));
        }
    }
    let entries: i64 = sqlx::query("SELECT COUNT(*) FROM ledger_entries")
        .fetch_one(&db.pool)
        .await
        .and_then(|r| r.try_get(0))
        .map_err(|e| e.to_string())?;
    if entries as u64 != report.journal_entries {
        report.problems.push(format!(
            "{entries} entries but {} with postings",
            report.journal_entries
        ));
    }

    // Every entry sums to zero.
    let unbalanced = sqlx::query(
        "SELECT entry_event_id FROM ledger_postings GROUP BY entry_event_id HAVING SUM(amount_nano) <> 0",
    )
    .fetch_all(&db.pool)
    .await
    .map_err(|e| e.to_string())?;
    for r in unbalanced {
        let id: String = r.try_get(0).map_err(|e| e.to_string())?;
        report
            .problems
            .push(format!("entry {id} does not sum to zero"));
    }

    // Every balance equals its postings.
    let balances = sqlx::query(
        "SELECT account_id, available_nano, held_nano, spent_nano, granted_nano FROM ledger_balances",
    )
    .fetch_all(&db.pool)
    .await
    .map_err(|e| e.to_string())?;
    let sums = sqlx::query(
        "SELECT account_id, ledger_account, CAST(SUM(amount_nano) AS BIGINT) FROM ledger_postings
         GROUP BY account_id, ledger_account",
    )
    .fetch_all(&db.pool)
    .await
    .map_err(|e| e.to_string())?;
    let mut posted: HashMap<String, [i64; 4]> = HashMap::new();
    for r in sums {
        let account: String = r.try_get(0).map_err(|e| e.to_string())?;
        let code: String = r.try_get(1).map_err(|e| e.to_string())?;
        let sum: i64 = r.try_get(2).map_err(|e| e.to_string())?;
        let slot = posted.entry(account).or_default();
        if code.ends_with(":available") {
            slot[0] = slot[0].saturating_add(sum);
        } else if code.ends_with(":held") {
            slot[1] = slot[1].saturating_add(sum);
        } else if code == "system:revenue" {
            slot[2] = slot[2].saturating_add(sum);
        } else if code == "system:grants" {
            slot[3] = slot[3].saturating_sub(sum);
        }
    }
    for r in balances {
        let account: String = r.try_get(0).map_err(|e| e.to_string())?;
        let balance: [i64; 4] = [
            r.try_get(1).map_err(|e| e.to_string())?,
            r.try_get(2).map_err(|e| e.to_string())?,
            r.try_get(3).map_err(|e| e.to_string())?,
            r.try_get(4).map_err(|e| e.to_string())?,
        ];
        let sums = posted.remove(&account).unwrap_or_default();
        if balance != sums {
            report.problems.push(format!(
                "balance of {account} is {balance:?} (available, held, spent, granted) but its postings sum to {sums:?}"
            ));
        }
    }
    for (account, sums) in posted {
        if sums != [0; 4] {
            report
                .problems
                .push(format!("{account} has postings {sums:?} but no balance"));
        }
    }

    // Holds.
    let holds = sqlx::query("SELECT status, COUNT(*) FROM ledger_holds GROUP BY status")
        .fetch_all(&db.pool)
        .await
        .map_err(|e| e.to_string())?;
    for r in holds {
        let status: String = r.try_get(0).map_err(|e| e.to_string())?;
        let n: i64 = r.try_get(1).map_err(|e| e.to_string())?;
        match status.as_str() {
            "open" => report.open_holds = n as u64,
            "expired" => report.orphaned_holds = n as u64,
            _ => {}
        }
    }
    Ok(report)
}
