//! The `lumina-auto` classifier's entry point: a request → a [`Decision`] (path, task class,
//! features, a score per path, and the inputs that weighed most), made by the routing policy's
//! classifier: the learned linear model of the shipped policy, or the hand-written cue weights.
//! Pure: no I/O on the request path; every decision is recorded in `RequestRouted`.

use std::collections::BTreeMap;

use lumina_schemas::payloads::FeatureContribution;

use crate::routing::catalog::RoutePath;
use crate::routing::cues;
pub use crate::routing::features::Features;
use crate::routing::features::cue_features;
pub use crate::routing::linear::Contribution;
use crate::routing::policy::{self, Classifier, Policy, Prefer};
use crate::wire::ChatRequest;

/// A routing decision and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The chosen path.
    pub path: RoutePath,
    /// The task class (`chat`, `code`, `math`, `planning`, `tools`, `extraction`).
    pub task_class: &'static str,
    /// The features.
    pub features: Features,
    /// Score per path (fast, balanced, reasoning): probabilities for a learned model.
    pub scores: [f64; 3],
    /// The inputs that weighed most towards the chosen path, largest first (empty for the
    /// hand-written classifier, whose features say it all).
    pub top_features: Vec<Contribution>,
    /// The cost–quality preference the thresholds were shifted for.
    pub prefer: Prefer,
    /// The weakest and strongest path allowed, when bounded.
    pub bounds: (Option<RoutePath>, Option<RoutePath>),
    /// The classifier's own choice when the bounds moved the request to another path.
    pub classified: Option<RoutePath>,
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

    /// The top features, for `RequestRouted`.
    pub fn top_features_records(&self) -> Vec<FeatureContribution> {
        self.top_features
            .iter()
            .map(|c| FeatureContribution {
                name: c.name.clone(),
                value: c.value,
                contribution: c.contribution,
            })
            .collect()
    }
}

impl Decision {
    /// A decision the classifier had no part in: every request of its kind takes `path`, as
    /// task class `task_class` (embeddings).
    pub fn fixed(path: RoutePath, task_class: &'static str, prefer: Prefer) -> Decision {
        Decision {
            path,
            task_class,
            features: Features::default(),
            scores: [0.0; 3],
            top_features: Vec::new(),
            prefer,
            bounds: (None, None),
            classified: None,
        }
    }

    /// Keeps the path within `min` and `max` (either may be absent), noting the classifier's
    /// own choice when that moves it.
    pub fn bound(&mut self, min: Option<RoutePath>, max: Option<RoutePath>) {
        if min.is_none() && max.is_none() {
            return;
        }
        self.bounds = (min, max);
        let bounded = self.path.clamp_tier(min, max);
        if bounded != self.path {
            self.classified = Some(self.path);
            self.path = bounded;
        }
    }
}

/// The task class, from the structural features.
pub fn task_class(f: &Features) -> &'static str {
    if f.math >= 0.5 {
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
    }
}

/// Classifies `request` with the shipped default policy.
pub fn classify(request: &ChatRequest<'_>) -> Decision {
    classify_with(request, policy::default_policy())
}

/// Classifies `request` with `policy`'s classifier.
pub fn classify_with(request: &ChatRequest<'_>, policy: &Policy) -> Decision {
    classify_preferring(request, policy, policy.prefer)
}

/// Classifies `request` with `policy`'s classifier, its thresholds shifted for `prefer` (the
/// hand-written classifier has no thresholds to shift).
pub fn classify_preferring(request: &ChatRequest<'_>, policy: &Policy, prefer: Prefer) -> Decision {
    match &policy.classifier {
        Classifier::Cues => {
            let features = cue_features(request);
            let (path, scores) = cues::decide(&features);
            Decision {
                path,
                task_class: task_class(&features),
                features,
                scores,
                top_features: Vec::new(),
                prefer,
                bounds: (None, None),
                classified: None,
            }
        }
        Classifier::Linear(model) => {
            let scored = model.classify_at(request, model.thresholds.shifted(prefer.shift()));
            Decision {
                path: scored.path,
                task_class: task_class(&scored.features),
                features: scored.features,
                scores: scored.probabilities,
                top_features: scored.top,
                prefer,
                bounds: (None, None),
                classified: None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(body: &str) -> ChatRequest<'_> {
        ChatRequest::parse(body.as_bytes()).unwrap()
    }

    fn user(text: &str) -> String {
        serde_json::json!({"model": "lumina-auto", "messages": [{"role": "user", "content": text}]})
            .to_string()
    }

    fn learned(text: &str) -> Decision {
        classify(&request(&user(text)))
    }

    fn cues(body: &str) -> Decision {
        classify_with(&request(body), &Policy::cues())
    }

    #[test]
    fn the_default_policy_is_the_learned_one() {
        assert!(matches!(
            policy::default_policy().classifier,
            Classifier::Linear(_)
        ));
        assert!(policy::default_policy().version > policy::CUES_VERSION);
    }

    #[test]
    fn small_talk_and_lookups_go_to_fast() {
        for text in [
            "hello!",
            "Hi, how are you?",
            "thanks a lot",
            "What's the capital of Peru?",
        ] {
            assert_eq!(learned(text).path, RoutePath::Fast, "{text}");
        }
    }

    #[test]
    fn everyday_writing_goes_to_balanced() {
        let d = learned(
            "Write an email to the caretaker asking him to repair the broken door lock of the \
             bike shed, friendly but clear that it's been a month.",
        );
        assert_eq!(d.path, RoutePath::Balanced, "{d:?}");
    }

    #[test]
    fn short_hard_prompts_go_to_reasoning() {
        for text in [
            "Prove that there are infinitely many primes of the form 6k+5.",
            "Design a lock-free bounded queue for many producers and consumers and argue its correctness.",
        ] {
            let d = learned(text);
            assert_eq!(d.path, RoutePath::Reasoning, "{text}: {d:?}");
        }
    }

    #[test]
    fn every_learned_decision_has_probabilities_and_names_its_top_features() {
        let d = learned("Prove that the square root of 5 is irrational.");
        assert!(
            (d.scores.iter().sum::<f64>() - 1.0).abs() < 1e-9,
            "{:?}",
            d.scores
        );
        assert!(!d.top_features.is_empty() && d.top_features.len() <= 5);
        assert!(
            d.top_features.iter().any(|c| c.name.starts_with("word:")
                || c.name.starts_with("bigram:")
                || c.name.starts_with("bytes:")),
            "{:?}",
            d.top_features
        );
        assert_eq!(d.top_features_records().len(), d.top_features.len());
    }

    #[test]
    fn inference_is_pure() {
        let body = user("Summarize the attached minutes in three bullets.");
        let r = request(&body);
        let first = classify(&r);
        for _ in 0..3 {
            assert_eq!(classify(&r), first);
        }
    }

    #[test]
    fn any_input_is_classified_without_panicking() {
        let huge = "ü".repeat(100_000);
        for body in [
            user(""),
            user(&huge),
            user("```\n\n```"),
            serde_json::json!({"model": "m", "messages": [{"role": "assistant", "content": "x"}]}).to_string(),
            serde_json::json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "héllo 水"}, {"type": "image_url", "image_url": {"url": "https://x"}}]}]}).to_string(),
        ] {
            let d = classify(&request(&body));
            assert!(d.scores.iter().all(|s| s.is_finite()));
        }
    }

    #[test]
    fn the_cue_classifier_sends_greetings_to_fast() {
        for text in [
            "hello!",
            "Hi, how are you?",
            "thanks a lot",
            "What's the capital of France?",
        ] {
            assert_eq!(cues(&user(text)).path, RoutePath::Fast, "{text}");
        }
    }

    #[test]
    fn the_cue_classifier_sends_a_multi_step_proof_to_reasoning() {
        let d = cues(&user(
            "Prove step by step that there are infinitely many primes, then explain why the proof \
             generalizes to primes of the form 4k+3.",
        ));
        assert_eq!(d.path, RoutePath::Reasoning, "{d:?}");
        assert_eq!(d.task_class, "math");
    }

    #[test]
    fn the_cue_classifier_keeps_hard_code_off_fast() {
        let d = cues(&user(
            "Implement a lock-free concurrent hash map in Rust. First design the API, then write \
             the code with ```rust fences``` and analyze the memory ordering of each atomic.",
        ));
        assert_ne!(d.path, RoutePath::Fast, "{d:?}");
        assert_eq!(d.task_class, "code");
    }

    #[test]
    fn the_cue_classifier_follows_effort_and_structure() {
        let high = serde_json::json!({"model": "lumina-auto", "reasoning_effort": "high",
            "messages": [{"role": "user", "content": "Summarize this memo."}]});
        assert_eq!(cues(&high.to_string()).path, RoutePath::Reasoning);
        let json = serde_json::json!({"model": "lumina-auto", "response_format": {"type": "json_schema", "json_schema": {}},
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "messages": [{"role": "user", "content": "Extract the invoice fields."}]});
        let d = cues(&json.to_string());
        assert_eq!(d.path, RoutePath::Balanced, "{d:?}");
        assert_eq!(d.features.structured_output, 1.0);
    }

    #[test]
    fn words_inside_other_words_are_not_cues() {
        let d = cues(&user("This history of the philippines"));
        assert_eq!(d.features.greeting, 0.0);
    }
}
