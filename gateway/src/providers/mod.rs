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
    /// The upstream refused the request itself (4xx other than 408/429): the client's fault.
    ClientError,
    /// The answer broke off or was malformed.
    Cut,
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
            ErrorClass::Cut => "cut",
        }
    }

    /// Whether another deployment may succeed where this one failed.
    pub fn falls_back(self) -> bool {
        self != ErrorClass::ClientError
    }

    /// The class of an upstream HTTP status that is not a success.
    pub fn of_status(status: u16) -> ErrorClass {
        match status {
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
    pub fn from_status(status: u16, body: &[u8]) -> ProviderError {
        let class = ErrorClass::of_status(status);
        let parsed = parse_error_body(body);
        let message = match &parsed {
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
        }
    }
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
    pub usage: Option<TokenUsage>,
    /// Characters of generated text, for estimating usage when none was reported.
    pub completion_chars: usize,
}

/// One streamed chunk, as OpenAI-shaped JSON (the text after `data: `).
#[derive(Debug, Clone)]
pub struct StreamChunk {
    /// The chunk.
    pub data: Bytes,
    /// Characters of generated text it carries.
    pub content_chars: usize,
    /// Usage, when the chunk reports it.
    pub usage: Option<TokenUsage>,
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
    Ok(match config.kind {
        ProviderKind::Openai => Arc::new(openai::OpenAi::new(
            config
                .base_url
                .as_deref()
                .unwrap_or("https://api.openai.com/v1"),
            key,
            timeouts,
        )?),
        ProviderKind::Anthropic => Arc::new(anthropic::Anthropic::new(
            config
                .base_url
                .as_deref()
                .unwrap_or("https://api.anthropic.com/v1"),
            key.unwrap_or_default(),
            config.default_max_tokens,
            timeouts,
        )?),
        ProviderKind::Simulated => Arc::new(simulated::Simulated::new(config.simulated.clone())),
    })
}
