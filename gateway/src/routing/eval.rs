//! Figures of a classifier on a labelled routing set: accuracy, per-path precision and recall,
//! the confusion matrix, quality retained (the share of items routed to a path at least as
//! strong as labelled: fast < balanced < reasoning) and cost saved against sending everything to
//! reasoning, with relative cost weights per path. Pure arithmetic over (labelled, routed) pairs.

use std::fmt::Write as _;

use serde::Serialize;

use crate::routing::catalog::RoutePath;
use crate::routing::linear::path_index;

/// Relative cost of a request per path (fast, balanced, reasoning).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CostWeights {
    /// Cost of a fast request.
    pub fast: f64,
    /// Cost of a balanced request.
    pub balanced: f64,
    /// Cost of a reasoning request.
    pub reasoning: f64,
}

impl Default for CostWeights {
    fn default() -> Self {
        CostWeights {
            fast: 1.0,
            balanced: 5.0,
            reasoning: 20.0,
        }
    }
}

impl CostWeights {
    /// Parses `fast=1,balanced=5,reasoning=20` (any subset; the rest keep their defaults).
    pub fn parse(spec: &str) -> Result<CostWeights, String> {
        let mut w = CostWeights::default();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((name, value)) = part.split_once('=') else {
                return Err(format!("'{part}': expected path=number"));
            };
            let value: f64 = value
                .trim()
                .parse()
                .map_err(|_| format!("'{part}': not a number"))?;
            if !value.is_finite() || value < 0.0 {
                return Err(format!("'{part}': expected a number ≥ 0"));
            }
            match name.trim() {
                "fast" => w.fast = value,
                "balanced" => w.balanced = value,
                "reasoning" => w.reasoning = value,
                other => return Err(format!("'{other}': expected fast, balanced or reasoning")),
            }
        }
        if w.reasoning <= 0.0 {
            return Err("reasoning: its cost must be above 0".into());
        }
        Ok(w)
    }

    fn of(&self, path: RoutePath) -> f64 {
        [self.fast, self.balanced, self.reasoning][path_index(path)]
    }
}

/// Figures for one path.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PathFigures {
    /// Items labelled with the path.
    pub labelled: usize,
    /// Items routed to it.
    pub routed: usize,
    /// Items labelled with it and routed to it.
    pub correct: usize,
    /// correct / routed (1 when nothing was routed there).
    pub precision: f64,
    /// correct / labelled (1 when nothing is labelled so).
    pub recall: f64,
}

/// A classifier's figures on a labelled set.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RoutingReport {
    /// Items evaluated.
    pub items: usize,
    /// Share routed to the labelled path.
    pub accuracy: f64,
    /// Share routed to a path at least as strong as labelled.
    pub quality_retained: f64,
    /// 1 − cost / cost of sending every item to reasoning.
    pub cost_saved: f64,
    /// Cost of the routing, in cost-weight units.
    pub cost: f64,
    /// Cost of sending every item to reasoning.
    pub all_reasoning_cost: f64,
    /// Cost saved by routing every item exactly as labelled.
    pub labelled_cost_saved: f64,
    /// Figures per path: fast, balanced, reasoning.
    pub per_path: [PathFigures; 3],
    /// `confusion[labelled][routed]`, paths in the order fast, balanced, reasoning.
    pub confusion: [[usize; 3]; 3],
    /// The cost weights used.
    pub weights: CostWeights,
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 { 1.0 } else { a as f64 / b as f64 }
}

/// The figures of (labelled, routed) pairs.
pub fn evaluate(
    pairs: impl IntoIterator<Item = (RoutePath, RoutePath)>,
    weights: &CostWeights,
) -> RoutingReport {
    let mut confusion = [[0usize; 3]; 3];
    let (mut cost, mut labelled_cost, mut items) = (0.0, 0.0, 0usize);
    for (labelled, routed) in pairs {
        confusion[path_index(labelled)][path_index(routed)] += 1;
        cost += weights.of(routed);
        labelled_cost += weights.of(labelled);
        items += 1;
    }
    let correct: usize = (0..3).map(|i| confusion[i][i]).sum();
    let retained: usize = (0..3)
        .map(|l| (l..3).map(|r| confusion[l][r]).sum::<usize>())
        .sum();
    let per_path = std::array::from_fn(|i| {
        let labelled = confusion[i].iter().sum();
        let routed = (0..3).map(|l| confusion[l][i]).sum();
        PathFigures {
            labelled,
            routed,
            correct: confusion[i][i],
            precision: ratio(confusion[i][i], routed),
            recall: ratio(confusion[i][i], labelled),
        }
    });
    let all_reasoning_cost = items as f64 * weights.reasoning;
    let saved = |c: f64| {
        if all_reasoning_cost > 0.0 {
            1.0 - c / all_reasoning_cost
        } else {
            0.0
        }
    };
    RoutingReport {
        items,
        accuracy: ratio(correct, items),
        quality_retained: ratio(retained, items),
        cost_saved: saved(cost),
        cost,
        all_reasoning_cost,
        labelled_cost_saved: saved(labelled_cost),
        per_path,
        confusion,
        weights: *weights,
    }
}

impl RoutingReport {
    /// The report as a few lines of text for a terminal.
    pub fn render(&self) -> String {
        let names = ["fast", "balanced", "reasoning"];
        let mut out = String::new();
        let _ = writeln!(out, "items             {}", self.items);
        let _ = writeln!(out, "accuracy          {:.3}", self.accuracy);
        let _ = writeln!(out, "quality retained  {:.3}", self.quality_retained);
        let _ = writeln!(
            out,
            "cost saved        {:.1}% of all-reasoning (labelled routing: {:.1}%; weights fast={} balanced={} reasoning={})",
            100.0 * self.cost_saved,
            100.0 * self.labelled_cost_saved,
            self.weights.fast,
            self.weights.balanced,
            self.weights.reasoning
        );
        let _ = writeln!(out, "\npath        precision  recall  labelled  routed");
        for (name, f) in names.iter().zip(&self.per_path) {
            let _ = writeln!(
                out,
                "{name:<10}  {:>9.3}  {:>6.3}  {:>8}  {:>6}",
                f.precision, f.recall, f.labelled, f.routed
            );
        }
        let _ = writeln!(out, "\nlabelled \\ routed      fast  balanced  reasoning");
        for (name, row) in names.iter().zip(&self.confusion) {
            let _ = writeln!(
                out,
                "{name:<20}  {:>6}  {:>8}  {:>9}",
                row[0], row[1], row[2]
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RoutePath::{Balanced as B, Fast as F, Reasoning as R};

    #[test]
    fn figures_of_a_small_set() {
        let pairs = [(F, F), (F, B), (B, B), (B, F), (R, R), (R, B)];
        let r = evaluate(pairs, &CostWeights::default());
        assert_eq!(r.items, 6);
        assert!((r.accuracy - 0.5).abs() < 1e-12);
        assert!((r.quality_retained - 4.0 / 6.0).abs() < 1e-12);
        assert_eq!(r.cost, 1.0 + 5.0 + 5.0 + 1.0 + 20.0 + 5.0);
        assert!((r.cost_saved - (1.0 - 37.0 / 120.0)).abs() < 1e-12);
        assert_eq!(r.confusion, [[1, 1, 0], [1, 1, 0], [0, 1, 1]]);
        assert!((r.per_path[1].precision - 1.0 / 3.0).abs() < 1e-12);
        assert!((r.per_path[2].recall - 0.5).abs() < 1e-12);
        assert!(r.render().contains("quality retained  0.667"));
    }

    #[test]
    fn cost_weights_parse_and_refuse_nonsense() {
        let w = CostWeights::parse("fast=2, reasoning=40").unwrap();
        assert_eq!((w.fast, w.balanced, w.reasoning), (2.0, 5.0, 40.0));
        for bad in ["fast", "slow=1", "fast=-1", "fast=x", "reasoning=0"] {
            assert!(CostWeights::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_empty_set_has_no_figures_to_fail() {
        let r = evaluate([], &CostWeights::default());
        assert_eq!((r.items, r.cost_saved), (0, 0.0));
    }
}
