//! The shipper: drains a gateway's local log to the event topic, in log order, with the
//! idempotent producer (`acks=all`), keyed by `account_id` so one account's events stay in one
//! partition in order. The request path never waits for it: requests commit to the local log
//! and the shipper follows. The highest acknowledged position is kept in `shipper.position`
//! in the data dir; after a crash the shipper resumes there and may send a window again, which
//! consumers drop by `event_id`. Shipped entries older than the retention are pruned. On
//! cancellation it waits at most `FLUSH_WAIT` for what is in flight and [`CLOSE_WAIT`] for the
//! producer to close, whatever the broker's state: the rest ships after a restart.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::FutureExt;

use lumina_eventlog::{EventLog, LogEntry, LogReader};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::close::{CLOSE_WAIT, close_within};
use crate::config::{KafkaConfig, MAX_MESSAGE_BYTES};

/// Entries produced and not yet acknowledged, at most: the producer keeps this many in flight
/// and reads on as the oldest are acknowledged, so the broker is never left waiting for the
/// shipper.
const MAX_IN_FLIGHT: usize = 16_384;
/// Entries read from the local log at a time.
const READ_CHUNK: usize = 4096;
/// How often the acknowledged position is written while acknowledgements stream in.
const POSITION_EVERY: Duration = Duration::from_millis(100);
/// Entries pruned per statement.
const PRUNE_CHUNK: usize = 10_000;
/// How often shipped entries are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(10);
/// How long a stopping shipper waits for acknowledgements of what is in flight.
const FLUSH_WAIT: Duration = Duration::from_secs(1);

/// Why the shipper could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    /// The Kafka client failed.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// The local log or the position file failed.
    #[error("{0}")]
    Local(String),
}

/// What the shipper reports: its acknowledged position, the backlog behind it, and errors.
#[derive(Debug, Clone, Default)]
pub struct ShipperStatus {
    /// Highest log position the broker acknowledged.
    pub acked: u64,
    /// Committed entries not yet acknowledged.
    pub backlog: u64,
    /// Age of the oldest unshipped entry, ms (0 when none).
    pub oldest_unshipped_age_ms: u64,
    /// Windows that failed and were sent again.
    pub produce_errors: u64,
}

/// Ships one local log to the event topic.
pub struct Shipper {
    topic: String,
    retention: Duration,
    log: EventLog,
    reader: LogReader,
    client: rdkafka::ClientConfig,
    producer: FutureProducer,
    position_file: PathBuf,
    headers: bool,
    status: watch::Sender<ShipperStatus>,
}

impl Shipper {
    /// A shipper for `log`, keeping its position in `data_dir`.
    pub fn new(config: &KafkaConfig, log: EventLog, data_dir: &Path) -> Result<Shipper, ShipError> {
        let mut client = rdkafka::ClientConfig::new();
        client
            .set("bootstrap.servers", &config.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            // Never give up on a message: while the broker is away the log keeps it and the
            // producer keeps retrying; a timeout would only reorder a resend.
            .set("message.timeout.ms", "0")
            // A short linger made librdkafka's broker thread spin a whole core while a slow
            // broker held every in-flight request (profiled against Tansu: 5 ms spun at 100%,
            // 20 ms at 60%); 50 ms does not. On Apache Kafka 5 ms measured no better within the
            // noise of a shared machine (produce-to-apply p99 0.11–0.96 s vs 0.13–0.15 s).
            .set("linger.ms", "50")
            .set("message.max.bytes", MAX_MESSAGE_BYTES)
            .set("partitioner", "murmur2_random");
        for (k, v) in &config.settings {
            client.set(k, v);
        }
        let producer: FutureProducer = client.create()?;
        let reader = log.reader().map_err(|e| ShipError::Local(e.to_string()))?;
        let position_file = data_dir.join("shipper.position");
        let acked = read_position(&position_file)?;
        let (status, _) = watch::channel(ShipperStatus {
            acked,
            ..ShipperStatus::default()
        });
        Ok(Shipper {
            topic: config.topic.clone(),
            retention: config.retention(),
            log,
            reader,
            client,
            producer,
            position_file,
            headers: config.headers,
            status,
        })
    }

    /// Watches the shipper's status.
    pub fn status(&self) -> watch::Receiver<ShipperStatus> {
        self.status.subscribe()
    }

    /// Ships until `cancel` fires; then waits at most `FLUSH_WAIT` for what is in flight and
    /// [`CLOSE_WAIT`] for the producer to close. Returns an error
    /// only when the position file cannot be written; broker trouble is retried.
    pub async fn run(mut self, cancel: CancellationToken) -> Result<(), ShipError> {
        let mut acked = self.status.borrow().acked;
        let mut written = acked;
        let mut in_flight = InFlight::default();
        let mut commits = self.log.subscribe();
        let mut last_prune = Instant::now();
        let mut last_write = Instant::now();
        let mut backoff = Duration::from_millis(100);
        for counter in [
            "lumina_shipper_produce_errors_total",
            "lumina_shipper_oversized_events_total",
            "lumina_shipper_producer_restarts_total",
        ] {
            // Exported from the start, so a dashboard sees 0 rather than nothing.
            metrics::counter!(counter).increment(0);
        }
        tracing::info!(topic = %self.topic, position = acked, "shipper started");
        while !cancel.is_cancelled() {
            // Produce what the log holds beyond what is in flight, as far as the window allows.
            let room = MAX_IN_FLIGHT - in_flight.len();
            let mut more = false;
            let mut failed = None;
            if room > 0 {
                let after = in_flight.sent().unwrap_or(acked);
                match self.reader.read_after(after, room.min(READ_CHUNK)).await {
                    Ok(entries) => {
                        more = entries.len() == room.min(READ_CHUNK);
                        match self.produce(&entries, &mut in_flight, &cancel).await {
                            Ok(true) => {}
                            Ok(false) => break,
                            Err(e) => failed = Some(e),
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "shipper cannot read the local log");
                        if sleep_or_cancel(&cancel, Duration::from_secs(1)).await {
                            break;
                        }
                        continue;
                    }
                }
            }
            // Take every acknowledgement that has come; wait for one only when nothing else
            // is to be done.
            let mut acks = Acks::default();
            if failed.is_some() || (more && in_flight.len() < MAX_IN_FLIGHT) {
                in_flight.take_acknowledged(&mut acks);
            } else if in_flight.is_empty() {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = commits.changed() => {}
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            } else {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    () = in_flight.next_acknowledged(&mut acks) => {
                        in_flight.take_acknowledged(&mut acks);
                    }
                    _ = commits.changed(), if in_flight.len() < MAX_IN_FLIGHT => {}
                    // While the broker is away the backlog and its age keep being reported.
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
            if let Some(position) = acks.delivered {
                metrics::counter!("lumina_shipper_shipped_events_total")
                    .increment(position - acked);
                acked = position;
                backoff = Duration::from_millis(100);
            }
            if let Some((position, e)) = acks.failed {
                if is_too_large(&e) {
                    // It can never be shipped; holding everything behind it would be worse.
                    metrics::counter!("lumina_shipper_oversized_events_total").increment(1);
                    tracing::error!(error = %e, position,
                        "the broker refused an event as too large; it stays in the local log only (lumina replay --data-dir)");
                    acked = position;
                } else {
                    failed = Some(e);
                }
            }
            if let Some(e) = failed {
                metrics::counter!("lumina_shipper_produce_errors_total").increment(1);
                self.status.send_modify(|s| s.produce_errors += 1);
                tracing::warn!(error = %e, position = acked, "shipping failed; sending again from the acknowledged position");
                // What is still queued in the producer may arrive too: consumers drop the
                // repeats by event_id.
                in_flight.clear();
                self.renew_producer_after_fatal_error();
                if sleep_or_cancel(&cancel, backoff).await {
                    break;
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            if acked != written && (in_flight.is_empty() || last_write.elapsed() >= POSITION_EVERY)
            {
                write_position(&self.position_file, acked).await?;
                written = acked;
                last_write = Instant::now();
            }
            self.report(acked, in_flight.oldest_appended_at());
            if last_prune.elapsed() >= PRUNE_EVERY {
                last_prune = Instant::now();
                self.prune(written).await;
            }
        }
        let producer = self.producer.clone();
        let _ = tokio::task::spawn_blocking(move || producer.flush(FLUSH_WAIT)).await;
        let mut acks = Acks::default();
        in_flight.take_acknowledged(&mut acks);
        if let Some(position) = acks.delivered {
            acked = position;
        }
        let producer = std::sync::Arc::new(self.producer);
        let _ = tokio::task::spawn_blocking(move || close_within(producer, CLOSE_WAIT, "shipper"))
            .await;
        if acked != written {
            write_position(&self.position_file, acked).await?;
        }
        tracing::info!(position = acked, "shipper stopped");
        Ok(())
    }

    /// After a fatal error an idempotent producer refuses every message: start a new one (a new
    /// producer id; consumers drop what the old one may still have delivered).
    fn renew_producer_after_fatal_error(&mut self) {
        let Some((code, reason)) = self.producer.client().fatal_error() else {
            return;
        };
        tracing::error!(
            ?code,
            reason,
            "the producer hit a fatal error; starting a new one"
        );
        match self.client.create() {
            Ok(producer) => {
                self.producer = producer;
                metrics::counter!("lumina_shipper_producer_restarts_total").increment(1);
            }
            Err(e) => tracing::error!(error = %e, "cannot start a new producer; retrying"),
        }
    }

    /// Hands `entries` to the producer; `Ok(false)` when cancelled while its queue was full.
    /// An entry the producer refuses as too large is passed over (and counted): no broker
    /// would take it.
    async fn produce(
        &self,
        entries: &[LogEntry],
        in_flight: &mut InFlight,
        cancel: &CancellationToken,
    ) -> Result<bool, KafkaError> {
        for e in entries {
            let event_id = self.headers.then(|| e.event_id.to_string());
            let headers = event_id.as_deref().map(|event_id| {
                OwnedHeaders::new_with_capacity(2)
                    .insert(Header {
                        key: "event_type",
                        value: Some(e.event_type.as_str()),
                    })
                    .insert(Header {
                        key: "event_id",
                        value: Some(event_id),
                    })
            });
            let mut record = FutureRecord::to(&self.topic)
                .key(e.account_id.as_str())
                .payload(e.bytes.as_slice());
            if let Some(headers) = headers {
                record = record.headers(headers);
            }
            loop {
                match self.producer.send_result(record) {
                    Ok(delivery) => {
                        in_flight.push(e.position, e.appended_at, Some(delivery));
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        if sleep_or_cancel(cancel, Duration::from_millis(5)).await {
                            return Ok(false);
                        }
                    }
                    Err((err, _)) if is_too_large(&err) => {
                        metrics::counter!("lumina_shipper_oversized_events_total").increment(1);
                        tracing::error!(error = %err, position = e.position, event_id = %e.event_id,
                            bytes = e.bytes.len(),
                            "an event exceeds message.max.bytes; it stays in the local log only (lumina replay --data-dir)");
                        in_flight.push(e.position, e.appended_at, None);
                        break;
                    }
                    Err((err, _)) => return Err(err),
                }
            }
        }
        Ok(true)
    }

    /// Publishes the position, the backlog behind it and the age of the oldest entry in flight
    /// (appended at `oldest`, µs).
    fn report(&self, acked: u64, oldest: Option<i64>) {
        let committed = self.log.committed_position();
        let backlog = committed.saturating_sub(acked);
        let age_ms = match oldest {
            Some(appended_at) if backlog > 0 => {
                u64::try_from((now_micros() - appended_at).max(0) / 1000).unwrap_or(0)
            }
            _ => 0,
        };
        metrics::gauge!("lumina_shipper_backlog_events").set(backlog as f64);
        metrics::gauge!("lumina_shipper_oldest_unshipped_age_seconds").set(age_ms as f64 / 1000.0);
        metrics::gauge!("lumina_shipper_acked_position").set(acked as f64);
        self.status.send_modify(|s| {
            s.acked = acked;
            s.backlog = backlog;
            s.oldest_unshipped_age_ms = age_ms;
        });
    }

    async fn prune(&self, acked: u64) {
        let path = self.log.path().to_path_buf();
        let before = now_micros() - i64::try_from(self.retention.as_micros()).unwrap_or(i64::MAX);
        let result = tokio::task::spawn_blocking(move || {
            lumina_eventlog::prune_blocking(&path, acked, before, PRUNE_CHUNK)
        })
        .await;
        match result {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::debug!(pruned = n, "pruned shipped log entries"),
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot prune shipped log entries"),
            Err(e) => tracing::warn!(error = %e, "prune task failed"),
        }
    }
}

/// Entries handed to the producer and not yet acknowledged, oldest first; `None` for an entry
/// passed over.
#[derive(Default)]
struct InFlight {
    entries: VecDeque<(u64, i64, Option<DeliveryFuture>)>,
}

/// What came back from the broker: the newest position delivered with everything before it,
/// and the entry after it that failed, if one did.
#[derive(Default)]
struct Acks {
    delivered: Option<u64>,
    failed: Option<(u64, KafkaError)>,
}

impl InFlight {
    fn push(&mut self, position: u64, appended_at: i64, delivery: Option<DeliveryFuture>) {
        self.entries.push_back((position, appended_at, delivery));
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn clear(&mut self) {
        self.entries.clear();
    }

    /// The last position handed to the producer.
    fn sent(&self) -> Option<u64> {
        self.entries.back().map(|(p, _, _)| *p)
    }

    fn oldest_appended_at(&self) -> Option<i64> {
        self.entries.front().map(|(_, at, _)| *at)
    }

    /// Waits until the oldest entry is acknowledged (or failed) and records it in `acks`.
    async fn next_acknowledged(&mut self, acks: &mut Acks) {
        let Some((position, _, delivery)) = self.entries.front_mut() else {
            return std::future::pending().await;
        };
        let position = *position;
        let result = match delivery {
            Some(delivery) => delivered(delivery.await),
            None => Ok(()),
        };
        self.entries.pop_front();
        match result {
            Ok(()) => acks.delivered = Some(position),
            Err(e) => acks.failed = Some((position, e)),
        }
    }

    /// Pops the oldest entries already acknowledged, in order, into `acks`; stops at the first
    /// still waiting, or after the first that failed.
    fn take_acknowledged(&mut self, acks: &mut Acks) {
        while acks.failed.is_none()
            && let Some((position, _, delivery)) = self.entries.front_mut()
        {
            let position = *position;
            let result = match delivery {
                Some(delivery) => match delivery.now_or_never() {
                    Some(result) => delivered(result),
                    None => break,
                },
                None => Ok(()),
            };
            self.entries.pop_front();
            match result {
                Ok(()) => acks.delivered = Some(position),
                Err(e) => acks.failed = Some((position, e)),
            }
        }
    }
}

/// A delivery report as a result.
fn delivered(
    result: Result<
        rdkafka::producer::future_producer::OwnedDeliveryResult,
        futures::channel::oneshot::Canceled,
    >,
) -> Result<(), KafkaError> {
    match result {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, _))) => Err(e),
        Err(_) => Err(KafkaError::Canceled),
    }
}

/// The producer or the broker refused a message for its size.
fn is_too_large(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessageSize)
    )
}

fn read_position(path: &Path) -> Result<u64, ShipError> {
    match std::fs::read_to_string(path) {
        Ok(text) => text.trim().parse().map_err(|_| {
            ShipError::Local(format!("{} does not hold a log position", path.display()))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(ShipError::Local(format!(
            "cannot read {}: {e}",
            path.display()
        ))),
    }
}

async fn write_position(path: &Path, position: u64) -> Result<(), ShipError> {
    let tmp = path.with_extension("position.tmp");
    // Private like everything in the data dir, whatever the umask.
    let write = async {
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .await?;
        file.write_all(position.to_string().as_bytes()).await?;
        file.flush().await
    };
    write
        .await
        .map_err(|e| ShipError::Local(format!("cannot write {}: {e}", tmp.display())))?;
    tokio::fs::rename(&tmp, path)
        .await
        .map_err(|e| ShipError::Local(format!("cannot write {}: {e}", path.display())))
}

/// Sleeps for `d`; `true` when cancelled first.
pub(crate) async fn sleep_or_cancel(cancel: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}

pub(crate) fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}
