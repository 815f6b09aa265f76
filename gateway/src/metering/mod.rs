//! Metering: credit holds against the ledger's balances and the budgets in force, per-key rate limits, token usage (reported or estimated with a tokenizer), and
//! the events each request writes (`RequestRouted`, `UpstreamAttempted`, `RequestSettled`, and `RequestContentRecorded` for keys that
//! opted in).

pub mod budget;
pub mod content;
pub mod cost;
pub mod credit;
pub mod events;
pub mod limits;
pub mod pricing;
pub mod shared_limits;
pub mod usage;
