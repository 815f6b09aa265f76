//! The projector end to end, against the real binary: a scripted mix of requests (every path,
//! a fallback, an upstream failure, a stream, a client that goes away) shows up exactly in
//! `/v1/usage`, `/v1/requests` and each trace; usage credits equal the ledger's; the OpenAI
//! SDK reads `/v1/usage`; no account can read another's data; the eval export is valid against
//! its schema with content only for opted-in keys; `lumina projector rebuild` equals live.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::dist::{Broker, ConsumerProc};
use common::upstream::{GATEWAY_ENV, MockUpstream, gateway_config};
use common::{Lumina, assert_openai_error, dump_tables, run, user};
use lumina_eventlog::Backend;
use reqwest::Method;
use serde_json::{Value, json};

const PRICES: &str = r#"
[pricing]
version = "views-1"
[pricing.paths.fast]
input = "1000"
output = "2000"
cached_input = "250"
reasoning = "3000"
max_output_tokens = 100
[pricing.paths.balanced]
input = "10"
output = "20"
[pricing.paths.reasoning]
input = "50"
output = "150"
[pricing.deployments."secondary/mock-fast-2"]
input = "1500"
output = "2500"
"#;

/// What the script expects of one request.
#[derive(Debug, Clone)]
struct Expect {
    id: String,
    key_id: String,
    status: &'static str,
    path: &'static str,
    /// The answer the client received (non-stream completions), for the content check.
    answer: Option<String>,
    messages: Value,
    stored: bool,
}

struct World {
    tmp: tempfile::TempDir,
    mock: MockUpstream,
    lumina: Lumina,
    url: String,
    account: String,
    project: String,
    /// Stores content.
    key_id: String,
    key: String,
    /// Does not store content.
    plain_id: String,
    plain: String,
    other_account: String,
    other_key_id: String,
    other_key: String,
    expected: Vec<Expect>,
    started: i64,
    /// Distributed mode: the broker and the ledger and projector processes.
    _distributed: Option<(Broker, ConsumerProc, ConsumerProc)>,
}

fn header(h: &reqwest::header::HeaderMap, name: &str) -> String {
    h.get(name)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

/// How the system under test runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `lumina serve` on this database.
    Embedded(Backend),
    /// `lumina gateway` shipping to Kafka, `lumina ledger` and `lumina projector` on the topic,
    /// PostgreSQL.
    Distributed,
}

/// The key secret of the test's gateway.
const KEY_SECRET: &str = "7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a";

async fn start(mode: Mode) -> World {
    let mock = MockUpstream::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let url = match mode {
        Mode::Embedded(Backend::Sqlite) => {
            lumina_eventlog::db::sqlite_url(&tmp.path().join("data").join("lumina.db"))
        }
        _ => lumina_testkit::fresh_database(Backend::Postgres).await.url,
    };
    let mut env: Vec<(&str, &str)> = GATEWAY_ENV.to_vec();
    env.push(("LUMINA_DATABASE_URL", url.as_str()));
    // Every gateway of a deployment shares the key secret (`lumina gateway` requires it).
    env.push(("LUMINA_KEY_SECRET", KEY_SECRET));
    let mut config = gateway_config(&mock, PRICES);
    let (lumina, distributed) = if mode == Mode::Distributed {
        let broker = Broker::start(&tmp.path().join("kafka")).await;
        config.push_str(&format!(
            "\n[database]\nurl = \"{url}\"\n\n[kafka]\nbrokers = \"{}\"\npartitions = 3\nassignment = \"all\"\n",
            broker.address
        ));
        let path = tmp.path().join("lumina.toml");
        std::fs::write(&path, &config).unwrap();
        let ledger =
            ConsumerProc::start_with_env("ledger", &path, &tmp.path().join("ledger"), &GATEWAY_ENV);
        let projector = ConsumerProc::start_with_env(
            "projector",
            &path,
            &tmp.path().join("projector"),
            &GATEWAY_ENV,
        );
        let lumina = Lumina::start_gateway(
            &tmp.path().join("data"),
            &tmp.path().join("out"),
            &env,
            &config,
        )
        .await;
        (lumina, Some((broker, ledger, projector)))
    } else {
        let lumina = Lumina::start_with_config(
            &tmp.path().join("data"),
            &tmp.path().join("out"),
            &env,
            Some(&config),
        )
        .await;
        (lumina, None)
    };
    let started = chrono_now() - 1;
    let account = lumina.account("Views Co", "50").await;
    let acct = lumina
        .admin(
            Method::GET,
            &format!("/admin/accounts/{account}"),
            None,
            200,
        )
        .await;
    let project = acct["project_id"].as_str().unwrap().to_string();
    let (key_id, key) = lumina
        .key_with(&account, json!({"store_content": true}))
        .await;
    let (plain_id, plain) = lumina.key(&account).await;
    let other_account = lumina.account("Other Co", "5").await;
    let (other_key_id, other_key) = lumina.key(&other_account).await;
    World {
        tmp,
        mock,
        lumina,
        url,
        account,
        project,
        key_id,
        key,
        plain_id,
        plain,
        other_account,
        other_key_id,
        other_key,
        expected: Vec::new(),
        started,
        _distributed: distributed,
    }
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

impl World {
    async fn send(&mut self, stored: bool, body: Value, status: &'static str, path: &'static str) {
        let (key, key_id) = if stored {
            (self.key.clone(), self.key_id.clone())
        } else {
            (self.plain.clone(), self.plain_id.clone())
        };
        let (code, headers, text) = self.lumina.chat(&key, &body).await;
        let answer = if code == 200 && body["stream"] != json!(true) {
            let v: Value = serde_json::from_str(&text).unwrap();
            v["choices"][0]["message"]["content"]
                .as_str()
                .map(str::to_string)
        } else {
            None
        };
        self.expected.push(Expect {
            id: header(&headers, "x-request-id"),
            key_id,
            status,
            path,
            answer,
            messages: body["messages"].clone(),
            stored,
        });
    }

    /// The scripted mix.
    async fn script(&mut self) {
        self.send(
            true,
            user("lumina-fast", "What is 2 + 2?"),
            "completed",
            "fast",
        )
        .await;
        self.send(
            false,
            user("lumina-balanced", "Summarise this paragraph about rivers."),
            "completed",
            "balanced",
        )
        .await;
        self.send(
            true,
            user(
                "lumina-reasoning",
                "Prove that there are infinitely many primes.",
            ),
            "completed",
            "reasoning",
        )
        .await;
        self.send(false, user("lumina-auto", "hi"), "completed", "fast")
            .await;
        // A fallback: the primary fails once, the secondary answers.
        self.mock.fail_next("primary", 1);
        self.send(
            true,
            user("lumina-fast", "fallback please"),
            "completed",
            "fast",
        )
        .await;
        // An upstream failure: every fast deployment answers 500.
        self.mock.set("primary", "fail500");
        self.mock.set("secondary", "fail500");
        self.send(false, user("lumina-fast", "doomed"), "failed", "fast")
            .await;
        self.mock.set("primary", "ok");
        self.mock.set("secondary", "ok");
        // A stream with usage.
        let mut body = user("lumina-fast", "stream me a short answer");
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
        self.send(true, body, "completed", "fast").await;
        // A client that disconnects mid-stream.
        self.mock.set("primary", "slow");
        let mut body = user("lumina-fast", "a long slow answer with many words in it");
        body["stream"] = json!(true);
        let client = reqwest::Client::new();
        let mut res = client
            .post(format!("{}/v1/chat/completions", self.lumina.url))
            .bearer_auth(&self.plain)
            .json(&body)
            .send()
            .await
            .unwrap();
        let id = header(res.headers(), "x-request-id");
        assert!(res.chunk().await.unwrap().is_some());
        drop(res);
        drop(client);
        self.expected.push(Expect {
            id,
            key_id: self.plain_id.clone(),
            status: "cancelled",
            path: "fast",
            answer: None,
            messages: body["messages"].clone(),
            stored: false,
        });
        self.mock.set("primary", "ok");
        // The other account's one request.
        let (code, _, _) = self
            .lumina
            .chat(&self.other_key.clone(), &user("lumina-fast", "mine"))
            .await;
        assert_eq!(code, 200);
    }

    async fn get(&self, key: &str, path: &str) -> (u16, Value) {
        let (status, _, v) = self
            .lumina
            .request(Method::GET, path, Some(key), None)
            .await;
        (status, v)
    }

    /// Waits until every scripted request is settled in the views.
    async fn settled_views(&self) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (status, page) = self.get(&self.key, "/v1/requests?limit=100").await;
            assert_eq!(status, 200, "{page}");
            let data = page["data"].as_array().unwrap();
            if data.len() == self.expected.len()
                && data.iter().all(|r| r["status"] != "in_progress")
            {
                return page;
            }
            if Instant::now() >= deadline {
                let stuck: Vec<&str> = data
                    .iter()
                    .filter(|r| r["status"] == "in_progress")
                    .filter_map(|r| r["id"].as_str())
                    .collect();
                let events: Vec<Value> = self
                    .lumina
                    .events()
                    .into_iter()
                    .filter(|e| stuck.contains(&e["request_id"].as_str().unwrap_or_default()))
                    .collect();
                panic!(
                    "the views never settled every request: {page}\nevents of the unsettled: {}\nwarnings: {}",
                    serde_json::to_string_pretty(&events).unwrap(),
                    self.lumina
                        .output()
                        .lines()
                        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Every `RequestSettled` of the account, from the log.
fn settlements(events: &[Value], account: &str) -> Vec<Value> {
    events
        .iter()
        .filter(|e| e["event_type"] == "RequestSettled" && e["account_id"] == account)
        .cloned()
        .collect()
}

async fn the_views_show_exactly_what_happened(w: &mut World) {
    w.script().await;
    let page = w.settled_views().await;
    let events = w.lumina.events();
    let listed: BTreeMap<String, Value> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["id"].as_str().unwrap().to_string(), r.clone()))
        .collect();
    // Newest first.
    let ids: Vec<&str> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    let mut sorted = ids.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(ids, sorted);

    for exp in &w.expected {
        let row = &listed[&exp.id];
        assert_eq!(row["status"], exp.status, "{}: {row}", exp.id);
        assert_eq!(row["path"], exp.path, "{}: {row}", exp.id);
        assert_eq!(row["api_key_id"], exp.key_id.as_str());
        let (status, trace) = w.get(&w.key, &format!("/v1/requests/{}", exp.id)).await;
        assert_eq!(status, 200, "{trace}");
        let mine: Vec<&Value> = events
            .iter()
            .filter(|e| e["request_id"] == exp.id.as_str())
            .collect();
        let routed = mine
            .iter()
            .find(|e| e["event_type"] == "RequestRouted")
            .unwrap();
        let settled = mine
            .iter()
            .find(|e| e["event_type"] == "RequestSettled")
            .unwrap();
        let attempts: Vec<&&Value> = mine
            .iter()
            .filter(|e| e["event_type"] == "UpstreamAttempted")
            .collect();
        // The route decision, as decided.
        assert_eq!(trace["route"]["features"], routed["payload"]["features"]);
        assert_eq!(trace["route"]["scores"], routed["payload"]["scores"]);
        // Why: the inputs that weighed most, the preference and bounds applied.
        assert!(
            !routed["payload"]["top_features"]
                .as_array()
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            trace["route"]["top_features"],
            routed["payload"]["top_features"]
        );
        for field in ["prefer", "min_path", "max_path", "classified_path"] {
            assert_eq!(trace["route"][field], routed["payload"][field], "{field}");
        }
        assert_eq!(trace["route"]["prefer"], "balanced");
        assert_eq!(
            trace["route"]["task_class"],
            routed["payload"]["task_class"]
        );
        assert_eq!(
            trace["route"]["policy_version"],
            routed["payload"]["policy_version"]
        );
        assert_eq!(
            trace["route"]["candidates"],
            routed["payload"]["candidates"]
        );
        // Every attempt, in order, with its error class and fallback.
        let traced = trace["attempts"].as_array().unwrap();
        assert_eq!(traced.len(), attempts.len(), "{}: {trace}", exp.id);
        for (t, a) in traced.iter().zip(&attempts) {
            for field in [
                "attempt",
                "provider",
                "deployment",
                "error_class",
                "fell_back",
                "outcome",
                "duration_us",
            ] {
                assert_eq!(t[field], a["payload"][field], "{}: {field}", exp.id);
            }
        }
        // The settlement and the charge.
        let s = &settled["payload"];
        assert_eq!(trace["status"], s["outcome"]);
        assert_eq!(trace["settlement"]["error_class"], s["error_class"]);
        assert_eq!(trace["credits_nano"], s["charge_nano"]);
        assert_eq!(trace["usage"]["prompt_tokens"], s["usage"]["prompt_tokens"]);
        assert_eq!(
            trace["usage"]["completion_tokens"],
            s["usage"]["completion_tokens"]
        );
        assert_eq!(trace["usage"]["estimated"], s["usage"]["estimated"]);
        assert_eq!(trace["deployment"], s["deployment"]);
        assert_eq!(
            trace["latency_ms"].as_f64().unwrap(),
            s["latency_us"].as_f64().unwrap() / 1000.0
        );
    }
    // The fallback: primary failed and fell back, secondary answered.
    let fallback = &w.expected[4];
    let (_, trace) = w
        .get(&w.key, &format!("/v1/requests/{}", fallback.id))
        .await;
    assert_eq!(trace["attempts"][0]["provider"], "primary");
    assert_eq!(trace["attempts"][0]["fell_back"], true);
    assert_eq!(trace["attempts"][0]["outcome"], "error");
    assert_eq!(trace["attempts"][1]["provider"], "secondary");
    assert_eq!(trace["provider"], "secondary");
    // The failure costs nothing and says why.
    let failed = &w.expected[5];
    let (_, trace) = w.get(&w.key, &format!("/v1/requests/{}", failed.id)).await;
    assert_eq!(trace["credits_nano"], 0);
    assert!(trace["settlement"]["error_class"].is_string(), "{trace}");
    // Filters: by key, path and status.
    let (_, page) = w
        .get(&w.key, &format!("/v1/requests?api_key_id={}", w.key_id))
        .await;
    assert_eq!(
        page["data"].as_array().unwrap().len(),
        w.expected.iter().filter(|e| e.stored).count()
    );
    let (_, page) = w.get(&w.key, "/v1/requests?status=failed").await;
    assert_eq!(page["data"].as_array().unwrap().len(), 1);
    assert_eq!(page["data"][0]["id"], failed.id.as_str());
    let (_, page) = w.get(&w.key, "/v1/requests?path=reasoning").await;
    assert_eq!(page["data"].as_array().unwrap().len(), 1);
    // Several filters at once, each a constraint of its own.
    let count = |page: &Value| page["data"].as_array().unwrap().len();
    let (_, page) = w
        .get(&w.key, "/v1/requests?path=reasoning&status=failed")
        .await;
    assert_eq!(
        count(&page),
        usize::from(failed.path == "reasoning"),
        "{page}"
    );
    let (_, page) = w.get(&w.key, "/v1/requests?status=in_progress").await;
    assert_eq!(count(&page), 0, "every request is settled: {page}");
    let (_, page) = w
        .get(
            &w.key,
            &format!(
                "/v1/requests?since=0&until=4000000000&limit=100&api_key_id={}",
                w.key_id
            ),
        )
        .await;
    assert_eq!(count(&page), w.expected.iter().filter(|e| e.stored).count());
    let (_, page) = w.get(&w.key, "/v1/requests?since=4000000000").await;
    assert_eq!(count(&page), 0);
    // Pagination: two at a time, through `after`, visits every request once.
    let mut seen = Vec::new();
    let mut after = String::new();
    loop {
        let (_, page) = w.get(&w.key, &format!("/v1/requests?limit=2{after}")).await;
        for r in page["data"].as_array().unwrap() {
            seen.push(r["id"].as_str().unwrap().to_string());
        }
        if page["has_more"] != true {
            break;
        }
        after = format!("&after={}", page["last_id"].as_str().unwrap());
    }
    assert_eq!(seen, ids);

    // Usage: totals equal the log's settlements and the ledger's spend.
    let settled = settlements(&events, &w.account);
    assert_eq!(settled.len(), w.expected.len());
    let sum = |f: &dyn Fn(&Value) -> i64| settled.iter().map(|e| f(&e["payload"])).sum::<i64>();
    let charged = sum(&|p| p["charge_nano"].as_i64().unwrap());
    let prompt = sum(&|p| p["usage"]["prompt_tokens"].as_i64().unwrap());
    let completion = sum(&|p| p["usage"]["completion_tokens"].as_i64().unwrap());
    assert!(charged > 0);
    let (status, usage) = w
        .get(
            &w.key,
            &format!("/v1/usage?start_time={}&bucket_width=1d", w.started),
        )
        .await;
    assert_eq!(status, 200, "{usage}");
    assert_eq!(usage["object"], "page");
    let results: Vec<&Value> = usage["data"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|b| b["results"].as_array().unwrap())
        .collect();
    let total = |f: &str| results.iter().map(|r| r[f].as_i64().unwrap()).sum::<i64>();
    assert_eq!(total("num_model_requests"), w.expected.len() as i64);
    assert_eq!(total("input_tokens"), prompt);
    assert_eq!(total("output_tokens"), completion);
    assert_eq!(total("credits_nano"), charged);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let acct = w
            .lumina
            .admin(
                Method::GET,
                &format!("/admin/accounts/{}", w.account),
                None,
                200,
            )
            .await;
        if acct["balance"]["held_nano"] == 0 {
            assert_eq!(acct["balance"]["spent_nano"].as_i64().unwrap(), charged);
            break;
        }
        assert!(Instant::now() < deadline, "holds never released: {acct}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Grouped by model (the Lumina path) per minute: one result per path and minute.
    let (_, usage) = w
        .get(
            &w.key,
            &format!(
                "/v1/usage?start_time={}&bucket_width=1m&group_by=model&limit=10",
                w.started
            ),
        )
        .await;
    let mut per_path: BTreeMap<String, i64> = BTreeMap::new();
    for b in usage["data"].as_array().unwrap() {
        assert_eq!(b["object"], "bucket");
        assert_eq!(
            b["end_time"].as_i64().unwrap() - b["start_time"].as_i64().unwrap(),
            60
        );
        for r in b["results"].as_array().unwrap() {
            *per_path
                .entry(r["model"].as_str().unwrap().to_string())
                .or_default() += r["num_model_requests"].as_i64().unwrap();
        }
    }
    let mut expected_paths: BTreeMap<String, i64> = BTreeMap::new();
    for e in &w.expected {
        *expected_paths.entry(e.path.to_string()).or_default() += 1;
    }
    assert_eq!(per_path, expected_paths);
    // A filter on one key.
    let (_, usage) = w
        .get(
            &w.key,
            &format!(
                "/v1/usage?start_time={}&api_key_ids={}&group_by=api_key_id",
                w.started, w.key_id
            ),
        )
        .await;
    let n: i64 = usage["data"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|b| b["results"].as_array().unwrap())
        .map(|r| {
            assert_eq!(r["api_key_id"], w.key_id.as_str());
            r["num_model_requests"].as_i64().unwrap()
        })
        .sum();
    assert_eq!(n, w.expected.iter().filter(|e| e.stored).count() as i64);
    // Bad input is an OpenAI-shaped 400.
    for bad in [
        "/v1/usage",
        "/v1/usage?start_time=abc",
        "/v1/usage?start_time=0&bucket_width=2h",
        "/v1/usage?start_time=0&group_by=colour",
        "/v1/requests?limit=0",
    ] {
        let (status, v) = w.get(&w.key, bad).await;
        assert_eq!(status, 400, "{bad}: {v}");
        assert_openai_error(&v);
    }

    // Route statistics: every settled request counted once, attempts and fallbacks counted.
    let (status, _, stats) = w
        .lumina
        .request(
            Method::GET,
            "/admin/routes/stats",
            Some(&w.lumina.admin_key),
            None,
        )
        .await;
    assert_eq!(status, 200, "{stats}");
    let rows = stats["data"].as_array().unwrap();
    let all_settled =
        settlements(&events, &w.account).len() + settlements(&events, &w.other_account).len();
    let n: i64 = rows.iter().map(|r| r["requests"].as_i64().unwrap()).sum();
    assert_eq!(n as usize, all_settled, "{stats}");
    let all_attempts = events
        .iter()
        .filter(|e| e["event_type"] == "UpstreamAttempted")
        .count();
    let n: i64 = rows.iter().map(|r| r["attempts"].as_i64().unwrap()).sum();
    assert_eq!(n as usize, all_attempts);
    let primary_fast = rows
        .iter()
        .find(|r| r["path"] == "fast" && r["deployment"] == "primary/mock-fast")
        .unwrap_or_else(|| panic!("no fast/primary row: {stats}"));
    assert!(primary_fast["fallback_rate"].as_f64().unwrap() > 0.0);
    assert!(primary_fast["error_rate"].as_f64().unwrap() > 0.0);
    assert!(primary_fast["latency_ms"]["p50"].as_f64().unwrap() > 0.0);
    assert!(
        primary_fast["latency_ms"]["p99"].as_f64().unwrap()
            >= primary_fast["latency_ms"]["p50"].as_f64().unwrap()
    );
}

async fn no_account_reads_another(w: &World) {
    let foreign = &w.expected[0].id;
    let missing = "req_00000000000000000000000000";
    for id in [foreign.as_str(), missing] {
        let (status, v) = w.get(&w.other_key, &format!("/v1/requests/{id}")).await;
        assert_eq!(status, 404, "{id}: {v}");
        assert_openai_error(&v);
        let (status, _, v) = w
            .lumina
            .request(
                Method::POST,
                "/v1/feedback",
                Some(&w.other_key),
                Some(&json!({"request_id": id, "score": 0.0}).to_string()),
            )
            .await;
        assert_eq!(status, 404, "{id}: {v}");
    }
    // The same answer for a foreign id and a missing one, so ids do not leak.
    let (_, a) = w
        .get(&w.other_key, &format!("/v1/requests/{foreign}"))
        .await;
    let (_, b) = w
        .get(&w.other_key, &format!("/v1/requests/{missing}"))
        .await;
    assert_eq!(a["error"]["code"], b["error"]["code"], "{a} vs {b}");
    for path in [
        format!("/v1/requests?api_key_id={}", w.key_id),
        format!(
            "/v1/usage?start_time={}&api_key_ids={}",
            w.started, w.key_id
        ),
        format!(
            "/v1/usage?start_time={}&project_ids={}",
            w.started, w.project
        ),
    ] {
        let (status, v) = w.get(&w.other_key, &path).await;
        assert_eq!(status, 404, "{path}: {v}");
        assert_openai_error(&v);
    }
    // Unfiltered reads show only the caller's own.
    let (_, page) = w.get(&w.other_key, "/v1/requests").await;
    let data = page["data"].as_array().unwrap();
    assert_eq!(data.len(), 1, "{page}");
    assert_eq!(data[0]["account_id"], w.other_account.as_str());
    assert_eq!(data[0]["api_key_id"], w.other_key_id.as_str());
    let (_, usage) = w
        .get(&w.other_key, &format!("/v1/usage?start_time={}", w.started))
        .await;
    let n: i64 = usage["data"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|b| b["results"].as_array().unwrap())
        .map(|r| r["num_model_requests"].as_i64().unwrap())
        .sum();
    assert_eq!(n, 1);
    // The admin sees across accounts.
    let admin = w.lumina.admin_key.clone();
    let (status, _, trace) = w
        .lumina
        .request(
            Method::GET,
            &format!("/admin/requests/{foreign}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(trace["account_id"], w.account.as_str());
    let (_, _, page) = w
        .lumina
        .request(Method::GET, "/admin/requests?limit=100", Some(&admin), None)
        .await;
    assert_eq!(page["data"].as_array().unwrap().len(), w.expected.len() + 1);
    // And a customer key cannot use the admin variants.
    let (status, _, _) = w
        .lumina
        .request(
            Method::GET,
            &format!("/admin/requests/{foreign}"),
            Some(&w.key),
            None,
        )
        .await;
    assert_eq!(status, 401);
}

async fn feedback_lands_in_the_trace(w: &World) {
    let id = &w.expected[0].id;
    let (status, _, v) = w
        .lumina
        .request(
            Method::POST,
            "/v1/feedback",
            Some(&w.key),
            Some(&json!({"request_id": id, "score": 0.25, "label": "wrong", "comment": "off by one"}).to_string()),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, trace) = w.get(&w.key, &format!("/v1/requests/{id}")).await;
        if trace["feedback"].is_object() {
            assert_eq!(trace["feedback"]["score"], 0.25);
            assert_eq!(trace["feedback"]["label"], "wrong");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "feedback never reached the trace"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn eval_export_is_valid_and_private(w: &World) {
    let out = w.tmp.path().join("eval.jsonl");
    let data = w.tmp.path().join("data");
    let (ok, _, stderr) = run(
        &[
            "eval",
            "export",
            "--data-dir",
            data.to_str().unwrap(),
            "--database-url",
            &w.url,
            "--since",
            &w.started.to_string(),
            "--account",
            &w.account,
            "--out",
            out.to_str().unwrap(),
        ],
        &[],
    );
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains(&format!("exported {} requests", w.expected.len())),
        "{stderr}"
    );
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/eval/v2.schema.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let text = std::fs::read_to_string(&out).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), w.expected.len());
    for line in &lines {
        let errors: Vec<String> = validator.iter_errors(line).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{line}: {errors:?}");
    }
    let by_id: BTreeMap<&str, &Value> = lines
        .iter()
        .map(|l| (l["request_id"].as_str().unwrap(), l))
        .collect();
    for exp in &w.expected {
        let line = by_id[exp.id.as_str()];
        assert_eq!(line["outcome"], exp.status);
        assert_eq!(line["route"]["path"], exp.path);
        if exp.stored {
            assert_eq!(line["content"]["messages"], exp.messages, "{line}");
            if let Some(answer) = &exp.answer {
                assert_eq!(line["content"]["answer"], answer.as_str());
            }
        } else {
            assert!(line["content"].is_null(), "content leaked: {line}");
        }
    }
    // The stream's answer was captured from its chunks.
    let stream = by_id[w.expected[6].id.as_str()];
    assert!(
        !stream["content"]["answer"].as_str().unwrap().is_empty(),
        "{stream}"
    );
    // The fallback line lists both attempts.
    let fallback = by_id[w.expected[4].id.as_str()];
    assert_eq!(fallback["attempts"].as_array().unwrap().len(), 2);
    assert_eq!(fallback["attempts"][0]["fell_back"], true);
    // Feedback given through the API is in the dataset.
    assert_eq!(
        by_id[w.expected[0].id.as_str()]["feedback"]["label"],
        "wrong"
    );
    // A key without the opt-in never puts content in the log at all.
    let events = w.lumina.events();
    for e in events
        .iter()
        .filter(|e| e["event_type"] == "RequestContentRecorded")
    {
        assert_eq!(e["api_key_id"], w.key_id.as_str(), "{e}");
    }
    assert_eq!(
        events
            .iter()
            .filter(|e| e["event_type"] == "RequestContentRecorded")
            .count(),
        w.expected.iter().filter(|e| e.stored).count()
    );
}

/// Every row of every projector table, as sorted text.
async fn dump_views(url: &str) -> Vec<String> {
    let tables: Vec<(&str, &str)> = lumina_projector::read_model::TABLES
        .iter()
        .map(|t| (*t, ""))
        .collect();
    let mut out = dump_tables(url, &tables).await;
    out.sort();
    out
}

async fn rebuild_equals_live(w: &mut World) {
    w.lumina.stop().await;
    let live = dump_views(&w.url).await;
    for table in [
        "requests ",
        "request_attempts ",
        "usage_minutes ",
        "route_stats ",
        "request_content ",
    ] {
        assert!(
            live.iter().any(|l| l.starts_with(table)),
            "no {table}rows in the live views"
        );
    }
    let data = w.tmp.path().join("data");
    let (ok, _, stderr) = run(
        &[
            "projector",
            "rebuild",
            "--data-dir",
            data.to_str().unwrap(),
            "--database-url",
            &w.url,
        ],
        &[],
    );
    assert!(ok, "{stderr}");
    let rebuilt = dump_views(&w.url).await;
    assert_eq!(rebuilt.len(), live.len());
    for (a, b) in live.iter().zip(&rebuilt) {
        assert_eq!(a, b, "rebuilt views differ");
    }
}

async fn whole_story(backend: Backend) {
    let mut w = start(Mode::Embedded(backend)).await;
    the_views_show_exactly_what_happened(&mut w).await;
    no_account_reads_another(&w).await;
    feedback_lands_in_the_trace(&w).await;
    eval_export_is_valid_and_private(&w);
    freshness_is_exported(&w).await;
    rebuild_equals_live(&mut w).await;
}

async fn freshness_is_exported(w: &World) {
    let (status, _, ready) = w.lumina.request(Method::GET, "/readyz", None, None).await;
    assert_eq!(status, 200);
    let lag = ready["consumers"]["projector"]["event_to_view_ms"]
        .as_f64()
        .unwrap();
    assert!(lag > 0.0 && lag < 60_000.0, "{ready}");
    let res = reqwest::get(format!("{}/metrics", w.lumina.url))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let text = res.text().await.unwrap();
    for series in [
        "lumina_event_to_view_lag_seconds{consumer=\"projector\",quantile=\"0.99\"}",
        "lumina_event_to_view_lag_seconds_count{consumer=\"projector\"}",
        "lumina_consumer_events_applied_total{consumer=\"ledger\"}",
        "lumina_consumer_lag_events{consumer=\"projector\"}",
        "lumina_log_committed_position",
    ] {
        assert!(
            text.contains(series),
            "{series} missing from /metrics:\n{text}"
        );
    }
}

/// The same story in distributed mode, through the broker, up to what needs the embedded
/// process (its `/readyz` consumer detail and `lumina projector rebuild` over a data dir).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projector_views_in_distributed_mode() {
    let mut w = start(Mode::Distributed).await;
    the_views_show_exactly_what_happened(&mut w).await;
    no_account_reads_another(&w).await;
    feedback_lands_in_the_trace(&w).await;
    eval_export_is_valid_and_private(&w);
}

#[tokio::test]
async fn projector_views_on_sqlite() {
    whole_story(Backend::Sqlite).await;
}

#[tokio::test]
async fn projector_views_on_postgres() {
    whole_story(Backend::Postgres).await;
}

#[tokio::test]
async fn the_openai_sdk_reads_usage() {
    let python = std::env::var("LUMINA_TEST_PYTHON").unwrap_or_else(|_| {
        panic!("LUMINA_TEST_PYTHON is not set: run ./scripts/test.sh, which creates a venv with the openai package")
    });
    let mut w = start(Mode::Embedded(Backend::Sqlite)).await;
    let (code, _, _) = w
        .lumina
        .chat(&w.key.clone(), &user("lumina-fast", "count me"))
        .await;
    assert_eq!(code, 200);
    w.expected.push(Expect {
        id: String::new(),
        key_id: w.key_id.clone(),
        status: "completed",
        path: "fast",
        answer: None,
        messages: Value::Null,
        stored: true,
    });
    w.settled_views().await;
    let script = r#"
import sys
from openai import OpenAI
base, key, start = sys.argv[1], sys.argv[2], int(sys.argv[3])
client = OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
res = client.get("/usage", cast_to=object, options={"params": {"start_time": start, "bucket_width": "1d", "group_by": ["model"]}})
page = res
assert page["object"] == "page", page
results = [r for b in page["data"] for r in b["results"]]
assert sum(r["num_model_requests"] for r in results) == 1, page
assert results[0]["model"] == "fast", results
assert int(results[0]["credits_nano"]) > 0 and results[0]["credits"], results
listing = client.get("/requests", cast_to=object, options={"params": {"limit": 5}})
assert listing["object"] == "list" and len(listing["data"]) == 1, listing
print("ok", results[0]["credits"])
"#;
    let out = std::process::Command::new(python)
        .args(["-c", script, &w.lumina.url, &w.key, &w.started.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ok "));
}
