//! Metering: per-key rate limits, token usage (reported or estimated with a tokenizer), and
//! the events each request writes (`RequestRouted`, `UpstreamAttempted`, `RequestSettled`).

pub mod events;
pub mod limits;
pub mod usage;
