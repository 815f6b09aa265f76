//! Consumers with exactly-once effects.
//!
//! A consumer polls a batch from an [`EventSource`], and in one database transaction: records
//! each event id in `consumer_applied_events` (a duplicate id makes the event a no-op), lets its
//! [`Projection`] write the event's effects, sends undecodable messages to `dead_letters` with
//! the reason, and stores the next offset per partition in `consumer_positions`. It commits,
//! then polls again. Killed at any instant, it restarts from the last committed position with
//! none of the rolled-back effects, so every event's effect lands exactly once.
//!
//! A batch that fails with a database error is retried: whole while the error looks transient
//! (connection lost, database busy), one event per transaction otherwise, so a single poison
//! event goes to the dead-letter table instead of blocking its partition.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use lumina_schemas::codec::peek;
use lumina_schemas::{Event, EventType, decode, now_micros};
use sqlx::{AnyConnection, Row};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::db::Database;
use crate::source::{EventSource, SourceMessage};

/// What a consumer does with each event, inside the consumer's transaction.
pub trait Projection: Send + Sync + 'static {
    /// The consumer's name: the key of its positions, applied ids and dead letters.
    fn name(&self) -> &'static str;

    /// Whether events of `event_type` have effects here. Others are passed over without being
    /// decoded or recorded (their position still advances).
    fn handles(&self, event_type: EventType) -> bool {
        let _ = event_type;
        true
    }

    /// Writes the effects of `event` through `conn`, which is inside the batch transaction.
    /// Called at most once per event id per consumer.
    fn apply<'a>(
        &'a self,
        conn: &'a mut AnyConnection,
        event: &'a Event,
    ) -> impl Future<Output = Result<(), ApplyError>> + Send + 'a;

    /// Writes the effects of `events`, in order (none seen before). Projections that can write
    /// a batch in fewer statements override this; the default applies them one by one.
    fn apply_batch<'a>(
        &'a self,
        conn: &'a mut AnyConnection,
        events: &'a [&'a Event],
    ) -> impl Future<Output = Result<(), ApplyError>> + Send + 'a {
        async move {
            for event in events {
                self.apply(&mut *conn, event).await?;
            }
            Ok(())
        }
    }
}

/// Why a projection could not apply an event.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The database failed; retried when transient, dead-lettered otherwise.
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    /// The event cannot be applied as it stands (it breaks an invariant or names something
    /// that does not exist); it is dead-lettered with this reason.
    #[error("{0}")]
    Rejected(String),
}

impl ApplyError {
    fn is_transient(&self) -> bool {
        matches!(self, ApplyError::Db(e) if is_transient(e))
    }
}

/// Tuning of a consumer.
#[derive(Debug, Clone)]
pub struct ConsumerOptions {
    /// Most messages applied in one transaction.
    pub batch_size: usize,
    /// How long a poll waits for new messages before looping.
    pub idle_wait: Duration,
    /// Pause after a batch smaller than `batch_size`, so a caught-up consumer takes events in
    /// batches rather than waking for every commit (bounds its lag from below).
    pub coalesce: Duration,
}

impl Default for ConsumerOptions {
    fn default() -> Self {
        ConsumerOptions {
            batch_size: 2048,
            idle_wait: Duration::from_millis(500),
            coalesce: Duration::from_millis(10),
        }
    }
}

/// What a consumer has done so far; published after every committed batch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    /// Next offset to apply, per partition, as committed.
    pub next_offsets: BTreeMap<i32, i64>,
    /// Events whose effects were applied.
    pub applied: u64,
    /// Events skipped because their id was already applied.
    pub duplicates: u64,
    /// Events passed over because the projection has no use for their type.
    pub passed_over: u64,
    /// Messages sent to the dead-letter table.
    pub dead_letters: u64,
    /// When the last batch committed, µs since the epoch.
    pub last_commit_at: i64,
    /// Newest `occurred_at` among applied events, µs since the epoch (for lag).
    pub newest_event_at: i64,
    /// Event-to-view lag of the last batch: from the oldest event's `occurred_at` to the
    /// commit that made it visible, µs.
    pub last_batch_lag_us: i64,
}

/// A named view of a local-log consumer's progress, for readiness and read-your-writes waits.
#[derive(Debug, Clone)]
pub struct ConsumerWatch {
    /// The consumer's name.
    pub name: &'static str,
    /// Its progress.
    pub progress: watch::Receiver<Progress>,
}

impl ConsumerWatch {
    /// Next local-log position the consumer will apply (1 before it applied anything).
    pub fn next_position(&self) -> i64 {
        self.progress
            .borrow()
            .next_offsets
            .get(&0)
            .copied()
            .unwrap_or(1)
            .max(1)
    }

    /// Waits until the consumer has applied local-log `position`; false on timeout or when the
    /// consumer is gone.
    pub async fn wait_applied(&self, position: u64, timeout: Duration) -> bool {
        let target = i64::try_from(position).unwrap_or(i64::MAX);
        let mut progress = self.progress.clone();
        let applied = progress.wait_for(|p| p.next_offsets.get(&0).is_some_and(|&n| n > target));
        matches!(tokio::time::timeout(timeout, applied).await, Ok(Ok(_)))
    }
}

/// Why a consumer stopped.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    /// The database could not be read at start.
    #[error("consumer database error: {0}")]
    Db(#[from] sqlx::Error),
    /// The source could not seek.
    #[error(transparent)]
    Source(#[from] crate::source::SourceError),
}

/// Runs a projection over a source until cancelled.
pub struct Consumer<S, P> {
    db: Database,
    source: S,
    projection: P,
    options: ConsumerOptions,
    progress: watch::Sender<Progress>,
    /// (partition, offset, reason) of messages the current batch dead-lettered, handed to the
    /// source once the batch committed.
    dead_lettered: std::sync::Mutex<Vec<(i32, i64, String)>>,
}

#[derive(Default)]
struct BatchStats {
    applied: u64,
    duplicates: u64,
    passed_over: u64,
    dead_letters: u64,
    newest_event_at: i64,
    /// `occurred_at` of each applied event, for the event-to-view lag.
    occurred_at: Vec<i64>,
}

/// A consumer's Prometheus series: events by fate, and the event-to-view lag of every applied
/// event (from its `occurred_at` to the commit that made it visible).
struct ConsumerMetrics {
    applied: metrics::Counter,
    duplicates: metrics::Counter,
    dead_letters: metrics::Counter,
    lag: metrics::Histogram,
}

impl ConsumerMetrics {
    fn new(name: &'static str) -> Self {
        ConsumerMetrics {
            applied: metrics::counter!("lumina_consumer_events_applied_total", "consumer" => name),
            duplicates: metrics::counter!("lumina_consumer_duplicates_total", "consumer" => name),
            dead_letters: metrics::counter!("lumina_consumer_dead_letters_total", "consumer" => name),
            lag: metrics::histogram!("lumina_event_to_view_lag_seconds", "consumer" => name),
        }
    }

    /// Records a committed batch; returns its largest lag, µs, when it applied anything.
    fn record(&self, stats: &BatchStats, committed_at: i64) -> Option<i64> {
        self.applied.increment(stats.applied);
        self.duplicates.increment(stats.duplicates);
        self.dead_letters.increment(stats.dead_letters);
        let mut worst = None;
        for &t in &stats.occurred_at {
            let lag = (committed_at - t).max(0);
            self.lag.record(lag as f64 / 1e6);
            worst = worst.max(Some(lag));
        }
        worst
    }
}

/// Whether a database error may go away by retrying the same work.
pub fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            // SQLite: BUSY (5), LOCKED (6), and their extended codes.
            // PostgreSQL: serialization failure, deadlock, shutdown, connection exceptions.
            matches!(
                &*code,
                "5" | "6" | "261" | "517" | "40001" | "40P01" | "57P01" | "57P02" | "57P03"
            ) || code.starts_with("08")
        }
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        _ => false,
    }
}

/// Stored next offsets of `consumer` on `stream`.
pub async fn load_positions(
    db: &Database,
    consumer: &str,
    stream: &str,
) -> Result<Vec<(i32, i64)>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT partition_id, next_offset FROM consumer_positions
         WHERE consumer = $1 AND stream = $2 ORDER BY partition_id",
    )
    .bind(consumer)
    .bind(stream)
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|r| {
            let partition: i64 = r.try_get(0)?;
            Ok((i32::try_from(partition).unwrap_or(0), r.try_get(1)?))
        })
        .collect()
}

/// Whether `consumer` has applied the event `event_id`.
pub async fn has_applied(
    db: &Database,
    consumer: &str,
    event_id: &uuid::Uuid,
) -> Result<bool, sqlx::Error> {
    let row =
        sqlx::query("SELECT 1 FROM consumer_applied_events WHERE consumer = $1 AND event_id = $2")
            .bind(consumer)
            .bind(event_id.to_string())
            .fetch_optional(&db.pool)
            .await?;
    Ok(row.is_some())
}

/// Forgets everything `consumer` applied, so it replays its source from the start. Its
/// projection's own tables must be cleared in the same breath by the caller.
pub async fn reset_consumer(conn: &mut AnyConnection, consumer: &str) -> Result<(), sqlx::Error> {
    for statement in [
        "DELETE FROM consumer_positions WHERE consumer = $1",
        "DELETE FROM consumer_applied_events WHERE consumer = $1",
        "DELETE FROM dead_letters WHERE consumer = $1",
    ] {
        sqlx::query(statement)
            .bind(consumer)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

impl<S: EventSource, P: Projection> Consumer<S, P> {
    /// A consumer of `source` into `db` through `projection`.
    pub fn new(db: Database, source: S, projection: P, options: ConsumerOptions) -> Self {
        Consumer {
            db,
            source,
            projection,
            options,
            progress: watch::Sender::new(Progress::default()),
            dead_lettered: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Watches this consumer's progress.
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    /// A named watch of this consumer's progress.
    pub fn watch(&self) -> ConsumerWatch {
        ConsumerWatch {
            name: self.projection.name(),
            progress: self.progress.subscribe(),
        }
    }

    /// Seeks the source to the stored positions, then applies batches until `cancel` fires.
    /// Cancelling between or during batches is safe: an uncommitted batch is rolled back.
    pub async fn run(mut self, cancel: CancellationToken) -> Result<(), ConsumerError> {
        let name = self.projection.name();
        let positions = loop {
            match load_positions(&self.db, name, self.source.stream()).await {
                Ok(p) => break p,
                Err(e) if is_transient(&e) => {
                    tracing::warn!(consumer = name, error = %e, "cannot load positions; retrying");
                    if sleep_or_cancel(&cancel, Duration::from_millis(500)).await {
                        return Ok(());
                    }
                }
                Err(e) => return Err(e.into()),
            }
        };
        self.progress
            .send_modify(|p| p.next_offsets = positions.iter().copied().collect());
        self.source.seek(&positions).await?;
        tracing::info!(
            consumer = name,
            stream = self.source.stream(),
            ?positions,
            "consumer started"
        );
        let mut committed: BTreeMap<i32, i64> = positions.iter().copied().collect();
        let mut backoff = Duration::from_millis(50);
        let metrics = ConsumerMetrics::new(name);
        loop {
            let polled = tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                polled = self.source.poll(self.options.batch_size, self.options.idle_wait) => polled,
            };
            let polled = match polled {
                Ok(polled) => polled,
                Err(e) => {
                    tracing::warn!(consumer = name, error = %e, "poll failed");
                    if sleep_or_cancel(&cancel, backoff).await {
                        return Ok(());
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            let mut next = committed.clone();
            for m in &polled.messages {
                let n = next.entry(m.partition).or_insert(0);
                *n = (*n).max(m.offset + 1);
            }
            for &(partition, offset) in &polled.next_offsets {
                let n = next.entry(partition).or_insert(0);
                *n = (*n).max(offset);
            }
            if polled.messages.is_empty() && next == committed {
                continue;
            }
            let partial = polled.messages.len() < self.options.batch_size;
            let positions: Vec<(i32, i64)> = next.iter().map(|(&p, &o)| (p, o)).collect();
            let Some(stats) = self
                .apply_with_retries(&polled.messages, &positions, &cancel)
                .await
            else {
                return Ok(());
            };
            let dead = std::mem::take(&mut *self.dead_lettered_list());
            for (partition, offset, reason) in dead {
                if let Some(m) = polled
                    .messages
                    .iter()
                    .find(|m| m.partition == partition && m.offset == offset)
                {
                    self.source.dead_lettered(m, &reason).await;
                }
            }
            committed = next;
            backoff = Duration::from_millis(50);
            let now = now_micros();
            let lag_us = metrics.record(&stats, now);
            self.progress.send_modify(|p| {
                p.next_offsets = committed.clone();
                p.applied += stats.applied;
                p.duplicates += stats.duplicates;
                p.passed_over += stats.passed_over;
                p.dead_letters += stats.dead_letters;
                p.last_commit_at = now;
                p.newest_event_at = p.newest_event_at.max(stats.newest_event_at);
                if let Some(lag) = lag_us {
                    p.last_batch_lag_us = lag;
                }
            });
            if partial
                && !self.options.coalesce.is_zero()
                && sleep_or_cancel(&cancel, self.options.coalesce).await
            {
                return Ok(());
            }
        }
    }

    /// Applies `batch`, retrying transient failures; `None` when cancelled meanwhile.
    async fn apply_with_retries(
        &self,
        batch: &[SourceMessage],
        positions: &[(i32, i64)],
        cancel: &CancellationToken,
    ) -> Option<BatchStats> {
        let name = self.projection.name();
        let mut backoff = Duration::from_millis(50);
        loop {
            self.dead_lettered_list().clear();
            let result = match self.apply_batch(batch, positions).await {
                Err(e) if !e.is_transient() => {
                    tracing::warn!(consumer = name, error = %e, "batch failed; applying one event at a time");
                    self.apply_singly(batch, positions).await
                }
                other => other,
            };
            match result {
                Ok(stats) => return Some(stats),
                Err(e) => {
                    tracing::warn!(consumer = name, error = %e, "database unavailable; retrying batch");
                    if sleep_or_cancel(cancel, backoff).await {
                        return None;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    fn dead_lettered_list(&self) -> std::sync::MutexGuard<'_, Vec<(i32, i64, String)>> {
        self.dead_lettered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn apply_batch(
        &self,
        batch: &[SourceMessage],
        positions: &[(i32, i64)],
    ) -> Result<BatchStats, ApplyError> {
        let mut tx = self.begin().await?;
        let stats = self.apply_messages(&mut tx, batch).await?;
        self.store_positions(&mut tx, positions).await?;
        tx.commit().await?;
        Ok(stats)
    }

    /// A transaction for a batch. On PostgreSQL it commits without waiting for the WAL flush:
    /// a batch lost to a database crash loses its stored position with it, so the consumer
    /// applies those events again — exactly once still holds, and batches commit sooner.
    async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        let mut tx = self.db.pool.begin().await?;
        if self.db.backend == crate::db::Backend::Postgres {
            sqlx::query("SET LOCAL synchronous_commit = off")
                .execute(&mut *tx)
                .await?;
        }
        Ok(tx)
    }

    /// Decodes `batch`, dead-letters what does not decode, claims the event ids in one
    /// statement (a duplicate's claim fails) and hands the fresh events to the projection.
    async fn apply_messages(
        &self,
        conn: &mut AnyConnection,
        batch: &[SourceMessage],
    ) -> Result<BatchStats, ApplyError> {
        let mut stats = BatchStats::default();
        let mut events = Vec::with_capacity(batch.len());
        for message in batch {
            if let Ok((event_type, _)) = peek(&message.bytes)
                && !self.projection.handles(event_type)
            {
                stats.passed_over += 1;
                continue;
            }
            match decode(&message.bytes) {
                Ok(decoded) => events.push(decoded.event),
                Err(e) => {
                    stats.dead_letters += 1;
                    self.dead_letter(conn, message, &e.to_string()).await?;
                }
            }
        }
        let fresh = self.claim(conn, &events).await?;
        stats.duplicates += (events.len() - fresh.len()) as u64;
        stats.applied += fresh.len() as u64;
        stats.occurred_at = fresh.iter().map(|e| e.envelope.occurred_at).collect();
        stats.newest_event_at = stats.occurred_at.iter().copied().max().unwrap_or(0);
        self.projection.apply_batch(conn, &fresh).await?;
        Ok(stats)
    }

    /// Records `events`' ids as applied; returns, in order, those not applied before (each
    /// id once).
    async fn claim<'e>(
        &self,
        conn: &mut AnyConnection,
        events: &'e [Event],
    ) -> Result<Vec<&'e Event>, sqlx::Error> {
        const ROWS: usize = 300;
        let ids: Vec<String> = events
            .iter()
            .map(|e| e.envelope.event_id.to_string())
            .collect();
        let now = now_micros();
        let name = self.projection.name();
        let returned = crate::db::fetch_rows(
            conn,
            "INSERT INTO consumer_applied_events (consumer, event_id, applied_at)",
            3,
            "ON CONFLICT DO NOTHING RETURNING event_id",
            ROWS,
            &ids,
            |values, id| values.bind(name).bind(id.as_str()).bind(now),
        )
        .await?;
        let mut claimed = std::collections::HashSet::with_capacity(returned.len());
        for row in returned {
            claimed.insert(row.try_get::<String, _>(0)?);
        }
        Ok(events
            .iter()
            .zip(&ids)
            .filter(|(_, id)| claimed.remove(*id))
            .map(|(e, _)| e)
            .collect())
    }

    /// One transaction per message; a message whose effects fail for a non-transient reason
    /// is dead-lettered with that reason.
    async fn apply_singly(
        &self,
        batch: &[SourceMessage],
        positions: &[(i32, i64)],
    ) -> Result<BatchStats, ApplyError> {
        let mut stats = BatchStats::default();
        for message in batch {
            let one = [(message.partition, message.offset + 1)];
            let one = one.as_slice();
            let mut tx = self.db.pool.begin().await?;
            let applied = self.apply_messages(&mut tx, one_message(message)).await;
            let single = match applied {
                Ok(single) => {
                    self.store_positions(&mut tx, one).await?;
                    tx.commit().await?;
                    single
                }
                Err(e) if e.is_transient() => return Err(e),
                Err(e) => {
                    tx.rollback().await?;
                    let mut tx = self.db.pool.begin().await?;
                    self.dead_letter(&mut tx, message, &format!("projection failed: {e}"))
                        .await?;
                    self.store_positions(&mut tx, one).await?;
                    tx.commit().await?;
                    BatchStats {
                        dead_letters: 1,
                        ..BatchStats::default()
                    }
                }
            };
            stats.applied += single.applied;
            stats.duplicates += single.duplicates;
            stats.passed_over += single.passed_over;
            stats.dead_letters += single.dead_letters;
            stats.newest_event_at = stats.newest_event_at.max(single.newest_event_at);
            stats.occurred_at.extend(single.occurred_at);
        }
        let mut tx = self.db.pool.begin().await?;
        self.store_positions(&mut tx, positions).await?;
        tx.commit().await?;
        Ok(stats)
    }

    async fn dead_letter(
        &self,
        conn: &mut AnyConnection,
        message: &SourceMessage,
        reason: &str,
    ) -> Result<(), sqlx::Error> {
        tracing::warn!(
            consumer = self.projection.name(),
            partition = message.partition,
            offset = message.offset,
            reason,
            "message dead-lettered"
        );
        self.dead_lettered_list()
            .push((message.partition, message.offset, reason.to_string()));
        sqlx::query(
            "INSERT INTO dead_letters
                 (consumer, stream, partition_id, msg_offset, reason, payload, recorded_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
        )
        .bind(self.projection.name())
        .bind(self.source.stream())
        .bind(i64::from(message.partition))
        .bind(message.offset)
        .bind(reason)
        .bind(message.bytes.as_slice())
        .bind(now_micros())
        .execute(conn)
        .await?;
        Ok(())
    }

    async fn store_positions(
        &self,
        conn: &mut AnyConnection,
        positions: &[(i32, i64)],
    ) -> Result<(), sqlx::Error> {
        let now = now_micros();
        for &(partition, next_offset) in positions {
            sqlx::query(
                "INSERT INTO consumer_positions
                     (consumer, stream, partition_id, next_offset, updated_at)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (consumer, stream, partition_id)
                 DO UPDATE SET updated_at = excluded.updated_at,
                     next_offset = CASE WHEN excluded.next_offset > consumer_positions.next_offset
                         THEN excluded.next_offset ELSE consumer_positions.next_offset END",
            )
            .bind(self.projection.name())
            .bind(self.source.stream())
            .bind(i64::from(partition))
            .bind(next_offset)
            .bind(now)
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }
}

fn one_message(message: &SourceMessage) -> &[SourceMessage] {
    std::slice::from_ref(message)
}

/// The event types `projection` handles, to filter a source with.
pub fn handled_types(projection: &impl Projection) -> Vec<EventType> {
    EventType::ALL
        .iter()
        .copied()
        .filter(|&t| projection.handles(t))
        .collect()
}

/// Sleeps for `duration`; true when `cancel` fired first.
async fn sleep_or_cancel(cancel: &CancellationToken, duration: Duration) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => true,
        _ = tokio::time::sleep(duration) => false,
    }
}
