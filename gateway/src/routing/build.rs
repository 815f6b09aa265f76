//! Building a candidate policy from traffic: deployment weights from each deployment's recent
//! health and speed on each path, and per-task-class path floors from feedback. Pure and
//! deterministic: the same samples and base give the same document, byte for byte, so a
//! rebuilt read model gives the same policy.
//!
//! Within a path, a deployment's score is `(best p90 / its p90)² × (1 − error rate)²`, relative
//! to the best of the path; below [`MIN_SHARE`] of the best it gets no first attempts (it
//! stays a fallback). A deployment with fewer than [`MIN_ATTEMPTS`] attempts keeps a full
//! weight (nothing is known against it). A task class whose answers on a path got a mean
//! score (feedback and eval results together) below [`BAD_FEEDBACK`] over at least
//! [`MIN_FEEDBACK`] scores is raised to the next stronger path; floors already in the base
//! policy stay.

use std::collections::BTreeMap;

use lumina_projector::policies::{AttemptSample, FeedbackSample};
use serde_json::json;

use crate::config::PATHS;
use crate::routing::catalog::RoutePath;
use crate::routing::policy::{DeploymentWeight, PathBounds, PolicyDocument};

/// Least attempts of a deployment on a path before its figures count.
pub const MIN_ATTEMPTS: usize = 5;

/// Least share of the best deployment's score that still gets first attempts.
pub const MIN_SHARE: f64 = 0.05;

/// Least feedback scores of a task class on a path before they count.
pub const MIN_FEEDBACK: usize = 5;

/// Mean feedback score below which a task class is moved to a stronger path.
pub const BAD_FEEDBACK: f64 = 0.5;

/// What a candidate is built from.
pub struct BuildInput<'a> {
    /// The policy it starts from (classifier, preference, floors): the active one, or a
    /// freshly trained one.
    pub base: PolicyDocument,
    /// The version of the candidate.
    pub version: i64,
    /// Upstream attempts of the period.
    pub attempts: &'a [AttemptSample],
    /// Feedback of the period.
    pub feedback: &'a [FeedbackSample],
    /// Eval scores of the period (`lumina eval run`), weighed as feedback is.
    pub evals: &'a [FeedbackSample],
    /// Start of the period, µs since the epoch (recorded in `built_from`).
    pub since: i64,
}

#[derive(Default)]
struct DeploymentFigures {
    attempts: usize,
    ok: usize,
    timeouts: usize,
    fallbacks: usize,
    latencies_us: Vec<i64>,
}

impl DeploymentFigures {
    fn error_rate(&self) -> f64 {
        (self.attempts - self.ok) as f64 / self.attempts as f64
    }

    /// The 90th percentile of answered attempts' durations (nearest rank), µs.
    fn p90_us(&mut self) -> Option<i64> {
        if self.latencies_us.is_empty() {
            return None;
        }
        self.latencies_us.sort_unstable();
        let rank = (self.latencies_us.len() * 9).div_ceil(10).max(1);
        Some(self.latencies_us[rank - 1].max(1))
    }
}

fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

/// The candidate policy.
pub fn build(input: BuildInput<'_>) -> PolicyDocument {
    let mut doc = input.base;
    let base_version = doc.version;
    doc.version = input.version;
    doc.routes = deployment_weights(input.attempts);
    let scores: Vec<&FeedbackSample> = input.feedback.iter().chain(input.evals).collect();
    let floors = feedback_floors(&scores);
    let raised: Vec<String> = floors.keys().cloned().collect();
    for (class, bounds) in floors {
        let entry = doc.task_classes.entry(class).or_default();
        let stronger = match (&entry.min_path, &bounds.min_path) {
            (Some(old), Some(new)) => rank(new) > rank(old),
            _ => true,
        };
        if stronger {
            *entry = PathBounds {
                max_path: entry.max_path.take(),
                fusion: entry.fusion,
                ..bounds
            };
        }
    }
    doc.built_from = Some(json!({
        "base_version": base_version,
        "since": input.since,
        "attempts": input.attempts.len(),
        "feedback": input.feedback.len(),
        "evals": input.evals.len(),
        "raised_task_classes": raised,
    }));
    doc
}

fn rank(path: &str) -> u8 {
    RoutePath::parse_tier(path).map_or(0, RoutePath::rank)
}

/// Per path, its deployments by weight, heaviest first (ties by id).
fn deployment_weights(attempts: &[AttemptSample]) -> BTreeMap<String, Vec<DeploymentWeight>> {
    let mut figures: BTreeMap<(&str, &str), DeploymentFigures> = BTreeMap::new();
    for a in attempts {
        let f = figures
            .entry((a.path.as_str(), a.deployment.as_str()))
            .or_default();
        f.attempts += 1;
        if a.ok {
            f.ok += 1;
            f.latencies_us.push(a.duration_us);
        }
        if a.error_class.as_deref() == Some("timeout") {
            f.timeouts += 1;
        }
        if a.fell_back {
            f.fallbacks += 1;
        }
    }
    let mut routes = BTreeMap::new();
    for path in PATHS {
        let mut scored: Vec<(&str, Option<f64>, serde_json::Value)> = Vec::new();
        let mut p90s: Vec<(&str, Option<i64>)> = Vec::new();
        for ((_, deployment), f) in figures.iter_mut().filter(|((p, _), _)| *p == path.as_str()) {
            let p90 = f.p90_us();
            p90s.push((deployment, p90));
            let stats = json!({
                "attempts": f.attempts,
                "p90_ms": p90.map(|us| round4(us as f64 / 1000.0)),
                "error_rate": round4(f.error_rate()),
                "timeout_rate": round4(f.timeouts as f64 / f.attempts as f64),
                "fallback_rate": round4(f.fallbacks as f64 / f.attempts as f64),
            });
            scored.push((deployment, None, stats));
        }
        if scored.is_empty() {
            continue;
        }
        let known = |d: &str| {
            figures
                .get(&(path.as_str(), d))
                .is_some_and(|f| f.attempts >= MIN_ATTEMPTS)
        };
        let best_p90 = p90s
            .iter()
            .filter(|(d, _)| known(d))
            .filter_map(|(_, p)| *p)
            .min();
        for (deployment, score, _) in &mut scored {
            let f = &figures[&(path.as_str(), *deployment)];
            *score = Some(if !known(deployment) {
                1.0
            } else {
                let p90 = p90s
                    .iter()
                    .find(|(d, _)| d == deployment)
                    .and_then(|(_, p)| *p);
                match (best_p90, p90) {
                    (Some(best), Some(p90)) => {
                        let speed = best as f64 / p90 as f64;
                        speed * speed * (1.0 - f.error_rate()).powi(2)
                    }
                    _ => 0.0,
                }
            });
        }
        let top = scored
            .iter()
            .filter_map(|(_, s, _)| *s)
            .fold(0.0f64, f64::max);
        let mut weights: Vec<DeploymentWeight> = scored
            .into_iter()
            .map(|(id, score, stats)| {
                let share = if top > 0.0 {
                    score.unwrap_or(0.0) / top
                } else {
                    0.0
                };
                DeploymentWeight {
                    id: id.to_string(),
                    weight: if share < MIN_SHARE {
                        0.0
                    } else {
                        round4(share)
                    },
                    stats: Some(stats),
                }
            })
            .collect();
        weights.sort_by(|a, b| b.weight.total_cmp(&a.weight).then(a.id.cmp(&b.id)));
        routes.insert(path.as_str().to_string(), weights);
    }
    routes
}

/// Task classes whose feedback on a path was bad, with the next stronger path as their floor.
fn feedback_floors(feedback: &[&FeedbackSample]) -> BTreeMap<String, PathBounds> {
    let mut sums: BTreeMap<(&str, &str), (usize, f64)> = BTreeMap::new();
    for f in feedback {
        let entry = sums
            .entry((f.task_class.as_str(), f.path.as_str()))
            .or_default();
        entry.0 += 1;
        entry.1 += f.score.clamp(0.0, 1.0);
    }
    let mut floors: BTreeMap<String, PathBounds> = BTreeMap::new();
    for ((class, path), (n, sum)) in sums {
        let mean = sum / n as f64;
        let next = match path {
            "fast" => "balanced",
            "balanced" => "reasoning",
            _ => continue,
        };
        if n < MIN_FEEDBACK || mean >= BAD_FEEDBACK {
            continue;
        }
        let stronger = floors
            .get(class)
            .and_then(|b| b.min_path.as_deref())
            .is_none_or(|old| rank(next) > rank(old));
        if stronger {
            floors.insert(
                class.to_string(),
                PathBounds {
                    min_path: Some(next.to_string()),
                    max_path: None,
                    fusion: false,
                    reason: Some(format!(
                        "mean feedback and eval score {:.2} over {n} answers on {path}",
                        round4(mean)
                    )),
                },
            );
        }
    }
    floors
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::policy::{DEFAULT_POLICY_JSON, Policy};

    fn attempt(deployment: &str, ms: i64, ok: bool) -> AttemptSample {
        AttemptSample {
            path: "balanced".into(),
            task_class: "chat".into(),
            deployment: deployment.into(),
            duration_us: ms * 1000,
            ok,
            error_class: (!ok).then(|| "timeout".to_string()),
            fell_back: !ok,
        }
    }

    fn base() -> PolicyDocument {
        serde_json::from_str(DEFAULT_POLICY_JSON).unwrap()
    }

    fn candidate(attempts: &[AttemptSample], feedback: &[FeedbackSample]) -> PolicyDocument {
        build(BuildInput {
            base: base(),
            version: 7,
            attempts,
            feedback,
            evals: &[],
            since: 0,
        })
    }

    #[test]
    fn bad_eval_scores_raise_a_task_class_as_feedback_does() {
        let evals: Vec<FeedbackSample> = (0..5)
            .map(|i| FeedbackSample {
                path: "balanced".into(),
                task_class: "math".into(),
                score: if i == 0 { 1.0 } else { 0.2 },
            })
            .collect();
        let doc = build(BuildInput {
            base: base(),
            version: 7,
            attempts: &[],
            feedback: &[],
            evals: &evals,
            since: 0,
        });
        assert_eq!(
            doc.task_classes["math"].min_path.as_deref(),
            Some("reasoning")
        );
    }

    #[test]
    fn a_slow_deployment_loses_its_first_attempts_and_a_fast_one_takes_them() {
        let mut attempts = Vec::new();
        for i in 0..20 {
            attempts.push(attempt("a/slow", 400 + i, true));
            attempts.push(attempt("b/quick", 20 + i, true));
        }
        let doc = candidate(&attempts, &[]);
        let balanced = &doc.routes["balanced"];
        assert_eq!(balanced[0].id, "b/quick");
        assert_eq!(balanced[0].weight, 1.0);
        assert_eq!(balanced[1].id, "a/slow");
        assert_eq!(balanced[1].weight, 0.0, "{balanced:?}");
        Policy::from_document(&doc).unwrap();
    }

    #[test]
    fn errors_cost_weight_and_unknown_deployments_keep_theirs() {
        let mut attempts = Vec::new();
        for i in 0..10 {
            attempts.push(attempt("a/flaky", 50, i % 4 != 0));
            attempts.push(attempt("b/steady", 50, true));
        }
        attempts.push(attempt("c/new", 900, true));
        let doc = candidate(&attempts, &[]);
        let w: BTreeMap<&str, f64> = doc.routes["balanced"]
            .iter()
            .map(|d| (d.id.as_str(), d.weight))
            .collect();
        assert_eq!(w["b/steady"], 1.0);
        assert!(w["a/flaky"] > 0.4 && w["a/flaky"] < 0.7, "{w:?}");
        assert_eq!(w["c/new"], 1.0, "too few attempts to judge");
    }

    #[test]
    fn bad_feedback_raises_a_task_class_and_good_feedback_does_not() {
        let fb = |class: &str, path: &str, score: f64| FeedbackSample {
            path: path.into(),
            task_class: class.into(),
            score,
        };
        let mut feedback: Vec<FeedbackSample> =
            (0..6).map(|_| fb("extraction", "fast", 0.0)).collect();
        feedback.extend((0..6).map(|_| fb("chat", "fast", 1.0)));
        feedback.extend((0..3).map(|_| fb("code", "fast", 0.0)));
        let doc = candidate(&[], &feedback);
        assert_eq!(
            doc.task_classes["extraction"].min_path.as_deref(),
            Some("balanced")
        );
        assert!(!doc.task_classes.contains_key("chat"));
        assert!(!doc.task_classes.contains_key("code"), "too few scores");
        let policy = Policy::from_document(&doc).unwrap();
        assert_eq!(policy.bounds("extraction").0, Some(RoutePath::Balanced));
    }

    #[test]
    fn the_same_samples_give_the_same_bytes() {
        let attempts: Vec<AttemptSample> = (0..30)
            .map(|i| attempt(if i % 2 == 0 { "a/x" } else { "b/y" }, 10 + i, true))
            .collect();
        let one = candidate(&attempts, &[]).to_json().unwrap();
        let two = candidate(&attempts, &[]).to_json().unwrap();
        assert_eq!(one, two);
    }
}
