//! Telemetry: OpenTelemetry traces exported over OTLP and the GenAI metrics behind `/metrics`.
//!
//! A traced request has a server span (`POST /v1/chat/completions`), a `lumina.route` span for
//! the route decision and one client span per upstream attempt, named `chat {model}` and
//! carrying the GenAI semantic conventions' attributes (`gen_ai.*`) and Lumina's own
//! (`lumina.*`). The W3C `traceparent` a client sends is the parent of the server span; each
//! upstream call carries its attempt span's `traceparent`; every event of the request names the
//! same trace id in its envelope. Off by default (`[telemetry] otlp_endpoint` unset): then no
//! span exists, and a client's `traceparent` still names the request's trace in its events and
//! is passed upstream as it came. Prompts and answers are exported only when `[telemetry]
//! capture_content` is on and the request's key stores content.

pub mod instruments;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use axum::http::{HeaderMap, HeaderValue};
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer};
use serde::Deserialize;

/// `[telemetry]`: where traces go and what they carry.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// The OTLP collector: `http://host:4318` for `http/protobuf` (`/v1/traces` is appended
    /// unless the URL already ends with it), `http://host:4317` for `grpc`. Unset: no traces.
    pub otlp_endpoint: Option<String>,
    /// `http/protobuf` (default) or `grpc`.
    pub protocol: OtlpProtocol,
    /// Share of traces recorded, 0.0–1.0, for traces that do not come with a sampling
    /// decision of their client's (a client's `traceparent` decides for its own).
    pub sampling_ratio: f64,
    /// Export prompts and answers (`gen_ai.input.messages`, `gen_ai.output.messages`) for keys
    /// that store content; never for any other key.
    pub capture_content: bool,
    /// `service.name` of the spans.
    pub service_name: String,
    /// Headers sent with every export (a collector's API key, say).
    pub headers: BTreeMap<String, String>,
    /// Deadline of one export.
    pub export_timeout_ms: u64,
    /// Most finished spans waiting for export; more are dropped (and counted) rather than
    /// slowing requests down.
    pub max_queue_size: usize,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            otlp_endpoint: None,
            protocol: OtlpProtocol::HttpProtobuf,
            sampling_ratio: 1.0,
            capture_content: false,
            service_name: "lumina".into(),
            headers: BTreeMap::new(),
            export_timeout_ms: 10_000,
            max_queue_size: 8192,
        }
    }
}

/// OTLP's transports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum OtlpProtocol {
    /// Protobuf over HTTP (port 4318).
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    /// gRPC (port 4317).
    #[serde(rename = "grpc")]
    Grpc,
}

impl TelemetryConfig {
    /// Checks the section, naming the key at fault.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.sampling_ratio) {
            return Err(format!(
                "telemetry.sampling_ratio must be between 0.0 and 1.0 (got {})",
                self.sampling_ratio
            ));
        }
        if let Some(endpoint) = &self.otlp_endpoint {
            let url = reqwest::Url::parse(endpoint)
                .map_err(|e| format!("telemetry.otlp_endpoint is not a URL ({e}): {endpoint}"))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(format!(
                    "telemetry.otlp_endpoint must be an http:// or https:// URL: {endpoint}"
                ));
            }
        }
        if self.export_timeout_ms == 0 {
            return Err("telemetry.export_timeout_ms must be above 0".into());
        }
        if self.max_queue_size == 0 {
            return Err("telemetry.max_queue_size must be above 0".into());
        }
        for name in self.headers.keys() {
            if axum::http::HeaderName::try_from(name.as_str()).is_err() {
                return Err(format!(
                    "telemetry.headers: '{name}' is not a valid header name"
                ));
            }
        }
        Ok(())
    }

    /// The URL spans are sent to.
    fn traces_url(&self, endpoint: &str) -> String {
        match self.protocol {
            OtlpProtocol::Grpc => endpoint.to_string(),
            OtlpProtocol::HttpProtobuf if endpoint.ends_with("/v1/traces") => endpoint.to_string(),
            OtlpProtocol::HttpProtobuf => format!("{}/v1/traces", endpoint.trim_end_matches('/')),
        }
    }
}

/// The longest a stopping process waits for its last spans to be exported.
pub const SHUTDOWN_WAIT: Duration = Duration::from_secs(2);

/// The process's tracing: a tracer exporting to the configured collector, or nothing; clones
/// share it.
#[derive(Clone)]
pub struct Telemetry {
    tracer: Option<SdkTracer>,
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
    capture_content: bool,
}

impl Telemetry {
    /// No traces.
    pub fn off() -> Telemetry {
        Telemetry {
            tracer: None,
            provider: None,
            capture_content: false,
        }
    }

    /// Tracing as `config` asks, spans named by `instance` (`service.instance.id`); call from
    /// within the runtime (the gRPC exporter needs it). Off when no endpoint is set.
    pub fn start(config: &TelemetryConfig, instance: &str) -> Result<Telemetry, String> {
        let Some(endpoint) = config.otlp_endpoint.as_deref() else {
            return Ok(Telemetry::off());
        };
        crate::providers::install_crypto_provider();
        let url = config.traces_url(endpoint);
        let timeout = Duration::from_millis(config.export_timeout_ms);
        let exporter = match config.protocol {
            OtlpProtocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(url)
                .with_timeout(timeout)
                .with_headers(config.headers.clone().into_iter().collect())
                .build(),
            OtlpProtocol::Grpc => {
                let mut metadata = tonic::metadata::MetadataMap::new();
                for (k, v) in &config.headers {
                    let key = tonic::metadata::MetadataKey::from_bytes(k.as_bytes())
                        .map_err(|e| format!("telemetry.headers: '{k}': {e}"))?;
                    let value = v
                        .parse()
                        .map_err(|e| format!("telemetry.headers: '{k}': {e}"))?;
                    metadata.insert(key, value);
                }
                opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(url)
                    .with_timeout(timeout)
                    .with_metadata(metadata)
                    .build()
            }
        }
        .map_err(|e| format!("telemetry.otlp_endpoint: cannot build the exporter: {e}"))?;
        let batch = BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_max_queue_size(config.max_queue_size)
                    .with_scheduled_delay(Duration::from_millis(500))
                    .build(),
            )
            .build();
        let resource = Resource::builder()
            .with_service_name(config.service_name.clone())
            .with_attribute(KeyValue::new("service.instance.id", instance.to_string()))
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                config.sampling_ratio,
            ))))
            .with_resource(resource)
            .with_span_processor(batch)
            .build();
        let tracer = provider.tracer("lumina");
        Ok(Telemetry {
            tracer: Some(tracer),
            provider: Some(provider),
            capture_content: config.capture_content,
        })
    }

    /// Whether spans are made.
    pub fn is_on(&self) -> bool {
        self.tracer.is_some()
    }

    /// Exports what is still queued and stops, waiting at most [`SHUTDOWN_WAIT`] (a collector
    /// that is away must not hold the process's exit up); blocks (call off the runtime's
    /// workers).
    pub fn shutdown(&self) {
        if let Some(provider) = &self.provider
            && let Err(e) = provider.shutdown_with_timeout(SHUTDOWN_WAIT)
        {
            tracing::warn!(error = %e, "telemetry: spans still queued at shutdown were not exported");
        }
    }

    /// The trace of a request that arrived with `headers` at `route` (`POST
    /// /v1/chat/completions`): its server span when tracing, else the client's trace context.
    pub fn request(
        &self,
        method: &str,
        route: &str,
        headers: &HeaderMap,
        request_id: &str,
    ) -> RequestTrace {
        let incoming = headers.get("traceparent").and_then(parse_traceparent);
        let Some(tracer) = &self.tracer else {
            return RequestTrace::untraced(incoming);
        };
        let parent = match &incoming {
            Some(remote) => Context::new().with_remote_span_context(remote.context.clone()),
            None => Context::new(),
        };
        let span = tracer
            .span_builder(format!("{method} {route}"))
            .with_kind(SpanKind::Server)
            .with_attributes([
                KeyValue::new("http.request.method", method.to_string()),
                KeyValue::new("http.route", route.to_string()),
                KeyValue::new("lumina.request_id", request_id.to_string()),
            ])
            .start_with_context(tracer, &parent);
        let server = parent.with_span(span);
        RequestTrace(Arc::new(Inner {
            trace_id: Some(server.span().span_context().trace_id().to_string()),
            incoming: None,
            tracing: Some(Tracing {
                tracer: tracer.clone(),
                server,
                capture_content: self.capture_content,
            }),
            received: Instant::now(),
            upstream_us: AtomicU64::new(0),
        }))
    }
}

/// A client's `traceparent`, checked.
struct Remote {
    context: SpanContext,
    header: HeaderValue,
}

/// A W3C `traceparent` (`00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`), or `None`
/// when it is not one (version `ff`, all-zero ids, wrong lengths).
fn parse_traceparent(value: &HeaderValue) -> Option<Remote> {
    let text = value.to_str().ok()?;
    let mut parts = text.trim().split('-');
    let version = parts.next()?;
    let trace = parts.next()?;
    let parent = parts.next()?;
    let flags = parts.next()?;
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if !hex(version, 2) || version == "ff" || !hex(trace, 32) || !hex(parent, 16) || !hex(flags, 2)
    {
        return None;
    }
    // Version 00 has exactly four fields; later versions may append more.
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_hex(parent).ok()?;
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    let flags = TraceFlags::new(u8::from_str_radix(flags, 16).ok()? & 1);
    Some(Remote {
        context: SpanContext::new(trace_id, span_id, flags, true, TraceState::NONE),
        header: value.clone(),
    })
}

/// `traceparent` for `context`.
fn traceparent(context: &SpanContext) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!(
        "00-{}-{}-{:02x}",
        context.trace_id(),
        context.span_id(),
        context.trace_flags().to_u8()
    ))
    .ok()
}

/// One request's trace, shared by everything that works on it (cloning is a reference count).
#[derive(Clone)]
pub struct RequestTrace(Arc<Inner>);

struct Inner {
    /// The trace id events carry (32 hex digits).
    trace_id: Option<String>,
    /// The client's `traceparent`, passed upstream as it came when not tracing.
    incoming: Option<HeaderValue>,
    tracing: Option<Tracing>,
    /// When the request arrived.
    received: Instant,
    /// Time spent waiting on upstreams so far, µs.
    upstream_us: AtomicU64,
}

struct Tracing {
    tracer: SdkTracer,
    /// The server span's context.
    server: Context,
    capture_content: bool,
}

impl Default for RequestTrace {
    fn default() -> Self {
        RequestTrace::untraced(None)
    }
}

impl std::fmt::Debug for RequestTrace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestTrace")
            .field("trace_id", &self.0.trace_id)
            .field("traced", &self.0.tracing.is_some())
            .finish()
    }
}

impl RequestTrace {
    fn untraced(incoming: Option<Remote>) -> RequestTrace {
        RequestTrace(Arc::new(Inner {
            trace_id: incoming.as_ref().map(|r| r.context.trace_id().to_string()),
            incoming: incoming.map(|r| r.header),
            tracing: None,
            received: Instant::now(),
            upstream_us: AtomicU64::new(0),
        }))
    }

    /// The W3C trace id (32 hex digits) the request's events carry, if it has one.
    pub fn trace_id(&self) -> Option<&str> {
        self.0.trace_id.as_deref()
    }

    /// When the request arrived.
    pub fn received(&self) -> Instant {
        self.0.received
    }

    /// Adds `took` to the time the request spent waiting on upstreams.
    pub fn waited_upstream(&self, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.0.upstream_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Time spent in Lumina so far: since arrival, less the time waiting on upstreams and
    /// `pending` (an upstream wait not yet added).
    pub fn overhead(&self, pending: Duration) -> Duration {
        let upstream = Duration::from_micros(self.0.upstream_us.load(Ordering::Relaxed));
        self.0
            .received
            .elapsed()
            .saturating_sub(upstream)
            .saturating_sub(pending)
    }

    /// Whether prompts and answers may go into this request's spans: the operator allows it
    /// and the key (`store_content`) opted in.
    pub fn captures_content(&self, key_stores_content: bool) -> bool {
        key_stores_content
            && self
                .0
                .tracing
                .as_ref()
                .is_some_and(|t| t.capture_content && t.server.span().is_recording())
    }

    /// A child of the server span named `name()`, started at `start` (now when `None`), with
    /// the attributes `attributes` makes (both called only when the span is recorded).
    pub fn child(
        &self,
        name: impl FnOnce() -> String,
        kind: SpanKind,
        start: Option<SystemTime>,
        attributes: impl FnOnce() -> Vec<KeyValue>,
    ) -> Span {
        let Some(t) = &self.0.tracing else {
            return Span(None);
        };
        if !t.server.span().is_recording() {
            // Not sampled: the children are not recorded either, but upstreams still hear of
            // the trace.
            return Span(Some(t.server.clone()));
        }
        let mut builder = t
            .tracer
            .span_builder(name())
            .with_kind(kind)
            .with_attributes(attributes());
        if let Some(start) = start {
            builder = builder.with_start_time(start);
        }
        let span = builder.start_with_context(&t.tracer, &t.server);
        Span(Some(t.server.with_span(span)))
    }

    /// The `traceparent` an upstream call made in `span` carries: the span's when tracing,
    /// else the client's own.
    pub fn upstream_traceparent(&self, span: &Span) -> Option<HeaderValue> {
        match &span.0 {
            Some(cx) => traceparent(cx.span().span_context()),
            None => self.0.incoming.clone(),
        }
    }

    /// Records the answer's HTTP status on the server span.
    pub fn responded(&self, status: u16) {
        if let Some(t) = &self.0.tracing {
            let span = t.server.span();
            span.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(status),
            ));
            if status >= 500 {
                span.set_status(Status::error(format!("HTTP {status}")));
            }
        }
    }

    /// Ends the server span (once the answer's last byte is written).
    pub fn end(&self) {
        if let Some(t) = &self.0.tracing {
            t.server.span().end();
        }
    }

    /// Whether a server span is recorded.
    pub fn is_recording(&self) -> bool {
        self.0
            .tracing
            .as_ref()
            .is_some_and(|t| t.server.span().is_recording())
    }
}

/// A span of a request (a no-op when the request is not traced); clones share it, and it ends
/// at [`Span::end`] or when the last clone is dropped.
#[derive(Clone, Default)]
pub struct Span(Option<Context>);

impl Span {
    /// Whether the span is recorded (attributes are worth building).
    pub fn is_recording(&self) -> bool {
        self.0.as_ref().is_some_and(|cx| cx.span().is_recording())
    }

    /// Sets the attributes `attributes` makes, when the span is recorded.
    pub fn set(&self, attributes: impl FnOnce() -> Vec<KeyValue>) {
        if let Some(cx) = &self.0 {
            let span = cx.span();
            if span.is_recording() {
                span.set_attributes(attributes());
            }
        }
    }

    /// Marks the span failed with `error_type` (`error.type`) and `message`.
    pub fn fail(&self, error_type: &str, message: &str) {
        if let Some(cx) = &self.0 {
            let span = cx.span();
            if span.is_recording() {
                span.set_attribute(KeyValue::new("error.type", error_type.to_string()));
                span.set_status(Status::error(message.to_string()));
            }
        }
    }

    /// Ends the span.
    pub fn end(&self) {
        if let Some(cx) = &self.0 {
            cx.span().end();
        }
    }
}

/// Most bytes of a prompt or an answer a span carries; longer ones are cut (and
/// `lumina.content_truncated` set).
const MAX_CONTENT_BYTES: usize = 64 * 1024;

#[derive(Deserialize)]
struct ConversationProbe<'a> {
    #[serde(default, borrow)]
    messages: Option<&'a serde_json::value::RawValue>,
    #[serde(default, borrow)]
    input: Option<&'a serde_json::value::RawValue>,
}

#[derive(Deserialize)]
struct AnswerProbe<'a> {
    #[serde(default, borrow)]
    choices: Vec<AnswerChoice<'a>>,
}

#[derive(Deserialize)]
struct AnswerChoice<'a> {
    #[serde(default, borrow)]
    message: Option<&'a serde_json::value::RawValue>,
}

/// `text`, cut to [`MAX_CONTENT_BYTES`] on a character boundary; whether it was cut.
fn bounded(text: &str) -> (String, bool) {
    if text.len() <= MAX_CONTENT_BYTES {
        return (text.to_string(), false);
    }
    let mut end = MAX_CONTENT_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    (text[..end].to_string(), true)
}

/// An answer as content capture sees it.
pub enum Answered<'a> {
    /// A whole `chat.completion`'s JSON.
    Completion(&'a [u8]),
    /// The text a stream delivered.
    Text(&'a str),
}

/// `gen_ai.input.messages` (the request's `messages`, or a Responses request's `input`) and
/// `gen_ai.output.messages` (the answer's choices' messages, or a stream's text) as JSON, for
/// requests whose content may be traced.
pub fn content_attributes(request: &[u8], answer: Answered<'_>, into: &mut Vec<KeyValue>) {
    let mut cut = false;
    if let Ok(probe) = serde_json::from_slice::<ConversationProbe<'_>>(request)
        && let Some(messages) = probe.messages.or(probe.input)
    {
        let (text, was_cut) = bounded(messages.get());
        cut |= was_cut;
        into.push(KeyValue::new("gen_ai.input.messages", text));
    }
    let output = match answer {
        Answered::Completion(json) => {
            let messages: Vec<&str> = serde_json::from_slice::<AnswerProbe<'_>>(json)
                .map(|probe| {
                    probe
                        .choices
                        .iter()
                        .filter_map(|c| c.message.map(|m| m.get()))
                        .collect()
                })
                .unwrap_or_default();
            format!("[{}]", messages.join(","))
        }
        Answered::Text(text) => {
            serde_json::json!([{ "role": "assistant", "content": text }]).to_string()
        }
    };
    let (text, was_cut) = bounded(&output);
    cut |= was_cut;
    into.push(KeyValue::new("gen_ai.output.messages", text));
    if cut {
        into.push(KeyValue::new("lumina.content_truncated", true));
    }
}

/// What an OpenAI-shaped answer says of itself, for `gen_ai.response.*`.
#[derive(Debug, Default, PartialEq)]
pub struct ResponseInfo {
    /// `id`
    pub id: Option<String>,
    /// `model`
    pub model: Option<String>,
    /// Each choice's `finish_reason`.
    pub finish_reasons: Vec<String>,
}

#[derive(Deserialize)]
struct InfoProbe<'a> {
    #[serde(default, borrow)]
    id: Option<&'a str>,
    #[serde(default, borrow)]
    model: Option<&'a str>,
    #[serde(default, borrow)]
    choices: Option<Vec<ChoiceProbe<'a>>>,
}

#[derive(Deserialize)]
struct ChoiceProbe<'a> {
    #[serde(default, borrow)]
    finish_reason: Option<&'a str>,
}

impl ResponseInfo {
    /// Takes in one OpenAI `chat.completion` or chunk: its id and model if not known yet, and
    /// the finish reasons it gives.
    pub fn read(&mut self, json: &[u8]) {
        let Ok(probe) = serde_json::from_slice::<InfoProbe<'_>>(json) else {
            return;
        };
        if self.id.is_none() {
            self.id = probe.id.map(str::to_string);
        }
        if self.model.is_none() {
            self.model = probe.model.map(str::to_string);
        }
        for reason in probe
            .choices
            .iter()
            .flatten()
            .filter_map(|c| c.finish_reason)
        {
            self.finish_reasons.push(reason.to_string());
        }
    }

    /// As `gen_ai.response.*` attributes.
    pub fn attributes(&self, into: &mut Vec<KeyValue>) {
        if let Some(id) = &self.id {
            into.push(KeyValue::new("gen_ai.response.id", id.clone()));
        }
        if let Some(model) = &self.model {
            into.push(KeyValue::new("gen_ai.response.model", model.clone()));
        }
        if !self.finish_reasons.is_empty() {
            into.push(KeyValue::new(
                "gen_ai.response.finish_reasons",
                opentelemetry::Value::Array(opentelemetry::Array::String(
                    self.finish_reasons
                        .iter()
                        .map(|r| r.clone().into())
                        .collect(),
                )),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).unwrap()
    }

    #[test]
    fn a_traceparent_is_parsed_only_when_it_is_one() {
        let good = parse_traceparent(&header(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ))
        .unwrap();
        assert_eq!(
            good.context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(good.context.span_id().to_string(), "00f067aa0ba902b7");
        assert!(good.context.is_sampled());
        assert!(good.context.is_remote());
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "not a traceparent",
        ] {
            assert!(parse_traceparent(&header(bad)).is_none(), "{bad}");
        }
        // A later version may carry more fields.
        assert!(
            parse_traceparent(&header(
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more"
            ))
            .is_some()
        );
    }

    #[test]
    fn an_untraced_request_passes_the_clients_trace_on() {
        let mut headers = HeaderMap::new();
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        headers.insert("traceparent", header(tp));
        let trace = Telemetry::off().request("POST", "/v1/chat/completions", &headers, "req_1");
        assert_eq!(trace.trace_id(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        let span = trace.child(|| "chat m".into(), SpanKind::Client, None, Vec::new);
        assert!(!span.is_recording());
        assert_eq!(trace.upstream_traceparent(&span), Some(header(tp)));
        let none =
            Telemetry::off().request("POST", "/v1/chat/completions", &HeaderMap::new(), "req_2");
        assert_eq!(none.trace_id(), None);
        assert_eq!(none.upstream_traceparent(&Span::default()), None);
    }

    #[test]
    fn response_info_reads_completions_and_chunks() {
        let mut info = ResponseInfo::default();
        info.read(br#"{"id":"chatcmpl-1","model":"gpt-x","choices":[{"delta":{"content":"a"},"finish_reason":null}]}"#);
        info.read(br#"{"id":"chatcmpl-1","model":"gpt-x","choices":[{"delta":{},"finish_reason":"stop"}]}"#);
        info.read(b"not json");
        assert_eq!(
            info,
            ResponseInfo {
                id: Some("chatcmpl-1".into()),
                model: Some("gpt-x".into()),
                finish_reasons: vec!["stop".into()],
            }
        );
    }

    #[test]
    fn the_section_is_checked() {
        let ok = TelemetryConfig {
            otlp_endpoint: Some("http://127.0.0.1:4318".into()),
            ..TelemetryConfig::default()
        };
        assert!(ok.validate().is_ok());
        assert_eq!(
            ok.traces_url("http://127.0.0.1:4318/"),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            ok.traces_url("http://c:4318/v1/traces"),
            "http://c:4318/v1/traces"
        );
        let bad_ratio = TelemetryConfig {
            sampling_ratio: 1.5,
            ..TelemetryConfig::default()
        };
        assert!(bad_ratio.validate().unwrap_err().contains("sampling_ratio"));
        let bad_url = TelemetryConfig {
            otlp_endpoint: Some("collector:4318".into()),
            ..TelemetryConfig::default()
        };
        assert!(bad_url.validate().unwrap_err().contains("otlp_endpoint"));
    }
}
