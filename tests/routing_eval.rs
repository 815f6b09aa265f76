//! The routing acceptance, through the real binary: the shipped policy clears the bar on the
//! shipped dev split (`lumina eval routing --min-…`), the bar fails a classifier below it, and
//! `lumina policy train` on the train split reproduces the shipped policy byte for byte, so the
//! weights in the repository are what the code trains.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

use std::path::PathBuf;
use std::process::{Command, Output};

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn lumina(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lumina"))
        .args(args)
        .output()
        .expect("run lumina")
}

fn eval(policy: Option<&str>, extra: &[&str]) -> (Output, serde_json::Value) {
    let dev = repo("datasets/routing/dev.jsonl");
    let mut args = vec![
        "eval",
        "routing",
        "--dataset",
        dev.to_str().unwrap(),
        "--json",
    ];
    let policy_path = policy.map(repo);
    if let Some(p) = &policy_path {
        args.extend(["--policy", p.to_str().unwrap()]);
    }
    args.extend(extra);
    let out = lumina(&args);
    let report = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out, report)
}

#[test]
fn the_shipped_policy_clears_the_bar_on_the_dev_split() {
    let (out, r) = eval(
        None,
        &[
            "--min-accuracy",
            "0.85",
            "--min-quality-retained",
            "0.95",
            "--min-cost-saved",
            "0.40",
        ],
    );
    assert!(
        out.status.success(),
        "{}\n{r}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(r["items"], 212, "{r}");
    assert!(r["policy_version"].as_i64().unwrap() >= 2, "{r}");
    assert!(r["accuracy"].as_f64().unwrap() >= 0.85, "{r}");
    assert!(r["quality_retained"].as_f64().unwrap() >= 0.95, "{r}");
    assert!(r["cost_saved"].as_f64().unwrap() >= 0.40, "{r}");
    for path in r["per_path"].as_array().unwrap() {
        assert!(path["recall"].as_f64().unwrap() >= 0.7, "{r}");
    }
}

#[test]
fn the_bar_fails_the_hand_written_classifier() {
    let (out, r) = eval(
        Some("gateway/policies/cues.json"),
        &["--min-accuracy", "0.85", "--min-quality-retained", "0.95"],
    );
    assert!(!out.status.success(), "{r}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("accuracy") && stderr.contains("below"),
        "{stderr}"
    );
    assert_eq!(r["policy_version"], 1);
    assert!(r["accuracy"].as_f64().unwrap() < 0.6, "{r}");
}

#[test]
fn the_text_report_shows_the_confusion_matrix_and_cost_weights() {
    let dev = repo("datasets/routing/dev.jsonl");
    let out = lumina(&[
        "eval",
        "routing",
        "--dataset",
        dev.to_str().unwrap(),
        "--weights",
        "fast=1,balanced=4,reasoning=16",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for expected in [
        "accuracy",
        "quality retained",
        "cost saved",
        "labelled \\ routed",
        "balanced=4",
    ] {
        assert!(text.contains(expected), "{expected}: {text}");
    }
    let bad = lumina(&[
        "eval",
        "routing",
        "--dataset",
        dev.to_str().unwrap(),
        "--weights",
        "slow=2",
    ]);
    assert!(!bad.status.success());
}

#[test]
fn policy_train_reproduces_the_shipped_policy_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("policy.json");
    let train = repo("datasets/routing/train.jsonl");
    let out = lumina(&[
        "policy",
        "train",
        "--dataset",
        train.to_str().unwrap(),
        "--out",
        out_path.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let trained = std::fs::read(&out_path).unwrap();
    let shipped = std::fs::read(repo("gateway/policies/default.json")).unwrap();
    assert!(
        trained == shipped,
        "retrain with `lumina policy train --dataset datasets/routing/train.jsonl --out gateway/policies/default.json`"
    );
    assert!(shipped.len() < 2 * 1024 * 1024, "{} bytes", shipped.len());
}
