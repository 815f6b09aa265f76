//! `lumina eval run` end to end, against the real binary and an upstream mock whose answers are
//! known ("Mock answer to: <the last user message>"): every check kind scores a right and a
//! wrong answer as expected; one `EvalCompleted` per item × model lands in the log and in
//! `eval_results`, with each charge equal to the request's `x-lumina-cost` and the ledger's to
//! the nano-credit; the judge's request is a charged request of its own; `POST
//! /v1/evals/results` refuses results naming requests of other accounts; a bad dataset line, an
//! unreachable gateway and a run without a single answer fail the command.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::upstream::{GATEWAY_ENV, MockUpstream, Mocked, gateway_config};
use common::{
    Lumina, assert_openai_error, dump_tables, free_port, header, nanos, payloads, run, user,
};
use reqwest::Method;
use serde_json::{Value, json};
use sqlx::{Connection, Row};

/// Items whose mock answers are known, each kind once right and once wrong, with the score
/// each must get.
const ITEMS: [(&str, f64, &str); 10] = [
    (
        r#"{"id":"exact-right","prompt":"ping","task_class":"echo","check":{"kind":"exact","expected":"mock answer to: PING","ignore_case":true}}"#,
        1.0,
        "exact",
    ),
    (
        r#"{"id":"exact-wrong","prompt":"ping","check":{"kind":"exact","expected":"pong"}}"#,
        0.0,
        "exact",
    ),
    (
        r#"{"id":"regex-right","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"order 12345"}],"check":{"kind":"regex","pattern":"answer to: order \\d{5}$"}}"#,
        1.0,
        "regex",
    ),
    (
        r#"{"id":"regex-wrong","prompt":"order 12345","check":{"kind":"regex","pattern":"^\\d+$"}}"#,
        0.0,
        "regex",
    ),
    (
        r#"{"id":"json-right","prompt":"{\"name\": \"Ada\", \"age\": 36}","task_class":"extraction","check":{"kind":"json_schema","schema":{"type":"object","required":["name","age"],"properties":{"name":{"type":"string"},"age":{"type":"integer"}}}}}"#,
        1.0,
        "json_schema",
    ),
    (
        r#"{"id":"json-wrong","prompt":"{\"name\": \"Ada\", \"age\": \"old\"}","check":{"kind":"json_schema","schema":{"type":"object","required":["name","age"],"properties":{"name":{"type":"string"},"age":{"type":"integer"}}}}}"#,
        0.0,
        "json_schema",
    ),
    (
        r#"{"id":"numeric-right","prompt":"What is 6 times 7? 42","task_class":"math","check":{"kind":"numeric","expected":42,"tolerance":0.5}}"#,
        1.0,
        "numeric",
    ),
    (
        r#"{"id":"numeric-wrong","prompt":"What is 6 times 7? 41","check":{"kind":"numeric","expected":42,"tolerance":0.5}}"#,
        0.0,
        "numeric",
    ),
    (
        r#"{"id":"judge-right","prompt":"Grade me {\"score\": 9}","check":{"kind":"judge","rubric":"Answers the question."}}"#,
        0.9,
        "judge",
    ),
    (
        r#"{"id":"judge-wrong","prompt":"Grade me {\"score\": 2}","check":{"kind":"judge","rubric":"Answers the question.","pass_score":0.5}}"#,
        0.2,
        "judge",
    ),
];

const MODELS: [&str; 2] = ["lumina-fast", "lumina-balanced"];

fn write_dataset(dir: &Path, name: &str, lines: &[&str]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path.to_str().unwrap().to_string()
}

/// Runs `lumina eval run` with `args` off the runtime (the mock answers on it meanwhile).
async fn eval_run(args: Vec<String>, env: Vec<(String, String)>) -> (bool, String, String) {
    tokio::task::spawn_blocking(move || {
        let mut all = vec!["eval".to_string(), "run".to_string()];
        all.extend(args);
        let args: Vec<&str> = all.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        run(&args, &env)
    })
    .await
    .unwrap()
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn db_url(lumina: &Lumina) -> String {
    lumina_eventlog::db::sqlite_url(&lumina.data_dir.join("lumina.db"))
}

/// The charge each request's `RequestSettled` carries, by request id.
fn settled_charges(events: &[Value]) -> BTreeMap<String, i64> {
    events
        .iter()
        .filter(|e| e["event_type"] == "RequestSettled")
        .map(|e| {
            (
                e["request_id"].as_str().unwrap().to_string(),
                e["payload"]["charge_nano"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// What the ledger moved to revenue for `request_id`.
async fn ledger_charge(conn: &mut sqlx::AnyConnection, request_id: &str) -> i64 {
    sqlx::query(
        "SELECT COALESCE(SUM(p.amount_nano), 0) FROM ledger_postings p
         JOIN ledger_entries e ON e.event_id = p.entry_event_id
         WHERE e.request_id = $1 AND e.kind = 'settle' AND p.ledger_account = 'system:revenue'",
    )
    .bind(request_id)
    .fetch_one(conn)
    .await
    .unwrap()
    .try_get(0)
    .unwrap()
}

#[tokio::test]
async fn every_check_kind_scores_right_and_wrong_answers_and_each_result_is_recorded_at_its_charge()
{
    let mut m = Mocked::with("").await;
    let account = m.lumina.account("Evals", "10").await;
    let (key_id, key) = m.lumina.key(&account).await;
    let lines: Vec<&str> = ITEMS.iter().map(|(line, _, _)| *line).collect();
    let dataset = write_dataset(m.tmp.path(), "mock-evals.jsonl", &lines);
    let (ok, stdout, stderr) = eval_run(
        strings(&[
            "--dataset",
            &dataset,
            "--models",
            &MODELS.join(","),
            "--url",
            &m.lumina.url,
            "--key",
            &key,
            "--concurrency",
            "3",
            "--json",
        ]),
        Vec::new(),
    )
    .await;
    assert!(ok, "{stderr}\n{stdout}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    let run_id = report["run_id"].as_str().unwrap();
    assert_eq!(report["dataset"], "mock-evals");
    let results = report["results"].as_array().unwrap();
    assert_eq!(results.len(), ITEMS.len() * MODELS.len());

    // Each item scores as its known answer deserves, on every model, in dataset order.
    for (i, r) in results.iter().enumerate() {
        let (line, score, kind) = ITEMS[i / MODELS.len()];
        let id = serde_json::from_str::<Value>(line).unwrap()["id"].clone();
        assert_eq!(r["item_id"], id, "{r}");
        assert_eq!(r["model"], MODELS[i % MODELS.len()], "{r}");
        assert_eq!(r["check_kind"], kind, "{r}");
        assert!(
            (r["score"].as_f64().unwrap() - score).abs() < 1e-9,
            "{id}: {r}"
        );
        assert_eq!(r["passed"], score > 0.5, "{id}: {r}");
        assert!(r["event_id"].is_string(), "{r}");
        assert!(r["error"].is_null(), "{r}");
        assert_eq!(r["judge_request_id"].is_string(), kind == "judge", "{r}");
    }
    for (m_index, model) in MODELS.iter().enumerate() {
        let summary = &report["models"][m_index];
        assert_eq!(summary["model"], *model);
        assert_eq!(summary["items"], 10);
        assert_eq!(summary["scored"], 10);
        assert_eq!(summary["errors"], 0);
        assert_eq!(summary["pass_rate"], 0.5);
        assert!((summary["mean_score"].as_f64().unwrap() - 0.51).abs() < 1e-9);
        let of_model = results.iter().filter(|r| r["model"] == *model);
        let cost: i64 = of_model
            .clone()
            .map(|r| r["cost_nano"].as_i64().unwrap())
            .sum();
        let judge: i64 = of_model.filter_map(|r| r["judge_cost_nano"].as_i64()).sum();
        assert_eq!(summary["cost_nano"], cost);
        assert_eq!(nanos(summary["cost"].as_str().unwrap()), cost);
        assert_eq!(summary["judge_cost_nano"], judge);
        assert!(
            judge > 0,
            "the judge's requests were not charged: {summary}"
        );
    }

    // One EvalCompleted per item × model, carrying the gateway's own record of each request.
    let events = m.lumina.events();
    let charges = settled_charges(&events);
    let recorded: Vec<&Value> = events
        .iter()
        .filter(|e| e["event_type"] == "EvalCompleted")
        .collect();
    assert_eq!(recorded.len(), results.len());
    let routed: BTreeMap<&str, &Value> = events
        .iter()
        .filter(|e| e["event_type"] == "RequestRouted")
        .map(|e| (e["request_id"].as_str().unwrap(), &e["payload"]))
        .collect();
    for r in results {
        let request_id = r["request_id"].as_str().unwrap();
        let e = recorded
            .iter()
            .find(|e| e["event_id"] == r["event_id"])
            .unwrap_or_else(|| panic!("no event for {r}"));
        assert_eq!(e["request_id"], request_id);
        assert_eq!(e["account_id"], account.as_str());
        assert_eq!(e["api_key_id"], key_id.as_str());
        let p = &e["payload"];
        assert_eq!(p["run_id"], run_id);
        assert_eq!(p["dataset"], "mock-evals");
        assert_eq!(p["item_id"], r["item_id"]);
        assert_eq!(p["model"], r["model"]);
        assert_eq!(p["path"], r["path"]);
        assert_eq!(
            p["path"],
            r["model"].as_str().unwrap().trim_start_matches("lumina-")
        );
        assert_eq!(p["deployment"], r["deployment"]);
        assert_eq!(p["routed_task_class"], routed[request_id]["task_class"]);
        assert_eq!(p["check_kind"], r["check_kind"]);
        assert_eq!(p["score"], r["score"]);
        assert_eq!(p["passed"], r["passed"]);
        assert_eq!(
            p["cost_nano"], r["cost_nano"],
            "x-lumina-cost and the event differ"
        );
        assert_eq!(p["cost_nano"], charges[request_id]);
        assert_eq!(p["judge_request_id"], r["judge_request_id"]);
        assert_eq!(p["judge_cost_nano"], r["judge_cost_nano"]);
        if let Some(judge) = r["judge_request_id"].as_str() {
            assert_eq!(p["judge_cost_nano"], charges[judge]);
            assert_eq!(routed[judge]["requested_model"], "lumina-balanced");
        }
    }
    let classes: Vec<&Value> = payloads(&events, "EvalCompleted")
        .into_iter()
        .filter(|p| p["item_id"] == "numeric-right")
        .map(|p| &p["task_class"])
        .collect();
    assert_eq!(classes, [&json!("math"), &json!("math")]);

    // The read model holds every result; each charge is the ledger's, to the nano-credit.
    let url = db_url(&m.lumina);
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(&url).await.unwrap();
    let rows = sqlx::query(
        "SELECT request_id, cost_nano, judge_request_id, judge_cost_nano, score, passed, path,
             check_kind, run_id, dataset, event_id
         FROM eval_results",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(rows.len(), results.len());
    for row in &rows {
        let request_id: String = row.try_get(0).unwrap();
        let cost: i64 = row.try_get(1).unwrap();
        let r = results
            .iter()
            .find(|r| r["request_id"] == request_id.as_str())
            .unwrap();
        assert_eq!(cost, r["cost_nano"].as_i64().unwrap());
        assert_eq!(cost, ledger_charge(&mut conn, &request_id).await);
        let judge: Option<String> = row.try_get(2).unwrap();
        if let Some(judge) = judge {
            let judge_cost: i64 = row.try_get(3).unwrap();
            assert!(judge_cost > 0);
            assert_eq!(judge_cost, ledger_charge(&mut conn, &judge).await);
        }
        assert_eq!(
            row.try_get::<f64, _>(4).unwrap(),
            r["score"].as_f64().unwrap()
        );
        assert_eq!(
            row.try_get::<i64, _>(5).unwrap() != 0,
            r["passed"].as_bool().unwrap()
        );
        assert_eq!(
            row.try_get::<String, _>(6).unwrap(),
            r["path"].as_str().unwrap()
        );
        assert_eq!(
            row.try_get::<String, _>(7).unwrap(),
            r["check_kind"].as_str().unwrap()
        );
        assert_eq!(row.try_get::<String, _>(8).unwrap(), run_id);
        assert_eq!(row.try_get::<String, _>(9).unwrap(), "mock-evals");
        assert_eq!(
            row.try_get::<String, _>(10).unwrap(),
            r["event_id"].as_str().unwrap()
        );
    }
    let _ = conn.close().await;

    // `lumina projector rebuild` writes the same rows from the log.
    m.lumina.stop().await;
    let live = dump_tables(&url, &[("eval_results", "event_id")]).await;
    let data = m.lumina.data_dir.to_str().unwrap().to_string();
    let (ok, _, stderr) = run(&["projector", "rebuild", "--data-dir", &data], &[]);
    assert!(ok, "{stderr}");
    assert_eq!(
        dump_tables(&url, &[("eval_results", "event_id")]).await,
        live
    );
}

async fn post_results(lumina: &Lumina, key: &str, body: &str) -> (u16, Value) {
    let (status, _, value) = lumina
        .request(Method::POST, "/v1/evals/results", Some(key), Some(body))
        .await;
    (status, value)
}

fn result(request_id: &str, check: &str, judge: Option<&str>) -> Value {
    json!({"run_id": "run_t", "dataset": "d", "item_id": "i", "request_id": request_id,
        "check_kind": check, "score": 1.0, "passed": true, "latency_ms": 12.5,
        "judge_request_id": judge})
}

fn results(list: &[Value]) -> String {
    json!({ "results": list }).to_string()
}

#[tokio::test]
async fn results_must_name_settled_requests_of_the_callers_own_account() {
    let m = Mocked::with("").await;
    let lumina = &m.lumina;
    let mine = lumina.account("Mine", "5").await;
    let theirs = lumina.account("Theirs", "5").await;
    let (_, key) = lumina.key(&mine).await;
    let (_, other_key) = lumina.key(&theirs).await;
    let (status, headers, _) = lumina.chat(&key, &user("lumina-fast", "mine")).await;
    assert_eq!(status, 200);
    let my_request = header(&headers, "x-request-id").to_string();
    let my_cost = nanos(header(&headers, "x-lumina-cost"));
    let (status, headers, _) = lumina
        .chat(&other_key, &user("lumina-fast", "theirs"))
        .await;
    assert_eq!(status, 200);
    let their_request = header(&headers, "x-request-id").to_string();

    let refused = |body: Value, status: u16, param: &str| (body, status, param.to_string());
    let unknown = format!("req_{}", "0".repeat(32));
    for (body, expected, param) in [
        refused(
            json!({"results": [result(&their_request, "exact", None)]}),
            404,
            "results[0].request_id",
        ),
        refused(
            json!({"results": [result(&unknown, "exact", None)]}),
            404,
            "results[0].request_id",
        ),
        refused(
            json!({"results": [result(&my_request, "exact", None), result(&their_request, "regex", None)]}),
            404,
            "results[1].request_id",
        ),
        refused(
            json!({"results": [result(&my_request, "judge", Some(&their_request))]}),
            404,
            "results[0].judge_request_id",
        ),
        refused(
            json!({"results": [result("12", "exact", None)]}),
            400,
            "results[0].request_id",
        ),
        refused(
            json!({"results": [result(&my_request, "judge", None)]}),
            400,
            "results[0].judge_request_id",
        ),
        refused(
            json!({"results": [result(&my_request, "judge", Some(&my_request))]}),
            400,
            "results[0].judge_request_id",
        ),
    ] {
        let (status, value) = post_results(lumina, &key, &body.to_string()).await;
        assert_eq!(status, expected, "{body}: {value}");
        let error = assert_openai_error(&value);
        assert_eq!(error["param"], param.as_str(), "{value}");
        if expected == 404 {
            assert_eq!(error["code"], "not_found", "{value}");
        }
    }
    let mut bad_score = result(&my_request, "exact", None);
    bad_score["score"] = json!(1.5);
    let (status, value) = post_results(lumina, &key, &results(&[bad_score])).await;
    assert_eq!(status, 400, "{value}");
    assert_eq!(assert_openai_error(&value)["param"], "results[0].score");
    let twice = format!(
        r#"{{"results": [], "results": [{}]}}"#,
        result(&my_request, "exact", None)
    );
    let (status, value) = post_results(lumina, &key, &twice).await;
    assert_eq!(status, 400, "{value}");
    assert_eq!(assert_openai_error(&value)["param"], "results");
    assert!(payloads(&lumina.events(), "EvalCompleted").is_empty());

    // The caller's own settled request is recorded once, at its charge; a second result for
    // it is refused.
    let body = results(&[result(&my_request, "exact", None)]);
    let (status, value) = post_results(lumina, &key, &body).await;
    assert_eq!(status, 201, "{value}");
    assert_eq!(value["data"][0]["request_id"], my_request.as_str());
    assert_eq!(value["data"][0]["cost_nano"], my_cost);
    assert_eq!(value["data"][0]["path"], "fast");
    let (status, value) = post_results(lumina, &key, &body).await;
    assert_eq!(status, 400, "{value}");
    assert_eq!(
        assert_openai_error(&value)["param"],
        "results[0].request_id"
    );
    let recorded = payloads(&lumina.events(), "EvalCompleted")
        .into_iter()
        .cloned()
        .collect::<Vec<_>>();
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0]["cost_nano"], my_cost);
}

#[tokio::test]
async fn a_malformed_dataset_line_fails_the_run_naming_the_line_before_anything_is_sent() {
    let m = Mocked::with("").await;
    let account = m.lumina.account("Evals", "5").await;
    let (_, key) = m.lumina.key(&account).await;
    let dataset = write_dataset(
        m.tmp.path(),
        "broken.jsonl",
        &[
            ITEMS[0].0,
            ITEMS[1].0,
            r#"{"id":"bad","prompt":"hi","check":{"kind":"numeric","expected":"forty-two"}}"#,
        ],
    );
    let (ok, _, stderr) = eval_run(
        strings(&["--dataset", &dataset, "--url", &m.lumina.url, "--key", &key]),
        Vec::new(),
    )
    .await;
    assert!(!ok);
    assert!(stderr.contains("broken.jsonl: line 3: check:"), "{stderr}");
    assert!(m.mock.requests().is_empty(), "requests were sent");
}

#[tokio::test]
async fn the_run_fails_when_the_gateway_is_unreachable_or_nothing_is_answered() {
    let tmp = tempfile::tempdir().unwrap();
    let dataset = write_dataset(tmp.path(), "two.jsonl", &[ITEMS[0].0, ITEMS[2].0]);
    let nobody = format!("http://127.0.0.1:{}", free_port());
    let (ok, _, stderr) = eval_run(
        strings(&["--dataset", &dataset, "--url", &nobody, "--key", "lum_x"]),
        Vec::new(),
    )
    .await;
    assert!(!ok);
    assert!(stderr.contains("cannot reach the gateway"), "{stderr}");

    let m = Mocked::with("").await;
    m.mock.set("primary", "fail500");
    m.mock.set("secondary", "fail500");
    let account = m.lumina.account("Evals", "5").await;
    let (_, key) = m.lumina.key(&account).await;
    let (ok, stdout, stderr) = eval_run(
        strings(&[
            "--dataset",
            &dataset,
            "--models",
            "lumina-fast",
            "--url",
            &m.lumina.url,
            "--key",
            &key,
        ]),
        Vec::new(),
    )
    .await;
    assert!(!ok, "{stdout}");
    assert!(stderr.contains("every request failed"), "{stderr}");
    assert!(
        stdout.contains("lumina-fast"),
        "the table is still printed: {stdout}"
    );
    assert!(payloads(&m.lumina.events(), "EvalCompleted").is_empty());
}

#[tokio::test]
async fn with_a_config_the_run_serves_its_own_gateway_in_the_given_data_dir() {
    let mock = MockUpstream::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("lumina.toml");
    std::fs::write(&config, gateway_config(&mock, "")).unwrap();
    let dataset = write_dataset(tmp.path(), "two.jsonl", &[ITEMS[0].0, ITEMS[6].0]);
    let data = tmp.path().join("data");
    let env = GATEWAY_ENV
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let (ok, stdout, stderr) = eval_run(
        strings(&[
            "--dataset",
            &dataset,
            "--models",
            "lumina-fast",
            "--config",
            config.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ]),
        env,
    )
    .await;
    assert!(ok, "{stderr}\n{stdout}");
    let row = stdout
        .lines()
        .find(|l| l.starts_with("lumina-fast"))
        .unwrap_or_else(|| panic!("no row for lumina-fast: {stdout}"));
    assert!(row.contains("100.0%"), "{row}");
    assert!(
        stderr.contains("recorded 2 EvalCompleted events"),
        "{stderr}"
    );
    assert_eq!(mock.requests_of("primary").len(), 2);
    let (ok, log, stderr) = run(
        &[
            "replay",
            "--data-dir",
            data.to_str().unwrap(),
            "--type",
            "EvalCompleted",
        ],
        &[],
    );
    assert!(ok, "{stderr}");
    assert_eq!(log.lines().count(), 2, "{log}");
}
