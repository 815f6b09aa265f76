//! The `lumina` command line. Each subcommand parses its flags here and hands off to its module.

mod client;
mod config;
mod consumer_cmd;
mod data_dir;
mod embedded;
mod eval_export;
mod eval_run;
mod http;
mod policy_cmd;
mod replay;
mod routing_cmd;
mod secrets;
mod serve;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use reqwest::Method;
use serde_json::json;

use crate::client::{AdminClient, print_json};

/// mimalloc: the gateway allocates many short-lived buffers per request; glibc's allocator
/// showed up at ~10% of CPU under load, mimalloc at a fraction of that.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use crate::config::Config;

/// Lumina: an OpenAI-compatible model gateway that routes, meters and records every request.
#[derive(Parser)]
#[command(name = "lumina", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the embedded mode: gateway, local log, read models and consumers in one process.
    Serve(ServeArgs),
    /// Distributed mode's gateway: serves the API, ships its local log to Kafka.
    Gateway(ServeArgs),
    /// Run the read-model projector on its own: on the Kafka topic when the configuration has
    /// `[kafka]`, else over a data dir's local log.
    Projector(ProjectorCommand),
    /// Run the ledger on its own, rebuild it, or print a statement.
    Ledger(LedgerCommand),
    /// Check the journal against the event log (the topic with `[kafka]`); exit 0 when clean.
    Reconcile(ReconcileArgs),
    /// Print events as JSON lines: a data dir's local log, or with a `[kafka]` configuration
    /// the topic.
    Replay(ReplayArgs),
    /// Live events.
    #[command(subcommand)]
    Events(EventsCommand),
    /// Eval datasets from production traffic, routing evals, and eval runs through a gateway.
    #[command(subcommand)]
    Eval(EvalCommand),
    /// Routing policies.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Manage accounts through the admin API.
    #[command(subcommand)]
    Accounts(AccountsCommand),
    /// Manage API keys through the admin API.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Manage an account's projects through the admin API.
    #[command(subcommand)]
    Projects(ProjectsCommand),
    /// Manage budgets on accounts, projects and keys through the admin API.
    #[command(subcommand)]
    Budgets(BudgetsCommand),
    /// Manage admin keys and their roles through the admin API (owner keys only).
    #[command(subcommand, name = "admin-keys")]
    AdminKeys(AdminKeysCommand),
}

#[derive(Subcommand)]
enum AdminKeysCommand {
    /// Issue an admin key; it is printed once.
    Create {
        /// Display name.
        #[arg(long)]
        name: String,
        /// owner, operator, finance or viewer.
        #[arg(long)]
        role: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List the admin keys issued.
    List {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Revoke an admin key.
    Revoke {
        /// Admin key id (adm_…).
        id: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// Configuration file (lumina.toml); defaults apply without one.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Data directory [default: ./lumina-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
struct ProjectorCommand {
    #[command(subcommand)]
    action: Option<ProjectorAction>,
    #[command(flatten)]
    args: ProjectorArgs,
}

#[derive(Subcommand)]
enum ProjectorAction {
    /// Empty the read models and replay the whole log into them.
    Rebuild(ProjectorArgs),
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
struct LedgerCommand {
    #[command(subcommand)]
    action: Option<LedgerAction>,
    #[command(flatten)]
    args: ProjectorArgs,
}

#[derive(Subcommand)]
enum LedgerAction {
    /// Empty the ledger's tables and replay the whole log into them.
    Rebuild(ProjectorArgs),
    /// Print an account's statement (through the admin API).
    Statement {
        /// Account id (acct_…).
        #[arg(long)]
        account: String,
        /// Start: RFC 3339, YYYY-MM-DD or Unix seconds.
        #[arg(long)]
        from: Option<String>,
        /// End (exclusive).
        #[arg(long)]
        to: Option<String>,
        /// csv or json.
        #[arg(long, default_value = "csv")]
        format: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Args)]
struct ReconcileArgs {
    /// Configuration file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory holding the local log.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Database URL (overrides the configuration).
    #[arg(long, env = "LUMINA_DATABASE_URL")]
    database_url: Option<String>,
    /// Seconds to wait for the ledger to apply the log as it is at start.
    #[arg(long, default_value_t = 30)]
    wait: u64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Clone)]
struct ProjectorArgs {
    /// Configuration file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory holding the local log.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Database URL (overrides the configuration).
    #[arg(long, env = "LUMINA_DATABASE_URL")]
    database_url: Option<String>,
    /// Stop once the log (or with `[kafka]` every partition of the topic) as it was at start
    /// has been applied.
    #[arg(long)]
    once: bool,
}

#[derive(Subcommand)]
enum EvalCommand {
    /// Write one JSON line per settled request (schemas/eval/v2.schema.json) to a file.
    Export(EvalExportArgs),
    /// Measure a routing policy's classifier on a labelled routing set (in process): accuracy,
    /// precision and recall per path, confusion matrix, quality retained, cost saved.
    Routing(EvalRoutingArgs),
    /// Send an eval dataset through a gateway to one or more models, score every answer,
    /// record an EvalCompleted per item and model, and print quality, cost and latency.
    Run(eval_run::EvalRunArgs),
}

#[derive(Args)]
struct EvalRoutingArgs {
    /// Labelled routing set (JSONL, datasets/routing/README.md).
    #[arg(long)]
    dataset: PathBuf,
    /// Policy file [default: the shipped policy]; gateway/policies/cues.json is the
    /// hand-written classifier.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Relative cost per path.
    #[arg(long, default_value = "fast=1,balanced=5,reasoning=20")]
    weights: String,
    /// Print the figures as JSON.
    #[arg(long)]
    json: bool,
    /// Fail when accuracy is below this.
    #[arg(long)]
    min_accuracy: Option<f64>,
    /// Fail when quality retained is below this.
    #[arg(long)]
    min_quality_retained: Option<f64>,
    /// Fail when the share of the all-reasoning cost saved is below this (0.4 for 40%).
    #[arg(long)]
    min_cost_saved: Option<f64>,
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Train a policy's classifier on labelled routing sets (deterministic: the same files give
    /// the same bytes).
    Train {
        /// Labelled routing sets (JSONL); repeat or list several.
        #[arg(long, num_args = 1.., required = true)]
        dataset: Vec<PathBuf>,
        /// Output file [default: standard output].
        #[arg(long)]
        out: Option<PathBuf>,
        /// The policy's version.
        #[arg(long, default_value_t = 2)]
        version: i64,
    },
    /// Build a candidate policy from the read model's traffic: deployment weights from each
    /// deployment's latency p90, error and timeout rates per path, task-class floors from
    /// feedback, starting from the active policy (or retrained on --dataset).
    Build(PolicyBuildArgs),
    /// Show what differs between two policy files.
    Diff {
        /// The first policy file.
        a: PathBuf,
        /// The second policy file.
        b: PathBuf,
    },
    /// Publish a policy file (admin API `POST /admin/policies`); every gateway takes it within
    /// a second.
    Publish {
        /// The policy file.
        file: PathBuf,
        /// Why, recorded in the event.
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List the published policies.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Print a published policy (the one in force without a version).
    Show {
        /// The version.
        version: Option<i64>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Make an earlier published version the active one again (admin API
    /// `POST /admin/policies/{version}/activate`).
    Rollback {
        /// The version.
        version: i64,
        /// Why, recorded in the event.
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Args)]
struct PolicyBuildArgs {
    /// Configuration file (its database is read).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory of an embedded (`lumina serve`) installation.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Database URL (overrides the configuration).
    #[arg(long, env = "LUMINA_DATABASE_URL")]
    database_url: Option<String>,
    /// Traffic routed at or after: RFC 3339, YYYY-MM-DD or Unix seconds [default: all].
    #[arg(long)]
    since: Option<String>,
    /// Labelled routing sets to retrain the classifier on (default: keep the active one's).
    #[arg(long, num_args = 1..)]
    dataset: Vec<PathBuf>,
    /// The candidate's version [default: one above every published version].
    #[arg(long)]
    version: Option<i64>,
    /// Output file.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
struct EvalExportArgs {
    /// Configuration file (its database is read).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory of an embedded (`lumina serve`) installation.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Database URL (overrides the configuration).
    #[arg(long, env = "LUMINA_DATABASE_URL")]
    database_url: Option<String>,
    /// Requests settled at or after: RFC 3339, YYYY-MM-DD or Unix seconds.
    #[arg(long)]
    since: String,
    /// Requests settled before (default: now).
    #[arg(long)]
    until: Option<String>,
    /// Only this account (acct_…).
    #[arg(long)]
    account: Option<String>,
    /// Output file (JSONL); `-` for standard output.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
struct ReplayArgs {
    /// Configuration file; with a `[kafka]` section the topic is read instead of a local log.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory holding the local log.
    #[arg(long, default_value = config::DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// First local-log position to print.
    #[arg(long, default_value_t = 1)]
    from: u64,
    /// Topic: first offset read in every partition.
    #[arg(long, conflicts_with = "since")]
    from_offset: Option<i64>,
    /// Topic: first message at or after this time (RFC 3339, YYYY-MM-DD or Unix seconds).
    #[arg(long)]
    since: Option<String>,
    /// Topic: stop before this time (default: the end of the topic when reading started).
    #[arg(long)]
    until: Option<String>,
    /// Topic: `json` lines on standard output, or `avro` container files (one per event type).
    #[arg(long, default_value = "json", value_parser = ["json", "avro"])]
    format: String,
    /// Directory of the Avro files (with `--format avro`).
    #[arg(long, required_if_eq("format", "avro"))]
    out: Option<PathBuf>,
    /// Only events of this type (e.g. ApiKeyCreated).
    #[arg(long = "type")]
    event_type: Option<String>,
    /// Only events of this account.
    #[arg(long)]
    account: Option<String>,
}

#[derive(Subcommand)]
enum EventsCommand {
    /// Follow new events on the topic as JSON lines.
    Tail {
        /// Configuration file with a `[kafka]` section.
        #[arg(long)]
        config: PathBuf,
        /// Only events of this type.
        #[arg(long = "type")]
        event_type: Option<String>,
        /// Only events of this account.
        #[arg(long)]
        account: Option<String>,
    },
}

#[derive(Args)]
struct AdminArgs {
    /// Base URL of a running gateway.
    #[arg(long, env = "LUMINA_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Admin key; defaults to the one saved in --data-dir.
    #[arg(long, env = "LUMINA_ADMIN_KEY", hide_env_values = true)]
    admin_key: Option<String>,
    /// Data directory to read the saved admin key from.
    #[arg(long, default_value = config::DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
}

impl AdminArgs {
    fn client(&self) -> anyhow::Result<AdminClient> {
        let key = match &self.admin_key {
            Some(key) => key.clone(),
            None => secrets::stored_admin_key(&self.data_dir).with_context(|| {
                format!(
                    "no admin key: pass --admin-key, set LUMINA_ADMIN_KEY, or point --data-dir at \
                     a data dir holding {}",
                    secrets::ADMIN_KEY_FILE
                )
            })?,
        };
        AdminClient::new(&self.url, key)
    }
}

#[derive(Subcommand)]
enum AccountsCommand {
    /// Open an account (and grant its initial credits).
    Create {
        /// Account name.
        #[arg(long)]
        name: String,
        /// Initial credits, a decimal number.
        #[arg(long)]
        credits: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Show an account.
    Show {
        /// Account id (acct_…).
        id: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Grant credits to an account.
    Grant {
        /// Account id (acct_…).
        id: String,
        /// Credits to grant, a decimal number.
        #[arg(long)]
        amount: String,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Subcommand)]
enum ProjectsCommand {
    /// Create a project in an account.
    Create {
        /// Account id (acct_…).
        #[arg(long)]
        account: String,
        /// Project name.
        #[arg(long)]
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List an account's projects.
    List {
        /// Account id (acct_…).
        #[arg(long)]
        account: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Rename a project.
    Rename {
        /// Project id (proj_…).
        id: String,
        /// The new name.
        #[arg(long)]
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Archive a project: its keys stop authenticating.
    Archive {
        /// Project id (proj_…).
        id: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// Which account, project or key a budget command is about: exactly one.
#[derive(Args)]
#[group(required = true, multiple = false)]
struct BudgetScope {
    /// Account id (acct_…).
    #[arg(long)]
    account: Option<String>,
    /// Project id (proj_…).
    #[arg(long)]
    project: Option<String>,
    /// Key id (key_…).
    #[arg(long)]
    key: Option<String>,
}

impl BudgetScope {
    /// `/admin/{accounts|projects|keys}/{id}/budgets`.
    fn path(&self) -> anyhow::Result<String> {
        let (kind, id) = match (&self.account, &self.project, &self.key) {
            (Some(a), _, _) => ("accounts", a),
            (_, Some(p), _) => ("projects", p),
            (_, _, Some(k)) => ("keys", k),
            (None, None, None) => anyhow::bail!("name one of --account, --project or --key"),
        };
        Ok(format!("/admin/{kind}/{}/budgets", query_param(id)))
    }
}

/// What a budget is set to.
#[derive(Args)]
struct BudgetTerms {
    /// The most the scope may spend in a period, in credits (e.g. 25 or 0.5).
    #[arg(long)]
    limit: String,
    /// day, week (Monday to Sunday), month or total.
    #[arg(long)]
    period: String,
    /// IANA time zone of the calendar (e.g. Europe/Paris); UTC by default.
    #[arg(long)]
    timezone: Option<String>,
    /// Spend past which BudgetThresholdCrossed is recorded once per period, in credits.
    #[arg(long)]
    soft_limit: Option<String>,
}

impl BudgetTerms {
    fn body(&self) -> serde_json::Value {
        let mut body = json!({"limit": self.limit, "period": self.period});
        if let Some(tz) = &self.timezone {
            body["timezone"] = json!(tz);
        }
        if let Some(soft) = &self.soft_limit {
            body["soft_limit"] = json!(soft);
        }
        body
    }
}

#[derive(Subcommand)]
enum BudgetsCommand {
    /// Set a new budget on an account, a project or a key.
    Set {
        #[command(flatten)]
        scope: BudgetScope,
        #[command(flatten)]
        terms: BudgetTerms,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Replace a budget's limit, period, zone and soft limit.
    Update {
        /// Budget id (bud_…).
        id: String,
        #[command(flatten)]
        terms: BudgetTerms,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List budgets with their current period's spend (an account's: all of its budgets).
    List {
        #[command(flatten)]
        scope: BudgetScope,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Remove a budget.
    Remove {
        /// Budget id (bud_…).
        id: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Issue an API key (printed once).
    Create {
        /// Account id (acct_…).
        #[arg(long)]
        account: String,
        /// Key name.
        #[arg(long)]
        name: String,
        /// Project id (proj_…); the account's default project otherwise.
        #[arg(long)]
        project: Option<String>,
        /// Requests per minute.
        #[arg(long)]
        rpm: Option<i64>,
        /// Tokens per minute.
        #[arg(long)]
        tpm: Option<i64>,
        /// Allow keeping prompts and answers for eval datasets.
        #[arg(long)]
        store_content: bool,
        /// Bar the key from Model Fusion (lumina-fusion).
        #[arg(long)]
        no_fusion: bool,
        /// Unix seconds from which the key no longer authenticates.
        #[arg(long)]
        expires_at: Option<i64>,
        /// Paths the key may use, comma-separated (fast, balanced, reasoning, fusion, embeddings).
        #[arg(long, value_delimiter = ',')]
        paths: Option<Vec<String>>,
        /// Inbound APIs the key may call, comma-separated (chat_completions, messages,
        /// responses, embeddings).
        #[arg(long, value_delimiter = ',')]
        surfaces: Option<Vec<String>>,
        /// The key only reads usage and requests.
        #[arg(long)]
        read_only: bool,
        /// Requests of the key in flight at once on one gateway.
        #[arg(long)]
        max_parallel_requests: Option<i64>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List keys, of one account or all.
    List {
        /// Account id (acct_…).
        #[arg(long)]
        account: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Revoke a key.
    Revoke {
        /// Key id (key_…).
        id: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Rotate a key: a new one now (printed once), the old one expiring after the overlap.
    Rotate {
        /// Key id (key_…).
        id: String,
        /// How long the old key keeps working: 24h, 30m, 90s, 2d or seconds.
        #[arg(long, default_value = "24h")]
        overlap: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LUMINA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

fn load_config(
    path: Option<&std::path::Path>,
    data_dir: Option<PathBuf>,
) -> anyhow::Result<Config> {
    let mut config = Config::load(path)?;
    if let Some(dir) = data_dir {
        config.data_dir = Some(dir);
    }
    Ok(config)
}

fn consumer_config(args: ProjectorArgs) -> anyhow::Result<(Config, bool)> {
    let mut config = load_config(args.config.as_deref(), args.data_dir)?;
    if let Some(url) = args.database_url {
        config.database.url = Some(url);
    }
    Ok((config, args.once))
}

async fn run_projector(args: ProjectorArgs, rebuild: bool) -> anyhow::Result<()> {
    let (config, once) = consumer_config(args)?;
    if rebuild {
        let db = serve::connect_database(&config).await?;
        lumina_projector::read_model::rebuild(&db).await?;
    }
    consumer_cmd::run(
        &config,
        lumina_projector::ReadModelProjection,
        once || rebuild,
    )
    .await
}

async fn run_ledger(command: LedgerCommand) -> anyhow::Result<()> {
    match command.action {
        None => {
            let (config, once) = consumer_config(command.args)?;
            consumer_cmd::run(&config, lumina_ledger::LedgerProjection, once).await
        }
        Some(LedgerAction::Rebuild(args)) => {
            let (config, _) = consumer_config(args)?;
            let db = serve::connect_database(&config).await?;
            lumina_ledger::store::rebuild(&db).await?;
            consumer_cmd::run(&config, lumina_ledger::LedgerProjection, true).await
        }
        Some(LedgerAction::Statement {
            account,
            from,
            to,
            format,
            admin,
        }) => {
            let mut path = format!(
                "/admin/ledger/statements?account_id={}&format={}",
                query_param(&account),
                query_param(&format)
            );
            if let Some(from) = from {
                path.push_str(&format!("&from={}", query_param(&from)));
            }
            if let Some(to) = to {
                path.push_str(&format!("&to={}", query_param(&to)));
            }
            let text = admin.client()?.call_text(Method::GET, &path).await?;
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            std::io::Write::write_all(&mut out, text.as_bytes())?;
            Ok(())
        }
    }
}

async fn run_reconcile(args: ReconcileArgs) -> anyhow::Result<bool> {
    let mut config = load_config(args.config.as_deref(), args.data_dir)?;
    if let Some(url) = args.database_url {
        config.database.url = Some(url);
    }
    let db = serve::connect_database(&config).await?;
    let wait = std::time::Duration::from_secs(args.wait);
    let report = match config.kafka.clone() {
        // Distributed mode: the topic is the log.
        Some(kafka) => {
            let topic = kafka.topic.clone();
            let (ends, events) = tokio::task::spawn_blocking(move || {
                let mut events = Vec::new();
                let ends = lumina_kafka::reader::read(
                    &kafka,
                    lumina_kafka::reader::Start::Beginning,
                    lumina_kafka::reader::Stop::End,
                    |m| {
                        if let Ok(decoded) = lumina_schemas::decode(m.payload) {
                            events.push(decoded.event);
                        }
                        Ok(true)
                    },
                )?;
                Ok::<_, String>((ends, events))
            })
            .await?
            .map_err(|e| anyhow::anyhow!("reading {topic}: {e}"))?;
            lumina_ledger::reconcile::reconcile_stream(&db, &topic, &ends, events, wait).await
        }
        None => {
            let reader = lumina_eventlog::LogReader::open(config.log_path())?;
            lumina_ledger::reconcile::reconcile(&db, &reader, wait).await
        }
    }
    .map_err(|e| anyhow::anyhow!("reconcile failed: {e}"))?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &report)?;
        std::io::Write::write_all(&mut out, b"\n")?;
    } else {
        let status = if report.is_clean() {
            "clean"
        } else {
            "DISCREPANCIES"
        };
        let lines = [
            format!("reconcile: {status}"),
            format!(
                "  log end position:     {} (ledger caught up: {})",
                report.log_end, report.caught_up
            ),
            format!("  money events:         {}", report.money_events),
            format!(
                "  journal entries:      {} (expected {})",
                report.journal_entries, report.expected_entries
            ),
            format!(
                "  settlements:          {} charging {} credits",
                report.settlements,
                lumina_schemas::NanoCredits(report.charged_nano)
            ),
            format!("  open holds:           {}", report.open_holds),
            format!("  orphaned holds:       {}", report.orphaned_holds),
        ];
        for line in &lines {
            std::io::Write::write_all(&mut out, format!("{line}\n").as_bytes())?;
        }
        for p in report.problems.iter().take(50) {
            std::io::Write::write_all(&mut out, format!("  problem: {p}\n").as_bytes())?;
        }
        if report.problems.len() > 50 {
            std::io::Write::write_all(
                &mut out,
                format!("  … and {} more\n", report.problems.len() - 50).as_bytes(),
            )?;
        }
    }
    Ok(report.is_clean())
}

async fn run_replay(args: ReplayArgs) -> anyhow::Result<()> {
    let filter = replay::ReplayFilter {
        from: args.from,
        event_type: args.event_type,
        account: args.account,
    };
    let kafka = match &args.config {
        Some(path) => load_config(Some(path), None)?.kafka,
        None => None,
    };
    let Some(kafka) = kafka else {
        if args.from_offset.is_some() || args.since.is_some() || args.until.is_some() {
            anyhow::bail!(
                "--from-offset, --since and --until read the topic: pass a --config with [kafka]"
            );
        }
        replay::replay(
            &args.data_dir.join("events.db"),
            &filter,
            &mut std::io::stdout().lock(),
        )?;
        return Ok(());
    };
    let ms = |text: &str, param: &str| {
        lumina_gateway::api::ledger::parse_time(text, param)
            .map(|us| us.div_euclid(1000))
            .map_err(|e| anyhow::anyhow!("{e}"))
    };
    use lumina_kafka::reader::{Start, Stop};
    let start = match (args.from_offset, &args.since) {
        (Some(o), _) => Start::Offset(o),
        (None, Some(t)) => Start::Time(ms(t, "since")?),
        (None, None) => Start::Beginning,
    };
    let stop = match &args.until {
        Some(t) => Stop::Time(ms(t, "until")?),
        None => Stop::End,
    };
    tokio::task::spawn_blocking(move || {
        let mut stdout = std::io::stdout().lock();
        let sink = match &args.out {
            Some(dir) if args.format == "avro" => replay::Sink::Avro(replay::AvroFiles::new(dir)?),
            _ => replay::Sink::Json(&mut stdout),
        };
        replay::replay_topic(&kafka, &filter, start, stop, sink)
    })
    .await??;
    Ok(())
}

async fn run_eval_export(args: EvalExportArgs) -> anyhow::Result<()> {
    let mut config = load_config(args.config.as_deref(), args.data_dir)?;
    if let Some(url) = args.database_url {
        config.database.url = Some(url);
    }
    let time = |text: &str, param: &str| {
        lumina_gateway::api::ledger::parse_time(text, param).map_err(|e| anyhow::anyhow!("{e}"))
    };
    let range = lumina_projector::eval::ExportRange {
        since: time(&args.since, "since")?,
        until: args
            .until
            .as_deref()
            .map(|u| time(u, "until"))
            .transpose()?,
        account_id: args.account,
    };
    let db = serve::connect_database(&config).await?;
    let views = lumina_projector::ReadModel::new(db);
    eval_export::export(&views, &range, &args.out).await
}

async fn run_policy_build(args: PolicyBuildArgs) -> anyhow::Result<()> {
    let mut config = load_config(args.config.as_deref(), args.data_dir)?;
    if let Some(url) = args.database_url {
        config.database.url = Some(url);
    }
    let since = match args.since.as_deref() {
        Some(text) => lumina_gateway::api::ledger::parse_time(text, "since")
            .map_err(|e| anyhow::anyhow!("{e}"))?,
        None => 0,
    };
    let db = serve::connect_database(&config).await?;
    let views = lumina_projector::ReadModel::new(db);
    policy_cmd::build_policy(policy_cmd::BuildArgs {
        views: &views,
        since,
        datasets: &args.dataset,
        version: args.version,
        out: &args.out,
    })
    .await
}

fn query_param(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn run_accounts(command: AccountsCommand) -> anyhow::Result<()> {
    let value = match command {
        AccountsCommand::Create {
            name,
            credits,
            admin,
        } => {
            let mut body = json!({"name": name});
            if let Some(credits) = credits {
                body["credits"] = json!(credits);
            }
            admin
                .client()?
                .call(Method::POST, "/admin/accounts", Some(body))
                .await?
        }
        AccountsCommand::Show { id, admin } => {
            admin
                .client()?
                .call(
                    Method::GET,
                    &format!("/admin/accounts/{}", query_param(&id)),
                    None,
                )
                .await?
        }
        AccountsCommand::Grant {
            id,
            amount,
            reason,
            admin,
        } => {
            let body = json!({"amount": amount, "reason": reason});
            admin
                .client()?
                .call(
                    Method::POST,
                    &format!("/admin/accounts/{}/credits", query_param(&id)),
                    Some(body),
                )
                .await?
        }
    };
    print_json(&value)
}

async fn run_projects(command: ProjectsCommand) -> anyhow::Result<()> {
    let value = match command {
        ProjectsCommand::Create {
            account,
            name,
            admin,
        } => {
            admin
                .client()?
                .call(
                    Method::POST,
                    &format!("/admin/accounts/{}/projects", query_param(&account)),
                    Some(json!({"name": name})),
                )
                .await?
        }
        ProjectsCommand::List { account, admin } => {
            admin
                .client()?
                .call(
                    Method::GET,
                    &format!("/admin/accounts/{}/projects", query_param(&account)),
                    None,
                )
                .await?
        }
        ProjectsCommand::Rename { id, name, admin } => {
            admin
                .client()?
                .call(
                    Method::PATCH,
                    &format!("/admin/projects/{}", query_param(&id)),
                    Some(json!({"name": name})),
                )
                .await?
        }
        ProjectsCommand::Archive { id, admin } => {
            admin
                .client()?
                .call(
                    Method::POST,
                    &format!("/admin/projects/{}/archive", query_param(&id)),
                    None,
                )
                .await?
        }
    };
    print_json(&value)
}

async fn run_admin_keys(command: AdminKeysCommand) -> anyhow::Result<()> {
    let value = match command {
        AdminKeysCommand::Create { name, role, admin } => {
            admin
                .client()?
                .call(
                    Method::POST,
                    "/admin/admin-keys",
                    Some(json!({"name": name, "role": role})),
                )
                .await?
        }
        AdminKeysCommand::List { admin } => {
            admin
                .client()?
                .call(Method::GET, "/admin/admin-keys", None)
                .await?
        }
        AdminKeysCommand::Revoke { id, admin } => {
            admin
                .client()?
                .call(
                    Method::DELETE,
                    &format!("/admin/admin-keys/{}", query_param(&id)),
                    None,
                )
                .await?
        }
    };
    print_json(&value)
}

async fn run_budgets(command: BudgetsCommand) -> anyhow::Result<()> {
    let value = match command {
        BudgetsCommand::Set {
            scope,
            terms,
            admin,
        } => {
            admin
                .client()?
                .call(Method::POST, &scope.path()?, Some(terms.body()))
                .await?
        }
        BudgetsCommand::Update { id, terms, admin } => {
            admin
                .client()?
                .call(
                    Method::PUT,
                    &format!("/admin/budgets/{}", query_param(&id)),
                    Some(terms.body()),
                )
                .await?
        }
        BudgetsCommand::List { scope, admin } => {
            admin
                .client()?
                .call(Method::GET, &scope.path()?, None)
                .await?
        }
        BudgetsCommand::Remove { id, admin } => {
            admin
                .client()?
                .call(
                    Method::DELETE,
                    &format!("/admin/budgets/{}", query_param(&id)),
                    None,
                )
                .await?
        }
    };
    print_json(&value)
}

async fn run_keys(command: KeysCommand) -> anyhow::Result<()> {
    let value = match command {
        KeysCommand::Create {
            account,
            name,
            project,
            rpm,
            tpm,
            store_content,
            no_fusion,
            expires_at,
            paths,
            surfaces,
            read_only,
            max_parallel_requests,
            admin,
        } => {
            let body = json!({
                "account_id": account, "name": name, "project_id": project,
                "rpm": rpm, "tpm": tpm, "store_content": store_content,
                "allow_fusion": !no_fusion, "expires_at": expires_at,
                "scopes": {"paths": paths, "surfaces": surfaces, "read_only": read_only},
                "max_parallel_requests": max_parallel_requests,
            });
            admin
                .client()?
                .call(Method::POST, "/admin/keys", Some(body))
                .await?
        }
        KeysCommand::List { account, admin } => {
            let path = match account {
                Some(a) => format!("/admin/keys?account_id={}", query_param(&a)),
                None => "/admin/keys".to_string(),
            };
            admin.client()?.call(Method::GET, &path, None).await?
        }
        KeysCommand::Rotate { id, overlap, admin } => {
            admin
                .client()?
                .call(
                    Method::POST,
                    &format!("/admin/keys/{}/rotate", query_param(&id)),
                    Some(json!({ "overlap": overlap })),
                )
                .await?
        }
        KeysCommand::Revoke { id, admin } => {
            admin
                .client()?
                .call(
                    Method::DELETE,
                    &format!("/admin/keys/{}", query_param(&id)),
                    None,
                )
                .await?
        }
    };
    print_json(&value)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing();
    lumina_gateway::providers::install_crypto_provider();
    match cli.command {
        Command::Serve(args) => {
            let mut config = load_config(args.config.as_deref(), args.data_dir)?;
            if let Some(listen) = args.listen {
                config.listen = Some(listen);
            }
            serve::serve(config, serve::Mode::Embedded).await
        }
        Command::Gateway(args) => {
            let mut config = load_config(args.config.as_deref(), args.data_dir)?;
            if let Some(listen) = args.listen {
                config.listen = Some(listen);
            }
            serve::serve(config, serve::Mode::Gateway).await
        }
        Command::Projector(cmd) => match cmd.action {
            Some(ProjectorAction::Rebuild(args)) => run_projector(args, true).await,
            None => run_projector(cmd.args, false).await,
        },
        Command::Ledger(cmd) => run_ledger(cmd).await,
        Command::Reconcile(args) => {
            if run_reconcile(args).await? {
                Ok(())
            } else {
                std::process::exit(1)
            }
        }
        Command::Replay(args) => run_replay(args).await,
        Command::Events(EventsCommand::Tail {
            config,
            event_type,
            account,
        }) => {
            let kafka = load_config(Some(&config), None)?
                .kafka
                .ok_or_else(|| anyhow::anyhow!("{} has no [kafka] section", config.display()))?;
            let filter = replay::ReplayFilter {
                from: 1,
                event_type,
                account,
            };
            tokio::task::spawn_blocking(move || {
                replay::replay_topic(
                    &kafka,
                    &filter,
                    lumina_kafka::reader::Start::End,
                    lumina_kafka::reader::Stop::Follow,
                    replay::Sink::Json(&mut std::io::stdout().lock()),
                )
            })
            .await??;
            Ok(())
        }
        Command::Eval(EvalCommand::Export(args)) => run_eval_export(args).await,
        Command::Eval(EvalCommand::Run(args)) => eval_run::run(args).await,
        Command::Eval(EvalCommand::Routing(a)) => routing_cmd::eval_routing(
            &a.dataset,
            a.policy.as_deref(),
            &a.weights,
            a.json,
            &routing_cmd::Minimums {
                accuracy: a.min_accuracy,
                quality_retained: a.min_quality_retained,
                cost_saved: a.min_cost_saved,
            },
        ),
        Command::Policy(PolicyCommand::Train {
            dataset,
            out,
            version,
        }) => routing_cmd::train_policy(&dataset, out.as_deref(), version),
        Command::Policy(PolicyCommand::Build(args)) => run_policy_build(args).await,
        Command::Policy(PolicyCommand::Diff { a, b }) => policy_cmd::diff(&a, &b),
        Command::Policy(PolicyCommand::Publish {
            file,
            reason,
            admin,
        }) => print_json(&policy_cmd::publish(&admin.client()?, &file, reason.as_deref()).await?),
        Command::Policy(PolicyCommand::List { json, admin }) => {
            policy_cmd::list(&admin.client()?, json).await
        }
        Command::Policy(PolicyCommand::Show { version, admin }) => {
            policy_cmd::show(&admin.client()?, version).await
        }
        Command::Policy(PolicyCommand::Rollback {
            version,
            reason,
            admin,
        }) => {
            print_json(&policy_cmd::rollback(&admin.client()?, version, reason.as_deref()).await?)
        }
        Command::Accounts(command) => run_accounts(command).await,
        Command::Keys(command) => run_keys(command).await,
        Command::Projects(command) => run_projects(command).await,
        Command::Budgets(command) => run_budgets(command).await,
        Command::AdminKeys(command) => run_admin_keys(command).await,
    }
}
