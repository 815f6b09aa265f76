//! `POST /v1/chat/completions` end to end: the real `lumina serve` in front of an in-test
//! upstream mock that answers, streams, stalls, fails or cuts. Shapes are checked against
//! expectations written from OpenAI's API reference.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use std::time::Duration;

use common::upstream::{MockUpstream, Mocked, USAGE, parse_sse};
use common::{Lumina, assert_openai_error, header, payloads, user};
use serde_json::{Value, json};

struct Setup {
    _tmp: tempfile::TempDir,
    mock: MockUpstream,
    lumina: Lumina,
    key: String,
}

async fn setup_with(extra: &str) -> Setup {
    let Mocked { tmp, mock, lumina } = Mocked::with(extra).await;
    let account = lumina.account("Chat Co", "50").await;
    let (_, key) = lumina.key(&account).await;
    Setup {
        _tmp: tmp,
        mock,
        lumina,
        key,
    }
}

async fn setup() -> Setup {
    setup_with("").await
}

fn settled(events: &[Value]) -> &Value {
    events
        .iter()
        .find(|e| e["event_type"] == "RequestSettled")
        .expect("no RequestSettled")
}

#[tokio::test]
async fn non_streamed_answers_have_openai_shape_headers_and_pass_fields_through() {
    let s = setup().await;
    let body = json!({
        "model": "lumina-fast", "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}],
        "temperature": 0.3, "top_p": 0.9, "seed": 7, "user": "u-1", "metadata": {"team": "x"}, "n": 1,
        "stop": ["END"], "max_completion_tokens": 100, "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "object"}}},
        "reasoning_effort": "low", "vendor_extension": {"keep": [1, 2]}
    });
    let (status, headers, text) = s.lumina.chat(&s.key, &body).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(header(&headers, "content-type"), "application/json");
    assert_eq!(header(&headers, "x-lumina-route"), "fast");
    assert_eq!(header(&headers, "x-lumina-provider"), "primary");
    assert_eq!(header(&headers, "x-lumina-attempts"), "1");
    assert!(header(&headers, "x-request-id").starts_with("req_"));
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert!(v["id"].is_string() && v["created"].is_i64() && v["model"].is_string());
    assert_eq!(v["choices"][0]["index"], 0);
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "Mock answer to: hello"
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let (p, c, cached, reasoning) = USAGE;
    assert_eq!(v["usage"]["prompt_tokens"], p);
    assert_eq!(v["usage"]["completion_tokens"], c);
    assert_eq!(v["usage"]["total_tokens"], p + c);
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], cached);
    assert_eq!(
        v["usage"]["completion_tokens_details"]["reasoning_tokens"],
        reasoning
    );

    let sent = &s.mock.requests_of("primary")[0];
    assert_eq!(sent.body["model"], "mock-fast");
    for field in [
        "temperature",
        "top_p",
        "seed",
        "user",
        "metadata",
        "stop",
        "max_completion_tokens",
        "response_format",
        "reasoning_effort",
        "vendor_extension",
        "n",
    ] {
        assert_eq!(sent.body[field], body[field], "{field} was not passed on");
    }
    assert!(sent.body.get("stream_options").is_none());
    assert_eq!(sent.headers["authorization"], "Bearer sk-primary-secret");

    let events = s.lumina.events_of(header(&headers, "x-request-id"));
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["RequestRouted", "UpstreamAttempted", "RequestSettled"]
    );
    assert_eq!(events[0]["payload"]["api"], "chat_completions");
    let settled = &settled(&events)["payload"];
    assert_eq!(settled["outcome"], "completed");
    assert_eq!(settled["usage"]["prompt_tokens"], p);
    assert_eq!(settled["usage"]["cached_tokens"], cached);
    assert_eq!(settled["usage"]["estimated"], false);
}

#[tokio::test]
async fn streams_send_sse_chunks_then_done_and_the_usage_chunk_only_when_asked() {
    let s = setup().await;
    for include_usage in [false, true] {
        let mut body = user("lumina-balanced", "stream this please");
        body["stream"] = json!(true);
        if include_usage {
            body["stream_options"] = json!({"include_usage": true});
        }
        let (status, headers, text) = s.lumina.chat(&s.key, &body).await;
        assert_eq!(status, 200, "{text}");
        assert_eq!(header(&headers, "content-type"), "text/event-stream");
        assert_eq!(header(&headers, "x-lumina-route"), "balanced");
        let (chunks, done) = parse_sse(&text);
        assert!(done, "no [DONE]: {text}");
        assert!(text.ends_with("data: [DONE]\n\n"));
        for c in &chunks {
            assert_eq!(c["object"], "chat.completion.chunk");
            assert!(c["id"].is_string() && c["created"].is_i64());
        }
        let content: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(content, "Mock answer to: stream this please");
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        let usage_chunks: Vec<&Value> = chunks.iter().filter(|c| c["usage"].is_object()).collect();
        if include_usage {
            assert_eq!(usage_chunks.len(), 1);
            let last = chunks.last().unwrap();
            assert_eq!(last["choices"], json!([]));
            assert_eq!(last["usage"]["prompt_tokens"], USAGE.0);
        } else {
            assert!(
                usage_chunks.is_empty(),
                "usage chunk sent without include_usage"
            );
        }
        // The upstream is always asked for usage, so accounting never estimates.
        let sent = s.mock.requests_of("primary").pop().unwrap();
        assert_eq!(sent.body["stream_options"]["include_usage"], true);
        assert_eq!(sent.body["stream"], true);
        let events = s.lumina.events_of(header(&headers, "x-request-id"));
        let settled = &settled(&events)["payload"];
        assert_eq!(settled["outcome"], "completed");
        assert_eq!(settled["usage"]["completion_tokens"], USAGE.1);
        assert_eq!(settled["usage"]["estimated"], false);
    }
}

fn weather_tools() -> Value {
    json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}])
}

#[tokio::test]
async fn tool_calls_round_trip_streamed_and_not() {
    let s = setup().await;
    s.mock.set("primary", "tools");
    let mut body = user("lumina-fast", "weather in Paris and Rome?");
    body["tools"] = weather_tools();
    body["tool_choice"] = json!("auto");
    body["parallel_tool_calls"] = json!(true);
    let (status, _, text) = s.lumina.chat(&s.key, &body).await;
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    let calls = v["choices"][0]["message"]["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0]["type"], "function");
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    assert_eq!(calls[1]["function"]["arguments"], "{\"city\":\"Rome\"}");
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    let sent = s.mock.requests_of("primary").pop().unwrap();
    assert_eq!(sent.body["tools"], weather_tools());
    assert_eq!(sent.body["parallel_tool_calls"], true);

    body["stream"] = json!(true);
    let (status, _, text) = s.lumina.chat(&s.key, &body).await;
    assert_eq!(status, 200);
    let (chunks, done) = parse_sse(&text);
    assert!(done);
    let mut args = [String::new(), String::new()];
    let mut names = [String::new(), String::new()];
    for c in &chunks {
        for call in c["choices"][0]["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let i = call["index"].as_u64().unwrap() as usize;
            names[i].push_str(call["function"]["name"].as_str().unwrap_or(""));
            args[i].push_str(call["function"]["arguments"].as_str().unwrap_or(""));
        }
    }
    assert_eq!(names, ["get_weather", "get_weather"]);
    assert_eq!(args, ["{\"city\":\"Paris\"}", "{\"city\":\"Rome\"}"]);

    // The tool results go back the usual way.
    s.mock.set("primary", "ok");
    let follow_up = json!({"model": "lumina-fast", "tools": weather_tools(), "messages": [
        {"role": "user", "content": "weather in Paris?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C and sunny"}]});
    let (status, _, text) = s.lumina.chat(&s.key, &follow_up).await;
    assert_eq!(status, 200, "{text}");
    let sent = s.mock.requests_of("primary").pop().unwrap();
    assert_eq!(sent.body["messages"][2]["tool_call_id"], "call_1");
}

#[tokio::test]
async fn falls_back_on_500_429_timeout_and_refused_connections() {
    let s = setup().await;
    for (mode, class) in [
        ("fail500", "server_error"),
        ("fail429", "rate_limited"),
        ("stall", "timeout"),
    ] {
        s.mock.set("primary", mode);
        let (status, headers, text) = s
            .lumina
            .chat(&s.key, &user("lumina-fast", "fall back"))
            .await;
        assert_eq!(status, 200, "{mode}: {text}");
        assert_eq!(header(&headers, "x-lumina-attempts"), "2", "{mode}");
        assert_eq!(header(&headers, "x-lumina-provider"), "secondary", "{mode}");
        let events = s.lumina.events_of(header(&headers, "x-request-id"));
        let a = payloads(&events, "UpstreamAttempted");
        assert_eq!(a.len(), 2, "{mode}");
        assert_eq!(
            (
                a[0]["outcome"].as_str(),
                a[0]["error_class"].as_str(),
                a[0]["fell_back"].as_bool()
            ),
            (Some("error"), Some(class), Some(true)),
            "{mode}"
        );
        assert_eq!(
            (a[1]["outcome"].as_str(), a[1]["fell_back"].as_bool()),
            (Some("ok"), Some(false))
        );
        assert_eq!(settled(&events)["payload"]["attempts"], 2);
        // A success in between keeps the breaker closed for the next scenario.
        s.mock.set("primary", "ok");
        assert_eq!(
            s.lumina.chat(&s.key, &user("lumina-fast", "reset")).await.0,
            200
        );
    }
    // Streams fall back too while nothing has reached the client.
    s.mock.set("primary", "fail500");
    let mut body = user("lumina-fast", "stream fallback");
    body["stream"] = json!(true);
    let (status, headers, text) = s.lumina.chat(&s.key, &body).await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "x-lumina-attempts"), "2");
    assert!(parse_sse(&text).1);
}

#[tokio::test]
async fn a_refused_connection_falls_back_to_the_next_deployment() {
    let dead = common::free_port();
    let mock = MockUpstream::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let config = format!(
        "[[providers]]\nname = \"dead\"\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:{dead}/v1\"\nmodels = {{ fast = \"m\", balanced = \"m\", reasoning = \"m\" }}\nconnect_timeout_ms = 500\n\n[[providers]]\nname = \"alive\"\nkind = \"openai\"\nbase_url = \"{}\"\nmodels = {{ fast = \"m2\", balanced = \"m2\", reasoning = \"m2\" }}\n",
        mock.base_url("alive")
    );
    let lumina = Lumina::start_with_config(
        &tmp.path().join("data"),
        &tmp.path().join("out"),
        &[],
        Some(&config),
    )
    .await;
    let account = lumina.account("R", "1").await;
    let (_, key) = lumina.key(&account).await;
    let (status, headers, text) = lumina.chat(&key, &user("lumina-fast", "hi")).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(header(&headers, "x-lumina-attempts"), "2");
    let events = lumina.events_of(header(&headers, "x-request-id"));
    assert_eq!(
        payloads(&events, "UpstreamAttempted")[0]["error_class"],
        "connect"
    );
}

#[tokio::test]
async fn a_client_error_upstream_is_returned_as_is_without_fallback() {
    let s = setup().await;
    s.mock.set("primary", "fail400");
    let (status, headers, text) = s.lumina.chat(&s.key, &user("lumina-fast", "bad")).await;
    assert_eq!(status, 400, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    let e = assert_openai_error(&v);
    assert_eq!(e["message"], "temperature must be at most 2");
    assert_eq!(e["param"], "temperature");
    assert_eq!(e["code"], "invalid_value");
    assert!(
        s.mock.requests_of("secondary").is_empty(),
        "fell back on a client error"
    );
    let events = s.lumina.events_of(header(&headers, "x-request-id"));
    assert_eq!(payloads(&events, "UpstreamAttempted").len(), 1);
    assert_eq!(settled(&events)["payload"]["outcome"], "failed");
}

#[tokio::test]
async fn the_breaker_opens_after_repeated_failures_and_closes_after_a_good_probe() {
    let s = setup().await;
    s.mock.set("primary", "fail500");
    for _ in 0..3 {
        let (status, headers, _) = s.lumina.chat(&s.key, &user("lumina-fast", "x")).await;
        assert_eq!(status, 200);
        assert_eq!(header(&headers, "x-lumina-attempts"), "2");
    }
    assert_eq!(s.mock.requests_of("primary").len(), 3);
    // Open: the primary is skipped without being called.
    let (status, headers, _) = s.lumina.chat(&s.key, &user("lumina-fast", "x")).await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "x-lumina-provider"), "secondary");
    assert_eq!(header(&headers, "x-lumina-attempts"), "1");
    assert_eq!(
        s.mock.requests_of("primary").len(),
        3,
        "an open breaker let a request through"
    );
    // After the cool-down one probe goes through; it succeeds and the breaker closes.
    s.mock.set("primary", "ok");
    tokio::time::sleep(Duration::from_millis(400)).await;
    for _ in 0..3 {
        let (status, headers, _) = s.lumina.chat(&s.key, &user("lumina-fast", "x")).await;
        assert_eq!(status, 200);
        assert_eq!(header(&headers, "x-lumina-provider"), "primary");
        assert_eq!(header(&headers, "x-lumina-attempts"), "1");
    }
    assert_eq!(s.mock.requests_of("primary").len(), 6);
}

#[tokio::test]
async fn when_every_attempt_fails_the_status_names_each_attempt_and_no_secret() {
    let s = setup().await;
    let cases = [
        ("fail500", "lumina-fast", 502, "server_error"),
        ("fail503", "lumina-balanced", 503, "overload"),
        ("stall", "lumina-fast", 504, "timeout"),
    ];
    for (mode, model, expected, class) in cases {
        s.mock.set("primary", mode);
        s.mock.set("secondary", mode);
        let (status, headers, text) = s.lumina.chat(&s.key, &user(model, "x")).await;
        assert_eq!(status, expected, "{mode}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        let message = assert_openai_error(&v)["message"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            message.contains("primary/")
                && message.contains("secondary/")
                && message.contains(class),
            "{message}"
        );
        assert!(
            !text.contains("sk-primary-secret") && !text.contains("sk-ant-secret"),
            "{text}"
        );
        let events = s.lumina.events_of(header(&headers, "x-request-id"));
        assert_eq!(settled(&events)["payload"]["outcome"], "failed");
        assert_eq!(settled(&events)["payload"]["error_class"], class);
    }
}

#[tokio::test]
async fn a_stream_cut_mid_way_ends_with_an_error_event_and_settles_the_partial_usage() {
    let s = setup().await;
    s.mock.set("primary", "cut");
    let mut body = user("lumina-fast", "one two three four five six seven");
    body["stream"] = json!(true);
    let (status, headers, text) = s.lumina.chat(&s.key, &body).await;
    assert_eq!(status, 200);
    let (chunks, done) = parse_sse(&text);
    assert!(!done, "a cut stream must not end with [DONE]");
    let last = chunks.last().unwrap();
    assert_eq!(last["error"]["code"], "upstream_cut", "{text}");
    assert!(chunks.len() >= 2, "the client got part of the answer first");
    assert!(
        s.mock.requests_of("secondary").is_empty(),
        "fell back after bytes reached the client"
    );
    let events = s.lumina.events_of(header(&headers, "x-request-id"));
    let settled = &settled(&events)["payload"];
    assert_eq!(settled["outcome"], "cut_midstream");
    assert_eq!(settled["usage"]["estimated"], true);
    assert!(settled["usage"]["completion_tokens"].as_i64().unwrap() > 0);
    assert!(settled["usage"]["prompt_tokens"].as_i64().unwrap() > 0);
    assert_eq!(
        payloads(&events, "UpstreamAttempted")[0]["error_class"],
        "cut"
    );

    // A cut before any byte reached the client falls back.
    let (status, headers, text) = s.lumina.chat(&s.key, &user("lumina-fast", "whole")).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(header(&headers, "x-lumina-attempts"), "2");
}

#[tokio::test]
async fn usage_is_estimated_with_the_tokenizer_when_the_upstream_reports_none() {
    let s = setup().await;
    s.mock.set("primary", "nousage");
    for stream in [false, true] {
        let mut body = user("lumina-fast", "count my tokens please");
        body["stream"] = json!(stream);
        body["stream_options"] = json!({"include_usage": true});
        if !stream {
            body.as_object_mut().unwrap().remove("stream_options");
        }
        let (status, headers, text) = s.lumina.chat(&s.key, &body).await;
        assert_eq!(status, 200, "{text}");
        let events = s.lumina.events_of(header(&headers, "x-request-id"));
        let usage = &settled(&events)["payload"]["usage"];
        assert_eq!(usage["estimated"], true, "stream={stream}");
        // "Mock answer to: count my tokens please" is 8 o200k tokens.
        assert_eq!(usage["completion_tokens"], 8, "stream={stream}");
        if stream {
            let (chunks, done) = parse_sse(&text);
            assert!(done);
            assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], 8);
        }
    }
}

#[tokio::test]
async fn a_client_that_disconnects_mid_stream_is_settled_as_cancelled() {
    let s = setup().await;
    s.mock.set("primary", "slow");
    let mut body = user("lumina-fast", "a long slow answer with many words in it");
    body["stream"] = json!(true);
    let client = reqwest::Client::new();
    let mut res = client
        .post(format!("{}/v1/chat/completions", s.lumina.url))
        .bearer_auth(&s.key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let request_id = header(res.headers(), "x-request-id").to_string();
    let first = res.chunk().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "));
    drop(res);
    drop(client);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let events = s.lumina.events_of(&request_id);
        if let Some(settled) = events.iter().find(|e| e["event_type"] == "RequestSettled") {
            assert_eq!(settled["payload"]["outcome"], "cancelled");
            assert_eq!(settled["payload"]["usage"]["estimated"], true);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the abandoned stream was never settled"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn per_key_limits_answer_429_with_openai_rate_limit_headers() {
    let s = setup().await;
    let account = s.lumina.account("Limited", "5").await;
    let (key_id, key) = s.lumina.key_with(&account, json!({"rpm": 2})).await;
    for remaining in ["1", "0"] {
        let (status, headers, _) = s.lumina.chat(&key, &user("lumina-fast", "x")).await;
        assert_eq!(status, 200);
        assert_eq!(header(&headers, "x-ratelimit-limit-requests"), "2");
        assert_eq!(
            header(&headers, "x-ratelimit-remaining-requests"),
            remaining
        );
        assert!(!header(&headers, "x-ratelimit-reset-requests").is_empty());
    }
    let (status, headers, text) = s.lumina.chat(&key, &user("lumina-fast", "x")).await;
    assert_eq!(status, 429);
    let v: Value = serde_json::from_str(&text).unwrap();
    let e = assert_openai_error(&v);
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("requests"), Some("rate_limit_exceeded"))
    );
    let retry: u64 = header(&headers, "retry-after").parse().unwrap();
    assert!((1..=30).contains(&retry), "{retry}");
    assert_eq!(header(&headers, "x-ratelimit-remaining-requests"), "0");
    assert_eq!(header(&headers, "x-ratelimit-limit-requests"), "2");
    // Raising the limit (a LimitsChanged event) applies on the next request.
    let changed = s
        .lumina
        .admin(
            reqwest::Method::POST,
            &format!("/admin/keys/{key_id}/limits"),
            Some(json!({"rpm": 100, "tpm": 500})),
            200,
        )
        .await;
    assert_eq!(
        (changed["rpm"].as_i64(), changed["tpm"].as_i64()),
        (Some(100), Some(500))
    );
    let (status, headers, _) = s.lumina.chat(&key, &user("lumina-fast", "x")).await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "x-ratelimit-limit-tokens"), "500");
    let mut big = user("lumina-fast", "x");
    big["max_tokens"] = json!(2000);
    let (status, _, text) = s.lumina.chat(&key, &big).await;
    assert_eq!(status, 429);
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["error"]["type"], "tokens");
    let changes = s
        .lumina
        .events()
        .into_iter()
        .filter(|e| e["event_type"] == "LimitsChanged")
        .count();
    assert_eq!(changes, 1);
}

/// Sends raw bytes while reading the answer concurrently (the server may answer, and close,
/// before the request is fully written).
async fn raw_request(url: &str, request: Vec<u8>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = url.trim_start_matches("http://");
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        for chunk in request.chunks(64 * 1024) {
            if write.write_all(chunk).await.is_err() {
                return;
            }
        }
        // Keep the write side open: a slow client has not finished, it has not hung up.
        std::future::pending::<()>().await;
    });
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), read.read_to_end(&mut out)).await;
    writer.abort();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn bad_input_gets_a_clear_4xx_and_the_server_keeps_serving() {
    let s = setup_with("[server]\nbody_timeout_ms = 500\nmax_headers = 60\n").await;
    let post = |body: Vec<u8>| {
        let url = format!("{}/v1/chat/completions", s.lumina.url);
        let key = s.key.clone();
        async move {
            let res = reqwest::Client::new()
                .post(url)
                .bearer_auth(key)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let status = res.status().as_u16();
            let v: Value = serde_json::from_str(&res.text().await.unwrap()).unwrap();
            (status, v)
        }
    };
    // (body, status, param, code)
    type Case = (Vec<u8>, u16, Option<&'static str>, Option<&'static str>);
    let cases: Vec<Case> = vec![
        (b"{\"model\":\"lumina-fast\",\"messages\":[{\"role\":".to_vec(), 400, None, None),
        (b"{\"model\":\"lumina-fast\",\"messages\":\"hi\"}".to_vec(), 400, Some("messages"), None),
        (b"{\"model\":\"lumina-fast\"}".to_vec(), 400, Some("messages"), None),
        (b"{\"model\":\"lumina-fast\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stream\":\"yes\"}".to_vec(), 400, Some("stream"), None),
        (b"{\"model\":\"lumina-fast\",\"messages\":[{\"role\":\"user\",\"content\":\"\xff\xfe\"}]}".to_vec(), 400, None, None),
        (b"{\"model\":\"gpt-nope\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}".to_vec(), 404, Some("model"), Some("model_not_found")),
    ];
    for (body, expected, param, code) in cases {
        let len = body.len();
        let (status, v) = post(body).await;
        assert_eq!(status, expected, "{len}-byte body: {v}");
        let e = assert_openai_error(&v);
        assert_eq!(e["param"].as_str(), param, "{v}");
        if let Some(code) = code {
            assert_eq!(e["code"], code);
        }
    }
    // A 10 MB body: 413, answered as soon as the length is known (the client may still be writing).
    let host = s.lumina.url.trim_start_matches("http://").to_string();
    let big = 10 * 1024 * 1024;
    let mut request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {big}\r\n\r\n",
        s.key
    )
    .into_bytes();
    request.extend(std::iter::repeat_n(b' ', big));
    let answer = raw_request(&s.lumina.url, request).await;
    assert!(
        answer.starts_with("HTTP/1.1 413"),
        "{}",
        &answer[..answer.len().min(300)]
    );
    assert!(answer.contains("payload_too_large"), "{answer}");
    // A header flood.
    let mut flood = reqwest::header::HeaderMap::new();
    for i in 0..80 {
        flood.insert(
            reqwest::header::HeaderName::from_bytes(format!("x-flood-{i}").as_bytes()).unwrap(),
            "v".parse().unwrap(),
        );
    }
    let res = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", s.lumina.url))
        .headers(flood)
        .bearer_auth(&s.key)
        .json(&user("lumina-fast", "x"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 431);
    let v: Value = serde_json::from_str(&res.text().await.unwrap()).unwrap();
    assert_eq!(assert_openai_error(&v)["code"], "headers_too_large");
    // A slow client that never finishes its body.
    let host = s.lumina.url.trim_start_matches("http://").to_string();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 500\r\nConnection: close\r\n\r\n{{\"model\":",
        s.key
    );
    let answer = raw_request(&s.lumina.url, head.into_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    // Still serving.
    assert_eq!(
        s.lumina
            .request(reqwest::Method::GET, "/healthz", None, None)
            .await
            .0,
        200
    );
    assert_eq!(
        s.lumina
            .chat(&s.key, &user("lumina-fast", "still there?"))
            .await
            .0,
        200
    );
}

#[tokio::test]
async fn the_anthropic_adapter_translates_requests_answers_and_streams() {
    let s = setup().await;
    let body = json!({"model": "lumina-reasoning", "max_tokens": 300, "tools": weather_tools(), "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": [{"type": "text", "text": "What is in this image?"}, {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/AA=="}}]},
        {"role": "assistant", "content": "Let me check.", "tool_calls": [{"id": "toolu_0", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}]},
        {"role": "tool", "tool_call_id": "toolu_0", "content": "snow"},
        {"role": "user", "content": "And now?"}]});
    let (status, headers, text) = s.lumina.chat(&s.key, &body).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(header(&headers, "x-lumina-provider"), "claude");
    let sent = s.mock.requests_of("claude").pop().unwrap();
    assert_eq!(sent.api, "messages");
    assert_eq!(sent.headers["x-api-key"], "sk-ant-secret");
    assert_eq!(sent.headers["anthropic-version"], "2023-06-01");
    assert_eq!(sent.body["system"], "You are terse.");
    assert_eq!(sent.body["model"], "claude-mock");
    assert_eq!(sent.body["max_tokens"], 300);
    assert_eq!(
        sent.body["messages"][0]["content"][1]["source"]["media_type"],
        "image/jpeg"
    );
    assert_eq!(sent.body["messages"][1]["content"][1]["type"], "tool_use");
    assert_eq!(
        sent.body["messages"][2]["content"][0]["type"],
        "tool_result"
    );
    assert_eq!(sent.body["messages"][2]["content"][1]["text"], "And now?");
    assert_eq!(sent.body["tools"][0]["input_schema"]["required"][0], "city");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "Claude mock answer to: And now?"
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["prompt_tokens"], 30);
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 6);
    assert_eq!(v["usage"]["completion_tokens"], 9);

    // Streaming with a tool call.
    s.mock.set("claude", "tools");
    let mut stream = user("lumina-reasoning", "weather?");
    stream["tools"] = weather_tools();
    stream["stream"] = json!(true);
    stream["stream_options"] = json!({"include_usage": true});
    let (status, headers, text) = s.lumina.chat(&s.key, &stream).await;
    assert_eq!(status, 200, "{text}");
    let (chunks, done) = parse_sse(&text);
    assert!(done);
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "Claude mock answer to: weather?");
    let args: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str())
        .collect();
    assert_eq!(args, "{\"city\": \"Paris\"}");
    let finish: Vec<&str> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["finish_reason"].as_str())
        .collect();
    assert_eq!(finish, ["tool_calls"]);
    assert_eq!(chunks.last().unwrap()["usage"]["prompt_tokens"], 30);
    let events = s.lumina.events_of(header(&headers, "x-request-id"));
    assert_eq!(settled(&events)["payload"]["usage"]["cached_tokens"], 6);

    // Anthropic's 529 "overloaded" falls back.
    s.mock.set("claude", "fail529");
    let (status, headers, _) = s.lumina.chat(&s.key, &user("lumina-reasoning", "x")).await;
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "x-lumina-provider"), "secondary");
    let events = s.lumina.events_of(header(&headers, "x-request-id"));
    assert_eq!(
        payloads(&events, "UpstreamAttempted")[0]["error_class"],
        "overload"
    );
}

#[tokio::test]
async fn the_events_of_a_scripted_mix_are_exactly_what_happened() {
    let s = setup().await;
    let mut ids = Vec::new();
    let mut send = async |body: Value, prepare: &dyn Fn(&MockUpstream)| {
        prepare(&s.mock);
        let (status, headers, _) = s.lumina.chat(&s.key, &body).await;
        ids.push((header(&headers, "x-request-id").to_string(), status));
    };
    send(user("lumina-auto", "hello!"), &|m| m.set("primary", "ok")).await;
    send(
        user(
            "lumina-auto",
            "Prove step by step that there are infinitely many primes.",
        ),
        &|_| {},
    )
    .await;
    send(user("lumina-balanced", "x"), &|m| {
        m.set("primary", "fail500")
    })
    .await;
    let mut streamed = user("lumina-fast", "stream");
    streamed["stream"] = json!(true);
    send(streamed, &|m| m.set("primary", "ok")).await;
    send(user("lumina-fast", "bad"), &|m| m.set("primary", "fail400")).await;
    let expect = [
        // (status, path, attempts as (deployment, outcome, fell_back), settled outcome)
        (
            200,
            "fast",
            vec![("primary/mock-fast", "ok", false)],
            "completed",
        ),
        (
            200,
            "reasoning",
            vec![("claude/claude-mock", "ok", false)],
            "completed",
        ),
        (
            200,
            "balanced",
            vec![
                ("primary/mock-balanced", "error", true),
                ("secondary/mock-balanced-2", "ok", false),
            ],
            "completed",
        ),
        (
            200,
            "fast",
            vec![("primary/mock-fast", "ok", false)],
            "completed",
        ),
        (
            400,
            "fast",
            vec![("primary/mock-fast", "error", false)],
            "failed",
        ),
    ];
    for ((id, status), (want_status, path, want_attempts, outcome)) in ids.iter().zip(expect) {
        assert_eq!(*status, want_status, "{id}");
        let events = s.lumina.events_of(id);
        assert_eq!(events[0]["event_type"], "RequestRouted");
        assert_eq!(events[0]["payload"]["path"], path);
        assert!(
            events[0]["payload"]["features"]["prompt_tokens"]
                .as_f64()
                .unwrap()
                > 0.0
        );
        assert_eq!(events[0]["payload"]["policy_version"], 2);
        assert!(
            !events[0]["payload"]["top_features"]
                .as_array()
                .unwrap()
                .is_empty()
        );
        let got: Vec<(String, String, bool)> = payloads(&events, "UpstreamAttempted")
            .iter()
            .map(|a| {
                (
                    a["deployment"].as_str().unwrap().to_string(),
                    a["outcome"].as_str().unwrap().to_string(),
                    a["fell_back"].as_bool().unwrap(),
                )
            })
            .collect();
        let want: Vec<(String, String, bool)> = want_attempts
            .iter()
            .map(|(d, o, f)| (d.to_string(), o.to_string(), *f))
            .collect();
        assert_eq!(got, want, "{id}");
        let settled = &settled(&events)["payload"];
        assert_eq!(settled["outcome"], outcome, "{id}");
        assert_eq!(settled["path"], path);
        assert_eq!(
            events.last().unwrap()["event_type"],
            "RequestSettled",
            "settlement is the last fact of {id}"
        );
        for e in &events {
            assert_eq!(e["account_id"], events[0]["account_id"]);
            assert!(e["api_key_id"].as_str().unwrap().starts_with("key_"));
        }
        if outcome == "completed" {
            assert!(settled["usage"]["prompt_tokens"].as_i64().unwrap() > 0);
        }
    }
}
