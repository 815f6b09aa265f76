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
    fn completion_text_reads_messages_deltas_and_tool_calls() {
        let body = br#"{"choices":[{"message":{"content":"Hi there","tool_calls":[{"function":{"name":"f","arguments":"{}"}}]}}]}"#;
        let chunk = br#"{"choices":[{"delta":{"content":" more"}}]}"#;
        assert_eq!(completion_text([&body[..], &chunk[..]]), "Hi theref{} more");
    }
}
