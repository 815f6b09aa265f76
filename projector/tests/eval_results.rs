//! Eval results on every backend: each `EvalCompleted` is one `eval_results` row whatever the
//! batching, a replayed event is no second row, a result out of range is dead-lettered alone,
//! and the lookups behind `POST /v1/evals/results` see only the asking account's requests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use common::{dump, project};

use lumina_eventlog::{Database, EventLog, LogOptions};
use lumina_projector::ReadModel;
use lumina_schemas::payloads::{EvalCompleted, RequestRouted, RequestSettled, Usage};
use lumina_schemas::{Envelope, Event};
use lumina_testkit::{BACKENDS, migrated_database};
use sqlx::Row;

fn account(a: usize) -> String {
    format!("acct_{a:032x}")
}

fn request(r: usize) -> String {
    format!("req_{r:032x}")
}

fn envelope(a: usize, r: usize) -> Envelope {
    let mut e = Envelope::new(account(a), "test");
    e.request_id = Some(request(r));
    e
}

fn routed(r: usize) -> RequestRouted {
    RequestRouted {
        requested_model: "lumina-auto".into(),
        path: "balanced".into(),
        task_class: "math".into(),
        stream: false,
        policy_version: 2,
        features: Default::default(),
        scores: Default::default(),
        candidates: vec!["p/m".into()],
        prompt_tokens_estimate: 10 + r as i64,
        max_tokens: None,
        hold: None,
        top_features: Vec::new(),
        prefer: "balanced".into(),
        min_path: None,
        max_path: None,
        classified_path: None,
        api: "chat_completions".into(),
    }
}

fn settled(r: usize) -> RequestSettled {
    RequestSettled {
        outcome: "completed".into(),
        path: "balanced".into(),
        provider: Some("p".into()),
        deployment: Some("p/m".into()),
        usage: Usage::default(),
        charge_nano: 1_000 + r as i64,
        price_table_version: "t".into(),
        rounding: "half_up_nano".into(),
        hold_released_nano: 0,
        latency_us: 1_000,
        ttft_us: None,
        attempts: 1,
        error_class: None,
        usage_anomaly: None,
        reported_completion_tokens: None,
    }
}

fn result(r: usize, score: f64) -> EvalCompleted {
    EvalCompleted {
        run_id: "run_1".into(),
        dataset: "d".into(),
        item_id: format!("item-{r}"),
        model: "lumina-auto".into(),
        path: "balanced".into(),
        deployment: Some("p/m".into()),
        task_class: r.is_multiple_of(2).then(|| "arithmetic".into()),
        routed_task_class: Some("math".into()),
        check_kind: if r.is_multiple_of(3) {
            "judge"
        } else {
            "numeric"
        }
        .into(),
        score,
        passed: score >= 0.5,
        cost_nano: 1_000 + r as i64,
        latency_ms: 12.5 + r as f64,
        judge_request_id: r.is_multiple_of(3).then(|| request(100 + r)),
        judge_cost_nano: r.is_multiple_of(3).then_some(77),
    }
}

/// Requests 0..8, the even ones account 0's and the odd ones account 1's, each with a result;
/// result 5 is sent twice and one more result has a score out of range.
fn events() -> Vec<Event> {
    let mut events = Vec::new();
    for r in 0..8 {
        events.push(Event::new(envelope(r % 2, r), routed(r)));
        events.push(Event::new(envelope(r % 2, r), settled(r)));
    }
    for r in 0..8 {
        events.push(Event::new(envelope(r % 2, r), result(r, r as f64 / 8.0)));
    }
    events.push(events[events.len() - 3].clone());
    events.push(Event::new(envelope(0, 2), result(2, 1.5)));
    events
}

async fn count(db: &Database, sql: &'static str) -> i64 {
    sqlx::query(sql).fetch_one(&db.pool).await.unwrap().get(0)
}

#[tokio::test]
async fn every_result_is_one_row_whatever_the_batching_and_lookups_stay_in_the_account() {
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(dir.path().join("events.db"), LogOptions::default()).unwrap();
    for event in &events() {
        log.append_event(event).await.unwrap();
    }
    for backend in BACKENDS {
        let mut first: Option<Vec<String>> = None;
        for batch_size in [1, 2048] {
            let (_t, db) = migrated_database(backend).await;
            project(&db, &log, batch_size).await;
            assert_eq!(
                count(&db, "SELECT COUNT(*) FROM eval_results").await,
                8,
                "{backend:?}, batches of {batch_size}"
            );
            assert_eq!(
                count(&db, "SELECT COUNT(*) FROM dead_letters").await,
                1,
                "{backend:?}, batches of {batch_size}: the out-of-range score"
            );
            let row = sqlx::query(
                "SELECT score, passed, cost_nano, latency_ms, judge_request_id, judge_cost_nano,
                     task_class, routed_task_class, account_id
                 FROM eval_results WHERE item_id = 'item-6'",
            )
            .fetch_one(&db.pool)
            .await
            .unwrap();
            assert_eq!(row.try_get::<f64, _>(0).unwrap(), 0.75);
            assert_eq!(row.try_get::<i64, _>(1).unwrap(), 1);
            assert_eq!(row.try_get::<i64, _>(2).unwrap(), 1_006);
            assert_eq!(row.try_get::<f64, _>(3).unwrap(), 18.5);
            assert_eq!(row.try_get::<String, _>(4).unwrap(), request(106));
            assert_eq!(row.try_get::<i64, _>(5).unwrap(), 77);
            assert_eq!(row.try_get::<String, _>(6).unwrap(), "arithmetic");
            assert_eq!(row.try_get::<String, _>(7).unwrap(), "math");
            assert_eq!(row.try_get::<String, _>(8).unwrap(), account(0));
            let rows = dump(&db).await;
            match &first {
                None => first = Some(rows),
                Some(expected) => assert!(rows == *expected, "{backend:?}: batching changed rows"),
            }

            let views = ReadModel::new(db.clone());
            let (r0, r1, r9) = (request(0), request(1), request(9));
            let found = views
                .requests_of_account(&account(0), &[&r0, &r1, &r9])
                .await
                .unwrap();
            assert_eq!(found.len(), 1, "{found:?}");
            let mine = &found[&r0];
            assert_eq!(mine.charge_nano, Some(1_000));
            assert_eq!(mine.path.as_deref(), Some("balanced"));
            assert_eq!(mine.deployment.as_deref(), Some("p/m"));
            assert_eq!(mine.task_class.as_deref(), Some("math"));
            assert_eq!(mine.outcome.as_deref(), Some("completed"));
            assert_eq!(mine.requested_model.as_deref(), Some("lumina-auto"));
            let evaluated = views
                .evaluated_requests(&account(1), &[&r0, &r1, &r9])
                .await
                .unwrap();
            assert_eq!(evaluated, [r1]);
        }
    }
}
