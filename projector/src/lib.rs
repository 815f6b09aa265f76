//! The projector: events in, read models out. It owns the tables the gateway loads (accounts,
//! projects, API keys and their limits), the request views behind `/v1/usage`, request logs and
//! traces, route statistics, the published routing policies, eval results, and the eval dataset
//! export.
//!
//! It never calls the ledger or the gateway; everything it writes is derived from events and
//! can be dropped and rebuilt by replaying the log ([`read_model::rebuild`]).

pub mod eval;
pub mod eval_results;
pub mod policies;
pub mod read_model;
pub mod requests;
pub mod views;

pub use read_model::{
    AccountRow, AdminKeyRow, BudgetRow, KeyRow, ProjectRow, ReadModel, ReadModelProjection,
};

/// Consumer name of the projector: the key of its positions and applied event ids.
pub const CONSUMER: &str = "projector";
