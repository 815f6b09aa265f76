//! An upstream mock the tests control: it speaks OpenAI's Chat Completions and Anthropic's
//! Messages API (streaming included) under `/{provider}/v1/…`, and behaves per provider as the
//! test sets it: answer, call tools, stall, fail with a status, or cut a stream mid-way. It
//! records every request it receives.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures::StreamExt;
use serde_json::{Value, json};

/// One request the mock received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The provider segment of the path.
    pub provider: String,
    /// `chat/completions` or `messages`.
    pub api: String,
    /// Lower-cased header names and values.
    pub headers: HashMap<String, String>,
    /// The JSON body.
    pub body: Value,
}

#[derive(Default)]
struct MockState {
    modes: Mutex<HashMap<String, String>>,
    failures_left: Mutex<HashMap<String, u32>>,
    requests: Mutex<Vec<Recorded>>,
}

/// The running mock.
pub struct MockUpstream {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    state: Arc<MockState>,
}

/// The usage every successful mock answer reports.
pub const USAGE: (u64, u64, u64, u64) = (11, 7, 3, 2);

impl MockUpstream {
    /// Starts the mock on a free port.
    pub async fn start() -> MockUpstream {
        lumina_gateway::providers::install_crypto_provider();
        let state = Arc::new(MockState::default());
        let app = Router::new()
            .route("/{provider}/v1/chat/completions", post(openai))
            .route("/{provider}/v1/messages", post(anthropic))
            .route("/{provider}/v1/embeddings", post(embeddings))
            .route("/{provider}/v1/messages/count_tokens", post(count_tokens))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        MockUpstream { url, state }
    }

    /// The base URL of one provider (`…/{provider}/v1`).
    pub fn base_url(&self, provider: &str) -> String {
        format!("{}/{provider}/v1", self.url)
    }

    /// Sets how `provider` behaves: `ok`, `tools`, `tools_when_asked`, `nousage`, `slow` (300 ms between chunks),
    /// `paced` (40 ms), `stall`, `cut`,
    /// `fail400`, `fail401` (with a masked key in its message), `fail429`, `fail500`,
    /// `fail503`, `fail529`; and misbehaviours with a parameter: `completion=<N>` (reports N
    /// completion tokens, N written as given), `usage=<JSON>` (reports this usage object),
    /// `body=<JSON>` (answers 200 with this body), `redirect302=<URL>`, `redirect307=<URL>`,
    /// `retry429=<seconds>` (429 with `retry-after`), `delay=<ms>` (answers as `ok` after a pause), `endless` (a body that never ends),
    /// `endless_sse` (chunks without end or usage), `error_event` (an error object after a few
    /// chunks).
    pub fn set(&self, provider: &str, mode: &str) {
        self.state
            .modes
            .lock()
            .unwrap()
            .insert(provider.into(), mode.into());
    }

    /// `provider` fails with 500 for its next `n` requests, then behaves as its mode says.
    pub fn fail_next(&self, provider: &str, n: u32) {
        self.state
            .failures_left
            .lock()
            .unwrap()
            .insert(provider.into(), n);
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    /// Requests received by `provider`.
    pub fn requests_of(&self, provider: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.provider == provider)
            .collect()
    }

    /// Forgets the recorded requests.
    pub fn clear(&self) {
        self.state.requests.lock().unwrap().clear();
    }
}

impl MockState {
    fn mode(&self, provider: &str) -> String {
        let mut left = self.failures_left.lock().unwrap();
        if let Some(n) = left.get_mut(provider)
            && *n > 0
        {
            *n -= 1;
            return "fail500".into();
        }
        self.modes
            .lock()
            .unwrap()
            .get(provider)
            .cloned()
            .unwrap_or_else(|| "ok".into())
    }

    /// Records a request to `api` of `provider` and returns its body (null when not JSON) and
    /// the mode `provider` answers it in.
    fn received(
        &self,
        provider: &str,
        api: &str,
        headers: &HeaderMap,
        raw: &[u8],
    ) -> (Value, String) {
        let body: Value = serde_json::from_slice(raw).unwrap_or(Value::Null);
        self.record(provider, api, headers, &body);
        (body, self.mode(provider))
    }

    fn record(&self, provider: &str, api: &str, headers: &HeaderMap, body: &Value) {
        let headers = headers
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        self.requests.lock().unwrap().push(Recorded {
            provider: provider.into(),
            api: api.into(),
            headers,
            body: body.clone(),
        });
    }
}

fn error(status: u16, kind: &str, message: &str) -> Response {
    let body = json!({"error": {"message": message, "type": kind, "param": if status == 400 { json!("temperature") } else { Value::Null }, "code": if status == 400 { json!("invalid_value") } else { Value::Null }}});
    (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response()
}

fn anthropic_error(status: u16, kind: &str, message: &str) -> Response {
    let body = json!({"type": "error", "error": {"type": kind, "message": message}});
    (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response()
}

fn last_user_text(body: &Value) -> String {
    body["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .map(|m| match &m["content"] {
            Value::String(s) => s.clone(),
            Value::Array(parts) => parts
                .iter()
                .filter_map(|p| p["text"].as_str())
                .collect::<Vec<_>>()
                .join(" "),
            _ => String::new(),
        })
        .unwrap_or_default()
}

fn first_tool_name(body: &Value) -> String {
    body["tools"][0]["function"]["name"]
        .as_str()
        .or_else(|| body["tools"][0]["name"].as_str())
        .unwrap_or("get_weather")
        .to_string()
}

type Events = Vec<Result<Bytes, std::io::Error>>;

fn sse_body(events: Events, gap: Duration) -> Body {
    let stream =
        futures::stream::iter(events.into_iter().enumerate()).then(move |(i, e)| async move {
            if i > 0 && !gap.is_zero() {
                tokio::time::sleep(gap).await;
            }
            e
        });
    Body::from_stream(stream)
}

fn sse_response(body: Body) -> Response {
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(body)
        .unwrap()
}

fn data(v: &Value) -> Result<Bytes, std::io::Error> {
    Ok(Bytes::from(format!("data: {v}\n\n")))
}

fn cut() -> Result<Bytes, std::io::Error> {
    Err(std::io::Error::new(
        std::io::ErrorKind::ConnectionReset,
        "mock cut",
    ))
}

/// Input tokens the mock reports per embedded input.
pub const EMBED_TOKENS_PER_INPUT: u64 = 5;

/// `/v1/embeddings`: a 3-dimensional vector per input (as floats, or base64 when asked), and
/// [`EMBED_TOKENS_PER_INPUT`] tokens per input. Modes: `ok`, `fail400`, `fail500`, `nousage`,
/// `usage=<JSON>`, `body=<JSON>`.
async fn embeddings(
    State(state): State<Arc<MockState>>,
    Path(provider): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (body, mode) = state.received(&provider, "embeddings", &headers, &body);
    let (mode_name, param) = mode.split_once('=').unwrap_or((mode.as_str(), ""));
    match mode_name {
        "fail400" => return error(400, "invalid_request_error", "input is too long"),
        "fail500" => return error(500, "server_error", "boom"),
        "body" => {
            return Response::builder()
                .header("content-type", "application/json")
                .body(Body::from(param.to_string()))
                .unwrap();
        }
        _ => {}
    }
    let inputs = match &body["input"] {
        Value::Array(items) if items.iter().all(|i| !i.is_number()) => items.len(),
        _ => 1,
    };
    let base64 = body["encoding_format"] == "base64";
    let data: Vec<Value> = (0..inputs)
        .map(|i| {
            let vector = [0.5f32, -0.25, i as f32];
            let embedding = if base64 {
                use base64::Engine as _;
                let bytes: Vec<u8> = vector.iter().flat_map(|f| f.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    let tokens = EMBED_TOKENS_PER_INPUT * inputs as u64;
    let usage: Value = match mode_name {
        "nousage" => Value::Null,
        "usage" => serde_json::from_str(param).unwrap_or(Value::Null),
        _ => json!({"prompt_tokens": tokens, "total_tokens": tokens}),
    };
    let mut answer = json!({"object": "list", "data": data, "model": body["model"]});
    if !usage.is_null() {
        answer["usage"] = usage;
    }
    axum::Json(answer).into_response()
}

/// The bearer key a request carried.
fn sent_key(headers: &HeaderMap) -> String {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .trim_start_matches("Bearer ")
        .to_string()
}

async fn openai(
    State(state): State<Arc<MockState>>,
    Path(provider): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (body, mode) = state.received(&provider, "chat/completions", &headers, &body);
    let (mode_name, param) = mode.split_once('=').unwrap_or((mode.as_str(), ""));
    if mode_name == "delay" {
        tokio::time::sleep(Duration::from_millis(param.parse().unwrap_or(0))).await;
    }
    match mode_name {
        "echo400" => {
            let sent = sent_key(&headers);
            return error(
                400,
                "invalid_request_error",
                &format!("The key {sent} may not use this model."),
            );
        }
        "echo401" => {
            // A careless upstream that repeats the key it was sent.
            let sent = sent_key(&headers);
            return error(
                401,
                "invalid_request_error",
                &format!("Incorrect API key provided: {sent}. Check your key."),
            );
        }
        "fail401" => {
            return error(
                401,
                "invalid_request_error",
                "Incorrect API key provided: sk-pr****cret. You can find your API key at https://example.com.",
            );
        }
        "retry429" => {
            return Response::builder()
                .status(429)
                .header("retry-after", param)
                .header("content-type", "application/json")
                .body(Body::from(
                    r#"{"error":{"message":"slow down","type":"rate_limit_error"}}"#,
                ))
                .unwrap();
        }
        "redirect302" | "redirect307" => {
            let status = if mode_name == "redirect302" { 302 } else { 307 };
            return Response::builder()
                .status(status)
                .header("location", param)
                .body(Body::empty())
                .unwrap();
        }
        "body" => {
            return Response::builder()
                .header("content-type", "application/json")
                .body(Body::from(param.to_string()))
                .unwrap();
        }
        "endless" => {
            let chunk = Bytes::from(vec![b' '; 1024 * 1024]);
            let body = futures::stream::repeat_with(move || Ok::<_, std::io::Error>(chunk.clone()));
            return Response::builder()
                .header("content-type", "application/json")
                .body(Body::from_stream(body))
                .unwrap();
        }
        "endless_sse" => {
            let chunk = Bytes::from(format!(
                "data: {}\n\n",
                json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1_700_000_000,
                    "model": "m", "choices": [{"index": 0, "delta": {"content": "word "}, "finish_reason": null}]})
            ));
            let body = futures::stream::repeat_with(move || Ok::<_, std::io::Error>(chunk.clone()));
            return sse_response(Body::from_stream(body));
        }
        "fail400" => {
            return error(
                400,
                "invalid_request_error",
                "temperature must be at most 2",
            );
        }
        "fail429" => return error(429, "rate_limit_error", "slow down"),
        "fail500" => return error(500, "server_error", "boom"),
        "fail503" => return error(503, "server_error", "overloaded"),
        "stall" => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            return error(500, "server_error", "too late");
        }
        _ => {}
    }
    let model = body["model"].as_str().unwrap_or("").to_string();
    let stream = body["stream"].as_bool().unwrap_or(false);
    let want_usage = body["stream_options"]["include_usage"]
        .as_bool()
        .unwrap_or(false);
    let (p, c, cached, reasoning) = USAGE;
    let usage_text = match mode_name {
        "completion" => format!(r#"{{"prompt_tokens": {p}, "completion_tokens": {param}}}"#),
        "usage" => param.to_string(),
        _ => json!({"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c,
            "prompt_tokens_details": {"cached_tokens": cached}, "completion_tokens_details": {"reasoning_tokens": reasoning}})
        .to_string(),
    };
    // Written as text: serde_json would turn 10^16 and beyond into other numbers.
    let usage = serde_json::value::RawValue::from_string(usage_text).unwrap();
    let text = format!("Mock answer to: {}", last_user_text(&body));
    // `tools` always calls a tool; `tools_when_asked` only when the request offers tools and
    // its last message is not a tool's result.
    let last_is_tool_result = body["messages"]
        .as_array()
        .and_then(|m| m.last())
        .is_some_and(|m| m["role"] == "tool");
    let tools = mode == "tools"
        || (mode == "tools_when_asked" && body["tools"].is_array() && !last_is_tool_result);
    let name = first_tool_name(&body);
    if !stream {
        if mode == "cut" {
            let chunks: Events = vec![
                Ok(Bytes::from_static(b"{\"id\":\"x\",\"choices\":[")),
                cut(),
            ];
            return Response::builder()
                .header("content-type", "application/json")
                .body(Body::from_stream(futures::stream::iter(chunks)))
                .unwrap();
        }
        let message = if tools {
            json!({"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": name, "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "call_2", "type": "function", "function": {"name": name, "arguments": "{\"city\":\"Rome\"}"}}]})
        } else {
            json!({"role": "assistant", "content": text, "refusal": null})
        };
        let out = json!({"id": "chatcmpl-mock", "object": "chat.completion", "created": 1_700_000_000, "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": if tools { "tool_calls" } else { "stop" }}],
            "system_fingerprint": "fp_mock"});
        let mut text = out.to_string();
        if mode != "nousage" {
            text.pop();
            text.push_str(&format!(r#","usage":{}}}"#, usage.get()));
        }
        return Response::builder()
            .header("content-type", "application/json")
            .body(Body::from(text))
            .unwrap();
    }
    let chunk = |delta: Value, finish: Value| {
        json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]})
    };
    let mut events: Events = vec![data(&chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    ))];
    if tools {
        events.push(data(&chunk(json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": name, "arguments": ""}}]}), Value::Null)));
        events.push(data(&chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\":"}}]}),
            Value::Null,
        )));
        events.push(data(&chunk(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "\"Paris\"}"}}]}),
            Value::Null,
        )));
        events.push(data(&chunk(json!({"tool_calls": [{"index": 1, "id": "call_2", "type": "function", "function": {"name": name, "arguments": "{\"city\":\"Rome\"}"}}]}), Value::Null)));
        events.push(data(&chunk(json!({}), json!("tool_calls"))));
    } else {
        for word in text.split_inclusive(' ') {
            events.push(data(&chunk(json!({"content": word}), Value::Null)));
        }
        if mode == "cut" {
            events.truncate(3);
            events.push(cut());
            return sse_response(sse_body(events, Duration::from_millis(20)));
        }
        if mode == "error_event" {
            events.truncate(3);
            events.push(data(&json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})));
            return sse_response(sse_body(events, Duration::from_millis(5)));
        }
        events.push(data(&chunk(json!({}), json!("stop"))));
    }
    if want_usage && mode != "nousage" {
        events.push(Ok(Bytes::from(format!(
            "data: {{\"id\":\"chatcmpl-mock\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":{},\"choices\":[],\"usage\":{}}}\n\n",
            json!(model),
            usage.get()
        ))));
    }
    events.push(Ok(Bytes::from_static(b"data: [DONE]\n\n")));
    let gap = if mode == "slow" {
        Duration::from_millis(300)
    } else {
        Duration::from_millis(2)
    };
    sse_response(sse_body(events, gap))
}

fn anthropic_event(kind: &str, v: Value) -> Result<Bytes, std::io::Error> {
    Ok(Bytes::from(format!("event: {kind}\ndata: {v}\n\n")))
}

/// The input tokens the mock's `count_tokens` reports, whatever the request.
pub const COUNTED_TOKENS: u64 = 4242;

/// Anthropic's `/v1/messages/count_tokens`: [`COUNTED_TOKENS`], or 500 in mode `fail500`.
async fn count_tokens(
    State(state): State<Arc<MockState>>,
    Path(provider): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (_, mode) = state.received(&provider, "messages/count_tokens", &headers, &body);
    if mode == "fail500" {
        return anthropic_error(500, "api_error", "boom");
    }
    axum::Json(json!({"input_tokens": COUNTED_TOKENS})).into_response()
}

async fn anthropic(
    State(state): State<Arc<MockState>>,
    Path(provider): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (body, mode) = state.received(&provider, "messages", &headers, &body);
    if headers.get("x-api-key").is_none() || headers.get("anthropic-version").is_none() {
        return anthropic_error(
            401,
            "authentication_error",
            "missing x-api-key or anthropic-version",
        );
    }
    match mode.as_str() {
        "fail400" => return anthropic_error(400, "invalid_request_error", "max_tokens: too large"),
        "fail500" => return anthropic_error(500, "api_error", "boom"),
        "fail529" => return anthropic_error(529, "overloaded_error", "Overloaded"),
        _ => {}
    }
    let model = body["model"].as_str().unwrap_or("").to_string();
    let text = format!("Claude mock answer to: {}", last_user_text(&body));
    let tools = mode == "tools";
    let name = body["tools"][0]["name"]
        .as_str()
        .unwrap_or("get_weather")
        .to_string();
    let usage = json!({"input_tokens": 20, "output_tokens": 9, "cache_creation_input_tokens": 4, "cache_read_input_tokens": 6});
    // With thinking enabled the answer opens with a signed thinking block.
    let thinking = (body["thinking"]["type"] == "enabled").then(|| {
        let thought = format!("Mock thinking about: {}", last_user_text(&body));
        let signature = format!("mocksig-{}", thought.len());
        (thought, signature)
    });
    if !body["stream"].as_bool().unwrap_or(false) {
        let mut content = Vec::new();
        if let Some((thought, signature)) = &thinking {
            content.push(json!({"type": "thinking", "thinking": thought, "signature": signature}));
        }
        content.push(json!({"type": "text", "text": text}));
        if tools {
            content.push(json!({"type": "tool_use", "id": "toolu_1", "name": name, "input": {"city": "Paris"}}));
        }
        return axum::Json(json!({"id": "msg_mock", "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": if tools { "tool_use" } else { "end_turn" }, "stop_sequence": null, "usage": usage}))
        .into_response();
    }
    let mut events: Events = vec![anthropic_event(
        "message_start",
        json!({"type": "message_start", "message": {"id": "msg_mock", "type": "message",
        "role": "assistant", "model": model, "content": [], "stop_reason": null,
        "usage": {"input_tokens": 20, "output_tokens": 1, "cache_creation_input_tokens": 4, "cache_read_input_tokens": 6}}}),
    )];
    let first = usize::from(thinking.is_some());
    if let Some((thought, signature)) = &thinking {
        events.push(anthropic_event("content_block_start", json!({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}})));
        for piece in thought.split_inclusive(' ') {
            events.push(anthropic_event("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": piece}})));
        }
        events.push(anthropic_event("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": signature}})));
        events.push(anthropic_event(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ));
    }
    events.push(anthropic_event(
        "content_block_start",
        json!({"type": "content_block_start", "index": first, "content_block": {"type": "text", "text": ""}}),
    ));
    events.push(anthropic_event("ping", json!({"type": "ping"})));
    for word in text.split_inclusive(' ') {
        events.push(anthropic_event("content_block_delta", json!({"type": "content_block_delta", "index": first, "delta": {"type": "text_delta", "text": word}})));
    }
    events.push(anthropic_event(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": first}),
    ));
    if tools {
        let i = first + 1;
        events.push(anthropic_event("content_block_start", json!({"type": "content_block_start", "index": i, "content_block": {"type": "tool_use", "id": "toolu_1", "name": name, "input": {}}})));
        events.push(anthropic_event("content_block_delta", json!({"type": "content_block_delta", "index": i, "delta": {"type": "input_json_delta", "partial_json": "{\"city\": "}})));
        events.push(anthropic_event("content_block_delta", json!({"type": "content_block_delta", "index": i, "delta": {"type": "input_json_delta", "partial_json": "\"Paris\"}"}})));
        events.push(anthropic_event(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": i}),
        ));
    }
    if mode == "cut" {
        events.truncate(4);
        events.push(cut());
        return sse_response(sse_body(events, Duration::from_millis(10)));
    }
    events.push(anthropic_event("message_delta", json!({"type": "message_delta",
        "delta": {"stop_reason": if tools { "tool_use" } else { "end_turn" }, "stop_sequence": null}, "usage": {"output_tokens": 9}})));
    events.push(anthropic_event(
        "message_stop",
        json!({"type": "message_stop"}),
    ));
    sse_response(sse_body(events, Duration::from_millis(2)))
}

/// A `lumina.toml` for the mock: `primary` and `secondary` (OpenAI-compatible) serve fast and
/// balanced in that order; `claude` (Anthropic) then `secondary` serve reasoning. Breakers open
/// after 3 consecutive failures and probe after 300 ms; `extra` is appended.
pub fn gateway_config(mock: &MockUpstream, extra: &str) -> String {
    format!(
        r#"
[[providers]]
name = "primary"
kind = "openai"
base_url = "{primary}"
api_key_env = "MOCK_PRIMARY_KEY"
models = {{ fast = "mock-fast", balanced = "mock-balanced", reasoning = "mock-reasoning" }}
timeout_ms = 5000
first_byte_timeout_ms = 700

[[providers]]
name = "secondary"
kind = "openai"
base_url = "{secondary}"
models = {{ fast = "mock-fast-2", balanced = "mock-balanced-2", reasoning = "mock-reasoning-2" }}
timeout_ms = 5000
first_byte_timeout_ms = 700

[[providers]]
name = "claude"
kind = "anthropic"
base_url = "{claude}"
api_key_env = "MOCK_ANTHROPIC_KEY"
models = {{ reasoning = "claude-mock" }}
timeout_ms = 5000

[routes.fast]
providers = ["primary", "secondary"]

[routes.balanced]
providers = ["primary", "secondary"]

[routes.reasoning]
providers = ["claude", "secondary"]

[breaker]
consecutive_failures = 3
cooldown_ms = 300
min_requests = 1000

{extra}
"#,
        primary = mock.base_url("primary"),
        secondary = mock.base_url("secondary"),
        claude = mock.base_url("claude"),
    )
}

/// `lumina serve` in front of a fresh mock, in a temp dir of its own.
pub struct Mocked {
    /// Holds the data and output dirs.
    pub tmp: tempfile::TempDir,
    /// The upstream.
    pub mock: MockUpstream,
    /// The gateway.
    pub lumina: super::Lumina,
}

impl Mocked {
    /// Starts the mock, then `lumina serve` with the configuration `config` writes for it and
    /// [`GATEWAY_ENV`] plus `env`.
    pub async fn start(
        config: impl FnOnce(&MockUpstream) -> String,
        env: &[(&str, &str)],
    ) -> Mocked {
        let mock = MockUpstream::start().await;
        let tmp = tempfile::tempdir().unwrap();
        let mut all: Vec<(&str, &str)> = GATEWAY_ENV.to_vec();
        all.extend_from_slice(env);
        let lumina = super::Lumina::start_with_config(
            &tmp.path().join("data"),
            &tmp.path().join("out"),
            &all,
            Some(&config(&mock)),
        )
        .await;
        Mocked { tmp, mock, lumina }
    }

    /// [`Mocked::start`] with [`gateway_config`] and `extra`.
    pub async fn with(extra: &str) -> Mocked {
        Mocked::start(|mock| gateway_config(mock, extra), &[]).await
    }
}

/// Environment the gateway needs for [`gateway_config`].
pub const GATEWAY_ENV: [(&str, &str); 2] = [
    ("MOCK_PRIMARY_KEY", "sk-primary-secret"),
    ("MOCK_ANTHROPIC_KEY", "sk-ant-secret"),
];

/// Removes the recorded requests (between scenarios).
pub fn reset(mock: &MockUpstream) {
    mock.clear();
}

/// The stream a test read: `data:` payloads and whether it ended with `[DONE]`.
pub fn parse_sse(text: &str) -> (Vec<Value>, bool) {
    let mut events = Vec::new();
    let mut done = false;
    for block in text.split("\n\n").filter(|b| !b.is_empty()) {
        let payload = block
            .strip_prefix("data: ")
            .unwrap_or_else(|| panic!("not an SSE data line: {block:?}"));
        if payload == "[DONE]" {
            done = true;
        } else {
            events.push(serde_json::from_str(payload).unwrap_or_else(|e| panic!("{e}: {payload}")));
        }
    }
    assert!(
        text.ends_with("\n\n") || text.is_empty(),
        "stream does not end with a blank line: {text:?}"
    );
    (events, done)
}
