//! A simulated upstream: deterministic text derived from the prompt, configurable latency,
//! time to first token, tokens per second, and injected failures. The default provider of
//! `lumina serve` without configuration, and the upstream of demos and benchmarks.

use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use rand::RngExt;
use serde_json::value::RawValue;

use crate::config::SimulatedConfig;
use crate::embeddings::{EncodingFormat, Input};
use crate::providers::{
    ChunkStream, Completion, EmbedCall, Embedded, ErrorClass, Provider, ProviderError,
    ReportedUsage, StreamChunk, UpstreamCall,
};
use crate::wire::{
    AssistantMessage, ChatChunk, ChatCompletion, ChatRequest, Choice, ChunkChoice, Delta,
    FunctionDelta, FunctionOut, TokenUsage, ToolCallDelta, ToolCallOut, UsageOut,
};

const WORDS: [&str; 48] = [
    "the",
    "gateway",
    "routes",
    "each",
    "request",
    "to",
    "a",
    "path",
    "that",
    "fits",
    "its",
    "task",
    "and",
    "records",
    "every",
    "decision",
    "as",
    "an",
    "event",
    "so",
    "nothing",
    "is",
    "lost",
    "when",
    "streams",
    "end",
    "oddly",
    "credits",
    "are",
    "exact",
    "while",
    "answers",
    "arrive",
    "quickly",
    "from",
    "upstream",
    "models",
    "with",
    "fallback",
    "on",
    "failure",
    "under",
    "load",
    "this",
    "reply",
    "was",
    "simulated",
    "deterministically",
];

/// Deterministic answers with configurable pacing and failures.
pub struct Simulated {
    config: SimulatedConfig,
}

/// FNV-1a: a stable hash of the prompt, so the same prompt always gets the same answer.
fn fnv1a(bytes: &[u8], seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn prompt_hash(request: &ChatRequest<'_>) -> u64 {
    let mut h = 0u64;
    for m in &request.messages {
        h = fnv1a(m.role.as_str().as_bytes(), h);
        if let Some(c) = &m.content {
            c.for_each_text(|t| h = fnv1a(t.as_bytes(), h));
        }
    }
    h
}

/// The words of choice `index`, at most `count` of them.
fn words(hash: u64, index: u32, count: u32) -> Vec<&'static str> {
    let mut state = hash ^ (u64::from(index) + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (0..count)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            WORDS[(state % WORDS.len() as u64) as usize]
        })
        .collect()
}

/// Estimated prompt tokens, the way the simulated upstream counts them.
pub fn prompt_tokens(request: &ChatRequest<'_>) -> u64 {
    (request.prompt_chars() as u64).div_ceil(4) + 3 * request.messages.len() as u64
}

/// The tool a request forces, if it forces one.
fn forced_tool(request: &ChatRequest<'_>) -> Option<String> {
    let choice = request.tool_choice?;
    if request.tools.is_empty() {
        return None;
    }
    if choice.get() == "\"required\"" {
        return request.tools.first().map(|t| t.name.as_str().to_string());
    }
    #[derive(serde::Deserialize)]
    struct Named<'a> {
        #[serde(borrow)]
        function: NamedFunction<'a>,
    }
    #[derive(serde::Deserialize)]
    struct NamedFunction<'a> {
        name: &'a str,
    }
    serde_json::from_str::<Named<'_>>(RawValue::get(choice))
        .ok()
        .map(|n| n.function.name.to_string())
}

struct Answer {
    /// Each choice's text.
    texts: Vec<String>,
    tool: Option<String>,
    usage: TokenUsage,
    finish_reason: &'static str,
}

impl Simulated {
    /// A simulated upstream behaving as `config` says.
    pub fn new(config: SimulatedConfig) -> Simulated {
        Simulated { config }
    }

    fn answer(&self, request: &ChatRequest<'_>) -> Answer {
        let hash = prompt_hash(request);
        let cap = request
            .max_tokens
            .map_or(u64::from(self.config.completion_tokens), |m| {
                m.min(u64::from(self.config.completion_tokens))
            });
        let count = u32::try_from(cap).unwrap_or(u32::MAX).max(1);
        let tool = forced_tool(request);
        let texts: Vec<String> = if tool.is_some() {
            vec![String::new(); request.n as usize]
        } else if let Some(fixed) = &self.config.answer {
            vec![fixed.clone(); request.n as usize]
        } else {
            (0..request.n)
                .map(|i| sentence(&words(hash, i, count)))
                .collect()
        };
        let completion_tokens = if tool.is_some() {
            8 * u64::from(request.n)
        } else {
            texts
                .iter()
                .map(|t| t.split_whitespace().count() as u64)
                .sum()
        };
        let finish_reason = if tool.is_some() {
            "tool_calls"
        } else if request
            .max_tokens
            .is_some_and(|m| m < u64::from(self.config.completion_tokens))
        {
            "length"
        } else {
            "stop"
        };
        Answer {
            texts,
            tool,
            usage: TokenUsage {
                prompt_tokens: prompt_tokens(request),
                completion_tokens,
                cached_tokens: 0,
                reasoning_tokens: 0,
            },
            finish_reason,
        }
    }

    /// Draws an injected failure, if any.
    fn failure(&self) -> Option<&str> {
        if self.config.failure_rate <= 0.0 || self.config.failure_kinds.is_empty() {
            return None;
        }
        let mut rng = rand::rng();
        if rng.random::<f64>() >= self.config.failure_rate {
            return None;
        }
        let i = rng.random_range(0..self.config.failure_kinds.len());
        Some(self.config.failure_kinds[i].as_str())
    }

    async fn fail_before_answer(&self, kind: &str) -> ProviderError {
        match kind {
            "rate_limited" => {
                ProviderError::from_status(429, br#"{"error":{"message":"simulated rate limit"}}"#)
            }
            "overload" => {
                ProviderError::from_status(503, br#"{"error":{"message":"simulated overload"}}"#)
            }
            "timeout" => ProviderError::new(ErrorClass::Timeout, "simulated timeout"),
            "cut" => ProviderError::new(ErrorClass::Cut, "simulated cut"),
            _ => ProviderError::from_status(
                500,
                br#"{"error":{"message":"simulated server error"}}"#,
            ),
        }
    }

    async fn pause(ms: u64) {
        if ms > 0 {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
    }
}

fn completion_id(request_id: &str) -> String {
    format!("chatcmpl-{}", request_id.trim_start_matches("req_"))
}

fn now_secs() -> i64 {
    lumina_schemas::now_micros() / 1_000_000
}

fn sentence(words: &[&str]) -> String {
    let mut s = words.join(" ");
    if let Some(first) = s.get_mut(0..1) {
        first.make_ascii_uppercase();
    }
    if !s.is_empty() {
        s.push('.');
    }
    s
}

impl Provider for Simulated {
    fn complete<'a>(
        &'a self,
        call: UpstreamCall<'a>,
    ) -> BoxFuture<'a, Result<Completion, ProviderError>> {
        async move {
            Self::pause(self.config.latency_ms).await;
            if let Some(kind) = self.failure() {
                return Err(self.fail_before_answer(kind).await);
            }
            let answer = self.answer(call.request);
            let choices: Vec<Choice> = answer
                .texts
                .iter()
                .enumerate()
                .map(|(i, w)| Choice {
                    index: i as u32,
                    message: AssistantMessage {
                        role: "assistant",
                        content: answer.tool.is_none().then(|| w.clone()),
                        refusal: None,
                        tool_calls: answer
                            .tool
                            .iter()
                            .map(|name| ToolCallOut {
                                id: format!(
                                    "call_{}_{i}",
                                    call.request_id.trim_start_matches("req_")
                                ),
                                kind: "function",
                                function: FunctionOut {
                                    name: name.clone(),
                                    arguments: "{}".into(),
                                },
                            })
                            .collect(),
                        reasoning_content: None,
                        thinking_blocks: Vec::new(),
                    },
                    logprobs: None,
                    finish_reason: answer.finish_reason.into(),
                })
                .collect();
            let body = ChatCompletion {
                id: completion_id(call.request_id),
                object: "chat.completion",
                created: now_secs(),
                model: call.upstream_model.to_string(),
                choices,
                usage: Some(UsageOut::from(answer.usage)),
                service_tier: "default",
                system_fingerprint: Some("lumina-sim".into()),
            };
            let body = serde_json::to_vec(&body)
                .map_err(|e| ProviderError::new(ErrorClass::ServerError, e.to_string()))?;
            Ok(Completion {
                body: Bytes::from(body),
                usage: ReportedUsage::Counted(answer.usage),
            })
        }
        .boxed()
    }

    fn stream<'a>(
        &'a self,
        call: UpstreamCall<'a>,
    ) -> BoxFuture<'a, Result<ChunkStream, ProviderError>> {
        async move {
            Self::pause(self.config.latency_ms).await;
            let failure = self.failure();
            if let Some(kind) = failure
                && kind != "cut"
            {
                return Err(self.fail_before_answer(kind).await);
            }
            let answer = self.answer(call.request);
            let id = completion_id(call.request_id);
            let model = call.upstream_model.to_string();
            let created = now_secs();
            let chunk = |choices: Vec<ChunkChoice>,
                         usage: Option<UsageOut>|
             -> Result<Bytes, ProviderError> {
                let c = ChatChunk {
                    id: &id,
                    object: "chat.completion.chunk",
                    created,
                    model: &model,
                    choices,
                    usage,
                    service_tier: "default",
                    system_fingerprint: Some("lumina-sim"),
                };
                serde_json::to_vec(&c).map(Bytes::from).map_err(|e| {
                    ProviderError::new(
                        ErrorClass::Malformed,
                        format!("the simulated chunk could not be written: {e}"),
                    )
                })
            };
            let mut items: Vec<StreamChunk> = Vec::new();
            for (i, w) in answer.texts.iter().enumerate() {
                let index = i as u32;
                items.push(StreamChunk {
                    data: chunk(
                        vec![ChunkChoice {
                            index,
                            delta: Delta {
                                role: Some("assistant"),
                                content: Some(String::new()),
                                ..Delta::default()
                            },
                            logprobs: None,
                            finish_reason: None,
                        }],
                        None,
                    )?,
                    text: String::new(),
                    usage: None,
                    usage_only: false,
                });
                if let Some(name) = &answer.tool {
                    items.push(StreamChunk {
                        data: chunk(
                            vec![ChunkChoice {
                                index,
                                delta: Delta {
                                    tool_calls: vec![ToolCallDelta {
                                        index: 0,
                                        id: Some(format!(
                                            "call_{}_{i}",
                                            call.request_id.trim_start_matches("req_")
                                        )),
                                        kind: Some("function"),
                                        function: FunctionDelta {
                                            name: Some(name.clone()),
                                            arguments: "{}".into(),
                                        },
                                    }],
                                    ..Delta::default()
                                },
                                logprobs: None,
                                finish_reason: None,
                            }],
                            None,
                        )?,
                        text: format!("{name}{{}}"),
                        usage: None,
                        usage_only: false,
                    });
                }
                let pieces: Vec<&str> = w.split_inclusive(' ').collect();
                for piece in pieces {
                    items.push(StreamChunk {
                        data: chunk(
                            vec![ChunkChoice {
                                index,
                                delta: Delta {
                                    content: Some(piece.to_string()),
                                    ..Delta::default()
                                },
                                logprobs: None,
                                finish_reason: None,
                            }],
                            None,
                        )?,
                        text: piece.to_string(),
                        usage: None,
                        usage_only: false,
                    });
                }
                items.push(StreamChunk {
                    data: chunk(
                        vec![ChunkChoice {
                            index,
                            delta: Delta::default(),
                            logprobs: None,
                            finish_reason: Some(answer.finish_reason.into()),
                        }],
                        None,
                    )?,
                    text: String::new(),
                    usage: None,
                    usage_only: false,
                });
            }
            items.push(StreamChunk {
                data: chunk(Vec::new(), Some(UsageOut::from(answer.usage)))?,
                text: String::new(),
                usage: Some(ReportedUsage::Counted(answer.usage)),
                usage_only: true,
            });
            let cut_after = failure.map(|_| items.len() / 2);
            let ttft = Duration::from_millis(self.config.ttft_ms);
            let gap = match self.config.tokens_per_second {
                0 => Duration::ZERO,
                tps => Duration::from_micros(1_000_000 / tps),
            };
            let stream = futures::stream::iter(items.into_iter().enumerate()).then(
                move |(i, item)| async move {
                    if i == 0 && !ttft.is_zero() {
                        tokio::time::sleep(ttft).await;
                    } else if i > 0 && !gap.is_zero() && !item.text.is_empty() {
                        tokio::time::sleep(gap).await;
                    }
                    if cut_after == Some(i) {
                        return Err(ProviderError::new(
                            ErrorClass::Cut,
                            "simulated cut mid-stream",
                        ));
                    }
                    Ok(item)
                },
            );
            let stream = stream.scan(false, |failed, item| {
                let out = if *failed {
                    None
                } else {
                    *failed = item.is_err();
                    Some(item)
                };
                futures::future::ready(out)
            });
            Ok(Box::pin(stream) as ChunkStream)
        }
        .boxed()
    }

    fn embed<'a>(&'a self, call: EmbedCall<'a>) -> BoxFuture<'a, Result<Embedded, ProviderError>> {
        async move {
            Self::pause(self.config.latency_ms).await;
            if let Some(kind) = self.failure() {
                return Err(self.fail_before_answer(kind).await);
            }
            let request = call.request;
            let dimensions = request.dimensions.unwrap_or(SIMULATED_DIMENSIONS);
            let data: Vec<serde_json::Value> = request
                .inputs
                .iter()
                .enumerate()
                .map(|(index, input)| {
                    let vector = unit_vector(input_hash(input), dimensions);
                    let embedding = match request.encoding_format {
                        EncodingFormat::Float => serde_json::json!(vector),
                        EncodingFormat::Base64 => {
                            use base64::Engine as _;
                            let bytes: Vec<u8> =
                                vector.iter().flat_map(|f| f.to_le_bytes()).collect();
                            serde_json::json!(base64::engine::general_purpose::STANDARD.encode(bytes))
                        }
                    };
                    serde_json::json!({"object": "embedding", "index": index, "embedding": embedding})
                })
                .collect();
            let tokens = request.count_tokens();
            let body = serde_json::json!({
                "object": "list",
                "data": data,
                "model": call.upstream_model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            });
            Ok(Embedded {
                body: Bytes::from(body.to_string()),
                usage: ReportedUsage::Counted(TokenUsage {
                    prompt_tokens: tokens,
                    ..TokenUsage::default()
                }),
            })
        }
        .boxed()
    }
}

/// Dimensions of a simulated vector when the request names none.
const SIMULATED_DIMENSIONS: u32 = 256;

fn input_hash(input: &Input<'_>) -> u64 {
    match input {
        Input::Text(t) => fnv1a(t.as_bytes(), 0),
        Input::Tokens(tokens) => tokens.iter().fold(0, |h, t| fnv1a(&t.to_le_bytes(), h)),
    }
}

/// A deterministic vector of length 1 drawn from `hash`: the same input always embeds the same.
fn unit_vector(hash: u64, dimensions: u32) -> Vec<f32> {
    let mut state = hash | 1;
    let raw: Vec<f64> = (0..dimensions)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        })
        .collect();
    let norm = raw
        .iter()
        .map(|x| x * x)
        .sum::<f64>()
        .sqrt()
        .max(f64::MIN_POSITIVE);
    raw.iter().map(|x| (x / norm) as f32).collect()
}
