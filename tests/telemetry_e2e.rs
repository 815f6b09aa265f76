//! OpenTelemetry traces and the GenAI metrics, end to end: the real `lumina serve` exports
//! spans over OTLP (HTTP/protobuf) to a receiver in this test, decoded with the OpenTelemetry
//! protocol's own message types; the mock upstream records the `traceparent` each attempt
//! carried; `/metrics` is read after traffic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use common::upstream::{MockUpstream, Mocked, gateway_config, parse_sse};
use common::{Lumina, header, nanos, payloads, user};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use prost::Message;
use serde_json::{Value, json};

/// A span as the receiver got it.
#[derive(Debug, Clone)]
struct Got {
    trace_id: String,
    span_id: String,
    parent: String,
    name: String,
    /// 1 internal, 2 server, 3 client.
    kind: i32,
    attributes: BTreeMap<String, Value>,
    /// 2: error.
    status: i32,
    service: Option<String>,
}

fn any(value: Option<&Any>) -> Value {
    match value {
        Some(Any::StringValue(s)) => json!(s),
        Some(Any::IntValue(i)) => json!(i),
        Some(Any::DoubleValue(d)) => json!(d),
        Some(Any::BoolValue(b)) => json!(b),
        Some(Any::ArrayValue(a)) => {
            Value::Array(a.values.iter().map(|v| any(v.value.as_ref())).collect())
        }
        _ => Value::Null,
    }
}

/// An OTLP/HTTP receiver on a free port: every span of every export, and how many exports.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Got>>>,
    exports: Arc<Mutex<usize>>,
}

async fn traces(State(r): State<Receiver>, body: Bytes) -> &'static str {
    r.take(ExportTraceServiceRequest::decode(body).expect("an OTLP trace export"));
    ""
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.take(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Receiver {
    /// Keeps every span of one export.
    fn take(&self, request: ExportTraceServiceRequest) {
        let r = self;
        *r.exports.lock().unwrap() += 1;
        for resource in request.resource_spans {
            let service = resource.resource.as_ref().and_then(|res| {
                res.attributes
                    .iter()
                    .find(|a| a.key == "service.name")
                    .and_then(|a| {
                        any(a.value.as_ref().and_then(|v| v.value.as_ref()))
                            .as_str()
                            .map(str::to_string)
                    })
            });
            for scope in resource.scope_spans {
                for span in scope.spans {
                    let attributes = span
                        .attributes
                        .iter()
                        .map(|a| {
                            (
                                a.key.clone(),
                                any(a.value.as_ref().and_then(|v| v.value.as_ref())),
                            )
                        })
                        .collect();
                    r.spans.lock().unwrap().push(Got {
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent: hex(&span.parent_span_id),
                        name: span.name,
                        kind: span.kind,
                        attributes,
                        status: span.status.map_or(0, |s| s.code),
                        service: service.clone(),
                    });
                }
            }
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Receiver {
    async fn start() -> (Receiver, String) {
        let receiver = Receiver::default();
        let app = Router::new()
            .route("/v1/traces", post(traces))
            .with_state(receiver.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (receiver, url)
    }

    /// An OTLP/gRPC receiver on a free port.
    async fn start_grpc() -> (Receiver, String) {
        let receiver = Receiver::default();
        let port = common::free_port();
        let service = TraceServiceServer::new(receiver.clone());
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve(format!("127.0.0.1:{port}").parse().unwrap())
                .await
                .unwrap()
        });
        let url = format!("http://127.0.0.1:{port}");
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(format!("127.0.0.1:{port}"))
                .await
                .is_ok()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (receiver, url)
    }

    /// The spans of `trace_id`, once at least `n` have arrived (10 s at most).
    async fn trace(&self, trace_id: &str, n: usize) -> Vec<Got> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got: Vec<Got> = self
                .spans
                .lock()
                .unwrap()
                .iter()
                .filter(|s| s.trace_id == trace_id)
                .cloned()
                .collect();
            if got.len() >= n || Instant::now() > deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn exports(&self) -> usize {
        *self.exports.lock().unwrap()
    }
}

/// POSTs a chat completion with `traceparent` (when given); (status, headers, body).
async fn chat(
    lumina: &Lumina,
    key: &str,
    body: &Value,
    traceparent: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut request = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", lumina.url))
        .bearer_auth(key)
        .json(body);
    if let Some(tp) = traceparent {
        request = request.header("traceparent", tp);
    }
    let res = request.send().await.unwrap();
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    (status, headers, res.text().await.unwrap())
}

/// `lumina serve` exporting to `receiver` (with `extra` telemetry settings) in front of the
/// mock, and a key of a fresh account.
async fn traced(receiver: &str, extra: &str, key: Value) -> (Mocked, String) {
    let m = Mocked::with(&telemetry(receiver, extra)).await;
    let account = m.lumina.account("Traced Co", "50").await;
    let (_, key) = m.lumina.key_with(&account, key).await;
    (m, key)
}

fn telemetry(receiver: &str, extra: &str) -> String {
    format!(
        "[telemetry]\notlp_endpoint = \"{receiver}\"\nservice_name = \"lumina-test\"\n{extra}\n"
    )
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test]
async fn a_request_with_one_fallback_is_one_trace_with_the_clients_id_and_genai_attributes() {
    let (receiver, url) = Receiver::start().await;
    let (m, key) = traced(&url, "capture_content = true", json!({})).await;
    let (lumina, mock) = (&m.lumina, &m.mock);
    mock.fail_next("primary", 1);
    let traceparent = format!("00-{TRACE}-{CLIENT_SPAN}-01");
    let (status, headers, text) = chat(
        lumina,
        &key,
        &user("lumina-fast", "Say hello to Ana."),
        Some(&traceparent),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(header(&headers, "x-lumina-attempts"), "2");
    let request_id = header(&headers, "x-request-id").to_string();
    let cost = header(&headers, "x-lumina-cost").to_string();

    let spans = receiver.trace(TRACE, 4).await;
    assert_eq!(spans.len(), 4, "{spans:#?}");
    assert!(
        spans
            .iter()
            .all(|s| s.service.as_deref() == Some("lumina-test"))
    );
    let server = spans.iter().find(|s| s.kind == 2).expect("a server span");
    assert_eq!(server.name, "POST /v1/chat/completions");
    assert_eq!(
        server.parent, CLIENT_SPAN,
        "the client's span is its parent"
    );
    assert_eq!(server.attributes["http.response.status_code"], 200);
    assert_eq!(server.attributes["lumina.request_id"], request_id.as_str());
    let route = spans
        .iter()
        .find(|s| s.name == "lumina.route")
        .expect("a route span");
    assert_eq!(route.parent, server.span_id);
    assert_eq!(route.attributes["lumina.path"], "fast");
    assert_eq!(route.attributes["lumina.policy.version"], 2);
    assert!(route.attributes["lumina.task_class"].is_string());
    for path in ["fast", "balanced", "reasoning"] {
        assert!(
            route.attributes[&format!("lumina.score.{path}")].is_f64(),
            "{route:?}"
        );
    }
    let mut attempts: Vec<&Got> = spans.iter().filter(|s| s.kind == 3).collect();
    attempts.sort_by_key(|s| s.attributes["lumina.attempt"].as_i64());
    assert_eq!(attempts.len(), 2);
    let (failed, answered) = (attempts[0], attempts[1]);
    for (span, model, provider) in [
        (failed, "mock-fast", "primary"),
        (answered, "mock-fast-2", "secondary"),
    ] {
        assert_eq!(span.name, format!("chat {model}"));
        assert_eq!(span.parent, server.span_id);
        let a = &span.attributes;
        assert_eq!(a["gen_ai.operation.name"], "chat");
        assert_eq!(a["gen_ai.provider.name"], "openai");
        assert_eq!(a["gen_ai.request.model"], model);
        assert_eq!(a["lumina.provider"], provider);
        assert_eq!(
            a["lumina.deployment"],
            format!("{provider}/{model}").as_str()
        );
        assert_eq!(a["lumina.breaker.state"], "closed");
    }
    assert_eq!(failed.status, 2, "a failed attempt is an error");
    assert_eq!(failed.attributes["error.type"], "server_error");
    assert_eq!(failed.attributes["http.response.status_code"], 500);
    assert_eq!(failed.attributes["lumina.fell_back"], true);
    let a = &answered.attributes;
    assert_eq!(a["lumina.fallback_reason"], "server_error");
    assert_eq!(a["gen_ai.response.id"], "chatcmpl-mock");
    assert_eq!(a["gen_ai.response.model"], "mock-fast-2");
    assert_eq!(a["gen_ai.response.finish_reasons"], json!(["stop"]));
    assert_eq!(a["gen_ai.usage.input_tokens"], 11);
    assert_eq!(a["gen_ai.usage.output_tokens"], 7);
    assert_eq!(nanos(a["lumina.cost"].as_str().unwrap()), nanos(&cost));
    assert!(
        !a.contains_key("gen_ai.input.messages"),
        "content of a key that does not store it: {a:?}"
    );

    // Each upstream heard of its own attempt's span.
    for (provider, span) in [("primary", failed), ("secondary", answered)] {
        let got = mock.requests_of(provider);
        assert_eq!(
            got[0].headers.get("traceparent").map(String::as_str),
            Some(format!("00-{TRACE}-{}-01", span.span_id).as_str()),
            "{provider}"
        );
    }
    // And every event of the request names the trace.
    let events = lumina.events_of(&request_id);
    assert!(events.len() >= 4);
    assert!(events.iter().all(|e| e["trace_id"] == TRACE), "{events:#?}");
}

#[tokio::test]
async fn a_stream_a_new_trace_and_content_for_keys_that_opted_in() {
    let (receiver, url) = Receiver::start().await;
    let (m, key) = traced(
        &url,
        "capture_content = true",
        json!({"store_content": true}),
    )
    .await;
    let (lumina, mock) = (&m.lumina, &m.mock);
    let mut body = user("lumina-fast", "Count to three.");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let (status, headers, text) = chat(lumina, &key, &body, None).await;
    assert_eq!(status, 200, "{text}");
    let (chunks, done) = parse_sse(&text);
    assert!(done);
    let request_id = header(&headers, "x-request-id");
    // Without a client's traceparent the trace is Lumina's own, and its events carry it.
    let events = lumina.events_of(request_id);
    let trace = events[0]["trace_id"]
        .as_str()
        .expect("a trace id")
        .to_string();
    assert_eq!(trace.len(), 32);
    assert!(events.iter().all(|e| e["trace_id"] == trace.as_str()));
    let spans = receiver.trace(&trace, 3).await;
    assert_eq!(spans.len(), 3, "{spans:#?}");
    let server = spans.iter().find(|s| s.kind == 2).unwrap();
    assert_eq!(server.parent, "", "a root span");
    let attempt = spans.iter().find(|s| s.kind == 3).unwrap();
    let a = &attempt.attributes;
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(a["gen_ai.usage.input_tokens"], usage["prompt_tokens"]);
    assert_eq!(a["gen_ai.usage.output_tokens"], usage["completion_tokens"]);
    assert_eq!(
        nanos(a["lumina.cost"].as_str().unwrap()),
        nanos(&usage["cost"].to_string())
    );
    assert_eq!(a["gen_ai.response.finish_reasons"], json!(["stop"]));
    let input: Value = serde_json::from_str(a["gen_ai.input.messages"].as_str().unwrap()).unwrap();
    assert_eq!(input[0]["content"], "Count to three.");
    let output: Value =
        serde_json::from_str(a["gen_ai.output.messages"].as_str().unwrap()).unwrap();
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(output[0]["content"], streamed.as_str());
    let _ = mock;
}

#[tokio::test]
async fn spans_go_over_grpc_too() {
    let (receiver, url) = Receiver::start_grpc().await;
    let (m, key) = traced(&url, "protocol = \"grpc\"", json!({})).await;
    let (lumina, _mock) = (&m.lumina, &m.mock);
    let tp = format!("00-{TRACE}-{CLIENT_SPAN}-01");
    let (status, _, text) = chat(lumina, &key, &user("lumina-fast", "hi"), Some(&tp)).await;
    assert_eq!(status, 200, "{text}");
    let spans = receiver.trace(TRACE, 3).await;
    assert_eq!(spans.len(), 3, "{spans:#?}");
    let attempt = spans.iter().find(|s| s.kind == 3).unwrap();
    assert_eq!(attempt.name, "chat mock-fast");
    assert_eq!(attempt.attributes["gen_ai.usage.output_tokens"], 7);
}

#[tokio::test]
async fn content_is_never_exported_unless_the_operator_allows_it() {
    let (receiver, url) = Receiver::start().await;
    let (m, key) = traced(&url, "", json!({"store_content": true})).await;
    let (lumina, _mock) = (&m.lumina, &m.mock);
    let tp = format!("00-{TRACE}-{CLIENT_SPAN}-01");
    let (status, _, text) = chat(
        lumina,
        &key,
        &user("lumina-fast", "secret plans"),
        Some(&tp),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let spans = receiver.trace(TRACE, 3).await;
    assert_eq!(spans.len(), 3);
    for span in &spans {
        assert!(
            !span.attributes.keys().any(|k| k.contains("messages")),
            "{span:?}"
        );
        assert!(
            !span
                .attributes
                .values()
                .any(|v| v.to_string().contains("secret plans")),
            "{span:?}"
        );
    }
}

#[tokio::test]
async fn with_telemetry_off_nothing_is_exported_and_the_clients_trace_passes_through() {
    let (receiver, url) = Receiver::start().await;
    // The receiver runs, but no endpoint is configured.
    let _ = url;
    let Mocked {
        tmp: _tmp,
        mock,
        lumina,
    } = Mocked::with("").await;
    let account = lumina.account("Dark Co", "50").await;
    let (_, key) = lumina.key(&account).await;
    let tp = format!("00-{TRACE}-{CLIENT_SPAN}-01");
    let (status, headers, _) = chat(&lumina, &key, &user("lumina-fast", "hi"), Some(&tp)).await;
    assert_eq!(status, 200);
    let (status, _, _) = chat(&lumina, &key, &user("lumina-fast", "hi"), None).await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(receiver.exports(), 0);
    let got = mock.requests_of("primary");
    assert_eq!(
        got[0].headers.get("traceparent"),
        Some(&tp),
        "passed on as it came"
    );
    assert_eq!(got[1].headers.get("traceparent"), None);
    let events = lumina.events_of(header(&headers, "x-request-id"));
    assert!(events.iter().all(|e| e["trace_id"] == TRACE));
}

#[tokio::test]
async fn a_zero_sampling_ratio_records_only_traces_the_client_sampled() {
    let (receiver, url) = Receiver::start().await;
    let (m, key) = traced(&url, "sampling_ratio = 0.0", json!({})).await;
    let (lumina, mock) = (&m.lumina, &m.mock);
    let (status, headers, _) = chat(lumina, &key, &user("lumina-fast", "one"), None).await;
    assert_eq!(status, 200);
    let unsampled = lumina.events_of(header(&headers, "x-request-id"))[0]["trace_id"]
        .as_str()
        .unwrap()
        .to_string();
    let tp = format!("00-{TRACE}-{CLIENT_SPAN}-01");
    let (status, _, _) = chat(lumina, &key, &user("lumina-fast", "two"), Some(&tp)).await;
    assert_eq!(status, 200);
    assert_eq!(receiver.trace(TRACE, 3).await.len(), 3);
    assert!(receiver.trace(&unsampled, 1).await.is_empty());
    // The unsampled request still told its upstream of its trace, as not sampled.
    let first = &mock.requests_of("primary")[0];
    let tp = first.headers.get("traceparent").unwrap();
    assert!(
        tp.starts_with(&format!("00-{unsampled}-")) && tp.ends_with("-00"),
        "{tp}"
    );
}

/// `name{labels} value` lines of `/metrics` whose name and labels contain every one of `has`.
fn series<'a>(text: &'a str, name: &str, has: &[&str]) -> Vec<(&'a str, f64)> {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| has.iter().all(|h| l.contains(h)))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series, value.parse().ok()?))
        })
        .collect()
}

#[tokio::test]
async fn metrics_show_genai_histograms_overhead_breakers_and_cost_per_path() {
    let mock = MockUpstream::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let lumina = Lumina::start_with_config(
        &tmp.path().join("data"),
        &tmp.path().join("out"),
        &common::upstream::GATEWAY_ENV,
        Some(&gateway_config(&mock, "")),
    )
    .await;
    let account = lumina.account("Metered Co", "50").await;
    let (_, key) = lumina.key(&account).await;
    let mut charged = 0;
    for i in 0..3 {
        let (status, headers, _) = lumina
            .chat(&key, &user("lumina-fast", &format!("hi {i}")))
            .await;
        assert_eq!(status, 200);
        charged += nanos(header(&headers, "x-lumina-cost"));
    }
    let mut body = user("lumina-fast", "stream it");
    body["stream"] = json!(true);
    let (status, headers, _) = lumina.chat(&key, &body).await;
    assert_eq!(status, 200);
    let request_id = header(&headers, "x-request-id").to_string();
    let settled = payloads(&lumina.events_of(&request_id), "RequestSettled")[0].clone();
    charged += settled["charge_nano"].as_i64().unwrap();
    mock.fail_next("primary", 1);
    let (status, _, _) = lumina.chat(&key, &user("lumina-fast", "fall back")).await;
    assert_eq!(status, 200);
    let events = lumina.events();
    let last = payloads(&events, "RequestSettled");
    charged += last.last().unwrap()["charge_nano"].as_i64().unwrap();

    let text = lumina.metrics_text().await;
    let labels = [
        "gen_ai_operation_name=\"chat\"",
        "gen_ai_provider_name=\"openai\"",
        "gen_ai_request_model=\"mock-fast\"",
        "lumina_path=\"fast\"",
    ];
    let count = |name: &str, extra: &[&str]| {
        let mut has: Vec<&str> = labels.to_vec();
        has.extend_from_slice(extra);
        series(&text, &format!("{name}_count"), &has)
            .iter()
            .map(|(_, v)| v)
            .sum::<f64>()
    };
    // Four answers from primary (three whole, one stream), one from secondary.
    assert_eq!(
        count(
            "gen_ai_client_token_usage",
            &["gen_ai_token_type=\"input\""]
        ),
        4.0,
        "{text}"
    );
    assert_eq!(
        count(
            "gen_ai_client_token_usage",
            &["gen_ai_token_type=\"output\""]
        ),
        4.0
    );
    assert_eq!(
        series(
            &text,
            "gen_ai_client_token_usage_sum",
            &[&labels[..], &["gen_ai_token_type=\"input\""]].concat()
        )
        .iter()
        .map(|(_, v)| v)
        .sum::<f64>(),
        4.0 * 11.0,
        "the mock reports 11 input tokens per answer"
    );
    assert_eq!(
        count("gen_ai_client_operation_duration_seconds", &[]),
        5.0,
        "four answers and one failure"
    );
    assert_eq!(
        count(
            "gen_ai_client_operation_duration_seconds",
            &["error_type=\"server_error\""]
        ),
        1.0
    );
    assert_eq!(count("gen_ai_server_time_to_first_token_seconds", &[]), 1.0);
    assert!(
        !series(
            &text,
            "gen_ai_client_operation_duration_seconds_bucket",
            &["le=\"0.01\""]
        )
        .is_empty(),
        "real buckets, as the conventions advise: {text}"
    );
    let overhead = series(
        &text,
        "lumina_gateway_overhead_seconds_count",
        &["lumina_path=\"fast\""],
    );
    assert_eq!(overhead.iter().map(|(_, v)| v).sum::<f64>(), 5.0);
    assert!(
        !series(
            &text,
            "lumina_gateway_overhead_seconds_bucket",
            &["le=\"0.0005\""]
        )
        .is_empty()
    );
    for deployment in [
        "primary/mock-fast",
        "secondary/mock-fast-2",
        "claude/claude-mock",
    ] {
        let state = series(
            &text,
            "lumina_breaker_state",
            &[&format!("deployment=\"{deployment}\"")],
        );
        assert_eq!(state.len(), 1, "{deployment}: {text}");
        assert_eq!(state[0].1, 0.0, "closed");
    }
    // The cost per path is the ledger's to the nano-credit.
    let cost = series(
        &text,
        "lumina_cost_nano_credits_total",
        &["lumina_path=\"fast\""],
    );
    assert_eq!(cost.len(), 1, "{text}");
    assert_eq!(cost[0].1 as i64, charged);
    assert_eq!(
        common::spent_after(&lumina, &account, charged).await,
        charged
    );
}

#[tokio::test]
async fn a_collector_that_is_away_neither_slows_requests_nor_holds_shutdown_up() {
    // A collector that accepts connections and never answers: each export waits out its
    // 10 s deadline.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let nowhere = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let (mut m, key) = traced(&nowhere, "export_timeout_ms = 10000", json!({})).await;
    for i in 0..20 {
        let started = Instant::now();
        let (status, _, _) = chat(
            &m.lumina,
            &key,
            &user("lumina-fast", &format!("hi {i}")),
            None,
        )
        .await;
        assert_eq!(status, 200);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "request {i} waited on the collector"
        );
    }
    let took = m.lumina.terminate().await;
    assert!(
        took < Duration::from_secs(5),
        "exit on SIGTERM took {took:?} with the collector away"
    );
}
