//! Distributed mode on a Kafka-protocol broker: `[kafka]` configuration and topic creation,
//! the shipper that drains each gateway's local log to the event topic, the event source
//! ledger and projector processes read the topic with, the plain reader behind `replay`
//! and `events tail`, and closing their clients at shutdown within a bound.

pub mod close;
pub mod config;
pub mod reader;
pub mod shipper;
pub mod source;

pub use config::{Assignment, KafkaConfig, MAX_MESSAGE_BYTES};
pub use shipper::{ShipError, Shipper, ShipperStatus};
pub use source::KafkaSource;
