//! `lumina serve`: the embedded mode in one process — local log, SQLite (or PostgreSQL) read
//! models, the projector and the ledger as tasks, and the gateway's HTTP API.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use lumina_eventlog::{ConsumerOptions, Database, EventLog, LocalLogSource, handled_types};
use lumina_gateway::admin::{Admin, KeyRequest};
use lumina_gateway::auth::KeyCache;
use lumina_gateway::engine::fusion::Fusion;
use lumina_gateway::metering::credit::{CreditBook, Reflection};
use lumina_gateway::metering::limits::Limits;
use lumina_gateway::metering::pricing::PriceTable;
use lumina_gateway::response_store::ResponseStore;
use lumina_gateway::routing::catalog::Catalog;
use lumina_gateway::routing::follow::PolicyFollower;
use lumina_gateway::routing::table::RouteTable;
use lumina_gateway::telemetry::Telemetry;
use lumina_gateway::{AppInner, AppState, Readiness};
use lumina_ledger::{Ledger, LedgerProjection};
use lumina_projector::{ReadModel, ReadModelProjection};
use lumina_schemas::NanoCredits;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::secrets::Secrets;

/// How often the key cache reloads from the read model.
const KEY_REFRESH: Duration = Duration::from_millis(500);
/// How long startup waits for the projector to catch up before serving anyway.
const CATCH_UP_WAIT: Duration = Duration::from_secs(120);

/// Opens the local log on the blocking pool.
pub async fn open_log(config: &Config) -> anyhow::Result<EventLog> {
    let path = config.log_path();
    let options = config.log.clone();
    tokio::task::spawn_blocking(move || EventLog::open(&path, options))
        .await?
        .with_context(|| {
            format!(
                "cannot open the event log in {}",
                config.data_dir().display()
            )
        })
}

/// Connects to the configured database and applies migrations.
pub async fn connect_database(config: &Config) -> anyhow::Result<Database> {
    let url = config.database_url();
    Database::connect(&url)
        .await
        .with_context(|| format!("cannot use database {}", lumina_eventlog::db::redact(&url)))
}

/// Runs the embedded mode until SIGINT or SIGTERM.
/// How `serve` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `lumina serve`: the projector and the ledger consume the local log in this process.
    Embedded,
    /// `lumina gateway`: the shipper drains the local log to Kafka; the projector and the
    /// ledger run as their own processes on the topic, and admin writes wait on the database.
    Gateway,
}

/// Runs the gateway (with, in embedded mode, its consumers) until a signal.
pub async fn serve(config: Config, mode: Mode) -> anyhow::Result<()> {
    let data_dir = config.data_dir();
    crate::data_dir::prepare(&data_dir)?;
    let secrets = Secrets::load_or_create(&config, mode == Mode::Gateway)?;
    let metrics = lumina_gateway::api::metrics::install_recorder()
        .map_err(|e| anyhow::anyhow!("cannot install the metrics recorder: {e}"))?;
    let log = open_log(&config).await?;
    let fresh = log.committed_position() == 0;
    let db = connect_database(&config).await?;
    lumina_gateway::auth::check_shared_secret(&db, &secrets.key_secret).await?;
    crate::data_dir::tighten(&data_dir)?;
    let read_model = ReadModel::new(db.clone());

    let cancel = CancellationToken::new();
    let options = ConsumerOptions {
        batch_size: config.consumers.batch_size,
        coalesce: std::time::Duration::from_millis(config.consumers.coalesce_ms),
        ..ConsumerOptions::default()
    };
    let source = |types: Vec<lumina_schemas::EventType>| -> anyhow::Result<LocalLogSource> {
        Ok(LocalLogSource::new(log.reader()?)
            .with_commit_notifications(log.subscribe())
            .only(&types))
    };
    let embedded = if mode == Mode::Embedded {
        let sources = crate::embedded::Sources {
            database_url: config.database_url(),
            projector: source(handled_types(&ReadModelProjection))?,
            ledger: source(handled_types(&LedgerProjection))?,
        };
        Some(
            crate::embedded::EmbeddedConsumers::start(
                sources,
                options,
                config.consumers.nice,
                cancel.clone(),
            )
            .await?,
        )
    } else {
        None
    };
    let consumers = embedded
        .as_ref()
        .map_or_else(Vec::new, |e| e.watches.clone());
    let shipper = match (mode, &config.kafka) {
        (Mode::Embedded, _) => None,
        (Mode::Gateway, None) => anyhow::bail!("lumina gateway needs a [kafka] section"),
        (Mode::Gateway, Some(kafka)) => {
            kafka
                .ensure_topics()
                .await
                .map_err(|e| anyhow::anyhow!(e))?;
            let shipper = lumina_kafka::Shipper::new(kafka, log.clone(), &data_dir)?;
            let cancel = cancel.clone();
            Some(tokio::spawn(async move {
                let result = shipper.run(cancel).await;
                if let Err(e) = &result {
                    tracing::error!(error = %e, "the shipper stopped; events stay in the local log until a restart");
                }
                result
            }))
        }
    };
    let readiness = Readiness {
        consumers: consumers.clone(),
        log_end_at_start: log.committed_position(),
    };
    wait_for_catch_up(&readiness).await;

    let keys = Arc::new(KeyCache::new(secrets.key_secret.clone()));
    keys.refresh(&read_model).await?;
    let refresher = tokio::spawn(refresh_keys(
        keys.clone(),
        read_model.clone(),
        cancel.clone(),
    ));

    let credits = Arc::new(CreditBook::with_reflection(match mode {
        Mode::Embedded => Reflection::LogPosition,
        Mode::Gateway => Reflection::AppliedEvent,
    }));
    let ledger = Ledger::new(db.clone());
    credits.refresh_budgets(&read_model).await?;
    credits.refresh(&ledger).await?;
    let credit_refresher = tokio::spawn(refresh_credits(
        credits.clone(),
        ledger.clone(),
        read_model.clone(),
        cancel.clone(),
    ));
    let prices = PriceTable::from_config(&config.pricing)
        .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    let sweeper = tokio::spawn(lumina_ledger::sweeper::run(
        db.clone(),
        log.clone(),
        config.instance(),
        cancel.clone(),
    ));
    let mut admin = Admin::new(
        log.clone(),
        read_model.clone(),
        ledger.clone(),
        keys.clone(),
        credits.clone(),
        consumers,
        config.instance(),
    );
    if mode == Mode::Gateway {
        admin = admin.with_remote_consumers();
    }
    let demo_key = if mode == Mode::Embedded
        && fresh
        && config.demo.enabled
        && read_model.account_count().await? == 0
    {
        Some(create_demo(&admin, &config).await?)
    } else {
        None
    };

    let routes = RouteTable::build(&config.gateway, |var| std::env::var(var).ok())
        .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    let fusion = Fusion::resolve(&config.gateway.fusion, &routes)
        .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    let server = config.gateway.server.clone();
    let telemetry = Telemetry::start(&config.telemetry, &config.instance())
        .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    let state = AppState::new(AppInner {
        admin,
        read_model: read_model.clone(),
        responses: ResponseStore::new(read_model.database().clone()),
        ledger: ledger.clone(),
        keys,
        admin_key: secrets.admin_key.clone(),
        catalog: Catalog::new(fusion.enabled, routes.serves_embeddings())
            .with_aliases(config.aliases()?),
        log: log.clone(),
        readiness,
        routes,
        fusion,
        limits: match mode {
            Mode::Embedded => Limits::new(),
            Mode::Gateway => Limits::shared(db.clone()),
        },
        instance: config.instance().into(),
        server: server.clone(),
        price_version: prices.version.as_str().into(),
        prices,
        credits,
        metrics: Some(metrics),
        telemetry: telemetry.clone(),
    });
    let mut follower = PolicyFollower::default();
    if let Err(e) = follower.sync(&state).await {
        tracing::warn!(error = %e, "cannot read the active routing policy; routing with the shipped one");
    }
    let policy_follower = tokio::spawn(follow_policies(state.clone(), follower, cancel.clone()));
    let exchanger = (mode == Mode::Gateway)
        .then(|| tokio::spawn(exchange_in_flight(state.clone(), cancel.clone())));
    let listen = config.listen();
    let listener =
        crate::http::listen(listen).with_context(|| format!("cannot listen on {listen}"))?;
    let local = listener.local_addr()?;
    print_banner(&config, &secrets, local, demo_key.as_deref());
    tracing::info!(%local, "lumina serve ready");
    crate::http::serve(
        listener,
        lumina_gateway::router(state),
        &server,
        shutdown_signal(),
    )
    .await;

    tracing::info!("shutting down");
    cancel.cancel();
    let _ = refresher.await;
    let _ = credit_refresher.await;
    let _ = policy_follower.await;
    if let Some(exchanger) = exchanger {
        let _ = exchanger.await;
    }
    let _ = sweeper.await;
    if let Some(shipper) = shipper
        && let Err(e) = shipper.await
    {
        tracing::error!(error = %e, "shipper task failed");
    }
    if let Some(embedded) = embedded
        && let Err(e) = embedded.stop().await
    {
        tracing::error!(error = format!("{e:#}"), "consumer stopped with an error");
    }
    tokio::task::spawn_blocking(move || telemetry.shutdown()).await?;
    tokio::task::spawn_blocking(move || log.close()).await?;
    Ok(())
}

async fn wait_for_catch_up(readiness: &Readiness) {
    let end = readiness.log_end_at_start;
    if end > 0 {
        tracing::info!(
            log_end = end,
            "applying the log to read models and the ledger"
        );
    }
    let deadline = tokio::time::Instant::now() + CATCH_UP_WAIT;
    for consumer in &readiness.consumers {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if end > 0 && !consumer.wait_applied(end, left).await {
            tracing::warn!(
                consumer = consumer.name,
                "still catching up; serving with /readyz at 503"
            );
        }
    }
}

/// Distributed mode: exchanges this gateway's requests in flight with the others'.
async fn exchange_in_flight(state: AppState, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(lumina_gateway::metering::shared_limits::EXCHANGE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {
                if let Err(e) = state.limits.exchange(&state.instance).await {
                    tracing::warn!(error = %e, "cannot exchange requests in flight with the other gateways");
                }
            }
        }
    }
}

async fn refresh_keys(keys: Arc<KeyCache>, read_model: ReadModel, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(KEY_REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {
                if let Err(e) = keys.refresh(&read_model).await {
                    tracing::warn!(error = %e, "key cache refresh failed; keeping the previous keys");
                }
            }
        }
    }
}

/// How often a gateway looks for a newly active routing policy.
const POLICY_REFRESH: Duration = Duration::from_millis(250);

async fn follow_policies(state: AppState, mut follower: PolicyFollower, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(POLICY_REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {
                if let Err(e) = follower.sync(&state).await {
                    tracing::warn!(error = %e, "routing policy refresh failed; keeping the one in force");
                }
            }
        }
    }
}

/// How often the credit book reloads the budgets and the ledger's balances and spend.
const CREDIT_REFRESH: Duration = Duration::from_millis(250);

async fn refresh_credits(
    credits: Arc<CreditBook>,
    ledger: Ledger,
    read_model: ReadModel,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(CREDIT_REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {
                if let Err(e) = credits.refresh_budgets(&read_model).await {
                    tracing::warn!(error = %e, "budget refresh failed; keeping the previous budgets");
                }
                if let Err(e) = credits.refresh(&ledger).await {
                    tracing::warn!(error = %e, "credit refresh failed; keeping the previous balances");
                }
            }
        }
    }
}

async fn create_demo(admin: &Admin, config: &Config) -> anyhow::Result<String> {
    let credits = NanoCredits::parse_credits(&config.demo.credits)?;
    let account = admin.open_account("Demo", credits, "demo").await?;
    let (_row, key) = admin
        .create_key(KeyRequest {
            account_id: account.id,
            name: "demo".into(),
            ..KeyRequest::default()
        })
        .await?;
    Ok(key)
}

#[expect(
    clippy::print_stdout,
    reason = "the banner is the command's output for people"
)]
fn print_banner(
    config: &Config,
    secrets: &Secrets,
    local: std::net::SocketAddr,
    demo_key: Option<&str>,
) {
    let url = format!("http://{local}");
    println!("Lumina is serving on {url}");
    println!("  data dir:  {}", config.data_dir().display());
    if secrets.admin_key_generated {
        println!(
            "  admin key: {}   (saved in {})",
            secrets.admin_key,
            config
                .data_dir()
                .join(crate::secrets::ADMIN_KEY_FILE)
                .display()
        );
    } else {
        println!("  admin key: from configuration or the data dir (not shown)");
    }
    if let Some(key) = demo_key {
        println!("  demo key:  {key}   (shown once; account 'Demo')");
        println!();
        println!("Try it:");
        println!("  curl -s {url}/v1/models -H 'Authorization: Bearer {key}'");
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
