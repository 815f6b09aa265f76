//! What an eval run found: one [`Outcome`] per item × model, folded into a summary per model
//! (items, pass rate, mean score, exact cost of the answers and of the judge, latency
//! quantiles) and rendered as a table for people or JSON for programs.

use std::fmt::Write as _;

use lumina_gateway::api::evals::CheckKind;
use lumina_schemas::NanoCredits;
use serde::Serialize;

use crate::eval_run::check::Score;
use crate::eval_run::gateway::Answered;

/// One item sent to one model.
#[derive(Debug)]
pub struct Outcome {
    /// The item's position in the dataset.
    pub item: usize,
    /// The model's position in `--models`.
    pub model: usize,
    /// The item's id.
    pub item_id: String,
    /// How it is scored.
    pub check: CheckKind,
    /// The item's answer, when the gateway gave one.
    pub answer: Option<Answered>,
    /// The judge's answer, for judge checks that got one.
    pub judge: Option<Answered>,
    /// The score, when the answer could be scored.
    pub score: Option<Score>,
    /// Why the item has no score.
    pub error: Option<String>,
    /// Whether the gateway could not be reached at all.
    pub unreachable: bool,
    /// The `EvalCompleted` event that recorded it.
    pub event_id: Option<String>,
}

impl Outcome {
    fn cost(&self) -> NanoCredits {
        self.answer.as_ref().map_or(NanoCredits::ZERO, |a| a.cost)
    }

    fn judge_cost(&self) -> NanoCredits {
        self.judge.as_ref().map_or(NanoCredits::ZERO, |a| a.cost)
    }
}

/// Latency quantiles, milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
}

/// One model's figures.
#[derive(Debug, Serialize)]
pub struct ModelSummary {
    /// The model.
    pub model: String,
    /// Items sent.
    pub items: usize,
    /// Items scored.
    pub scored: usize,
    /// Items without a score (no answer, or a judge that gave none).
    pub errors: usize,
    /// Scored items that passed.
    pub passed: usize,
    /// `passed / scored`.
    pub pass_rate: Option<f64>,
    /// Mean score of the scored items.
    pub mean_score: Option<f64>,
    /// What the answers cost, credits (exact decimal).
    pub cost: String,
    /// The same in nano-credits.
    pub cost_nano: i64,
    /// What the judge's requests cost, credits (exact decimal).
    pub judge_cost: String,
    /// The same in nano-credits.
    pub judge_cost_nano: i64,
    /// Latency of the answers, as this client measured it.
    pub latency_ms: Option<Latency>,
}

/// One item × model, for `--json`.
#[derive(Debug, Serialize)]
pub struct ResultLine<'a> {
    item_id: &'a str,
    model: &'a str,
    check_kind: &'static str,
    score: Option<f64>,
    passed: Option<bool>,
    request_id: Option<&'a str>,
    path: Option<&'a str>,
    deployment: Option<&'a str>,
    cost_nano: i64,
    latency_ms: Option<f64>,
    judge_request_id: Option<&'a str>,
    judge_cost_nano: Option<i64>,
    event_id: Option<&'a str>,
    error: Option<&'a str>,
}

/// The whole run.
#[derive(Debug, Serialize)]
pub struct Report<'a> {
    /// The run's id, as in every `EvalCompleted` it wrote.
    pub run_id: &'a str,
    /// The dataset's name.
    pub dataset: &'a str,
    /// Items in the dataset.
    pub items: usize,
    /// Per model, in `--models` order.
    pub models: Vec<ModelSummary>,
    /// `lumina-fusion` against the best other model, when the run has both.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fusion: Option<FusionComparison>,
    /// Per item × model, in dataset order.
    pub results: Vec<ResultLine<'a>>,
}

/// Model Fusion weighed against the best single model of the same run, on the same items:
/// whether the panel is worth its cost.
#[derive(Debug, Serialize)]
pub struct FusionComparison {
    /// The Fusion model (`lumina-fusion`).
    pub model: String,
    /// The other model with the highest mean score (the cheaper one on a tie).
    pub versus: String,
    /// Fusion's mean score minus the other's.
    pub mean_score_delta: Option<f64>,
    /// Fusion's pass rate minus the other's.
    pub pass_rate_delta: Option<f64>,
    /// What Fusion cost beyond the other over the run, credits (exact decimal; negative when
    /// cheaper).
    pub extra_cost: String,
    /// Fusion's cost over the other's (none when the other cost nothing).
    pub cost_ratio: Option<f64>,
    /// Fusion's median latency over the other's.
    pub p50_ratio: Option<f64>,
}

/// The model of the Fusion panel.
pub const FUSION_MODEL: &str = "lumina-fusion";

/// `lumina-fusion`'s summary weighed against the best of the other models in `models`.
pub fn compare_fusion(models: &[ModelSummary]) -> Option<FusionComparison> {
    let fusion = models.iter().find(|m| m.model == FUSION_MODEL)?;
    let versus = models
        .iter()
        .filter(|m| m.model != FUSION_MODEL)
        .max_by(|a, b| {
            let score = |m: &ModelSummary| m.mean_score.unwrap_or(f64::NEG_INFINITY);
            score(a)
                .total_cmp(&score(b))
                .then(b.cost_nano.cmp(&a.cost_nano))
        })?;
    let delta = |a: Option<f64>, b: Option<f64>| Some(a? - b?);
    let ratio = |a: f64, b: f64| (b > 0.0).then(|| a / b);
    Some(FusionComparison {
        model: fusion.model.clone(),
        versus: versus.model.clone(),
        mean_score_delta: delta(fusion.mean_score, versus.mean_score),
        pass_rate_delta: delta(fusion.pass_rate, versus.pass_rate),
        extra_cost: NanoCredits(fusion.cost_nano.saturating_sub(versus.cost_nano)).to_string(),
        cost_ratio: ratio(fusion.cost_nano as f64, versus.cost_nano as f64),
        p50_ratio: match (&fusion.latency_ms, &versus.latency_ms) {
            (Some(f), Some(v)) => ratio(f.p50, v.p50),
            _ => None,
        },
    })
}

impl FusionComparison {
    /// One line for people.
    fn render(&self) -> String {
        let signed = |v: Option<f64>, scale: f64, unit: &str| {
            v.map_or("-".into(), |v| format!("{:+.3}{unit}", v * scale))
        };
        let times = |v: Option<f64>| v.map_or("-".into(), |v| format!("×{v:.2}"));
        format!(
            "{} vs {} (the best single model): mean score {}, pass rate {}, cost {} ({} credits more), p50 latency {}\n",
            self.model,
            self.versus,
            signed(self.mean_score_delta, 1.0, ""),
            signed(self.pass_rate_delta, 100.0, " pts"),
            times(self.cost_ratio),
            self.extra_cost,
            times(self.p50_ratio),
        )
    }
}

/// The value at quantile `q` of sorted `values` (nearest rank).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Sums `amounts` exactly (saturating: a run cannot spend past an `i64` of nano-credits).
fn total(amounts: impl Iterator<Item = NanoCredits>) -> NanoCredits {
    amounts.fold(NanoCredits::ZERO, |sum, a| {
        sum.checked_add(a).unwrap_or(NanoCredits(i64::MAX))
    })
}

/// Folds the outcomes of `model` into its summary.
pub fn summarize(model: &str, outcomes: &[&Outcome]) -> ModelSummary {
    let scores: Vec<Score> = outcomes.iter().filter_map(|o| o.score).collect();
    let passed = scores.iter().filter(|s| s.passed).count();
    let mut latencies: Vec<f64> = outcomes
        .iter()
        .filter_map(|o| o.answer.as_ref().map(|a| a.latency_ms))
        .collect();
    latencies.sort_by(f64::total_cmp);
    let cost = total(outcomes.iter().map(|o| o.cost()));
    let judge_cost = total(outcomes.iter().map(|o| o.judge_cost()));
    let share = |n: f64| (!scores.is_empty()).then(|| n / scores.len() as f64);
    ModelSummary {
        model: model.to_string(),
        items: outcomes.len(),
        scored: scores.len(),
        errors: outcomes.len() - scores.len(),
        passed,
        pass_rate: share(passed as f64),
        mean_score: share(scores.iter().map(|s| s.score).sum()),
        cost: cost.to_string(),
        cost_nano: cost.0,
        judge_cost: judge_cost.to_string(),
        judge_cost_nano: judge_cost.0,
        latency_ms: (!latencies.is_empty()).then(|| Latency {
            p50: quantile(&latencies, 0.5),
            p95: quantile(&latencies, 0.95),
        }),
    }
}

/// The `--json` line of one outcome.
pub fn result_line<'a>(o: &'a Outcome, model: &'a str) -> ResultLine<'a> {
    ResultLine {
        item_id: &o.item_id,
        model,
        check_kind: o.check.as_str(),
        score: o.score.map(|s| s.score),
        passed: o.score.map(|s| s.passed),
        request_id: o.answer.as_ref().map(|a| a.request_id.as_str()),
        path: o.answer.as_ref().map(|a| a.path.as_str()),
        deployment: o.answer.as_ref().map(|a| a.deployment.as_str()),
        cost_nano: o.cost().0,
        latency_ms: o.answer.as_ref().map(|a| a.latency_ms),
        judge_request_id: o.judge.as_ref().map(|j| j.request_id.as_str()),
        judge_cost_nano: o.judge.as_ref().map(|j| j.cost.0),
        event_id: o.event_id.as_deref(),
        error: o.error.as_deref(),
    }
}

impl Report<'_> {
    /// The table for people.
    pub fn render(&self) -> String {
        let mut out = format!(
            "dataset {} — {} items × {} models, run {}\n\n",
            self.dataset,
            self.items,
            self.models.len(),
            self.run_id
        );
        let header = [
            "model",
            "items",
            "scored",
            "errors",
            "pass rate",
            "mean score",
            "cost (credits)",
            "judge cost",
            "p50 ms",
            "p95 ms",
        ];
        let rows: Vec<[String; 10]> = self
            .models
            .iter()
            .map(|m| {
                let pct = |v: Option<f64>| v.map_or("-".into(), |v| format!("{:.1}%", 100.0 * v));
                let ms = |f: fn(&Latency) -> f64| {
                    m.latency_ms
                        .as_ref()
                        .map_or("-".into(), |l| format!("{:.1}", f(l)))
                };
                [
                    m.model.clone(),
                    m.items.to_string(),
                    m.scored.to_string(),
                    m.errors.to_string(),
                    pct(m.pass_rate),
                    m.mean_score.map_or("-".into(), |s| format!("{s:.3}")),
                    m.cost.clone(),
                    m.judge_cost.clone(),
                    ms(|l| l.p50),
                    ms(|l| l.p95),
                ]
            })
            .collect();
        let widths: Vec<usize> = (0..header.len())
            .map(|i| {
                rows.iter()
                    .map(|r| r[i].chars().count())
                    .chain([header[i].chars().count()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut line = |cells: &[&str]| {
            for (i, cell) in cells.iter().enumerate() {
                let pad = widths[i] - cell.chars().count();
                let sep = if i + 1 == cells.len() { "" } else { "  " };
                if i == 0 {
                    let _ = write!(out, "{cell}{}{sep}", " ".repeat(pad));
                } else {
                    let _ = write!(out, "{}{cell}{sep}", " ".repeat(pad));
                }
            }
            out.push('\n');
        };
        line(&header);
        for row in &rows {
            let cells: Vec<&str> = row.iter().map(String::as_str).collect();
            line(&cells);
        }
        if let Some(f) = &self.fusion {
            out.push('\n');
            out.push_str(&f.render());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(score: Option<f64>, cost: i64, judge: Option<i64>, latency: f64) -> Outcome {
        let answer = |cost: i64| Answered {
            request_id: "req_1".into(),
            text: String::new(),
            cost: NanoCredits(cost),
            path: "fast".into(),
            deployment: "d".into(),
            latency_ms: latency,
        };
        Outcome {
            item: 0,
            model: 0,
            item_id: "i".into(),
            check: CheckKind::Exact,
            answer: Some(answer(cost)),
            judge: judge.map(answer),
            score: score.map(|s| Score {
                score: s,
                passed: s >= 0.5,
            }),
            error: score.is_none().then(|| "no score".to_string()),
            unreachable: false,
            event_id: None,
        }
    }

    #[test]
    fn a_summary_adds_costs_exactly_and_counts_errors_apart() {
        let all = [
            outcome(Some(1.0), 1, None, 10.0),
            outcome(Some(0.0), 2, Some(100_000_000), 20.0),
            outcome(None, 999_999_997, Some(3), 30.0),
        ];
        let refs: Vec<&Outcome> = all.iter().collect();
        let s = summarize("lumina-fast", &refs);
        assert_eq!((s.items, s.scored, s.errors, s.passed), (3, 2, 1, 1));
        assert_eq!(s.pass_rate, Some(0.5));
        assert_eq!(s.mean_score, Some(0.5));
        assert_eq!(s.cost, "1");
        assert_eq!(s.cost_nano, 1_000_000_000);
        assert_eq!(s.judge_cost, "0.100000003");
        assert_eq!(
            s.latency_ms,
            Some(Latency {
                p50: 20.0,
                p95: 30.0
            })
        );
    }

    #[test]
    fn the_table_has_a_row_per_model_under_aligned_headers() {
        let all = [outcome(Some(1.0), 5, None, 12.0)];
        let refs: Vec<&Outcome> = all.iter().collect();
        let report = Report {
            run_id: "run_1",
            dataset: "smoke",
            items: 1,
            models: vec![summarize("lumina-fast", &refs)],
            fusion: None,
            results: Vec::new(),
        };
        let text = report.render();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[2].starts_with("model"));
        assert!(lines[3].starts_with("lumina-fast"));
        assert!(lines[3].contains("100.0%") && lines[3].contains("0.000000005"));
        assert_eq!(lines[2].len(), lines[3].len());
    }

    #[test]
    fn fusion_is_weighed_against_the_best_scoring_single_model() {
        let of = |score: f64, cost: i64, latency: f64| [outcome(Some(score), cost, None, latency)];
        let (fusion, strong, weak) = (of(1.0, 9, 30.0), of(0.5, 3, 10.0), of(0.0, 1, 5.0));
        let summaries = vec![
            summarize("lumina-fast", &weak.iter().collect::<Vec<_>>()),
            summarize(FUSION_MODEL, &fusion.iter().collect::<Vec<_>>()),
            summarize("lumina-reasoning", &strong.iter().collect::<Vec<_>>()),
        ];
        let c = compare_fusion(&summaries).unwrap();
        assert_eq!(c.versus, "lumina-reasoning");
        assert_eq!(c.mean_score_delta, Some(0.5));
        assert_eq!(c.extra_cost, "0.000000006");
        assert_eq!(c.cost_ratio, Some(3.0));
        assert_eq!(c.p50_ratio, Some(3.0));
        let line = c.render();
        assert!(
            line.starts_with("lumina-fusion vs lumina-reasoning"),
            "{line}"
        );
        assert!(
            line.contains("mean score +0.500") && line.contains("cost ×3.00"),
            "{line}"
        );
        assert!(compare_fusion(&summaries[..1]).is_none());
        assert!(compare_fusion(&summaries[1..2]).is_none());
    }
}
