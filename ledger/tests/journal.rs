//! The ledger journals grants exactly once, balances equal their postings, no balance can be
//! pushed out of range, and the database itself refuses unbalanced or edited postings — on
//! SQLite and PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

use std::time::Duration;

use lumina_eventlog::{
    Backend, Consumer, ConsumerOptions, Database, EventLog, LocalLogSource, LogOptions, LogRecord,
};
use lumina_ledger::{Ledger, LedgerProjection, Spend, SpendQuery, SpendScope, spend_bucket};
use lumina_schemas::money::MAX_ACCOUNT_CREDITS;
use lumina_schemas::payloads::CreditsGranted;
use lumina_schemas::{Envelope, Event, EventType};
use lumina_testkit::{BACKENDS, migrated_database};
use sqlx::Row;
use tokio_util::sync::CancellationToken;

fn grant(account: &str, amount: i64) -> Event {
    Event::new(
        Envelope::new(account, "test"),
        CreditsGranted {
            amount_nano: amount,
            reason: None,
            granted_by: "test".into(),
        },
    )
}

async fn consume(db: &Database, log: &EventLog) {
    let source =
        LocalLogSource::new(log.reader().unwrap()).with_commit_notifications(log.subscribe());
    let consumer = Consumer::new(
        db.clone(),
        source,
        LedgerProjection,
        ConsumerOptions {
            batch_size: 16,
            idle_wait: Duration::from_millis(20),
            ..ConsumerOptions::default()
        },
    );
    let mut progress = consumer.progress();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(consumer.run(cancel.clone()));
    let end = log.committed_position() as i64;
    tokio::time::timeout(
        Duration::from_secs(20),
        progress.wait_for(|p| p.next_offsets.get(&0).copied().unwrap_or(0) > end),
    )
    .await
    .unwrap()
    .unwrap();
    cancel.cancel();
    task.await.unwrap().unwrap();
}

async fn journals_grants_once(backend: Backend) {
    let (_t, db) = migrated_database(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(dir.path().join("events.db"), LogOptions::default()).unwrap();
    let mut records = Vec::new();
    for i in 1..=30i64 {
        let r =
            LogRecord::from_event(&grant(&format!("acct_{}", i % 3), i * 1_000_000_001)).unwrap();
        log.append(r.clone()).await.unwrap();
        records.push(r);
    }
    log.append_event(&lumina_schemas::samples::sample(
        EventType::AccountOpened,
        1,
    ))
    .await
    .unwrap();
    // A zero grant is refused by the ledger and dead-lettered, not journaled.
    log.append_event(&grant("acct_0", 0)).await.unwrap();
    for r in &records {
        log.append(r.clone()).await.unwrap();
    }
    consume(&db, &log).await;

    let ledger = Ledger::new(db.clone());
    for a in 0..3 {
        let account = format!("acct_{a}");
        let expected: i64 = (1..=30i64)
            .filter(|i| i % 3 == a)
            .map(|i| i * 1_000_000_001)
            .sum();
        let balance = ledger.balance(&account).await.unwrap();
        assert_eq!(balance.available_nano, expected, "{backend:?} {account}");
        assert_eq!(balance.granted_nano, expected);
        assert_eq!((balance.held_nano, balance.spent_nano), (0, 0));
        assert_eq!(ledger.posted_available(&account).await.unwrap(), expected);
    }
    let entries: i64 = sqlx::query("SELECT COUNT(*) FROM ledger_entries")
        .fetch_one(&db.pool)
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        entries, 30,
        "{backend:?}: every grant journaled exactly once"
    );
    let unbalanced: i64 = sqlx::query(
        "SELECT COUNT(*) FROM (SELECT entry_event_id FROM ledger_postings GROUP BY entry_event_id HAVING SUM(amount_nano) <> 0) t",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap()
    .get(0);
    assert_eq!(unbalanced, 0);
    let dead: i64 = sqlx::query("SELECT COUNT(*) FROM dead_letters WHERE consumer = 'ledger'")
        .fetch_one(&db.pool)
        .await
        .unwrap()
        .get(0);
    assert_eq!(dead, 1);
}

async fn no_balance_leaves_its_range(backend: Backend) {
    let (_t, db) = migrated_database(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(dir.path().join("events.db"), LogOptions::default()).unwrap();
    let max = MAX_ACCOUNT_CREDITS.0;
    // Grants beyond what an account can hold, one at a time or added up: each one past the
    // bound is dead-lettered; nothing wraps or turns into a float.
    for amount in [max + 1, max, max, max, max, max, 7] {
        log.append_event(&grant("acct_big", amount)).await.unwrap();
    }
    consume(&db, &log).await;
    let balance = Ledger::new(db.clone()).balance("acct_big").await.unwrap();
    assert_eq!(balance.granted_nano, 4 * max + 7, "{backend:?}");
    assert_eq!(balance.available_nano, 4 * max + 7, "{backend:?}");
    let dead: i64 = sqlx::query("SELECT COUNT(*) FROM dead_letters WHERE consumer = 'ledger'")
        .fetch_one(&db.pool)
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        dead, 2,
        "{backend:?}: the too-large grant and the one past the bound"
    );
    let typed: i64 =
        sqlx::query("SELECT granted_nano FROM ledger_balances WHERE account_id = 'acct_big'")
            .fetch_one(&db.pool)
            .await
            .unwrap()
            .get(0);
    assert_eq!(typed, 4 * max + 7);
}

async fn database_refuses_unbalanced_entries(backend: Backend) {
    let (_t, db) = migrated_database(backend).await;
    let exec = |sql: &'static str| {
        let pool = db.pool.clone();
        async move { sqlx::query(sql).execute(&pool).await }
    };
    exec("INSERT INTO ledger_postings VALUES ('e1', 1, 'system:grants', 'acct_a', -10)")
        .await
        .unwrap();
    exec("INSERT INTO ledger_postings VALUES ('e1', 2, 'acct_a:available', 'acct_a', 9)")
        .await
        .unwrap();
    let refused = exec("INSERT INTO ledger_entries (event_id, kind, account_id, occurred_at) VALUES ('e1', 'grant', 'acct_a', 0)").await;
    assert!(refused.is_err(), "{backend:?}: unbalanced entry accepted");
    let refused = exec("INSERT INTO ledger_entries (event_id, kind, account_id, occurred_at) VALUES ('e0', 'grant', 'acct_a', 0)").await;
    assert!(
        refused.is_err(),
        "{backend:?}: entry without postings accepted"
    );

    exec("INSERT INTO ledger_postings VALUES ('e2', 1, 'system:grants', 'acct_a', -10)")
        .await
        .unwrap();
    exec("INSERT INTO ledger_postings VALUES ('e2', 2, 'acct_a:available', 'acct_a', 10)")
        .await
        .unwrap();
    exec("INSERT INTO ledger_entries (event_id, kind, account_id, occurred_at) VALUES ('e2', 'grant', 'acct_a', 0)").await.unwrap();
    assert!(
        exec(
            "UPDATE ledger_postings SET amount_nano = 11 WHERE entry_event_id = 'e2' AND line = 2"
        )
        .await
        .is_err()
    );
    assert!(
        exec("INSERT INTO ledger_postings VALUES ('e2', 3, 'system:revenue', 'acct_a', 0)")
            .await
            .is_err()
    );
}

/// `event_type`'s sample, for request `request` of key `key` in project `project`.
fn request_event(event_type: EventType, request: &str, project: &str, key: &str) -> Event {
    let mut event = lumina_schemas::samples::sample(event_type, 7);
    // A fresh id and time: samples of one seed share theirs.
    event.envelope = Envelope::new("acct_s", "test");
    event.envelope.request_id = Some(request.into());
    event.envelope.project_id = Some(project.into());
    event.envelope.api_key_id = Some(key.into());
    event
}

async fn spend_by_scope(backend: Backend) {
    let (_t, db) = migrated_database(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(dir.path().join("events.db"), LogOptions::default()).unwrap();
    log.append_event(&grant("acct_s", 10_000_000_000))
        .await
        .unwrap();
    // r1 (key k1) settles; r2 (key k2, same project) stays open.
    let settled = request_event(EventType::RequestSettled, "r1", "p1", "k1");
    let charge = match &settled.payload {
        lumina_schemas::Payload::RequestSettled(s) => s.charge_nano,
        _ => unreachable!(),
    };
    let open = request_event(EventType::RequestRouted, "r2", "p1", "k2");
    let held = match &open.payload {
        lumina_schemas::Payload::RequestRouted(r) => r.hold.as_ref().unwrap().amount_nano,
        _ => unreachable!(),
    };
    for event in [
        request_event(EventType::RequestRouted, "r1", "p1", "k1"),
        settled.clone(),
        open,
    ] {
        log.append_event(&event).await.unwrap();
    }
    consume(&db, &log).await;

    let at = settled.envelope.occurred_at;
    let query = |id: &str, scope: SpendScope, scope_id: &str, since: Option<i64>| SpendQuery {
        budget_id: id.into(),
        scope,
        scope_id: scope_id.into(),
        since,
    };
    let queries = [
        query("account", SpendScope::Account, "acct_s", None),
        query(
            "project",
            SpendScope::Project,
            "p1",
            Some(at - 3_600_000_000),
        ),
        query("k1", SpendScope::Key, "k1", Some(spend_bucket(at))),
        query("k1-later", SpendScope::Key, "k1", Some(at + 900_000_000)),
        query("k2", SpendScope::Key, "k2", None),
        query("nobody", SpendScope::Key, "k3", None),
    ];
    let expected = [
        ("account", charge, held),
        ("project", charge, held),
        ("k1", charge, 0),
        ("k1-later", 0, 0),
        ("k2", 0, held),
        ("nobody", 0, 0),
    ];
    let ledger = Ledger::new(db.clone());
    let by_position = ledger.available_at_position(&queries).await.unwrap();
    let (by_event, _) = ledger.available_with_applied(&[], &queries).await.unwrap();
    let direct = ledger.spend(&queries).await.unwrap();
    for spends in [&by_position.spend, &by_event.spend, &direct] {
        for (id, settled, held) in expected {
            assert_eq!(spends[id], Spend { settled, held }, "{backend:?}: {id}");
        }
    }
    assert_eq!(
        by_position.available["acct_s"],
        10_000_000_000 - charge - held,
        "{backend:?}"
    );
    assert_eq!(by_position.available, by_event.available);
}

#[tokio::test]
async fn the_ledger_derives_each_scopes_spend_and_open_holds() {
    for backend in BACKENDS {
        spend_by_scope(backend).await;
    }
}

#[tokio::test]
async fn grants_are_journaled_once_and_balances_equal_postings() {
    for backend in BACKENDS {
        journals_grants_once(backend).await;
    }
}

#[tokio::test]
async fn an_amount_that_would_overflow_a_balance_is_dead_lettered() {
    for backend in BACKENDS {
        no_balance_leaves_its_range(backend).await;
    }
}

#[tokio::test]
async fn the_database_refuses_unbalanced_or_edited_postings() {
    for backend in BACKENDS {
        database_refuses_unbalanced_entries(backend).await;
    }
}
