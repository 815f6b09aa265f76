//! `/v1/embeddings` against the real binary: the official `openai` Python SDK embeds a string
//! and a list (its default base64 encoding and floats) from the simulated provider; against
//! OpenAI-compatible upstreams the request is routed, falls back, refuses bad answers and bad
//! input in OpenAI's error shape, and every cost told equals the ledger's charge, with
//! `lumina reconcile` clean.
//!
//! Needs `LUMINA_TEST_PYTHON`, a Python with the `openai` package (`scripts/test.sh` builds one).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use common::upstream::{EMBED_TOKENS_PER_INPUT, MockUpstream, Mocked, reset};
use common::{
    Lumina, assert_openai_error, header, logged_apis, nanos, payloads, reconciles, run_python,
    spent_after,
};
use reqwest::Method;
use serde_json::{Value, json};

const SDK_SCRIPT: &str = r#"
import sys, json, math, openai
from openai import OpenAI
base, key = sys.argv[1], sys.argv[2]
c = OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
costs = []
assert "lumina-embeddings" in [m.id for m in c.models.list()]

def told(raw):
    e = raw.parse()
    cost = raw.headers["x-lumina-cost"]
    assert abs(float(e.usage.model_extra["cost"]) - float(cost)) < 1e-12, (e.usage, cost)
    assert raw.headers["x-lumina-route"] == "embeddings", raw.headers
    costs.append(cost)
    return e

# A string, in the SDK's default encoding (it asks for base64 and decodes it).
one = told(c.embeddings.with_raw_response.create(model="lumina-embeddings", input="hello embeddings"))
assert one.object == "list" and len(one.data) == 1, one
v = one.data[0].embedding
assert len(v) == 256 and abs(math.sqrt(sum(x * x for x in v)) - 1) < 1e-3, len(v)
assert one.usage.prompt_tokens > 0 and one.usage.total_tokens == one.usage.prompt_tokens

# A list, as floats, with dimensions: one vector per input, in order, the same text the same vector.
many = told(c.embeddings.with_raw_response.create(model="lumina-embeddings",
    input=["alpha", "beta", "hello embeddings"], dimensions=8, encoding_format="float"))
assert [d.index for d in many.data] == [0, 1, 2], many.data
assert all(len(d.embedding) == 8 for d in many.data)
again = told(c.embeddings.with_raw_response.create(model="lumina-embeddings", input="alpha",
    dimensions=8, encoding_format="float"))
assert again.data[0].embedding == many.data[0].embedding
assert many.data[0].embedding != many.data[1].embedding
assert many.usage.prompt_tokens > one.usage.prompt_tokens

def raises(kind, f):
    try:
        f()
    except kind as e:
        return e
    raise SystemExit(f"expected {kind.__name__}")

e = raises(openai.BadRequestError, lambda: c.embeddings.create(model="lumina-embeddings", input=[]))
assert e.param == "input", e.param
e = raises(openai.BadRequestError, lambda: c.embeddings.create(model="lumina-embeddings", input="x", dimensions=0))
assert e.param == "dimensions", e.param
e = raises(openai.NotFoundError, lambda: c.embeddings.create(model="gpt-nope", input="x"))
assert e.code == "model_not_found", e.code
e = raises(openai.BadRequestError, lambda: c.embeddings.create(model="lumina-fast", input="x"))
assert e.param == "model", e.param
e = raises(openai.BadRequestError, lambda: c.chat.completions.create(model="lumina-embeddings",
    messages=[{"role": "user", "content": "x"}]))
assert e.param == "model", e.param
raises(openai.AuthenticationError, lambda: OpenAI(base_url=base + "/v1", api_key="lum_nope",
    max_retries=0).embeddings.create(model="lumina-embeddings", input="x"))
print(json.dumps({"costs": costs}))
"#;

#[tokio::test]
async fn the_openai_sdk_embeds_a_string_and_a_list_and_each_cost_is_the_ledgers() {
    let tmp = tempfile::tempdir().unwrap();
    let lumina = Lumina::start(&tmp.path().join("data"), &tmp.path().join("out"), &[]).await;
    let account = lumina.account("Embeddings SDK", "1").await;
    let (_, key) = lumina.key(&account).await;
    let stdout = run_python(SDK_SCRIPT, vec![lumina.url.clone(), key.clone()]).await;
    let told: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let costs: Vec<i64> = told["costs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| nanos(c.as_str().unwrap()))
        .collect();
    assert_eq!(costs.len(), 3);
    assert!(costs.iter().all(|&c| c > 0), "{costs:?}");
    let total: i64 = costs.iter().sum();
    assert_eq!(spent_after(&lumina, &account, total).await, total);

    let events = lumina.events();
    let routed = payloads(&events, "RequestRouted");
    let embedded: Vec<_> = routed
        .iter()
        .filter(|p| p["path"] == "embeddings")
        .collect();
    assert_eq!(embedded.len(), 3, "{routed:?}");
    assert!(
        embedded
            .iter()
            .all(|p| p["task_class"] == "embeddings" && p["api"] == "embeddings"),
        "{embedded:?}"
    );
    let settled = payloads(&events, "RequestSettled");
    let charged: i64 = settled
        .iter()
        .filter(|p| p["path"] == "embeddings")
        .map(|p| p["charge_nano"].as_i64().unwrap())
        .sum();
    assert_eq!(charged, total);

    // The request log names the inbound API.
    let apis = logged_apis(&lumina, &key, Some("embeddings"), 3).await;
    assert_eq!(apis.len(), 3, "{apis:?}");
    assert!(apis.iter().all(|a| *a == "embeddings"), "{apis:?}");
}

/// Two OpenAI-compatible upstreams serving embeddings, `primary` first.
fn config(mock: &MockUpstream) -> String {
    format!(
        r#"
[[providers]]
name = "primary"
kind = "openai"
base_url = "{primary}"
api_key_env = "MOCK_PRIMARY_KEY"
models = {{ fast = "mock-fast", balanced = "mock-balanced", reasoning = "mock-reasoning", embeddings = "mock-embed" }}
timeout_ms = 5000

[[providers]]
name = "secondary"
kind = "openai"
base_url = "{secondary}"
models = {{ fast = "mock-fast-2", balanced = "mock-balanced-2", reasoning = "mock-reasoning-2", embeddings = "mock-embed-2" }}
timeout_ms = 5000

[breaker]
consecutive_failures = 100
"#,
        primary = mock.base_url("primary"),
        secondary = mock.base_url("secondary"),
    )
}

#[tokio::test]
async fn embeddings_route_fall_back_refuse_bad_answers_and_bad_input_and_reconcile() {
    let Mocked {
        tmp: _tmp,
        mock,
        lumina,
    } = Mocked::start(config, &[]).await;
    let account = lumina.account("Embeddings", "1").await;
    let (_, key) = lumina.key(&account).await;
    let embed = |body: String| {
        let lumina = &lumina;
        let key = key.clone();
        async move {
            lumina
                .request(Method::POST, "/v1/embeddings", Some(&key), Some(&body))
                .await
        }
    };
    let mut told = 0i64;
    let mut cost_of = |headers: &reqwest::header::HeaderMap, body: &Value| {
        let cost = nanos(header(headers, "x-lumina-cost"));
        assert_eq!(nanos(&body["usage"]["cost"].to_string()), cost, "{body}");
        told += cost;
    };

    // Routed to the first deployment, the client's members forwarded with the model replaced.
    let two = json!({"model": "lumina-embeddings", "input": ["a", "b"], "user": "u-1"}).to_string();
    let (status, headers, body) = embed(two.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        header(&headers, "x-lumina-deployment"),
        "primary/mock-embed"
    );
    assert_eq!(body["data"].as_array().unwrap().len(), 2);
    assert_eq!(body["usage"]["prompt_tokens"], 2 * EMBED_TOKENS_PER_INPUT);
    cost_of(&headers, &body);
    let sent = mock.requests_of("primary");
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].api, "embeddings");
    assert_eq!(
        sent[0].body,
        json!({"model": "mock-embed", "input": ["a", "b"], "user": "u-1"})
    );
    assert_eq!(sent[0].headers["authorization"], "Bearer sk-primary-secret");

    // A failing deployment falls back to the next.
    reset(&mock);
    mock.fail_next("primary", 1);
    let (status, headers, body) = embed(two.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(header(&headers, "x-lumina-attempts"), "2");
    assert_eq!(
        header(&headers, "x-lumina-deployment"),
        "secondary/mock-embed-2"
    );
    cost_of(&headers, &body);

    // An answer that is not one vector per input, or whose usage is absurd, is a failed
    // attempt: the next deployment answers.
    for bad in [
        json!({"object": "list", "data": [{"index": 0, "embedding": [1.0]}]}),
        json!({"object": "list", "data": [{"index": 0, "embedding": [1.0]}, {"index": 0, "embedding": [1.0]}]}),
        json!({"object": "list", "data": [{"index": 0, "embedding": "AAAA"}, {"index": 1, "embedding": [1.0]}]}),
        json!({"object": "list", "data": [{"index": 0, "embedding": [1.0]}, {"index": 1, "embedding": [1.0]}],
               "usage": {"prompt_tokens": 10_000_000_000u64, "total_tokens": 1}}),
    ] {
        mock.set("primary", &format!("body={bad}"));
        let (status, headers, body) = embed(two.clone()).await;
        assert_eq!(status, 200, "{bad}: {body}");
        assert_eq!(
            header(&headers, "x-lumina-deployment"),
            "secondary/mock-embed-2",
            "{bad}"
        );
        assert_eq!(body["usage"]["prompt_tokens"], 2 * EMBED_TOKENS_PER_INPUT);
        cost_of(&headers, &body);
    }

    // No usage reported: the tokenizer counts the inputs, and that is what is billed.
    mock.set("primary", "nousage");
    let text = "The quick brown fox jumps over the lazy dog";
    let (status, headers, body) =
        embed(json!({"model": "lumina-embeddings", "input": text}).to_string()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["usage"]["prompt_tokens"], 9, "{body}");
    cost_of(&headers, &body);

    // The upstream refusing the request itself is the client's error: no fallback.
    reset(&mock);
    mock.set("primary", "fail400");
    let (status, _, body) = embed(two.clone()).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(assert_openai_error(&body)["message"], "input is too long");
    assert!(mock.requests_of("secondary").is_empty());
    mock.set("primary", "ok");

    // Bad input never reaches an upstream.
    reset(&mock);
    for (bad, status, param) in [
        (
            r#"{"model": "lumina-embeddings", "input": "#.to_string(),
            400,
            Value::Null,
        ),
        (
            r#"{"model": "lumina-embeddings", "input": 5}"#.into(),
            400,
            json!("input"),
        ),
        (
            r#"{"model": "lumina-embeddings", "input": ["a", 1]}"#.into(),
            400,
            json!("input"),
        ),
        (
            r#"{"model": "lumina-embeddings", "input": "a", "input": ["a", "b"]}"#.into(),
            400,
            json!("input"),
        ),
        (
            r#"{"model": "lumina-embeddings", "input": "a", "encoding_format": "int8"}"#.into(),
            400,
            json!("encoding_format"),
        ),
        (
            r#"{"model": ["lumina-embeddings"], "input": "a"}"#.into(),
            400,
            json!("model"),
        ),
        (
            r#"{"model": "text-embedding-3-small", "input": "a"}"#.into(),
            404,
            json!("model"),
        ),
        (
            r#"{"model": "lumina-balanced", "input": "a"}"#.into(),
            400,
            json!("model"),
        ),
    ] {
        let (got, _, body) = embed(bad.clone()).await;
        assert_eq!(got, status, "{bad}: {body}");
        let error = assert_openai_error(&body);
        if !param.is_null() {
            assert_eq!(error["param"], param, "{bad}: {body}");
        }
    }
    assert!(mock.requests().is_empty(), "bad input reached an upstream");

    // Everything the client was told equals the ledger, and the journal reconciles.
    assert!(told > 0);
    assert_eq!(spent_after(&lumina, &account, told).await, told);
    reconciles(&lumina);
}
