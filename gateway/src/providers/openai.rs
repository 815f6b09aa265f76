//! Any OpenAI-compatible Chat Completions server (OpenAI, vLLM, Ollama, Together, Groq…).
//!
//! The request goes out as the client's own JSON with `model` and `stream_options` rewritten;
//! the answer comes back byte for byte, read only far enough to learn its usage and length.

use std::borrow::Cow;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use serde::Deserialize;
use tokio::time::Instant;

use crate::providers::sse::events;
use crate::providers::{
    ChunkStream, Completion, ErrorClass, Provider, ProviderError, StreamChunk, Timeouts,
    UpstreamCall, http_client,
};
use crate::wire::{TokenUsage, UsageWire};

/// How long a stream's body is read past `[DONE]` to reuse its connection.
const DRAIN_AFTER_DONE: std::time::Duration = std::time::Duration::from_millis(50);

/// An OpenAI-compatible upstream.
pub struct OpenAi {
    url: reqwest::Url,
    auth: Option<HeaderValue>,
    client: reqwest::Client,
    timeouts: Timeouts,
}

impl OpenAi {
    /// An adapter for the server at `base_url` (ending in `/v1`), with an optional API key.
    pub fn new(
        base_url: &str,
        api_key: Option<String>,
        timeouts: Timeouts,
    ) -> Result<OpenAi, String> {
        let auth = match api_key {
            Some(key) => {
                let mut v = HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| {
                    "the API key holds characters not allowed in a header".to_string()
                })?;
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        Ok(OpenAi {
            url: reqwest::Url::parse(&format!(
                "{}/chat/completions",
                base_url.trim_end_matches('/')
            ))
            .map_err(|e| format!("base_url is not a URL: {e}"))?,
            auth,
            client: http_client(&timeouts)?,
            timeouts,
        })
    }

    async fn send(
        &self,
        call: &UpstreamCall<'_>,
        deadline: Instant,
    ) -> Result<reqwest::Response, ProviderError> {
        let mut request = self
            .client
            .post(self.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(call.request.upstream_body(call.upstream_model));
        if let Some(auth) = &self.auth {
            request = request.header(AUTHORIZATION, auth.clone());
        }
        let first_byte = (Instant::now() + self.timeouts.first_byte).min(deadline);
        let response = match tokio::time::timeout_at(first_byte, request.send()).await {
            Err(_) => {
                return Err(ProviderError::new(
                    ErrorClass::Timeout,
                    "no answer before the first-byte deadline",
                ));
            }
            Ok(Err(e)) => return Err(ProviderError::from_reqwest(&e)),
            Ok(Ok(r)) => r,
        };
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            let body = tokio::time::timeout_at(deadline, response.bytes())
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default();
            return Err(ProviderError::from_status(status, &body));
        }
        Ok(response)
    }
}

#[derive(Deserialize)]
struct CompletionProbe<'a> {
    #[serde(default, borrow)]
    choices: Vec<ChoiceProbe<'a>>,
    #[serde(default)]
    usage: Option<UsageWire>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct ChoiceProbe<'a> {
    #[serde(default, borrow)]
    message: Option<MessageProbe<'a>>,
    #[serde(default, borrow)]
    delta: Option<MessageProbe<'a>>,
}

#[derive(Deserialize)]
struct MessageProbe<'a> {
    #[serde(default, borrow)]
    content: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    reasoning_content: Option<Cow<'a, str>>,
    #[serde(default)]
    tool_calls: Option<Vec<ToolCallProbe<'a>>>,
}

#[derive(Deserialize)]
struct ToolCallProbe<'a> {
    #[serde(default, borrow)]
    function: Option<FunctionProbe<'a>>,
}

#[derive(Deserialize)]
struct FunctionProbe<'a> {
    #[serde(default, borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    arguments: Option<Cow<'a, str>>,
}

impl MessageProbe<'_> {
    fn chars(&self) -> usize {
        let calls: usize = self
            .tool_calls
            .iter()
            .flatten()
            .filter_map(|c| c.function.as_ref())
            .map(|f| {
                f.name.as_ref().map_or(0, |n| n.len()) + f.arguments.as_ref().map_or(0, |a| a.len())
            })
            .sum();
        self.content.as_ref().map_or(0, |c| c.len())
            + self.reasoning_content.as_ref().map_or(0, |c| c.len())
            + calls
    }
}

fn probe_chunk(data: Bytes) -> Result<StreamChunk, ProviderError> {
    let probe: CompletionProbe<'_> = serde_json::from_slice(&data)
        .map_err(|_| ProviderError::new(ErrorClass::Cut, "the upstream sent a malformed chunk"))?;
    if let Some(e) = probe.error {
        let message = e
            .get("message")
            .and_then(|m| m.as_str())
            .unwrap_or("unspecified");
        return Err(ProviderError::new(
            ErrorClass::Cut,
            format!("the upstream reported an error mid-stream: {message}"),
        ));
    }
    let content_chars = probe
        .choices
        .iter()
        .filter_map(|c| c.delta.as_ref())
        .map(MessageProbe::chars)
        .sum();
    let usage_only = probe.choices.is_empty() && probe.usage.is_some();
    let usage = probe.usage.map(TokenUsage::from);
    Ok(StreamChunk {
        data,
        content_chars,
        usage,
        usage_only,
    })
}

impl Provider for OpenAi {
    fn complete<'a>(
        &'a self,
        call: UpstreamCall<'a>,
    ) -> BoxFuture<'a, Result<Completion, ProviderError>> {
        async move {
            let deadline = Instant::now() + self.timeouts.total;
            let response = self.send(&call, deadline).await?;
            let body = match tokio::time::timeout_at(deadline, response.bytes()).await {
                Err(_) => {
                    return Err(ProviderError::new(
                        ErrorClass::Timeout,
                        "the answer did not finish before the deadline",
                    ));
                }
                Ok(Err(e)) => {
                    let mut err = ProviderError::from_reqwest(&e);
                    err.class = ErrorClass::Cut;
                    return Err(err);
                }
                Ok(Ok(b)) => b,
            };
            let probe: CompletionProbe<'_> = serde_json::from_slice(&body).map_err(|_| {
                ProviderError::new(ErrorClass::Cut, "the upstream answered with malformed JSON")
            })?;
            let completion_chars = probe
                .choices
                .iter()
                .filter_map(|c| c.message.as_ref())
                .map(MessageProbe::chars)
                .sum();
            let usage = probe.usage.map(TokenUsage::from);
            Ok(Completion {
                body,
                usage,
                completion_chars,
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
            let response = self.send(&call, deadline).await?;
            let events = Box::pin(events(response.bytes_stream(), self.timeouts, deadline));
            let chunks = futures::stream::try_unfold(events, |mut events| async move {
                match events.next().await {
                    None => Err(ProviderError::new(
                        ErrorClass::Cut,
                        "the upstream stream ended without [DONE]",
                    )),
                    Some(Err(e)) => Err(e),
                    Some(Ok(event)) if &event.data[..] == b"[DONE]" => {
                        // Read the body to its end so the connection goes back to the pool
                        // (bounded, in case an upstream keeps talking after [DONE]).
                        let drain = async { while events.next().await.is_some() {} };
                        let _ = tokio::time::timeout(DRAIN_AFTER_DONE, drain).await;
                        Ok(None)
                    }
                    Some(Ok(event)) => Ok(Some((probe_chunk(event.data)?, events))),
                }
            });
            Ok(Box::pin(chunks) as ChunkStream)
        }
        .boxed()
    }
}
