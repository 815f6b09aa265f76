//! The state every handler shares, built once at startup and passed with axum's `State`.

use std::ops::Deref;
use std::sync::Arc;

use lumina_eventlog::{ConsumerWatch, EventLog};
use lumina_ledger::Ledger;
use lumina_projector::ReadModel;

use crate::admin::Admin;
use crate::auth::KeyCache;
use crate::config::ServerConfig;
use crate::engine::fusion::Fusion;
use crate::metering::credit::CreditBook;
use crate::metering::limits::Limits;
use crate::metering::pricing::PriceTable;
use crate::response_store::ResponseStore;
use crate::routing::catalog::Catalog;
use crate::routing::table::RouteTable;
use crate::telemetry::Telemetry;

/// Shared handler state; cloning is one reference count.
#[derive(Clone)]
pub struct AppState(Arc<AppInner>);

/// What handlers reach through [`AppState`].
pub struct AppInner {
    /// Admin writes (and the admin API's reads of what it wrote).
    pub admin: Admin,
    /// The projector's read model: keys, accounts, usage and request views.
    pub read_model: ReadModel,
    /// The ledger's balances and journal.
    pub ledger: Ledger,
    /// The Responses API's stored responses.
    pub responses: ResponseStore,
    /// Customer keys.
    pub keys: Arc<KeyCache>,
    /// The admin bearer token.
    pub admin_key: String,
    /// Models this gateway offers.
    pub catalog: Catalog,
    /// The local log.
    pub log: EventLog,
    /// When this gateway counts as ready.
    pub readiness: Readiness,
    /// Deployments per path.
    pub routes: RouteTable,
    /// Model Fusion's panel, judge and synthesizer.
    pub fusion: Fusion,
    /// Per-key rate limiters.
    pub limits: Limits,
    /// This gateway's name in events.
    pub instance: Arc<str>,
    /// Limits of the HTTP surface.
    pub server: ServerConfig,
    /// Prices in force.
    pub prices: PriceTable,
    /// Their version, shared by every settlement.
    pub price_version: Arc<str>,
    /// Available credit per account, with this gateway's holds.
    pub credits: Arc<CreditBook>,
    /// OpenTelemetry tracing (off unless `[telemetry] otlp_endpoint` is set).
    pub telemetry: Telemetry,
    /// The Prometheus recorder behind `/metrics` (`None`: not installed, 404).
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

impl AppState {
    /// Wraps the parts.
    pub fn new(inner: AppInner) -> AppState {
        AppState(Arc::new(inner))
    }
}

impl Deref for AppState {
    type Target = AppInner;

    fn deref(&self) -> &AppInner {
        &self.0
    }
}

/// Ready once migrations ran (before this exists) and every in-process consumer applied the
/// log as it was at startup.
pub struct Readiness {
    /// The consumers running in this process.
    pub consumers: Vec<ConsumerWatch>,
    /// Log position each consumer must pass before the gateway is ready.
    pub log_end_at_start: u64,
}

impl Readiness {
    /// Whether every consumer caught up with the log as it was at startup.
    pub fn caught_up(&self) -> bool {
        let end = i64::try_from(self.log_end_at_start).unwrap_or(i64::MAX);
        self.consumers.iter().all(|c| c.next_position() > end)
    }
}
