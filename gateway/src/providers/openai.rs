//! Any OpenAI-compatible Chat Completions server (OpenAI, vLLM, Ollama, Together, Groq…), and
//! its `/embeddings`.
//!
//! The request goes out as the client's own JSON with `model` and `stream_options` rewritten;
//! the answer comes back byte for byte, read only far enough to learn its usage and length.

use std::borrow::Cow;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::time::Instant;

use crate::embeddings;
use crate::providers::sse::events;
use crate::providers::{
    BodyLimits, ChunkStream, Completion, EmbedCall, Embedded, ErrorClass, Provider, ProviderError,
    ReportedUsage, StreamChunk, Timeouts, UpstreamCall, http_client, openai_usage, read_bounded,
    send,
};

/// How long a stream's body is read past `[DONE]` to reuse its connection.
const DRAIN_AFTER_DONE: std::time::Duration = std::time::Duration::from_millis(50);

/// An OpenAI-compatible upstream.
pub struct OpenAi {
    url: reqwest::Url,
    embeddings_url: reqwest::Url,
    auth: Option<HeaderValue>,
    client: reqwest::Client,
    timeouts: Timeouts,
    limits: BodyLimits,
}

impl OpenAi {
    /// An adapter for the server at `base_url` (ending in `/v1`), with an optional API key.
    pub fn new(
        base_url: &str,
        api_key: Option<String>,
        timeouts: Timeouts,
        limits: BodyLimits,
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
        let endpoint = |path: &str| {
            reqwest::Url::parse(&format!("{}/{path}", base_url.trim_end_matches('/')))
                .map_err(|e| format!("base_url is not a URL: {e}"))
        };
        Ok(OpenAi {
            url: endpoint("chat/completions")?,
            embeddings_url: endpoint("embeddings")?,
            auth,
            client: http_client(&timeouts)?,
            timeouts,
            limits,
        })
    }

    async fn send(
        &self,
        url: &reqwest::Url,
        body: Vec<u8>,
        deadline: Instant,
        traceparent: Option<HeaderValue>,
    ) -> Result<reqwest::Response, ProviderError> {
        let mut request = self
            .client
            .post(url.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(auth) = &self.auth {
            request = request.header(AUTHORIZATION, auth.clone());
        }
        send(
            request,
            &self.timeouts,
            deadline,
            self.auth.as_ref(),
            traceparent,
        )
        .await
    }
}

/// The members of a completion or chunk that Lumina checks and meters.
#[derive(Deserialize)]
struct CompletionProbe<'a> {
    #[serde(default, borrow)]
    choices: Option<Vec<ChoiceProbe<'a>>>,
    #[serde(default, borrow)]
    usage: Option<&'a RawValue>,
    #[serde(default, borrow)]
    error: Option<&'a RawValue>,
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
    /// Appends the generated text (content, reasoning, tool names and arguments) to `out`.
    fn push_text(&self, out: &mut String) {
        for text in [&self.content, &self.reasoning_content]
            .into_iter()
            .flatten()
        {
            out.push_str(text);
        }
        for f in self
            .tool_calls
            .iter()
            .flatten()
            .filter_map(|c| c.function.as_ref())
        {
            for text in [&f.name, &f.arguments].into_iter().flatten() {
                out.push_str(text);
            }
        }
    }
}

/// Parses `data` as a JSON object (what every completion and chunk is), or says what it is
/// instead: an upstream that answers 200 with an error, an array or nothing useful is
/// failing, not answering.
fn probe<'a>(data: &'a [u8], what: &str) -> Result<CompletionProbe<'a>, ProviderError> {
    let first = data.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(ProviderError::malformed(format!(
            "the upstream sent a {what} that is not a JSON object"
        )));
    }
    let probe: CompletionProbe<'_> = serde_json::from_slice(data)
        .map_err(|_| ProviderError::malformed(format!("the upstream sent a malformed {what}")))?;
    if probe.error.is_some_and(|e| e.get() != "null") {
        return Err(ProviderError::malformed(format!(
            "the upstream sent an error instead of a {what}"
        )));
    }
    if probe.choices.is_none() {
        return Err(ProviderError::malformed(format!(
            "the upstream sent a {what} without choices"
        )));
    }
    Ok(probe)
}

fn probe_chunk(data: Bytes) -> Result<StreamChunk, ProviderError> {
    let probe = probe(&data, "chunk")?;
    let choices = probe.choices.as_deref().unwrap_or_default();
    let mut text = String::new();
    for delta in choices.iter().filter_map(|c| c.delta.as_ref()) {
        delta.push_text(&mut text);
    }
    let usage = probe
        .usage
        .filter(|u| u.get() != "null")
        .map(|u| openai_usage(Some(u)));
    let usage_only = choices.is_empty() && usage.is_some();
    Ok(StreamChunk {
        data,
        text,
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
            let body = call.request.upstream_body(call.upstream_model);
            let response = self
                .send(&self.url, body, deadline, call.traceparent.clone())
                .await?;
            let body = read_bounded(response, self.limits.response_bytes, deadline).await?;
            let probe = probe(&body, "completion")?;
            let choices = probe.choices.as_deref().unwrap_or_default();
            if choices.is_empty() || choices.iter().any(|c| c.message.is_none()) {
                return Err(ProviderError::malformed(
                    "the upstream sent a completion without a message",
                ));
            }
            let usage = openai_usage(probe.usage);
            if usage == ReportedUsage::OutOfRange {
                return Err(ProviderError::malformed(
                    "the upstream reported a token count beyond any sane bound",
                ));
            }
            Ok(Completion { body, usage })
        }
        .boxed()
    }

    fn stream<'a>(
        &'a self,
        call: UpstreamCall<'a>,
    ) -> BoxFuture<'a, Result<ChunkStream, ProviderError>> {
        async move {
            let deadline = Instant::now() + self.timeouts.total;
            let body = call.request.upstream_body(call.upstream_model);
            let response = self
                .send(&self.url, body, deadline, call.traceparent.clone())
                .await?;
            let events = Box::pin(events(
                response.bytes_stream(),
                self.timeouts,
                deadline,
                self.limits.stream_bytes,
            ));
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
                    Some(Ok(event)) if event.event.as_deref() == Some("error") => Err(
                        ProviderError::malformed("the upstream reported an error mid-stream"),
                    ),
                    Some(Ok(event)) => Ok(Some((probe_chunk(event.data)?, events))),
                }
            });
            Ok(Box::pin(chunks) as ChunkStream)
        }
        .boxed()
    }

    fn embed<'a>(&'a self, call: EmbedCall<'a>) -> BoxFuture<'a, Result<Embedded, ProviderError>> {
        async move {
            let deadline = Instant::now() + self.timeouts.total;
            let body = call.request.upstream_body(call.upstream_model);
            let response = self
                .send(
                    &self.embeddings_url,
                    body,
                    deadline,
                    call.traceparent.clone(),
                )
                .await?;
            let body = read_bounded(response, self.limits.response_bytes, deadline).await?;
            let usage = embeddings::check_answer(&body, call.request)?;
            Ok(Embedded { body, usage })
        }
        .boxed()
    }
}
