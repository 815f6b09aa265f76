//! `lumina policy build | diff | publish | list | show | rollback`: building a candidate policy
//! from the read model's traffic (in process, reading the database), comparing two policy
//! files, and the admin API calls that publish one, list them, show one and make an earlier one
//! active again.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use lumina_gateway::routing::build::{BuildInput, build};
use lumina_gateway::routing::policy::{DEFAULT_POLICY_JSON, Policy, PolicyDocument, diff_lines};
use lumina_gateway::routing::train::{TrainConfig, train};
use lumina_projector::ReadModel;
use reqwest::Method;
use serde_json::{Value, json};

use crate::client::AdminClient;
use crate::routing_cmd::read_items;

/// What `lumina policy build` reads.
pub struct BuildArgs<'a> {
    /// The read model.
    pub views: &'a ReadModel,
    /// Traffic routed at or after, µs.
    pub since: i64,
    /// Labelled routing sets to retrain the classifier on (none: keep the base's).
    pub datasets: &'a [PathBuf],
    /// The candidate's version (default: one above every published and the shipped one).
    pub version: Option<i64>,
    /// Where to write it.
    pub out: &'a Path,
}

/// Builds a candidate from the active policy (or the shipped one) and the traffic since
/// `since`, writes it to `out` and prints what it changed.
pub async fn build_policy(args: BuildArgs<'_>) -> anyhow::Result<()> {
    let views = args.views;
    let base_json = match views.active_policy_version().await? {
        Some(v) => match views.policy(v).await? {
            Some(row) => row.snapshot_json,
            None => DEFAULT_POLICY_JSON.to_string(),
        },
        None => DEFAULT_POLICY_JSON.to_string(),
    };
    let mut base: PolicyDocument =
        serde_json::from_str(&base_json).context("the active policy is not a policy document")?;
    let shipped = lumina_gateway::routing::policy::default_policy().version;
    let version = match args.version {
        Some(v) => v,
        None => {
            views
                .latest_policy_version()
                .await?
                .unwrap_or(0)
                .max(shipped)
                + 1
        }
    };
    if !args.datasets.is_empty() {
        let items = read_items(args.datasets)?;
        let trained = train(
            &items,
            &TrainConfig {
                version,
                ..TrainConfig::default()
            },
        )?;
        base.classifier = trained.classifier;
        base.training = trained.training;
    }
    let attempts = views.attempt_samples(args.since).await?;
    let feedback = views.feedback_samples(args.since).await?;
    let evals = views.eval_samples(args.since).await?;
    let doc = build(BuildInput {
        base,
        version,
        attempts: &attempts,
        feedback: &feedback,
        evals: &evals,
        since: args.since,
    });
    Policy::from_document(&doc).context("the candidate does not validate")?;
    let json = doc.to_json()?;
    let tmp = args.out.with_extension("json.tmp");
    std::fs::write(&tmp, &json).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, args.out).with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!(
        "built policy version {version} from {} attempts, {} feedback scores and {} eval results into {}",
        attempts.len(),
        feedback.len(),
        evals.len(),
        args.out.display()
    );
    for (path, deployments) in &doc.routes {
        let weights: Vec<String> = deployments
            .iter()
            .map(|d| format!("{} {}", d.id, d.weight))
            .collect();
        eprintln!("  {path}: {}", weights.join(", "));
    }
    for (class, bounds) in &doc.task_classes {
        eprintln!(
            "  task class {class}: min {} max {}{}",
            bounds.min_path.as_deref().unwrap_or("-"),
            bounds.max_path.as_deref().unwrap_or("-"),
            if bounds.fusion { " fusion" } else { "" }
        );
    }
    Ok(())
}

fn read_document(path: &Path) -> anyhow::Result<PolicyDocument> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Policy::parse(&text).with_context(|| path.display().to_string())?;
    serde_json::from_str(&text).with_context(|| path.display().to_string())
}

/// Prints what differs between the policy files `a` and `b`.
pub fn diff(a: &Path, b: &Path) -> anyhow::Result<()> {
    let lines = diff_lines(&read_document(a)?, &read_document(b)?);
    let mut stdout = std::io::stdout().lock();
    if lines.is_empty() {
        writeln!(stdout, "no differences")?;
    }
    for line in lines {
        writeln!(stdout, "{line}")?;
    }
    Ok(())
}

fn reason_query(reason: Option<&str>) -> String {
    reason.map_or(String::new(), |r| {
        format!("?reason={}", crate::query_param(r))
    })
}

/// Publishes the policy file `file`.
pub async fn publish(
    client: &AdminClient,
    file: &Path,
    reason: Option<&str>,
) -> anyhow::Result<Value> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let document: Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", file.display()))?;
    client
        .call(
            Method::POST,
            &format!("/admin/policies{}", reason_query(reason)),
            Some(document),
        )
        .await
}

/// Makes the published `version` active again.
pub async fn rollback(
    client: &AdminClient,
    version: i64,
    reason: Option<&str>,
) -> anyhow::Result<Value> {
    client
        .call(
            Method::POST,
            &format!(
                "/admin/policies/{version}/activate{}",
                reason_query(reason.or(Some("rollback")))
            ),
            None,
        )
        .await
}

/// The published policies, one line each.
pub async fn list(client: &AdminClient, as_json: bool) -> anyhow::Result<()> {
    let value = client.call(Method::GET, "/admin/policies", None).await?;
    if as_json {
        return crate::client::print_json(&value);
    }
    let mut stdout = std::io::stdout().lock();
    writeln!(
        stdout,
        "in force on this gateway: version {}",
        value["in_force"]
    )?;
    writeln!(
        stdout,
        "{:>8}  {:6}  {:>12}  reason",
        "version", "active", "published"
    )?;
    for p in value["data"].as_array().into_iter().flatten() {
        writeln!(
            stdout,
            "{:>8}  {:6}  {:>12}  {}",
            p["version"],
            if p["active"] == json!(true) {
                "yes"
            } else {
                ""
            },
            p["published_at"],
            p["reason"].as_str().unwrap_or("")
        )?;
    }
    Ok(())
}

/// One policy's document (the one in force without a version).
pub async fn show(client: &AdminClient, version: Option<i64>) -> anyhow::Result<()> {
    let which = version.map_or("active".to_string(), |v| v.to_string());
    let value = client
        .call(Method::GET, &format!("/admin/policies/{which}"), None)
        .await?;
    crate::client::print_json(&value["policy"])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_names_what_changed_and_nothing_else() {
        let a: PolicyDocument = serde_json::from_str(DEFAULT_POLICY_JSON).unwrap();
        assert!(diff_lines(&a, &a).is_empty());
        let mut b = a.clone();
        b.version = 9;
        b.task_classes.insert(
            "extraction".into(),
            lumina_gateway::routing::policy::PathBounds {
                min_path: Some("balanced".into()),
                ..Default::default()
            },
        );
        let lines = diff_lines(&a, &b);
        assert_eq!(
            lines,
            [
                format!("version: {} -> 9", a.version),
                "task_classes.extraction: - -> min balanced max -".to_string()
            ]
        );
    }
}
