//! `/v1/responses` against the real binary: the official `openai` Python SDK creates
//! responses streamed and not, round-trips a function call, continues a conversation with
//! `previous_response_id`, retrieves and deletes, and meets the API's errors; against mock
//! upstreams the conversation reaches an OpenAI-compatible and an Anthropic upstream as it
//! should, a fallback is one charge, a client that disconnects mid-stream is settled once and
//! its stored response says so, bad input never reaches an upstream, and every cost told
//! equals the ledger's charge with `lumina reconcile` clean.
//!
//! Needs `LUMINA_TEST_PYTHON`, a Python with the `openai` package (`scripts/test.sh` builds one).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use std::time::{Duration, Instant};

use common::upstream::{Mocked, reset};
use common::{
    Lumina, assert_openai_error, header, logged_apis, nanos, payloads, reconciles, run_python,
    spent_after,
};
use reqwest::Method;
use serde_json::{Value, json};

const SDK_SCRIPT: &str = r#"
import sys, json, re, urllib.request, urllib.error, openai
from openai import OpenAI
base, key, other_key = sys.argv[1], sys.argv[2], sys.argv[3]
c = OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
costs = []

def exact_cost(text):
    found = re.findall(r'"cost":([0-9.eE+-]+)', text)
    assert len(found) == 1, text
    return found[0]

def told(raw):
    r = raw.parse()
    cost = exact_cost(raw.http_response.text)
    assert raw.headers["x-lumina-cost"] == cost, (raw.headers["x-lumina-cost"], cost)
    costs.append(cost)
    return r

def stored_cost(response_id):
    got = c.responses.with_raw_response.retrieve(response_id)
    costs.append(exact_cost(got.http_response.text))

def post_raw(body):
    req = urllib.request.Request(f"{base}/v1/responses", data=body.encode(), method="POST",
        headers={"authorization": f"Bearer {key}", "content-type": "application/json"})
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())

def raises(kind, f):
    try:
        f()
    except kind as e:
        return e
    raise SystemExit(f"expected {kind.__name__}")

# Whole: text, instructions, metadata, the routing headers.
raw = c.responses.with_raw_response.create(model="lumina-fast", input="Say hello to the gateway",
    instructions="Answer in one line.", metadata={"case": "one"}, max_output_tokens=64)
one = told(raw)
assert raw.headers["x-lumina-route"] == "fast", raw.headers
assert one.id.startswith("resp_") and one.object == "response" and one.status == "completed", one
assert one.output_text and one.metadata == {"case": "one"} and one.instructions == "Answer in one line."
assert one.usage.input_tokens > 0 and one.usage.output_tokens > 0
assert one.usage.total_tokens == one.usage.input_tokens + one.usage.output_tokens

# Streamed: the typed events in order, the text of the deltas is the completed response's.
kinds, text, final = [], "", None
stream = c.responses.create(model="lumina-balanced", input="Explain event sourcing briefly", stream=True)
for ev in stream:
    kinds.append(ev.type)
    if ev.type == "response.output_text.delta":
        text += ev.delta
    if ev.type == "response.completed":
        final = ev.response
assert kinds[:2] == ["response.created", "response.in_progress"], kinds
assert kinds[-1] == "response.completed", kinds
for k in ["response.output_item.added", "response.content_part.added", "response.output_text.delta",
          "response.output_text.done", "response.content_part.done", "response.output_item.done"]:
    assert k in kinds, (k, kinds)
assert final.status == "completed" and final.output_text == text and text, (final, text)
stored_cost(final.id)

# A function call round trip: the call, then its output on the next turn by previous_response_id.
tools = [{"type": "function", "name": "get_weather", "description": "The weather of a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
called = told(c.responses.with_raw_response.create(model="lumina-fast", input="Weather in Paris?",
    tools=tools, tool_choice="required"))
calls = [o for o in called.output if o.type == "function_call"]
assert len(calls) == 1 and calls[0].name == "get_weather" and calls[0].call_id, called.output
json.loads(calls[0].arguments)
answered = told(c.responses.with_raw_response.create(model="lumina-fast", previous_response_id=called.id,
    tools=tools, input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny, 21 C"}]))
assert answered.status == "completed" and answered.output_text and answered.previous_response_id == called.id
# The second turn's prompt holds the first's: it is longer than the first's input and output.
assert answered.usage.input_tokens > called.usage.input_tokens + called.usage.output_tokens, (answered.usage, called.usage)

# A streamed function call: argument deltas, then the item done.
kinds, args, item = [], "", None
for ev in c.responses.create(model="lumina-fast", input="Weather in Rome?", tools=tools,
                             tool_choice={"type": "function", "name": "get_weather"}, stream=True):
    kinds.append(ev.type)
    if ev.type == "response.function_call_arguments.delta":
        args += ev.delta
    if ev.type == "response.output_item.done":
        item = ev.item
    if ev.type == "response.completed":
        streamed_id = ev.response.id
assert "response.function_call_arguments.done" in kinds, kinds
assert item.type == "function_call" and item.arguments == args and args, (item, args)
stored_cost(streamed_id)

# Retrieve, delete; a deleted or unstored response cannot be continued or read; nor can
# another account's.
got = c.responses.retrieve(called.id)
assert got.id == called.id and got.status == "completed" and got.output[0].type == "function_call", got
other = OpenAI(base_url=base + "/v1", api_key=other_key, max_retries=0)
raises(openai.NotFoundError, lambda: other.responses.retrieve(called.id))
e = raises(openai.BadRequestError, lambda: other.responses.create(model="lumina-fast",
    previous_response_id=called.id, input="hi"))
assert e.code == "previous_response_not_found" and e.param == "previous_response_id", e
c.responses.delete(answered.id)
raises(openai.NotFoundError, lambda: c.responses.retrieve(answered.id))
raises(openai.NotFoundError, lambda: c.responses.delete(answered.id))
e = raises(openai.BadRequestError, lambda: c.responses.create(model="lumina-fast",
    previous_response_id=answered.id, input="and then?"))
assert e.code == "previous_response_not_found", e
unstored = told(c.responses.with_raw_response.create(model="lumina-fast", input="forget me", store=False))
assert unstored.store is False
raises(openai.NotFoundError, lambda: c.responses.retrieve(unstored.id))

# A client that stops reading mid-stream and closes it.
s = c.responses.create(model="lumina-balanced", input="Write a long essay about gateways " * 4, stream=True)
gone = None
for ev in s:
    if ev.type == "response.created":
        gone = ev.response.id
    if ev.type == "response.output_text.delta":
        break
s.close()

# Structured output and a reasoning effort are accepted and echoed.
shaped = told(c.responses.with_raw_response.create(model="lumina-auto", input="Plan a migration in three steps",
    reasoning={"effort": "high"}, text={"format": {"type": "json_schema", "name": "plan",
    "schema": {"type": "object", "properties": {"steps": {"type": "array"}}}}}))
assert shaped.text.format.type == "json_schema" and shaped.reasoning.effort == "high", shaped

# Bad input: the API's errors, in OpenAI's shape.
e = raises(openai.NotFoundError, lambda: c.responses.create(model="gpt-nope", input="x"))
assert e.code == "model_not_found", e
for kwargs, param in [
    ({"max_output_tokens": 0}, "max_output_tokens"),
    ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"temperature": "hot"}, "temperature"),
    ({"input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
]:
    args = {"model": "lumina-fast", "input": "x"}
    args.update(kwargs)
    e = raises(openai.BadRequestError, lambda: c.responses.create(**args))
    assert e.param == param, (kwargs, e.param, e)
for body in ['{"model": "lumina-fast", "input": ', '[1]', '{"model": "lumina-fast", "input": "a", "input": "b"}']:
    status, error = post_raw(body)
    assert status == 400 and error["error"]["type"] == "invalid_request_error", (body, error)
raises(openai.AuthenticationError, lambda: OpenAI(base_url=base + "/v1", api_key="lum_nope",
    max_retries=0).responses.create(model="lumina-fast", input="x"))
print(json.dumps({"costs": costs, "gone": gone}))
"#;

#[tokio::test]
async fn the_openai_sdk_creates_streams_continues_retrieves_and_deletes_responses() {
    let tmp = tempfile::tempdir().unwrap();
    let lumina = Lumina::start(&tmp.path().join("data"), &tmp.path().join("out"), &[]).await;
    let account = lumina.account("Responses SDK", "1").await;
    let (_, key) = lumina.key(&account).await;
    let other = lumina.account("Someone else", "1").await;
    let (_, other_key) = lumina.key(&other).await;
    let stdout = run_python(SDK_SCRIPT, vec![lumina.url.clone(), key.clone(), other_key]).await;
    let told: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let costs: Vec<i64> = told["costs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| nanos(c.as_str().unwrap()))
        .collect();
    assert_eq!(costs.len(), 7, "{told}");
    assert!(costs.iter().all(|&c| c > 0), "{costs:?}");

    // The stream its client closed is settled once, whether the pump saw the client go
    // (cancelled) or had already finished (completed), and its response is final.
    let gone = told["gone"].as_str().unwrap();
    let gone_request = format!("req_{}", gone.trim_start_matches("resp_"));
    let deadline = Instant::now() + Duration::from_secs(10);
    let gone_charge = loop {
        let settled: Vec<Value> = lumina
            .events_of(&gone_request)
            .into_iter()
            .filter(|e| e["event_type"] == "RequestSettled")
            .collect();
        if let [one] = settled.as_slice() {
            break one["payload"]["charge_nano"].as_i64().unwrap();
        }
        assert!(settled.is_empty(), "settled twice: {settled:?}");
        assert!(
            Instant::now() < deadline,
            "the closed stream was never settled"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (status, _, stored) = lumina
        .request(
            Method::GET,
            &format!("/v1/responses/{gone}"),
            Some(&key),
            None,
        )
        .await;
    assert_eq!(status, 200, "{stored}");
    assert!(
        stored["status"] == "cancelled" || stored["status"] == "completed",
        "{stored}"
    );
    let total: i64 = costs.iter().sum::<i64>() + gone_charge;
    assert_eq!(spent_after(&lumina, &account, total).await, total);

    // One settlement per request, each naming the Responses API.
    let events = lumina.events();
    let routed = payloads(&events, "RequestRouted");
    assert_eq!(routed.len(), 8, "{routed:?}");
    assert!(routed.iter().all(|p| p["api"] == "responses"), "{routed:?}");
    let settled = payloads(&events, "RequestSettled");
    assert_eq!(settled.len(), 8);
    let charged: i64 = settled
        .iter()
        .map(|p| p["charge_nano"].as_i64().unwrap())
        .sum();
    assert_eq!(charged, total);

    // The request log names the inbound API.
    let apis = logged_apis(&lumina, &key, None, 8).await;
    assert_eq!(apis.len(), 8, "{apis:?}");
    assert!(apis.iter().all(|a| *a == "responses"), "{apis:?}");
}

/// The chat messages an upstream received.
fn messages(body: &Value) -> Vec<(String, String)> {
    body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let content = match &m["content"] {
                Value::String(s) => s.clone(),
                Value::Array(blocks) => blocks
                    .iter()
                    .filter_map(|b| b["text"].as_str())
                    .collect::<Vec<_>>()
                    .join(""),
                _ => String::new(),
            };
            (m["role"].as_str().unwrap_or("").to_string(), content)
        })
        .collect()
}

fn pair(role: &str, content: &str) -> (String, String) {
    (role.to_string(), content.to_string())
}

#[tokio::test]
async fn conversations_reach_each_upstream_kind_fall_back_once_and_a_gone_client_is_settled_once() {
    let Mocked {
        tmp: _tmp,
        mock,
        lumina,
    } = Mocked::with("").await;
    let account = lumina.account("Responses", "1").await;
    let (_, key) = lumina.key(&account).await;
    let create = |body: Value| {
        let lumina = &lumina;
        let key = key.clone();
        async move {
            lumina
                .request(
                    Method::POST,
                    "/v1/responses",
                    Some(&key),
                    Some(&body.to_string()),
                )
                .await
        }
    };
    let mut told = 0i64;
    let cost_of = |headers: &reqwest::header::HeaderMap, body: &Value| {
        let cost = nanos(header(headers, "x-lumina-cost"));
        assert_eq!(nanos(&body["usage"]["cost"].to_string()), cost, "{body}");
        cost
    };

    // Turn one: instructions become the system message, the input the user's; nothing of the
    // Responses shape reaches the OpenAI-compatible upstream.
    let (status, headers, first) = create(json!({"model": "lumina-fast",
        "instructions": "Be terse.", "input": "My name is Ada.", "metadata": {"t": "1"}}))
    .await;
    assert_eq!(status, 200, "{first}");
    told += cost_of(&headers, &first);
    let sent = mock.requests_of("primary");
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].api, "chat/completions");
    assert_eq!(sent[0].body["model"], "mock-fast");
    assert_eq!(
        messages(&sent[0].body),
        [pair("system", "Be terse."), pair("user", "My name is Ada.")]
    );
    for member in ["input", "instructions", "metadata", "store"] {
        assert!(sent[0].body.get(member).is_none(), "{member} sent upstream");
    }
    let answer_one = first["output"][0]["content"][0]["text"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(answer_one.contains("My name is Ada."), "{first}");

    // Turn two continues it: the earlier input and answer, not the earlier instructions.
    reset(&mock);
    let (status, headers, second) = create(json!({"model": "lumina-fast",
        "previous_response_id": first["id"], "input": "What is my name?"}))
    .await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(second["previous_response_id"], first["id"]);
    told += cost_of(&headers, &second);
    let sent = mock.requests_of("primary");
    assert_eq!(
        messages(&sent[0].body),
        [
            pair("user", "My name is Ada."),
            pair("assistant", &answer_one),
            pair("user", "What is my name?")
        ]
    );

    // The reasoning path answers from Anthropic: the same conversation, translated.
    reset(&mock);
    for stream in [false, true] {
        let body = json!({"model": "lumina-reasoning", "previous_response_id": second["id"],
            "instructions": "Think.", "input": "Prove it step by step.", "stream": stream});
        if stream {
            let res = reqwest::Client::new()
                .post(format!("{}/v1/responses", lumina.url))
                .bearer_auth(&key)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 200);
            assert_eq!(
                header(res.headers(), "x-lumina-deployment"),
                "claude/claude-mock"
            );
            let text = res.text().await.unwrap();
            let completed = text
                .split("\n\n")
                .find_map(|b| b.strip_prefix("event: response.completed\ndata: "))
                .unwrap_or_else(|| panic!("no response.completed in {text}"));
            let completed: Value = serde_json::from_str(completed).unwrap();
            let response = &completed["response"];
            assert_eq!(response["status"], "completed");
            assert!(
                response["output"][0]["content"][0]["text"].is_string(),
                "{response}"
            );
            told += nanos(&response["usage"]["cost"].to_string());
        } else {
            let (status, headers, body) = create(body).await;
            assert_eq!(status, 200, "{body}");
            assert_eq!(
                header(&headers, "x-lumina-deployment"),
                "claude/claude-mock"
            );
            told += cost_of(&headers, &body);
        }
        let sent = mock.requests_of("claude");
        let last = sent.last().unwrap();
        assert_eq!(last.api, "messages");
        assert_eq!(last.body["system"], "Think.", "{}", last.body);
        let turns: Vec<&str> = last.body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["role"].as_str().unwrap())
            .collect();
        assert_eq!(turns, ["user", "assistant", "user", "assistant", "user"]);
    }

    // A failing deployment falls back: one response, one charge.
    reset(&mock);
    mock.fail_next("primary", 1);
    let (status, headers, body) =
        create(json!({"model": "lumina-fast", "input": "fall back please"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(header(&headers, "x-lumina-attempts"), "2");
    told += cost_of(&headers, &body);
    let request_id = header(&headers, "x-request-id").to_string();
    let settled: Vec<Value> = lumina
        .events_of(&request_id)
        .into_iter()
        .filter(|e| e["event_type"] == "RequestSettled")
        .collect();
    assert_eq!(settled.len(), 1);

    // A client that goes away mid-stream: settled once, as cancelled, and stored so.
    mock.set("primary", "slow");
    let res = reqwest::Client::new()
        .post(format!("{}/v1/responses", lumina.url))
        .bearer_auth(&key)
        .json(&json!({"model": "lumina-fast", "input": "a long slow answer with many words", "stream": true}))
        .send()
        .await
        .unwrap();
    let gone_request = header(res.headers(), "x-request-id").to_string();
    let mut res = res;
    let first_bytes = res.chunk().await.unwrap().unwrap();
    assert!(first_bytes.starts_with(b"event: response.created"));
    drop(res);
    let gone_response = format!("resp_{}", gone_request.trim_start_matches("req_"));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _, stored) = lumina
            .request(
                Method::GET,
                &format!("/v1/responses/{gone_response}"),
                Some(&key),
                None,
            )
            .await;
        assert_eq!(status, 200, "{stored}");
        if stored["status"] == "cancelled" {
            break;
        }
        assert_eq!(stored["status"], "in_progress", "{stored}");
        assert!(
            Instant::now() < deadline,
            "never marked cancelled: {stored}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    mock.set("primary", "ok");
    let gone: Vec<Value> = lumina
        .events_of(&gone_request)
        .into_iter()
        .filter(|e| e["event_type"] == "RequestSettled")
        .collect();
    assert_eq!(gone.len(), 1, "{gone:?}");
    assert_eq!(gone[0]["payload"]["outcome"], "cancelled");
    told += gone[0]["payload"]["charge_nano"].as_i64().unwrap();

    // Bad input never reaches an upstream.
    reset(&mock);
    for (bad, status, param) in [
        (
            r#"{"model": "lumina-fast", "input": "#.to_string(),
            400,
            Value::Null,
        ),
        (
            r#"{"model": "lumina-fast", "input": 5}"#.into(),
            400,
            json!("input"),
        ),
        (
            r#"{"model": "lumina-fast", "input": "a", "input": "b"}"#.into(),
            400,
            json!("input"),
        ),
        (
            r#"{"model": "lumina-fast", "input": "a", "stream": "yes"}"#.into(),
            400,
            json!("stream"),
        ),
        (
            r#"{"model": "lumina-fast", "input": [{"type": "function_call", "name": "f"}]}"#.into(),
            400,
            json!("input[0]"),
        ),
        (
            r#"{"model": "lumina-fast", "input": "a", "previous_response_id": "resp_nope"}"#.into(),
            400,
            json!("previous_response_id"),
        ),
        (
            r#"{"model": "gpt-4o", "input": "a"}"#.into(),
            404,
            json!("model"),
        ),
    ] {
        let (got, _, body) = lumina
            .request(Method::POST, "/v1/responses", Some(&key), Some(&bad))
            .await;
        assert_eq!(got, status, "{bad}: {body}");
        let error = assert_openai_error(&body);
        if !param.is_null() {
            assert_eq!(error["param"], param, "{bad}: {body}");
        }
    }
    assert!(mock.requests().is_empty(), "bad input reached an upstream");
    let (status, _, body) = lumina
        .request(Method::GET, "/v1/responses/resp_nope", Some(&key), None)
        .await;
    assert_eq!(status, 404, "{body}");
    assert_openai_error(&body);

    // A request its account cannot pay for is refused in OpenAI's shape and leaves no
    // response behind, streamed or not.
    let poor = lumina.account("Poor", "0.000001").await;
    let (_, poor_key) = lumina.key(&poor).await;
    for stream in [false, true] {
        let body = json!({"model": "lumina-fast", "input": "hello", "max_output_tokens": 4000,
            "stream": stream})
        .to_string();
        let (status, headers, refused) = lumina
            .request(Method::POST, "/v1/responses", Some(&poor_key), Some(&body))
            .await;
        assert_eq!(status, 402, "{refused}");
        assert_eq!(assert_openai_error(&refused)["code"], "insufficient_quota");
        let id = header(&headers, "x-request-id")
            .trim_start_matches("req_")
            .to_string();
        let (status, _, _) = lumina
            .request(
                Method::GET,
                &format!("/v1/responses/resp_{id}"),
                Some(&poor_key),
                None,
            )
            .await;
        assert_eq!(
            status, 404,
            "a refused request left a response (stream={stream})"
        );
    }
    assert!(
        mock.requests().is_empty(),
        "a refused request reached an upstream"
    );

    // Everything the client was told equals the ledger, and the journal reconciles.
    assert!(told > 0);
    assert_eq!(spent_after(&lumina, &account, told).await, told);
    reconciles(&lumina);
}
