//! `POST /v1/responses`, `GET /v1/responses/{id}` and `DELETE /v1/responses/{id}`, OpenAI's
//! Responses API: the request is translated into the engine's `Call` after the conversation its
//! `previous_response_id` continues (`responses_wire.rs`), the engine's answer rendered as a
//! response object or as the API's typed SSE events (`response.created`, `.in_progress`,
//! `.output_item.added`/`.done`, `.content_part.added`/`.done`, `.output_text.delta`/`.done`,
//! `.function_call_arguments.delta`/`.done`, `.completed`, `.failed`). A stored response
//! (`store`, the default) is written `in_progress` before the upstream is called and made final
//! before the last byte (`response_store.rs`). One request, one settlement, one charge.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use lumina_schemas::ids::RequestId;
use serde_json::{Value, json};

use crate::api::chat::{answered, put_event, streamed};
use crate::api::error::ApiError;
use crate::api::extract::{CustomerKey, RawBody};
use crate::auth::KeyIdentity;
use crate::engine::{self, Call, Ending, RenderError, StreamEnd, StreamRenderer};
use crate::json_keys::{self, KeyCheck};
use crate::metering::events::InboundApi;
use crate::providers::StreamChunk;
use crate::response_store::{NewResponse, ResponseStore};
use crate::responses_wire::{
    self, Head, Ids, Output, Parsed, function_call_output, message_output, response_json,
    usage_json,
};
use crate::state::AppState;
use crate::telemetry::RequestTrace;
use crate::wire::{ChatRequest, duplicate_member};

/// A stored response being written: its row exists `in_progress` from [`Keeper::begin`] on.
/// A response is kept once its client saw its id: dropped before [`Keeper::finish`] (the
/// request was refused, or its client went away before the whole answer), the row is deleted.
struct Keeper {
    row: Row,
    /// The conversation before this turn's answer (JSON array text).
    conversation: Arc<str>,
    finished: bool,
}

/// Where a stored response's row is.
#[derive(Clone)]
struct Row {
    store: ResponseStore,
    account_id: String,
    id: String,
}

impl Row {
    /// Deletes the row of a response its client never saw.
    async fn discard(self) {
        if let Err(e) = self.store.delete(&self.account_id, &self.id).await {
            tracing::error!(error = %e, response = %self.id, "could not delete an unanswered response");
        }
    }
}

impl Keeper {
    /// Writes the row `in_progress`.
    async fn begin(
        store: &ResponseStore,
        key: &KeyIdentity,
        request_id: &RequestId,
        head: &Head<'_>,
        conversation: String,
    ) -> Result<Keeper, ApiError> {
        let response = response_json(head, Vec::new(), None);
        store
            .begin(NewResponse {
                id: &head.ids.response,
                account_id: key.account_id.as_str(),
                project_id: key.project_id.as_str(),
                api_key_id: key.key_id.as_str(),
                request_id: request_id.as_str(),
                previous_id: head.parsed.previous_response_id.as_deref(),
                created_at: head.created_at,
                response: &response,
                conversation: &conversation,
            })
            .await
            .map_err(|e| {
                ApiError::Unavailable(format!(
                    "The response could not be stored ({e}); nothing was charged."
                ))
            })?;
        Ok(Keeper {
            row: Row {
                store: store.clone(),
                account_id: key.account_id.as_str().to_string(),
                id: head.ids.response.clone(),
            },
            conversation: conversation.into(),
            finished: false,
        })
    }

    /// The work that makes the row final: `status`, the response object, and the conversation
    /// with `answer` (the assistant message) appended when there is one.
    fn finish(
        &mut self,
        status: &'static str,
        response: String,
        answer: Option<&Value>,
    ) -> BoxFuture<'static, Result<(), RenderError>> {
        self.finished = true;
        let conversation = match answer {
            Some(message) => {
                let prefix = self.conversation.strip_suffix(']').unwrap_or("[");
                format!("{prefix},{message}]")
            }
            None => self.conversation.to_string(),
        };
        let row = self.row.clone();
        Box::pin(async move {
            row.store
                .finish(&row.id, status, &response, &conversation)
                .await
                .map_err(|e| RenderError(e.to_string()))
        })
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(self.row.clone().discard());
        }
    }
}

/// The conversation `id` ends, for a turn that continues it.
async fn history(state: &AppState, key: &KeyIdentity, id: &str) -> Result<Vec<Value>, ApiError> {
    let stored = state
        .responses
        .get(key.account_id.as_str(), id)
        .await
        .map_err(|e| ApiError::Unavailable(format!("Stored responses cannot be read ({e}).")))?
        .ok_or_else(|| ApiError::PreviousResponseNotFound(id.to_string()))?;
    if stored.status == "in_progress" {
        return Err(ApiError::invalid(
            format!(
                "Previous response with id '{id}' is still in progress; wait for it to complete."
            ),
            Some("previous_response_id"),
        ));
    }
    serde_json::from_str(&stored.conversation)
        .map_err(|e| ApiError::Internal(format!("stored conversation {id} is not JSON: {e}")))
}

fn now_secs() -> i64 {
    lumina_schemas::now_micros() / 1_000_000
}

/// `POST /v1/responses`
pub async fn create(
    State(state): State<AppState>,
    CustomerKey(key): CustomerKey,
    Extension(request_id): Extension<RequestId>,
    Extension(trace): Extension<RequestTrace>,
    RawBody(bytes): RawBody,
) -> Result<Response, ApiError> {
    if let KeyCheck::Duplicate(d) = json_keys::check(&bytes) {
        return Err(duplicate_member(d).into());
    }
    let parsed = Arc::new(responses_wire::parse(&bytes)?);
    let earlier = match &parsed.previous_response_id {
        Some(id) => history(&state, &key, id).await?,
        None => Vec::new(),
    };
    let body = Bytes::from(parsed.chat_body(&earlier));
    if body.len() > state.server.max_body_bytes {
        return Err(ApiError::invalid(
            format!(
                "The conversation is {} bytes, more than the {} this gateway accepts in one request; start a new one.",
                body.len(),
                state.server.max_body_bytes
            ),
            Some(if parsed.previous_response_id.is_some() {
                "previous_response_id"
            } else {
                "input"
            }),
        ));
    }
    let request = ChatRequest::parse(&body)?;
    let ids = Ids::of(request_id.as_str());
    let created_at = now_secs();
    let keeper = if parsed.store {
        let mut conversation = earlier;
        conversation.extend(parsed.turn.iter().cloned());
        let conversation =
            serde_json::to_string(&conversation).map_err(|e| ApiError::Internal(e.to_string()))?;
        let head = Head {
            ids: &ids,
            created_at,
            status: "in_progress",
            model: &parsed.model,
            parsed: &parsed,
            error: None,
            report: None,
        };
        Some(Keeper::begin(&state.responses, &key, &request_id, &head, conversation).await?)
    } else {
        None
    };
    let call = Call {
        request: &request,
        body: &body,
        key,
        request_id,
        trace,
        anthropic: None,
        api: InboundApi::Responses,
    };
    if parsed.stream {
        let row = keeper.as_ref().map(|k| k.row.clone());
        let renderer = Box::new(ResponsesStream::new(
            ids,
            created_at,
            parsed.clone(),
            keeper,
        ));
        let streaming = match engine::stream(&state, call, renderer).await {
            Ok(streaming) => streaming,
            Err(e) => {
                if let Some(row) = row {
                    row.discard().await;
                }
                return Err(e);
            }
        };
        return Ok(streamed(streaming));
    }
    whole(&state, call, &parsed, &ids, created_at, keeper).await
}

/// A whole (not streamed) response: answered, stored, then returned.
async fn whole(
    state: &AppState,
    call: Call<'_>,
    parsed: &Parsed,
    ids: &Ids,
    created_at: i64,
    mut keeper: Option<Keeper>,
) -> Result<Response, ApiError> {
    let answer = match engine::complete(state, call).await {
        Ok(answer) => answer,
        Err(e) => {
            if let Some(mut k) = keeper.take() {
                k.finished = true;
                k.row.clone().discard().await;
            }
            return Err(e);
        }
    };
    let completion: Value = serde_json::from_slice(&answer.body)
        .map_err(|e| ApiError::Internal(format!("the answer is not JSON: {e}")))?;
    let output = Output::of_completion(&completion);
    let cost = answer.charge.to_string();
    let head = Head {
        ids,
        created_at,
        status: "completed",
        model: &answer.route.deployment.upstream_model,
        parsed,
        error: None,
        report: completion.get("lumina").map(Value::to_string),
    };
    let text = response_json(
        &head,
        output.items(ids, "completed"),
        Some(&usage_json(answer.usage, &cost)),
    );
    if let Some(k) = keeper.as_mut() {
        k.finish("completed", text.clone(), Some(&output.chat_message()))
            .await
            .map_err(|e| {
                ApiError::Unavailable(format!(
                    "The response was generated and charged ({cost} credits) but could not be stored: {e}."
                ))
            })?;
    }
    Ok(answered(text, &cost, &answer.route))
}

/// `GET /v1/responses/{id}`: a stored response of the key's account.
pub async fn retrieve(
    State(state): State<AppState>,
    CustomerKey(key): CustomerKey,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let stored = state
        .responses
        .get(key.account_id.as_str(), &id)
        .await
        .map_err(|e| ApiError::Unavailable(format!("Stored responses cannot be read ({e}).")))?
        .ok_or_else(|| not_found(&id))?;
    let mut response = (StatusCode::OK, stored.response).into_response();
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}

/// `DELETE /v1/responses/{id}`.
pub async fn delete(
    State(state): State<AppState>,
    CustomerKey(key): CustomerKey,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let deleted = state
        .responses
        .delete(key.account_id.as_str(), &id)
        .await
        .map_err(|e| ApiError::Unavailable(format!("Stored responses cannot be changed ({e}).")))?;
    if !deleted {
        return Err(not_found(&id));
    }
    Ok(axum::Json(json!({"id": id, "object": "response", "deleted": true})).into_response())
}

fn not_found(id: &str) -> ApiError {
    ApiError::NotFound {
        message: format!("Response with id '{id}' not found."),
        param: None,
    }
}

/// The output item being written.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Open {
    None,
    Message { index: usize, id: String },
    Call { index: usize, n: usize },
}

/// A chat completion stream rewritten as the Responses API's typed events.
struct ResponsesStream {
    ids: Ids,
    created_at: i64,
    parsed: Arc<Parsed>,
    keeper: Option<Keeper>,
    sequence: u64,
    started: bool,
    /// Items finished, in output order.
    done: Vec<Value>,
    open: Open,
    /// Messages opened so far (the first takes the response's message id).
    messages: usize,
    /// The answer so far (the text of every message).
    output: Output,
    /// The open message's text.
    message_text: String,
    /// Function calls by the chat stream's tool-call index.
    calls: HashMap<u64, usize>,
    /// The completed response object, once built.
    completed: Option<String>,
}

impl ResponsesStream {
    fn new(
        ids: Ids,
        created_at: i64,
        parsed: Arc<Parsed>,
        keeper: Option<Keeper>,
    ) -> ResponsesStream {
        ResponsesStream {
            ids,
            created_at,
            parsed,
            keeper,
            sequence: 0,
            started: false,
            done: Vec::new(),
            open: Open::None,
            messages: 0,
            output: Output::default(),
            message_text: String::new(),
            calls: HashMap::new(),
            completed: None,
        }
    }

    /// Appends one event with the next sequence number.
    fn event(&mut self, kind: &str, mut data: Value, out: &mut BytesMut) {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        put_event(out, kind, &data.to_string());
    }

    /// Appends an event whose `response` member is `response` (JSON text, spliced as is).
    fn response_event(&mut self, kind: &str, response: &str, out: &mut BytesMut) {
        let text = format!(
            r#"{{"type":"{kind}","sequence_number":{},"response":{response}}}"#,
            self.sequence
        );
        self.sequence += 1;
        put_event(out, kind, &text);
    }

    fn head(&self, status: &'static str, error: Option<Value>) -> Head<'_> {
        Head {
            ids: &self.ids,
            created_at: self.created_at,
            status,
            model: &self.parsed.model,
            parsed: &self.parsed,
            error,
            report: None,
        }
    }

    fn start(&mut self, out: &mut BytesMut) {
        if self.started {
            return;
        }
        self.started = true;
        let response = response_json(&self.head("in_progress", None), Vec::new(), None);
        self.response_event("response.created", &response, out);
        self.response_event("response.in_progress", &response, out);
    }

    /// The open item in its finished form.
    fn open_item(&self) -> Option<Value> {
        match &self.open {
            Open::None => None,
            Open::Message { id, .. } => Some(message_output(id, "completed", &self.message_text)),
            Open::Call { n, .. } => {
                let (call_id, name, arguments) = &self.output.calls[*n];
                Some(function_call_output(
                    &self.ids.function_call(*n),
                    "completed",
                    call_id,
                    name,
                    arguments,
                ))
            }
        }
    }

    fn close(&mut self, out: &mut BytesMut) {
        let Some(item) = self.open_item() else {
            return;
        };
        match std::mem::replace(&mut self.open, Open::None) {
            Open::None => {}
            Open::Message { index, id } => {
                let text = item["content"][0]["text"].clone();
                self.event(
                    "response.output_text.done",
                    json!({"item_id": id, "output_index": index, "content_index": 0, "text": text, "logprobs": []}),
                    out,
                );
                self.event(
                    "response.content_part.done",
                    json!({"item_id": id, "output_index": index, "content_index": 0, "part": item["content"][0]}),
                    out,
                );
                self.event(
                    "response.output_item.done",
                    json!({"output_index": index, "item": item}),
                    out,
                );
            }
            Open::Call { index, .. } => {
                self.event(
                    "response.function_call_arguments.done",
                    json!({"item_id": item["id"], "output_index": index, "arguments": item["arguments"], "name": item["name"]}),
                    out,
                );
                self.event(
                    "response.output_item.done",
                    json!({"output_index": index, "item": item}),
                    out,
                );
            }
        }
        self.done.push(item);
    }

    fn text(&mut self, delta: &str, out: &mut BytesMut) {
        let (index, id) = match &self.open {
            Open::Message { index, id } => (*index, id.clone()),
            _ => {
                self.close(out);
                let index = self.done.len();
                let id = match self.messages {
                    0 => self.ids.message.clone(),
                    k => format!("{}_{k}", self.ids.message),
                };
                self.messages += 1;
                self.message_text.clear();
                self.event(
                    "response.output_item.added",
                    json!({"output_index": index, "item": {"type": "message", "id": id,
                        "status": "in_progress", "role": "assistant", "content": []}}),
                    out,
                );
                self.event(
                    "response.content_part.added",
                    json!({"item_id": id, "output_index": index, "content_index": 0,
                        "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}}),
                    out,
                );
                self.open = Open::Message {
                    index,
                    id: id.clone(),
                };
                (index, id)
            }
        };
        self.output.text.push_str(delta);
        self.message_text.push_str(delta);
        self.event(
            "response.output_text.delta",
            json!({"item_id": id, "output_index": index, "content_index": 0, "delta": delta, "logprobs": []}),
            out,
        );
    }

    fn call(&mut self, call: &Value, out: &mut BytesMut) {
        let chat_index = call["index"].as_u64().unwrap_or(0);
        let open_n = match self.open {
            Open::Call { n, .. } if self.calls.get(&chat_index) == Some(&n) => Some(n),
            _ => None,
        };
        let (index, n) = match (open_n, &self.open) {
            (Some(n), Open::Call { index, .. }) => (*index, n),
            _ => {
                self.close(out);
                let index = self.done.len();
                let n = self.output.calls.len();
                let call_id = call["id"]
                    .as_str()
                    .map_or_else(|| format!("call_{}_{n}", self.ids.response), str::to_string);
                let name = call["function"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                self.output
                    .calls
                    .push((call_id.clone(), name.clone(), String::new()));
                self.calls.insert(chat_index, n);
                self.event(
                    "response.output_item.added",
                    json!({"output_index": index, "item": {"type": "function_call",
                        "id": self.ids.function_call(n), "status": "in_progress",
                        "call_id": call_id, "name": name, "arguments": ""}}),
                    out,
                );
                self.open = Open::Call { index, n };
                (index, n)
            }
        };
        if let Some(delta) = call["function"]["arguments"]
            .as_str()
            .filter(|a| !a.is_empty())
        {
            self.output.calls[n].2.push_str(delta);
            let item_id = self.ids.function_call(n);
            self.event(
                "response.function_call_arguments.delta",
                json!({"item_id": item_id, "output_index": index, "delta": delta}),
                out,
            );
        }
    }

    /// The completed response object for `end`.
    fn completed_json(&self, end: &StreamEnd<'_>) -> String {
        let mut output = self.done.clone();
        output.extend(self.open_item());
        let mut head = self.head("completed", None);
        head.model = end.upstream_model;
        head.report = end
            .report
            .as_ref()
            .and_then(|r| std::str::from_utf8(r).ok())
            .map(str::to_string);
        response_json(
            &head,
            output,
            Some(&usage_json(end.usage, &end.charge.to_string())),
        )
    }
}

impl StreamRenderer for ResponsesStream {
    fn chunk(&mut self, chunk: &StreamChunk, out: &mut BytesMut) -> Result<(), RenderError> {
        let v: Value = serde_json::from_slice(&chunk.data)
            .map_err(|e| RenderError(format!("a chunk is not JSON: {e}")))?;
        self.start(out);
        // The first choice is the response (`n` is not a Responses parameter).
        if let Some(choice) = v["choices"].as_array().and_then(|c| c.first()) {
            let delta = &choice["delta"];
            if let Some(text) = delta["content"].as_str().filter(|t| !t.is_empty()) {
                self.text(text, out);
            }
            for call in delta["tool_calls"].as_array().into_iter().flatten() {
                self.call(call, out);
            }
        }
        Ok(())
    }

    fn finish(&mut self, end: StreamEnd<'_>, out: &mut BytesMut) -> Result<(), RenderError> {
        self.start(out);
        let completed = match self.completed.take() {
            Some(c) => c,
            None => self.completed_json(&end),
        };
        self.close(out);
        self.response_event("response.completed", &completed, out);
        Ok(())
    }

    fn fail(&mut self, message: &str, code: &str, out: &mut BytesMut) {
        self.start(out);
        let error = json!({"code": code, "message": message});
        let response = response_json(&self.head("failed", Some(error)), self.done.clone(), None);
        self.response_event("response.failed", &response, out);
    }

    fn record(
        &mut self,
        ending: Ending<'_>,
    ) -> Option<BoxFuture<'static, Result<(), RenderError>>> {
        self.keeper.as_ref()?;
        let (status, response, answer) = match ending {
            Ending::Completed(end) => {
                let completed = self.completed_json(end);
                self.completed = Some(completed.clone());
                ("completed", completed, Some(self.output.chat_message()))
            }
            Ending::Failed { message, code } => {
                let error = json!({"code": code, "message": message});
                let response =
                    response_json(&self.head("failed", Some(error)), self.done.clone(), None);
                ("failed", response, None)
            }
            Ending::Cancelled => {
                let mut output = self.done.clone();
                output.extend(self.open_item());
                (
                    "cancelled",
                    response_json(&self.head("cancelled", None), output, None),
                    None,
                )
            }
        };
        let keeper = self.keeper.as_mut()?;
        Some(keeper.finish(status, response, answer.as_ref()))
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
    fn chunks_become_typed_events_with_items_opened_and_closed() {
        let parsed =
            Arc::new(responses_wire::parse(br#"{"model":"lumina-fast","input":"hi"}"#).unwrap());
        let mut r = ResponsesStream::new(Ids::of("req_1"), 7, parsed, None);
        let mut out = BytesMut::new();
        for c in [
            json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}),
            json!({"choices": [{"index": 0, "delta": {"content": "Hello "}}]}),
            json!({"choices": [{"index": 0, "delta": {"content": "there"}}]}),
            json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_a", "type": "function", "function": {"name": "f", "arguments": ""}}]}}]}),
            json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{\"a\":"}}]}}]}),
            json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}}]}),
        ] {
            r.chunk(&chunk(c), &mut out).unwrap();
        }
        let all = events(&out);
        let kinds: Vec<&str> = all.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.delta",
            ]
        );
        let numbers: Vec<u64> = all
            .iter()
            .map(|(_, v)| v["sequence_number"].as_u64().unwrap())
            .collect();
        assert_eq!(numbers, (0..12).collect::<Vec<_>>());
        assert_eq!(all[0].1["response"]["id"], "resp_1");
        assert_eq!(all[0].1["response"]["status"], "in_progress");
        assert_eq!(all[6].1["text"], "Hello there");
        assert_eq!(all[9].1["item"]["call_id"], "call_a");
        assert_eq!(all[9].1["output_index"], 1);
        assert_eq!(r.output.calls[0].2, r#"{"a":1}"#);
        let mut end = BytesMut::new();
        r.fail("gone", "upstream_cut", &mut end);
        let failed = events(&end);
        assert_eq!(failed[0].0, "response.failed");
        assert_eq!(failed[0].1["response"]["error"]["code"], "upstream_cut");
        assert_eq!(
            failed[0].1["response"]["output"].as_array().unwrap().len(),
            1
        );
    }
}
