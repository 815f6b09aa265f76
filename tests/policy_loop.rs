//! Routing that learns, end to end through the real binary and without a restart: traffic and
//! feedback go in, `lumina policy build` makes a candidate, `lumina policy publish` puts it in
//! force, `lumina policy rollback` restores the earlier routing, an invalid policy is refused,
//! and a request's own routing preferences bound the choice.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::upstream::Mocked;
use common::{Lumina, header, payloads, run, user};
use reqwest::Method;
use serde_json::{Value, json};

/// Runs `lumina policy …` against `lumina`; returns stdout, failing on a non-zero exit.
fn policy(lumina: &Lumina, args: &[&str]) -> String {
    let mut all = vec!["policy"];
    all.extend_from_slice(args);
    let admin_args = [
        "--url",
        lumina.url.as_str(),
        "--admin-key",
        lumina.admin_key.as_str(),
    ];
    if matches!(args[0], "publish" | "list" | "show" | "rollback") {
        all.extend_from_slice(&admin_args);
    }
    let (ok, out, err) = run(&all, &[]);
    assert!(ok, "lumina {all:?} failed: {err}");
    out
}

/// `lumina policy build` over the gateway's data dir into `out`.
fn build(lumina: &Lumina, out: &Path, extra: &[&str]) -> Value {
    let dir = lumina.data_dir.to_str().unwrap();
    let mut args = vec!["build", "--data-dir", dir, "--out", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    policy(lumina, &args);
    serde_json::from_str(&std::fs::read_to_string(out).unwrap()).unwrap()
}

/// Sends `body` `n` times; returns how many answers each deployment gave.
async fn deployments_of(
    lumina: &Lumina,
    key: &str,
    body: &Value,
    n: usize,
) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        let (code, headers, text) = lumina.chat(key, body).await;
        assert_eq!(code, 200, "{text}");
        *counts
            .entry(header(&headers, "x-lumina-deployment").to_string())
            .or_default() += 1;
    }
    counts
}

/// The shipped policy with `routes` set, as a new version.
async fn with_routes(lumina: &Lumina, version: i64, routes: Value) -> Value {
    let shown = lumina
        .admin(Method::GET, "/admin/policies/active", None, 200)
        .await;
    let mut doc = shown["policy"].clone();
    doc["version"] = json!(version);
    doc["routes"] = routes;
    doc
}

#[tokio::test]
async fn a_slow_deployment_loses_its_traffic_once_a_built_policy_is_published() {
    let m = Mocked::with("").await;
    let lumina = &m.lumina;
    let account = lumina.account("Learning Co", "100").await;
    let (_, key) = lumina.key(&account).await;
    let body = user(
        "lumina-balanced",
        "Summarise the plot of Hamlet in two sentences.",
    );

    // An operator splits balanced evenly between its two deployments.
    let split = with_routes(
        lumina,
        3,
        json!({"balanced": [
            {"id": "primary/mock-balanced", "weight": 1.0},
            {"id": "secondary/mock-balanced-2", "weight": 1.0}
        ]}),
    )
    .await;
    let file = m.tmp.path().join("split.json");
    std::fs::write(&file, split.to_string()).unwrap();
    let published: Value = serde_json::from_str(&policy(
        lumina,
        &["publish", file.to_str().unwrap(), "--reason", "even split"],
    ))
    .unwrap();
    assert_eq!(published["version"], 3, "{published}");
    let even = deployments_of(lumina, &key, &body, 20).await;
    assert_eq!(even["primary/mock-balanced"], 10, "{even:?}");
    assert_eq!(even["secondary/mock-balanced-2"], 10, "{even:?}");

    // The first one turns slow; traffic shows it, and the next policy moves its share away.
    m.mock.set("primary", "delay=150");
    deployments_of(lumina, &key, &body, 20).await;
    let out = m.tmp.path().join("built.json");
    let built = build(lumina, &out, &[]);
    assert_eq!(built["version"], 4, "one above the latest published");
    let balanced = built["routes"]["balanced"].as_array().unwrap();
    assert_eq!(
        balanced[0]["id"], "secondary/mock-balanced-2",
        "{balanced:?}"
    );
    assert!(
        balanced[1]["weight"].as_f64().unwrap() < 0.1,
        "the slow one keeps a share: {balanced:?}"
    );
    policy(lumina, &["publish", out.to_str().unwrap()]);
    let after = deployments_of(lumina, &key, &body, 100).await;
    let slow = after.get("primary/mock-balanced").copied().unwrap_or(0);
    assert!(
        slow < 10,
        "the slow deployment still got {slow} of 100: {after:?}"
    );
    let (_, headers, _) = lumina.chat(&key, &body).await;
    assert_eq!(header(&headers, "x-lumina-policy"), "4");

    // Every decision names its policy; a rebuilt read model gives the same candidate.
    let versions: Vec<i64> = payloads(&lumina.events(), "RequestRouted")
        .iter()
        .map(|p| p["policy_version"].as_i64().unwrap())
        .collect();
    assert_eq!(versions.iter().filter(|v| **v == 3).count(), 40);
    assert_eq!(versions.iter().filter(|v| **v == 4).count(), 101);
    // Feedback and eval results are a policy's inputs too: bad scores on greetings and two
    // eval results, so the rebuilt read model must reproduce all three kinds of statistics.
    let graded = greet(lumina, &key, "Bob", 6).await;
    for id in &graded {
        feedback(lumina, &key, id, 0.0).await;
    }
    eval_results(lumina, &key, &graded[..2]).await;
    let dir = lumina.data_dir.to_str().unwrap().to_string();
    let build_at = |out: &Path| {
        let (ok, _, err) = run(
            &[
                "policy",
                "build",
                "--data-dir",
                &dir,
                "--version",
                "9",
                "--out",
                out.to_str().unwrap(),
            ],
            &[],
        );
        assert!(ok, "{err}");
        std::fs::read_to_string(out).unwrap()
    };
    let live = build_at(&m.tmp.path().join("live.json"));
    let from: Value = serde_json::from_str(&live).unwrap();
    let from = &from["built_from"];
    assert_eq!(from["feedback"], 6, "{from}");
    assert_eq!(from["evals"], 2, "{from}");
    assert!(
        !from["raised_task_classes"].as_array().unwrap().is_empty(),
        "{from}"
    );
    let mut lumina = m.lumina;
    lumina.stop().await;
    let (ok, _, err) = run(&["projector", "rebuild", "--data-dir", &dir, "--once"], &[]);
    assert!(ok, "rebuild failed: {err}");
    let rebuilt = build_at(&m.tmp.path().join("rebuilt.json"));
    assert_eq!(live, rebuilt, "a rebuilt read model gives another policy");
    lumina.restart().await;
    let (_, headers, _) = lumina.chat(&key, &body).await;
    assert_eq!(
        header(&headers, "x-lumina-policy"),
        "4",
        "a restarted gateway routes with the active policy"
    );
}

/// Sends `n` greetings to `who` through `lumina-auto`; their request ids.
async fn greet(lumina: &Lumina, key: &str, who: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let (code, headers, text) = lumina
            .chat(
                key,
                &user("lumina-auto", &format!("Say hello to {who} {i}.")),
            )
            .await;
        assert_eq!(code, 200, "{text}");
        ids.push(header(&headers, "x-request-id").to_string());
    }
    ids
}

/// Posts a feedback `score` on request `id`, retrying while the read model has not seen the
/// request yet (it arrives a moment after its answer).
async fn feedback(lumina: &Lumina, key: &str, id: &str, score: f64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let (code, _, v) = lumina
            .request(
                Method::POST,
                "/v1/feedback",
                Some(key),
                Some(&json!({"request_id": id, "score": score}).to_string()),
            )
            .await;
        if code < 300 {
            return;
        }
        assert!(code == 404 && std::time::Instant::now() < deadline, "{v}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Records a failed eval result (score 0) on each of `ids`, retrying while the read model has
/// not seen their settlements yet.
async fn eval_results(lumina: &Lumina, key: &str, ids: &[String]) {
    let results: Vec<Value> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            json!({"run_id": "run_loop", "dataset": "greetings", "item_id": format!("g{i}"),
                "request_id": id, "check_kind": "exact", "score": 0.0, "passed": false,
                "latency_ms": 10.0})
        })
        .collect();
    let body = json!({ "results": results }).to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let (code, _, v) = lumina
            .request(Method::POST, "/v1/evals/results", Some(key), Some(&body))
            .await;
        if code < 300 {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{code}: {v}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Sends the task-class probe and returns (path, policy version).
async fn probe(lumina: &Lumina, key: &str) -> (String, String) {
    let (code, headers, text) = lumina
        .chat(key, &user("lumina-auto", "Say hello to Ana."))
        .await;
    assert_eq!(code, 200, "{text}");
    (
        header(&headers, "x-lumina-route").to_string(),
        header(&headers, "x-lumina-policy").to_string(),
    )
}

#[tokio::test]
async fn bad_feedback_moves_a_task_class_up_rollback_restores_it_and_invalid_policies_change_nothing()
 {
    let m = Mocked::with("").await;
    let lumina = &m.lumina;
    let account = lumina.account("Feedback Co", "100").await;
    let (_, key) = lumina.key(&account).await;
    let (path, shipped) = probe(lumina, &key).await;
    assert_eq!(path, "fast");

    // (b) Fast answers to greetings get a 0 on a 0–1 scale.
    for i in 0..6 {
        let (code, headers, text) = lumina
            .chat(
                &key,
                &user("lumina-auto", &format!("Say hello to Bob {i}.")),
            )
            .await;
        assert_eq!(code, 200, "{text}");
        assert_eq!(header(&headers, "x-lumina-route"), "fast");
        let id = header(&headers, "x-request-id").to_string();
        feedback(lumina, &key, &id, 0.0).await;
    }
    let out = m.tmp.path().join("feedback.json");
    let built = build(lumina, &out, &[]);
    assert_eq!(
        built["task_classes"]["chat"]["min_path"], "balanced",
        "{}",
        built["task_classes"]
    );
    policy(lumina, &["publish", out.to_str().unwrap()]);
    let (path, version) = probe(lumina, &key).await;
    assert_eq!((path.as_str(), version.as_str()), ("balanced", "3"));
    let events = lumina.events();
    let routed = payloads(&events, "RequestRouted");
    let last = routed.last().unwrap();
    assert_eq!(last["classified_path"], "fast", "{last}");
    assert_eq!(last["min_path"], "balanced", "{last}");
    // Another task class keeps its routing.
    let (code, headers, _) = lumina
        .chat(
            &key,
            &user(
                "lumina-auto",
                "Prove that there are infinitely many primes, step by step, then generalise the argument to primes of the form 4k+3.",
            ),
        )
        .await;
    assert_eq!(code, 200);
    assert_eq!(header(&headers, "x-lumina-route"), "reasoning");

    // (d) Invalid policies are refused whole; routing is unchanged.
    let good = lumina
        .admin(Method::GET, "/admin/policies/active", None, 200)
        .await["policy"]
        .clone();
    let mut cases = Vec::new();
    let mut unknown_deployment = good.clone();
    unknown_deployment["version"] = json!(10);
    unknown_deployment["routes"] = json!({"fast": [{"id": "nowhere/model", "weight": 1.0}]});
    cases.push((unknown_deployment, "nowhere/model"));
    let mut bad_weight = good.clone();
    bad_weight["version"] = json!(10);
    bad_weight["routes"] = json!({"fast": [{"id": "primary/mock-fast", "weight": -1.0}]});
    cases.push((bad_weight, "weight"));
    let mut renamed = good.clone();
    renamed["version"] = json!(10);
    renamed["task_class"] = json!({});
    cases.push((renamed, "task_class"));
    let mut stale = good.clone();
    stale["version"] = json!(3);
    cases.push((stale, "version"));
    let mut inverted = good.clone();
    inverted["version"] = json!(10);
    inverted["task_classes"] = json!({"chat": {"min_path": "reasoning", "max_path": "fast"}});
    cases.push((inverted, "min_path"));
    for (doc, named) in cases {
        let v = lumina
            .admin(Method::POST, "/admin/policies", Some(doc), 400)
            .await;
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains(named), "{named}: {message}");
    }
    assert_eq!(probe(lumina, &key).await, ("balanced".into(), "3".into()));
    assert!(lumina.metric("lumina_policy_refused_total").await >= 5.0);
    let listed = lumina
        .admin(Method::GET, "/admin/policies", None, 200)
        .await;
    assert_eq!(listed["data"].as_array().unwrap().len(), 1, "{listed}");

    // (c) Rollback to the shipped policy restores the earlier routing exactly. The shipped one
    // was never published, so publish it first under a new version: same document, same routing.
    let mut shipped_doc = lumina
        .admin(
            Method::GET,
            &format!("/admin/policies/{shipped}"),
            None,
            200,
        )
        .await["policy"]
        .clone();
    shipped_doc["version"] = json!(4);
    lumina
        .admin(Method::POST, "/admin/policies", Some(shipped_doc), 201)
        .await;
    assert_eq!(probe(lumina, &key).await, ("fast".into(), "4".into()));
    let rolled: Value = serde_json::from_str(&policy(lumina, &["rollback", "3"])).unwrap();
    assert_eq!(rolled["active"], true, "{rolled}");
    assert_eq!(probe(lumina, &key).await, ("balanced".into(), "3".into()));
    policy(lumina, &["rollback", "4"]);
    assert_eq!(probe(lumina, &key).await, ("fast".into(), "4".into()));
    let listed = policy(lumina, &["list"]);
    assert!(
        listed.contains("in force on this gateway: version 4"),
        "{listed}"
    );
    let events = lumina.events();
    assert_eq!(payloads(&events, "PolicyPublished").len(), 2);
    assert_eq!(payloads(&events, "PolicyActivated").len(), 2);
    let diff = policy(
        lumina,
        &[
            "diff",
            out.to_str().unwrap(),
            "gateway/policies/default.json",
        ],
    );
    assert!(
        diff.contains("task_classes.chat: min balanced max - -> -"),
        "{diff}"
    );
}

#[tokio::test]
async fn a_request_bounds_and_biases_its_own_routing() {
    let m = Mocked::with("").await;
    let lumina = &m.lumina;
    let account = lumina.account("Prefs Co", "100").await;
    let (_, key) = lumina.key(&account).await;
    let mut greeting = user("lumina-auto", "Say hello to Ana.");
    greeting["lumina"] = json!({"routing": {"min_path": "reasoning", "prefer": "quality"}});
    let (code, headers, text) = lumina.chat(&key, &greeting).await;
    assert_eq!(code, 200, "{text}");
    assert_eq!(header(&headers, "x-lumina-route"), "reasoning");
    let id = header(&headers, "x-request-id").to_string();
    let routed = lumina.events_of(&id);
    let r = &routed[0]["payload"];
    assert_eq!(r["prefer"], "quality", "{r}");
    assert_eq!(r["min_path"], "reasoning", "{r}");
    assert_eq!(r["classified_path"], "fast", "{r}");
    for recorded in m.mock.requests() {
        assert!(
            recorded.body.get("lumina").is_none(),
            "sent upstream: {}",
            recorded.body
        );
    }

    let mut proof = user(
        "lumina-auto",
        "Prove that there are infinitely many primes, step by step, then generalise the argument to primes of the form 4k+3.",
    );
    proof["lumina"] = json!({"routing": {"max_path": "fast"}});
    let (_, headers, _) = lumina.chat(&key, &proof).await;
    assert_eq!(header(&headers, "x-lumina-route"), "fast");

    // A key's default preference applies unless the request names its own.
    let (_, frugal) = lumina
        .key_with(&account, json!({"routing": {"prefer": "cost"}}))
        .await;
    let shown = lumina.admin(Method::GET, "/admin/keys", None, 200).await;
    assert!(
        shown.to_string().contains(r#""routing":{"prefer":"cost"}"#),
        "{shown}"
    );
    let mut asks_quality = user("lumina-auto", "Say hello to Ana.");
    asks_quality["lumina"] = json!({"routing": {"prefer": "quality"}});
    for (body, expected) in [
        (user("lumina-auto", "Say hello to Ana."), "cost"),
        (asks_quality, "quality"),
    ] {
        let (code, headers, text) = lumina.chat(&frugal, &body).await;
        assert_eq!(code, 200, "{text}");
        let events = lumina.events_of(header(&headers, "x-request-id"));
        assert_eq!(events[0]["payload"]["prefer"], expected, "{}", events[0]);
    }
    let (status, _, v) = lumina
        .request(
            Method::POST,
            "/admin/keys",
            Some(&lumina.admin_key),
            Some(
                &json!({"account_id": account, "name": "bad", "routing": {"prefer": "cheap"}})
                    .to_string(),
            ),
        )
        .await;
    assert_eq!(status, 400, "{v}");

    for (routing, param) in [
        (json!({"prefer": "cheap"}), "lumina.routing.prefer"),
        (json!({"min_path": "fusion"}), "lumina.routing.min_path"),
        (
            json!({"min_path": "reasoning", "max_path": "fast"}),
            "lumina.routing.min_path",
        ),
        (json!({"prefr": "cost"}), "lumina.routing.prefr"),
    ] {
        let mut body = user("lumina-auto", "hi");
        body["lumina"] = json!({ "routing": routing });
        let (code, _, text) = lumina.chat(&key, &body).await;
        assert_eq!(code, 400, "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["error"]["param"], param, "{v}");
    }
}

/// Feedback on production traffic becomes training data: `lumina eval export` lines of a key
/// that stores content, labelled by their feedback, train alongside a labelled set.
#[tokio::test]
async fn exported_feedback_trains_the_classifier() {
    let m = Mocked::with("").await;
    let lumina = &m.lumina;
    let account = lumina.account("Export Co", "100").await;
    let (_, key) = lumina
        .key_with(&account, json!({"store_content": true}))
        .await;
    let ids = greet(lumina, &key, "Eve", 5).await;
    // Three get a person's verdict, the fourth only a failed eval check, the fifth nothing,
    // so it carries no label.
    for (id, score) in ids.iter().zip([0.0, 0.0, 1.0]) {
        feedback(lumina, &key, id, score).await;
    }
    eval_results(lumina, &key, &ids[3..4]).await;
    let export = m.tmp.path().join("export.jsonl");
    let dir = lumina.data_dir.to_str().unwrap();
    let (ok, _, err) = run(
        &[
            "eval",
            "export",
            "--data-dir",
            dir,
            "--since",
            "0",
            "--out",
            export.to_str().unwrap(),
        ],
        &[],
    );
    assert!(ok, "{err}");
    let trained = m.tmp.path().join("trained.json");
    let (ok, _, err) = run(
        &[
            "policy",
            "train",
            "--dataset",
            "datasets/routing/dev.jsonl",
            export.to_str().unwrap(),
            "--version",
            "5",
            "--out",
            trained.to_str().unwrap(),
        ],
        &[],
    );
    assert!(ok, "{err}");
    let lines: Vec<Value> = std::fs::read_to_string(&export)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let checked = lines
        .iter()
        .find(|l| l["request_id"] == ids[3].as_str())
        .unwrap();
    assert_eq!(checked["schema_version"], 2);
    assert_eq!(checked["evals"][0]["passed"], false, "{checked}");
    assert_eq!(checked["evals"][0]["run_id"], "run_loop");
    assert!(
        err.contains("3 exported requests labelled from their feedback, 1 from their eval results, 1 without content, feedback or eval results skipped"),
        "{err}"
    );
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&trained).unwrap()).unwrap();
    let dev_items = std::fs::read_to_string("datasets/routing/dev.jsonl")
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count();
    assert_eq!(
        doc["training"]["items"],
        dev_items + 4,
        "{}",
        doc["training"]
    );
}
