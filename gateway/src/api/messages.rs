//! `POST /v1/messages` and `POST /v1/messages/count_tokens`, Anthropic's Messages API: the
//! request is translated into the engine's `Call` (`anthropic_wire.rs`), the engine's answer
//! rendered as a Messages response or as Anthropic's typed SSE events (`message_start`,
//! `content_block_start`/`_delta`/`_stop`, `message_delta`, `message_stop`, `ping`, `error`),
//! errors in Anthropic's shape. `anthropic-version`, `anthropic-beta`, `thinking` and the
//! thinking blocks of earlier turns reach Anthropic upstreams only, unchanged; when another
//! upstream answers, `x-lumina-dropped: thinking` says the blocks were left out. An Anthropic
//! upstream's thinking comes back as thinking blocks (streamed: `thinking_delta`,
//! `signature_delta`). Usage is Anthropic's (input, output, cache tokens) with `cost` beside it.

use axum::Extension;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use lumina_schemas::ids::RequestId;
use serde_json::{Value, json};

use crate::anthropic_wire::{self, Translated};
use crate::api::chat::{answered, put_event, streamed};
use crate::api::error::ApiError;
use crate::api::extract::{CustomerKey, RawBody};
use crate::config::ProviderKind;
use crate::engine::{self, Call, RenderError, StreamEnd, StreamRenderer};
use crate::json_keys::{self, KeyCheck};
use crate::metering::events::InboundApi;
use crate::metering::usage;
use crate::providers::{AnthropicNative, CountCall, StreamChunk};
use crate::routing::catalog::ModelChoice;
use crate::routing::classifier;
use crate::state::AppState;
use crate::telemetry::RequestTrace;
use crate::wire::{ChatRequest, duplicate_member};

static X_LUMINA_DROPPED: HeaderName = HeaderName::from_static("x-lumina-dropped");

/// An error in Anthropic's shape: `{"type": "error", "error": {"type", "message"}}`, with the
/// status and headers (`retry-after`, rate-limit headers) the gateway's error carries.
pub struct MessagesError(pub ApiError);

impl From<ApiError> for MessagesError {
    fn from(e: ApiError) -> Self {
        MessagesError(e)
    }
}

/// Anthropic's error type for an HTTP status.
fn error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 405 | 408 | 422 => "invalid_request_error",
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 | 431 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        _ => "api_error",
    }
}

impl IntoResponse for MessagesError {
    fn into_response(self) -> Response {
        let message = self.0.to_string();
        let openai = self.0.into_response();
        let status = openai.status();
        let body =
            json!({"type": "error", "error": {"type": error_type(status), "message": message}});
        let mut response = (status, axum::Json(body)).into_response();
        for (name, value) in openai.headers() {
            if name != CONTENT_TYPE && name != axum::http::header::CONTENT_LENGTH {
                response.headers_mut().insert(name.clone(), value.clone());
            }
        }
        response
    }
}

/// Reads, checks and translates a Messages body.
fn translate(bytes: &[u8], count_only: bool) -> Result<Translated, ApiError> {
    if let KeyCheck::Duplicate(d) = json_keys::check(bytes) {
        return Err(duplicate_member(d).into());
    }
    anthropic_wire::translate_request(bytes, count_only).map_err(ApiError::from)
}

fn anthropic_headers(headers: &HeaderMap) -> AnthropicNative {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| reqwest::header::HeaderValue::from_bytes(v.as_bytes()).ok())
    };
    AnthropicNative {
        version: get("anthropic-version"),
        beta: get("anthropic-beta"),
        ..AnthropicNative::default()
    }
}

/// Whether the request's thinking blocks did not reach the upstream that answered (not
/// Anthropic).
fn dropped_thinking(translated: &Translated, route: &engine::Route) -> bool {
    !translated.thinking_blocks.is_empty() && route.deployment.kind != ProviderKind::Anthropic
}

/// Says `x-lumina-dropped: thinking` on `response` when `dropped`.
fn said_dropped(mut response: Response, dropped: bool) -> Response {
    if dropped {
        response.headers_mut().insert(
            X_LUMINA_DROPPED.clone(),
            HeaderValue::from_static("thinking"),
        );
    }
    response
}

/// `msg_…` for a request.
fn message_id(request_id: &RequestId) -> String {
    format!("msg_{}", request_id.as_str().trim_start_matches("req_"))
}

/// `POST /v1/messages`
pub async fn create(
    State(state): State<AppState>,
    key: Result<CustomerKey, ApiError>,
    Extension(request_id): Extension<RequestId>,
    Extension(trace): Extension<RequestTrace>,
    headers: HeaderMap,
    body: Result<RawBody, ApiError>,
) -> Result<Response, MessagesError> {
    let CustomerKey(key) = key?;
    let RawBody(bytes) = body?;
    let mut translated = translate(&bytes, false)?;
    let body = Bytes::from(std::mem::take(&mut translated.body));
    let request = ChatRequest::parse(&body).map_err(ApiError::from)?;
    let id = message_id(&request_id);
    let native = AnthropicNative {
        thinking: translated.thinking.clone(),
        thinking_blocks: translated.thinking_blocks.clone(),
        ..anthropic_headers(&headers)
    };
    let call = Call {
        request: &request,
        body: &body,
        key,
        request_id,
        trace,
        anthropic: Some(native),
        api: InboundApi::Messages,
    };
    let response = if translated.stream {
        let renderer = Box::new(MessagesStream::new(id, translated.model.clone()));
        let streaming = engine::stream(&state, call, renderer).await?;
        let dropped = dropped_thinking(&translated, &streaming.route);
        said_dropped(streamed(streaming), dropped)
    } else {
        let answer = engine::complete(&state, call).await?;
        let cost = answer.charge.to_string();
        let out = anthropic_wire::translate_response(
            &answer.body,
            &id,
            &translated.model,
            answer.usage,
            &cost,
        )
        .map_err(|e| ApiError::Internal(format!("the answer could not be translated: {e}")))?;
        let dropped = dropped_thinking(&translated, &answer.route);
        said_dropped(answered(out, &cost, &answer.route), dropped)
    };
    Ok(response)
}

/// `POST /v1/messages/count_tokens`: the prompt's tokens as the o200k tokenizer counts them
/// (flagged `x-lumina-estimated`); nothing is charged or recorded.
pub async fn count_tokens(
    State(state): State<AppState>,
    key: Result<CustomerKey, ApiError>,
    headers: HeaderMap,
    body: Result<RawBody, ApiError>,
) -> Result<Response, MessagesError> {
    key?;
    let RawBody(bytes) = body?;
    let translated = translate(&bytes, true)?;
    let (counted, deployment) = match upstream_count(&state, &bytes, &translated, &headers).await {
        Some((n, deployment)) => (n, Some(deployment)),
        None => {
            let estimate = tokio::task::spawn_blocking(move || {
                ChatRequest::parse(&translated.body).map(|r| usage::prompt_tokens(&r))
            })
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?
            .map_err(ApiError::from)?;
            (estimate, None)
        }
    };
    let mut response = axum::Json(json!({"input_tokens": counted})).into_response();
    let out = response.headers_mut();
    out.insert(
        HeaderName::from_static("x-lumina-estimated"),
        HeaderValue::from_static(if deployment.is_some() {
            "false"
        } else {
            "true"
        }),
    );
    if let Some(v) = deployment.and_then(|d| HeaderValue::from_str(&d).ok()) {
        out.insert(HeaderName::from_static("x-lumina-deployment"), v);
    }
    Ok(response)
}

/// The count of the deployment the request would go to first, when that upstream counts
/// (Anthropic) and answers, with the deployment's id; `None` sends the caller to the
/// tokenizer's estimate.
async fn upstream_count(
    state: &AppState,
    body: &[u8],
    translated: &Translated,
    headers: &HeaderMap,
) -> Option<(u64, String)> {
    let path = match state.catalog.resolve(&translated.model)? {
        ModelChoice::Path(path) => path,
        ModelChoice::Auto => {
            let request = ChatRequest::parse(&translated.body).ok()?;
            let routing = state.routes.routing();
            classifier::classify_with(&request, &routing.policy).path
        }
    };
    let deployment = state.routes.configured(path).first()?;
    let anthropic = anthropic_headers(headers);
    let call = CountCall {
        body,
        upstream_model: &deployment.upstream_model,
        anthropic: &anthropic,
    };
    match deployment.provider.count_tokens(call).await {
        Ok(Some(n)) => Some((n, deployment.id.clone())),
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(deployment = %deployment.id, error = %e.message, "the upstream could not count tokens; answering the estimate");
            None
        }
    }
}

/// Appends one Anthropic SSE event.
fn put_json(out: &mut BytesMut, kind: &str, data: &Value) {
    put_event(out, kind, &data.to_string());
}

/// The block being written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    None,
    Text(usize),
    Thinking(usize),
    Tool { block: usize, call: u64 },
}

/// A chat completion stream rewritten as Anthropic's Messages events.
struct MessagesStream {
    id: String,
    model: String,
    started: bool,
    next_block: usize,
    open: Open,
    stop_reason: &'static str,
}

impl MessagesStream {
    fn new(id: String, model: String) -> MessagesStream {
        MessagesStream {
            id,
            model,
            started: false,
            next_block: 0,
            open: Open::None,
            stop_reason: "end_turn",
        }
    }

    fn start(&mut self, out: &mut BytesMut) {
        if self.started {
            return;
        }
        self.started = true;
        put_json(
            out,
            "message_start",
            &json!({"type": "message_start", "message": {"id": self.id, "type": "message",
                "role": "assistant", "model": self.model, "content": [], "stop_reason": null,
                "stop_sequence": null, "usage": {"input_tokens": 0, "output_tokens": 0}}}),
        );
        put_json(out, "ping", &json!({"type": "ping"}));
    }

    fn close(&mut self, out: &mut BytesMut) {
        let index = match self.open {
            Open::None => return,
            Open::Text(i) | Open::Thinking(i) | Open::Tool { block: i, .. } => i,
        };
        put_json(
            out,
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": index}),
        );
        self.open = Open::None;
    }

    fn text(&mut self, text: &str, out: &mut BytesMut) {
        let index = match self.open {
            Open::Text(i) => i,
            _ => {
                self.close(out);
                let i = self.next_block;
                self.next_block += 1;
                put_json(
                    out,
                    "content_block_start",
                    &json!({"type": "content_block_start", "index": i,
                        "content_block": {"type": "text", "text": ""}}),
                );
                self.open = Open::Text(i);
                i
            }
        };
        put_json(
            out,
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": index,
                "delta": {"type": "text_delta", "text": text}}),
        );
    }

    /// Opens a block of `content_block` (JSON) and returns its index.
    fn open_block(&mut self, content_block: Value, out: &mut BytesMut) -> usize {
        self.close(out);
        let i = self.next_block;
        self.next_block += 1;
        put_json(
            out,
            "content_block_start",
            &json!({"type": "content_block_start", "index": i, "content_block": content_block}),
        );
        i
    }

    fn thinking(&mut self, text: &str, out: &mut BytesMut) -> usize {
        let index = match self.open {
            Open::Thinking(i) => i,
            _ => {
                let i = self.open_block(json!({"type": "thinking", "thinking": ""}), out);
                self.open = Open::Thinking(i);
                i
            }
        };
        if !text.is_empty() {
            put_json(
                out,
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": index,
                    "delta": {"type": "thinking_delta", "thinking": text}}),
            );
        }
        index
    }

    /// A thinking block's signature (ending the block) or a redacted-thinking block.
    fn thinking_block(&mut self, block: &Value, out: &mut BytesMut) {
        if block["type"] == "redacted_thinking" {
            self.open_block(block.clone(), out);
            self.open = Open::Thinking(self.next_block - 1);
            self.close(out);
            return;
        }
        let index = self.thinking("", out);
        if let Some(signature) = block["signature"].as_str() {
            put_json(
                out,
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": index,
                    "delta": {"type": "signature_delta", "signature": signature}}),
            );
        }
        self.close(out);
    }

    fn tool(&mut self, call: &Value, out: &mut BytesMut) {
        let call_index = call["index"].as_u64().unwrap_or(0);
        let is_open = matches!(self.open, Open::Tool { call, .. } if call == call_index);
        if !is_open {
            self.close(out);
            let i = self.next_block;
            self.next_block += 1;
            put_json(
                out,
                "content_block_start",
                &json!({"type": "content_block_start", "index": i, "content_block": {
                    "type": "tool_use", "id": call["id"].as_str().unwrap_or(""),
                    "name": call["function"]["name"].as_str().unwrap_or(""), "input": {}}}),
            );
            self.open = Open::Tool {
                block: i,
                call: call_index,
            };
        }
        let Open::Tool { block, .. } = self.open else {
            return;
        };
        if let Some(partial) = call["function"]["arguments"]
            .as_str()
            .filter(|a| !a.is_empty())
        {
            put_json(
                out,
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": block,
                    "delta": {"type": "input_json_delta", "partial_json": partial}}),
            );
        }
    }
}

impl StreamRenderer for MessagesStream {
    fn chunk(&mut self, chunk: &StreamChunk, out: &mut BytesMut) -> Result<(), RenderError> {
        let v: Value = serde_json::from_slice(&chunk.data)
            .map_err(|e| RenderError(format!("a chunk is not JSON: {e}")))?;
        self.start(out);
        for choice in v["choices"].as_array().into_iter().flatten() {
            let delta = &choice["delta"];
            if let Some(text) = delta["reasoning_content"]
                .as_str()
                .filter(|t| !t.is_empty())
            {
                self.thinking(text, out);
            }
            for block in delta["thinking_blocks"].as_array().into_iter().flatten() {
                self.thinking_block(block, out);
            }
            if let Some(text) = delta["content"].as_str().filter(|t| !t.is_empty()) {
                self.text(text, out);
            }
            for call in delta["tool_calls"].as_array().into_iter().flatten() {
                self.tool(call, out);
            }
            if let Some(finish) = choice["finish_reason"].as_str() {
                self.stop_reason = anthropic_wire::stop_reason(Some(finish));
            }
        }
        Ok(())
    }

    fn finish(&mut self, end: StreamEnd<'_>, out: &mut BytesMut) -> Result<(), RenderError> {
        self.start(out);
        self.close(out);
        let usage = anthropic_wire::usage_json(end.usage, &end.charge.to_string());
        let mut delta = format!(
            r#"{{"type":"message_delta","delta":{{"stop_reason":"{}","stop_sequence":null}},"usage":"#,
            self.stop_reason
        );
        delta.push_str(&usage);
        if let Some(report) = end
            .report
            .as_ref()
            .and_then(|r| std::str::from_utf8(r).ok())
        {
            delta.push_str(r#","lumina":"#);
            delta.push_str(report);
        }
        delta.push('}');
        put_event(out, "message_delta", &delta);
        put_json(out, "message_stop", &json!({"type": "message_stop"}));
        Ok(())
    }

    fn fail(&mut self, message: &str, code: &str, out: &mut BytesMut) {
        let kind = if code == "upstream_cut" {
            "overloaded_error"
        } else {
            "api_error"
        };
        put_json(
            out,
            "error",
            &json!({"type": "error", "error": {"type": kind, "message": message}}),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(json: Value) -> StreamChunk {
        StreamChunk {
            data: Bytes::from(json.to_string()),
            text: String::new(),
            usage: None,
            usage_only: false,
        }
    }

    fn events(out: &BytesMut) -> Vec<(String, Value)> {
        std::str::from_utf8(out)
            .unwrap()
            .split("\n\n")
            .filter(|b| !b.is_empty())
            .map(|b| {
                let (event, data) = b.split_once('\n').unwrap();
                (
                    event.trim_start_matches("event: ").to_string(),
                    serde_json::from_str(data.trim_start_matches("data: ")).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn chunks_become_typed_events_with_blocks_opened_and_closed() {
        let mut r = MessagesStream::new("msg_1".into(), "claude-x".into());
        let mut out = BytesMut::new();
        for c in [
            json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}),
            json!({"choices": [{"index": 0, "delta": {"content": "Hello "}}]}),
            json!({"choices": [{"index": 0, "delta": {"content": "there"}}]}),
            json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "c1", "type": "function", "function": {"name": "f", "arguments": ""}}]}}]}),
            json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{\"a\":"}}]}}]}),
            json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}}]}),
            json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}),
        ] {
            r.chunk(&chunk(c), &mut out).unwrap();
        }
        let kinds: Vec<String> = events(&out).into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            kinds,
            [
                "message_start",
                "ping",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_delta"
            ]
        );
        let all = events(&out);
        assert_eq!(all[6].1["content_block"]["type"], "tool_use");
        assert_eq!(all[6].1["index"], 1);
        assert_eq!(r.stop_reason, "tool_use");
        let mut end = BytesMut::new();
        r.fail("gone", "upstream_cut", &mut end);
        assert_eq!(events(&end)[0].0, "error");
    }

    #[test]
    fn thinking_streams_as_thinking_blocks_with_their_signatures() {
        let mut r = MessagesStream::new("msg_1".into(), "claude-x".into());
        let mut out = BytesMut::new();
        for c in [
            json!({"choices": [{"index": 0, "delta": {"reasoning_content": "let me "}}]}),
            json!({"choices": [{"index": 0, "delta": {"reasoning_content": "see"}}]}),
            json!({"choices": [{"index": 0, "delta": {"thinking_blocks": [{"type": "thinking", "thinking": "", "signature": "c2ln"}]}}]}),
            json!({"choices": [{"index": 0, "delta": {"thinking_blocks": [{"type": "redacted_thinking", "data": "ZGF0YQ=="}]}}]}),
            json!({"choices": [{"index": 0, "delta": {"content": "Answer"}}]}),
        ] {
            r.chunk(&chunk(c), &mut out).unwrap();
        }
        let all = events(&out);
        let kinds: Vec<&str> = all.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "message_start",
                "ping",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_stop",
                "content_block_start",
                "content_block_delta"
            ]
        );
        assert_eq!(all[2].1["content_block"]["type"], "thinking");
        assert_eq!(all[4].1["delta"]["thinking"], "see");
        assert_eq!(
            all[5].1["delta"],
            json!({"type": "signature_delta", "signature": "c2ln"})
        );
        assert_eq!(all[7].1["content_block"]["data"], "ZGF0YQ==");
        assert_eq!(all[7].1["index"], 1);
        assert_eq!(all[9].1["index"], 2);
    }

    #[test]
    fn errors_take_anthropic_types() {
        assert_eq!(error_type(StatusCode::UNAUTHORIZED), "authentication_error");
        assert_eq!(
            error_type(StatusCode::TOO_MANY_REQUESTS),
            "rate_limit_error"
        );
        assert_eq!(error_type(StatusCode::NOT_FOUND), "not_found_error");
        assert_eq!(error_type(StatusCode::BAD_GATEWAY), "api_error");
    }
}
