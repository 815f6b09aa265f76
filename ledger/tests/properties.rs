//! Ledger invariants over random histories of grants, holds, settlements, expiries, duplicate
//! deliveries and replays: every entry sums to zero, every balance equals the sum of its
//! postings, no event is journaled twice, and available credit never falls below the bound
//! the gateway documents (0, less any charge that exceeded its hold).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use lumina_eventlog::{
    Backend, Consumer, ConsumerOptions, EventLog, LocalLogSource, LogOptions, LogRecord,
};
use lumina_ledger::journal::{HoldState, LedgerAccount, entry_for};
use lumina_ledger::{Ledger, LedgerProjection};
use lumina_schemas::payloads::{
    CreditHold, CreditsGranted, HoldExpired, RequestRouted, RequestSettled, Usage,
};
use lumina_schemas::{Envelope, Event};
use proptest::prelude::*;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
enum Op {
    Grant {
        account: u8,
        amount: i64,
    },
    /// A request with a hold; ends by settlement, expiry, or both in either order.
    Request {
        account: u8,
        hold: i64,
        charge: i64,
        end: End,
    },
    /// Deliver an earlier event again.
    Duplicate(usize),
}

#[derive(Debug, Clone, Copy)]
enum End {
    Settle,
    Expire,
    ExpireThenSettle,
    SettleThenExpire,
    Never,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0u8..3, 1i64..5_000_000).prop_map(|(account, amount)| Op::Grant { account, amount }),
        6 => (0u8..3, 1i64..2_000_000, 0i64..2_400_000, prop_oneof![
            Just(End::Settle), Just(End::Expire), Just(End::ExpireThenSettle), Just(End::SettleThenExpire), Just(End::Never)
        ]).prop_map(|(account, hold, charge, end)| Op::Request { account, hold, charge, end }),
        1 => (0usize..1000).prop_map(Op::Duplicate),
    ]
}

fn envelope(account: u8, request: Option<&str>) -> Envelope {
    let mut e = Envelope::new(format!("acct_{account}"), "prop");
    e.request_id = request.map(str::to_string);
    e
}

/// The events a history produces, in log order. Requests only hold what the account has
/// available in the gateway's view (grants minus holds and charges so far), as the gateway does.
fn events(ops: &[Op]) -> (Vec<Event>, i64) {
    let mut out: Vec<Event> = Vec::new();
    let mut available: HashMap<u8, i64> = HashMap::new();
    let mut excess = 0;
    for (i, op) in ops.iter().enumerate() {
        match op {
            Op::Grant { account, amount } => {
                *available.entry(*account).or_default() += amount;
                out.push(Event::new(
                    envelope(*account, None),
                    CreditsGranted {
                        amount_nano: *amount,
                        reason: None,
                        granted_by: "prop".into(),
                    },
                ));
            }
            Op::Request {
                account,
                hold,
                charge,
                end,
            } => {
                let avail = available.entry(*account).or_default();
                if *avail < *hold {
                    continue; // the gateway answers 402
                }
                *avail -= hold;
                let request = format!("req_{i}");
                let routed = Event::new(
                    envelope(*account, Some(&request)),
                    RequestRouted {
                        requested_model: "lumina-fast".into(),
                        path: "fast".into(),
                        task_class: "chat".into(),
                        stream: false,
                        policy_version: 1,
                        features: Default::default(),
                        scores: Default::default(),
                        candidates: vec![],
                        prompt_tokens_estimate: 1,
                        max_tokens: None,
                        hold: Some(CreditHold {
                            amount_nano: *hold,
                            price_table_version: "p".into(),
                            ttl_ms: 1,
                        }),
                        top_features: Vec::new(),
                        prefer: "balanced".into(),
                        min_path: None,
                        max_path: None,
                        classified_path: None,
                        api: "chat_completions".into(),
                    },
                );
                let settle = Event::new(
                    envelope(*account, Some(&request)),
                    RequestSettled {
                        outcome: "completed".into(),
                        path: "fast".into(),
                        provider: None,
                        deployment: None,
                        usage: Usage::default(),
                        charge_nano: *charge,
                        price_table_version: "p".into(),
                        rounding: "half_up_nano".into(),
                        hold_released_nano: *hold,
                        latency_us: 1,
                        ttft_us: None,
                        attempts: 1,
                        error_class: None,
                        usage_anomaly: None,
                        reported_completion_tokens: None,
                    },
                );
                let expire = Event::new(
                    envelope(*account, Some(&request)),
                    HoldExpired {
                        amount_nano: *hold,
                        hold_placed_at: 0,
                        ttl_ms: 1,
                    },
                );
                out.push(routed);
                match end {
                    End::Settle => {
                        *avail += hold - charge;
                        excess += (charge - hold).max(0);
                        out.push(settle);
                    }
                    End::Expire => {
                        *avail += hold;
                        out.push(expire);
                    }
                    End::ExpireThenSettle => {
                        *avail += hold - charge;
                        excess += charge;
                        out.push(expire);
                        out.push(settle);
                    }
                    End::SettleThenExpire => {
                        *avail += hold - charge;
                        excess += (charge - hold).max(0);
                        out.push(settle);
                        out.push(expire);
                    }
                    End::Never => {}
                }
            }
            Op::Duplicate(k) => {
                if !out.is_empty() {
                    let e = out[k % out.len()].clone();
                    out.push(e);
                }
            }
        }
    }
    (out, excess)
}

#[derive(Default, Debug, PartialEq, Eq)]
struct Model {
    balances: HashMap<String, [i64; 4]>,
    entries: Vec<(String, Vec<(LedgerAccount, i64)>)>,
}

/// Applies events the way the ledger does: each event id once, hold states tracked.
fn apply(events: &[Event]) -> Model {
    let mut model = Model::default();
    let mut seen = HashSet::new();
    let mut holds: HashMap<String, HoldState> = HashMap::new();
    for e in events {
        if !seen.insert(e.envelope.event_id) {
            continue;
        }
        let request = e.envelope.request_id.clone();
        let state = request
            .as_ref()
            .and_then(|r| holds.get(r).copied())
            .unwrap_or(HoldState::Missing);
        let Some(entry) = entry_for(e, state).unwrap() else {
            continue;
        };
        assert!(entry.is_balanced(), "unbalanced entry {entry:?}");
        if let Some(r) = request {
            match (&e.payload, state) {
                (lumina_schemas::Payload::RequestRouted(rr), _) => {
                    holds.insert(r, HoldState::Open(rr.hold.as_ref().unwrap().amount_nano));
                }
                (_, HoldState::Open(_)) => {
                    holds.insert(r, HoldState::Closed);
                }
                _ => {}
            }
        }
        let d = entry.balance_delta();
        let b = model.balances.entry(entry.account_id.clone()).or_default();
        b[0] += d.available;
        b[1] += d.held;
        b[2] += d.spent;
        b[3] += d.granted;
        model.entries.push((
            entry.event_id.to_string(),
            entry
                .postings
                .iter()
                .map(|p| (p.account.clone(), p.amount.0))
                .collect(),
        ));
    }
    model
}

fn check(model: &Model, excess: i64) {
    let ids: HashSet<&String> = model.entries.iter().map(|(id, _)| id).collect();
    assert_eq!(
        ids.len(),
        model.entries.len(),
        "an event was journaled twice"
    );
    let mut sums: HashMap<String, [i64; 4]> = HashMap::new();
    for (_, postings) in &model.entries {
        assert_eq!(postings.iter().map(|(_, a)| a).sum::<i64>(), 0);
        for (account, amount) in postings {
            let (owner, slot, sign) = match account {
                LedgerAccount::Available(a) => (a.clone(), 0, 1),
                LedgerAccount::Held(a) => (a.clone(), 1, 1),
                _ => continue,
            };
            sums.entry(owner).or_default()[slot] += sign * amount;
        }
    }
    for (account, b) in &model.balances {
        let s = sums.get(account).copied().unwrap_or_default();
        assert_eq!(
            (b[0], b[1]),
            (s[0], s[1]),
            "{account}: balance differs from its postings"
        );
        assert!(b[1] >= 0, "{account}: negative held {b:?}");
        assert!(
            b[0] >= -excess,
            "{account}: available {} below the bound -{excess}",
            b[0]
        );
        assert_eq!(
            b[0] + b[1] + b[2],
            b[3],
            "{account}: available + held + spent must equal granted"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_histories_keep_the_ledger_invariants(ops in proptest::collection::vec(op(), 1..80)) {
        let (events, excess) = events(&ops);
        let model = apply(&events);
        check(&model, excess);
        // Replaying the whole history changes nothing.
        let mut twice = events.clone();
        twice.extend(events.iter().cloned());
        prop_assert_eq!(apply(&twice), model);
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The database ledger ends where the model does, replays included.
async fn database_matches_model(events: &[Event], backend: Backend) {
    if events.is_empty() {
        return;
    }
    let (_t, db) = lumina_testkit::migrated_database(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(dir.path().join("events.db"), LogOptions::default()).unwrap();
    for e in events.iter().chain(events.iter()) {
        log.append(LogRecord::from_event(e).unwrap()).await.unwrap();
    }
    let consumer = Consumer::new(
        db.clone(),
        LocalLogSource::new(log.reader().unwrap()).with_commit_notifications(log.subscribe()),
        LedgerProjection,
        ConsumerOptions {
            batch_size: 7,
            idle_wait: Duration::from_millis(20),
            ..ConsumerOptions::default()
        },
    );
    let mut progress = consumer.progress();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(consumer.run(cancel.clone()));
    let end = log.committed_position() as i64;
    tokio::time::timeout(
        Duration::from_secs(30),
        progress.wait_for(|p| p.next_offsets.get(&0).copied().unwrap_or(0) > end),
    )
    .await
    .unwrap()
    .unwrap();
    cancel.cancel();
    task.await.unwrap().unwrap();
    let model = apply(events);
    let ledger = Ledger::new(db);
    for (account, b) in &model.balances {
        let got = ledger.balance(account).await.unwrap();
        assert_eq!(
            [
                got.available_nano,
                got.held_nano,
                got.spent_nano,
                got.granted_nano
            ],
            *b,
            "{backend:?} {account}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn the_database_ledger_matches_the_model(ops in proptest::collection::vec(op(), 1..40)) {
        let (events, _) = events(&ops);
        rt().block_on(async {
            for backend in lumina_testkit::BACKENDS {
                database_matches_model(&events, backend).await;
            }
        });
    }
}
