//! The read models follow the admin events and rebuild to identical rows, on both databases.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use common::{dump, project};

use lumina_eventlog::{Backend, EventLog, LogOptions};
use lumina_projector::ReadModel;
use lumina_projector::read_model::rebuild;
use lumina_schemas::payloads::{
    AccountOpened, ApiKeyCreated, ApiKeyRevoked, CreditsGranted, LimitsChanged,
};
use lumina_schemas::{Envelope, Event};
use lumina_testkit::{BACKENDS, migrated_database};

fn envelope(account: &str) -> Envelope {
    Envelope::new(account, "test")
}

fn admin_history() -> Vec<Event> {
    let mut events = Vec::new();
    for a in 0..3 {
        let account = format!("acct_{a:032x}");
        let project = format!("proj_{a:032x}");
        events.push(Event::new(
            envelope(&account),
            AccountOpened {
                admin_key_id: None,
                name: format!("Account {a}"),
                default_project_id: project.clone(),
                default_project_name: "Default".into(),
            },
        ));
        for g in 1..=3 {
            events.push(Event::new(
                envelope(&account),
                CreditsGranted {
                    amount_nano: g * 1_500_000_000,
                    reason: Some(format!("grant {g}")),
                    granted_by: "admin".into(),
                },
            ));
        }
        for k in 0..2 {
            let mut env = envelope(&account);
            if k == 1 {
                env.project_id = Some(project.clone());
            }
            events.push(Event::new(
                env,
                ApiKeyCreated {
                    admin_key_id: None,
                    key_id: format!("key_{a}{k}"),
                    name: format!("key {k}"),
                    key_hash: format!("{:064x}", a * 10 + k),
                    key_prefix: format!("lum_{a}{k}"),
                    store_content: k == 0,
                    rpm: Some(60),
                    tpm: None,
                    routing_prefer: None,
                    fusion_barred: false,
                    ..Default::default()
                },
            ));
        }
        events.push(Event::new(
            envelope(&account),
            LimitsChanged {
                admin_key_id: None,
                key_id: format!("key_{a}0"),
                rpm: Some(5),
                tpm: Some(1000),
            },
        ));
        events.push(Event::new(
            envelope(&account),
            ApiKeyRevoked {
                admin_key_id: None,
                key_id: format!("key_{a}1"),
                reason: None,
            },
        ));
    }
    events
}

async fn scenario(backend: Backend) {
    let (_t, db) = migrated_database(backend).await;
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(dir.path().join("events.db"), LogOptions::default()).unwrap();
    for event in admin_history() {
        log.append_event(&event).await.unwrap();
    }
    project(&db, &log, 5).await;

    let rm = ReadModel::new(db.clone());
    let account = rm
        .account(&format!("acct_{:032x}", 1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(account.granted_nano, 9_000_000_000);
    let keys = rm.keys(Some(&account.id)).await.unwrap();
    assert_eq!(keys.len(), 2);
    assert_eq!(
        (keys[0].rpm, keys[0].tpm, keys[0].store_content),
        (Some(5), Some(1000), true)
    );
    assert!(keys[0].is_active());
    assert_eq!(keys[0].project_id, account.default_project_id);
    assert_eq!(keys[1].status, "revoked");
    assert!(keys[1].revoked_at.is_some());
    assert_eq!(rm.keys(None).await.unwrap().len(), 6);
    assert_eq!(rm.all_keys().await.unwrap().len(), 6);
    assert_eq!(rm.account_count().await.unwrap(), 3);

    let live = dump(&db).await;
    assert_eq!(live.len(), 3 + 3 + 9 + 6);
    rebuild(&db).await.unwrap();
    assert!(
        dump(&db).await.is_empty(),
        "rebuild must empty the read models"
    );
    project(&db, &log, 5).await;
    assert_eq!(
        dump(&db).await,
        live,
        "{backend:?}: rebuilt rows differ from live rows"
    );
}

#[tokio::test]
async fn read_models_follow_admin_events_and_rebuild_to_identical_rows() {
    for backend in BACKENDS {
        scenario(backend).await;
    }
}
