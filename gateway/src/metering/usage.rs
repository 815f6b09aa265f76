//! Token usage: what the provider reported, or an estimate made with the o200k tokenizer when
//! it reported none (the settlement then says `estimated`). The tokenizer loads on first use,
//! on the blocking pool, and is never touched on a request the provider counted.

use std::sync::OnceLock;

use tiktoken_rs::CoreBPE;

use crate::wire::{ChatRequest, TokenUsage};

static TOKENIZER: OnceLock<Option<CoreBPE>> = OnceLock::new();

fn tokenizer() -> Option<&'static CoreBPE> {
    TOKENIZER
        .get_or_init(|| tiktoken_rs::o200k_base().ok())
        .as_ref()
}

/// Tokens of `text` (a chars/4 estimate if the tokenizer could not load).
pub fn count_tokens(text: &str) -> u64 {
    match tokenizer() {
        Some(bpe) => bpe.encode_ordinary(text).len() as u64,
        None => (text.len() as u64).div_ceil(4),
    }
}

/// Prompt tokens the way OpenAI counts chat messages: the text plus a few tokens per message.
pub fn prompt_tokens(request: &ChatRequest<'_>) -> u64 {
    let mut text = String::with_capacity(request.prompt_chars());
    for m in &request.messages {
        if let Some(c) = &m.content {
            c.for_each_text(|t| text.push_str(t));
        }
        for call in &m.tool_calls {
            text.push_str(call.function.name.as_str());
            if let Some(a) = &call.function.arguments {
                text.push_str(a.as_str());
            }
        }
    }
    count_tokens(&text) + 3 * request.messages.len() as u64 + 3
}

/// Why the usage Lumina bills differs from what the upstream reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageAnomaly {
    /// More completion tokens than the request allowed (`max_tokens` × `n`, or the path's
    /// default maximum): billed at the allowance, which is what the hold covers.
    CompletionClamped,
    /// A count beyond any sane bound: estimated instead.
    OutOfRange,
    /// Usage in an unknown shape: estimated instead.
    Unrecognized,
}

impl UsageAnomaly {
    /// Name recorded in `RequestSettled.usage_anomaly` and the metric's `kind` label.
    pub fn as_str(self) -> &'static str {
        match self {
            UsageAnomaly::CompletionClamped => "completion_clamped",
            UsageAnomaly::OutOfRange => "usage_out_of_range",
            UsageAnomaly::Unrecognized => "usage_unrecognized",
        }
    }
}

/// The usage a request is billed for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Billed {
    /// Token counts to price.
    pub usage: TokenUsage,
    /// Whether they were estimated with the tokenizer.
    pub estimated: bool,
    /// Why they differ from the upstream's report, if they do.
    pub anomaly: Option<UsageAnomaly>,
    /// The completion tokens reported, when billing clamped them.
    pub reported_completion: Option<u64>,
}

impl Billed {
    /// Bills `usage` (`estimated` or reported), flagged with `anomaly`, with completion tokens
    /// clamped to `allowance`; counts every anomaly in `lumina_usage_anomalies_total`.
    pub fn new(
        usage: TokenUsage,
        estimated: bool,
        anomaly: Option<UsageAnomaly>,
        allowance: u64,
    ) -> Billed {
        let mut billed = Billed {
            usage,
            estimated,
            anomaly,
            reported_completion: None,
        };
        if usage.completion_tokens > allowance {
            billed.usage.completion_tokens = allowance;
            billed.usage.reasoning_tokens = usage.reasoning_tokens.min(allowance);
            billed.reported_completion = Some(usage.completion_tokens);
            billed.anomaly = billed.anomaly.or(Some(UsageAnomaly::CompletionClamped));
        }
        if let Some(a) = billed.anomaly {
            metrics::counter!("lumina_usage_anomalies_total", "kind" => a.as_str()).increment(1);
        }
        billed
    }
}

/// A quick upper-bound-ish prompt estimate for limits, without the tokenizer.
pub fn quick_prompt_estimate(request: &ChatRequest<'_>) -> u64 {
    (request.prompt_chars() as u64).div_ceil(4) + 3 * request.messages.len() as u64 + 3
}

/// An estimated usage for `request` and the generated `completion` text.
pub fn estimate(request: &ChatRequest<'_>, completion: &str) -> TokenUsage {
    TokenUsage {
        prompt_tokens: prompt_tokens(request),
        completion_tokens: count_tokens(completion),
        cached_tokens: 0,
        reasoning_tokens: 0,
    }
}

/// The generated text carried by OpenAI-shaped chunks or a completion body (message and delta
/// contents, tool-call names and arguments).
pub fn completion_text<'a>(bodies: impl IntoIterator<Item = &'a [u8]>) -> String {
    let mut out = String::new();
    for body in bodies {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
            continue;
        };
        let Some(choices) = v["choices"].as_array() else {
            continue;
        };
        for c in choices {
            for part in [&c["message"], &c["delta"]] {
                if let Some(t) = part["content"].as_str() {
                    out.push_str(t);
                }
                if let Some(calls) = part["tool_calls"].as_array() {
                    for call in calls {
                        if let Some(n) = call["function"]["name"].as_str() {
                            out.push_str(n);
                        }
                        if let Some(a) = call["function"]["arguments"].as_str() {
                            out.push_str(a);
                        }
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tokenizer_counts_real_tokens() {
        assert_eq!(count_tokens(""), 0);
        let n = count_tokens("Hello, world! This is a tokenizer test.");
        assert!((8..=12).contains(&n), "{n}");
    }

    #[test]
    fn completion_tokens_beyond_the_allowance_are_clamped_and_flagged() {
        let reported = TokenUsage {
            prompt_tokens: 10,
            completion_tokens: 1_000_000_000_000,
            cached_tokens: 0,
            reasoning_tokens: 2_000_000_000_000,
        };
        let billed = Billed::new(reported, false, None, 30);
        assert_eq!(billed.usage.completion_tokens, 30);
        assert_eq!(billed.usage.reasoning_tokens, 30);
        assert_eq!(billed.usage.prompt_tokens, 10);
        assert_eq!(billed.anomaly, Some(UsageAnomaly::CompletionClamped));
        assert_eq!(billed.reported_completion, Some(1_000_000_000_000));
        let fine = Billed::new(reported, false, None, u64::MAX);
        assert_eq!((fine.usage, fine.anomaly), (reported, None));
        let estimated = Billed::new(reported, true, Some(UsageAnomaly::OutOfRange), 30);
        assert_eq!(estimated.anomaly, Some(UsageAnomaly::OutOfRange));
    }

    #[test]
    fn completion_text_reads_messages_deltas_and_tool_calls() {
        let body = br#"{"choices":[{"message":{"content":"Hi there","tool_calls":[{"function":{"name":"f","arguments":"{}"}}]}}]}"#;
        let chunk = br#"{"choices":[{"delta":{"content":" more"}}]}"#;
        assert_eq!(completion_text([&body[..], &chunk[..]]), "Hi theref{} more");
    }
}
