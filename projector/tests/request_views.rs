//! The request views come out the same whatever the batching: traffic with fallbacks,
//! failures, cancellations, streams, feedback, content and orphans, projected one event per
//! transaction and in batches of several sizes, gives identical rows and no dead letters.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use common::{dump, project};

use lumina_eventlog::{Database, EventLog, LogOptions};
use lumina_projector::ReadModel;
use lumina_projector::requests::ALL_ACCOUNTS;
use lumina_schemas::payloads::{
    AccountOpened, CreditHold, FeedbackReceived, RequestContentRecorded, RequestRouted,
    RequestSettled, UpstreamAttempted, Usage,
};
use lumina_schemas::{Envelope, Event, Payload};
use lumina_testkit::{BACKENDS, migrated_database};
use sqlx::Row;

const REQUESTS: usize = 60;

fn attempt(n: i32, deployment: &str, ok: bool, fell_back: bool) -> UpstreamAttempted {
    UpstreamAttempted {
        attempt: n,
        provider: deployment.split('/').next().unwrap().into(),
        deployment: deployment.into(),
        upstream_model: "m".into(),
        started_at: 1_764_000_000_000_000 + i64::from(n),
        ttfb_us: ok.then_some(20_000),
        duration_us: 50_000 * i64::from(n),
        outcome: if ok { "ok" } else { "error" }.into(),
        error_class: (!ok).then(|| if n == 1 { "timeout" } else { "server_error" }.into()),
        http_status: (!ok).then_some(500),
        fell_back,
        role: None,
    }
}

fn settled(
    r: usize,
    path: &str,
    outcome: &str,
    deployment: Option<&str>,
    ttft: bool,
) -> RequestSettled {
    let tokens = r as i64;
    RequestSettled {
        outcome: outcome.into(),
        path: path.into(),
        provider: deployment.map(|d| d.split('/').next().unwrap().into()),
        deployment: deployment.map(Into::into),
        usage: Usage {
            prompt_tokens: 10 + tokens,
            completion_tokens: if outcome == "completed" {
                5 + tokens
            } else {
                0
            },
            cached_tokens: tokens % 3,
            reasoning_tokens: if path == "reasoning" { tokens } else { 0 },
            estimated: outcome != "completed",
        },
        charge_nano: 1_000 * (tokens + 1),
        price_table_version: "t".into(),
        rounding: "half_up_nano".into(),
        hold_released_nano: 1_000_000 - 1_000 * (tokens + 1),
        latency_us: 100_000 + 1_000 * tokens,
        ttft_us: ttft.then_some(30_000 + 100 * tokens),
        attempts: 1,
        error_class: (outcome == "failed").then(|| "server_error".into()),
        usage_anomaly: None,
        reported_completion_tokens: None,
    }
}

/// Two accounts' traffic, five kinds of request in turn, plus events whose routing or request
/// the projector never sees.
fn traffic() -> Vec<Event> {
    let mut events = Vec::new();
    for a in 0..2 {
        events.push(Event::new(
            Envelope::new(format!("acct_{a:032x}"), "test"),
            AccountOpened {
                admin_key_id: None,
                name: format!("Account {a}"),
                default_project_id: format!("proj_{a:032x}"),
                default_project_name: "Default".into(),
            },
        ));
    }
    let paths = ["fast", "balanced", "reasoning"];
    for r in 0..REQUESTS {
        let a = r % 2;
        let path = paths[r % 3];
        let request = format!("req_{r:032x}");
        let env = || {
            let mut e = Envelope::new(format!("acct_{a:032x}"), "test");
            e.request_id = Some(request.clone());
            e.project_id = Some(format!("proj_{a:032x}"));
            e.api_key_id = Some(format!("key_{a}"));
            e
        };
        let primary = format!("p/{path}");
        let secondary = format!("s/{path}");
        // The last request's routing happened before the log the projector reads.
        if r != REQUESTS - 1 {
            events.push(Event::new(
                env(),
                RequestRouted {
                    requested_model: format!("lumina-{path}"),
                    path: path.into(),
                    task_class: ["chat", "code", "math"][(r / 3) % 3].into(),
                    stream: r % 5 == 2,
                    policy_version: 1,
                    features: [("prompt_tokens".to_string(), r as f64)]
                        .into_iter()
                        .collect(),
                    scores: [(path.to_string(), 0.9)].into_iter().collect(),
                    candidates: vec![primary.clone(), secondary.clone()],
                    prompt_tokens_estimate: 10,
                    max_tokens: Some(100),
                    hold: Some(CreditHold {
                        amount_nano: 1_000_000,
                        price_table_version: "t".into(),
                        ttl_ms: 600_000,
                    }),
                    top_features: Vec::new(),
                    prefer: "balanced".into(),
                    min_path: None,
                    max_path: None,
                    classified_path: None,
                    api: "chat_completions".into(),
                },
            ));
        }
        match r % 5 {
            // A fallback: the primary times out, the secondary answers.
            0 => {
                events.push(Event::new(env(), attempt(1, &primary, false, true)));
                events.push(Event::new(env(), attempt(2, &secondary, true, false)));
                events.push(Event::new(
                    env(),
                    settled(r, path, "completed", Some(&secondary), true),
                ));
            }
            // Every deployment fails.
            1 => {
                events.push(Event::new(env(), attempt(1, &primary, false, true)));
                events.push(Event::new(env(), attempt(2, &secondary, false, false)));
                events.push(Event::new(env(), settled(r, path, "failed", None, false)));
            }
            // A stream, with stored content.
            2 => {
                events.push(Event::new(env(), attempt(1, &primary, true, false)));
                events.push(Event::new(
                    env(),
                    RequestContentRecorded {
                        messages_json: format!(r#"[{{"role":"user","content":"q{r}"}}]"#),
                        answer: Some(format!("a{r}")),
                        tool_calls_json: None,
                    },
                ));
                events.push(Event::new(
                    env(),
                    settled(r, path, "completed", Some(&primary), true),
                ));
            }
            // The client went away before the first token.
            3 => {
                events.push(Event::new(env(), attempt(1, &primary, true, false)));
                events.push(Event::new(
                    env(),
                    settled(r, path, "cancelled", Some(&primary), false),
                ));
            }
            // Completed, then rated twice: the later rating wins.
            _ => {
                events.push(Event::new(env(), attempt(1, &primary, true, false)));
                events.push(Event::new(
                    env(),
                    settled(r, path, "completed", Some(&primary), true),
                ));
                for score in [0.0, 1.0] {
                    events.push(Event::new(
                        env(),
                        FeedbackReceived {
                            score: Some(score),
                            label: Some(format!("l{score}")),
                            comment: None,
                            source: "api".into(),
                        },
                    ));
                }
            }
        }
    }
    events
}

async fn count(db: &Database, sql: &'static str) -> i64 {
    sqlx::query(sql).fetch_one(&db.pool).await.unwrap().get(0)
}

#[tokio::test]
async fn request_views_do_not_depend_on_batching() {
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(dir.path().join("events.db"), LogOptions::default()).unwrap();
    let events = traffic();
    for event in &events {
        log.append_event(event).await.unwrap();
    }
    let settlements = events
        .iter()
        .filter(|e| matches!(e.payload, Payload::RequestSettled(_)))
        .count() as i64;
    for backend in BACKENDS {
        let mut first: Option<(usize, Vec<String>)> = None;
        for batch_size in [1, 7, 2048] {
            let (_t, db) = migrated_database(backend).await;
            project(&db, &log, batch_size).await;
            assert_eq!(
                count(&db, "SELECT COUNT(*) FROM dead_letters").await,
                0,
                "{backend:?}, batches of {batch_size}: events were dead-lettered"
            );
            assert_eq!(
                count(
                    &db,
                    "SELECT COUNT(*) FROM requests WHERE outcome IS NOT NULL"
                )
                .await,
                settlements,
                "{backend:?}, batches of {batch_size}: not every request is settled"
            );
            assert_eq!(
                count(
                    &db,
                    "SELECT CAST(SUM(requests) AS BIGINT) FROM usage_minutes"
                )
                .await,
                settlements
            );
            assert_eq!(
                count(
                    &db,
                    "SELECT CAST(SUM(fallbacks) AS BIGINT) FROM route_stats WHERE deployment LIKE 'p/%'"
                )
                .await,
                2 * (REQUESTS as i64 / 5)
            );
            // The hourly series: every settlement once under its account and once under all.
            for filter in ["account_id = ''", "account_id <> ''"] {
                let sql =
                    format!("SELECT CAST(SUM(requests) AS BIGINT) FROM path_hours WHERE {filter}");
                let sum: i64 = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .fetch_one(&db.pool)
                    .await
                    .unwrap()
                    .get(0);
                assert_eq!(sum, settlements, "{backend:?}, {filter}");
            }
            let series = ReadModel::new(db.clone())
                .path_series(ALL_ACCOUNTS, 0, i64::MAX)
                .await
                .unwrap();
            let stats = ReadModel::new(db.clone()).route_stats().await.unwrap();
            for total in &series.totals {
                let of_path = stats.iter().filter(|s| s.path == total.path);
                assert_eq!(
                    total.requests,
                    of_path.clone().map(|s| s.requests).sum::<i64>(),
                    "{}",
                    total.path
                );
                assert_eq!(total.failed, of_path.clone().map(|s| s.failed).sum::<i64>());
                assert_eq!(
                    total.charge_nano,
                    of_path.map(|s| s.charge_nano).sum::<i64>()
                );
                assert!(total.latency_ms.p99 >= total.latency_ms.p50);
            }
            assert_eq!(
                series.points.iter().map(|p| p.requests).sum::<i64>(),
                settlements
            );
            let one = ReadModel::new(db.clone())
                .path_series(&format!("acct_{:032x}", 1), 0, i64::MAX)
                .await
                .unwrap();
            let own = events
                .iter()
                .filter(|e| {
                    matches!(e.payload, Payload::RequestSettled(_))
                        && e.envelope.account_id == format!("acct_{:032x}", 1)
                })
                .count() as i64;
            assert!(own > 0 && own < settlements);
            assert_eq!(
                one.totals.iter().map(|p| p.requests).sum::<i64>(),
                own,
                "{backend:?}: one account's series holds its own requests only"
            );
            assert_eq!(
                count(
                    &db,
                    "SELECT COUNT(*) FROM requests WHERE feedback_label = 'l1'"
                )
                .await,
                REQUESTS as i64 / 5
            );
            assert_eq!(
                count(&db, "SELECT COUNT(*) FROM request_content").await,
                REQUESTS as i64 / 5
            );
            let rows = dump(&db).await;
            match &first {
                None => first = Some((batch_size, rows)),
                Some((size, expected)) => assert!(
                    rows == *expected,
                    "{backend:?}: batches of {batch_size} differ from batches of {size}:\n{}",
                    rows.iter()
                        .zip(expected)
                        .filter(|(a, b)| a != b)
                        .map(|(a, b)| format!("  {a}\n  {b}\n"))
                        .collect::<String>()
                ),
            }
        }
    }
}
