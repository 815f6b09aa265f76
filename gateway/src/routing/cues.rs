//! The hand-written `lumina-auto` classifier (policy kind `cues`, version 1): cue patterns of
//! code, math, multi-step work and greetings, counted by one case-insensitive multi-pattern scan,
//! and fixed weights over the features. The cue counts are also structural features of the
//! learned model; this module keeps the original weights so that a policy can still name them
//! and `lumina eval routing` can compare against them.

use std::sync::LazyLock;

use aho_corasick::automaton::Automaton;
use aho_corasick::dfa::DFA;
use aho_corasick::{Anchored, MatchKind};

use crate::routing::catalog::RoutePath;
use crate::routing::features::Features;

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

/// The cue patterns as one case-insensitive DFA with every match reported (`Standard`), walked
/// byte by byte in [`scan`]; no prefilter, so a special state is a match or the dead state.
static MATCHER: LazyLock<Option<DFA>> = LazyLock::new(|| {
    DFA::builder()
        .ascii_case_insensitive(true)
        .match_kind(MatchKind::Standard)
        .prefilter(false)
        .build(CUES.iter().map(|(p, _, _)| p))
        .ok()
});

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Counts cues in `text` into `counts` (code, math, multi-step, greeting): every occurrence of
/// every pattern, overlapping ones included, whole-word patterns only where they stand alone.
pub fn scan(text: &str, counts: &mut [u32; 4]) {
    let Some(dfa) = MATCHER.as_ref() else {
        return;
    };
    let Ok(mut sid) = dfa.start_state(Anchored::No) else {
        return;
    };
    let bytes = text.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        sid = dfa.next_state(Anchored::No, sid, b);
        if !dfa.is_special(sid) {
            continue;
        }
        if dfa.is_dead(sid) {
            return;
        }
        let end = i + 1;
        for m in 0..dfa.match_len(sid) {
            let pattern = dfa.match_pattern(sid, m);
            let (_, cue, whole_word) = CUES[pattern.as_usize()];
            if whole_word {
                let start = end - dfa.pattern_len(pattern);
                let before_ok = start == 0 || !is_word_byte(bytes[start - 1]);
                let after_ok =
                    end == bytes.len() || !is_word_byte(bytes[i]) || !is_word_byte(bytes[end]);
                if !before_ok || !after_ok {
                    continue;
                }
            }
            counts[cue as usize] += 1;
        }
    }
}

/// Text scanned for cues by the hand-written classifier, from the most recent message backwards.
pub const SCAN_BUDGET: usize = 8 * 1024;

/// Scores the paths with the hand-written weights: (path, score per path).
pub fn decide(f: &Features) -> (RoutePath, [f64; 3]) {
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
    (path, scores)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aho_corasick::{AhoCorasick, AhoCorasickKind};

    /// The scan as first written, with the crate's overlapping iterator: the byte walk must count
    /// exactly what it counts.
    fn scan_by_iterator(text: &str) -> [u32; 4] {
        let matcher = AhoCorasick::builder()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::Standard)
            .kind(Some(AhoCorasickKind::DFA))
            .build(CUES.iter().map(|(p, _, _)| p))
            .unwrap();
        let bytes = text.as_bytes();
        let mut counts = [0u32; 4];
        for m in matcher.find_overlapping_iter(text) {
            let (_, cue, whole_word) = CUES[m.pattern().as_usize()];
            let before_ok = m.start() == 0 || !is_word_byte(bytes[m.start() - 1]);
            let after_ok = m.end() == bytes.len()
                || !is_word_byte(bytes[m.end() - 1])
                || !is_word_byte(bytes[m.end()]);
            if !whole_word || (before_ok && after_ok) {
                counts[cue as usize] += 1;
            }
        }
        counts
    }

    #[test]
    fn the_byte_walk_counts_what_the_overlapping_iterator_counts() {
        let texts = [
            "",
            "hi",
            "Hi there, thank you! How are you?",
            "this within which chip api apis rapid",
            "Prove that there are infinitely many primes; the proof uses a lemma. prime primes",
            "fn main() { return x; } def f(): import os; class A: SELECT * FROM t => x();",
            "First, plan the design; then compare and analyze trade-offs. Finally, optimize.",
            "∫ x dx ≤ √2 ∑ $$ \\frac{a}{b} \\sqrt{2}",
            "c++ golang rust_lang rust. python3 python typescript",
            "thank youthank you hello_ hello-world good morninggood morning",
        ];
        for t in texts {
            let mut counts = [0u32; 4];
            scan(t, &mut counts);
            assert_eq!(counts, scan_by_iterator(t), "{t:?}");
        }
        let mut counts = [0u32; 4];
        scan("Prove the theorem, then plan", &mut counts);
        assert_eq!(counts, [0, 2, 2, 0]);
    }
}
