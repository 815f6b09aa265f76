//! The learned `lumina-auto` classifier: a softmax-linear model over the structural features and
//! hashed word and character n-grams of the request's user text. Inference is pure arithmetic
//! over weights loaded once: one pass over a bounded text window, one table lookup per n-gram,
//! and the largest contributions kept on the way so every decision can say why.

use crate::routing::catalog::RoutePath;
use crate::routing::features::{self, Features, Gram, NgramSpec, STRUCTURAL};
use crate::wire::ChatRequest;

/// The paths a linear model scores, in the order of its weight columns.
pub const PATHS: [RoutePath; 3] = [RoutePath::Fast, RoutePath::Balanced, RoutePath::Reasoning];

/// How many contributions a decision explains itself with.
pub const TOP_FEATURES: usize = 5;

/// Probability cut-offs from the scores to a path, strongest path first: `reasoning` when its
/// probability reaches `reasoning`, else `balanced` when balanced and reasoning together reach
/// `balanced`, else `fast`. Lower cut-offs trade cost for quality.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// Least probability of `reasoning` that routes there.
    pub reasoning: f64,
    /// Least probability of `balanced` or stronger that routes to `balanced`.
    pub balanced: f64,
}

impl Thresholds {
    /// The path for probabilities (fast, balanced, reasoning).
    pub fn choose(&self, p: [f64; 3]) -> RoutePath {
        if p[2] >= self.reasoning {
            RoutePath::Reasoning
        } else if p[1] + p[2] >= self.balanced {
            RoutePath::Balanced
        } else {
            RoutePath::Fast
        }
    }
}

/// One input's share of a decision: its value times its weight for the chosen path.
#[derive(Debug, Clone, PartialEq)]
pub struct Contribution {
    /// A structural feature's name, or `word:`, `bigram:` or `chars:` and the n-gram's text.
    pub name: String,
    /// The input's value.
    pub value: f64,
    /// Value × weight for the chosen path (positive: pushed towards it).
    pub contribution: f64,
}

/// A trained linear model, ready for inference.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearModel {
    /// Hash buckets (a power of two).
    pub buckets: usize,
    /// The n-grams read.
    pub ngrams: NgramSpec,
    /// Bytes of user text read.
    pub window: usize,
    /// Bias per path.
    pub bias: [f32; 3],
    /// Weights of the structural inputs, in [`STRUCTURAL`] order.
    pub structural: [[f32; 3]; STRUCTURAL.len()],
    /// Weights per hash bucket, `buckets` long.
    pub hashed: Vec<[f32; 3]>,
    /// From scores to a path.
    pub thresholds: Thresholds,
}

/// What a linear model made of a request.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    /// The structural features.
    pub features: Features,
    /// Probability per path (fast, balanced, reasoning).
    pub probabilities: [f64; 3],
    /// The path the thresholds chose.
    pub path: RoutePath,
    /// The largest contributions to the chosen path's score, largest magnitude first.
    pub top: Vec<Contribution>,
}

/// The n-gram groups whose values are normalized together: words and bigrams, characters.
const GROUPS: usize = 2;

fn group(g: Gram) -> usize {
    match g {
        Gram::Word | Gram::Bigram => 0,
        Gram::Chars => 1,
    }
}

/// Scale of one occurrence in a group of `n` occurrences: the group's vector has norm ≤ 1, so a
/// long paste weighs no more than a short prompt.
fn occurrence_value(n: u32) -> f64 {
    if n == 0 {
        0.0
    } else {
        1.0 / f64::from(n).sqrt()
    }
}

/// A tracked n-gram: summed weight, occurrences, kind, bucket, text span.
#[derive(Debug, Clone, Copy)]
struct Tracked {
    weight: f64,
    count: u32,
    gram: Gram,
    bucket: usize,
    start: usize,
    end: usize,
}

/// The n-grams with the largest summed weight magnitude for one path, kept during the pass. A
/// 64-bit mask of tracked buckets lets the common case (a small weight, not tracked) cost one
/// comparison and one bit test.
#[derive(Debug, Clone, Copy)]
struct Top {
    items: [Option<Tracked>; TOP_FEATURES],
    floor: f64,
    mask: u64,
}

impl Top {
    const EMPTY: Top = Top {
        items: [None; TOP_FEATURES],
        floor: 0.0,
        mask: 0,
    };

    fn offer(&mut self, w: f64, gram: Gram, bucket: usize, start: usize, end: usize) {
        let bit = 1u64 << (bucket % 64);
        if self.mask & bit != 0
            && let Some(t) = self.items.iter_mut().flatten().find(|t| t.bucket == bucket)
        {
            t.weight += w;
            t.count += 1;
        } else {
            let slot = match self.items.iter().position(Option::is_none) {
                Some(i) => i,
                None if w.abs() > self.floor => match self.weakest() {
                    Some(i) => i,
                    None => return,
                },
                None => return,
            };
            self.items[slot] = Some(Tracked {
                weight: w,
                count: 1,
                gram,
                bucket,
                start,
                end,
            });
            self.mask = self
                .items
                .iter()
                .flatten()
                .fold(0, |m, t| m | 1u64 << (t.bucket % 64));
        }
        if self.items.iter().all(Option::is_some) {
            self.floor = self
                .items
                .iter()
                .flatten()
                .map(|t| t.weight.abs())
                .fold(f64::INFINITY, f64::min);
        }
    }

    fn weakest(&self) -> Option<usize> {
        let mut best: Option<(usize, f64)> = None;
        for (i, t) in self.items.iter().enumerate() {
            if let Some(t) = t
                && best.is_none_or(|(_, w)| t.weight.abs() < w)
            {
                best = Some((i, t.weight.abs()));
            }
        }
        best.map(|(i, _)| i)
    }
}

impl LinearModel {
    fn bucket(&self, hash: u64) -> usize {
        // `buckets` is a power of two no larger than the table, checked when the policy loads.
        (hash as usize) & (self.buckets - 1)
    }

    /// Scores `request` and picks its path.
    pub fn classify(&self, request: &ChatRequest<'_>) -> Scored {
        let (features, text) = features::window(request, self.window);
        let inputs = features.inputs();
        let mut logits = self.bias.map(f64::from);
        for (x, w) in inputs.iter().zip(&self.structural) {
            for k in 0..3 {
                logits[k] += x * f64::from(w[k]);
            }
        }
        let mut sums = [[0.0f64; 3]; GROUPS];
        let mut counts = [0u32; GROUPS];
        let mut tops = [[Top::EMPTY; 3]; GROUPS];
        features::for_each_ngram(&text, &self.ngrams, |gram, hash, start, end| {
            let g = group(gram);
            counts[g] += 1;
            let bucket = self.bucket(hash);
            let Some(w) = self.hashed.get(bucket) else {
                return;
            };
            if *w == [0.0; 3] {
                return;
            }
            for k in 0..3 {
                let wk = f64::from(w[k]);
                sums[g][k] += wk;
                if wk != 0.0 {
                    tops[g][k].offer(wk, gram, bucket, start, end);
                }
            }
        });
        let scale = counts.map(occurrence_value);
        for g in 0..GROUPS {
            for k in 0..3 {
                logits[k] += sums[g][k] * scale[g];
            }
        }
        let probabilities = softmax(logits);
        let path = self.thresholds.choose(probabilities);
        let k = path_index(path);
        let mut top: Vec<Contribution> = inputs
            .iter()
            .zip(&self.structural)
            .zip(STRUCTURAL)
            .filter(|((x, w), _)| **x != 0.0 && w[k] != 0.0)
            .map(|((x, w), name)| Contribution {
                name: name.to_string(),
                value: *x,
                contribution: x * f64::from(w[k]),
            })
            .collect();
        for g in 0..GROUPS {
            for t in tops[g][k].items.iter().flatten() {
                top.push(Contribution {
                    name: format!("{}{}", t.gram.prefix(), &text[t.start..t.end]),
                    value: f64::from(t.count) * scale[g],
                    contribution: t.weight * scale[g],
                });
            }
        }
        top.sort_by(|a, b| b.contribution.abs().total_cmp(&a.contribution.abs()));
        top.truncate(TOP_FEATURES);
        Scored {
            features,
            probabilities,
            path,
            top,
        }
    }
}

/// Column of `path` in the weights (fusion scores as reasoning).
pub fn path_index(path: RoutePath) -> usize {
    match path {
        RoutePath::Fast => 0,
        RoutePath::Balanced => 1,
        RoutePath::Reasoning | RoutePath::Fusion => 2,
    }
}

/// Probabilities from scores, stable for any finite input.
pub fn softmax(logits: [f64; 3]) -> [f64; 3] {
    let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e = logits.map(|l| (l - max).exp());
    let sum: f64 = e.iter().sum();
    if sum.is_finite() && sum > 0.0 {
        e.map(|v| v / sum)
    } else {
        [1.0 / 3.0; 3]
    }
}

/// The sparse inputs of a request's text as a model with `buckets` buckets sees them: (bucket,
/// value) sorted by bucket, each value the sum of its occurrences' normalized values. Training
/// uses this; inference computes the same sums on the fly.
pub fn hashed_inputs(text: &str, spec: &NgramSpec, buckets: usize) -> Vec<(u32, f64)> {
    let mut raw: Vec<(u32, usize)> = Vec::new();
    let mut counts = [0u32; GROUPS];
    features::for_each_ngram(text, spec, |gram, hash, _, _| {
        let g = group(gram);
        counts[g] += 1;
        let bucket = (hash as usize) & (buckets.max(1) - 1);
        raw.push((u32::try_from(bucket).unwrap_or(u32::MAX), g));
    });
    let scale = counts.map(occurrence_value);
    raw.sort_unstable();
    let mut out: Vec<(u32, f64)> = Vec::with_capacity(raw.len());
    for (bucket, g) in raw {
        match out.last_mut() {
            Some((b, v)) if *b == bucket => *v += scale[g],
            _ => out.push((bucket, scale[g])),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_pick_the_strongest_path_that_clears_its_cut_off() {
        let t = Thresholds {
            reasoning: 0.4,
            balanced: 0.5,
        };
        assert_eq!(t.choose([0.2, 0.35, 0.45]), RoutePath::Reasoning);
        assert_eq!(t.choose([0.45, 0.3, 0.25]), RoutePath::Balanced);
        assert_eq!(t.choose([0.6, 0.3, 0.1]), RoutePath::Fast);
    }

    #[test]
    fn softmax_survives_extreme_scores() {
        let p = softmax([1e300, -1e300, 0.0]);
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert_eq!(softmax([f64::NAN, 0.0, 0.0]), [1.0 / 3.0; 3]);
    }

    #[test]
    fn the_top_tracker_merges_repeats_and_keeps_the_largest() {
        let mut top = Top::EMPTY;
        for (i, w) in [0.1, -0.9, 0.3, 0.2, 0.05, 0.4, 0.01]
            .into_iter()
            .enumerate()
        {
            top.offer(w, Gram::Word, i, 0, 0);
        }
        top.offer(0.1, Gram::Word, 0, 0, 0);
        let mut kept: Vec<(usize, f64)> = top
            .items
            .iter()
            .flatten()
            .map(|t| (t.bucket, t.weight))
            .collect();
        kept.sort_by_key(|k| k.0);
        assert_eq!(kept, [(0, 0.2), (1, -0.9), (2, 0.3), (3, 0.2), (5, 0.4)]);
    }
}
