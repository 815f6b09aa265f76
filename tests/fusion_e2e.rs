//! Model Fusion against the real binary: a panel of three members answers in parallel, Lumina
//! compares the answers claim by claim, a synthesizer writes one answer, streamed or whole,
//! through the official OpenAI SDK; failed, late and cancelled members, a missed quorum, a
//! `max_cost` below the hold and a client gone mid-synthesis each leave the ledger exact.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use std::time::{Duration, Instant};

use common::upstream::{MockUpstream, Mocked, parse_sse};
use common::{
    Lumina, assert_openai_error, dashboard_session, header, nanos, payloads, reconciles,
    run_python, spent_after, user,
};
use futures::StreamExt;
use serde_json::{Value, json};

/// The planted disagreement: `beta` states another height than `alpha` and `gamma`.
const ALPHA: &str = "The Eiffel Tower is 330 metres tall. It stands in Paris on the Champ de Mars.";
const BETA: &str = "The Eiffel Tower is 324 metres tall. It stands in Paris on the Champ de Mars.";
const GAMMA: &str =
    "The Eiffel Tower is 330 metres tall. Gustave Eiffel's company built it for the 1889 fair.";

/// Three simulated members with fixed answers (`alpha` on fast, `beta` on balanced, `gamma` on
/// reasoning) and a simulated synthesizer behind `beta` on balanced.
fn simulated_panel() -> String {
    let provider = |name: &str, path: &str, answer: &str| {
        format!(
            "[[providers]]\nname = \"{name}\"\nkind = \"simulated\"\nmodels = {{ {path} = \"{name}-1\" }}\n[providers.simulated]\nanswer = {answer}\n\n",
            answer = json!(answer)
        )
    };
    format!(
        "{}{}{}{}[routes.fast]\nproviders = [\"alpha\"]\n\n[routes.balanced]\nproviders = [\"beta\", \"writer\"]\n\n[routes.reasoning]\nproviders = [\"gamma\"]\n\n[fusion]\nenabled = true\npanel = [\"alpha/alpha-1\", \"beta/beta-1\", \"gamma/gamma-1\"]\nsynthesizer = \"writer/writer-1\"\n",
        provider("alpha", "fast", ALPHA),
        provider("beta", "balanced", BETA),
        provider("gamma", "reasoning", GAMMA),
        provider(
            "writer",
            "balanced",
            "The Eiffel Tower is 330 metres tall, in Paris, built for the 1889 fair."
        ),
    )
}

/// [`simulated_panel`] with a simulated judge (behind `gamma` on reasoning) that answers
/// `verdict`.
fn simulated_panel_with_judge(verdict: &str) -> String {
    let judged = simulated_panel()
        .replace(
            "providers = [\"gamma\"]",
            "providers = [\"gamma\", \"judge\"]",
        )
        .replace(
            "synthesizer = \"writer/writer-1\"",
            "synthesizer = \"writer/writer-1\"\njudge = \"judge/judge-1\"",
        );
    format!(
        "[[providers]]\nname = \"judge\"\nkind = \"simulated\"\nmodels = {{ reasoning = \"judge-1\" }}\n[providers.simulated]\nanswer = {}\n\n{judged}",
        json!(verdict)
    )
}

/// Members `m1` (fast), `m2` (balanced) and `m3` (reasoning) and the synthesizer `synth`
/// (behind `m2` on balanced) on the mock upstream, breakers that do not open; `extra` goes
/// into `[fusion]`.
fn mock_panel(mock: &MockUpstream, extra: &str) -> String {
    let provider = |name: &str, path: &str| {
        format!(
            "[[providers]]\nname = \"{name}\"\nkind = \"openai\"\nbase_url = \"{}\"\nmodels = {{ {path} = \"{name}-model\" }}\ntimeout_ms = 30000\nfirst_byte_timeout_ms = 30000\n\n",
            mock.base_url(name)
        )
    };
    format!(
        "{}{}{}{}[routes.fast]\nproviders = [\"m1\"]\n\n[routes.balanced]\nproviders = [\"m2\", \"synth\"]\n\n[routes.reasoning]\nproviders = [\"m3\"]\n\n[breaker]\nconsecutive_failures = 1000\n\n[fusion]\nenabled = true\npanel = [\"m1/m1-model\", \"m2/m2-model\", \"m3/m3-model\"]\nsynthesizer = \"synth/synth-model\"\n{extra}\n",
        provider("m1", "fast"),
        provider("m2", "balanced"),
        provider("m3", "reasoning"),
        provider("synth", "balanced"),
    )
}

async fn simulated() -> (tempfile::TempDir, Lumina) {
    let tmp = tempfile::tempdir().unwrap();
    let lumina = Lumina::start_with_config(
        &tmp.path().join("data"),
        &tmp.path().join("out"),
        &[],
        Some(&simulated_panel()),
    )
    .await;
    (tmp, lumina)
}

/// A fresh account with 10 credits and a key of it.
async fn customer(lumina: &Lumina) -> (String, String) {
    let account = lumina.account("Fusion Co", "10").await;
    let (_, key) = lumina.key(&account).await;
    (account, key)
}

/// `/v1/requests/{id}` once the projector shows it with `attempts` attempts.
async fn trace(lumina: &Lumina, key: &str, id: &str, attempts: usize) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, _, v) = lumina
            .request(
                reqwest::Method::GET,
                &format!("/v1/requests/{id}"),
                Some(key),
                None,
            )
            .await;
        let n = v["attempts"].as_array().map_or(0, Vec::len);
        if (status == 200 && n >= attempts) || Instant::now() > deadline {
            assert_eq!(status, 200, "{v}");
            assert_eq!(n, attempts, "{v}");
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Members of one side of a contradiction.
fn side_members(side: &Value) -> Vec<String> {
    side["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap().to_string())
        .collect()
}

/// Asserts `fusion` (the `lumina.fusion` report) shows three answered members and the planted
/// height as a contradiction of `beta` against `alpha` and `gamma`.
fn assert_planted_contradiction(fusion: &Value) {
    let panel = fusion["panel"].as_array().unwrap();
    assert_eq!(panel.len(), 3, "{fusion}");
    for entry in panel {
        assert_eq!(entry["status"], "completed", "{entry}");
        for field in [
            "deployment",
            "path",
            "latency_ms",
            "usage",
            "cost",
            "answer",
        ] {
            assert!(!entry[field].is_null(), "no {field} in {entry}");
        }
    }
    let deployments: Vec<&str> = panel
        .iter()
        .map(|e| e["deployment"].as_str().unwrap())
        .collect();
    assert_eq!(
        deployments,
        ["alpha/alpha-1", "beta/beta-1", "gamma/gamma-1"]
    );
    let contradictions = fusion["analysis"]["contradictions"].as_array().unwrap();
    let height = contradictions
        .iter()
        .find(|c| {
            c["sides"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["value"].as_str().unwrap().contains("324"))
        })
        .unwrap_or_else(|| panic!("the planted 324 is not a contradiction: {fusion}"));
    let sides = height["sides"].as_array().unwrap();
    assert_eq!(sides.len(), 2, "{height}");
    let (with_324, with_330): (Vec<&Value>, Vec<&Value>) = sides
        .iter()
        .partition(|s| s["value"].as_str().unwrap().contains("324"));
    assert_eq!(side_members(with_324[0]), ["beta/beta-1"], "{height}");
    assert!(with_330[0]["value"].as_str().unwrap().contains("330"));
    assert_eq!(
        side_members(with_330[0]),
        ["alpha/alpha-1", "gamma/gamma-1"],
        "{height}"
    );
    let agreement = fusion["agreement"].as_f64().unwrap();
    assert!((0.0..1.0).contains(&agreement), "{agreement}");
    assert_eq!(fusion["synthesizer"]["deployment"], "writer/writer-1");
}

const SDK_SCRIPT: &str = r#"
import sys, json
from openai import OpenAI
base, key = sys.argv[1], sys.argv[2]
client = OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
messages = [{"role": "user", "content": "How tall is the Eiffel Tower?"}]
raw = client.chat.completions.with_raw_response.create(model="lumina-fusion", messages=messages)
whole = raw.parse()
out = {"whole": {"request_id": raw.headers["x-request-id"], "text": whole.choices[0].message.content,
                 "usage": whole.usage.model_dump(), "lumina": whole.model_extra["lumina"]}}
raw = client.chat.completions.with_raw_response.create(model="lumina-fusion", messages=messages,
    stream=True, stream_options={"include_usage": True})
chunks = [c.model_dump() for c in raw.parse()]
out["stream"] = {"request_id": raw.headers["x-request-id"], "chunks": chunks}
print(json.dumps(out))
"#;

#[tokio::test]
async fn the_openai_sdk_gets_a_fused_answer_with_the_planted_contradiction_whole_and_streamed() {
    let (_tmp, lumina) = simulated().await;
    let (account, key) = customer(&lumina).await;
    let stdout = run_python(SDK_SCRIPT, vec![lumina.url.clone(), key.clone()]).await;
    let out: Value = serde_json::from_str(stdout.trim()).unwrap();

    let whole = &out["whole"];
    assert!(
        whole["text"].as_str().unwrap().contains("330 metres"),
        "{whole}"
    );
    assert_planted_contradiction(&whole["lumina"]["fusion"]);
    let whole_cost = nanos(&whole["usage"]["cost"].to_string());
    assert!(whole_cost > 0, "{whole}");
    // usage sums every call: three members and the synthesizer.
    let fusion = &whole["lumina"]["fusion"];
    let summed: u64 = fusion["panel"]
        .as_array()
        .unwrap()
        .iter()
        .chain([&fusion["synthesizer"]])
        .map(|e| e["usage"]["completion_tokens"].as_u64().unwrap())
        .sum();
    assert_eq!(whole["usage"]["completion_tokens"], summed, "{whole}");
    let parts: i64 = fusion["panel"]
        .as_array()
        .unwrap()
        .iter()
        .chain([&fusion["synthesizer"]])
        .map(|e| nanos(&e["cost"].to_string()))
        .sum();
    assert_eq!(parts, whole_cost, "the calls' costs add up to usage.cost");

    let chunks = out["stream"]["chunks"].as_array().unwrap();
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"].as_array()?.first()?["delta"]["content"].as_str())
        .collect();
    assert!(text.contains("330 metres"), "{text}");
    let report = chunks
        .iter()
        .position(|c| !c["lumina"].is_null())
        .unwrap_or_else(|| panic!("no lumina chunk: {chunks:?}"));
    let usage = chunks
        .iter()
        .position(|c| !c["usage"].is_null())
        .expect("no usage chunk");
    assert!(report < usage, "the report comes before the usage chunk");
    assert_eq!(chunks[report]["choices"], json!([]));
    assert_planted_contradiction(&chunks[report]["lumina"]["fusion"]);
    let stream_cost = nanos(&chunks[usage]["usage"]["cost"].to_string());
    assert!(stream_cost > 0);
    assert_eq!(
        spent_after(&lumina, &account, whole_cost + stream_cost).await,
        whole_cost + stream_cost,
        "usage.cost is what the ledger charged"
    );

    for (id, cost) in [
        (&whole["request_id"], whole_cost),
        (&out["stream"]["request_id"], stream_cost),
    ] {
        let events = lumina.events_of(id.as_str().unwrap());
        let roles: Vec<&str> = payloads(&events, "UpstreamAttempted")
            .iter()
            .map(|p| p["role"].as_str().unwrap())
            .collect();
        assert_eq!(
            roles.iter().filter(|r| **r == "panel").count(),
            3,
            "{roles:?}"
        );
        assert_eq!(roles.iter().filter(|r| **r == "synthesizer").count(), 1);
        let panel = payloads(&events, "FusionPanelCompleted");
        assert_eq!(panel.len(), 1);
        let disagreements = panel[0]["disagreements"].as_array().unwrap();
        assert!(
            disagreements
                .iter()
                .any(|d| d.as_str().unwrap().contains("324")),
            "{disagreements:?}"
        );
        let settled = payloads(&events, "RequestSettled");
        assert_eq!(settled[0]["path"], "fusion", "{settled:?}");
        assert_eq!(settled[0]["charge_nano"], cost, "{settled:?}");
    }
    reconciles(&lumina);
}

#[tokio::test]
async fn a_failed_member_is_named_and_free_and_a_missed_quorum_is_a_502_charging_only_answers() {
    let Mocked {
        tmp: _tmp,
        mock,
        lumina,
    } = Mocked::start(|mock| mock_panel(mock, ""), &[]).await;

    // One member's upstream answers 500: the others are fused.
    mock.set("m2", "fail500");
    let (account, key) = customer(&lumina).await;
    let (status, headers, text) = lumina
        .chat(&key, &user("lumina-fusion", "Name three rivers."))
        .await;
    assert_eq!(status, 200, "{text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    let panel = body["lumina"]["fusion"]["panel"].as_array().unwrap();
    assert_eq!(panel.len(), 3);
    let failed = &panel[1];
    assert_eq!(failed["deployment"], "m2/m2-model", "{failed}");
    assert_eq!(failed["status"], "failed");
    assert!(
        failed["error"].as_str().unwrap().contains("500"),
        "{failed}"
    );
    assert_eq!(nanos(&failed["cost"].to_string()), 0);
    assert!(failed["answer"].is_null());
    for answered in [&panel[0], &panel[2]] {
        assert_eq!(answered["status"], "completed", "{answered}");
    }
    assert!(
        body["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .starts_with("Mock answer to:")
    );
    // The dashboard's trace shows the panel: three members, the failed one among them.
    let session = dashboard_session(&lumina.url, &key).await;
    let id = header(&headers, "x-request-id");
    let http = reqwest::Client::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let page = loop {
        let r = http
            .get(format!("{}/dashboard/requests/{id}", lumina.url))
            .header("cookie", &session)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let page = r.text().await.unwrap();
        if status == 200 && page.contains("fusion-panel") {
            break page;
        }
        assert!(std::time::Instant::now() < deadline, "{status}: {page}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(
        page.contains("3 panel members, 2 answered") && !page.contains("not synthesized"),
        "{page}"
    );
    assert_eq!(
        page.matches(r#"<td class="role">panel</td>"#).count(),
        3,
        "{page}"
    );
    assert_eq!(
        page.matches(r#"<td class="role">synthesizer</td>"#).count(),
        1,
        "{page}"
    );
    let cost = nanos(&body["usage"]["cost"].to_string());
    assert_eq!(spent_after(&lumina, &account, cost).await, cost);
    let id = header(&headers, "x-request-id");
    let trace = trace(&lumina, &key, id, 4).await;
    let attempts = trace["attempts"].as_array().unwrap();
    let m2 = attempts
        .iter()
        .find(|a| a["deployment"] == "m2/m2-model")
        .unwrap_or_else(|| panic!("{trace}"));
    assert_eq!(m2["outcome"], "error", "{m2}");
    assert_eq!(m2["http_status"], 500);
    assert_eq!(m2["role"], "panel");
    let synth = attempts
        .iter()
        .find(|a| a["deployment"] == "synth/synth-model")
        .unwrap();
    assert_eq!(synth["role"], "synthesizer");
    assert_eq!(trace["path"], "fusion", "{trace}");
    let stats = lumina
        .admin(reqwest::Method::GET, "/admin/routes/stats", None, 200)
        .await;
    let row = |deployment: &str| {
        stats["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["path"] == "fusion" && r["deployment"] == deployment)
            .unwrap_or_else(|| panic!("no fusion row for {deployment}: {stats}"))
            .clone()
    };
    assert_eq!(row("synth/synth-model")["requests"], 1, "{stats}");
    assert_eq!(row("m2/m2-model")["attempts"], 1, "{stats}");
    assert_eq!(row("m2/m2-model")["error_rate"], 1.0, "{stats}");
    // The eval export carries the panel: every call with its role.
    let data = lumina.data_dir.to_str().unwrap().to_string();
    let (ok, exported, stderr) = common::run(
        &[
            "eval",
            "export",
            "--data-dir",
            &data,
            "--since",
            "2020-01-01",
            "--account",
            &account,
            "--out",
            "-",
        ],
        &[],
    );
    assert!(ok, "{stderr}");
    let line: Value = exported
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|l| l["request_id"] == id)
        .unwrap_or_else(|| panic!("{id} not exported: {exported}"));
    let roles: Vec<(&str, &str)> = line["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["deployment"].as_str().unwrap(),
                a["role"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(roles.len(), 4, "{line}");
    assert!(roles.contains(&("m2/m2-model", "panel")), "{roles:?}");
    assert!(
        roles.contains(&("synth/synth-model", "synthesizer")),
        "{roles:?}"
    );

    // What one answered call of m1 (fast) and of m3 (reasoning) costs, on its own path.
    mock.set("m2", "ok");
    let (single_account, single_key) = customer(&lumina).await;
    let mut one_call = Vec::new();
    for model in ["lumina-fast", "lumina-reasoning"] {
        let (status, _, text) = lumina
            .chat(&single_key, &user(model, "Name three rivers."))
            .await;
        assert_eq!(status, 200, "{text}");
        let single: Value = serde_json::from_str(&text).unwrap();
        one_call.push(nanos(&single["usage"]["cost"].to_string()));
    }
    let both: i64 = one_call.iter().sum();
    assert_eq!(spent_after(&lumina, &single_account, both).await, both);

    // Two of three fail at once: the third is cancelled as soon as the quorum of two is out
    // of reach, and nothing is charged.
    mock.set("m1", "fail503");
    mock.set("m2", "fail429");
    mock.set("m3", "delay=3000");
    mock.clear();
    let (account, key) = customer(&lumina).await;
    let started = Instant::now();
    let (status, headers, text) = lumina
        .chat(&key, &user("lumina-fusion", "Name three rivers."))
        .await;
    assert_eq!(status, 502, "{text}");
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "m3 was awaited"
    );
    let body: Value = serde_json::from_str(&text).unwrap();
    let message = assert_openai_error(&body)["message"].as_str().unwrap();
    assert!(
        message.contains("missed its quorum: 0 of 3 members answered, 2 needed"),
        "{message}"
    );
    for named in [
        "m1/m1-model",
        "HTTP 503",
        "m2/m2-model",
        "HTTP 429",
        "m3/m3-model: cancelled",
    ] {
        assert!(message.contains(named), "{named} not in {message}");
    }
    assert!(mock.requests_of("synth").is_empty(), "no synthesis");
    assert_eq!(spent_after(&lumina, &account, 0).await, 0);
    let events = lumina.events_of(header(&headers, "x-request-id"));
    let settled = payloads(&events, "RequestSettled");
    assert_eq!(settled[0]["outcome"], "failed", "{settled:?}");
    assert_eq!(settled[0]["error_class"], "quorum_missed");

    // A quorum of all three, one member stalled past the deadline: the two that answered are
    // charged, nothing else, and the hold is released.
    mock.set("m1", "ok");
    mock.set("m2", "stall");
    mock.set("m3", "ok");
    let (account, key) = customer(&lumina).await;
    let mut body = user("lumina-fusion", "Name three rivers.");
    body["lumina"] = json!({"fusion": {"quorum": 3, "member_deadline_ms": 1000}});
    let (status, headers, text) = lumina.chat(&key, &body).await;
    assert_eq!(status, 502, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    let message = assert_openai_error(&v)["message"].as_str().unwrap();
    assert!(
        message.contains("2 of 3 members answered, 3 needed"),
        "{message}"
    );
    assert!(
        message.contains("m2/m2-model: cancelled after member_deadline_ms"),
        "{message}"
    );
    assert_eq!(
        spent_after(&lumina, &account, both).await,
        both,
        "only m1's and m3's completed calls are charged"
    );
    let events = lumina.events_of(header(&headers, "x-request-id"));
    let settled = payloads(&events, "RequestSettled");
    assert_eq!(settled[0]["charge_nano"], both, "{settled:?}");
    assert_eq!(settled[0]["error_class"], "quorum_missed");
    reconciles(&lumina);
}

#[tokio::test]
async fn a_member_slower_than_the_deadline_is_cancelled_without_delaying_the_answer() {
    let Mocked {
        tmp: _tmp,
        mock,
        lumina,
    } = Mocked::start(|mock| mock_panel(mock, "member_deadline_ms = 1000"), &[]).await;
    mock.set("m3", "delay=20000");
    let (account, key) = customer(&lumina).await;
    for stream in [false, true] {
        let started = Instant::now();
        let mut body = user("lumina-fusion", "Name three rivers.");
        body["stream"] = json!(stream);
        body["stream_options"] = json!({"include_usage": true});
        let (status, _, text) = lumina.chat(&key, &body).await;
        let took = started.elapsed();
        assert_eq!(status, 200, "{text}");
        assert!(
            took < Duration::from_secs(8),
            "the answer waited for the slow member: {took:?}"
        );
        let (fusion, cost) = if stream {
            let (chunks, done) = parse_sse(&text);
            assert!(done);
            let report = chunks.iter().find(|c| !c["lumina"].is_null()).unwrap();
            let usage = chunks.iter().find(|c| !c["usage"].is_null()).unwrap();
            (
                report["lumina"]["fusion"].clone(),
                nanos(&usage["usage"]["cost"].to_string()),
            )
        } else {
            let v: Value = serde_json::from_str(&text).unwrap();
            (
                v["lumina"]["fusion"].clone(),
                nanos(&v["usage"]["cost"].to_string()),
            )
        };
        let late = &fusion["panel"][2];
        assert_eq!(late["status"], "cancelled", "{fusion}");
        assert!(
            late["error"]
                .as_str()
                .unwrap()
                .contains("member_deadline_ms"),
            "{late}"
        );
        assert_eq!(nanos(&late["cost"].to_string()), 0);
        assert_eq!(late["usage"]["completion_tokens"], 0);
        assert!(cost > 0);
    }
    let charged: i64 = payloads(&lumina.events(), "RequestSettled")
        .iter()
        .map(|p| p["charge_nano"].as_i64().unwrap())
        .sum();
    assert_eq!(spent_after(&lumina, &account, charged).await, charged);
    let cancelled = payloads(&lumina.events(), "UpstreamAttempted")
        .into_iter()
        .filter(|p| p["deployment"] == "m3/m3-model")
        .count();
    assert_eq!(
        cancelled, 2,
        "each cancelled call is an attempt in the trace"
    );
    reconciles(&lumina);
}

#[tokio::test]
async fn a_max_cost_below_the_hold_is_a_402_before_any_upstream_call() {
    let Mocked {
        tmp: _tmp,
        mock,
        lumina,
    } = Mocked::start(|mock| mock_panel(mock, ""), &[]).await;
    let (account, key) = customer(&lumina).await;
    let mut body = user("lumina-fusion", "Name three rivers.");
    body["lumina"] = json!({"fusion": {"max_cost": 0.000001}});
    let (status, _, text) = lumina.chat(&key, &body).await;
    assert_eq!(status, 402, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    let error = assert_openai_error(&v);
    assert_eq!(error["code"], "fusion_max_cost");
    assert_eq!(error["param"], "lumina.fusion.max_cost");
    assert!(mock.requests().is_empty(), "{:?}", mock.requests());
    assert_eq!(lumina.balance(&account).await["spent_nano"], 0);
    assert_eq!(lumina.balance(&account).await["held_nano"], 0);

    // Invalid settings are 400s naming the parameter.
    for (fusion, param) in [
        (json!({"quorum": 4}), "lumina.fusion.quorum"),
        (json!({"panel": ["fast"]}), "lumina.fusion.panel"),
        (
            json!({"panel": ["fast", "nope/x"]}),
            "lumina.fusion.panel[1]",
        ),
        (json!({"max_cost": -1}), "lumina.fusion.max_cost"),
        (
            json!({"member_deadline_ms": 0}),
            "lumina.fusion.member_deadline_ms",
        ),
        (json!({"colour": "red"}), "lumina.fusion.colour"),
    ] {
        let mut body = user("lumina-fusion", "Name three rivers.");
        body["lumina"] = json!({ "fusion": fusion });
        let (status, _, text) = lumina.chat(&key, &body).await;
        assert_eq!(status, 400, "{fusion}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(assert_openai_error(&v)["param"], param, "{text}");
    }
    assert!(mock.requests().is_empty());

    // The same request under a cap that covers it is answered.
    let mut body = user("lumina-fusion", "Name three rivers.");
    body["lumina"] = json!({"fusion": {"max_cost": "5"}});
    let (status, _, text) = lumina.chat(&key, &body).await;
    assert_eq!(status, 200, "{text}");
}

#[tokio::test]
async fn a_client_gone_mid_synthesis_leaves_every_call_settled() {
    let Mocked {
        tmp: _tmp,
        mock,
        lumina,
    } = Mocked::start(|mock| mock_panel(mock, ""), &[]).await;
    mock.set("synth", "slow");
    let (account, key) = customer(&lumina).await;
    let mut body = user("lumina-fusion", "Name three rivers.");
    body["stream"] = json!(true);
    let res = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", lumina.url))
        .bearer_auth(&key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let id = res.headers()["x-request-id"].to_str().unwrap().to_string();
    let mut stream = res.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "), "{first:?}");
    drop(stream);

    let deadline = Instant::now() + Duration::from_secs(20);
    let events = loop {
        let events = lumina.events_of(&id);
        if !payloads(&events, "RequestSettled").is_empty() || Instant::now() > deadline {
            break events;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let settled = payloads(&events, "RequestSettled");
    assert_eq!(settled.len(), 1, "{events:?}");
    let spent = settled[0]["charge_nano"].as_i64().unwrap();
    assert_eq!(spent_after(&lumina, &account, spent).await, spent);
    assert_eq!(
        payloads(&events, "UpstreamAttempted").len(),
        4,
        "three members and the synthesizer: {events:?}"
    );
    // The members' answers were charged even though the synthesis was cut short.
    assert!(spent > 0);
    assert!(mock.requests_of("synth").len() == 1);
    reconciles(&lumina);
}

const PROOF: &str = "Prove step by step that there are infinitely many primes, then explain why \
                     the proof generalizes to primes of the form 4k+3.";

#[tokio::test]
async fn a_policy_sends_the_task_classes_it_allows_to_fusion_and_a_barred_key_never_fuses() {
    let Mocked {
        tmp: _tmp,
        mock: _mock,
        lumina,
    } = Mocked::start(|mock| mock_panel(mock, ""), &[]).await;
    let account = lumina.account("Policy Co", "10").await;
    let (_, key) = lumina.key(&account).await;
    let (_, barred) = lumina
        .key_with(&account, json!({"allow_fusion": false}))
        .await;

    // Before the policy allows it, lumina-auto never fuses.
    let (status, headers, text) = lumina.chat(&key, &user("lumina-auto", PROOF)).await;
    assert_eq!(status, 200, "{text}");
    assert_ne!(header(&headers, "x-lumina-route"), "fusion");

    let shown = lumina
        .admin(reqwest::Method::GET, "/admin/policies/active", None, 200)
        .await;
    let mut doc = shown["policy"].clone();
    doc["version"] = json!(shown["policy"]["version"].as_i64().unwrap() + 1);
    doc["task_classes"] = json!({"math": {"min_path": "reasoning", "fusion": true}});
    lumina
        .admin(
            reqwest::Method::POST,
            "/admin/policies",
            Some(doc.clone()),
            201,
        )
        .await;

    let (status, headers, text) = lumina.chat(&key, &user("lumina-auto", PROOF)).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(header(&headers, "x-lumina-route"), "fusion");
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        body["lumina"]["fusion"]["panel"].as_array().unwrap().len(),
        3
    );
    let events = lumina.events_of(header(&headers, "x-request-id"));
    let routed = payloads(&events, "RequestRouted");
    assert_eq!(routed[0]["path"], "fusion", "{routed:?}");
    assert_eq!(routed[0]["task_class"], "math");

    // Another task class is not fused.
    let (status, headers, _) = lumina
        .chat(&key, &user("lumina-auto", "Say hello to Ana."))
        .await;
    assert_eq!(status, 200);
    assert_ne!(header(&headers, "x-lumina-route"), "fusion");

    // A barred key: lumina-auto stays on reasoning, lumina-fusion is refused before any hold.
    let (status, headers, text) = lumina.chat(&barred, &user("lumina-auto", PROOF)).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(header(&headers, "x-lumina-route"), "reasoning");
    let (status, _, text) = lumina.chat(&barred, &user("lumina-fusion", PROOF)).await;
    assert_eq!(status, 403, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    let error = assert_openai_error(&v);
    assert_eq!(error["code"], "fusion_not_allowed");
    assert_eq!(error["param"], "model");
    let listed = |key: String| {
        let lumina = &lumina;
        async move {
            let (status, _, v) = lumina
                .request(reqwest::Method::GET, "/v1/models", Some(&key), None)
                .await;
            assert_eq!(status, 200, "{v}");
            v["data"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["id"] == "lumina-fusion")
        }
    };
    assert!(
        listed(key.clone()).await,
        "an allowed key sees lumina-fusion"
    );
    assert!(!listed(barred.clone()).await, "a barred key does not");
    let keys = lumina
        .admin(
            reqwest::Method::GET,
            &format!("/admin/keys?account_id={account}"),
            None,
            200,
        )
        .await;
    let allowed: Vec<bool> = keys["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["allow_fusion"].as_bool().unwrap())
        .collect();
    assert_eq!(allowed.iter().filter(|a| !**a).count(), 1, "{keys}");

    // A policy that allows Fusion for a class it keeps off reasoning is refused.
    doc["version"] = json!(doc["version"].as_i64().unwrap() + 1);
    doc["task_classes"] = json!({"chat": {"max_path": "balanced", "fusion": true}});
    let refused = lumina
        .admin(reqwest::Method::POST, "/admin/policies", Some(doc), 400)
        .await;
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("task_classes.chat.fusion"),
        "{refused}"
    );
}

#[tokio::test]
async fn eval_run_weighs_fusion_against_the_best_single_path_on_the_shipped_dataset() {
    let Mocked {
        tmp: _tmp,
        mock: _mock,
        lumina,
    } = Mocked::start(|mock| mock_panel(mock, ""), &[]).await;
    let (account, key) = customer(&lumina).await;
    let dataset = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("datasets/evals/fusion.jsonl")
        .to_str()
        .unwrap()
        .to_string();
    let items = std::fs::read_to_string(&dataset).unwrap().lines().count();
    let url = lumina.url.clone();
    let args = move |json: bool| {
        let mut a: Vec<String> = [
            "eval",
            "run",
            "--dataset",
            &dataset,
            "--models",
            "lumina-fusion,lumina-reasoning,lumina-fast",
            "--url",
            &url,
            "--key",
            &key,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if json {
            a.push("--json".into());
        }
        a
    };
    let run_eval = |args: Vec<String>| async move {
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            common::run(&args, &[])
        })
        .await
        .unwrap()
    };
    let (ok, text, stderr) = run_eval(args(false)).await;
    assert!(ok, "{stderr}");
    let line = text
        .lines()
        .find(|l| l.starts_with("lumina-fusion vs "))
        .unwrap_or_else(|| panic!("no Fusion comparison:\n{text}"));
    assert!(line.contains("(the best single model)"), "{line}");
    assert!(
        line.contains("mean score") && line.contains("cost ×"),
        "{line}"
    );

    let (ok, json, stderr) = run_eval(args(true)).await;
    assert!(ok, "{stderr}");
    let report: Value = serde_json::from_str(&json).unwrap();
    let models = report["models"].as_array().unwrap();
    let fusion = &models[0];
    assert_eq!(fusion["model"], "lumina-fusion");
    assert_eq!(fusion["items"], items);
    assert_eq!(fusion["errors"], 0, "{report}");
    let comparison = &report["fusion"];
    let versus = comparison["versus"].as_str().unwrap();
    let single = models.iter().find(|m| m["model"] == versus).unwrap();
    assert_eq!(
        nanos(comparison["extra_cost"].as_str().unwrap()),
        fusion["cost_nano"].as_i64().unwrap() - single["cost_nano"].as_i64().unwrap()
    );
    assert!(
        fusion["cost_nano"].as_i64().unwrap() > single["cost_nano"].as_i64().unwrap(),
        "a panel of three and a synthesizer costs more than one call: {report}"
    );
    let results = report["results"].as_array().unwrap();
    assert!(
        results
            .iter()
            .filter(|r| r["model"] == "lumina-fusion")
            .all(|r| r["path"] == "fusion"),
        "{report}"
    );
    // Both runs' answers are exactly what the ledger charged.
    let costs: i64 = models
        .iter()
        .map(|m| m["cost_nano"].as_i64().unwrap())
        .sum();
    assert_eq!(
        spent_after(&lumina, &account, 2 * costs).await,
        2 * costs,
        "two runs of the same answers"
    );
}

#[tokio::test]
async fn a_judge_verdict_is_validated_and_one_that_does_not_validate_leaves_lumina_s_analysis() {
    let valid = json!({
        "consensus": ["The Eiffel Tower stands in Paris."],
        "contradictions": [{"claim": "The tower's height", "sides": [
            {"position": "330 metres", "members": ["alpha/alpha-1", "gamma/gamma-1"]},
            {"position": "324 metres", "members": ["beta/beta-1"]}]}],
        "partial_coverage": [],
        "unique_insights": [{"claim": "Built for the 1889 fair.", "member": "gamma/gamma-1"}],
        "blind_spots": ["The antennas added since."]
    })
    .to_string();
    let naming_a_stranger = valid.replace("gamma/gamma-1\"}]", "delta/delta-1\"}]");
    assert_ne!(valid, naming_a_stranger);
    for (verdict, status) in [
        (valid.as_str(), "valid"),
        (naming_a_stranger.as_str(), "invalid"),
        ("The panel mostly agrees.", "invalid"),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let lumina = Lumina::start_with_config(
            &tmp.path().join("data"),
            &tmp.path().join("out"),
            &[],
            Some(&simulated_panel_with_judge(verdict)),
        )
        .await;
        let (account, key) = customer(&lumina).await;
        let (code, headers, text) = lumina
            .chat(
                &key,
                &user("lumina-fusion", "How tall is the Eiffel Tower?"),
            )
            .await;
        assert_eq!(code, 200, "{text}");
        let body: Value = serde_json::from_str(&text).unwrap();
        let fusion = &body["lumina"]["fusion"];
        let judge = &fusion["judge"];
        assert_eq!(judge["status"], status, "{judge}");
        assert_eq!(judge["deployment"], "judge/judge-1");
        assert!(
            nanos(&judge["cost"].to_string()) > 0,
            "the judge's call is charged"
        );
        if status == "valid" {
            assert_eq!(
                judge["verdict"]["contradictions"][0]["sides"][1]["members"],
                json!(["beta/beta-1"])
            );
            assert_eq!(
                judge["verdict"]["blind_spots"][0],
                "The antennas added since."
            );
        } else {
            assert!(judge["verdict"].is_null());
            assert!(!judge["error"].as_str().unwrap().is_empty(), "{judge}");
        }
        // Lumina's own analysis stands either way.
        assert_planted_contradiction(fusion);
        let cost = nanos(&body["usage"]["cost"].to_string());
        let calls: i64 = fusion["panel"]
            .as_array()
            .unwrap()
            .iter()
            .chain([judge, &fusion["synthesizer"]])
            .map(|c| nanos(&c["cost"].to_string()))
            .sum();
        assert_eq!(
            calls, cost,
            "every call, the judge's included, is in usage.cost"
        );
        assert_eq!(spent_after(&lumina, &account, cost).await, cost);
        let events = lumina.events_of(header(&headers, "x-request-id"));
        let judged: Vec<&Value> = payloads(&events, "UpstreamAttempted")
            .into_iter()
            .filter(|p| p["role"] == "judge")
            .collect();
        assert_eq!(judged.len(), 1, "{events:?}");
        assert_eq!(judged[0]["deployment"], "judge/judge-1");
    }
}

#[tokio::test]
async fn anthropic_messages_clients_get_the_fusion_report_too() {
    let (_tmp, lumina) = simulated().await;
    let (account, key) = customer(&lumina).await;
    let http = reqwest::Client::new();
    let mut spent = 0;
    for stream in [false, true] {
        let body = json!({"model": "lumina-fusion", "max_tokens": 256, "stream": stream,
            "messages": [{"role": "user", "content": "How tall is the Eiffel Tower?"}]});
        let res = http
            .post(format!("{}/v1/messages", lumina.url))
            .header("x-api-key", &key)
            .header("anthropic-version", "2023-06-01")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let text = res.text().await.unwrap();
        let (report, usage, answer) = if stream {
            let events = common::parse_anthropic_sse(&text);
            let delta = &events
                .iter()
                .find(|(kind, _)| kind == "message_delta")
                .unwrap_or_else(|| panic!("no message_delta: {text}"))
                .1;
            let answer: String = events
                .iter()
                .filter_map(|(_, e)| e["delta"]["text"].as_str())
                .collect();
            (delta["lumina"].clone(), delta["usage"].clone(), answer)
        } else {
            let v: Value = serde_json::from_str(&text).unwrap();
            let answer = v["content"][0]["text"].as_str().unwrap_or("").to_string();
            (v["lumina"].clone(), v["usage"].clone(), answer)
        };
        assert!(answer.contains("330 metres"), "{text}");
        assert_planted_contradiction(&report["fusion"]);
        spent += nanos(&usage["cost"].to_string());
    }
    assert!(spent > 0);
    assert_eq!(spent_after(&lumina, &account, spent).await, spent);
}

#[tokio::test]
async fn responses_clients_get_the_fusion_report_too() {
    let (_tmp, lumina) = simulated().await;
    let (account, key) = customer(&lumina).await;
    let mut spent = 0;
    for stream in [false, true] {
        let body = json!({"model": "lumina-fusion", "stream": stream,
            "input": "How tall is the Eiffel Tower?"});
        let res = reqwest::Client::new()
            .post(format!("{}/v1/responses", lumina.url))
            .bearer_auth(&key)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = res.status();
        let text = res.text().await.unwrap();
        assert_eq!(status, 200, "{text}");
        let response = if stream {
            common::parse_anthropic_sse(&text)
                .into_iter()
                .find(|(kind, _)| kind == "response.completed")
                .unwrap_or_else(|| panic!("no response.completed: {text}"))
                .1["response"]
                .clone()
        } else {
            serde_json::from_str::<Value>(&text).unwrap()
        };
        assert_planted_contradiction(&response["lumina"]["fusion"]);
        spent += nanos(&response["usage"]["cost"].to_string());
        // The stored response keeps it.
        let id = response["id"].as_str().unwrap();
        let (status, _, stored) = lumina
            .request(
                reqwest::Method::GET,
                &format!("/v1/responses/{id}"),
                Some(&key),
                None,
            )
            .await;
        assert_eq!(status, 200, "{stored}");
        assert_planted_contradiction(&stored["lumina"]["fusion"]);
    }
    assert_eq!(spent_after(&lumina, &account, spent).await, spent);
}
