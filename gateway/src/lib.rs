//! The gateway: accept → authenticate → (limit/hold → classify → route → attempt/fallback →
//! stream, as they land) over an OpenAI-compatible HTTP API, plus the admin API.
//!
//! It never writes tables: its durable output is events in the local log; keys, balances and
//! policy come from read models maintained by the projector and the ledger.

pub mod admin;
pub mod anthropic_wire;
pub mod api;
pub mod auth;
pub mod config;
pub mod dashboard;
pub mod embeddings;
pub mod engine;
pub mod json_keys;
pub mod metering;
pub mod providers;
pub mod response_store;
pub mod responses_wire;
pub mod routing;
pub mod state;
pub mod telemetry;
pub mod wire;

pub use api::router;
pub use state::{AppInner, AppState, Readiness};
