//! Anthropic's Messages API, translated both ways: system prompt, tools and tool results,
//! images, stop reasons and usage (cache tokens included) on the way out and back, and the
//! streaming events (`message_start`, `content_block_*`, `message_delta`, `message_stop`)
//! turned into OpenAI chunks.

use std::collections::HashMap;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use reqwest::header::{CONTENT_TYPE, HeaderValue};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::time::Instant;

use crate::providers::sse::{SseEvent, events};
use crate::providers::{
    AnthropicNative, BodyLimits, ChunkStream, Completion, CountCall, ErrorClass,
    MAX_REPORTED_TOKENS, Provider, ProviderError, ReportedUsage, StreamChunk, Timeouts,
    UpstreamCall, http_client, read_bounded, send,
};
use crate::wire::{
    AssistantMessage, ChatChunk, ChatCompletion, ChatRequest, Choice, ChunkChoice, Content, Delta,
    FunctionDelta, FunctionOut, Message, TokenUsage, ToolCallDelta, ToolCallOut, UsageOut,
};

/// The Messages API version Lumina speaks.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// The most bytes of a token count's answer read (it is one small object).
const MAX_COUNT_BODY: usize = 64 * 1024;

/// An Anthropic upstream.
pub struct Anthropic {
    url: reqwest::Url,
    count_url: reqwest::Url,
    key: HeaderValue,
    default_max_tokens: u32,
    client: reqwest::Client,
    timeouts: Timeouts,
    limits: BodyLimits,
}

#[derive(Serialize)]
struct MessagesRequest<'a> {
    model: &'a str,
    max_tokens: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    system: Option<String>,
    messages: Vec<AMessage>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<ATool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    stop_sequences: Vec<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thinking: Option<Value>,
    stream: bool,
}

#[derive(Serialize)]
struct AMessage {
    role: &'static str,
    content: Vec<Value>,
}

#[derive(Serialize)]
struct ATool<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    input_schema: Value,
}

fn text_of(content: &Option<Content<'_>>) -> String {
    let mut s = String::new();
    if let Some(c) = content {
        c.for_each_text(|t| s.push_str(t));
    }
    s
}

fn image_block(url: &str) -> Value {
    if let Some(rest) = url.strip_prefix("data:")
        && let Some((meta, data)) = rest.split_once(',')
    {
        let media_type = meta.trim_end_matches(";base64");
        return serde_json::json!({
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data}
        });
    }
    serde_json::json!({"type": "image", "source": {"type": "url", "url": url}})
}

fn user_blocks(content: &Option<Content<'_>>) -> Vec<Value> {
    match content {
        None => Vec::new(),
        Some(Content::Text(t)) => vec![serde_json::json!({"type": "text", "text": t.as_str()})],
        Some(Content::Parts(parts)) => parts
            .iter()
            .filter_map(|p| match p.kind.as_str() {
                "text" => p
                    .text
                    .as_ref()
                    .map(|t| serde_json::json!({"type": "text", "text": t.as_str()})),
                "image_url" => p.image_url.as_ref().map(|i| image_block(i.url.as_str())),
                _ => None,
            })
            .collect(),
    }
}

fn assistant_blocks(m: &Message<'_>) -> Vec<Value> {
    let mut blocks = Vec::new();
    let text = text_of(&m.content);
    if !text.is_empty() {
        blocks.push(serde_json::json!({"type": "text", "text": text}));
    }
    for call in &m.tool_calls {
        let input: Value = call
            .function
            .arguments
            .as_ref()
            .and_then(|a| serde_json::from_str(a.as_str()).ok())
            .unwrap_or_else(|| serde_json::json!({}));
        blocks.push(serde_json::json!({
            "type": "tool_use", "id": call.id.as_str(), "name": call.function.name.as_str(), "input": input
        }));
    }
    blocks
}

/// Translates an OpenAI request into a Messages API request; a Messages client's `thinking`
/// and the thinking blocks of its earlier turns (`native`) go along unchanged.
fn translate_request<'a>(
    request: &'a ChatRequest<'a>,
    model: &'a str,
    default_max_tokens: u32,
    stream: bool,
    native: Option<&AnthropicNative>,
) -> MessagesRequest<'a> {
    let mut system = Vec::new();
    let mut messages: Vec<AMessage> = Vec::new();
    for (i, m) in request.messages.iter().enumerate() {
        let (role, blocks) = match m.role.as_str() {
            "system" | "developer" => {
                system.push(text_of(&m.content));
                continue;
            }
            "assistant" => {
                let mut blocks = native.map_or_else(Vec::new, |n| n.thinking_of(i).to_vec());
                blocks.extend(assistant_blocks(m));
                ("assistant", blocks)
            }
            "tool" | "function" => (
                "user",
                vec![serde_json::json!({
                    "type": "tool_result",
                    "tool_use_id": m.tool_call_id.as_ref().map_or("", |t| t.as_str()),
                    "content": text_of(&m.content),
                })],
            ),
            _ => ("user", user_blocks(&m.content)),
        };
        if blocks.is_empty() {
            continue;
        }
        match messages.last_mut() {
            Some(last) if last.role == role => last.content.extend(blocks),
            _ => messages.push(AMessage {
                role,
                content: blocks,
            }),
        }
    }
    let tools = request
        .tools
        .iter()
        .map(|t| ATool {
            name: t.name.as_str(),
            description: t.description.as_ref().map(|d| d.as_str()),
            input_schema: t
                .parameters
                .and_then(|p| serde_json::from_str(p.get()).ok())
                .unwrap_or_else(|| serde_json::json!({"type": "object", "properties": {}})),
        })
        .collect();
    let parallel = request
        .fields
        .get("parallel_tool_calls")
        .is_none_or(|v| v.get() != "false");
    let tool_choice = request.tool_choice.and_then(|raw| {
        let v: Value = serde_json::from_str(raw.get()).ok()?;
        let mut choice = match &v {
            Value::String(s) if s == "auto" => serde_json::json!({"type": "auto"}),
            Value::String(s) if s == "none" => serde_json::json!({"type": "none"}),
            Value::String(s) if s == "required" => serde_json::json!({"type": "any"}),
            Value::Object(_) => {
                let name = v.pointer("/function/name")?.as_str()?;
                serde_json::json!({"type": "tool", "name": name})
            }
            _ => return None,
        };
        if !parallel && choice["type"] != "none" {
            choice["disable_parallel_tool_use"] = Value::Bool(true);
        }
        Some(choice)
    });
    MessagesRequest {
        model,
        max_tokens: request.max_tokens.unwrap_or(u64::from(default_max_tokens)),
        system: (!system.is_empty()).then(|| system.join("\n\n")),
        messages,
        tools,
        tool_choice,
        temperature: request.temperature,
        top_p: request.top_p,
        stop_sequences: request.stop.iter().map(|s| s.as_str()).collect(),
        thinking: native.and_then(|n| n.thinking.clone()),
        stream,
    }
}

/// OpenAI's finish reason for an Anthropic stop reason.
pub fn finish_reason(stop_reason: Option<&str>) -> &'static str {
    match stop_reason {
        Some("max_tokens") => "length",
        Some("tool_use") => "tool_calls",
        Some("refusal") => "content_filter",
        _ => "stop",
    }
}

/// Reads Anthropic's `usage`: `input_tokens` and `output_tokens` are required non-negative
/// integers, the cache counts optional; every count and their sum must be in range.
fn anthropic_usage(usage: Option<&Value>) -> ReportedUsage {
    let Some(usage) = usage.filter(|u| !u.is_null()) else {
        return ReportedUsage::Missing;
    };
    let Some(fields) = usage.as_object() else {
        return ReportedUsage::Unrecognized;
    };
    let count = |name: &str, required: bool| -> Result<u64, ReportedUsage> {
        match fields.get(name) {
            None | Some(Value::Null) if !required => Ok(0),
            Some(Value::Number(n)) => match n.as_u64() {
                Some(n) if n <= MAX_REPORTED_TOKENS => Ok(n),
                Some(_) => Err(ReportedUsage::OutOfRange),
                None if n.as_f64().is_some_and(|f| f.fract() == 0.0 && f > 0.0) => {
                    Err(ReportedUsage::OutOfRange)
                }
                None => Err(ReportedUsage::Unrecognized),
            },
            _ => Err(ReportedUsage::Unrecognized),
        }
    };
    let read = || -> Result<TokenUsage, ReportedUsage> {
        let input = count("input_tokens", true)?;
        let output = count("output_tokens", true)?;
        let cache_read = count("cache_read_input_tokens", false)?;
        let cache_creation = count("cache_creation_input_tokens", false)?;
        Ok(TokenUsage {
            prompt_tokens: input + cache_read + cache_creation,
            completion_tokens: output,
            cached_tokens: cache_read,
            reasoning_tokens: 0,
        })
    };
    match read() {
        Ok(u) => ReportedUsage::Counted(u),
        Err(report) => report,
    }
}

#[derive(Deserialize)]
struct MessagesResponse {
    #[serde(rename = "type")]
    kind: String,
    id: String,
    model: String,
    content: Vec<Value>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: Option<Value>,
}

fn completion_from(response: MessagesResponse) -> (ChatCompletion, ReportedUsage) {
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    let mut reasoning = String::new();
    let mut thinking_blocks = Vec::new();
    for block in &response.content {
        match block["type"].as_str() {
            Some("text") => text.push_str(block["text"].as_str().unwrap_or("")),
            Some("thinking") => {
                reasoning.push_str(block["thinking"].as_str().unwrap_or(""));
                thinking_blocks.push(block.clone());
            }
            Some("redacted_thinking") => thinking_blocks.push(block.clone()),
            Some("tool_use") => tool_calls.push(ToolCallOut {
                id: block["id"].as_str().unwrap_or("").to_string(),
                kind: "function",
                function: FunctionOut {
                    name: block["name"].as_str().unwrap_or("").to_string(),
                    arguments: block
                        .get("input")
                        .map_or_else(|| "{}".to_string(), Value::to_string),
                },
            }),
            _ => {}
        }
    }
    let usage = anthropic_usage(response.usage.as_ref());
    let completion = ChatCompletion {
        id: format!("chatcmpl-{}", response.id),
        object: "chat.completion",
        created: lumina_schemas::now_micros() / 1_000_000,
        model: response.model,
        choices: vec![Choice {
            index: 0,
            message: AssistantMessage {
                role: "assistant",
                content: (!text.is_empty() || tool_calls.is_empty()).then_some(text),
                refusal: None,
                tool_calls,
                reasoning_content: (!reasoning.is_empty()).then_some(reasoning),
                thinking_blocks,
            },
            logprobs: None,
            finish_reason: finish_reason(response.stop_reason.as_deref()).into(),
        }],
        usage: match usage {
            ReportedUsage::Counted(u) => Some(UsageOut::from(u)),
            _ => None,
        },
        service_tier: "default",
        system_fingerprint: None,
    };
    (completion, usage)
}

impl Anthropic {
    /// An adapter for the Messages API at `base_url` (ending in `/v1`).
    pub fn new(
        base_url: &str,
        api_key: String,
        default_max_tokens: u32,
        timeouts: Timeouts,
        limits: BodyLimits,
    ) -> Result<Anthropic, String> {
        let mut key = HeaderValue::from_str(&api_key)
            .map_err(|_| "the API key holds characters not allowed in a header".to_string())?;
        key.set_sensitive(true);
        let endpoint = |path: &str| {
            reqwest::Url::parse(&format!("{}/{path}", base_url.trim_end_matches('/')))
                .map_err(|e| format!("base_url is not a URL: {e}"))
        };
        Ok(Anthropic {
            url: endpoint("messages")?,
            count_url: endpoint("messages/count_tokens")?,
            key,
            default_max_tokens,
            client: http_client(&timeouts)?,
            timeouts,
            limits,
        })
    }

    async fn send(
        &self,
        call: &UpstreamCall<'_>,
        stream: bool,
        deadline: Instant,
    ) -> Result<reqwest::Response, ProviderError> {
        let body = translate_request(
            call.request,
            call.upstream_model,
            self.default_max_tokens,
            stream,
            call.anthropic,
        );
        let body = serde_json::to_vec(&body)
            .map_err(|e| ProviderError::new(ErrorClass::ClientError, e.to_string()))?;
        self.post(
            &self.url,
            body,
            call.anthropic,
            deadline,
            call.traceparent.clone(),
        )
        .await
    }

    /// POSTs `body` to `url` with the key and the client's protocol headers.
    async fn post(
        &self,
        url: &reqwest::Url,
        body: Vec<u8>,
        client: Option<&AnthropicNative>,
        deadline: Instant,
        traceparent: Option<HeaderValue>,
    ) -> Result<reqwest::Response, ProviderError> {
        let version = client
            .and_then(|h| h.version.clone())
            .unwrap_or_else(|| HeaderValue::from_static(ANTHROPIC_VERSION));
        let mut request = self
            .client
            .post(url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header("x-api-key", self.key.clone())
            .header("anthropic-version", version)
            .body(body);
        if let Some(beta) = client.and_then(|h| h.beta.clone()) {
            request = request.header("anthropic-beta", beta);
        }
        send(
            request,
            &self.timeouts,
            deadline,
            Some(&self.key),
            traceparent,
        )
        .await
    }
}

/// Translation state of one stream.
struct StreamState {
    id: String,
    model: String,
    created: i64,
    /// Anthropic content-block index → OpenAI tool-call index.
    tools: HashMap<u64, u32>,
    /// Usage members as `message_start` and `message_delta` reported them, merged.
    usage: serde_json::Map<String, Value>,
    finish: Option<&'static str>,
}

impl StreamState {
    fn chunk(
        &self,
        delta: Option<Delta>,
        finish: Option<&str>,
        usage: Option<TokenUsage>,
    ) -> Result<Bytes, ProviderError> {
        let choices = match delta {
            Some(delta) => vec![ChunkChoice {
                index: 0,
                delta,
                logprobs: None,
                finish_reason: finish.map(str::to_string),
            }],
            None => Vec::new(),
        };
        let chunk = ChatChunk {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            choices,
            usage: usage.map(UsageOut::from),
            service_tier: "default",
            system_fingerprint: None,
        };
        serde_json::to_vec(&chunk)
            .map(Bytes::from)
            .map_err(|e| ProviderError::malformed(format!("a chunk did not serialise: {e}")))
    }

    fn piece(data: Bytes, text: String) -> StreamChunk {
        StreamChunk {
            data,
            text,
            usage: None,
            usage_only: false,
        }
    }

    /// The OpenAI chunk an Anthropic event becomes; `Ok(None)` for events that make none, and
    /// the final usage chunk (with `done`) for `message_stop`.
    fn translate(
        &mut self,
        event: &SseEvent,
    ) -> Result<(Option<StreamChunk>, bool), ProviderError> {
        let v: Value = serde_json::from_slice(&event.data).map_err(|_| {
            ProviderError::new(ErrorClass::Cut, "the upstream sent a malformed event")
        })?;
        let kind = v["type"].as_str().or(event.event.as_deref()).unwrap_or("");
        Ok(match kind {
            "message_start" => {
                let m = &v["message"];
                if let Some(id) = m["id"].as_str() {
                    self.id = format!("chatcmpl-{id}");
                }
                if let Some(model) = m["model"].as_str() {
                    self.model = model.to_string();
                }
                if let Some(u) = m["usage"].as_object() {
                    self.usage.extend(u.clone());
                }
                let delta = Delta {
                    role: Some("assistant"),
                    content: Some(String::new()),
                    ..Delta::default()
                };
                (
                    Some(Self::piece(
                        self.chunk(Some(delta), None, None)?,
                        String::new(),
                    )),
                    false,
                )
            }
            "content_block_start" => {
                let block = &v["content_block"];
                if block["type"] == "tool_use" {
                    let index = v["index"].as_u64().unwrap_or(0);
                    let tool_index = self.tools.len() as u32;
                    self.tools.insert(index, tool_index);
                    let name = block["name"].as_str().unwrap_or("").to_string();
                    let delta = Delta {
                        tool_calls: vec![ToolCallDelta {
                            index: tool_index,
                            id: Some(block["id"].as_str().unwrap_or("").to_string()),
                            kind: Some("function"),
                            function: FunctionDelta {
                                name: Some(name.clone()),
                                arguments: String::new(),
                            },
                        }],
                        ..Delta::default()
                    };
                    (
                        Some(Self::piece(self.chunk(Some(delta), None, None)?, name)),
                        false,
                    )
                } else if block["type"] == "redacted_thinking" {
                    let delta = Delta {
                        thinking_blocks: vec![block.clone()],
                        ..Delta::default()
                    };
                    (
                        Some(Self::piece(
                            self.chunk(Some(delta), None, None)?,
                            String::new(),
                        )),
                        false,
                    )
                } else {
                    (None, false)
                }
            }
            "content_block_delta" => {
                let d = &v["delta"];
                match d["type"].as_str() {
                    Some("text_delta") => {
                        let text = d["text"].as_str().unwrap_or("").to_string();
                        let delta = Delta {
                            content: Some(text.clone()),
                            ..Delta::default()
                        };
                        (
                            Some(Self::piece(self.chunk(Some(delta), None, None)?, text)),
                            false,
                        )
                    }
                    Some("thinking_delta") => {
                        let text = d["thinking"].as_str().unwrap_or("").to_string();
                        let delta = Delta {
                            reasoning_content: Some(text.clone()),
                            ..Delta::default()
                        };
                        (
                            Some(Self::piece(self.chunk(Some(delta), None, None)?, text)),
                            false,
                        )
                    }
                    Some("signature_delta") => {
                        let signature = d["signature"].as_str().unwrap_or("");
                        let delta = Delta {
                            thinking_blocks: vec![serde_json::json!({
                                "type": "thinking", "thinking": "", "signature": signature})],
                            ..Delta::default()
                        };
                        (
                            Some(Self::piece(
                                self.chunk(Some(delta), None, None)?,
                                String::new(),
                            )),
                            false,
                        )
                    }
                    Some("input_json_delta") => {
                        let index = v["index"].as_u64().unwrap_or(0);
                        let tool_index = self.tools.get(&index).copied().unwrap_or(0);
                        let partial = d["partial_json"].as_str().unwrap_or("").to_string();
                        let text = partial.clone();
                        let delta = Delta {
                            tool_calls: vec![ToolCallDelta {
                                index: tool_index,
                                id: None,
                                kind: None,
                                function: FunctionDelta {
                                    name: None,
                                    arguments: partial,
                                },
                            }],
                            ..Delta::default()
                        };
                        (
                            Some(Self::piece(self.chunk(Some(delta), None, None)?, text)),
                            false,
                        )
                    }
                    _ => (None, false),
                }
            }
            "message_delta" => {
                self.finish = Some(finish_reason(v["delta"]["stop_reason"].as_str()));
                if let Some(u) = v["usage"].as_object() {
                    self.usage.extend(
                        u.iter()
                            .filter(|(_, v)| !v.is_null())
                            .map(|(k, v)| (k.clone(), v.clone())),
                    );
                }
                let finish = self.finish;
                (
                    Some(Self::piece(
                        self.chunk(Some(Delta::default()), finish, None)?,
                        String::new(),
                    )),
                    false,
                )
            }
            "message_stop" => {
                let usage = anthropic_usage(Some(&Value::Object(std::mem::take(&mut self.usage))));
                let counted = match usage {
                    ReportedUsage::Counted(u) => Some(u),
                    _ => None,
                };
                let chunk = StreamChunk {
                    data: self.chunk(None, None, counted)?,
                    text: String::new(),
                    usage: Some(usage),
                    usage_only: true,
                };
                (Some(chunk), true)
            }
            "error" => {
                let kind = v["error"]["type"].as_str().unwrap_or("error");
                let message = v["error"]["message"].as_str().unwrap_or("");
                return Err(ProviderError::new(
                    ErrorClass::Cut,
                    format!("the upstream reported {kind} mid-stream: {message}"),
                ));
            }
            _ => (None, false),
        })
    }
}

impl Provider for Anthropic {
    fn count_tokens<'a>(
        &'a self,
        call: CountCall<'a>,
    ) -> BoxFuture<'a, Result<Option<u64>, ProviderError>> {
        async move {
            let deadline = Instant::now() + self.timeouts.total;
            let fields = crate::wire::parse_object(call.body)
                .map_err(|e| ProviderError::new(ErrorClass::ClientError, e.message))?;
            let body = crate::wire::upstream_object(&fields, call.upstream_model, false);
            let response = self
                .post(&self.count_url, body, Some(call.anthropic), deadline, None)
                .await?;
            let body = read_bounded(response, MAX_COUNT_BODY, deadline).await?;
            #[derive(Deserialize)]
            struct Counted {
                input_tokens: u64,
            }
            match serde_json::from_slice::<Counted>(&body) {
                Ok(c) if c.input_tokens <= MAX_REPORTED_TOKENS => Ok(Some(c.input_tokens)),
                _ => Err(ProviderError::malformed(
                    "the upstream's token count is not a count in range",
                )),
            }
        }
        .boxed()
    }

    fn complete<'a>(
        &'a self,
        call: UpstreamCall<'a>,
    ) -> BoxFuture<'a, Result<Completion, ProviderError>> {
        async move {
            let deadline = Instant::now() + self.timeouts.total;
            let response = self.send(&call, false, deadline).await?;
            let body = read_bounded(response, self.limits.response_bytes, deadline).await?;
            let parsed: MessagesResponse = serde_json::from_slice(&body).map_err(|_| {
                ProviderError::malformed("the upstream answered with something not a message")
            })?;
            if parsed.kind != "message" {
                return Err(ProviderError::malformed(format!(
                    "the upstream answered with a '{}' instead of a message",
                    parsed.kind
                )));
            }
            let (completion, usage) = completion_from(parsed);
            if usage == ReportedUsage::OutOfRange {
                return Err(ProviderError::malformed(
                    "the upstream reported a token count beyond any sane bound",
                ));
            }
            let body = serde_json::to_vec(&completion)
                .map_err(|e| ProviderError::new(ErrorClass::ServerError, e.to_string()))?;
            Ok(Completion {
                body: Bytes::from(body),
                usage,
            })
        }
        .boxed()
    }

    fn stream<'a>(
        &'a self,
        call: UpstreamCall<'a>,
    ) -> BoxFuture<'a, Result<ChunkStream, ProviderError>> {
        async move {
            let deadline = Instant::now() + self.timeouts.total;
            let response = self.send(&call, true, deadline).await?;
            let state = StreamState {
                id: format!("chatcmpl-{}", call.request_id.trim_start_matches("req_")),
                model: call.upstream_model.to_string(),
                created: lumina_schemas::now_micros() / 1_000_000,
                tools: HashMap::new(),
                usage: serde_json::Map::new(),
                finish: None,
            };
            let events = Box::pin(events(
                response.bytes_stream(),
                self.timeouts,
                deadline,
                self.limits.stream_bytes,
            ));
            let chunks = futures::stream::try_unfold(
                (events, state, false),
                |(mut events, mut state, done)| async move {
                    if done {
                        return Ok(None);
                    }
                    loop {
                        let Some(event) = events.next().await else {
                            return Err(ProviderError::new(
                                ErrorClass::Cut,
                                "the upstream stream ended before message_stop",
                            ));
                        };
                        let (chunk, done) = state.translate(&event?)?;
                        if let Some(chunk) = chunk {
                            return Ok(Some((chunk, (events, state, done))));
                        }
                    }
                },
            );
            Ok(Box::pin(chunks) as ChunkStream)
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn translates_system_tools_tool_results_and_images() {
        let body = br#"{"model":"lumina-fast","max_tokens":100,"messages":[
            {"role":"system","content":"be kind"},
            {"role":"user","content":[{"type":"text","text":"what is this?"},{"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}}]},
            {"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"lookup","arguments":"{\"q\":\"x\"}"}}]},
            {"role":"tool","tool_call_id":"call_1","content":"42"},
            {"role":"tool","tool_call_id":"call_2","content":"43"}],
            "tools":[{"type":"function","function":{"name":"lookup","description":"find","parameters":{"type":"object"}}}],
            "tool_choice":{"type":"function","function":{"name":"lookup"}},"parallel_tool_calls":false,"stop":["END"]}"#;
        let request = ChatRequest::parse(body).unwrap();
        let out = serde_json::to_value(translate_request(&request, "claude-x", 4096, false, None))
            .unwrap();
        assert_eq!(out["system"], "be kind");
        assert_eq!(out["max_tokens"], 100);
        assert_eq!(
            out["messages"][0]["content"][1]["source"]["media_type"],
            "image/png"
        );
        assert_eq!(out["messages"][1]["content"][0]["type"], "tool_use");
        assert_eq!(out["messages"][1]["content"][0]["input"]["q"], "x");
        // Both tool results merge into one user message.
        assert_eq!(out["messages"][2]["role"], "user");
        assert_eq!(out["messages"][2]["content"].as_array().unwrap().len(), 2);
        assert_eq!(out["messages"][2]["content"][1]["tool_use_id"], "call_2");
        assert_eq!(out["tools"][0]["input_schema"]["type"], "object");
        assert_eq!(out["tool_choice"]["type"], "tool");
        assert_eq!(out["tool_choice"]["disable_parallel_tool_use"], true);
        assert_eq!(out["stop_sequences"][0], "END");
    }

    #[test]
    fn thinking_goes_out_and_comes_back_unchanged() {
        let body = br#"{"model":"m","max_tokens":5000,"messages":[
            {"role":"user","content":"q"},
            {"role":"assistant","content":null,"tool_calls":[{"id":"toolu_1","type":"function","function":{"name":"f","arguments":"{}"}}]},
            {"role":"tool","tool_call_id":"toolu_1","content":"r"}]}"#;
        let request = ChatRequest::parse(body).unwrap();
        let block = serde_json::json!({"type": "thinking", "thinking": "hmm", "signature": "c2ln"});
        let native = AnthropicNative {
            thinking: Some(serde_json::json!({"type": "enabled", "budget_tokens": 2048})),
            thinking_blocks: vec![(1, vec![block.clone()])],
            ..AnthropicNative::default()
        };
        let out = serde_json::to_value(translate_request(
            &request,
            "claude-x",
            4096,
            false,
            Some(&native),
        ))
        .unwrap();
        assert_eq!(out["thinking"]["budget_tokens"], 2048);
        assert_eq!(out["messages"][1]["content"][0], block);
        assert_eq!(out["messages"][1]["content"][1]["type"], "tool_use");

        let response: MessagesResponse = serde_json::from_str(r#"{"id":"msg_1","type":"message","model":"claude-x",
            "content":[{"type":"thinking","thinking":"let me see","signature":"c2ln"},{"type":"redacted_thinking","data":"ZGF0YQ=="},{"type":"text","text":"done"}],
            "stop_reason":"end_turn","usage":{"input_tokens":3,"output_tokens":4}}"#).unwrap();
        let (completion, _) = completion_from(response);
        let message = serde_json::to_value(&completion.choices[0].message).unwrap();
        assert_eq!(message["reasoning_content"], "let me see");
        assert_eq!(message["thinking_blocks"][0]["signature"], "c2ln");
        assert_eq!(message["thinking_blocks"][1]["data"], "ZGF0YQ==");
        assert_eq!(message["content"], "done");

        let mut state = StreamState {
            id: "chatcmpl-1".into(),
            model: "claude-x".into(),
            created: 0,
            tools: HashMap::new(),
            usage: serde_json::Map::new(),
            finish: None,
        };
        let mut delta_of = |data: &str| {
            let event = SseEvent {
                event: None,
                data: Bytes::from(data.to_string()),
            };
            let (chunk, _) = state.translate(&event).unwrap();
            let v: Value = serde_json::from_slice(&chunk.unwrap().data).unwrap();
            v["choices"][0]["delta"].clone()
        };
        let d = delta_of(
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"step"}}"#,
        );
        assert_eq!(d["reasoning_content"], "step");
        let d = delta_of(
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"c2ln"}}"#,
        );
        assert_eq!(d["thinking_blocks"][0]["signature"], "c2ln");
        let d = delta_of(
            r#"{"type":"content_block_start","index":1,"content_block":{"type":"redacted_thinking","data":"ZGF0YQ=="}}"#,
        );
        assert_eq!(d["thinking_blocks"][0]["type"], "redacted_thinking");
    }

    #[test]
    fn translates_a_response_with_cache_usage_and_tool_use() {
        let response: MessagesResponse = serde_json::from_str(r#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-x",
            "content":[{"type":"text","text":"Let me look."},{"type":"tool_use","id":"toolu_1","name":"lookup","input":{"q":"x"}}],
            "stop_reason":"tool_use","usage":{"input_tokens":10,"output_tokens":7,"cache_creation_input_tokens":3,"cache_read_input_tokens":5}}"#).unwrap();
        let (c, usage) = completion_from(response);
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(
            v["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
            "{\"q\":\"x\"}"
        );
        assert_eq!(
            usage,
            ReportedUsage::Counted(TokenUsage {
                prompt_tokens: 18,
                completion_tokens: 7,
                cached_tokens: 5,
                reasoning_tokens: 0
            })
        );
        assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 5);
    }

    #[test]
    fn usage_out_of_range_or_in_another_shape_is_not_counted() {
        let of = |text: &str| anthropic_usage(Some(&serde_json::from_str(text).unwrap()));
        assert_eq!(
            of(r#"{"input_tokens":1,"output_tokens":10000000000000000}"#),
            ReportedUsage::OutOfRange
        );
        assert_eq!(
            of(r#"{"input_tokens":1,"output_tokens":1e30}"#),
            ReportedUsage::OutOfRange
        );
        assert_eq!(of(r#"{"output_tokens":5}"#), ReportedUsage::Unrecognized);
        assert_eq!(of("[1, 2]"), ReportedUsage::Unrecognized);
        assert_eq!(
            of(r#"{"input_tokens":-1,"output_tokens":5}"#),
            ReportedUsage::Unrecognized
        );
        assert_eq!(anthropic_usage(None), ReportedUsage::Missing);
    }
}
