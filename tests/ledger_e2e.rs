//! The ledger end to end: what a client is told a completion cost equals the ledger's charge,
//! credits run out with 402s and never overspend, statements add up to balances, `lumina
//! reconcile` passes on a clean system and fails on a tampered one, rebuild equals live.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use std::time::Duration;

use common::upstream::{GATEWAY_ENV, MockUpstream, gateway_config};
use common::{Lumina, assert_openai_error, dump_tables, header, nanos, run, user};
use lumina_eventlog::Backend;
use reqwest::Method;
use serde_json::{Value, json};

/// Prices that make every request cost something visible: fast 1,000 / 2,000 credits per
/// million tokens, at most 100 output tokens held.
const PRICES: &str = r#"
[pricing]
version = "test-prices-1"
[pricing.paths.fast]
input = "1000"
output = "2000"
cached_input = "250"
reasoning = "3000"
max_output_tokens = 100
[pricing.paths.balanced]
input = "10"
output = "20"
[pricing.deployments."secondary/mock-fast-2"]
input = "1500"
output = "2500"
"#;

struct Setup {
    _tmp: tempfile::TempDir,
    mock: MockUpstream,
    lumina: Lumina,
    account: String,
    key: String,
    /// The PostgreSQL database, when the test runs on it.
    db_url: Option<String>,
}

async fn setup(credits: &str, backend: Backend) -> Setup {
    let mock = MockUpstream::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let db = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => Some(lumina_testkit::fresh_database(Backend::Postgres).await),
    };
    let mut env: Vec<(&str, &str)> = GATEWAY_ENV.to_vec();
    if let Some(db) = &db {
        env.push(("LUMINA_DATABASE_URL", db.url.as_str()));
    }
    let config = gateway_config(&mock, PRICES);
    let lumina = Lumina::start_with_config(
        &tmp.path().join("data"),
        &tmp.path().join("out"),
        &env,
        Some(&config),
    )
    .await;
    let account = lumina.account("Ledger Co", credits).await;
    let (_, key) = lumina.key(&account).await;
    Setup {
        _tmp: tmp,
        mock,
        lumina,
        account,
        key,
        db_url: db.map(|d| d.url),
    }
}

/// The raw text of `"cost":<number>` in a JSON document.
fn cost_text(json: &str) -> String {
    let i = json.rfind("\"cost\":").expect("no cost") + 7;
    json[i..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == 'e' || *c == '-')
        .collect()
}

async fn entries(s: &Setup) -> Vec<Value> {
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let page = s
            .lumina
            .admin(
                Method::GET,
                &format!(
                    "/admin/ledger/accounts/{}/entries?limit=7&after={after}",
                    s.account
                ),
                None,
                200,
            )
            .await;
        let data = page["data"].as_array().unwrap().clone();
        all.extend(data);
        if !page["has_more"].as_bool().unwrap() {
            return all;
        }
        after = page["last_id"].as_i64().unwrap();
    }
}

async fn wait_settled(s: &Setup, request_id: &str) -> Value {
    for _ in 0..100 {
        if let Some(e) = entries(s)
            .await
            .into_iter()
            .find(|e| e["request_id"] == request_id && e["kind"] == "settle")
        {
            return e;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no settlement journaled for {request_id}")
}

async fn cost_equals_ledger_charge(backend: Backend) {
    let s = setup("100", backend).await;
    // Non-streamed: usage.cost and x-lumina-cost.
    let (status, headers, text) = s
        .lumina
        .chat(&s.key, &user("lumina-fast", "price me"))
        .await;
    assert_eq!(status, 200, "{text}");
    let cost = cost_text(&text);
    assert_eq!(header(&headers, "x-lumina-cost"), cost);
    // 11 prompt (3 cached) and 7 completion (2 reasoning) tokens on the fast path:
    // 8×1000 + 3×250 + 5×2000 + 2×3000 = 24,750 per million → 0.02475 credits.
    assert_eq!(nanos(&cost), 24_750_000);
    let v: Value = serde_json::from_str(&text).unwrap();
    assert!(v["usage"]["cost"].is_number());
    let entry = wait_settled(&s, header(&headers, "x-request-id")).await;
    assert_eq!(
        entry["charged_nano"].as_i64().unwrap(),
        nanos(&cost),
        "{backend:?}"
    );
    let hold = entry["released_nano"].as_i64().unwrap();
    assert!(hold >= nanos(&cost));
    let sum: i64 = entry["postings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["amount_nano"].as_i64().unwrap())
        .sum();
    assert_eq!(sum, 0);

    // Streamed with include_usage: the cost rides in the usage chunk.
    let mut body = user("lumina-fast", "stream and price");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let (status, headers, text) = s.lumina.chat(&s.key, &body).await;
    assert_eq!(status, 200);
    let cost = cost_text(&text);
    let entry = wait_settled(&s, header(&headers, "x-request-id")).await;
    assert_eq!(entry["charged_nano"].as_i64().unwrap(), nanos(&cost));

    // A fallback is priced at the deployment that answered.
    s.mock.set("primary", "fail500");
    let (status, headers, text) = s
        .lumina
        .chat(&s.key, &user("lumina-fast", "fallback"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "x-lumina-provider"), "secondary");
    // 8×1500 + 3×(1500/4) + 5×2500 + 2×2500 = 12,000 + 1,125 + 12,500 + 5,000.
    assert_eq!(nanos(&cost_text(&text)), 30_625_000);
    let entry = wait_settled(&s, header(&headers, "x-request-id")).await;
    assert_eq!(entry["charged_nano"], 30_625_000);

    // A failed request charges nothing and releases its hold.
    s.mock.set("primary", "fail400");
    let (status, headers, _) = s.lumina.chat(&s.key, &user("lumina-fast", "refused")).await;
    assert_eq!(status, 400);
    let entry = wait_settled(&s, header(&headers, "x-request-id")).await;
    assert_eq!(entry["charged_nano"], 0);
    assert!(entry["released_nano"].as_i64().unwrap() > 0);

    // A cut stream charges its partial (estimated) usage, once.
    s.mock.set("primary", "cut");
    let mut body = user("lumina-fast", "cut me off");
    body["stream"] = json!(true);
    let (_, headers, _) = s.lumina.chat(&s.key, &body).await;
    let entry = wait_settled(&s, header(&headers, "x-request-id")).await;
    assert!(entry["charged_nano"].as_i64().unwrap() > 0);

    // Statements add up to the balance, in JSON and CSV.
    let account = s
        .lumina
        .admin(
            Method::GET,
            &format!("/admin/accounts/{}", s.account),
            None,
            200,
        )
        .await;
    let balance = &account["balance"];
    assert_eq!(balance["held_nano"], 0);
    let st = s
        .lumina
        .admin(
            Method::GET,
            &format!(
                "/admin/ledger/statements?account_id={}&format=json",
                s.account
            ),
            None,
            200,
        )
        .await;
    for k in ["available_nano", "held_nano", "spent_nano", "granted_nano"] {
        assert_eq!(st["closing"][k], balance[k], "{k}");
    }
    assert_eq!(st["opening"]["available_nano"], 0);
    assert_eq!(st["totals"]["spent_nano"], balance["spent_nano"]);
    let spent: i64 = entries(&s)
        .await
        .iter()
        .filter_map(|e| e["charged_nano"].as_i64())
        .sum();
    assert_eq!(balance["spent_nano"].as_i64().unwrap(), spent);
    let res = reqwest::Client::new()
        .get(format!(
            "{}/admin/ledger/statements?account_id={}&format=csv&from=2000-01-01",
            s.lumina.url, s.account
        ))
        .bearer_auth(&s.lumina.admin_key)
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(res.headers(), "content-type"),
        "text/csv; charset=utf-8"
    );
    let csv = res.text().await.unwrap();
    let closing: Vec<&str> = csv.lines().last().unwrap().split(',').collect();
    assert_eq!(closing[0], "closing");
    assert_eq!(
        closing[10].parse::<i64>().unwrap(),
        balance["available_nano"].as_i64().unwrap()
    );
    assert_eq!(
        csv.lines().filter(|l| l.starts_with("entry,")).count(),
        entries(&s).await.len()
    );

    // `lumina reconcile` beside the live system: clean.
    let data = s.lumina.data_dir.to_str().unwrap().to_string();
    let env: Vec<(&str, &str)> = s
        .db_url
        .iter()
        .map(|u| ("LUMINA_DATABASE_URL", u.as_str()))
        .collect();
    let (ok, stdout, stderr) = run(&["reconcile", "--data-dir", &data, "--wait", "10"], &env);
    assert!(ok, "reconcile failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("reconcile: clean"), "{stdout}");
}

#[tokio::test]
async fn the_cost_a_client_is_told_equals_the_ledger_charge_and_statements_add_up() {
    cost_equals_ledger_charge(Backend::Sqlite).await;
}

#[tokio::test]
async fn an_account_out_of_credit_gets_402_and_concurrency_never_overspends() {
    let s = setup("1", Backend::Sqlite).await;
    s.mock.set("primary", "slow");
    // Each fast request holds (prompt + 100 output tokens) ≈ 0.21 credits and costs ≈ 0.025.
    let client = reqwest::Client::new();
    let mut tasks = Vec::new();
    for i in 0..40 {
        let client = client.clone();
        let url = format!("{}/v1/chat/completions", s.lumina.url);
        let key = s.key.clone();
        tasks.push(tokio::spawn(async move {
            let res = client
                .post(url)
                .bearer_auth(key)
                .json(&json!({"model": "lumina-fast", "stream": true, "messages": [{"role": "user", "content": format!("request {i}")}]}))
                .send()
                .await
                .unwrap();
            let status = res.status().as_u16();
            let body = res.text().await.unwrap();
            (status, body)
        }));
    }
    let mut ok = 0;
    let mut refused = 0;
    for t in tasks {
        let (status, body) = t.await.unwrap();
        match status {
            200 => ok += 1,
            402 => {
                refused += 1;
                let v: Value = serde_json::from_str(&body).unwrap();
                let e = assert_openai_error(&v);
                assert_eq!(
                    (e["type"].as_str(), e["code"].as_str()),
                    (Some("insufficient_quota"), Some("insufficient_quota"))
                );
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(ok > 0 && refused > 0, "{ok} served, {refused} refused");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let account = s
        .lumina
        .admin(
            Method::GET,
            &format!("/admin/accounts/{}", s.account),
            None,
            200,
        )
        .await;
    let b = &account["balance"];
    assert!(
        b["spent_nano"].as_i64().unwrap() <= b["granted_nano"].as_i64().unwrap(),
        "{b}"
    );
    assert!(b["available_nano"].as_i64().unwrap() >= 0, "{b}");
    assert_eq!(b["held_nano"], 0);
    // Once the held credit comes back, requests pass again; an account with nothing left never does.
    s.mock.set("primary", "ok");
    assert_eq!(
        s.lumina.chat(&s.key, &user("lumina-fast", "again")).await.0,
        200
    );
    let poor = s.lumina.account("Poor", "0.0001").await;
    let (_, poor_key) = s.lumina.key(&poor).await;
    let (status, _, _) = s.lumina.chat(&poor_key, &user("lumina-fast", "x")).await;
    assert_eq!(status, 402);
}

async fn dump_ledger(url: &str) -> Vec<String> {
    let tables = [
        ("ledger_entries", "id"),
        ("ledger_postings", "entry_event_id, line"),
        ("ledger_balances", "account_id"),
        ("ledger_holds", "request_id"),
        ("ledger_daily", "account_id, day"),
        ("ledger_spend", "scope, bucket"),
    ];
    let dump = dump_tables(url, &tables).await;
    assert!(
        dump.iter().any(|row| row.contains("key:")),
        "the spend of every key is derived"
    );
    dump
}

async fn rebuild_equals_live(backend: Backend) {
    let mock = MockUpstream::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let url = match backend {
        Backend::Sqlite => {
            lumina_eventlog::db::sqlite_url(&tmp.path().join("data").join("lumina.db"))
        }
        Backend::Postgres => lumina_testkit::fresh_database(Backend::Postgres).await.url,
    };
    let mut env: Vec<(&str, &str)> = GATEWAY_ENV.to_vec();
    env.push(("LUMINA_DATABASE_URL", url.as_str()));
    let mut lumina = Lumina::start_with_config(
        &tmp.path().join("data"),
        &tmp.path().join("out"),
        &env,
        Some(&gateway_config(&mock, PRICES)),
    )
    .await;
    let account = lumina.account("Rebuild", "10").await;
    let (_, key) = lumina.key(&account).await;
    for i in 0..12 {
        let mut body = user(
            if i % 3 == 0 {
                "lumina-balanced"
            } else {
                "lumina-fast"
            },
            &format!("request {i}"),
        );
        body["stream"] = json!(i % 2 == 0);
        lumina.chat(&key, &body).await;
    }
    lumina
        .admin(
            Method::POST,
            &format!("/admin/accounts/{account}/credits"),
            Some(json!({"amount": "2.5"})),
            201,
        )
        .await;
    lumina.stop().await;
    let live = dump_ledger(&url).await;
    assert!(live.len() > 40, "{backend:?}: {} rows", live.len());
    let data = tmp.path().join("data");
    let (ok, _, stderr) = run(
        &[
            "ledger",
            "rebuild",
            "--data-dir",
            data.to_str().unwrap(),
            "--database-url",
            &url,
        ],
        &[],
    );
    assert!(ok, "{stderr}");
    assert_eq!(
        dump_ledger(&url).await,
        live,
        "{backend:?}: rebuilt ledger differs"
    );
    let (ok, stdout, _) = run(
        &[
            "reconcile",
            "--data-dir",
            data.to_str().unwrap(),
            "--database-url",
            &url,
            "--wait",
            "5",
        ],
        &[],
    );
    assert!(ok, "{stdout}");

    // Tampering is caught: a balance that no longer equals its postings.
    use sqlx::Connection;
    let mut conn = sqlx::AnyConnection::connect(&url).await.unwrap();
    sqlx::query("UPDATE ledger_balances SET available_nano = available_nano + 1")
        .execute(&mut conn)
        .await
        .unwrap();
    let _ = conn.close().await;
    let (ok, stdout, _) = run(
        &[
            "reconcile",
            "--data-dir",
            data.to_str().unwrap(),
            "--database-url",
            &url,
            "--wait",
            "5",
        ],
        &[],
    );
    assert!(!ok, "reconcile passed a tampered balance:\n{stdout}");
    assert!(
        stdout.contains("DISCREPANCIES") && stdout.contains("postings sum to"),
        "{stdout}"
    );
}

#[tokio::test]
async fn ledger_rebuild_equals_live_and_reconcile_catches_tampering() {
    for backend in lumina_testkit::BACKENDS {
        rebuild_equals_live(backend).await;
    }
}

#[tokio::test]
async fn with_postgresql_the_cost_equals_the_ledger_charge_too() {
    cost_equals_ledger_charge(Backend::Postgres).await;
}
