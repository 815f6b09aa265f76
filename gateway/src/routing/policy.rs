//! The routing policy: one versioned JSON document that holds the classifier (its kind, and for
//! the learned kind its n-gram settings, quantized sparse weights and thresholds), the order and
//! weights of each path's deployments, per-task-class path bounds and a cost–quality setting
//! (`prefer`). This module
//! owns the document's shape, its validation (a policy that does not validate is refused whole,
//! never half-applied), its canonical rendering (what `lumina policy train` writes, byte for
//! byte), and the default policy shipped in `gateway/policies/default.json`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;

use serde::{Deserialize, Serialize};

use crate::routing::catalog::RoutePath;
use crate::routing::features::{MAX_BYTE_NGRAM, NgramSpec, STRUCTURAL};
use crate::routing::linear::{LinearModel, SparseWeights, Thresholds};

/// The policy `lumina serve` routes with when none is published: trained by `lumina policy
/// train` on `datasets/routing/train.jsonl`.
pub const DEFAULT_POLICY_JSON: &str = include_str!("../../policies/default.json");

/// The version of the hand-written classifier's policy.
pub const CUES_VERSION: i64 = 1;

/// Why a policy document was refused.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// Not JSON of the policy's shape.
    #[error("not a routing policy: {0}")]
    Shape(#[from] serde_json::Error),
    /// The shape is right but a value is not.
    #[error("invalid routing policy: {0}")]
    Invalid(String),
}

fn invalid(message: impl Into<String>) -> PolicyError {
    PolicyError::Invalid(message.into())
}

/// A policy document as stored and published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyDocument {
    /// The policy's version, named by every decision made with it.
    pub version: i64,
    /// The classifier.
    pub classifier: ClassifierDocument,
    /// How the weights were trained, for people reading the document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training: Option<TrainingInfo>,
    /// The cost–quality setting: `cost` raises the classifier's thresholds, `quality` lowers
    /// them (a request or key may ask for another).
    #[serde(default, skip_serializing_if = "Prefer::is_balanced")]
    pub prefer: Prefer,
    /// Per path (`fast`, `balanced`, `reasoning`), its deployments in preference order with the
    /// share of first attempts each takes; a path left out keeps the configured order.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub routes: BTreeMap<String, Vec<DeploymentWeight>>,
    /// Per task class, the weakest and strongest path `lumina-auto` may choose for it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub task_classes: BTreeMap<String, PathBounds>,
    /// What the policy was built from, for people reading the document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub built_from: Option<serde_json::Value>,
}

/// A request's, a key's or a policy's cost–quality preference.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Prefer {
    /// Cheaper paths unless the classifier is sure.
    Cost,
    /// The thresholds as trained.
    #[default]
    Balanced,
    /// Stronger paths unless the classifier is sure a weaker one does.
    Quality,
}

/// How far `cost` and `quality` move the classifier's thresholds.
pub const PREFER_SHIFT: f64 = 0.15;

impl Prefer {
    /// By name: `cost`, `balanced` or `quality`.
    pub fn parse(name: &str) -> Option<Prefer> {
        match name {
            "cost" => Some(Prefer::Cost),
            "balanced" => Some(Prefer::Balanced),
            "quality" => Some(Prefer::Quality),
            _ => None,
        }
    }

    /// The name.
    pub fn as_str(self) -> &'static str {
        match self {
            Prefer::Cost => "cost",
            Prefer::Balanced => "balanced",
            Prefer::Quality => "quality",
        }
    }

    /// How much it adds to the thresholds.
    pub fn shift(self) -> f64 {
        match self {
            Prefer::Cost => PREFER_SHIFT,
            Prefer::Balanced => 0.0,
            Prefer::Quality => -PREFER_SHIFT,
        }
    }

    fn is_balanced(&self) -> bool {
        *self == Prefer::Balanced
    }
}

/// One deployment of a path in a policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentWeight {
    /// `provider/model`, as the route table names it.
    pub id: String,
    /// Its share of first attempts, relative to the others of the path (0: fallback only).
    pub weight: f64,
    /// The figures the weight came from, for people reading the document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<serde_json::Value>,
}

/// Path bounds for one task class.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathBounds {
    /// The weakest path for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_path: Option<String>,
    /// The strongest path for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_path: Option<String>,
    /// `lumina-auto` answers its requests that classify as reasoning with the Fusion panel
    /// (when Fusion is enabled and the key is not barred from it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fusion: bool,
    /// Why, for people reading the document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The classifier part of a policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ClassifierDocument {
    /// The hand-written cue weights (no parameters).
    Cues,
    /// A learned linear model.
    Linear(LinearDocument),
}

/// A linear model's parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinearDocument {
    /// The paths of the weight columns, in order: always fast, balanced, reasoning.
    pub paths: Vec<String>,
    /// Hash buckets for the n-grams (a power of two).
    pub buckets: u64,
    /// Which n-grams are read, and from how much text.
    pub ngrams: NgramsDocument,
    /// A stored weight `q` means `q × scale`.
    pub scale: f64,
    /// Quantized bias per path.
    pub bias: [i64; 3],
    /// From probabilities to a path.
    pub thresholds: ThresholdsDocument,
    /// Quantized weights.
    pub weights: WeightsDocument,
}

/// The n-gram settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NgramsDocument {
    /// Word n-gram lengths: 1 (words), 2 (bigrams).
    pub words: Vec<usize>,
    /// Byte n-gram lengths (n-grams of the UTF-8 text: characters, for ASCII).
    pub bytes: Vec<usize>,
    /// Bytes of user text read (the head and tail of each turn, newest first).
    pub window_bytes: usize,
}

/// The thresholds, see [`Thresholds`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ThresholdsDocument {
    /// Least probability of reasoning that routes there.
    pub reasoning: f64,
    /// Least probability of balanced or stronger that routes to balanced.
    pub balanced: f64,
}

/// Quantized weights: structural inputs by name, and the non-zero hash buckets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeightsDocument {
    /// Weight per path of each structural input (absent: zero).
    pub structural: BTreeMap<String, [i64; 3]>,
    /// `[bucket, fast, balanced, reasoning]`, ascending by bucket; absent buckets are zero.
    pub hashed: Vec<[i64; 4]>,
}

/// How a policy's weights were trained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingInfo {
    /// Labelled items trained on.
    pub items: usize,
    /// Items per path (fast, balanced, reasoning).
    pub per_path: [usize; 3],
    /// Passes over the data.
    pub epochs: usize,
    /// AdaGrad's base learning rate.
    pub learning_rate: f64,
    /// L2 penalty per weight.
    pub l2: f64,
    /// Least items a hash bucket must occur in to get a weight.
    pub min_count: u32,
    /// Seed of the shuffles.
    pub seed: u64,
    /// Folds of the cross-validation that chose the thresholds.
    pub folds: usize,
    /// Least out-of-fold quality retained the thresholds had to keep.
    pub quality_floor: f64,
    /// Out-of-fold figures of the chosen thresholds: accuracy, quality retained, cost saved.
    pub cross_validation: [f64; 3],
}

/// A validated policy, ready to classify with.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// The policy's version.
    pub version: i64,
    /// The classifier.
    pub classifier: Classifier,
    /// The cost–quality setting when neither request nor key names one.
    pub prefer: Prefer,
    /// Per path (fast, balanced, reasoning): deployment ids and weights, in order; `None`
    /// keeps the configured order.
    pub routes: [Option<Vec<(String, f64)>>; 3],
    /// Per task class: the weakest and strongest path.
    pub task_classes: BTreeMap<String, (Option<RoutePath>, Option<RoutePath>)>,
    /// Task classes whose reasoning requests `lumina-auto` sends to the Fusion panel.
    pub fusion_classes: BTreeSet<String>,
}

/// A ready classifier.
#[derive(Debug, Clone, PartialEq)]
pub enum Classifier {
    /// The hand-written cue weights.
    Cues,
    /// A learned linear model.
    Linear(Box<LinearModel>),
}

/// The largest hash table a policy may ask for (2^22 buckets: a 16 MiB row index).
const MAX_BUCKETS: u64 = 1 << 22;

impl Policy {
    /// The hand-written classifier, version 1.
    pub fn cues() -> Policy {
        Policy {
            version: CUES_VERSION,
            classifier: Classifier::Cues,
            prefer: Prefer::Balanced,
            routes: Default::default(),
            task_classes: BTreeMap::new(),
            fusion_classes: BTreeSet::new(),
        }
    }

    /// Parses and validates a policy document.
    pub fn parse(json: &str) -> Result<Policy, PolicyError> {
        Policy::from_document(&serde_json::from_str(json)?)
    }

    /// Validates a document and builds the classifier it describes.
    pub fn from_document(doc: &PolicyDocument) -> Result<Policy, PolicyError> {
        if doc.version < 1 {
            return Err(invalid("version: must be at least 1"));
        }
        let classifier = match &doc.classifier {
            ClassifierDocument::Cues => Classifier::Cues,
            ClassifierDocument::Linear(l) => Classifier::Linear(Box::new(linear_model(l)?)),
        };
        let mut routes: [Option<Vec<(String, f64)>>; 3] = Default::default();
        for (path, deployments) in &doc.routes {
            let Some(p) = RoutePath::parse_tier(path) else {
                return Err(invalid(format!(
                    "routes.{path}: expected one of fast, balanced, reasoning"
                )));
            };
            let mut list = Vec::with_capacity(deployments.len());
            for (i, d) in deployments.iter().enumerate() {
                if !d.weight.is_finite() || !(0.0..=1_000_000.0).contains(&d.weight) {
                    return Err(invalid(format!(
                        "routes.{path}[{i}].weight: expected a number from 0 to 1000000"
                    )));
                }
                if d.id.is_empty() || list.iter().any(|(id, _)| id == &d.id) {
                    return Err(invalid(format!(
                        "routes.{path}[{i}].id: empty or named twice"
                    )));
                }
                list.push((d.id.clone(), d.weight));
            }
            if list.is_empty() {
                return Err(invalid(format!("routes.{path}: no deployments")));
            }
            routes[usize::from(p.rank())] = Some(list);
        }
        let mut task_classes = BTreeMap::new();
        let mut fusion_classes = BTreeSet::new();
        for (class, bounds) in &doc.task_classes {
            let tier = |name: &Option<String>, which: &str| match name {
                None => Ok(None),
                Some(n) => RoutePath::parse_tier(n).map(Some).ok_or_else(|| {
                    invalid(format!(
                        "task_classes.{class}.{which}: expected one of fast, balanced, reasoning"
                    ))
                }),
            };
            let min = tier(&bounds.min_path, "min_path")?;
            let max = tier(&bounds.max_path, "max_path")?;
            if let (Some(a), Some(b)) = (min, max)
                && a.rank() > b.rank()
            {
                return Err(invalid(format!(
                    "task_classes.{class}: min_path is stronger than max_path"
                )));
            }
            if bounds.fusion {
                if max.is_some_and(|m| m != RoutePath::Reasoning) {
                    return Err(invalid(format!(
                        "task_classes.{class}.fusion: its max_path keeps it off reasoning, the path Fusion stands in for"
                    )));
                }
                fusion_classes.insert(class.clone());
            }
            task_classes.insert(class.clone(), (min, max));
        }
        Ok(Policy {
            version: doc.version,
            classifier,
            prefer: doc.prefer,
            routes,
            task_classes,
            fusion_classes,
        })
    }

    /// The bounds the policy sets on `task_class`.
    pub fn bounds(&self, task_class: &str) -> (Option<RoutePath>, Option<RoutePath>) {
        self.task_classes
            .get(task_class)
            .copied()
            .unwrap_or((None, None))
    }

    /// Whether `lumina-auto` sends `task_class`'s reasoning requests to the Fusion panel.
    pub fn fuses(&self, task_class: &str) -> bool {
        self.fusion_classes.contains(task_class)
    }
}

/// The n-gram settings of a document, validated.
pub fn ngram_spec(n: &NgramsDocument) -> Result<NgramSpec, PolicyError> {
    if n.words.iter().any(|&w| w != 1 && w != 2) || !strictly_ascending(&n.words) {
        return Err(invalid(
            "classifier.ngrams.words: expected ascending lengths from {1, 2}",
        ));
    }
    if n.bytes.iter().any(|&c| c == 0 || c > MAX_BYTE_NGRAM) || !strictly_ascending(&n.bytes) {
        return Err(invalid(format!(
            "classifier.ngrams.bytes: expected ascending lengths from 1 to {MAX_BYTE_NGRAM}"
        )));
    }
    if !(64..=65_536).contains(&n.window_bytes) {
        return Err(invalid(
            "classifier.ngrams.window_bytes: expected 64 to 65536",
        ));
    }
    Ok(NgramSpec {
        words: n.words.contains(&1),
        bigrams: n.words.contains(&2),
        bytes: n.bytes.clone(),
    })
}

fn strictly_ascending(v: &[usize]) -> bool {
    v.windows(2).all(|w| w[0] < w[1])
}

fn dequantize(q: [i64; 3], scale: f64, what: &str) -> Result<[f32; 3], PolicyError> {
    let mut out = [0.0f32; 3];
    for (o, v) in out.iter_mut().zip(q) {
        let w = v as f64 * scale;
        if !w.is_finite() || w.abs() > 1e6 {
            return Err(invalid(format!("{what}: weight out of range")));
        }
        *o = w as f32;
    }
    Ok(out)
}

fn linear_model(l: &LinearDocument) -> Result<LinearModel, PolicyError> {
    if l.paths != ["fast", "balanced", "reasoning"] {
        return Err(invalid(
            "classifier.paths: expected [\"fast\", \"balanced\", \"reasoning\"]",
        ));
    }
    if !l.buckets.is_power_of_two() || !(256..=MAX_BUCKETS).contains(&l.buckets) {
        return Err(invalid(
            "classifier.buckets: expected a power of two from 256 to 4194304",
        ));
    }
    if !l.scale.is_finite() || l.scale <= 0.0 || l.scale > 1.0 {
        return Err(invalid("classifier.scale: expected a number in (0, 1]"));
    }
    let t = l.thresholds;
    if !(0.0..=1.0).contains(&t.reasoning) || !(0.0..=1.0).contains(&t.balanced) {
        return Err(invalid(
            "classifier.thresholds: expected probabilities from 0 to 1",
        ));
    }
    let mut structural = [[0.0f32; 3]; STRUCTURAL.len()];
    for (name, q) in &l.weights.structural {
        let Some(i) = STRUCTURAL.iter().position(|s| s == name) else {
            return Err(invalid(format!(
                "classifier.weights.structural: unknown input '{name}'"
            )));
        };
        structural[i] = dequantize(*q, l.scale, "classifier.weights.structural")?;
    }
    let buckets =
        usize::try_from(l.buckets).map_err(|_| invalid("classifier.buckets: too large"))?;
    let mut rows = Vec::with_capacity(l.weights.hashed.len());
    for row in &l.weights.hashed {
        let [bucket, rest @ ..] = *row;
        let bucket = usize::try_from(bucket).map_err(|_| {
            invalid(format!(
                "classifier.weights.hashed: bucket {bucket} out of range"
            ))
        })?;
        rows.push((
            bucket,
            dequantize(rest, l.scale, "classifier.weights.hashed")?,
        ));
    }
    let hashed = SparseWeights::new(buckets, rows).ok_or_else(|| {
        invalid("classifier.weights.hashed: a bucket is out of range or out of order")
    })?;
    Ok(LinearModel {
        buckets,
        ngrams: ngram_spec(&l.ngrams)?,
        window: l.ngrams.window_bytes,
        bias: dequantize(l.bias, l.scale, "classifier.bias")?,
        structural,
        hashed,
        thresholds: Thresholds {
            reasoning: t.reasoning,
            balanced: t.balanced,
        },
    })
}

impl PolicyDocument {
    /// The canonical rendering: indented JSON with one hashed weight row per line, ending in a
    /// newline. The same document always renders to the same bytes.
    pub fn to_json(&self) -> Result<String, PolicyError> {
        let mut outline = self.clone();
        let rows = match &mut outline.classifier {
            ClassifierDocument::Linear(l) => std::mem::take(&mut l.weights.hashed),
            ClassifierDocument::Cues => Vec::new(),
        };
        let mut json = serde_json::to_string_pretty(&outline)?;
        if let ClassifierDocument::Linear(_) = outline.classifier {
            let mut body = String::with_capacity(rows.len() * 24);
            for (i, r) in rows.iter().enumerate() {
                let sep = if i + 1 == rows.len() { "" } else { "," };
                body.push_str(&format!(
                    "\n        [{},{},{},{}]{sep}",
                    r[0], r[1], r[2], r[3]
                ));
            }
            let placeholder = "\"hashed\": []";
            let rendered = if rows.is_empty() {
                placeholder.to_string()
            } else {
                format!("\"hashed\": [{body}\n      ]")
            };
            json = json.replacen(placeholder, &rendered, 1);
        }
        json.push('\n');
        Ok(json)
    }
}

static DEFAULT: LazyLock<Policy> = LazyLock::new(|| match Policy::parse(DEFAULT_POLICY_JSON) {
    Ok(p) => p,
    Err(e) => {
        tracing::error!(error = %e, "the shipped routing policy does not load; routing with the hand-written classifier");
        Policy::cues()
    }
});

/// The shipped default policy, parsed on first use (the route table touches it at start).
pub fn default_policy() -> &'static Policy {
    &DEFAULT
}

/// The lines that differ between two policies, for people.
pub fn diff_lines(a: &PolicyDocument, b: &PolicyDocument) -> Vec<String> {
    let mut out = Vec::new();
    if a.version != b.version {
        out.push(format!("version: {} -> {}", a.version, b.version));
    }
    match (&a.classifier, &b.classifier) {
        (ClassifierDocument::Linear(x), ClassifierDocument::Linear(y)) => {
            if x.thresholds != y.thresholds {
                out.push(format!(
                    "classifier.thresholds: reasoning {} balanced {} -> reasoning {} balanced {}",
                    x.thresholds.reasoning,
                    x.thresholds.balanced,
                    y.thresholds.reasoning,
                    y.thresholds.balanced
                ));
            }
            if x.weights != y.weights || x.bias != y.bias || x.ngrams != y.ngrams {
                out.push(format!(
                    "classifier.weights: {} hashed rows -> {} (retrained)",
                    x.weights.hashed.len(),
                    y.weights.hashed.len()
                ));
            }
        }
        (x, y) if x != y => out.push("classifier: a different kind".into()),
        _ => {}
    }
    if a.prefer != b.prefer {
        out.push(format!(
            "prefer: {} -> {}",
            a.prefer.as_str(),
            b.prefer.as_str()
        ));
    }
    let paths: BTreeSet<&String> = a.routes.keys().chain(b.routes.keys()).collect();
    for path in paths {
        let render = |doc: &PolicyDocument| {
            doc.routes
                .get(path)
                .map_or("configured order".to_string(), |ds| {
                    ds.iter()
                        .map(|d| format!("{} {}", d.id, d.weight))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
        };
        let (x, y) = (render(a), render(b));
        if x != y {
            out.push(format!("routes.{path}: {x} -> {y}"));
        }
    }
    let classes: BTreeSet<&String> = a.task_classes.keys().chain(b.task_classes.keys()).collect();
    for class in classes {
        let render = |doc: &PolicyDocument| {
            doc.task_classes.get(class).map_or("-".to_string(), |t| {
                format!(
                    "min {} max {}{}",
                    t.min_path.as_deref().unwrap_or("-"),
                    t.max_path.as_deref().unwrap_or("-"),
                    if t.fusion { " fusion" } else { "" }
                )
            })
        };
        let (x, y) = (render(a), render(b));
        if x != y {
            out.push(format!("task_classes.{class}: {x} -> {y}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_policy_loads_as_a_linear_model() {
        let p = Policy::parse(DEFAULT_POLICY_JSON).unwrap();
        assert!(
            matches!(p.classifier, Classifier::Linear(_)),
            "{:?}",
            p.version
        );
        assert_eq!(default_policy(), &p);
    }

    #[test]
    fn the_shipped_policy_is_in_canonical_form() {
        let doc: PolicyDocument = serde_json::from_str(DEFAULT_POLICY_JSON).unwrap();
        assert_eq!(doc.to_json().unwrap(), DEFAULT_POLICY_JSON);
    }

    #[test]
    fn invalid_policies_are_refused_with_the_bad_key_named() {
        let good: serde_json::Value = serde_json::from_str(DEFAULT_POLICY_JSON).unwrap();
        let cases = [
            (
                "/classifier/buckets",
                serde_json::json!(1000),
                "classifier.buckets",
            ),
            (
                "/classifier/scale",
                serde_json::json!(-1.0),
                "classifier.scale",
            ),
            (
                "/classifier/thresholds/reasoning",
                serde_json::json!(1.5),
                "classifier.thresholds",
            ),
            (
                "/classifier/ngrams/bytes",
                serde_json::json!([4, 3]),
                "classifier.ngrams.bytes",
            ),
            (
                "/classifier/weights/hashed",
                serde_json::json!([[5, 1, 1, 1], [5, 1, 1, 1]]),
                "hashed",
            ),
            (
                "/classifier/weights/hashed",
                serde_json::json!([[-1, 1, 1, 1]]),
                "hashed",
            ),
            (
                "/classifier/bias",
                serde_json::json!([i64::MAX, 0, 0]),
                "classifier.bias",
            ),
            ("/version", serde_json::json!(0), "version"),
        ];
        for (pointer, value, named) in cases {
            let mut doc = good.clone();
            *doc.pointer_mut(pointer).unwrap() = value;
            let err = Policy::parse(&doc.to_string()).unwrap_err().to_string();
            assert!(err.contains(named), "{pointer}: {err}");
        }
        let mut doc = good.clone();
        doc["classifier"]["weights"]["structural"]["nonsense"] = serde_json::json!([1, 2, 3]);
        assert!(Policy::parse(&doc.to_string()).is_err());
        assert!(Policy::parse("{\"version\": 3}").is_err());
        assert!(Policy::parse("not json").is_err());
    }

    #[test]
    fn fusion_is_an_option_of_the_task_classes_that_allow_it() {
        let mut doc: serde_json::Value = serde_json::from_str(DEFAULT_POLICY_JSON).unwrap();
        doc["task_classes"] = serde_json::json!({
            "math": {"min_path": "reasoning", "fusion": true},
            "code": {"min_path": "balanced"},
        });
        let p = Policy::parse(&doc.to_string()).unwrap();
        assert!(p.fuses("math"));
        assert!(!p.fuses("code") && !p.fuses("chat"));
        let canonical: PolicyDocument = serde_json::from_value(doc.clone()).unwrap();
        assert!(canonical.to_json().unwrap().contains("\"fusion\": true"));
        doc["task_classes"]["code"] = serde_json::json!({"max_path": "balanced", "fusion": true});
        let err = Policy::parse(&doc.to_string()).unwrap_err().to_string();
        assert!(err.contains("task_classes.code.fusion"), "{err}");
    }

    #[test]
    fn the_cue_policy_is_a_document_too() {
        let p = Policy::parse("{\"version\": 1, \"classifier\": {\"kind\": \"cues\"}}").unwrap();
        assert_eq!(p, Policy::cues());
    }
}
