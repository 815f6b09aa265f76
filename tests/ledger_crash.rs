//! Crash test: thousands of metered requests from concurrent clients, streamed and not, while
//! `lumina serve` (gateway, log and ledger together) is killed with SIGKILL at random moments and
//! restarted. At the end `lumina reconcile` passes and every complete response's `usage.cost`
//! equals its ledger charge to the nano-credit; requests cut by a kill are charged at most once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::upstream::{GATEWAY_ENV, MockUpstream, gateway_config};
use common::{Lumina, run};
use lumina_eventlog::Backend;
use rand::RngExt;
use serde_json::json;
use sqlx::{Connection, Row};
use tokio::sync::Mutex;

const PRICES: &str = r#"
[pricing]
version = "crash-prices"
hold_ttl_ms = 1500
[pricing.paths.fast]
input = "100"
output = "300"
max_output_tokens = 64
"#;

#[derive(Default)]
struct Outcomes {
    /// request id → cost the client was told (complete responses).
    complete: HashMap<String, i64>,
    /// request ids whose response was cut (by a kill).
    cut: Vec<String>,
    /// requests that never reached a live gateway.
    refused: u64,
}

fn cost_of(text: &str) -> Option<i64> {
    let i = text.rfind("\"cost\":")? + 7;
    let number: String = text[i..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    lumina_schemas::NanoCredits::parse_credits(&number)
        .ok()
        .map(|n| n.0)
}

async fn client(
    url: String,
    key: String,
    stop: Arc<AtomicBool>,
    out: Arc<Mutex<Outcomes>>,
    id: usize,
) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let stream = (n + id as u64).is_multiple_of(4);
        let body = json!({"model": "lumina-fast", "stream": stream, "stream_options": {"include_usage": true},
            "messages": [{"role": "user", "content": format!("client {id} request {n}")}]});
        let body = if stream {
            body
        } else {
            json!({"model": "lumina-fast", "messages": body["messages"]})
        };
        let res = match http
            .post(format!("{url}/v1/chat/completions"))
            .bearer_auth(&key)
            .json(&body)
            .send()
            .await
        {
            Ok(r) => r,
            Err(_) => {
                out.lock().await.refused += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let request_id = res
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let status = res.status().as_u16();
        let text = res.text().await;
        let mut o = out.lock().await;
        match (status, text) {
            (200, Ok(text)) if !stream || text.ends_with("data: [DONE]\n\n") => {
                let cost = cost_of(&text)
                    .unwrap_or_else(|| panic!("complete response without cost: {text}"));
                o.complete.insert(request_id, cost);
            }
            (200, _) => o.cut.push(request_id),
            (503, _) => o.refused += 1,
            (other, text) => panic!("unexpected {other}: {text:?}"),
        }
    }
}

async fn scenario(backend: Backend) {
    let mock = MockUpstream::start().await;
    mock.set("primary", "paced");
    mock.set("secondary", "paced");
    let tmp = tempfile::tempdir().unwrap();
    let pg = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => Some(lumina_testkit::fresh_database(Backend::Postgres).await),
    };
    let data = tmp.path().join("data");
    let db_url = match &pg {
        Some(db) => db.url.clone(),
        None => lumina_eventlog::db::sqlite_url(&data.join("lumina.db")),
    };
    let mut env: Vec<(&str, &str)> = GATEWAY_ENV.to_vec();
    env.push(("LUMINA_DATABASE_URL", db_url.as_str()));
    let mut lumina = Lumina::start_with_config(
        &data,
        &tmp.path().join("out"),
        &env,
        Some(&gateway_config(&mock, PRICES)),
    )
    .await;
    let account = lumina.account("Crash Co", "100000").await;
    let (_, key) = lumina.key(&account).await;

    let stop = Arc::new(AtomicBool::new(false));
    let outcomes = Arc::new(Mutex::new(Outcomes::default()));
    let clients: Vec<_> = (0..16)
        .map(|i| {
            tokio::spawn(client(
                lumina.url.clone(),
                key.clone(),
                stop.clone(),
                outcomes.clone(),
                i,
            ))
        })
        .collect();
    let mut rng = rand::rng();
    let kills = 4;
    for _ in 0..kills {
        tokio::time::sleep(Duration::from_millis(rng.random_range(1500..3000))).await;
        lumina.kill9();
        tokio::time::sleep(Duration::from_millis(rng.random_range(50..300))).await;
        lumina.restart().await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    // Orphaned holds (requests cut by a kill before settling) expire after their TTL.
    tokio::time::sleep(Duration::from_secs(8)).await;

    let (ok, stdout, stderr) = run(
        &[
            "reconcile",
            "--data-dir",
            data.to_str().unwrap(),
            "--database-url",
            &db_url,
            "--wait",
            "30",
        ],
        &[],
    );
    assert!(
        ok,
        "{backend:?}: reconcile failed after kills:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("open holds:           0"), "{stdout}");

    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(&db_url).await.unwrap();
    let rows =
        sqlx::query("SELECT request_id, charged_nano FROM ledger_entries WHERE kind = 'settle'")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    let mut charged: HashMap<String, Vec<i64>> = HashMap::new();
    for r in rows {
        charged
            .entry(r.get::<String, _>(0))
            .or_default()
            .push(r.get::<i64, _>(1));
    }
    let orphans: i64 = sqlx::query("SELECT COUNT(*) FROM ledger_holds WHERE status = 'expired'")
        .fetch_one(&mut conn)
        .await
        .unwrap()
        .get(0);
    let _ = conn.close().await;
    let o = outcomes.lock().await;
    assert!(
        o.complete.len() >= 1000,
        "{backend:?}: only {} complete requests",
        o.complete.len()
    );
    for (request_id, cost) in &o.complete {
        let charges = charged
            .get(request_id)
            .unwrap_or_else(|| panic!("{request_id} was answered but never charged"));
        assert_eq!(
            charges,
            &vec![*cost],
            "{backend:?}: {request_id} told {cost} but charged {charges:?}"
        );
    }
    let mut cut_charged = 0;
    for request_id in &o.cut {
        let n = charged.get(request_id).map_or(0, Vec::len);
        assert!(n <= 1, "{request_id} was charged {n} times");
        cut_charged += n;
    }
    eprintln!(
        "{backend:?}: {kills} kills; {} complete requests, cost = charge for all; {} cut by a kill ({} of them charged once, the rest never settled and their holds expired: {orphans} orphans); {} refused while down",
        o.complete.len(),
        o.cut.len(),
        cut_charged,
        o.refused
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn charges_survive_kill_9_on_sqlite() {
    scenario(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn charges_survive_kill_9_on_postgresql() {
    scenario(Backend::Postgres).await;
}
