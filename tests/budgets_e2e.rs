//! Budgets against the real binary: a key, a project and an account budget each refuse on
//! their own with 402 `budget_exceeded` before any upstream call, on every surface; 50 clients
//! racing on a `total` budget never take it past its limit; a soft limit records one
//! `BudgetThresholdCrossed` per period and tells the client what is left; the admin API and
//! `lumina budgets` set, show, replace and remove them, refusing what they cannot honour.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use common::{
    Lumina, assert_openai_error, header, nanos, payloads, reconciles, run, spent_after, user,
};
use reqwest::Method;
use serde_json::{Value, json};

/// Simulated upstreams on every path, answering after `latency_ms`, and Model Fusion over them.
fn simulated(latency_ms: u64) -> String {
    format!(
        "[[providers]]\nname = \"sim\"\nkind = \"simulated\"\nmodels = {{ fast = \"f\", balanced = \"b\", reasoning = \"r\", embeddings = \"e\" }}\n[providers.simulated]\nlatency_ms = {latency_ms}\n\n[fusion]\nenabled = true\npanel = [\"sim/f\", \"sim/b\", \"sim/r\"]\nsynthesizer = \"sim/b\"\n"
    )
}

async fn start(latency_ms: u64) -> (tempfile::TempDir, Lumina) {
    let tmp = tempfile::tempdir().unwrap();
    let config = simulated(latency_ms);
    let lumina = Lumina::start_with_config(
        &tmp.path().join("data"),
        &tmp.path().join("out"),
        &[],
        Some(&config),
    )
    .await;
    (tmp, lumina)
}

/// The request every test sends: its hold and charge are the same each time.
fn ask() -> Value {
    json!({"model": "lumina-fast", "max_tokens": 16,
           "messages": [{"role": "user", "content": "Say hello in French."}]})
}

/// (hold, charge) of `ask()`, learnt from one request of `key`.
async fn hold_and_charge(lumina: &Lumina, key: &str) -> (i64, i64) {
    let (status, headers, text) = lumina.chat(key, &ask()).await;
    assert_eq!(status, 200, "{text}");
    let charge = nanos(header(&headers, "x-lumina-cost"));
    let request = header(&headers, "x-request-id").to_string();
    let events = lumina.events_of(&request);
    let routed = payloads(&events, "RequestRouted");
    let hold = routed[0]["hold"]["amount_nano"].as_i64().unwrap();
    assert!(hold > charge && charge > 0, "hold {hold}, charge {charge}");
    (hold, charge)
}

fn credits(nanos: i64) -> String {
    lumina_schemas::NanoCredits(nanos).to_string()
}

/// Sets a budget on `/admin/{scope}/{id}/budgets`; returns its id.
async fn set_budget(lumina: &Lumina, scope: &str, id: &str, body: Value) -> String {
    let v = lumina
        .admin(
            Method::POST,
            &format!("/admin/{scope}/{id}/budgets"),
            Some(body),
            201,
        )
        .await;
    assert_eq!(v["object"], "budget", "{v}");
    v["id"].as_str().unwrap().to_string()
}

/// Asserts a 402 `budget_exceeded` naming `budget`, and that no upstream was called.
fn assert_over_budget(
    status: u16,
    headers: &reqwest::header::HeaderMap,
    body: &Value,
    budget: &str,
) {
    assert_eq!(status, 402, "{body}");
    let e = assert_openai_error(body);
    assert_eq!(e["code"], "budget_exceeded", "{body}");
    assert_eq!(e["type"], "insufficient_quota", "{body}");
    assert!(
        e["message"].as_str().unwrap().contains(budget),
        "the message names the budget: {body}"
    );
    assert_eq!(header(headers, "x-lumina-budget"), budget);
    assert!(
        headers.get("x-lumina-provider").is_none(),
        "no upstream answered"
    );
}

async fn chat(
    lumina: &Lumina,
    key: &str,
    body: &Value,
) -> (u16, reqwest::header::HeaderMap, Value) {
    lumina
        .request(
            Method::POST,
            "/v1/chat/completions",
            Some(key),
            Some(&body.to_string()),
        )
        .await
}

#[tokio::test]
async fn key_project_and_account_budgets_each_refuse_on_their_own_on_every_surface() {
    let (_tmp, lumina) = start(0).await;
    let account = lumina.account("Budgeted", "10").await;
    let other_project = lumina
        .admin(
            Method::POST,
            &format!("/admin/accounts/{account}/projects"),
            Some(json!({"name": "Research"})),
            201,
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, probe) = lumina.key(&account).await;
    let (hold, charge) = hold_and_charge(&lumina, &probe).await;
    // Room for one request: after it settles, its charge plus the next hold pass the limit.
    let one = credits(hold + charge - 1);

    // A key budget.
    let (key_id, key) = lumina.key(&account).await;
    let (_, sibling) = lumina.key(&account).await;
    let key_budget = set_budget(
        &lumina,
        "keys",
        &key_id,
        json!({"limit": one, "period": "total"}),
    )
    .await;
    let (status, _, _) = chat(&lumina, &key, &ask()).await;
    assert_eq!(status, 200);
    let (status, headers, body) = chat(&lumina, &key, &ask()).await;
    assert_over_budget(status, &headers, &body, &key_budget);
    // Another key of the same project is not limited by it.
    let (status, _, _) = chat(&lumina, &sibling, &ask()).await;
    assert_eq!(status, 200);

    // A project budget: every key of the project counts.
    let (_, first) = lumina
        .key_with(&account, json!({"project_id": other_project}))
        .await;
    let (_, second) = lumina
        .key_with(&account, json!({"project_id": other_project}))
        .await;
    let project_budget = set_budget(
        &lumina,
        "projects",
        &other_project,
        json!({"limit": one, "period": "month", "timezone": "Europe/Paris"}),
    )
    .await;
    let (status, _, _) = chat(&lumina, &first, &ask()).await;
    assert_eq!(status, 200);
    let (status, headers, body) = chat(&lumina, &second, &ask()).await;
    assert_over_budget(status, &headers, &body, &project_budget);

    // /v1/budgets shows the calling key's budgets (its own and its project's and account's,
    // not another project's) with the ledger's spend.
    assert_eq!(spent_after(&lumina, &account, 4 * charge).await, 4 * charge);
    let (status, _, mine) = lumina
        .request(Method::GET, "/v1/budgets", Some(&key), None)
        .await;
    assert_eq!(status, 200, "{mine}");
    let data = mine["data"].as_array().unwrap();
    assert_eq!(data.len(), 1, "{mine}");
    assert_eq!(data[0]["id"], key_budget);
    assert_eq!(data[0]["scope"], "key");
    assert_eq!(data[0]["spent_nano"], charge);
    assert_eq!(data[0]["held_nano"], 0);
    assert_eq!(data[0]["remaining_nano"], hold - 1);
    assert_eq!(data[0]["period_start"], Value::Null);
    let (_, _, theirs) = lumina
        .request(Method::GET, "/v1/budgets", Some(&second), None)
        .await;
    assert_eq!(theirs["data"][0]["id"], project_budget);
    assert_eq!(theirs["data"][0]["spent_nano"], charge);
    assert!(
        theirs["data"][0]["period_end"].as_i64().unwrap()
            > theirs["data"][0]["period_start"].as_i64().unwrap()
    );

    // An account budget: every key of every project counts. The account spent 4 charges.
    let account_budget = set_budget(
        &lumina,
        "accounts",
        &account,
        json!({"limit": credits(5 * charge + hold - 1), "period": "week", "timezone": "America/New_York"}),
    )
    .await;
    let (status, _, _) = chat(&lumina, &sibling, &ask()).await;
    assert_eq!(status, 200);
    let (status, headers, body) = chat(&lumina, &probe, &ask()).await;
    assert_over_budget(status, &headers, &body, &account_budget);
    let (_, _, mine) = lumina
        .request(Method::GET, "/v1/budgets", Some(&key), None)
        .await;
    let ids: Vec<&str> = mine["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [key_budget.as_str(), account_budget.as_str()]);

    // Removing a budget lifts it at once; raising one too.
    lumina
        .admin(
            Method::DELETE,
            &format!("/admin/budgets/{account_budget}"),
            None,
            200,
        )
        .await;
    let (status, _, _) = chat(&lumina, &probe, &ask()).await;
    assert_eq!(status, 200);
    lumina
        .admin(
            Method::PUT,
            &format!("/admin/budgets/{key_budget}"),
            Some(json!({"limit": "5", "period": "total"})),
            200,
        )
        .await;
    let (status, _, _) = chat(&lumina, &key, &ask()).await;
    assert_eq!(status, 200);

    let events = lumina.events();
    assert_eq!(payloads(&events, "BudgetSet").len(), 4);
    assert_eq!(payloads(&events, "BudgetRemoved").len(), 1);
    reconciles(&lumina);
}

#[tokio::test]
async fn every_surface_is_held_to_the_budget_before_any_upstream_call() {
    let (_tmp, lumina) = start(0).await;
    let account = lumina.account("Surfaces", "10").await;
    let (key_id, key) = lumina.key(&account).await;
    // One nano-credit: no hold fits.
    let budget = set_budget(
        &lumina,
        "keys",
        &key_id,
        json!({"limit": "0.000000001", "period": "day"}),
    )
    .await;
    let (status, headers, body) = chat(&lumina, &key, &ask()).await;
    assert_over_budget(status, &headers, &body, &budget);
    let mut streamed = ask();
    streamed["stream"] = json!(true);
    let (status, headers, body) = chat(&lumina, &key, &streamed).await;
    assert_over_budget(status, &headers, &body, &budget);
    let fusion = user(
        "lumina-fusion",
        "Compare merge sort and quicksort for linked lists.",
    );
    let (status, headers, body) = chat(&lumina, &key, &fusion).await;
    assert_over_budget(status, &headers, &body, &budget);
    for (path, body) in [
        (
            "/v1/messages",
            json!({"model": "lumina-fast", "max_tokens": 16,
                   "messages": [{"role": "user", "content": "hi"}]}),
        ),
        (
            "/v1/responses",
            json!({"model": "lumina-fast", "input": "hi", "max_output_tokens": 16}),
        ),
        (
            "/v1/embeddings",
            json!({"model": "lumina-embeddings", "input": "hi"}),
        ),
    ] {
        let (status, headers, v) = lumina
            .request(Method::POST, path, Some(&key), Some(&body.to_string()))
            .await;
        assert_eq!(status, 402, "{path}: {v}");
        assert_eq!(header(&headers, "x-lumina-budget"), budget, "{path}");
        assert!(v.to_string().contains(&budget), "{path}: {v}");
    }
    // Nothing reached an upstream or the ledger.
    let events = lumina.events();
    assert!(payloads(&events, "UpstreamAttempted").is_empty());
    assert!(payloads(&events, "RequestRouted").is_empty());
    assert_eq!(spent_after(&lumina, &account, 0).await, 0);
}

#[tokio::test]
async fn fifty_clients_racing_on_a_total_budget_never_pass_it() {
    let (_tmp, lumina) = start(150).await;
    let account = lumina.account("Racing", "100").await;
    let (_, probe) = lumina.key(&account).await;
    let (hold, charge) = hold_and_charge(&lumina, &probe).await;
    let (key_id, key) = lumina.key(&account).await;
    let limit = 10 * hold;
    set_budget(
        &lumina,
        "keys",
        &key_id,
        json!({"limit": credits(limit), "period": "total"}),
    )
    .await;
    let mut racers = Vec::new();
    for _ in 0..50 {
        let lumina_url = lumina.url.clone();
        let key = key.clone();
        racers.push(tokio::spawn(async move {
            let res = reqwest::Client::new()
                .post(format!("{lumina_url}/v1/chat/completions"))
                .bearer_auth(key)
                .json(&ask())
                .send()
                .await
                .unwrap();
            let status = res.status().as_u16();
            (status, res.json::<Value>().await.unwrap())
        }));
    }
    let mut ok = 0;
    for racer in racers {
        let (status, body) = racer.await.unwrap();
        if status == 200 {
            ok += 1;
        } else {
            assert_eq!(status, 402, "{body}");
            assert_eq!(body["error"]["code"], "budget_exceeded", "{body}");
        }
    }
    // Holds are taken under one lock: at least the 10 that fit at once got through, and no
    // more than the limit's worth of charges.
    assert!(ok >= 10, "{ok} succeeded");
    let spent = spent_after(&lumina, &account, charge * (ok + 1)).await;
    assert_eq!(spent, charge * (ok + 1));
    assert!(
        spent - charge <= limit,
        "key spent {} of {limit}",
        spent - charge
    );
    reconciles(&lumina);
}

#[tokio::test]
async fn a_soft_limit_is_crossed_once_per_period_and_says_what_is_left() {
    let (tmp, mut lumina) = start(0).await;
    let account = lumina.account("Soft", "10").await;
    let (_, probe) = lumina.key(&account).await;
    let (hold, charge) = hold_and_charge(&lumina, &probe).await;
    let (key_id, key) = lumina.key(&account).await;
    let limit = 100 * hold;
    let budget = set_budget(
        &lumina,
        "keys",
        &key_id,
        json!({"limit": credits(limit), "soft_limit": credits(hold + charge),
               "period": "day", "timezone": "America/New_York"}),
    )
    .await;
    // Below the soft limit: no header.
    let (status, headers, _) = chat(&lumina, &key, &ask()).await;
    assert_eq!(status, 200);
    assert!(headers.get("x-lumina-budget-remaining").is_none());
    // The second hold reaches it: the header says what is left after the hold.
    let (_, headers, _) = chat(&lumina, &key, &ask()).await;
    assert_eq!(
        header(&headers, "x-lumina-budget-remaining"),
        credits(limit - charge - hold)
    );
    let (_, headers, _) = chat(&lumina, &key, &ask()).await;
    assert_eq!(
        header(&headers, "x-lumina-budget-remaining"),
        credits(limit - 2 * charge - hold)
    );
    spent_after(&lumina, &account, 4 * charge).await;
    // After a restart, the crossing recorded in this period is not recorded again.
    lumina.stop().await;
    lumina.restart().await;
    let (status, headers, _) = chat(&lumina, &key, &ask()).await;
    assert_eq!(status, 200);
    assert!(headers.get("x-lumina-budget-remaining").is_some());
    let events = lumina.events();
    let crossed = payloads(&events, "BudgetThresholdCrossed");
    assert_eq!(crossed.len(), 1, "{crossed:?}");
    assert_eq!(crossed[0]["budget_id"], budget.as_str());
    assert_eq!(crossed[0]["used_nano"], charge + hold);
    assert_eq!(crossed[0]["soft_limit_nano"], hold + charge);
    drop(tmp);
}

#[tokio::test]
async fn budgets_are_set_listed_replaced_and_removed_through_the_cli_and_bad_ones_refused() {
    let (_tmp, lumina) = start(0).await;
    let account = lumina.account("Cli", "10").await;
    let (key_id, _) = lumina.key(&account).await;
    let env = [
        ("LUMINA_URL", lumina.url.as_str()),
        ("LUMINA_ADMIN_KEY", lumina.admin_key.as_str()),
    ];
    let cli = |args: &[&str]| -> Value {
        let (ok, stdout, stderr) = run(args, &env);
        assert!(ok, "{args:?}: {stderr}");
        serde_json::from_str(&stdout).unwrap()
    };
    let set = cli(&[
        "budgets",
        "set",
        "--key",
        &key_id,
        "--limit",
        "2.5",
        "--period",
        "month",
        "--timezone",
        "Europe/Paris",
        "--soft-limit",
        "2",
    ]);
    let id = set["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("bud_"), "{set}");
    assert_eq!(set["limit"], "2.5");
    assert_eq!(set["limit_nano"], 2_500_000_000i64);
    assert_eq!(set["soft_limit_nano"], 2_000_000_000i64);
    assert_eq!(set["timezone"], "Europe/Paris");
    let listed = cli(&["budgets", "list", "--account", &account]);
    assert_eq!(listed["data"][0]["id"], id.as_str());
    let updated = cli(&["budgets", "update", &id, "--limit", "3", "--period", "week"]);
    assert_eq!(updated["limit_nano"], 3_000_000_000i64);
    assert_eq!(updated["period"], "week");
    assert_eq!(updated["timezone"], "UTC");
    assert_eq!(updated["soft_limit"], Value::Null);
    cli(&["budgets", "remove", &id]);
    let listed = cli(&["budgets", "list", "--key", &key_id]);
    assert_eq!(listed["data"], json!([]));

    // What cannot be honoured is a 400 naming the field, never a budget silently ignored.
    let path = format!("/admin/keys/{key_id}/budgets");
    for (body, param) in [
        (json!({"limit": 1, "period": "monthly"}), "period"),
        (
            json!({"limit": 1, "period": "day", "timezone": "Mars/Olympus"}),
            "timezone",
        ),
        (
            json!({"limit": 1, "period": "day", "soft_limit": 2}),
            "soft_limit",
        ),
        (json!({"limit": 0, "period": "day"}), "limit"),
        (
            json!({"limit": 1, "period": "day", "max_budget": 5}),
            "max_budget",
        ),
    ] {
        let v = lumina
            .admin(Method::POST, &path, Some(body.clone()), 400)
            .await;
        let e = assert_openai_error(&v);
        assert!(
            e["param"] == param || e["message"].as_str().unwrap().contains(param),
            "{body} → {v}"
        );
    }
    let v = lumina
        .admin(
            Method::POST,
            "/admin/keys/key_nope/budgets",
            Some(json!({"limit": 1, "period": "day"})),
            404,
        )
        .await;
    assert_openai_error(&v);
    // A customer key cannot set one.
    let (_, customer) = lumina.key(&account).await;
    let (status, _, _) = lumina
        .request(
            Method::POST,
            &path,
            Some(&customer),
            Some(r#"{"limit": 1, "period": "day"}"#),
        )
        .await;
    assert_eq!(status, 401);
}
