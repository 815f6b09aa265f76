//! The learned `lumina-auto` classifier: a softmax-linear model over the structural features and
//! hashed word, word-bigram and byte n-grams of the request's user text. Inference is pure arithmetic
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

    /// Both cut-offs moved by `by` (positive: towards cheaper paths), kept within 0 to 1.
    pub fn shifted(self, by: f64) -> Thresholds {
        Thresholds {
            reasoning: (self.reasoning + by).clamp(0.0, 1.0),
            balanced: (self.balanced + by).clamp(0.0, 1.0),
        }
    }
}

/// One input's share of a decision: its value times its weight for the chosen path.
#[derive(Debug, Clone, PartialEq)]
pub struct Contribution {
    /// A structural feature's name, or `word:`, `bigram:` or `bytes:` and the n-gram's text.
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
    /// Weights of the hash buckets that have any.
    pub hashed: SparseWeights,
    /// From scores to a path.
    pub thresholds: Thresholds,
}

/// Weights of the few hash buckets that have any: for every bucket the position of its row plus
/// one (0: no weights), and the rows in bucket order. A lookup is one index load and, for a
/// bucket with weights, one 16-byte row: 4 bytes per bucket (1 MiB for the shipped 2^18) buys
/// a lookup without the rank arithmetic of a bitmap, which costs a software popcount on the
/// baseline x86-64 target.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SparseWeights {
    index: Vec<u32>,
    rows: Vec<Row>,
}

/// One bucket's weights per path and their largest magnitude, which the top-feature tracker
/// compares on every occurrence.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(align(16))]
pub struct Row {
    /// Weight per path (fast, balanced, reasoning).
    pub weights: [f32; 3],
    /// The largest absolute weight.
    pub magnitude: f32,
}

impl Row {
    fn new(weights: [f32; 3]) -> Row {
        Row {
            weights,
            magnitude: max3(weights.map(f32::abs)),
        }
    }
}

/// The largest of three numbers, none of them NaN (weights are finite; checked when a policy
/// loads).
#[inline]
fn max3<T: PartialOrd + Copy>([a, b, c]: [T; 3]) -> T {
    let m = if b > a { b } else { a };
    if c > m { c } else { m }
}

impl SparseWeights {
    /// Builds the table for `buckets` buckets from `(bucket, weights)` in ascending bucket
    /// order; `None` when a bucket is out of range or out of order, or a weight is not finite.
    pub fn new(buckets: usize, rows: impl IntoIterator<Item = (usize, [f32; 3])>) -> Option<Self> {
        let mut index = vec![0u32; buckets];
        let mut kept = Vec::new();
        let mut previous: Option<usize> = None;
        for (bucket, w) in rows {
            if bucket >= buckets
                || previous.is_some_and(|p| p >= bucket)
                || !w.iter().all(|x| x.is_finite())
            {
                return None;
            }
            previous = Some(bucket);
            kept.push(Row::new(w));
            index[bucket] = u32::try_from(kept.len()).ok()?;
        }
        Some(SparseWeights { index, rows: kept })
    }

    /// The row of `bucket`, `None` when it has no weights.
    #[inline]
    pub fn get(&self, bucket: usize) -> Option<&Row> {
        let at = *self.index.get(bucket)? as usize;
        self.rows.get(at.checked_sub(1)?)
    }

    /// Buckets with weights.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether no bucket has weights.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
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

/// The n-gram groups whose values are normalized together: words and bigrams, byte n-grams.
const GROUPS: usize = 2;

fn group(g: Gram) -> usize {
    match g {
        Gram::Word | Gram::Bigram => 0,
        Gram::Bytes => 1,
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

/// N-grams tracked per group during the pass: more than [`TOP_FEATURES`], since they are kept by
/// their largest weight for any path and ranked for the chosen path only at the end.
const TRACKED: usize = 8;

/// A tracked n-gram: kind and text span.
#[derive(Debug, Clone, Copy)]
struct Span {
    gram: Gram,
    start: usize,
    end: usize,
}

fn magnitude(w: &[f64; 3]) -> f64 {
    max3(w.map(f64::abs))
}

/// The n-grams of one group with the largest summed weights, kept during the pass, in flat
/// arrays with each one's magnitude cached. A 64-bit mask of tracked buckets makes the common
/// case (small, untracked) one bit test and one comparison.
#[derive(Debug, Clone, Copy)]
struct Top {
    len: usize,
    /// Tracked buckets; `usize::MAX` (never a bucket) where none is yet.
    buckets: [usize; TRACKED],
    weights: [[f64; 3]; TRACKED],
    magnitudes: [f64; TRACKED],
    counts: [u32; TRACKED],
    spans: [Span; TRACKED],
    floor: f64,
    mask: u64,
}

impl Top {
    const EMPTY: Top = Top {
        len: 0,
        buckets: [usize::MAX; TRACKED],
        weights: [[0.0; 3]; TRACKED],
        magnitudes: [0.0; TRACKED],
        counts: [0; TRACKED],
        spans: [Span {
            gram: Gram::Word,
            start: 0,
            end: 0,
        }; TRACKED],
        floor: 0.0,
        mask: 0,
    };

    /// Whether `offer` could keep or update an n-gram of this bucket and magnitude: the cheap
    /// test done for every one.
    #[inline]
    fn wants(&self, magnitude: f64, bucket: usize) -> bool {
        self.mask & (1u64 << (bucket % 64)) != 0 || magnitude > self.floor
    }

    #[inline(never)]
    fn offer(&mut self, w: [f64; 3], gram: Gram, bucket: usize, start: usize, end: usize) {
        let bit = 1u64 << (bucket % 64);
        if self.mask & bit != 0
            && let Some(i) = self.buckets.iter().position(|&b| b == bucket)
        {
            for (a, b) in self.weights[i].iter_mut().zip(w) {
                *a += b;
            }
            self.magnitudes[i] = magnitude(&self.weights[i]);
            self.counts[i] += 1;
            return;
        }
        let slot = if self.len < TRACKED {
            self.len += 1;
            self.len - 1
        } else if magnitude(&w) <= self.floor {
            return;
        } else {
            self.weakest()
        };
        self.buckets[slot] = bucket;
        self.weights[slot] = w;
        self.magnitudes[slot] = magnitude(&w);
        self.counts[slot] = 1;
        self.spans[slot] = Span { gram, start, end };
        self.mask = self.buckets[..self.len]
            .iter()
            .fold(0, |m, b| m | 1u64 << (b % 64));
        if self.len == TRACKED {
            self.floor = self
                .magnitudes
                .iter()
                .copied()
                .fold(f64::INFINITY, f64::min);
        }
    }

    /// The first tracked n-gram of the smallest magnitude, once all are tracked.
    fn weakest(&self) -> usize {
        let mut best = 0;
        for i in 1..TRACKED {
            if self.magnitudes[i] < self.magnitudes[best] {
                best = i;
            }
        }
        best
    }

    /// The tracked n-grams: (span, summed weights, occurrences).
    fn iter(&self) -> impl Iterator<Item = (Span, [f64; 3], u32)> + '_ {
        (0..self.len).map(|i| (self.spans[i], self.weights[i], self.counts[i]))
    }
}

/// Where a candidate contribution comes from.
#[derive(Debug, Clone, Copy)]
enum Source {
    Structural(&'static str),
    Gram(Span),
}

impl Source {
    /// The contribution's name: the structural feature's, or the n-gram's kind and text.
    fn name(self, text: &str) -> String {
        match self {
            Source::Structural(name) => name.to_string(),
            Source::Gram(span) => {
                let gram = String::from_utf8_lossy(
                    text.as_bytes()
                        .get(span.start..span.end)
                        .unwrap_or_default(),
                );
                let prefix = span.gram.prefix();
                let mut name = String::with_capacity(prefix.len() + gram.len());
                name.push_str(prefix);
                name.push_str(&gram);
                name
            }
        }
    }
}

/// One n-gram group's running state during the pass: occurrences, summed weights and the
/// largest contributors.
#[derive(Debug, Clone, Copy)]
struct Group {
    count: u32,
    sum: [f64; 3],
    top: Top,
}

impl Group {
    const EMPTY: Group = Group {
        count: 0,
        sum: [0.0; 3],
        top: Top::EMPTY,
    };

    /// One occurrence of an n-gram in `bucket`.
    #[inline]
    fn add(&mut self, hashed: &SparseWeights, bucket: usize, gram: Gram, start: usize, end: usize) {
        self.count += 1;
        let Some(row) = hashed.get(bucket) else {
            return;
        };
        let w = row.weights.map(f64::from);
        for (a, b) in self.sum.iter_mut().zip(w) {
            *a += b;
        }
        if self.top.wants(f64::from(row.magnitude), bucket) {
            self.top.offer(w, gram, bucket, start, end);
        }
    }
}

impl LinearModel {
    fn bucket(&self, hash: u64) -> usize {
        // `buckets` is a power of two no larger than the table, checked when the policy loads.
        (hash as usize) & (self.buckets - 1)
    }

    /// Scores `request` and picks its path.
    pub fn classify(&self, request: &ChatRequest<'_>) -> Scored {
        self.classify_at(request, self.thresholds)
    }

    /// Scores `request` and picks its path with `thresholds` instead of the model's own.
    pub fn classify_at(&self, request: &ChatRequest<'_>, thresholds: Thresholds) -> Scored {
        let (features, text) = features::window(request, self.window);
        let inputs = features.inputs();
        let mut logits = self.bias.map(f64::from);
        for (x, w) in inputs.iter().zip(&self.structural) {
            for k in 0..3 {
                logits[k] += x * f64::from(w[k]);
            }
        }
        let mut groups = [Group::EMPTY; GROUPS];
        let [words, bytes] = &mut groups;
        features::for_each_word_ngram(&text, &self.ngrams, |gram, hash, start, end| {
            words.add(&self.hashed, self.bucket(hash), gram, start, end);
        });
        features::for_each_byte_ngram(&text, &self.ngrams, |hash, start, end| {
            bytes.add(&self.hashed, self.bucket(hash), Gram::Bytes, start, end);
        });
        let scale = groups.map(|g| occurrence_value(g.count));
        for (g, s) in groups.iter().zip(scale) {
            for (l, x) in logits.iter_mut().zip(g.sum) {
                *l += x * s;
            }
        }
        let probabilities = softmax(logits);
        let path = thresholds.choose(probabilities);
        let k = path_index(path);
        // Candidates are ranked before any is named: only the kept few allocate their names.
        let mut candidates: Vec<(f64, f64, Source)> =
            Vec::with_capacity(STRUCTURAL.len() + GROUPS * TRACKED);
        candidates.extend(
            inputs
                .iter()
                .zip(&self.structural)
                .zip(STRUCTURAL)
                .filter(|((x, w), _)| **x != 0.0 && w[k] != 0.0)
                .map(|((x, w), name)| (x * f64::from(w[k]), *x, Source::Structural(name))),
        );
        for (g, s) in groups.iter().zip(scale) {
            for (span, weights, count) in g.top.iter() {
                candidates.push((weights[k] * s, f64::from(count) * s, Source::Gram(span)));
            }
        }
        candidates.sort_by(|a, b| b.0.abs().total_cmp(&a.0.abs()));
        let top = candidates
            .iter()
            .take(TOP_FEATURES)
            .map(|&(contribution, value, source)| Contribution {
                name: source.name(&text),
                value,
                contribution,
            })
            .collect();
        Scored {
            features,
            probabilities,
            path,
            top,
        }
    }
}

/// Column of `path` in the weights (fusion scores as reasoning; embeddings, never classified,
/// as fast).
pub fn path_index(path: RoutePath) -> usize {
    match path {
        RoutePath::Fast | RoutePath::Embeddings => 0,
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
    fn sparse_weights_find_exactly_the_buckets_they_hold() {
        let rows = [
            (0, [1.0, 0.0, 0.0]),
            (63, [2.0, 0.0, 0.0]),
            (64, [3.0, 0.0, 0.0]),
            (200, [4.0, 0.0, 0.0]),
        ];
        let w = SparseWeights::new(256, rows).unwrap();
        assert_eq!(w.len(), 4);
        for (b, r) in rows {
            assert_eq!(w.get(b).map(|row| row.weights), Some(r), "{b}");
        }
        assert_eq!(w.get(200).map(|row| row.magnitude), Some(4.0));
        for b in [1, 62, 65, 199, 255, 256, 10_000] {
            assert_eq!(w.get(b), None, "{b}");
        }
        assert!(SparseWeights::new(256, [(5, [0.0; 3]), (5, [0.0; 3])]).is_none());
        assert!(SparseWeights::new(256, [(256, [0.0; 3])]).is_none());
        assert!(SparseWeights::new(256, [(1, [f32::NAN, 0.0, 0.0])]).is_none());
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
        let weights = [0.1, -0.9, 0.3, 0.2, 0.05, 0.4, 0.01, 0.6, 0.7, 0.02, 0.8];
        for (i, w) in weights.into_iter().enumerate() {
            top.offer([w, -w, 0.0], Gram::Word, i, 0, 0);
        }
        top.offer([0.1, -0.1, 0.0], Gram::Word, 0, 0, 0);
        let mut kept: Vec<(usize, f64)> = (0..top.len)
            .map(|i| (top.buckets[i], top.weights[i][0]))
            .collect();
        kept.sort_by_key(|k| k.0);
        assert_eq!(
            kept,
            [
                (0, 0.2),
                (1, -0.9),
                (2, 0.3),
                (3, 0.2),
                (5, 0.4),
                (7, 0.6),
                (8, 0.7),
                (10, 0.8)
            ]
        );
    }
}
