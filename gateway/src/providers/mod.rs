//! Upstream providers behind one trait. Each adapter turns a [`ChatRequest`] into its
//! upstream's call and the answer back into OpenAI-shaped JSON: a whole completion, or a stream
//! of chunks whose usage the gateway reads from the same stream the client sees.
//!
//! Adapters classify every failure ([`ErrorClass`]) so the gateway can decide to fall back;
//! they never put an upstream secret into an error message.

pub mod anthropic;
pub mod breaker;
pub mod openai;
pub mod simulated;
pub mod sse;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use futures::future::BoxFuture;

use crate::config::{ProviderConfig, ProviderKind};
use crate::embeddings::EmbeddingsRequest;
use crate::wire::{ChatRequest, TokenUsage};

/// Why an attempt failed, as far as fallback and breakers care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Could not connect (refused, DNS, TLS).
    Connect,
    /// A deadline passed (connect, first byte, idle, total).
    Timeout,
    /// The upstream said 429.
    RateLimited,
    /// The upstream said 5xx.
    ServerError,
    /// The upstream said it is overloaded (503, 529).
    Overload,
    /// The upstream refused the request itself (400, 413, 422…): the client's fault.
    ClientError,
    /// The upstream refused the deployment (401, 402, 403, 404, 405) or redirected it (3xx):
    /// its key, account, model name or URL is wrong. Never the client's fault.
    Misconfigured,
    /// A success status whose body is not a completion (or a stream of chunks), a count
    /// beyond any sane bound, or a body past its size bound.
    Malformed,
    /// The answer broke off.
    Cut,
    /// The gateway stopped waiting (a Fusion member past its deadline, a panel that could no
    /// longer reach its quorum).
    Cancelled,
}

impl ErrorClass {
    /// Name recorded in events and error messages.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Connect => "connect",
            ErrorClass::Timeout => "timeout",
            ErrorClass::RateLimited => "rate_limited",
            ErrorClass::ServerError => "server_error",
            ErrorClass::Overload => "overload",
            ErrorClass::ClientError => "client_error",
            ErrorClass::Misconfigured => "misconfigured",
            ErrorClass::Malformed => "malformed",
            ErrorClass::Cut => "cut",
            ErrorClass::Cancelled => "cancelled",
        }
    }

    /// Whether another deployment may succeed where this one failed.
    pub fn falls_back(self) -> bool {
        self != ErrorClass::ClientError
    }

    /// The class of an upstream HTTP status that is not a success.
    pub fn of_status(status: u16) -> ErrorClass {
        match status {
            300..=399 | 401..=405 => ErrorClass::Misconfigured,
            408 => ErrorClass::Timeout,
            429 => ErrorClass::RateLimited,
            503 | 529 => ErrorClass::Overload,
            400..=499 => ErrorClass::ClientError,
            _ => ErrorClass::ServerError,
        }
    }
}

/// A failed attempt.
#[derive(Debug, Clone)]
pub struct ProviderError {
    /// What kind of failure.
    pub class: ErrorClass,
    /// The upstream's HTTP status, when one came.
    pub status: Option<u16>,
    /// A message safe to show the client (no secrets, no upstream URLs with keys).
    pub message: String,
    /// For client errors: the upstream's OpenAI-shaped `error` fields to return as they are.
    pub client_error: Option<Box<UpstreamClientError>>,
    /// For rate limits: how long the upstream asked to wait (`retry-after`).
    pub retry_after: Option<Duration>,
}

/// An upstream's refusal of the request, to return to the client unchanged.
#[derive(Debug, Clone)]
pub struct UpstreamClientError {
    /// HTTP status.
    pub status: u16,
    /// `error.message`
    pub message: String,
    /// `error.type`
    pub kind: Option<String>,
    /// `error.param`
    pub param: Option<String>,
    /// `error.code`
    pub code: Option<String>,
}

impl ProviderError {
    /// A failure of `class` with a message.
    pub fn new(class: ErrorClass, message: impl Into<String>) -> ProviderError {
        ProviderError {
            class,
            status: None,
            message: message.into(),
            client_error: None,
            retry_after: None,
        }
    }

    /// Classifies a transport error from reqwest (never echoing the URL, which may carry a key).
    pub fn from_reqwest(e: &reqwest::Error) -> ProviderError {
        let class = if e.is_timeout() {
            ErrorClass::Timeout
        } else if e.is_connect() {
            ErrorClass::Connect
        } else if e.is_body() || e.is_decode() {
            ErrorClass::Cut
        } else {
            ErrorClass::Connect
        };
        ProviderError::new(class, format!("{} failed", class.as_str()))
    }

    /// A non-success upstream answer, keeping an OpenAI-shaped error body for client errors.
    /// What a misconfigured deployment's upstream said (about its key, say) is never kept.
    pub fn from_status(status: u16, body: &[u8]) -> ProviderError {
        let class = ErrorClass::of_status(status);
        let parsed = parse_error_body(body);
        let message = match &parsed {
            _ if class == ErrorClass::Misconfigured => {
                format!("HTTP {status}: the upstream refused this deployment")
            }
            Some(e) if !e.message.is_empty() => {
                format!("HTTP {status}: {}", truncate(&e.message, 300))
            }
            _ => format!("HTTP {status}"),
        };
        let client_error = (class == ErrorClass::ClientError).then(|| {
            let e = parsed.unwrap_or_default();
            Box::new(UpstreamClientError {
                status,
                message: if e.message.is_empty() {
                    format!("The upstream refused the request (HTTP {status}).")
                } else {
                    e.message
                },
                kind: e.kind,
                param: e.param,
                code: e.code,
            })
        });
        ProviderError {
            class,
            status: Some(status),
            message,
            client_error,
            retry_after: None,
        }
    }

    /// Masks `secret` (a provider key) wherever the upstream's message repeated it.
    pub fn redact(&mut self, secret: &str) {
        const MASK: &str = "[redacted]";
        if secret.len() < 8 {
            return;
        }
        if self.message.contains(secret) {
            self.message = self.message.replace(secret, MASK);
        }
        if let Some(c) = &mut self.client_error
            && c.message.contains(secret)
        {
            c.message = c.message.replace(secret, MASK);
        }
    }

    /// A success status whose body is not what the protocol promises.
    pub fn malformed(message: impl Into<String>) -> ProviderError {
        ProviderError::new(ErrorClass::Malformed, message)
    }
}

/// The most tokens any single usage count may report; a larger count is not a miscount but
/// nonsense, and the attempt is treated as a malformed answer.
pub const MAX_REPORTED_TOKENS: u64 = 1_000_000_000;

/// Usage as an upstream reported it, checked before anything is billed from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportedUsage {
    /// Counts in a known shape and in range.
    Counted(TokenUsage),
    /// No usage reported (absent or null).
    Missing,
    /// Usage in a shape Lumina does not know (counts missing, not integers, not an object).
    Unrecognized,
    /// A count beyond [`MAX_REPORTED_TOKENS`].
    OutOfRange,
}

/// Reads an OpenAI-shaped `usage` value: `prompt_tokens` and `completion_tokens` are
/// required non-negative integers; `prompt_tokens_details.cached_tokens` and
/// `completion_tokens_details.reasoning_tokens` are optional.
pub fn openai_usage(raw: Option<&serde_json::value::RawValue>) -> ReportedUsage {
    let Some(raw) = raw.filter(|r| r.get() != "null") else {
        return ReportedUsage::Missing;
    };
    let Ok(serde_json::Value::Object(usage)) = serde_json::from_str(raw.get()) else {
        return ReportedUsage::Unrecognized;
    };
    let count = |v: Option<&serde_json::Value>| -> Result<Option<u64>, ReportedUsage> {
        match v {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::Number(n)) => match n.as_u64() {
                Some(n) if n <= MAX_REPORTED_TOKENS => Ok(Some(n)),
                Some(_) => Err(ReportedUsage::OutOfRange),
                // Past u64 or written with an exponent: a whole number too large is out of
                // range, anything else (negative, fractional) is not a count.
                None if n.as_f64().is_some_and(|f| f.fract() == 0.0 && f > 0.0) => {
                    Err(ReportedUsage::OutOfRange)
                }
                None => Err(ReportedUsage::Unrecognized),
            },
            Some(_) => Err(ReportedUsage::Unrecognized),
        }
    };
    let detail = |section: &str, name: &str| -> Result<Option<u64>, ReportedUsage> {
        match usage.get(section) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::Object(d)) => count(d.get(name)),
            Some(_) => Err(ReportedUsage::Unrecognized),
        }
    };
    let read = || -> Result<TokenUsage, ReportedUsage> {
        let prompt = count(usage.get("prompt_tokens"))?;
        let completion = count(usage.get("completion_tokens"))?;
        let (Some(prompt_tokens), Some(completion_tokens)) = (prompt, completion) else {
            return Err(ReportedUsage::Unrecognized);
        };
        Ok(TokenUsage {
            prompt_tokens,
            completion_tokens,
            cached_tokens: detail("prompt_tokens_details", "cached_tokens")?.unwrap_or(0),
            reasoning_tokens: detail("completion_tokens_details", "reasoning_tokens")?.unwrap_or(0),
        })
    };
    match read() {
        Ok(usage) => ReportedUsage::Counted(usage),
        Err(report) => report,
    }
}

/// The most bytes of an error body read (the rest is not needed to classify it).
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Reads a response body whole, failing once it passes `limit` bytes or `deadline`.
pub async fn read_bounded(
    mut response: reqwest::Response,
    limit: usize,
    deadline: tokio::time::Instant,
) -> Result<Bytes, ProviderError> {
    let mut body = bytes::BytesMut::new();
    loop {
        match tokio::time::timeout_at(deadline, response.chunk()).await {
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
            Ok(Ok(None)) => return Ok(body.freeze()),
            Ok(Ok(Some(chunk))) => {
                if body.len() + chunk.len() > limit {
                    return Err(ProviderError::malformed(format!(
                        "the answer passed the {limit}-byte bound for a response"
                    )));
                }
                body.extend_from_slice(&chunk);
            }
        }
    }
}

/// Sends `request` (with the attempt's `traceparent`, when it has one) under the attempt's
/// first-byte deadline and turns a non-success status
/// into its error (the body read up to a small bound; `retry-after` kept for rate limits;
/// `credential`, the key the request carries, masked wherever the upstream repeated it).
pub async fn send(
    mut request: reqwest::RequestBuilder,
    timeouts: &Timeouts,
    deadline: tokio::time::Instant,
    credential: Option<&reqwest::header::HeaderValue>,
    traceparent: Option<reqwest::header::HeaderValue>,
) -> Result<reqwest::Response, ProviderError> {
    if let Some(tp) = traceparent {
        request = request.header("traceparent", tp);
    }
    let first_byte = (tokio::time::Instant::now() + timeouts.first_byte).min(deadline);
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
    if (200..300).contains(&status) {
        return Ok(response);
    }
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body = read_bounded(response, MAX_ERROR_BODY, deadline)
        .await
        .unwrap_or_default();
    let mut error = ProviderError::from_status(status, &body);
    error.retry_after = retry_after;
    if let Some(secret) = credential.and_then(|c| c.to_str().ok()) {
        error.redact(secret.strip_prefix("Bearer ").unwrap_or(secret));
    }
    Err(error)
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[derive(Debug, Default, serde::Deserialize)]
struct ErrorFields {
    #[serde(default)]
    message: String,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default, deserialize_with = "stringish")]
    param: Option<String>,
    #[serde(default, deserialize_with = "stringish")]
    code: Option<String>,
}

fn stringish<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let v: Option<serde_json::Value> = serde::Deserialize::deserialize(d)?;
    Ok(match v {
        Some(serde_json::Value::String(s)) => Some(s),
        Some(serde_json::Value::Null) | None => None,
        Some(other) => Some(other.to_string()),
    })
}

#[derive(serde::Deserialize)]
struct ErrorEnvelope {
    error: ErrorFields,
}

/// The `error` object of an OpenAI- or Anthropic-shaped error body.
fn parse_error_body(body: &[u8]) -> Option<ErrorFields> {
    serde_json::from_slice::<ErrorEnvelope>(body)
        .ok()
        .map(|e| e.error)
}

/// A whole completion, as OpenAI-shaped JSON.
#[derive(Debug)]
pub struct Completion {
    /// The response body to send (OpenAI `chat.completion`).
    pub body: Bytes,
    /// Usage as the upstream reported it.
    pub usage: ReportedUsage,
}

/// One streamed chunk, as OpenAI-shaped JSON (the text after `data: `).
#[derive(Debug, Clone)]
pub struct StreamChunk {
    /// The chunk.
    pub data: Bytes,
    /// The generated text it carries (content, reasoning, tool names and arguments), for
    /// estimating usage when none is reported.
    pub text: String,
    /// Usage, when the chunk carries a `usage` member.
    pub usage: Option<ReportedUsage>,
    /// Whether this is the final usage-only chunk (no choices).
    pub usage_only: bool,
}

/// The chunks of a streamed answer; the stream ends after the last chunk.
pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<StreamChunk, ProviderError>> + Send>>;

/// What an attempt is asked.
pub struct UpstreamCall<'a> {
    /// The parsed client request.
    pub request: &'a ChatRequest<'a>,
    /// The model name the deployment uses upstream.
    pub upstream_model: &'a str,
    /// Lumina's request id, for ids the adapter makes up.
    pub request_id: &'a str,
    /// Anthropic's protocol headers the client sent, for Anthropic upstreams only.
    pub anthropic: Option<&'a AnthropicNative>,
    /// W3C `traceparent` of the attempt, sent upstream.
    pub traceparent: Option<reqwest::header::HeaderValue>,
}

/// What a Messages request carries for Anthropic upstreams only, never sent to others: the
/// `anthropic-version` and `anthropic-beta` headers, its `thinking` setting, and the thinking
/// blocks of its earlier assistant turns, signatures and all.
#[derive(Debug, Clone, Default)]
pub struct AnthropicNative {
    /// `anthropic-version`
    pub version: Option<reqwest::header::HeaderValue>,
    /// `anthropic-beta`
    pub beta: Option<reqwest::header::HeaderValue>,
    /// `thinking`, as the client sent it.
    pub thinking: Option<serde_json::Value>,
    /// Thinking and redacted-thinking blocks, unchanged, by the index in the chat view's
    /// `messages` of the assistant message they lead.
    pub thinking_blocks: Vec<(usize, Vec<serde_json::Value>)>,
}

impl AnthropicNative {
    /// The thinking blocks leading chat message `index`.
    pub fn thinking_of(&self, index: usize) -> &[serde_json::Value] {
        self.thinking_blocks
            .iter()
            .find(|(i, _)| *i == index)
            .map_or(&[], |(_, blocks)| blocks.as_slice())
    }
}

/// What an embeddings attempt is asked.
pub struct EmbedCall<'a> {
    /// The parsed client request.
    pub request: &'a EmbeddingsRequest<'a>,
    /// The embeddings model the deployment uses upstream.
    pub upstream_model: &'a str,
    /// W3C `traceparent` of the attempt, sent upstream.
    pub traceparent: Option<reqwest::header::HeaderValue>,
}

/// An embeddings answer, checked ([`crate::embeddings::check_answer`]).
#[derive(Debug)]
pub struct Embedded {
    /// The upstream's OpenAI-shaped `list` of vectors.
    pub body: Bytes,
    /// Usage as the upstream reported it.
    pub usage: ReportedUsage,
}

/// What a token count asks: the client's Messages `count_tokens` body, for the deployment's
/// model.
pub struct CountCall<'a> {
    /// The client's body (Anthropic-shaped).
    pub body: &'a [u8],
    /// The model name the deployment uses upstream.
    pub upstream_model: &'a str,
    /// The client's `anthropic-version` and `anthropic-beta`.
    pub anthropic: &'a AnthropicNative,
}

/// An upstream adapter.
pub trait Provider: Send + Sync {
    /// The whole completion.
    fn complete<'a>(
        &'a self,
        call: UpstreamCall<'a>,
    ) -> BoxFuture<'a, Result<Completion, ProviderError>>;

    /// A stream of chunks; resolves once the upstream accepted the request.
    fn stream<'a>(
        &'a self,
        call: UpstreamCall<'a>,
    ) -> BoxFuture<'a, Result<ChunkStream, ProviderError>>;

    /// The input tokens of a Messages request counted by the upstream itself, exactly as it
    /// bills them; `None` when this upstream cannot count.
    fn count_tokens<'a>(
        &'a self,
        _call: CountCall<'a>,
    ) -> BoxFuture<'a, Result<Option<u64>, ProviderError>> {
        Box::pin(async { Ok(None) })
    }

    /// Embedding vectors, for adapters whose upstream serves them (configuration lets no other
    /// deployment onto the embeddings route).
    fn embed<'a>(&'a self, _call: EmbedCall<'a>) -> BoxFuture<'a, Result<Embedded, ProviderError>> {
        Box::pin(async {
            Err(ProviderError::new(
                ErrorClass::Misconfigured,
                "this upstream serves no embeddings",
            ))
        })
    }
}

/// Size bounds of one provider's answers.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// A whole (non-streamed) response body.
    pub response_bytes: usize,
    /// Everything a stream sends.
    pub stream_bytes: usize,
}

impl BodyLimits {
    /// The bounds configured for `config`.
    pub fn of(config: &ProviderConfig) -> BodyLimits {
        BodyLimits {
            response_bytes: config.max_response_bytes,
            stream_bytes: config.max_stream_bytes,
        }
    }
}

/// Deadlines of one provider.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Connect.
    pub connect: Duration,
    /// Until the answer starts.
    pub first_byte: Duration,
    /// Between streamed chunks.
    pub idle: Duration,
    /// The whole attempt.
    pub total: Duration,
}

impl Timeouts {
    /// The deadlines configured for `config`.
    pub fn of(config: &ProviderConfig) -> Timeouts {
        let total = Duration::from_millis(config.timeout_ms);
        Timeouts {
            connect: Duration::from_millis(config.connect_timeout_ms),
            first_byte: config
                .first_byte_timeout_ms
                .map_or(total, Duration::from_millis),
            idle: config.idle_timeout_ms.map_or(total, Duration::from_millis),
            total,
        }
    }
}

/// Installs the process-wide TLS crypto provider (ring) if none is installed yet. reqwest is
/// built without a default provider so the build needs no C toolchain beyond `cc`.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A pooled HTTP client for one provider.
pub fn http_client(timeouts: &Timeouts) -> Result<reqwest::Client, String> {
    install_crypto_provider();
    reqwest::Client::builder()
        // A redirect is an upstream error: following one would send the client's prompt (and
        // the provider's key) to another host.
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(timeouts.connect)
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(256)
        .tcp_nodelay(true)
        .build()
        .map_err(|e| format!("cannot build HTTP client: {e}"))
}

/// Builds the adapter a provider's configuration asks for; `env` reads its API key.
pub fn build(
    config: &ProviderConfig,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Arc<dyn Provider>, String> {
    let key = config.api_key_env.as_deref().and_then(&env);
    let timeouts = Timeouts::of(config);
    let limits = BodyLimits::of(config);
    Ok(match config.kind {
        ProviderKind::Openai => Arc::new(openai::OpenAi::new(
            config
                .base_url
                .as_deref()
                .unwrap_or("https://api.openai.com/v1"),
            key,
            timeouts,
            limits,
        )?),
        ProviderKind::Anthropic => Arc::new(anthropic::Anthropic::new(
            config
                .base_url
                .as_deref()
                .unwrap_or("https://api.anthropic.com/v1"),
            key.unwrap_or_default(),
            config.default_max_tokens,
            timeouts,
            limits,
        )?),
        ProviderKind::Simulated => Arc::new(simulated::Simulated::new(config.simulated.clone())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(text: &str) -> ReportedUsage {
        let raw: Box<serde_json::value::RawValue> = serde_json::from_str(text).unwrap();
        openai_usage(Some(&raw))
    }

    #[test]
    fn openai_usage_is_checked_before_it_is_billed() {
        assert_eq!(
            usage(
                r#"{"prompt_tokens":3,"completion_tokens":4,"prompt_tokens_details":{"cached_tokens":1},"completion_tokens_details":{"reasoning_tokens":2}}"#
            ),
            ReportedUsage::Counted(TokenUsage {
                prompt_tokens: 3,
                completion_tokens: 4,
                cached_tokens: 1,
                reasoning_tokens: 2,
            })
        );
        for huge in [
            "10000000000000000",
            "9223372036854775807",
            "18446744073709551616",
            "1e16",
        ] {
            assert_eq!(
                usage(&format!(
                    r#"{{"prompt_tokens":3,"completion_tokens":{huge}}}"#
                )),
                ReportedUsage::OutOfRange,
                "{huge}"
            );
        }
        for odd in [
            "{}",
            r#"{"total_tokens":5000}"#,
            r#"{"input_tokens":5,"output_tokens":6}"#,
            "[1, 2]",
            r#"{"prompt_tokens":-1,"completion_tokens":2}"#,
            r#"{"prompt_tokens":1.5,"completion_tokens":2}"#,
            r#"{"prompt_tokens":"3","completion_tokens":2}"#,
        ] {
            assert_eq!(usage(odd), ReportedUsage::Unrecognized, "{odd}");
        }
        assert_eq!(usage("null"), ReportedUsage::Missing);
        assert_eq!(openai_usage(None), ReportedUsage::Missing);
    }

    #[test]
    fn a_provider_key_the_upstream_repeats_is_masked() {
        let mut e = ProviderError::from_status(
            400,
            br#"{"error":{"message":"key sk-live-1234567890 is not valid for this model"}}"#,
        );
        e.redact("sk-live-1234567890");
        assert!(!e.message.contains("sk-live"), "{}", e.message);
        let client = e.client_error.unwrap();
        assert_eq!(client.message, "key [redacted] is not valid for this model");
    }

    #[test]
    fn statuses_that_blame_the_deployment_fall_back() {
        for status in [301, 302, 307, 308, 401, 402, 403, 404, 405] {
            let class = ErrorClass::of_status(status);
            assert_eq!(class, ErrorClass::Misconfigured, "{status}");
            assert!(class.falls_back());
        }
        assert_eq!(ErrorClass::of_status(400), ErrorClass::ClientError);
        assert_eq!(ErrorClass::of_status(422), ErrorClass::ClientError);
        let e = ProviderError::from_status(
            401,
            br#"{"error":{"message":"Incorrect API key provided: sk-pr****cret"}}"#,
        );
        assert!(!e.message.contains("sk-"), "{}", e.message);
        assert!(e.client_error.is_none());
    }
}
