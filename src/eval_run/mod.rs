//! `lumina eval run`: sends every item of an eval dataset through a gateway to every model
//! asked for, scores each answer (exact, regex, JSON Schema, numeric, or a judge route whose
//! request is metered like any other), records one `EvalCompleted` per item × model through
//! `POST /v1/evals/results`, and prints quality, cost and latency per model.
//!
//! The gateway is one already running (`--url`, `--key`) or a `lumina serve` child started for
//! the run (`--config`, see [`child`]). Requests run at most `--concurrency` at a time; a
//! progress bar on standard error counts them. The run fails when the gateway cannot be reached
//! or no request got an answer.

mod check;
mod child;
mod dataset;
mod gateway;
mod report;

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use lumina_gateway::api::evals::{EvalResult, MAX_RESULTS};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::eval_run::check::Check;
use crate::eval_run::dataset::Item;
use crate::eval_run::gateway::{Completion, Gateway};
use crate::eval_run::report::{Outcome, Report, compare_fusion, result_line, summarize};

/// Results recorded per `POST /v1/evals/results`.
const BATCH: usize = 25;
/// The judge's output cap: a JSON object with a score and one sentence.
const JUDGE_MAX_TOKENS: u32 = 300;

/// `lumina eval run`'s flags.
#[derive(Args)]
pub struct EvalRunArgs {
    /// Eval dataset (JSONL, datasets/evals/README.md).
    #[arg(long)]
    dataset: PathBuf,
    /// The dataset's name in the recorded results [default: the file name without extension].
    #[arg(long)]
    name: Option<String>,
    /// Models to send every item to, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "lumina-auto")]
    models: Vec<String>,
    /// The model that grades judge checks.
    #[arg(long, default_value = "lumina-balanced")]
    judge_model: String,
    /// Base URL of a running gateway.
    #[arg(long, env = "LUMINA_URL", required_unless_present = "config")]
    url: Option<String>,
    /// API key the items are sent with (and charged to); with --config, the demo key of a
    /// fresh data dir when not given.
    #[arg(long, env = "LUMINA_API_KEY", hide_env_values = true)]
    key: Option<String>,
    /// Start `lumina serve` with this configuration for the run, on a free 127.0.0.1 port.
    #[arg(long, conflicts_with = "url")]
    config: Option<PathBuf>,
    /// With --config: the data dir to serve from and keep [default: a temporary one, removed
    /// after the run].
    #[arg(long, requires = "config")]
    data_dir: Option<PathBuf>,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256))]
    concurrency: u32,
    /// Seconds one request may take.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs the eval.
pub async fn run(args: EvalRunArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.dataset)
        .with_context(|| format!("reading {}", args.dataset.display()))?;
    let items =
        dataset::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e:#}", args.dataset.display()))?;
    let name = match &args.name {
        Some(name) => name.clone(),
        None => args
            .dataset
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .context("the dataset path has no file name; pass --name")?,
    };
    let models: Vec<String> = args
        .models
        .iter()
        .map(|m| m.trim().to_string())
        .filter(|m| !m.is_empty())
        .collect();
    if models.is_empty() {
        bail!("--models names no model");
    }
    let timeout = Duration::from_secs(args.timeout);
    let (gateway, child) = match &args.config {
        Some(config) => {
            let child = child::ServeChild::start(config, args.data_dir.as_deref()).await?;
            let key = args.key.clone().or_else(|| child.demo_key.clone());
            let Some(key) = key else {
                child.stop().await?;
                bail!(
                    "the gateway started from {} printed no demo key (the data dir is not new, or \
                     [demo] is disabled): pass --key",
                    config.display()
                );
            };
            (Gateway::new(&child.url, key, timeout)?, Some(child))
        }
        None => {
            let url = args.url.clone().context("pass --url or --config")?;
            let key = args
                .key
                .clone()
                .context("pass --key (or set LUMINA_API_KEY) with --url")?;
            (Gateway::new(&url, key, timeout)?, None)
        }
    };
    let run = Run {
        run_id: lumina_schemas::ids::new_id("run"),
        dataset: name,
        items,
        models,
        judge_model: args.judge_model.clone(),
    };
    let outcome = evaluate(
        Arc::new(run),
        Arc::new(gateway),
        args.concurrency,
        args.json,
    )
    .await;
    if let Some(child) = child {
        child.stop().await?;
    }
    outcome
}

/// What one run sends.
struct Run {
    run_id: String,
    dataset: String,
    items: Vec<Item>,
    models: Vec<String>,
    judge_model: String,
}

async fn evaluate(
    run: Arc<Run>,
    gateway: Arc<Gateway>,
    concurrency: u32,
    json: bool,
) -> anyhow::Result<()> {
    gateway.check().await?;
    let total = run.items.len() * run.models.len();
    let bar = ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} evaluating [{bar:40}] {pos}/{len} answers ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let permits = Arc::new(Semaphore::new(concurrency as usize));
    let mut tasks = JoinSet::new();
    for item in 0..run.items.len() {
        for model in 0..run.models.len() {
            let (run, gateway, permits) = (run.clone(), gateway.clone(), permits.clone());
            tasks.spawn(async move {
                let _permit = permits.acquire_owned().await;
                answer(&run, &gateway, item, model).await
            });
        }
    }
    let mut outcomes = Vec::with_capacity(total);
    let mut pending: Vec<usize> = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let outcome = joined.context("an eval task failed")?;
        if outcome.score.is_some() {
            pending.push(outcomes.len());
        }
        outcomes.push(outcome);
        bar.inc(1);
        if pending.len() >= BATCH {
            record(&run, &gateway, &mut outcomes, &mut pending).await?;
        }
    }
    record(&run, &gateway, &mut outcomes, &mut pending).await?;
    bar.finish_and_clear();
    outcomes.sort_by_key(|o| (o.item, o.model));
    report(&run, &outcomes, json)?;
    if outcomes.iter().all(|o| o.answer.is_none()) {
        if outcomes.iter().any(|o| o.unreachable) {
            bail!("the gateway at {} could not be reached", gateway.base());
        }
        bail!("every request failed");
    }
    Ok(())
}

/// Sends item `item` to model `model` and scores the answer.
async fn answer(run: &Run, gateway: &Gateway, item: usize, model: usize) -> Outcome {
    let it = &run.items[item];
    let mut outcome = Outcome {
        item,
        model,
        item_id: it.id.clone(),
        check: it.check.kind(),
        answer: None,
        judge: None,
        score: None,
        error: None,
        unreachable: false,
        event_id: None,
    };
    let sent = gateway
        .complete(&Completion {
            model: &run.models[model],
            messages: &it.messages,
            max_tokens: it.max_tokens,
            response_format: it.response_format.as_ref(),
            temperature: None,
        })
        .await;
    let answered = match sent {
        Ok(answered) => answered,
        Err(failed) => {
            outcome.unreachable = failed.unreachable;
            outcome.error = Some(match failed.request_id {
                Some(id) => format!("{} (request {id})", failed.message),
                None => failed.message,
            });
            return outcome;
        }
    };
    match &it.check {
        Check::Judge(judge) => {
            let messages = judge.messages(&it.messages, &answered.text);
            let graded = gateway
                .complete(&Completion {
                    model: &run.judge_model,
                    messages: &messages,
                    max_tokens: Some(JUDGE_MAX_TOKENS),
                    response_format: None,
                    temperature: Some(0.0),
                })
                .await;
            match graded {
                Ok(reply) => {
                    match judge.verdict(&reply.text) {
                        Ok(score) => outcome.score = Some(score),
                        Err(e) => {
                            outcome.error = Some(format!("{e} (request {})", reply.request_id))
                        }
                    }
                    outcome.judge = Some(reply);
                }
                Err(failed) => {
                    outcome.error = Some(format!("the judge failed: {}", failed.message))
                }
            }
        }
        check => outcome.score = check.score(&answered.text),
    }
    outcome.answer = Some(answered);
    outcome
}

/// Records the scored outcomes at `pending` and notes their event ids.
async fn record(
    run: &Run,
    gateway: &Gateway,
    outcomes: &mut [Outcome],
    pending: &mut Vec<usize>,
) -> anyhow::Result<()> {
    for batch in pending.chunks(MAX_RESULTS.min(BATCH)) {
        let results: Vec<EvalResult> = batch
            .iter()
            .filter_map(|&i| {
                let o = &outcomes[i];
                let (answer, score) = (o.answer.as_ref()?, o.score?);
                Some(EvalResult {
                    run_id: run.run_id.clone(),
                    dataset: run.dataset.clone(),
                    item_id: o.item_id.clone(),
                    request_id: answer.request_id.clone(),
                    task_class: run.items[o.item].task_class.clone(),
                    check_kind: o.check,
                    score: score.score,
                    passed: score.passed,
                    latency_ms: answer.latency_ms,
                    judge_request_id: o.judge.as_ref().map(|j| j.request_id.clone()),
                })
            })
            .collect();
        let recorded = gateway.record(results).await?;
        for (&i, r) in batch.iter().zip(recorded.data) {
            outcomes[i].event_id = Some(r.event_id);
        }
    }
    pending.clear();
    Ok(())
}

fn report(run: &Run, outcomes: &[Outcome], json: bool) -> anyhow::Result<()> {
    let models = run
        .models
        .iter()
        .enumerate()
        .map(|(m, name)| {
            let of: Vec<&Outcome> = outcomes.iter().filter(|o| o.model == m).collect();
            summarize(name, &of)
        })
        .collect::<Vec<_>>();
    let report = Report {
        run_id: &run.run_id,
        dataset: &run.dataset,
        items: run.items.len(),
        fusion: compare_fusion(&models),
        models,
        results: outcomes
            .iter()
            .map(|o| result_line(o, &run.models[o.model]))
            .collect(),
    };
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        out.write_all(b"\n")?;
        return Ok(());
    }
    out.write_all(report.render().as_bytes())?;
    let failures: Vec<&Outcome> = outcomes.iter().filter(|o| o.error.is_some()).collect();
    let mut err = std::io::stderr().lock();
    for o in failures.iter().take(20) {
        writeln!(
            err,
            "  {} on {}: {}",
            o.item_id,
            run.models[o.model],
            o.error.as_deref().unwrap_or_default()
        )?;
    }
    if failures.len() > 20 {
        writeln!(err, "  … and {} more without a score", failures.len() - 20)?;
    }
    let recorded = outcomes.iter().filter(|o| o.event_id.is_some()).count();
    writeln!(
        err,
        "recorded {recorded} EvalCompleted events (run {})",
        run.run_id
    )?;
    Ok(())
}
