//! Training a linear routing policy from labelled items: multinomial logistic regression
//! (softmax, L2-penalized) fitted by AdaGrad SGD over the same inputs inference computes, hash
//! buckets kept only when they occur in at least `min_count` items, thresholds chosen by
//! stratified cross-validation on the training items alone, weights quantized into a compact
//! document. Deterministic: fixed seed, fixed orders, no hash-map iteration, so the same items
//! and settings give a byte-identical policy.

use crate::routing::dataset::{DatasetError, LabelledItem};
use crate::routing::eval::{CostWeights, RoutingReport, evaluate};
use crate::routing::features::{self, STRUCTURAL};
use crate::routing::linear::{PATHS, Thresholds, hashed_inputs, path_index, softmax};
use crate::routing::policy::{
    ClassifierDocument, LinearDocument, NgramsDocument, Policy, PolicyDocument, PolicyError,
    ThresholdsDocument, TrainingInfo, WeightsDocument, ngram_spec,
};

/// Training settings; the defaults made the shipped policy.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    /// The version the policy gets.
    pub version: i64,
    /// Hash buckets (a power of two).
    pub buckets: u64,
    /// Word n-gram lengths (1, 2).
    pub words: Vec<usize>,
    /// Byte n-gram lengths.
    pub bytes: Vec<usize>,
    /// Bytes of user text read.
    pub window_bytes: usize,
    /// Passes over the data.
    pub epochs: usize,
    /// AdaGrad's base learning rate.
    pub learning_rate: f64,
    /// L2 penalty per weight.
    pub l2: f64,
    /// Least items a bucket must occur in to get a weight.
    pub min_count: u32,
    /// Seed of the shuffles.
    pub seed: u64,
    /// Cross-validation folds for the thresholds.
    pub folds: usize,
    /// Least out-of-fold quality retained the thresholds must keep.
    pub quality_floor: f64,
    /// Quantization step of the stored weights.
    pub scale: f64,
    /// Cost weights that break ties between thresholds of equal accuracy.
    pub costs: CostWeights,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            version: 2,
            buckets: 1 << 18,
            words: vec![1, 2],
            bytes: vec![4],
            window_bytes: features::WINDOW_BUDGET,
            epochs: 30,
            learning_rate: 0.1,
            l2: 0.0,
            min_count: 2,
            seed: 0x6c75_6d69_6e61,
            folds: 5,
            quality_floor: 0.975,
            scale: 1e-3,
            costs: CostWeights::default(),
        }
    }
}

/// Why training failed.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// No items, or a path without items.
    #[error("cannot train: {0}")]
    Data(String),
    /// An item's request does not parse.
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    /// The settings do not make a valid policy.
    #[error(transparent)]
    Policy(#[from] PolicyError),
}

/// One item as the model sees it.
struct Example {
    structural: [f64; STRUCTURAL.len()],
    /// (compact index, value), ascending.
    hashed: Vec<(u32, f64)>,
    label: usize,
}

/// Weights in training precision.
#[derive(Clone)]
struct Params {
    bias: [f64; 3],
    structural: [[f64; 3]; STRUCTURAL.len()],
    hashed: Vec<[f64; 3]>,
}

impl Params {
    fn zero(hashed: usize) -> Params {
        Params {
            bias: [0.0; 3],
            structural: [[0.0; 3]; STRUCTURAL.len()],
            hashed: vec![[0.0; 3]; hashed],
        }
    }

    fn probabilities(&self, e: &Example) -> [f64; 3] {
        let mut logits = self.bias;
        for (x, w) in e.structural.iter().zip(&self.structural) {
            for k in 0..3 {
                logits[k] += x * w[k];
            }
        }
        for &(j, x) in &e.hashed {
            let w = &self.hashed[j as usize];
            for k in 0..3 {
                logits[k] += x * w[k];
            }
        }
        softmax(logits)
    }
}

/// splitmix64: a tiny, fixed pseudo-random sequence for the shuffles.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn shuffle(&mut self, v: &mut [usize]) {
        for i in (1..v.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }
}

fn adagrad(w: &mut f64, acc: &mut f64, grad: f64, lr: f64) {
    *acc += grad * grad;
    *w -= lr * grad / (acc.sqrt() + 1e-8);
}

/// One AdaGrad step of a feature's weights: gradient `g × x + l2 × w` per path.
fn step(w: &mut [f64; 3], acc: &mut [f64; 3], g: &[f64; 3], x: f64, l2: f64, lr: f64) {
    for ((w, acc), g) in w.iter_mut().zip(acc.iter_mut()).zip(g) {
        let grad = g * x + l2 * *w;
        adagrad(w, acc, grad, lr);
    }
}

/// Fits softmax regression on `examples[i]` for `i` in `subset`.
fn fit(examples: &[Example], subset: &[usize], hashed: usize, cfg: &TrainConfig) -> Params {
    let mut p = Params::zero(hashed);
    let mut acc = Params::zero(hashed);
    let mut rng = SplitMix(cfg.seed);
    let mut order = subset.to_vec();
    let (lr, l2) = (cfg.learning_rate, cfg.l2);
    for _ in 0..cfg.epochs {
        rng.shuffle(&mut order);
        for &i in &order {
            let e = &examples[i];
            let prob = p.probabilities(e);
            let g: [f64; 3] = std::array::from_fn(|k| prob[k] - f64::from(u8::from(k == e.label)));
            step(&mut p.bias, &mut acc.bias, &g, 1.0, 0.0, lr);
            for (s, x) in e.structural.iter().enumerate() {
                if *x != 0.0 {
                    step(&mut p.structural[s], &mut acc.structural[s], &g, *x, l2, lr);
                }
            }
            for &(j, x) in &e.hashed {
                let j = j as usize;
                step(&mut p.hashed[j], &mut acc.hashed[j], &g, x, l2, lr);
            }
        }
    }
    p
}

/// Stratified folds: within each path, items in dataset order go to folds 0, 1, 2, …
fn folds(examples: &[Example], n: usize) -> Vec<usize> {
    let mut seen = [0usize; 3];
    examples
        .iter()
        .map(|e| {
            let f = seen[e.label] % n;
            seen[e.label] += 1;
            f
        })
        .collect()
}

/// The thresholds grid, in steps of 0.05.
fn grid() -> impl Iterator<Item = Thresholds> {
    (1..20).flat_map(|r| {
        (1..20).map(move |b| Thresholds {
            reasoning: f64::from(r) * 0.05,
            balanced: f64::from(b) * 0.05,
        })
    })
}

/// The thresholds with the best accuracy among those keeping `floor` quality (ties: more cost
/// saved, then the earlier in the grid); if none keeps it, the most quality retained.
fn choose_thresholds(
    oof: &[[f64; 3]],
    labels: &[usize],
    cfg: &TrainConfig,
) -> (Thresholds, RoutingReport) {
    let mut best: Option<(Thresholds, RoutingReport)> = None;
    for t in grid() {
        let report = evaluate(
            oof.iter()
                .zip(labels)
                .map(|(p, &l)| (PATHS[l], t.choose(*p))),
            &cfg.costs,
        );
        let key = |r: &RoutingReport| {
            let keeps = r.quality_retained >= cfg.quality_floor;
            (
                keeps,
                if keeps {
                    r.accuracy
                } else {
                    r.quality_retained
                },
                if keeps { r.cost_saved } else { r.accuracy },
            )
        };
        let better = match &best {
            None => true,
            Some((_, b)) => {
                let (k, kb) = (key(&report), key(b));
                (k.0, k.1, k.2).partial_cmp(&(kb.0, kb.1, kb.2))
                    == Some(std::cmp::Ordering::Greater)
            }
        };
        if better {
            best = Some((t, report));
        }
    }
    best.unwrap_or_else(|| {
        let t = Thresholds {
            reasoning: 0.5,
            balanced: 0.5,
        };
        (t, evaluate([], &cfg.costs))
    })
}

fn quantize(w: f64, scale: f64) -> i64 {
    (w / scale).round() as i64
}

/// Trains a policy on `items`.
pub fn train(items: &[LabelledItem], cfg: &TrainConfig) -> Result<PolicyDocument, TrainError> {
    let ngrams = NgramsDocument {
        words: cfg.words.clone(),
        bytes: cfg.bytes.clone(),
        window_bytes: cfg.window_bytes,
    };
    let spec = ngram_spec(&ngrams)?;
    if !cfg.buckets.is_power_of_two() || cfg.buckets > 1 << 22 {
        return Err(TrainError::Data(
            "buckets: expected a power of two up to 4194304".into(),
        ));
    }
    let buckets =
        usize::try_from(cfg.buckets).map_err(|_| TrainError::Data("too many buckets".into()))?;
    let mut raw = Vec::with_capacity(items.len());
    let mut per_path = [0usize; 3];
    for item in items {
        let request = item.request()?;
        let (f, text) = features::window(&request, cfg.window_bytes);
        let label = path_index(item.path);
        per_path[label] += 1;
        raw.push((f.inputs(), hashed_inputs(&text, &spec, buckets), label));
    }
    if per_path.contains(&0) {
        return Err(TrainError::Data(format!(
            "every path needs labelled items (fast {}, balanced {}, reasoning {})",
            per_path[0], per_path[1], per_path[2]
        )));
    }
    let mut df = vec![0u32; buckets];
    for (_, hashed, _) in &raw {
        for &(b, _) in hashed {
            df[b as usize] += 1;
        }
    }
    let mut compact = vec![u32::MAX; buckets];
    let mut bucket_of: Vec<u32> = Vec::new();
    for (b, &n) in df.iter().enumerate() {
        if n >= cfg.min_count {
            compact[b] = bucket_of.len() as u32;
            bucket_of.push(b as u32);
        }
    }
    let examples: Vec<Example> = raw
        .into_iter()
        .map(|(structural, hashed, label)| Example {
            structural,
            hashed: hashed
                .into_iter()
                .filter(|(b, _)| compact[*b as usize] != u32::MAX)
                .map(|(b, x)| (compact[b as usize], x))
                .collect(),
            label,
        })
        .collect();
    let n_folds = cfg.folds.clamp(2, examples.len().max(2));
    let fold_of = folds(&examples, n_folds);
    let mut oof = vec![[0.0; 3]; examples.len()];
    for f in 0..n_folds {
        let train_idx: Vec<usize> = (0..examples.len()).filter(|&i| fold_of[i] != f).collect();
        let params = fit(&examples, &train_idx, bucket_of.len(), cfg);
        for i in (0..examples.len()).filter(|&i| fold_of[i] == f) {
            oof[i] = params.probabilities(&examples[i]);
        }
    }
    let labels: Vec<usize> = examples.iter().map(|e| e.label).collect();
    let (thresholds, cv) = choose_thresholds(&oof, &labels, cfg);
    let all: Vec<usize> = (0..examples.len()).collect();
    let params = fit(&examples, &all, bucket_of.len(), cfg);
    let doc = PolicyDocument {
        version: cfg.version,
        classifier: ClassifierDocument::Linear(linear_document(
            cfg, &ngrams, &params, &bucket_of, thresholds,
        )),
        training: Some(TrainingInfo {
            items: examples.len(),
            per_path,
            epochs: cfg.epochs,
            learning_rate: cfg.learning_rate,
            l2: cfg.l2,
            min_count: cfg.min_count,
            seed: cfg.seed,
            folds: n_folds,
            quality_floor: cfg.quality_floor,
            cross_validation: [cv.accuracy, cv.quality_retained, cv.cost_saved].map(round4),
        }),
        prefer: Default::default(),
        routes: Default::default(),
        task_classes: Default::default(),
        built_from: None,
    };
    Policy::from_document(&doc)?;
    Ok(doc)
}

fn round4(x: f64) -> f64 {
    (x * 1e4).round() / 1e4
}

fn linear_document(
    cfg: &TrainConfig,
    ngrams: &NgramsDocument,
    p: &Params,
    bucket_of: &[u32],
    t: Thresholds,
) -> LinearDocument {
    let q = |w: &[f64; 3]| w.map(|v| quantize(v, cfg.scale));
    let structural = STRUCTURAL
        .iter()
        .zip(&p.structural)
        .map(|(name, w)| (name.to_string(), q(w)))
        .filter(|(_, w)| *w != [0; 3])
        .collect();
    let hashed = bucket_of
        .iter()
        .zip(&p.hashed)
        .filter_map(|(b, w)| {
            let [f, m, r] = q(w);
            (f != 0 || m != 0 || r != 0).then_some([i64::from(*b), f, m, r])
        })
        .collect();
    LinearDocument {
        paths: PATHS.iter().map(|p| p.as_str().to_string()).collect(),
        buckets: cfg.buckets,
        ngrams: ngrams.clone(),
        scale: cfg.scale,
        bias: q(&p.bias),
        thresholds: ThresholdsDocument {
            reasoning: round4(t.reasoning),
            balanced: round4(t.balanced),
        },
        weights: WeightsDocument { structural, hashed },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::catalog::RoutePath;
    use crate::routing::classifier::classify_with;

    fn item(id: &str, text: &str, path: RoutePath) -> LabelledItem {
        LabelledItem {
            id: id.into(),
            body: serde_json::json!({"model": "lumina-auto", "messages": [{"role": "user", "content": text}]})
                .to_string(),
            path,
        }
    }

    fn tiny() -> Vec<LabelledItem> {
        let mut items = Vec::new();
        let words = [
            ("hello there friend", RoutePath::Fast),
            ("draft an email memo", RoutePath::Balanced),
            ("prove the theorem rigorously", RoutePath::Reasoning),
        ];
        for round in 0..6 {
            for (i, (text, path)) in words.iter().enumerate() {
                items.push(item(
                    &format!("{round}-{i}"),
                    &format!("{text} {round}"),
                    *path,
                ));
            }
        }
        items
    }

    fn small() -> TrainConfig {
        TrainConfig {
            buckets: 1 << 12,
            folds: 3,
            quality_floor: 0.5,
            ..TrainConfig::default()
        }
    }

    #[test]
    fn training_converges_on_a_tiny_separable_set() {
        let items = tiny();
        let doc = train(&items, &small()).unwrap();
        let policy = Policy::from_document(&doc).unwrap();
        for it in &items {
            let d = classify_with(&it.request().unwrap(), &policy);
            assert_eq!(d.path, it.path, "{}", it.id);
            assert!(d.scores[path_index(it.path)] > 0.6, "{:?}", d.scores);
        }
        let training = doc.training.unwrap();
        assert_eq!(training.cross_validation[0], 1.0);
    }

    #[test]
    fn training_is_deterministic_to_the_byte() {
        let a = train(&tiny(), &small()).unwrap().to_json().unwrap();
        let b = train(&tiny(), &small()).unwrap().to_json().unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn a_path_without_items_is_refused() {
        let items: Vec<_> = tiny()
            .into_iter()
            .filter(|i| i.path != RoutePath::Balanced)
            .collect();
        assert!(matches!(train(&items, &small()), Err(TrainError::Data(_))));
    }

    #[test]
    fn decisions_name_the_ngrams_that_decided_them() {
        let policy = Policy::from_document(&train(&tiny(), &small()).unwrap()).unwrap();
        let d = classify_with(
            &item("x", "please prove the theorem", RoutePath::Reasoning)
                .request()
                .unwrap(),
            &policy,
        );
        assert_eq!(d.path, RoutePath::Reasoning);
        assert!(d.top_features.len() <= 5 && !d.top_features.is_empty());
        assert!(
            d.top_features
                .iter()
                .any(|c| c.name == "word:prove" || c.name == "word:theorem"),
            "{:?}",
            d.top_features
        );
        assert!(
            d.top_features
                .windows(2)
                .all(|w| w[0].contribution.abs() >= w[1].contribution.abs())
        );
    }
}
