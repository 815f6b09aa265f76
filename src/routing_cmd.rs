//! `lumina policy train` and `lumina eval routing`: read labelled routing sets (JSONL files),
//! train a policy or measure one in process, and write the policy or the figures. The learning
//! and the arithmetic live in `lumina_gateway::routing`; this module only does the files.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use lumina_gateway::routing::classifier::classify_with;
use lumina_gateway::routing::dataset::{LabelledItem, parse_dataset};
use lumina_gateway::routing::eval::{CostWeights, RoutingReport, evaluate};
use lumina_gateway::routing::policy::{self, Policy};
use lumina_gateway::routing::train::{TrainConfig, train};

/// Reads labelled routing sets and `lumina eval export` files; says on stderr how many exported
/// requests were labelled from their feedback, how many from their eval results, and how many
/// carried no label.
pub(crate) fn read_items(paths: &[PathBuf]) -> anyhow::Result<Vec<LabelledItem>> {
    let mut items = Vec::new();
    for path in paths {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let parsed = parse_dataset(&text).with_context(|| path.display().to_string())?;
        if parsed.from_feedback + parsed.from_evals + parsed.skipped > 0 {
            eprintln!(
                "{}: {} exported requests labelled from their feedback, {} from their eval results, {} without content, feedback or eval results skipped",
                path.display(),
                parsed.from_feedback,
                parsed.from_evals,
                parsed.skipped
            );
        }
        items.extend(parsed.items);
    }
    Ok(items)
}

/// Trains a policy on `datasets` and writes it to `out` (standard output without one).
pub fn train_policy(datasets: &[PathBuf], out: Option<&Path>, version: i64) -> anyhow::Result<()> {
    let items = read_items(datasets)?;
    let config = TrainConfig {
        version,
        ..TrainConfig::default()
    };
    let doc = train(&items, &config)?;
    let json = doc.to_json()?;
    match out {
        Some(path) => {
            let tmp = path.with_extension("json.tmp");
            std::fs::write(&tmp, &json).with_context(|| format!("writing {}", tmp.display()))?;
            std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
        }
        None => std::io::stdout().lock().write_all(json.as_bytes())?,
    }
    if let Some(t) = &doc.training {
        let [accuracy, quality, saved] = t.cross_validation;
        eprintln!(
            "trained policy version {version} on {} items ({} KiB); {}-fold cross-validation on them: accuracy {accuracy:.3}, quality retained {quality:.3}, cost saved {:.1}%",
            t.items,
            json.len() / 1024,
            t.folds,
            100.0 * saved
        );
    }
    Ok(())
}

/// The bars `lumina eval routing` must clear.
#[derive(Debug, Default)]
pub struct Minimums {
    /// Least accuracy.
    pub accuracy: Option<f64>,
    /// Least quality retained.
    pub quality_retained: Option<f64>,
    /// Least cost saved (a share, 0.4 for 40%).
    pub cost_saved: Option<f64>,
}

/// Measures `policy` (the shipped default without one) on `dataset`, prints the figures, and
/// fails when one is below its minimum.
pub fn eval_routing(
    dataset: &Path,
    policy_file: Option<&Path>,
    weights: &str,
    json: bool,
    min: &Minimums,
) -> anyhow::Result<()> {
    let weights = CostWeights::parse(weights).map_err(|e| anyhow::anyhow!("--weights: {e}"))?;
    let policy = match policy_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            Policy::parse(&text).with_context(|| path.display().to_string())?
        }
        None => policy::default_policy().clone(),
    };
    let items = read_items(&[dataset.to_path_buf()])?;
    let mut pairs = Vec::with_capacity(items.len());
    for item in &items {
        pairs.push((item.path, classify_with(&item.request()?, &policy).path));
    }
    let report = evaluate(pairs, &weights);
    let mut out = std::io::stdout().lock();
    if json {
        let mut value = serde_json::to_value(&report)?;
        value["policy_version"] = policy.version.into();
        serde_json::to_writer_pretty(&mut out, &value)?;
        out.write_all(b"\n")?;
    } else {
        writeln!(out, "policy version    {}", policy.version)?;
        out.write_all(report.render().as_bytes())?;
    }
    check(&report, min)
}

fn check(r: &RoutingReport, min: &Minimums) -> anyhow::Result<()> {
    let figures = [
        ("accuracy", r.accuracy, min.accuracy),
        ("quality retained", r.quality_retained, min.quality_retained),
        ("cost saved", r.cost_saved, min.cost_saved),
    ];
    let below: Vec<String> = figures
        .iter()
        .filter_map(|(name, got, want)| {
            want.filter(|w| got < w)
                .map(|w| format!("{name} {got:.3} is below {w:.3}"))
        })
        .collect();
    if !below.is_empty() {
        bail!("{}", below.join("; "));
    }
    Ok(())
}
