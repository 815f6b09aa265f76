//! Anthropic's Messages API (`/v1/messages`) against the real binary, driven by the official
//! `anthropic` Python SDK and by requests shaped as Claude Code sends them: text, streams, a
//! system prompt, a tool call round trip, `count_tokens`, errors in Anthropic's shape, the
//! `anthropic-beta` header reaching Anthropic upstreams only, extended thinking's signed blocks
//! round-tripped unchanged to an Anthropic upstream with tools and left out (and said so)
//! elsewhere, and every charge equal to the ledger's with `lumina reconcile` clean.
//!
//! Needs `LUMINA_TEST_PYTHON`, a Python with the `anthropic` package (`scripts/test.sh` builds
//! one).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use common::upstream::{COUNTED_TOKENS, Mocked};
use common::{
    Lumina, assert_openai_error, header, nanos, parse_anthropic_sse, reconciles, run_python,
    spent_after,
};
use serde_json::{Value, json};

const SDK_SCRIPT: &str = r#"
import sys, json, anthropic
base, key, model = sys.argv[1], sys.argv[2], sys.argv[3]
c = anthropic.Anthropic(base_url=base, api_key=key, max_retries=0)
costs = []

m = c.messages.create(model=model, max_tokens=64, system="Answer briefly.",
    messages=[{"role": "user", "content": "Say hello to the gateway."}])
assert m.type == "message" and m.role == "assistant", m
assert m.content and m.content[0].type == "text" and m.content[0].text, m.content
assert m.stop_reason in ("end_turn", "max_tokens"), m.stop_reason
assert m.usage.input_tokens > 0 and m.usage.output_tokens > 0, m.usage
costs.append(m.usage.model_extra["cost"])

with c.messages.stream(model=model, max_tokens=64,
        messages=[{"role": "user", "content": "Stream a few words."}]) as s:
    text, cost = "", None
    for event in s:
        if event.type == "text":
            text += event.text
        elif event.type == "message_delta":
            cost = event.usage.model_extra["cost"]
    final = s.get_final_message()
assert text, "no streamed text"
assert final.content[0].text == text
assert final.usage.output_tokens > 0
assert cost is not None
costs.append(cost)

tools = [{"name": "get_weather", "description": "Weather of a city",
          "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]
first = c.messages.create(model=model, max_tokens=64, tools=tools,
    tool_choice={"type": "tool", "name": "get_weather"},
    messages=[{"role": "user", "content": "Weather in Paris?"}])
uses = [b for b in first.content if b.type == "tool_use"]
assert uses and uses[0].name == "get_weather", first.content
assert first.stop_reason == "tool_use", first.stop_reason
costs.append(first.usage.model_extra["cost"])
second = c.messages.create(model=model, max_tokens=64, tools=tools, messages=[
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": first.content},
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": uses[0].id, "content": "sunny, 21C"}]}])
assert second.content, second
costs.append(second.usage.model_extra["cost"])

n = c.messages.count_tokens(model=model, messages=[{"role": "user", "content": "How many tokens is this?"}])
assert n.input_tokens > 3, n

def raises(kind, f):
    try:
        f()
    except kind as e:
        return e
    raise SystemExit(f"expected {kind.__name__}")

e = raises(anthropic.AuthenticationError, lambda: anthropic.Anthropic(base_url=base, api_key="lum_wrong", max_retries=0).messages.create(model=model, max_tokens=8, messages=[{"role": "user", "content": "x"}]))
assert e.body["type"] == "error" and e.body["error"]["type"] == "authentication_error", e.body
e = raises(anthropic.NotFoundError, lambda: c.messages.create(model="gpt-nope", max_tokens=8, messages=[{"role": "user", "content": "x"}]))
assert e.body["error"]["type"] == "not_found_error", e.body
e = raises(anthropic.BadRequestError, lambda: c.messages.create(model=model, max_tokens=8, messages=[{"role": "wizard", "content": "x"}]))
assert e.body["error"]["type"] == "invalid_request_error", e.body
print(json.dumps({"costs": [str(x) for x in costs]}))
"#;

async fn sdk_round_trip(lumina: &Lumina, model: &str) {
    let account = lumina.account("Anthropic SDK", "5").await;
    let (_, key) = lumina.key(&account).await;
    let stdout = run_python(SDK_SCRIPT, vec![lumina.url.clone(), key, model.to_string()]).await;
    let costs: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let told: i64 = costs["costs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| nanos(c.as_str().unwrap()))
        .sum();
    assert!(told > 0);
    assert_eq!(spent_after(lumina, &account, told).await, told);
    // Four paid requests (count_tokens records nothing), each named as a Messages request.
    let events = lumina.events();
    let routed: Vec<&Value> = common::payloads(&events, "RequestRouted");
    assert_eq!(routed.len(), 4, "{routed:?}");
    assert!(routed.iter().all(|p| p["api"] == "messages"), "{routed:?}");
    reconciles(lumina);
}

#[tokio::test]
async fn the_anthropic_sdk_works_against_the_simulated_provider() {
    let tmp = tempfile::tempdir().unwrap();
    let lumina = Lumina::start(&tmp.path().join("data"), &tmp.path().join("out"), &[]).await;
    sdk_round_trip(&lumina, "claude-sonnet-4-5-20250929").await;
}

#[tokio::test]
async fn the_anthropic_sdk_works_against_an_openai_compatible_upstream() {
    let m = Mocked::with("").await;
    m.mock.set("primary", "tools_when_asked");
    sdk_round_trip(&m.lumina, "claude-3-5-haiku-latest").await;
    let primary = m.mock.requests_of("primary");
    assert!(!primary.is_empty());
    assert!(primary.iter().all(|r| r.api == "chat/completions"));
}

/// A streamed request shaped as Claude Code sends it.
fn claude_code_request(model: &str) -> Value {
    json!({
        "model": model, "max_tokens": 512, "stream": true,
        "system": [{"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "List the files.", "cache_control": {"type": "ephemeral"}}]}],
        "tools": [{"name": "Bash", "description": "Run a command", "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}}],
        "metadata": {"user_id": "user_abc_account__session_1"},
        "temperature": 1
    })
}

async fn post_messages(lumina: &Lumina, key: &str, body: &Value, beta: &str) -> (u16, String) {
    let res = reqwest::Client::new()
        .post(format!("{}/v1/messages", lumina.url))
        .header("x-api-key", key)
        .header("anthropic-version", "2023-06-01")
        .header("anthropic-beta", beta)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    (res.status().as_u16(), res.text().await.unwrap())
}

#[tokio::test]
async fn a_claude_code_request_completes_and_beta_headers_reach_anthropic_upstreams_only() {
    let m = Mocked::with("").await;
    let account = m.lumina.account("Claude Code", "5").await;
    let (_, key) = m.lumina.key(&account).await;
    let beta = "claude-code-20250219,interleaved-thinking-2025-05-14,not-a-real-beta-2099";
    // Haiku routes to fast: OpenAI-compatible upstreams, which must not see the beta header.
    let (status, text) = post_messages(
        &m.lumina,
        &key,
        &claude_code_request("claude-haiku-4-5"),
        beta,
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let events = parse_anthropic_sse(&text);
    let kinds: Vec<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(kinds.first(), Some(&"message_start"));
    assert_eq!(kinds.last(), Some(&"message_stop"));
    assert!(kinds.contains(&"content_block_delta"), "{kinds:?}");
    let delta = &events.iter().find(|(k, _)| k == "message_delta").unwrap().1;
    assert!(delta["usage"]["output_tokens"].as_u64().unwrap() > 0);
    assert!(delta["usage"]["cost"].is_number());
    for r in m.mock.requests_of("primary") {
        assert!(!r.headers.contains_key("anthropic-beta"), "{:?}", r.headers);
        assert!(!r.headers.contains_key("anthropic-version"));
    }
    // Opus routes to reasoning, whose first deployment speaks Anthropic: it gets them.
    let (status, text) = post_messages(
        &m.lumina,
        &key,
        &claude_code_request("claude-opus-4-1"),
        beta,
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let claude = m.mock.requests_of("claude");
    assert_eq!(claude.len(), 1);
    assert_eq!(claude[0].headers["anthropic-beta"], beta);
    assert_eq!(claude[0].headers["anthropic-version"], "2023-06-01");
}

#[tokio::test]
async fn bad_messages_requests_get_anthropic_errors_and_the_server_keeps_serving() {
    let m = Mocked::with("").await;
    let account = m.lumina.account("Bad Input", "1").await;
    let (_, key) = m.lumina.key(&account).await;
    let model = "claude-sonnet-4-5";
    let cases: Vec<(String, u16, &str)> = vec![
        ("{\"model\":".into(), 400, "invalid_request_error"),
        ("[1,2]".into(), 400, "invalid_request_error"),
        (json!({"model": model, "messages": [{"role": "user", "content": "x"}]}).to_string(), 400, "invalid_request_error"),
        (json!({"model": model, "max_tokens": "ten", "messages": [{"role": "user", "content": "x"}]}).to_string(), 400, "invalid_request_error"),
        (json!({"model": "gpt-nope", "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]}).to_string(), 404, "not_found_error"),
        (r#"{"model":"claude-sonnet-4-5","max_tokens":1,"max_tokens":100000,"messages":[{"role":"user","content":"x"}]}"#.into(), 400, "invalid_request_error"),
    ];
    for (body, status, kind) in cases {
        let res = reqwest::Client::new()
            .post(format!("{}/v1/messages", m.lumina.url))
            .header("x-api-key", &key)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), status, "{body}");
        assert!(!header(res.headers(), "x-request-id").is_empty());
        let v: Value = res.json().await.unwrap();
        assert_eq!(v["type"], "error", "{body}: {v}");
        assert_eq!(v["error"]["type"], kind, "{body}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|s| !s.is_empty())
        );
    }
    // A missing key, in Anthropic's shape; the chat surface still answers in OpenAI's.
    let res = reqwest::Client::new()
        .post(format!("{}/v1/messages", m.lumina.url))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 401);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["error"]["type"], "authentication_error");
    let (status, _, v) = m
        .lumina
        .request(
            reqwest::Method::POST,
            "/v1/chat/completions",
            None,
            Some("{}"),
        )
        .await;
    assert_eq!(status, 401);
    assert_openai_error(&v);
}

async fn count(
    lumina: &Lumina,
    key: &str,
    model: &str,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let res = reqwest::Client::new()
        .post(format!("{}/v1/messages/count_tokens", lumina.url))
        .header("x-api-key", key)
        .header("anthropic-version", "2023-06-01")
        .header("anthropic-beta", "token-counting-2024-11-01")
        .json(&json!({"model": model, "system": "Be brief.",
            "messages": [{"role": "user", "content": "How many tokens is this?"}]}))
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    (status, headers, res.json().await.unwrap())
}

#[tokio::test]
async fn count_tokens_is_exact_when_the_first_deployment_is_anthropic_and_an_estimate_otherwise() {
    let m = Mocked::with("").await;
    let account = m.lumina.account("Counting", "1").await;
    let (_, key) = m.lumina.key(&account).await;

    // Opus routes to reasoning, whose first deployment is Anthropic: its own count, exactly.
    let (status, headers, body) = count(&m.lumina, &key, "claude-opus-4-1").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["input_tokens"], COUNTED_TOKENS);
    assert_eq!(header(&headers, "x-lumina-estimated"), "false");
    assert_eq!(
        header(&headers, "x-lumina-deployment"),
        "claude/claude-mock"
    );
    let asked = m.mock.requests_of("claude");
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0].api, "messages/count_tokens");
    assert_eq!(asked[0].body["model"], "claude-mock");
    assert_eq!(asked[0].body["system"], "Be brief.");
    assert_eq!(asked[0].headers["x-api-key"], "sk-ant-secret");
    assert_eq!(
        asked[0].headers["anthropic-beta"],
        "token-counting-2024-11-01"
    );

    // Haiku routes to fast (OpenAI-compatible first): the tokenizer's estimate, flagged.
    let (status, headers, body) = count(&m.lumina, &key, "claude-haiku-4-5").await;
    assert_eq!(status, 200, "{body}");
    let estimate = body["input_tokens"].as_u64().unwrap();
    assert!(estimate > 3 && estimate != COUNTED_TOKENS, "{body}");
    assert_eq!(header(&headers, "x-lumina-estimated"), "true");
    assert!(
        m.mock.requests_of("primary").is_empty(),
        "nothing to ask an OpenAI upstream"
    );

    // Anthropic failing to count: the estimate, flagged, never an error.
    m.mock.fail_next("claude", 1);
    let (status, headers, body) = count(&m.lumina, &key, "claude-opus-4-1").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(header(&headers, "x-lumina-estimated"), "true");
    assert_ne!(body["input_tokens"], COUNTED_TOKENS);

    // Counting is free and records nothing.
    let balance = m.lumina.balance(&account).await;
    assert_eq!(balance["spent_nano"], 0, "{balance}");
    assert!(common::payloads(&m.lumina.events(), "RequestRouted").is_empty());
}

const THINKING_SCRIPT: &str = r#"
import sys, json, anthropic
base, key = sys.argv[1], sys.argv[2]
c = anthropic.Anthropic(base_url=base, api_key=key, max_retries=0)
tools = [{"name": "get_weather", "description": "Weather of a city",
          "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]
thinking = {"type": "enabled", "budget_tokens": 2048}
ask = {"role": "user", "content": "Weather in Paris?"}
costs = []

# Opus routes to the Anthropic upstream: its signed thinking block comes back first.
first = c.messages.create(model="claude-opus-4-1", max_tokens=4096, thinking=thinking, tools=tools, messages=[ask])
assert [b.type for b in first.content] == ["thinking", "text", "tool_use"], first.content
block = first.content[0]
assert block.signature.startswith("mocksig-") and block.thinking.startswith("Mock thinking"), block
costs.append(first.usage.model_extra["cost"])
uses = [b for b in first.content if b.type == "tool_use"]
turn = [ask, {"role": "assistant", "content": first.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": uses[0].id, "content": "sunny"}]}]

# Sent back with the tool result: it reaches Anthropic unchanged, and nothing is said dropped.
raw = c.messages.with_raw_response.create(model="claude-opus-4-1", max_tokens=4096, thinking=thinking,
    tools=tools, messages=turn)
assert "x-lumina-dropped" not in raw.headers, raw.headers
costs.append(raw.parse().usage.model_extra["cost"])

# Streamed: thinking deltas and the signature, assembled by the SDK into the same block.
with c.messages.stream(model="claude-opus-4-1", max_tokens=4096, thinking=thinking, messages=[ask]) as s:
    thought, cost = "", None
    for event in s:
        if event.type == "thinking":
            thought += event.thinking
        elif event.type == "message_delta":
            cost = event.usage.model_extra["cost"]
    final = s.get_final_message()
assert final.content[0].type == "thinking" and final.content[0].thinking == thought, final.content
assert final.content[0].signature == block.signature, (final.content[0], block)
assert final.content[1].type == "text"
costs.append(cost)

# Haiku routes to an OpenAI-compatible upstream: the blocks are left out, and said so.
raw = c.messages.with_raw_response.create(model="claude-haiku-4-5", max_tokens=4096, thinking=thinking,
    tools=tools, messages=turn)
assert raw.headers["x-lumina-dropped"] == "thinking", raw.headers
costs.append(raw.parse().usage.model_extra["cost"])
print(json.dumps({"block": block.model_dump(), "costs": [str(x) for x in costs]}))
"#;

#[tokio::test]
async fn thinking_blocks_round_trip_unchanged_to_anthropic_and_are_left_out_and_said_so_elsewhere()
{
    let m = Mocked::with("").await;
    m.mock.set("claude", "tools");
    let account = m.lumina.account("Thinking", "5").await;
    let (_, key) = m.lumina.key(&account).await;
    let stdout = run_python(THINKING_SCRIPT, vec![m.lumina.url.clone(), key]).await;
    let out: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let block = &out["block"];
    assert_eq!(block["type"], "thinking");

    // Anthropic got the client's `thinking` and, on the second turn, the block as it was.
    let claude = m.mock.requests_of("claude");
    assert_eq!(claude.len(), 3);
    for r in &claude {
        assert_eq!(
            r.body["thinking"],
            json!({"type": "enabled", "budget_tokens": 2048})
        );
    }
    let assistant = &claude[1].body["messages"][1];
    assert_eq!(assistant["role"], "assistant");
    assert_eq!(&assistant["content"][0], block, "{assistant}");
    assert_eq!(assistant["content"][2]["type"], "tool_use");

    // The OpenAI-compatible upstream saw neither the setting nor the block.
    let primary = m.mock.requests_of("primary");
    assert_eq!(primary.len(), 1);
    let sent = primary[0].body.to_string();
    assert!(
        !sent.contains("mocksig-") && !sent.contains("budget_tokens"),
        "{sent}"
    );
    assert!(primary[0].body.get("thinking").is_none());

    let told: i64 = out["costs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| nanos(c.as_str().unwrap()))
        .sum();
    assert_eq!(spent_after(&m.lumina, &account, told).await, told);
    reconciles(&m.lumina);
}
