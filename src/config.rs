//! `lumina.toml`: one `Config` deserialized and validated at start, defaults in one place,
//! secrets overridable from the environment. Every key is documented in README.md.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use lumina_eventlog::LogOptions;
use lumina_gateway::config::{
    BreakerConfig, FusionConfig, GatewayConfig, ProviderConfig, RouteConfig, ServerConfig,
};
use lumina_gateway::metering::pricing::{PriceTable, PricingConfig};
use lumina_gateway::routing::catalog::{Alias, DEFAULT_ALIASES};
use lumina_gateway::telemetry::TelemetryConfig;
use lumina_schemas::NanoCredits;
use serde::Deserialize;

/// Default data directory.
pub const DEFAULT_DATA_DIR: &str = "./lumina-data";

/// The whole configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP API listens on.
    pub listen: Option<SocketAddr>,
    /// Directory of the local log, the SQLite database and generated secrets.
    pub data_dir: Option<PathBuf>,
    /// Name of this process in events' `gateway_instance`.
    pub instance: Option<String>,
    /// The local log.
    pub log: LogOptions,
    /// The database of read models.
    pub database: DatabaseConfig,
    /// Admin key and key-hashing secret.
    pub auth: AuthConfig,
    /// `[fusion]`: Model Fusion's panel, judge, synthesizer and bounds.
    pub fusion: FusionConfig,
    /// `[aliases]`: other model names (exact, or patterns with `*`) and the path each routes
    /// to; absent, Claude's model families route as haiku → fast, sonnet → balanced,
    /// opus → reasoning.
    pub aliases: Option<BTreeMap<String, String>>,
    /// The demo account created on first start.
    pub demo: DemoConfig,
    /// Consumer tuning.
    pub consumers: ConsumersConfig,
    /// `[[providers]]`: upstreams; a simulated one serves every path when none is listed.
    pub providers: Vec<ProviderConfig>,
    /// `[routes.<path>]`: providers per path, in fallback order.
    pub routes: BTreeMap<String, RouteConfig>,
    /// `[breaker]`: when a deployment leaves rotation.
    pub breaker: BreakerConfig,
    /// `[server]`: body, header and timeout limits of the HTTP surface.
    pub server: ServerConfig,
    /// `[pricing]`: the versioned price table and hold lifetime.
    pub pricing: PricingConfig,
    /// `[telemetry]`: OpenTelemetry traces over OTLP.
    pub telemetry: TelemetryConfig,
    /// `[kafka]`: distributed mode's broker and topics.
    pub kafka: Option<lumina_kafka::KafkaConfig>,
    /// Providers and routes resolved and checked at load.
    #[serde(skip)]
    pub gateway: GatewayConfig,
}

/// `[database]`
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://FILE` or `postgres://…`; default: `lumina.db` in the data dir.
    /// Environment: `LUMINA_DATABASE_URL`.
    pub url: Option<String>,
}

/// `[auth]`
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Bearer token of the admin API. Environment: `LUMINA_ADMIN_KEY`. Default: generated on
    /// first start and kept in `<data_dir>/admin.key`.
    pub admin_key: Option<String>,
    /// 64 hex digits keys are hashed under; every gateway of a deployment needs the same.
    /// Environment: `LUMINA_KEY_SECRET`. Default: generated into `<data_dir>/key_secret`.
    pub key_secret: Option<String>,
}

/// `[demo]`
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DemoConfig {
    /// Create a demo account and key when the data dir is new.
    pub enabled: bool,
    /// Credits granted to the demo account (decimal string).
    pub credits: String,
}

impl Default for DemoConfig {
    fn default() -> Self {
        DemoConfig {
            enabled: true,
            credits: "100".into(),
        }
    }
}

/// `[consumers]`
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsumersConfig {
    /// Most events applied per transaction.
    pub batch_size: usize,
    /// How long a consumer that applied a partial batch waits for more events before the next
    /// (larger batches cost less per event; the wait bounds how fresh views and balances are).
    pub coalesce_ms: u64,
    /// Nice value of the embedded consumers' thread (0 to 19; higher yields the cores to the
    /// gateway sooner).
    pub nice: i32,
}

impl Default for ConsumersConfig {
    fn default() -> Self {
        ConsumersConfig {
            batch_size: 2048,
            coalesce_ms: 10,
            nice: 10,
        }
    }
}

impl Config {
    /// Reads and validates `path`, or the defaults when `None`.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Config> {
        let mut config = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config file {}", path.display()))?;
                toml::from_str::<Config>(&text)
                    .map_err(|e| anyhow::anyhow!("invalid config file {}: {e}", path.display()))?
            }
            None => Config::default(),
        };
        config.apply_env();
        config.validate()?;
        config.gateway = GatewayConfig {
            providers: std::mem::take(&mut config.providers),
            routes: std::mem::take(&mut config.routes),
            breaker: config.breaker.clone(),
            server: config.server.clone(),
            fusion: config.fusion.clone(),
        }
        .resolve(|var| std::env::var(var).ok())
        .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        Ok(config)
    }

    fn apply_env(&mut self) {
        if let Ok(v) = std::env::var("LUMINA_ADMIN_KEY")
            && !v.is_empty()
        {
            self.auth.admin_key = Some(v);
        }
        if let Ok(v) = std::env::var("LUMINA_KEY_SECRET")
            && !v.is_empty()
        {
            self.auth.key_secret = Some(v);
        }
        if let Ok(v) = std::env::var("LUMINA_DATABASE_URL")
            && !v.is_empty()
        {
            self.database.url = Some(v);
        }
    }

    /// The model aliases in force: `[aliases]`, or Claude's families when there is none.
    pub fn aliases(&self) -> anyhow::Result<Vec<Alias>> {
        let aliases: Vec<Result<Alias, String>> = match &self.aliases {
            Some(map) => map.iter().map(|(p, t)| Alias::new(p, t)).collect(),
            None => DEFAULT_ALIASES
                .iter()
                .map(|(p, t)| Alias::new(p, t))
                .collect(),
        };
        aliases
            .into_iter()
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.log.max_batch == 0 {
            bail!("log.max_batch must be at least 1");
        }
        if self.log.queue_capacity == 0 {
            bail!("log.queue_capacity must be at least 1");
        }
        if self.consumers.batch_size == 0 {
            bail!("consumers.batch_size must be at least 1");
        }
        if self.consumers.coalesce_ms > 10_000 {
            bail!("consumers.coalesce_ms must be at most 10000");
        }
        if !(0..=19).contains(&self.consumers.nice) {
            bail!(
                "consumers.nice must be from 0 to 19, not {}",
                self.consumers.nice
            );
        }
        self.aliases()?;
        if let Some(url) = &self.database.url {
            lumina_eventlog::Backend::of_url(url)
                .map_err(|e| anyhow::anyhow!("database.url: {e}"))?;
        }
        if let Some(kafka) = &self.kafka {
            kafka.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        self.telemetry
            .validate()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if let Some(key) = &self.auth.admin_key
            && key.len() < 16
        {
            bail!("auth.admin_key (or LUMINA_ADMIN_KEY) must be at least 16 characters");
        }
        if let Some(secret) = &self.auth.key_secret {
            lumina_gateway::auth::KeySecret::from_hex(secret)
                .map_err(|e| anyhow::anyhow!("auth.key_secret (or LUMINA_KEY_SECRET): {e}"))?;
        }
        NanoCredits::parse_credits(&self.demo.credits)
            .map_err(|e| anyhow::anyhow!("demo.credits: {e}"))?;
        PriceTable::from_config(&self.pricing)
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        Ok(())
    }

    /// The listen address.
    pub fn listen(&self) -> SocketAddr {
        self.listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)))
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR))
    }

    /// The database URL.
    pub fn database_url(&self) -> String {
        self.database
            .url
            .clone()
            .unwrap_or_else(|| lumina_eventlog::db::sqlite_url(&self.data_dir().join("lumina.db")))
    }

    /// The instance name recorded in events.
    pub fn instance(&self) -> String {
        self.instance
            .clone()
            .unwrap_or_else(|| format!("lumina@{}", self.listen()))
    }

    /// Path of the local log.
    pub fn log_path(&self) -> PathBuf {
        self.data_dir().join("events.db")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_named_in_the_error() {
        let err = toml::from_str::<Config>("[log]\nfsynk = \"always\"\n").unwrap_err();
        assert!(err.to_string().contains("fsynk"), "{err}");
    }

    #[test]
    fn fsync_modes_parse_and_bad_ones_are_refused() {
        for (text, mode) in [
            ("always", lumina_eventlog::FsyncMode::Always),
            ("batch", lumina_eventlog::FsyncMode::Batch),
            ("off", lumina_eventlog::FsyncMode::Off),
        ] {
            let c: Config = toml::from_str(&format!("[log]\nfsync = \"{text}\"\n")).unwrap();
            assert_eq!(c.log.fsync, mode);
        }
        let err = toml::from_str::<Config>("[log]\nfsync = \"sometimes\"\n").unwrap_err();
        assert!(err.to_string().contains("sometimes"), "{err}");
    }

    #[test]
    fn validation_names_the_bad_key() {
        let c: Config = toml::from_str("[database]\nurl = \"mysql://x\"\n").unwrap();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("database.url")
        );
        let c: Config = toml::from_str("[demo]\ncredits = \"lots\"\n").unwrap();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("demo.credits")
        );
    }
}
