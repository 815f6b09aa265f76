//! `POST /v1/chat/completions`, the OpenAI Chat Completions surface: parses the body into the
//! engine's [`Call`] and renders what the engine answers — a `chat.completion` with
//! `usage.cost`, or a server-sent event stream of chunks ending in the usage chunk (when asked
//! for) and `[DONE]`, or an error event. The request's life is the engine's.

use std::convert::Infallible;

use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use futures::StreamExt;
use lumina_schemas::ids::RequestId;

use crate::api::error::{ApiError, rate_limit_headers};
use crate::api::extract::{CustomerKey, RawBody};
use crate::engine::{self, Call, RenderError, Route, StreamEnd, StreamRenderer, Streaming};
use crate::metering::cost;
use crate::metering::events::InboundApi;
use crate::providers::StreamChunk;
use crate::state::AppState;
use crate::telemetry::RequestTrace;
use crate::wire::{ChatChunk, ChatRequest, UsageOut};

static X_LUMINA_ROUTE: HeaderName = HeaderName::from_static("x-lumina-route");
static X_LUMINA_PROVIDER: HeaderName = HeaderName::from_static("x-lumina-provider");
static X_LUMINA_ATTEMPTS: HeaderName = HeaderName::from_static("x-lumina-attempts");
static X_LUMINA_DEPLOYMENT: HeaderName = HeaderName::from_static("x-lumina-deployment");
/// `x-lumina-cost`: the request's charge in credits.
pub static X_LUMINA_COST: HeaderName = HeaderName::from_static("x-lumina-cost");
static X_LUMINA_POLICY: HeaderName = HeaderName::from_static("x-lumina-policy");

/// `x-lumina-*` and the key's rate-limit headers.
pub fn routed_headers(headers: &mut HeaderMap, route: &Route) {
    headers.insert(
        X_LUMINA_ROUTE.clone(),
        HeaderValue::from_static(route.meta.path.as_str()),
    );
    if let Ok(v) = HeaderValue::from_str(&route.deployment.provider_name) {
        headers.insert(X_LUMINA_PROVIDER.clone(), v);
    }
    if let Ok(v) = HeaderValue::from_str(&route.deployment.id) {
        headers.insert(X_LUMINA_DEPLOYMENT.clone(), v);
    }
    if let Ok(v) = HeaderValue::from_str(&route.attempts.to_string()) {
        headers.insert(X_LUMINA_ATTEMPTS.clone(), v);
    }
    headers.insert(
        X_LUMINA_POLICY.clone(),
        HeaderValue::from(route.policy_version),
    );
    rate_limit_headers(headers, &route.limits);
}

/// A whole answer as the client gets it: `body` (JSON) with `x-lumina-cost` (`cost`, in
/// credits) and the routing headers.
pub fn answered(body: impl Into<Body>, cost: &str, route: &Route) -> Response {
    let mut response = (StatusCode::OK, body.into()).into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Ok(v) = HeaderValue::from_str(cost) {
        headers.insert(X_LUMINA_COST.clone(), v);
    }
    routed_headers(headers, route);
    response
}

/// A stream as the client gets it: server-sent events with the routing headers.
pub fn streamed(streaming: Streaming) -> Response {
    let body = Body::from_stream(
        tokio_stream::wrappers::ReceiverStream::new(streaming.body).map(Ok::<_, Infallible>),
    );
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    routed_headers(headers, &streaming.route);
    response
}

/// Appends `event: <kind>\ndata: <data>\n\n`, a typed server-sent event (Anthropic's and the
/// Responses API's streams).
pub fn put_event(out: &mut BytesMut, kind: &str, data: &str) {
    out.reserve(kind.len() + data.len() + 16);
    out.put_slice(b"event: ");
    out.put_slice(kind.as_bytes());
    out.put_slice(b"\ndata: ");
    out.put_slice(data.as_bytes());
    out.put_slice(b"\n\n");
}

/// The handler.
pub async fn create(
    State(state): State<AppState>,
    CustomerKey(key): CustomerKey,
    Extension(request_id): Extension<RequestId>,
    Extension(trace): Extension<RequestTrace>,
    RawBody(bytes): RawBody,
) -> Result<Response, ApiError> {
    let request = ChatRequest::parse(&bytes)?;
    let call = Call {
        request: &request,
        body: &bytes,
        key,
        request_id,
        trace,
        anthropic: None,
        api: InboundApi::ChatCompletions,
    };
    if request.stream {
        let renderer = Box::new(ChatStream {
            include_usage: request.include_usage,
        });
        return Ok(streamed(engine::stream(&state, call, renderer).await?));
    }
    let answer = engine::complete(&state, call).await?;
    let body = cost::with_cost(
        &answer.body,
        answer.usage,
        answer.charge,
        answer.replace_usage,
    );
    Ok(answered(body, &answer.charge.to_string(), &answer.route))
}

/// Appends `data: <json>\n\n`.
pub fn put_sse(out: &mut BytesMut, data: &[u8]) {
    out.reserve(data.len() + 8);
    out.put_slice(b"data: ");
    out.put_slice(data);
    out.put_slice(b"\n\n");
}

const DONE: &[u8] = b"data: [DONE]\n\n";

/// A chat completion stream in OpenAI's SSE shape.
struct ChatStream {
    include_usage: bool,
}

impl ChatStream {
    /// A usage chunk for upstreams that sent none (or whose usage was not what was billed).
    fn usage_chunk(end: &StreamEnd<'_>) -> Result<Bytes, RenderError> {
        let id = format!(
            "chatcmpl-{}",
            end.meta.request_id.as_str().trim_start_matches("req_")
        );
        let chunk = ChatChunk {
            id: &id,
            object: "chat.completion.chunk",
            created: end.meta.started_at / 1_000_000,
            model: end.upstream_model,
            choices: Vec::new(),
            usage: Some(UsageOut::from(end.usage)),
            service_tier: "default",
            system_fingerprint: None,
        };
        serde_json::to_vec(&chunk)
            .map(Bytes::from)
            .map_err(|e| RenderError(format!("the usage chunk did not serialise: {e}")))
    }
}

impl ChatStream {
    /// The chunk with empty `choices` that carries Lumina's `report` (a Fusion panel's).
    fn report_chunk(end: &StreamEnd<'_>, report: &[u8]) -> Vec<u8> {
        let head = serde_json::json!({
            "id": format!("chatcmpl-{}", end.meta.request_id.as_str().trim_start_matches("req_")),
            "object": "chat.completion.chunk",
            "created": end.meta.started_at / 1_000_000,
            "model": end.upstream_model,
            "choices": [],
        })
        .to_string();
        let mut chunk = Vec::with_capacity(head.len() + report.len() + 12);
        chunk.extend_from_slice(&head.as_bytes()[..head.len() - 1]);
        chunk.extend_from_slice(b",\"lumina\":");
        chunk.extend_from_slice(report);
        chunk.push(b'}');
        chunk
    }
}

impl StreamRenderer for ChatStream {
    fn chunk(&mut self, chunk: &StreamChunk, out: &mut BytesMut) -> Result<(), RenderError> {
        put_sse(out, &chunk.data);
        Ok(())
    }

    fn finish(&mut self, end: StreamEnd<'_>, out: &mut BytesMut) -> Result<(), RenderError> {
        if let Some(report) = &end.report {
            put_sse(out, &Self::report_chunk(&end, report));
        }
        if self.include_usage {
            let chunk = match end.usage_chunk {
                Some(upstream) => upstream.clone(),
                None => Self::usage_chunk(&end)?,
            };
            put_sse(
                out,
                &cost::with_cost(&chunk, end.usage, end.charge, end.replace_usage),
            );
        }
        out.put_slice(DONE);
        Ok(())
    }

    fn fail(&mut self, message: &str, code: &str, out: &mut BytesMut) {
        let body = serde_json::json!({"error": {"message": message, "type": "server_error", "param": null, "code": code}});
        put_sse(out, body.to_string().as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_sse_data_lines_and_errors_are_openai_error_objects() {
        let mut out = BytesMut::new();
        let mut renderer = ChatStream {
            include_usage: false,
        };
        renderer.fail("it broke", "upstream_cut", &mut out);
        let text = std::str::from_utf8(&out).unwrap();
        let payload = text.strip_prefix("data: ").unwrap().trim_end();
        let v: serde_json::Value = serde_json::from_str(payload).unwrap();
        assert_eq!(v["error"]["code"], "upstream_cut");
        assert!(!text.contains("[DONE]"));
    }
}
