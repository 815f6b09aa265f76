//! The local log: an append-only SQLite table in WAL mode, written by one thread with group
//! commit, read by any number of readers from a position.
//!
//! The writer thread owns the only write connection. Appenders hand it records through a
//! bounded channel; it takes everything queued (up to `max_batch`, optionally lingering for
//! more), commits the batch in one transaction, then acknowledges each record with its
//! position. A record's `append` returns only after its batch committed, so a returned
//! position survives `kill -9` (WAL, any `fsync` mode) and, with `fsync = "always"`, power loss.
//!
//! Only records someone waits for wake the writer at once. Records nobody waits for
//! ([`EventLog::append_nowait`], [`EventLog::append_deferred`]) wake it only when it sleeps
//! with nothing queued; otherwise they wait, at most `relaxed_wait_us`, for the next waited
//! record to share its commit. A request's routing, attempt and settlement so cost the writer
//! one wake-up and one commit instead of three of each.
//!
//! It never blocks the async runtime: SQLite calls happen on the writer thread or, for
//! readers, inside `spawn_blocking`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use lumina_schemas::{CodecError, Event};
use rusqlite::{Connection, OpenFlags, params};
use serde::Deserialize;
use tokio::sync::{oneshot, watch};
use uuid::Uuid;

/// How hard a commit pushes data to the disk (config key `log.fsync`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FsyncMode {
    /// fsync the WAL on every group commit (`synchronous=FULL`): survives power loss.
    Always,
    /// Leave fsync to WAL checkpoints (`synchronous=NORMAL`): survives a killed process; a power
    /// cut can lose the last commits. The default.
    #[default]
    Batch,
    /// Never fsync (`synchronous=OFF`): survives a killed process, not a power cut.
    Off,
}

impl FsyncMode {
    fn pragma(self) -> &'static str {
        match self {
            FsyncMode::Always => "FULL",
            FsyncMode::Batch => "NORMAL",
            FsyncMode::Off => "OFF",
        }
    }
}

/// Tuning of the local log (config section `[log]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogOptions {
    /// Durability of each commit.
    pub fsync: FsyncMode,
    /// Most records committed in one transaction.
    pub max_batch: usize,
    /// How long the writer waits for more records after the first of a batch, in
    /// microseconds. 0 commits whatever is queued at once, which already batches under load.
    pub linger_us: u64,
    /// Records that may wait for the writer before appenders are slowed down.
    pub queue_capacity: usize,
    /// Longest a record nobody waits for stays queued, in microseconds, for a waited record
    /// to share its commit. 0 commits such records as soon as the writer sees them.
    pub relaxed_wait_us: u64,
    /// WAL size, in MiB, past which the checkpointer truncates it (see [`run_checkpointer`]):
    /// what bounds the log's disk beyond its database file and the WAL index each process maps.
    pub wal_limit_mib: u32,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            fsync: FsyncMode::Batch,
            max_batch: 4096,
            linger_us: 0,
            queue_capacity: 65_536,
            relaxed_wait_us: 1_000,
            wal_limit_mib: 64,
        }
    }
}

/// Why the log refused or failed an operation.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LogError {
    /// SQLite failed (disk full, I/O error, corruption); the message says which.
    #[error("event log storage failed: {0}")]
    Storage(String),
    /// The writer thread has stopped; the process is shutting down or the log broke.
    #[error("event log writer is not running")]
    Closed,
    /// The event could not be encoded.
    #[error("event could not be encoded: {0}")]
    Encode(String),
}

impl From<rusqlite::Error> for LogError {
    fn from(e: rusqlite::Error) -> Self {
        LogError::Storage(e.to_string())
    }
}

impl From<CodecError> for LogError {
    fn from(e: CodecError) -> Self {
        LogError::Encode(e.to_string())
    }
}

/// One encoded event on its way into the log.
#[derive(Debug, Clone)]
pub struct LogRecord {
    /// The event's id.
    pub event_id: Uuid,
    /// The event's type name.
    pub event_type: &'static str,
    /// The account, kept beside the bytes so shippers key messages without decoding.
    pub account_id: String,
    /// The Avro single-object encoding of the event.
    pub bytes: Vec<u8>,
}

impl LogRecord {
    /// Encodes `event` into a record.
    pub fn from_event(event: &Event) -> Result<LogRecord, CodecError> {
        Ok(LogRecord {
            event_id: event.envelope.event_id,
            event_type: event.event_type().as_str(),
            account_id: event.envelope.account_id.clone(),
            bytes: lumina_schemas::encode(event)?,
        })
    }
}

/// One committed record as read back.
#[derive(Debug, Clone, PartialEq)]
pub struct LogEntry {
    /// Position in the log, from 1, dense and increasing.
    pub position: u64,
    /// The event's id.
    pub event_id: Uuid,
    /// The event's type name.
    pub event_type: String,
    /// The account.
    pub account_id: String,
    /// When the writer committed it, µs since the epoch.
    pub appended_at: i64,
    /// The Avro single-object encoding of the event.
    pub bytes: Vec<u8>,
}

type Ack = oneshot::Sender<Result<u64, LogError>>;

struct Command {
    record: LogRecord,
    ack: Option<Ack>,
    /// Someone waits for its commit: it wakes the writer.
    waited: bool,
}

struct Shared {
    path: PathBuf,
    healthy: AtomicBool,
    dropped: AtomicU64,
    committed: watch::Sender<u64>,
    /// Set by the checkpointer when the WAL passed its limit; the writer then finishes the
    /// checkpoint itself between two commits, so SQLite can start the WAL over.
    wal_over_limit: AtomicBool,
    /// Set while the writer sleeps with nothing queued: the next record of any kind rings.
    idle: AtomicBool,
    /// Group commits made.
    commits: AtomicU64,
}

/// Handle to the local log; cheap to clone, shared by every appender.
#[derive(Clone)]
pub struct EventLog {
    tx: flume::Sender<Command>,
    /// Wakes the writer (one pending ring at most).
    bell: flume::Sender<()>,
    shared: Arc<Shared>,
    writer: Arc<Mutex<Option<JoinHandle<()>>>>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    position    INTEGER PRIMARY KEY,
    event_id    BLOB    NOT NULL,
    event_type  TEXT    NOT NULL,
    account_id  TEXT    NOT NULL,
    appended_at INTEGER NOT NULL,
    payload     BLOB    NOT NULL
);
CREATE TABLE IF NOT EXISTS log_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
";

fn open_connection(path: &Path, fsync: FsyncMode) -> Result<Connection, LogError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", fsync.pragma())?;
    // Checkpoints copy the WAL into the database file and fsync it; run inside a commit they
    // stall every appender for milliseconds. The checkpointer thread does them instead.
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    Ok(conn)
}

/// How often the checkpointer folds the WAL back into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);

/// Runs passive checkpoints beside the writer until `stop` receives or disconnects, and tells
/// the writer when the WAL holds more than `limit` frames (pages).
///
/// Under a steady stream of commits a checkpoint run beside the writer never finds the whole
/// WAL copied before the next commit, so SQLite never starts the WAL over: it grew without
/// bound (measured: ~650 MB a minute at 1,000 req/s), and with it the WAL index every process
/// maps. The writer, told, runs one more passive checkpoint between two of its commits: with
/// no commit beside it that one copies the last frames (few: this one just copied the rest),
/// and the next commit starts the WAL over, which `journal_size_limit` then cuts back to the
/// limit. Only when that fails until the WAL is twice the limit (a reader held on to the WAL
/// each time) does this thread truncate it, which makes the writer wait on SQLite's busy
/// handler, sleeping in steps of milliseconds.
fn run_checkpointer(conn: Connection, stop: flume::Receiver<()>, shared: Arc<Shared>, limit: i64) {
    loop {
        match stop.recv_timeout(CHECKPOINT_EVERY) {
            Err(flume::RecvTimeoutError::Timeout) => {}
            _ => {
                let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
                return;
            }
        }
        match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(1)) {
            // The writer's checkpoint did not let the WAL start over (a reader held on to it
            // each time): truncate it, waiting for the readers.
            Ok(frames) if frames > 2 * limit => {
                if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())) {
                    tracing::warn!(error = %e, "event log WAL truncation failed");
                }
            }
            Ok(frames) if frames > limit => shared.wal_over_limit.store(true, Ordering::Relaxed),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "event log checkpoint failed"),
        }
    }
}

impl EventLog {
    /// Opens (creating if needed) the log at `path` and starts its writer thread.
    ///
    /// Blocking: call it at startup or inside `spawn_blocking`.
    pub fn open(path: impl AsRef<Path>, options: LogOptions) -> Result<EventLog, LogError> {
        let path = path.as_ref().to_path_buf();
        let conn = open_connection(&path, options.fsync)?;
        conn.execute_batch(SCHEMA)?;
        let last: i64 =
            conn.query_row("SELECT COALESCE(MAX(position), 0) FROM events", [], |r| {
                r.get(0)
            })?;
        let last = u64::try_from(last).unwrap_or(0);
        let (tx, rx) = flume::bounded(options.queue_capacity.max(1));
        let shared = Arc::new(Shared {
            path: path.clone(),
            healthy: AtomicBool::new(true),
            dropped: AtomicU64::new(0),
            committed: watch::Sender::new(last),
            wal_over_limit: AtomicBool::new(false),
            idle: AtomicBool::new(false),
            commits: AtomicU64::new(0),
        });
        let (bell, rung) = flume::bounded(1);
        let checkpoint_conn = open_connection(&path, options.fsync)?;
        let (stop_checkpoints, checkpoint_stop) = flume::bounded::<()>(1);
        let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        let limit_bytes = i64::from(options.wal_limit_mib.max(1)) * 1024 * 1024;
        conn.pragma_update(None, "journal_size_limit", limit_bytes)?;
        let limit = limit_bytes / page_size.max(512);
        let checkpointed = shared.clone();
        std::thread::Builder::new()
            .name("lumina-log-checkpoint".into())
            .spawn(move || run_checkpointer(checkpoint_conn, checkpoint_stop, checkpointed, limit))
            .map_err(|e| LogError::Storage(format!("cannot start checkpoint thread: {e}")))?;
        let writer = Writer {
            conn,
            rx,
            rung,
            options,
            next_position: last + 1,
            shared: shared.clone(),
            retry: Vec::new(),
            _stop_checkpoints: stop_checkpoints,
        };
        let handle = std::thread::Builder::new()
            .name("lumina-log-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| LogError::Storage(format!("cannot start writer thread: {e}")))?;
        Ok(EventLog {
            tx,
            bell,
            shared,
            writer: Arc::new(Mutex::new(Some(handle))),
        })
    }

    /// Appends `record` and returns its position once the batch holding it is committed.
    pub async fn append(&self, record: LogRecord) -> Result<u64, LogError> {
        let (ack, done) = oneshot::channel();
        self.queue(Command {
            record,
            ack: Some(ack),
            waited: true,
        })
        .await?;
        done.await.map_err(|_| LogError::Closed)?
    }

    /// Hands `command` to the writer, ringing when it is waited for or the writer sleeps idle.
    async fn queue(&self, command: Command) -> Result<(), LogError> {
        let waited = command.waited;
        self.tx
            .send_async(command)
            .await
            .map_err(|_| LogError::Closed)?;
        if waited || self.shared.idle.swap(false, Ordering::SeqCst) {
            let _ = self.bell.try_send(());
        }
        Ok(())
    }

    /// Queues `record` and returns at once with a receiver of its position, resolved when its
    /// batch commits: for callers that need the position later but must not wait now.
    pub async fn append_deferred(
        &self,
        record: LogRecord,
    ) -> Result<oneshot::Receiver<Result<u64, LogError>>, LogError> {
        let (ack, done) = oneshot::channel();
        self.queue(Command {
            record,
            ack: Some(ack),
            waited: false,
        })
        .await?;
        Ok(done)
    }

    /// Encodes and appends `event`, returning once it is committed.
    pub async fn append_event(&self, event: &Event) -> Result<u64, LogError> {
        self.append(LogRecord::from_event(event)?).await
    }

    /// Queues `record` without waiting for its commit. Use for facts whose loss in a crash
    /// within the next group commit is acceptable (attempts, not settlements). A failed
    /// commit keeps such records and retries them with the next batch.
    pub async fn append_nowait(&self, record: LogRecord) -> Result<(), LogError> {
        self.queue(Command {
            record,
            ack: None,
            waited: false,
        })
        .await
    }

    /// Encodes and queues `event` without waiting for its commit.
    pub async fn append_event_nowait(&self, event: &Event) -> Result<(), LogError> {
        self.append_nowait(LogRecord::from_event(event)?).await
    }

    /// The highest committed position (0 for an empty log).
    pub fn committed_position(&self) -> u64 {
        *self.shared.committed.borrow()
    }

    /// Watches the highest committed position.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.committed.subscribe()
    }

    /// False after a commit failed, until one succeeds again.
    pub fn is_healthy(&self) -> bool {
        self.shared.healthy.load(Ordering::Relaxed)
    }

    /// Unacknowledged records dropped after commits kept failing (stays 0 unless storage broke).
    pub fn dropped_records(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Records waiting for the writer.
    pub fn queue_len(&self) -> usize {
        self.tx.len()
    }

    /// Group commits made since the log was opened.
    pub fn commits(&self) -> u64 {
        self.shared.commits.load(Ordering::Relaxed)
    }

    /// The log's file.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// A reader with its own connection to this log.
    pub fn reader(&self) -> Result<LogReader, LogError> {
        LogReader::open(&self.shared.path)
    }

    /// Stops accepting records, commits what is queued and waits for the writer thread.
    /// Other clones of this handle must be dropped first for the writer to see the end.
    pub fn close(self) {
        let EventLog {
            tx, bell, writer, ..
        } = self;
        drop(tx);
        drop(bell);
        let handle = writer.lock().ok().and_then(|mut h| h.take());
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

/// Retained unacknowledged records beyond this are dropped (and counted) while commits fail.
const MAX_RETRY_RECORDS: usize = 100_000;

struct Writer {
    conn: Connection,
    rx: flume::Receiver<Command>,
    /// Rung by appenders (see [`EventLog::queue`]).
    rung: flume::Receiver<()>,
    options: LogOptions,
    next_position: u64,
    shared: Arc<Shared>,
    retry: Vec<Command>,
    /// Dropped with the writer, which ends the checkpointer.
    _stop_checkpoints: flume::Sender<()>,
}

impl Writer {
    fn run(mut self) {
        let max = self.options.max_batch.max(1);
        let linger = Duration::from_micros(self.options.linger_us);
        let relaxed = Duration::from_micros(self.options.relaxed_wait_us);
        let mut batch: Vec<Command> = Vec::with_capacity(max);
        loop {
            batch.append(&mut self.retry);
            self.take(&mut batch, max);
            if batch.is_empty() {
                if !self.sleep_idle(&mut batch, max) {
                    return;
                }
                continue;
            }
            if !relaxed.is_zero() && batch.len() < max && !batch.iter().any(|c| c.waited) {
                self.wait_for_waited(&mut batch, max, Instant::now() + relaxed);
            }
            if !linger.is_zero() && batch.len() < max {
                let deadline = Instant::now() + linger;
                while batch.len() < max {
                    match self.rx.recv_deadline(deadline) {
                        Ok(cmd) => batch.push(cmd),
                        Err(_) => break,
                    }
                }
            }
            match self.commit(&batch) {
                Ok(first) => {
                    let next = first + batch.len() as u64;
                    self.next_position = next;
                    self.shared.healthy.store(true, Ordering::Relaxed);
                    // Publish before acknowledging: whoever an append returns to must already
                    // see its position as committed.
                    self.shared.committed.send_replace(next - 1);
                    for (position, cmd) in (first..).zip(batch.drain(..)) {
                        if let Some(ack) = cmd.ack {
                            let _ = ack.send(Ok(position));
                        }
                    }
                    if self.shared.wal_over_limit.swap(false, Ordering::Relaxed)
                        && let Err(e) =
                            self.conn
                                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                    {
                        tracing::warn!(error = %e, "event log checkpoint failed");
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, records = batch.len(), "event log commit failed");
                    self.shared.healthy.store(false, Ordering::Relaxed);
                    for cmd in batch.drain(..) {
                        match cmd.ack {
                            Some(ack) => {
                                let _ = ack.send(Err(e.clone()));
                            }
                            None if self.retry.len() < MAX_RETRY_RECORDS => self.retry.push(cmd),
                            None => {
                                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    /// Moves what is queued into `batch`, up to `max` records.
    fn take(&self, batch: &mut Vec<Command>, max: usize) {
        while batch.len() < max {
            match self.rx.try_recv() {
                Ok(cmd) => batch.push(cmd),
                Err(_) => break,
            }
        }
    }

    /// Sleeps until an appender rings, then takes what is queued; false once every handle is
    /// gone and nothing is left.
    fn sleep_idle(&self, batch: &mut Vec<Command>, max: usize) -> bool {
        self.shared.idle.store(true, Ordering::SeqCst);
        // A record queued before the flag was up rang nobody: look again before sleeping.
        self.take(batch, max);
        if batch.is_empty() && self.rung.recv().is_err() {
            self.take(batch, max);
            return !batch.is_empty();
        }
        self.shared.idle.store(false, Ordering::SeqCst);
        true
    }

    /// Waits until `deadline` for a waited record to join `batch` of records nobody waits for.
    fn wait_for_waited(&self, batch: &mut Vec<Command>, max: usize, deadline: Instant) {
        loop {
            let rang = self.rung.recv_deadline(deadline).is_ok();
            self.take(batch, max);
            if !rang || batch.len() >= max || batch.iter().any(|c| c.waited) {
                return;
            }
        }
    }

    fn commit(&mut self, batch: &[Command]) -> Result<u64, LogError> {
        let first = self.next_position;
        let appended_at = lumina_schemas::now_micros();
        let tx = self.conn.transaction()?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO events (position, event_id, event_type, account_id, appended_at, payload)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            for (position, cmd) in (first..).zip(batch) {
                let r = &cmd.record;
                insert.execute(params![
                    i64::try_from(position).unwrap_or(i64::MAX),
                    r.event_id.as_bytes().as_slice(),
                    r.event_type,
                    r.account_id,
                    appended_at,
                    r.bytes
                ])?;
            }
        }
        tx.commit()?;
        self.shared.commits.fetch_add(1, Ordering::Relaxed);
        Ok(first)
    }
}

/// Deletes entries at positions `..=upto` appended before `before_us` (µs since the epoch), at
/// most `max` of them, oldest first, and never the newest entry, from which positions continue.
/// Returns how many went. Blocking; the writer waits for it, so keep `max` small.
pub fn prune_blocking(
    path: &Path,
    upto: u64,
    before_us: i64,
    max: usize,
) -> Result<usize, LogError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let deleted = conn.execute(
        "DELETE FROM events WHERE position IN (
             SELECT position FROM events
             WHERE position <= ?1 AND appended_at < ?2
               AND position < (SELECT MAX(position) FROM events)
             ORDER BY position LIMIT ?3)",
        params![
            i64::try_from(upto).unwrap_or(i64::MAX),
            before_us,
            i64::try_from(max).unwrap_or(i64::MAX)
        ],
    )?;
    Ok(deleted)
}

fn entry_of_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<LogEntry> {
    let id: Vec<u8> = row.get(1)?;
    Ok(LogEntry {
        position: u64::try_from(row.get::<_, i64>(0)?).unwrap_or(0),
        event_id: Uuid::from_slice(&id).unwrap_or(Uuid::nil()),
        event_type: row.get(2)?,
        account_id: row.get(3)?,
        appended_at: row.get(4)?,
        bytes: row.get(5)?,
    })
}

/// Which entries a reader wants: those of the given event types, plus any of a type this build
/// does not know (so an undecodable entry still reaches the consumer's dead-letter table).
#[derive(Debug, Clone)]
pub struct TypeFilter {
    sql: String,
}

impl TypeFilter {
    /// Entries of `wanted` types (and unknown ones).
    pub fn new(wanted: &[lumina_schemas::EventType]) -> TypeFilter {
        let list = |types: &mut dyn Iterator<Item = &lumina_schemas::EventType>| {
            types
                .map(|t| format!("'{}'", t.as_str()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let wanted_list = list(&mut wanted.iter());
        let known_list = list(&mut lumina_schemas::EventType::ALL.iter());
        let wanted_clause = if wanted.is_empty() {
            "0".to_string()
        } else {
            format!("event_type IN ({wanted_list})")
        };
        TypeFilter {
            sql: format!(
                "SELECT position, event_id, event_type, account_id, appended_at, payload
                 FROM events WHERE position > ?1 AND position <= ?2
                   AND ({wanted_clause} OR event_type NOT IN ({known_list}))
                 ORDER BY position LIMIT ?3"
            ),
        }
    }

    /// Every entry.
    pub fn all() -> TypeFilter {
        TypeFilter {
            sql: "SELECT position, event_id, event_type, account_id, appended_at, payload
                  FROM events WHERE position > ?1 AND position <= ?2 ORDER BY position LIMIT ?3"
                .into(),
        }
    }
}

/// Reads committed entries from a position. Each reader has its own connection, so readers in
/// other processes (a standalone projector, `lumina replay`) see the log as it is written.
#[derive(Clone)]
pub struct LogReader {
    conn: Arc<Mutex<Connection>>,
}

impl LogReader {
    /// Opens a reader on the log file at `path`, which must exist.
    pub fn open(path: impl AsRef<Path>) -> Result<LogReader, LogError> {
        let path = path.as_ref();
        if !path.exists() {
            return Err(LogError::Storage(format!(
                "no event log at {}",
                path.display()
            )));
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.pragma_update(None, "query_only", "ON")?;
        Ok(LogReader {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Connection>, LogError> {
        self.conn
            .lock()
            .map_err(|_| LogError::Storage("reader connection poisoned".into()))
    }

    /// Up to `max` entries with positions greater than `after`, in order. Blocking.
    pub fn read_after_blocking(&self, after: u64, max: usize) -> Result<Vec<LogEntry>, LogError> {
        let conn = self.lock()?;
        let mut stmt = conn.prepare_cached(
            "SELECT position, event_id, event_type, account_id, appended_at, payload
             FROM events WHERE position > ?1 ORDER BY position LIMIT ?2",
        )?;
        let rows = stmt.query_map(
            params![
                i64::try_from(after).unwrap_or(i64::MAX),
                i64::try_from(max).unwrap_or(i64::MAX)
            ],
            entry_of_row,
        )?;
        rows.collect::<Result<Vec<_>, _>>().map_err(LogError::from)
    }

    /// Up to `max` entries with positions in `after+1..=upto` whose type passes `filter`, in
    /// order. Blocking.
    pub fn read_range_blocking(
        &self,
        after: u64,
        upto: u64,
        max: usize,
        filter: &TypeFilter,
    ) -> Result<Vec<LogEntry>, LogError> {
        let conn = self.lock()?;
        let mut stmt = conn.prepare_cached(&filter.sql)?;
        let rows = stmt.query_map(
            params![
                i64::try_from(after).unwrap_or(i64::MAX),
                i64::try_from(upto).unwrap_or(i64::MAX),
                i64::try_from(max).unwrap_or(i64::MAX)
            ],
            entry_of_row,
        )?;
        rows.collect::<Result<Vec<_>, _>>().map_err(LogError::from)
    }

    /// [`LogReader::read_range_blocking`] on the blocking pool.
    pub async fn read_range(
        &self,
        after: u64,
        upto: u64,
        max: usize,
        filter: Arc<TypeFilter>,
    ) -> Result<Vec<LogEntry>, LogError> {
        let reader = self.clone();
        tokio::task::spawn_blocking(move || reader.read_range_blocking(after, upto, max, &filter))
            .await
            .map_err(|e| LogError::Storage(format!("reader task failed: {e}")))?
    }

    /// Up to `max` entries after `after`, read on the blocking pool.
    pub async fn read_after(&self, after: u64, max: usize) -> Result<Vec<LogEntry>, LogError> {
        let reader = self.clone();
        tokio::task::spawn_blocking(move || reader.read_after_blocking(after, max))
            .await
            .map_err(|e| LogError::Storage(format!("reader task failed: {e}")))?
    }

    /// The highest committed position (0 for an empty log). Blocking.
    pub fn end_position_blocking(&self) -> Result<u64, LogError> {
        let conn = self.lock()?;
        let last: i64 =
            conn.query_row("SELECT COALESCE(MAX(position), 0) FROM events", [], |r| {
                r.get(0)
            })?;
        Ok(u64::try_from(last).unwrap_or(0))
    }

    /// The highest committed position, read on the blocking pool.
    pub async fn end_position(&self) -> Result<u64, LogError> {
        let reader = self.clone();
        tokio::task::spawn_blocking(move || reader.end_position_blocking())
            .await
            .map_err(|e| LogError::Storage(format!("reader task failed: {e}")))?
    }
}
