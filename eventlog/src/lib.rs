//! The event spine: the local log every gateway appends to first, the sources consumers read
//! (the local log now, Kafka in distributed mode), the database they write, and the consumer
//! loop that applies each event's effects exactly once.

pub mod consumer;
pub mod db;
pub mod log;
pub mod source;

pub use consumer::{
    ApplyError, Consumer, ConsumerOptions, ConsumerWatch, Progress, Projection, handled_types,
};
pub use db::{Backend, Database, DbError};
pub use log::{
    EventLog, FsyncMode, LogEntry, LogError, LogOptions, LogReader, LogRecord, TypeFilter,
    prune_blocking,
};
pub use source::{EventSource, LOCAL_STREAM, LocalLogSource, Polled, SourceError, SourceMessage};
