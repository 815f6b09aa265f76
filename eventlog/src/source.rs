//! Where consumers read events from: the [`EventSource`] trait and its local-log implementation
//! (the Kafka one joins it in distributed mode).
//!
//! A source only delivers bytes with their (partition, offset); decoding, deduplication and
//! storing positions belong to the consumer, so every source gets the same exactly-once effect.

use std::future::Future;
use std::time::Duration;

use std::sync::Arc;

use lumina_schemas::EventType;
use tokio::sync::watch;

use crate::log::{LogError, LogReader, TypeFilter};

/// One message as a source delivers it.
#[derive(Debug, Clone)]
pub struct SourceMessage {
    /// Partition (0 for the local log).
    pub partition: i32,
    /// Offset within the partition (the log position for the local log).
    pub offset: i64,
    /// The message body: an Avro single-object event, or garbage for the dead-letter table.
    pub bytes: Vec<u8>,
}

/// What one poll delivered: the messages, and how far the source has read each partition
/// (past the messages when it skipped entries the consumer does not want).
#[derive(Debug, Clone, Default)]
pub struct Polled {
    /// Messages in order per partition.
    pub messages: Vec<SourceMessage>,
    /// Next offset to read per partition, as of this poll.
    pub next_offsets: Vec<(i32, i64)>,
}

/// Why a source could not deliver.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The local log failed.
    #[error(transparent)]
    Log(#[from] LogError),
    /// The broker or client failed.
    #[error("source error: {0}")]
    Other(String),
}

/// A stream of events with positions that a consumer stores beside its effects.
pub trait EventSource: Send {
    /// Name of the stream, stored with positions (`local`, or the Kafka topic).
    fn stream(&self) -> &str;

    /// Continue each listed partition from its stored next offset.
    fn seek(
        &mut self,
        next_offsets: &[(i32, i64)],
    ) -> impl Future<Output = Result<(), SourceError>> + Send;

    /// Up to `max` messages in order per partition, waiting at most `wait` when none are ready.
    fn poll(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> impl Future<Output = Result<Polled, SourceError>> + Send;

    /// Told, after the batch committed, of a message the consumer dead-lettered and why (the
    /// Kafka source copies it to the dead-letter topic). Nothing by default.
    fn dead_lettered(
        &mut self,
        message: &SourceMessage,
        reason: &str,
    ) -> impl Future<Output = ()> + Send {
        let _ = (message, reason);
        async {}
    }
}

/// Stream name of the local log.
pub const LOCAL_STREAM: &str = "local";

/// Reads the local log from a position; wakes on commits when it shares the writer's process,
/// otherwise polls the file. With [`LocalLogSource::only`], entries of other types are skipped
/// inside SQLite and never copied out.
pub struct LocalLogSource {
    reader: LogReader,
    next: u64,
    commits: Option<watch::Receiver<u64>>,
    poll_interval: Duration,
    filter: Arc<TypeFilter>,
}

impl LocalLogSource {
    /// A source over `reader` starting at position 1 (until [`EventSource::seek`]).
    pub fn new(reader: LogReader) -> LocalLogSource {
        LocalLogSource {
            reader,
            next: 1,
            commits: None,
            poll_interval: Duration::from_millis(20),
            filter: Arc::new(TypeFilter::all()),
        }
    }

    /// Wake as soon as the in-process writer commits, instead of polling.
    pub fn with_commit_notifications(mut self, commits: watch::Receiver<u64>) -> Self {
        self.commits = Some(commits);
        self
    }

    /// Deliver only entries of these types (and any unknown type, for the dead-letter table).
    pub fn only(mut self, types: &[EventType]) -> Self {
        self.filter = Arc::new(TypeFilter::new(types));
        self
    }

    async fn end(&self) -> Result<u64, SourceError> {
        match &self.commits {
            Some(commits) => Ok(*commits.borrow()),
            None => Ok(self.reader.end_position().await?),
        }
    }

    /// Reads what is committed past `next`; `None` when nothing is.
    async fn read(&mut self, max: usize) -> Result<Option<Polled>, SourceError> {
        let end = self.end().await?;
        if end < self.next {
            return Ok(None);
        }
        let entries = self
            .reader
            .read_range(self.next - 1, end, max, self.filter.clone())
            .await?;
        self.next = match entries.last() {
            Some(last) if entries.len() == max => last.position + 1,
            _ => end + 1,
        };
        let messages = entries
            .into_iter()
            .map(|e| SourceMessage {
                partition: 0,
                offset: i64::try_from(e.position).unwrap_or(i64::MAX),
                bytes: e.bytes,
            })
            .collect();
        Ok(Some(Polled {
            messages,
            next_offsets: vec![(0, i64::try_from(self.next).unwrap_or(i64::MAX))],
        }))
    }
}

impl EventSource for LocalLogSource {
    fn stream(&self) -> &str {
        LOCAL_STREAM
    }

    async fn seek(&mut self, next_offsets: &[(i32, i64)]) -> Result<(), SourceError> {
        self.next = next_offsets
            .iter()
            .find(|(p, _)| *p == 0)
            .map(|&(_, o)| u64::try_from(o).unwrap_or(1).max(1))
            .unwrap_or(1);
        Ok(())
    }

    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Polled, SourceError> {
        if let Some(polled) = self.read(max).await? {
            return Ok(polled);
        }
        let next = self.next;
        let writer_gone = match &mut self.commits {
            Some(commits) => {
                let woke = tokio::time::timeout(wait, commits.wait_for(|&end| end >= next)).await;
                matches!(woke, Ok(Err(_)))
            }
            None => {
                tokio::time::sleep(wait.min(self.poll_interval)).await;
                false
            }
        };
        if writer_gone {
            // The writer is gone; fall back to polling the file.
            self.commits = None;
            tokio::time::sleep(wait.min(self.poll_interval)).await;
        }
        Ok(self.read(max).await?.unwrap_or_default())
    }
}
