//! The admin service answers only once its event is applied: when the consumers do not apply
//! it in time, the caller gets 503 and the write stays durable in the log.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

use std::sync::Arc;

use lumina_eventlog::{Backend, ConsumerWatch, EventLog, LogOptions, Progress};
use lumina_gateway::admin::{Admin, AdminError};
use lumina_gateway::api::error::ApiError;
use lumina_gateway::auth::{KeyCache, KeySecret};
use lumina_ledger::Ledger;
use lumina_projector::ReadModel;
use lumina_schemas::NanoCredits;
use tokio::sync::watch;

#[tokio::test]
async fn an_event_not_applied_in_time_is_a_503_and_stays_in_the_log() {
    let (_t, db) = lumina_testkit::migrated_database(Backend::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(dir.path().join("events.db"), LogOptions::default()).unwrap();
    // A consumer that never applies anything.
    let (_stalled, progress) = watch::channel(Progress::default());
    let admin = Admin::new(
        log.clone(),
        ReadModel::new(db.clone()),
        Ledger::new(db),
        Arc::new(KeyCache::new(KeySecret::generate().unwrap())),
        Arc::new(lumina_gateway::metering::credit::CreditBook::new()),
        vec![ConsumerWatch {
            name: "stalled",
            progress,
        }],
        "test",
    )
    .with_apply_timeout(std::time::Duration::from_millis(200));
    let err = admin
        .open_account("Late", NanoCredits(5), "test")
        .await
        .unwrap_err();
    assert!(matches!(err, AdminError::NotApplied(_)), "{err:?}");
    let api: ApiError = err.into();
    assert_eq!(api.status(), 503);
    assert_eq!(
        log.committed_position(),
        2,
        "AccountOpened and CreditsGranted are durable"
    );
}
