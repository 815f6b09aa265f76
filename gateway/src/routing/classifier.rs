//! The `lumina-auto` classifier: explainable features of a request → a score per path → the
//! path with the highest score. Pure and allocation-light: one case-insensitive multi-pattern
//! scan over the conversation text, then arithmetic. Every decision is recorded with its
//! features and scores in `RequestRouted`.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, AhoCorasickKind, MatchKind};

use crate::routing::catalog::RoutePath;
use crate::wire::ChatRequest;

/// What a cue pattern is evidence of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cue {
    Code,
    Math,
    MultiStep,
    Greeting,
}

/// (pattern, cue, must stand as a whole word)
const CUES: &[(&str, Cue, bool)] = &[
    ("```", Cue::Code, false),
    ("fn ", Cue::Code, true),
    ("def ", Cue::Code, true),
    ("class ", Cue::Code, true),
    ("import ", Cue::Code, true),
    ("#include", Cue::Code, false),
    ("function", Cue::Code, true),
    ("return ", Cue::Code, true),
    ("select ", Cue::Code, true),
    ("compile", Cue::Code, false),
    ("stack trace", Cue::Code, false),
    ("traceback", Cue::Code, false),
    ("segfault", Cue::Code, false),
    ("rust", Cue::Code, true),
    ("python", Cue::Code, true),
    ("javascript", Cue::Code, true),
    ("typescript", Cue::Code, true),
    ("golang", Cue::Code, true),
    ("c++", Cue::Code, false),
    ("sql", Cue::Code, true),
    ("algorithm", Cue::Code, false),
    ("implement", Cue::Code, false),
    ("refactor", Cue::Code, false),
    ("debug", Cue::Code, false),
    ("concurren", Cue::Code, false),
    ("lock-free", Cue::Code, false),
    ("api", Cue::Code, true),
    ("();", Cue::Code, false),
    ("=>", Cue::Code, false),
    ("\\frac", Cue::Math, false),
    ("\\sum", Cue::Math, false),
    ("\\int", Cue::Math, false),
    ("\\sqrt", Cue::Math, false),
    ("$$", Cue::Math, false),
    ("∫", Cue::Math, false),
    ("∑", Cue::Math, false),
    ("√", Cue::Math, false),
    ("≤", Cue::Math, false),
    ("≥", Cue::Math, false),
    ("prove", Cue::Math, false),
    ("proof", Cue::Math, true),
    ("theorem", Cue::Math, false),
    ("lemma", Cue::Math, true),
    ("equation", Cue::Math, false),
    ("integral", Cue::Math, false),
    ("derivative", Cue::Math, false),
    ("probability", Cue::Math, false),
    ("matrix", Cue::Math, true),
    ("polynomial", Cue::Math, false),
    ("infinitely many", Cue::Math, false),
    ("prime", Cue::Math, true),
    ("primes", Cue::Math, true),
    ("step by step", Cue::MultiStep, false),
    ("step-by-step", Cue::MultiStep, false),
    ("first,", Cue::MultiStep, true),
    ("then", Cue::MultiStep, true),
    ("finally", Cue::MultiStep, true),
    ("plan", Cue::MultiStep, true),
    ("design", Cue::MultiStep, true),
    ("architecture", Cue::MultiStep, false),
    ("trade-off", Cue::MultiStep, false),
    ("tradeoff", Cue::MultiStep, false),
    ("analyze", Cue::MultiStep, false),
    ("analyse", Cue::MultiStep, false),
    ("compare", Cue::MultiStep, false),
    ("optimize", Cue::MultiStep, false),
    ("explain why", Cue::MultiStep, false),
    ("in detail", Cue::MultiStep, false),
    ("rigorous", Cue::MultiStep, false),
    ("hello", Cue::Greeting, true),
    ("hi", Cue::Greeting, true),
    ("hey", Cue::Greeting, true),
    ("thanks", Cue::Greeting, true),
    ("thank you", Cue::Greeting, true),
    ("good morning", Cue::Greeting, true),
    ("how are you", Cue::Greeting, true),
];

static MATCHER: LazyLock<Option<AhoCorasick>> = LazyLock::new(|| {
    AhoCorasickBuilder::new()
        .ascii_case_insensitive(true)
        .match_kind(MatchKind::Standard)
        .kind(Some(AhoCorasickKind::DFA))
        .build(CUES.iter().map(|(p, _, _)| p))
        .ok()
});

/// The explainable features of a request.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Features {
    /// Estimated prompt tokens.
    pub prompt_tokens: f64,
    /// Number of messages.
    pub messages: f64,
    /// User turns.
    pub user_turns: f64,
    /// Code evidence, 0..1.
    pub code: f64,
    /// Math evidence, 0..1.
    pub math: f64,
    /// Multi-step and planning cues, 0..1.
    pub multi_step: f64,
    /// Greeting or small talk, 0 or 1.
    pub greeting: f64,
    /// Tools offered.
    pub tools: f64,
    /// Requested reasoning effort: 0 (none or minimal) to 1 (high).
    pub reasoning_effort: f64,
    /// Structured output requested (`json_schema` or `json_object`), 0 or 1.
    pub structured_output: f64,
}

impl Features {
    /// The features by name, for `RequestRouted`.
    pub fn to_map(&self) -> BTreeMap<String, f64> {
        [
            ("prompt_tokens", self.prompt_tokens),
            ("messages", self.messages),
            ("user_turns", self.user_turns),
            ("code", self.code),
            ("math", self.math),
            ("multi_step", self.multi_step),
            ("greeting", self.greeting),
            ("tools", self.tools),
            ("reasoning_effort", self.reasoning_effort),
            ("structured_output", self.structured_output),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

/// A routing decision and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The chosen path.
    pub path: RoutePath,
    /// The task class (`chat`, `code`, `math`, `planning`, `tools`, `extraction`).
    pub task_class: &'static str,
    /// The features.
    pub features: Features,
    /// Score per path (fast, balanced, reasoning).
    pub scores: [f64; 3],
}

impl Decision {
    /// Scores by path name, for `RequestRouted`.
    pub fn scores_map(&self) -> BTreeMap<String, f64> {
        [
            ("fast", self.scores[0]),
            ("balanced", self.scores[1]),
            ("reasoning", self.scores[2]),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Counts cues in `text` into `counts` (code, math, multi-step, greeting).
fn scan(text: &str, counts: &mut [u32; 4]) {
    let Some(matcher) = MATCHER.as_ref() else {
        return;
    };
    let bytes = text.as_bytes();
    for m in matcher.find_overlapping_iter(text) {
        let (_, cue, whole_word) = CUES[m.pattern().as_usize()];
        if whole_word {
            let before_ok = m.start() == 0 || !is_word_byte(bytes[m.start() - 1]);
            let last = bytes[m.end() - 1];
            let after_ok =
                m.end() == bytes.len() || !is_word_byte(last) || !is_word_byte(bytes[m.end()]);
            if !before_ok || !after_ok {
                continue;
            }
        }
        counts[cue as usize] += 1;
    }
}

/// Text scanned for cues, from the most recent message backwards: what the request is about
/// shows at its end, and the bound keeps classification in microseconds for any prompt size.
pub const SCAN_BUDGET: usize = 8 * 1024;

/// The last `max` bytes of `text`, cut at a character boundary.
fn tail(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// Extracts the features of `request`.
pub fn features(request: &ChatRequest<'_>) -> Features {
    let mut counts = [0u32; 4];
    let mut chars = 0usize;
    let mut user_turns = 0usize;
    let mut budget = SCAN_BUDGET;
    for m in request.messages.iter().rev() {
        if m.role.as_str() == "user" {
            user_turns += 1;
        }
        chars += m.text_len();
        if budget > 0
            && let Some(c) = &m.content
        {
            c.for_each_text(|t| {
                let part = tail(t, budget);
                budget -= part.len();
                scan(part, &mut counts);
            });
        }
    }
    let [code, math, multi_step, greeting] = counts.map(f64::from);
    let prompt_tokens = (chars as f64 / 4.0).ceil();
    let reasoning_effort = match request.reasoning_effort.as_ref().map(|e| e.as_str()) {
        Some("high") => 1.0,
        Some("medium") => 0.5,
        Some("low") => 0.25,
        _ => 0.0,
    };
    let structured_output = match request.response_format.as_ref().map(|f| f.as_str()) {
        Some("json_schema") | Some("json_object") => 1.0,
        _ => 0.0,
    };
    Features {
        prompt_tokens,
        messages: request.messages.len() as f64,
        user_turns: user_turns as f64,
        code: (code / 3.0).min(1.0),
        math: (math / 2.0).min(1.0),
        multi_step: (multi_step / 2.0).min(1.0),
        greeting: if greeting > 0.0 && chars < 80 {
            1.0
        } else {
            0.0
        },
        tools: request.tools.len() as f64,
        reasoning_effort,
        structured_output,
    }
}

/// Scores the paths and picks one. The weights are the routing policy's, version 1.
pub fn decide(f: &Features) -> Decision {
    let size = (f.prompt_tokens / 2000.0).min(1.0);
    let tools = if f.tools > 0.0 { 1.0 } else { 0.0 };
    let depth = (f.user_turns / 10.0).min(1.0);
    let hard = 1.5 * f.math + 1.0 * f.multi_step + 0.9 * f.code + 1.5 * f.reasoning_effort;
    let fast =
        0.9 - 0.8 * hard - 0.5 * size - 0.2 * f.structured_output - 0.15 * tools - 0.2 * depth
            + 0.3 * f.greeting;
    let balanced =
        0.5 + 0.3 * f.code + 0.25 * size + 0.2 * f.structured_output + 0.2 * tools + 0.1 * depth
            - 0.4 * (hard - 1.4).max(0.0);
    let reasoning = 0.1 + 0.6 * hard + 0.1 * size - 0.3 * f.greeting;
    let scores = [fast, balanced, reasoning];
    let path = if reasoning >= balanced && reasoning >= fast {
        RoutePath::Reasoning
    } else if balanced >= fast {
        RoutePath::Balanced
    } else {
        RoutePath::Fast
    };
    let task_class = if f.math >= 0.5 {
        "math"
    } else if f.code >= 0.34 {
        "code"
    } else if f.multi_step >= 0.5 {
        "planning"
    } else if f.tools > 0.0 {
        "tools"
    } else if f.structured_output > 0.0 {
        "extraction"
    } else {
        "chat"
    };
    Decision {
        path,
        task_class,
        features: *f,
        scores,
    }
}

/// Features and decision in one call.
pub fn classify(request: &ChatRequest<'_>) -> Decision {
    decide(&features(request))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(body: &str) -> Decision {
        classify(&ChatRequest::parse(body.as_bytes()).unwrap())
    }

    fn user(text: &str) -> String {
        serde_json::json!({"model": "lumina-auto", "messages": [{"role": "user", "content": text}]})
            .to_string()
    }

    #[test]
    fn a_greeting_goes_to_fast() {
        for text in [
            "hello!",
            "Hi, how are you?",
            "thanks a lot",
            "What's the capital of France?",
        ] {
            assert_eq!(route(&user(text)).path, RoutePath::Fast, "{text}");
        }
    }

    #[test]
    fn a_multi_step_proof_goes_to_reasoning() {
        let d = route(&user(
            "Prove step by step that there are infinitely many primes, then explain why the proof \
             generalizes to primes of the form 4k+3.",
        ));
        assert_eq!(d.path, RoutePath::Reasoning, "{d:?}");
        assert_eq!(d.task_class, "math");
    }

    #[test]
    fn a_hard_coding_task_does_not_go_to_fast() {
        let d = route(&user(
            "Implement a lock-free concurrent hash map in Rust. First design the API, then write \
             the code with ```rust fences``` and analyze the memory ordering of each atomic.",
        ));
        assert_ne!(d.path, RoutePath::Fast, "{d:?}");
        assert_eq!(d.task_class, "code");
    }

    #[test]
    fn requested_reasoning_effort_and_structure_move_the_path() {
        let high = serde_json::json!({"model": "lumina-auto", "reasoning_effort": "high",
            "messages": [{"role": "user", "content": "Summarize this memo."}]});
        assert_eq!(route(&high.to_string()).path, RoutePath::Reasoning);
        let json = serde_json::json!({"model": "lumina-auto", "response_format": {"type": "json_schema", "json_schema": {}},
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "messages": [{"role": "user", "content": "Extract the invoice fields."}]});
        let d = route(&json.to_string());
        assert_eq!(d.path, RoutePath::Balanced, "{d:?}");
        assert_eq!(d.features.structured_output, 1.0);
    }

    #[test]
    fn words_inside_other_words_are_not_cues() {
        let d = route(&user("This history of the philippines"));
        assert_eq!(d.features.greeting, 0.0);
    }
}
