//! The journal and balances in the database: [`LedgerProjection`] writes them inside the
//! consumer's transaction; [`Ledger`] reads them.
//!
//! Postings are inserted before their entry row; a trigger on the entry row refuses it unless
//! its postings exist and sum to zero, and postings cannot be changed afterwards — the database
//! enforces balance as well as [`JournalEntry::is_balanced`].

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

use lumina_eventlog::db::{fetch_in, fetch_rows, insert_rows};
use lumina_eventlog::{ApplyError, Database};
use lumina_schemas::{Event, EventType, Payload};
use serde::Serialize;
use sqlx::{AnyConnection, Row};
use uuid::Uuid;

use crate::CONSUMER;
use crate::journal::{EntryKind, HoldState, JournalEntry, LedgerAccount, MONEY_EVENTS, entry_for};

/// Journals money events and moves balances.
#[derive(Debug, Clone, Copy, Default)]
pub struct LedgerProjection;

impl lumina_eventlog::Projection for LedgerProjection {
    fn name(&self) -> &'static str {
        CONSUMER
    }

    fn handles(&self, event_type: EventType) -> bool {
        MONEY_EVENTS.contains(&event_type)
    }

    async fn apply(&self, conn: &mut AnyConnection, event: &Event) -> Result<(), ApplyError> {
        apply_batch(conn, &[event]).await
    }

    async fn apply_batch(
        &self,
        conn: &mut AnyConnection,
        events: &[&Event],
    ) -> Result<(), ApplyError> {
        apply_batch(conn, events).await
    }
}

/// Rows per multi-row statement: far below both databases' parameter limits.
const ROWS: usize = 500;

/// The largest magnitude any balance may reach. Grants are bounded far below it
/// (`MAX_ACCOUNT_CREDITS`), so only an impossible amount gets here, and the entry carrying it
/// is refused as poison rather than wrapping a balance; the margin to `i64::MAX` keeps
/// concurrent batches of two ledgers from overflowing between them.
const BALANCE_BOUND: u64 = (i64::MAX / 2) as u64;

/// The balance columns in the order the batch computes them.
const BALANCE_NAMES: [&str; 4] = ["available", "held", "spent", "granted"];

/// The balances of `accounts` before the batch (absent: no entries yet).
async fn load_balances(
    conn: &mut AnyConnection,
    accounts: &[&str],
) -> Result<HashMap<String, [i64; 4]>, sqlx::Error> {
    let mut balances = HashMap::with_capacity(accounts.len());
    let rows = fetch_in(
        conn,
        "SELECT account_id, available_nano, held_nano, spent_nano, granted_nano
         FROM ledger_balances WHERE account_id",
        "",
        ROWS,
        accounts,
    )
    .await?;
    for r in rows {
        balances.insert(
            r.try_get::<String, _>(0)?,
            [r.try_get(1)?, r.try_get(2)?, r.try_get(3)?, r.try_get(4)?],
        );
    }
    Ok(balances)
}

/// A hold as the batch sees it, loaded or placed within the batch.
struct HoldRow {
    account_id: String,
    project_id: Option<String>,
    api_key_id: Option<String>,
    amount: i64,
    placed_at: i64,
    ttl_ms: i64,
    status: &'static str,
    closed_at: Option<i64>,
    changed: bool,
}

impl HoldRow {
    fn state(&self) -> HoldState {
        if self.status == "open" {
            HoldState::Open(self.amount)
        } else {
            HoldState::Closed
        }
    }
}

async fn load_holds(
    conn: &mut AnyConnection,
    request_ids: &[&str],
) -> Result<HashMap<String, HoldRow>, sqlx::Error> {
    let mut holds = HashMap::with_capacity(request_ids.len());
    let rows = fetch_in(
        conn,
        "SELECT request_id, account_id, amount_nano, placed_at, ttl_ms, status, closed_at,
                project_id, api_key_id
         FROM ledger_holds WHERE request_id",
        "",
        ROWS,
        request_ids,
    )
    .await?;
    for r in rows {
        let status: String = r.try_get(5)?;
        holds.insert(
            r.try_get::<String, _>(0)?,
            HoldRow {
                account_id: r.try_get(1)?,
                amount: r.try_get(2)?,
                placed_at: r.try_get(3)?,
                ttl_ms: r.try_get(4)?,
                status: match status.as_str() {
                    "open" => "open",
                    "settled" => "settled",
                    _ => "expired",
                },
                closed_at: r.try_get(6)?,
                project_id: r.try_get(7)?,
                api_key_id: r.try_get(8)?,
                changed: false,
            },
        );
    }
    Ok(holds)
}

/// The batch form of the projection: the same entries as event-by-event application, written
/// with a handful of multi-row statements per batch.
async fn apply_batch(conn: &mut AnyConnection, events: &[&Event]) -> Result<(), ApplyError> {
    let mut request_ids: Vec<&str> = events
        .iter()
        .filter(|e| !matches!(e.payload, Payload::CreditsGranted(_)))
        .filter_map(|e| e.envelope.request_id.as_deref())
        .collect();
    request_ids.sort_unstable();
    request_ids.dedup();
    let mut holds = load_holds(conn, &request_ids).await?;
    let mut entries: Vec<JournalEntry> = Vec::with_capacity(events.len());
    let mut spend: HashMap<(String, i64), i64> = HashMap::new();
    for event in events {
        let request = event.envelope.request_id.as_deref();
        let state = match (&event.payload, request) {
            (Payload::CreditsGranted(_), _) | (_, None) => HoldState::Missing,
            (_, Some(r)) => holds.get(r).map_or(HoldState::Missing, HoldRow::state),
        };
        let entry = match entry_for(event, state) {
            Ok(Some(entry)) => entry,
            Ok(None) => continue,
            Err(e) => return Err(ApplyError::Rejected(e.0)),
        };
        if !entry.is_balanced() {
            return Err(ApplyError::Rejected(format!(
                "entry for {} does not balance",
                entry.event_id
            )));
        }
        if let Some(r) = request {
            match (&event.payload, entry.kind) {
                (Payload::RequestRouted(rr), EntryKind::Hold) => {
                    let (amount, ttl_ms) = rr
                        .hold
                        .as_ref()
                        .map_or((0, 0), |h| (h.amount_nano, h.ttl_ms));
                    holds.insert(
                        r.to_string(),
                        HoldRow {
                            account_id: entry.account_id.clone(),
                            project_id: event.envelope.project_id.clone(),
                            api_key_id: event.envelope.api_key_id.clone(),
                            amount,
                            placed_at: entry.occurred_at,
                            ttl_ms,
                            status: "open",
                            closed_at: None,
                            changed: true,
                        },
                    );
                }
                (_, EntryKind::Settle | EntryKind::Expire)
                    if entry.released.is_some_and(|v| v.0 > 0) =>
                {
                    if let Some(h) = holds.get_mut(r) {
                        h.status = if entry.kind == EntryKind::Settle {
                            "settled"
                        } else {
                            "expired"
                        };
                        h.closed_at = Some(entry.occurred_at);
                        h.changed = true;
                    }
                }
                _ => {}
            }
        }
        if let Some(charged) = entry.charged.filter(|c| c.0 > 0) {
            add_spend(&mut spend, &event.envelope, entry.occurred_at, charged.0);
        }
        entries.push(entry);
    }
    if entries.is_empty() {
        return Ok(());
    }

    // Postings first: the entry rows' trigger checks them.
    let postings: Vec<(String, i64, String, String, i64)> = entries
        .iter()
        .flat_map(|e| {
            let id = e.event_id.to_string();
            (1i64..).zip(&e.postings).map(move |(line, p)| {
                (
                    id.clone(),
                    line,
                    p.account.code(),
                    account_of(&p.account).unwrap_or(&e.account_id).to_string(),
                    p.amount.0,
                )
            })
        })
        .collect();
    insert_rows(
        conn,
        "INSERT INTO ledger_postings (entry_event_id, line, ledger_account, account_id, amount_nano)",
        5,
        "",
        ROWS,
        &postings,
        |q, (id, line, account, owner, amount)| {
            q.bind(id.as_str())
                .bind(*line)
                .bind(account.as_str())
                .bind(owner.as_str())
                .bind(*amount)
        },
    )
    .await?;
    insert_rows(
        conn,
        "INSERT INTO ledger_entries (event_id, kind, account_id, request_id, occurred_at, charged_nano, released_nano)",
        7,
        "",
        ROWS,
        &entries,
        |q, e| {
            q.bind(e.event_id.to_string())
                .bind(e.kind.as_str())
                .bind(e.account_id.as_str())
                .bind(e.request_id.as_deref())
                .bind(e.occurred_at)
                .bind(e.charged.map(|c| c.0))
                .bind(e.released.map(|r| r.0))
        },
    )
    .await?;

    // Holds placed or closed by the batch.
    let changed: Vec<(&String, &HoldRow)> = holds.iter().filter(|(_, h)| h.changed).collect();
    insert_rows(
        conn,
        "INSERT INTO ledger_holds (request_id, account_id, amount_nano, placed_at, ttl_ms, status, closed_at, project_id, api_key_id)",
        9,
        "ON CONFLICT (request_id) DO UPDATE SET status = excluded.status, closed_at = excluded.closed_at",
        ROWS,
        &changed,
        |q, (request_id, h)| {
            q.bind(request_id.as_str())
                .bind(h.account_id.as_str())
                .bind(h.amount)
                .bind(h.placed_at)
                .bind(h.ttl_ms)
                .bind(h.status)
                .bind(h.closed_at)
                .bind(h.project_id.as_deref())
                .bind(h.api_key_id.as_deref())
        },
    )
    .await?;

    // What each scope spent, by quarter hour and in all.
    let spend: Vec<((String, i64), i64)> = spend.into_iter().collect();
    insert_rows(
        conn,
        "INSERT INTO ledger_spend (scope, bucket, charged_nano)",
        3,
        "ON CONFLICT (scope, bucket) DO UPDATE SET
             charged_nano = ledger_spend.charged_nano + excluded.charged_nano",
        ROWS,
        &spend,
        |q, ((scope, bucket), charged)| q.bind(scope.as_str()).bind(*bucket).bind(*charged),
    )
    .await?;

    // Balances: one delta per account; then each day's closing balance.
    let mut order: Vec<String> = Vec::new();
    let mut totals: HashMap<String, [i64; 5]> = HashMap::new();
    let mut days: HashMap<String, Vec<(String, [i64; 4])>> = HashMap::new();
    let mut accounts: Vec<&str> = entries.iter().map(|e| e.account_id.as_str()).collect();
    accounts.sort_unstable();
    accounts.dedup();
    let before = load_balances(conn, &accounts).await?;
    for e in &entries {
        let d = e.balance_delta();
        let t = totals.entry(e.account_id.clone()).or_insert_with(|| {
            order.push(e.account_id.clone());
            [0; 5]
        });
        let base = before.get(&e.account_id).copied().unwrap_or_default();
        for (i, delta) in [d.available, d.held, d.spent, d.granted]
            .into_iter()
            .enumerate()
        {
            t[i] = t[i]
                .checked_add(delta)
                .filter(|sum| {
                    base[i]
                        .checked_add(*sum)
                        .is_some_and(|after| after.unsigned_abs() <= BALANCE_BOUND)
                })
                .ok_or_else(|| {
                    ApplyError::Rejected(format!(
                        "entry {} would take the {} balance of {} out of range",
                        e.event_id, BALANCE_NAMES[i], e.account_id
                    ))
                })?;
        }
        t[4] = t[4].max(e.occurred_at);
        let cumulative = [t[0], t[1], t[2], t[3]];
        let day = day_of(e.occurred_at);
        let list = days.entry(e.account_id.clone()).or_default();
        match list.last_mut() {
            Some((last_day, c)) if *last_day == day => *c = cumulative,
            _ => list.push((day, cumulative)),
        }
    }
    let mut closing: HashMap<String, [i64; 4]> = HashMap::new();
    let returned = fetch_rows(
        conn,
        "INSERT INTO ledger_balances (account_id, available_nano, held_nano, spent_nano, granted_nano, updated_at)",
        6,
        "ON CONFLICT (account_id) DO UPDATE SET
             available_nano = ledger_balances.available_nano + excluded.available_nano,
             held_nano = ledger_balances.held_nano + excluded.held_nano,
             spent_nano = ledger_balances.spent_nano + excluded.spent_nano,
             granted_nano = ledger_balances.granted_nano + excluded.granted_nano,
             updated_at = excluded.updated_at
         RETURNING account_id, available_nano, held_nano, spent_nano, granted_nano",
        ROWS,
        &order,
        |values, account| {
            let t = totals.get(account).copied().unwrap_or_default();
            values
                .bind(account.as_str())
                .bind(t[0])
                .bind(t[1])
                .bind(t[2])
                .bind(t[3])
                .bind(t[4])
        },
    )
    .await?;
    for r in returned {
        closing.insert(
            r.try_get(0)?,
            [r.try_get(1)?, r.try_get(2)?, r.try_get(3)?, r.try_get(4)?],
        );
    }
    let mut daily: Vec<(String, String, [i64; 4])> = Vec::new();
    for account in &order {
        let (Some(last), Some(total)) = (closing.get(account), totals.get(account)) else {
            continue;
        };
        for (day, cumulative) in days.remove(account).unwrap_or_default() {
            // The balance at the end of `day` = final balance − what the batch added after it.
            let at = [
                last[0] - (total[0] - cumulative[0]),
                last[1] - (total[1] - cumulative[1]),
                last[2] - (total[2] - cumulative[2]),
                last[3] - (total[3] - cumulative[3]),
            ];
            daily.push((account.clone(), day, at));
        }
    }
    insert_rows(
        conn,
        "INSERT INTO ledger_daily (account_id, day, available_nano, held_nano, spent_nano, granted_nano)",
        6,
        "ON CONFLICT (account_id, day) DO UPDATE SET
             available_nano = excluded.available_nano, held_nano = excluded.held_nano,
             spent_nano = excluded.spent_nano, granted_nano = excluded.granted_nano",
        ROWS,
        &daily,
        |q, (account, day, b)| {
            q.bind(account.as_str())
                .bind(day.as_str())
                .bind(b[0])
                .bind(b[1])
                .bind(b[2])
                .bind(b[3])
        },
    )
    .await?;
    Ok(())
}

/// Width of a spend bucket, µs: a quarter hour, so that every time zone's midnight (all
/// offsets are whole quarter hours) starts one.
pub const SPEND_BUCKET_MICROS: i64 = 15 * 60 * 1_000_000;

/// The bucket of a scope's all-time spend.
const TOTAL_BUCKET: i64 = -1;

/// The spend bucket holding `micros`: its start.
pub fn spend_bucket(micros: i64) -> i64 {
    micros - micros.rem_euclid(SPEND_BUCKET_MICROS)
}

/// What a budget limits, as the ledger keys its spend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SpendScope {
    /// Every request of an account.
    Account,
    /// Every request of a project.
    Project,
    /// Every request of a key.
    Key,
}

impl SpendScope {
    /// `account`, `project` or `key`.
    pub fn as_str(self) -> &'static str {
        match self {
            SpendScope::Account => "account",
            SpendScope::Project => "project",
            SpendScope::Key => "key",
        }
    }

    /// The scope named `name`.
    pub fn parse(name: &str) -> Option<SpendScope> {
        match name {
            "account" => Some(SpendScope::Account),
            "project" => Some(SpendScope::Project),
            "key" => Some(SpendScope::Key),
            _ => None,
        }
    }

    /// The `ledger_spend.scope` of `id` in this scope.
    fn key(self, id: &str) -> String {
        format!("{}:{id}", self.as_str())
    }

    /// The `ledger_holds` column naming a hold's id in this scope.
    fn hold_column(self) -> &'static str {
        match self {
            SpendScope::Account => "account_id",
            SpendScope::Project => "project_id",
            SpendScope::Key => "api_key_id",
        }
    }
}

/// Adds a charge to the quarter hour and the total of each scope its envelope names.
fn add_spend(
    spend: &mut HashMap<(String, i64), i64>,
    envelope: &lumina_schemas::Envelope,
    occurred_at: i64,
    charged: i64,
) {
    let scopes = [
        Some((SpendScope::Account, envelope.account_id.as_str())),
        envelope
            .project_id
            .as_deref()
            .map(|p| (SpendScope::Project, p)),
        envelope.api_key_id.as_deref().map(|k| (SpendScope::Key, k)),
    ];
    for (scope, id) in scopes.into_iter().flatten() {
        for bucket in [spend_bucket(occurred_at), TOTAL_BUCKET] {
            let sum = spend.entry((scope.key(id), bucket)).or_insert(0);
            *sum = sum.saturating_add(charged);
        }
    }
}

/// The spend a budget asks the ledger about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpendQuery {
    /// Names the answer.
    pub budget_id: String,
    /// What is limited.
    pub scope: SpendScope,
    /// Its account, project or key id.
    pub scope_id: String,
    /// The period's start, µs; `None`: all time.
    pub since: Option<i64>,
}

/// What a scope spent in a period and holds now, as the ledger has it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spend {
    /// Charges settled since the period's start.
    pub settled: i64,
    /// Open holds.
    pub held: i64,
}

/// The spend of each query, keyed by budget id.
pub type Spends = HashMap<String, Spend>;

/// `SELECT kind, name, settled, held` rows answering `queries`, to append to a snapshot's
/// statement with `UNION ALL`; its parameters start at `$first` and are bound by
/// [`bind_spend_queries`].
fn spend_selects(queries: &[SpendQuery], first: usize) -> String {
    let mut sql = String::new();
    for (i, q) in queries.iter().enumerate() {
        let n = first + i * 4;
        let bucket = if q.since.is_some() {
            format!("bucket >= ${}", n + 2)
        } else {
            format!("bucket = ${}", n + 2)
        };
        let _ = write!(
            sql,
            " UNION ALL SELECT 2, CAST(${n} AS TEXT), \
               CAST((SELECT COALESCE(SUM(charged_nano), 0) FROM ledger_spend \
                 WHERE scope = ${} AND {bucket}) AS BIGINT), \
               CAST((SELECT COALESCE(SUM(amount_nano), 0) FROM ledger_holds \
                 WHERE status = 'open' AND {} = ${}) AS BIGINT)",
            n + 1,
            q.scope.hold_column(),
            n + 3,
        );
    }
    sql
}

fn bind_spend_queries<'q>(
    mut query: lumina_eventlog::db::AnyQuery<'q>,
    queries: &'q [SpendQuery],
) -> lumina_eventlog::db::AnyQuery<'q> {
    for q in queries {
        query = query
            .bind(q.budget_id.as_str())
            .bind(q.scope.key(&q.scope_id))
            .bind(q.since.map_or(TOTAL_BUCKET, spend_bucket))
            .bind(q.scope_id.as_str());
    }
    query
}

fn account_of(posting_account: &LedgerAccount) -> Option<&str> {
    match posting_account {
        LedgerAccount::Available(a) | LedgerAccount::Held(a) => Some(a),
        LedgerAccount::Revenue | LedgerAccount::Grants => None,
    }
}

/// The UTC day (`YYYY-MM-DD`) of a µs timestamp.
pub fn day_of(micros: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_micros(micros)
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| "1970-01-01".into())
}

/// A customer's balance in nano-credits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Balance {
    /// Spendable now.
    pub available_nano: i64,
    /// Held for requests in flight.
    pub held_nano: i64,
    /// Charged for completed work.
    pub spent_nano: i64,
    /// Granted in total.
    pub granted_nano: i64,
}

/// Reads of the journal and balances.
#[derive(Debug, Clone)]
pub struct Ledger {
    db: Database,
}

/// Every account's available balance, as one snapshot.
pub type Available = HashMap<String, i64>;

/// What a gateway's credit book reads from the ledger in one statement.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Every account's available balance.
    pub available: Available,
    /// The ledger's next position in the gateway's local log (embedded mode).
    pub ledger_next: u64,
    /// The spend each budget asked about.
    pub spend: Spends,
}

impl Snapshot {
    /// Takes one row of kind 1 (a balance) or 2 (a budget's spend).
    fn read(&mut self, kind: i32, name: String, a: i64, b: i64) {
        if kind == 1 {
            self.available.insert(name, a);
        } else {
            self.spend.insert(
                name,
                Spend {
                    settled: a,
                    held: b,
                },
            );
        }
    }
}

impl Ledger {
    /// The ledger in `db`.
    pub fn new(db: Database) -> Ledger {
        Ledger { db }
    }

    /// The database it reads.
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Every account's available balance, the ledger's next position in a gateway's local log
    /// (embedded mode) and the spend `budgets` ask about, read in one statement so they agree.
    pub async fn available_at_position(
        &self,
        budgets: &[SpendQuery],
    ) -> Result<Snapshot, sqlx::Error> {
        let sql = format!(
            "SELECT 0 AS kind, '' AS name, next_offset AS a, 0 AS b FROM consumer_positions
               WHERE consumer = $1 AND stream = 'local' AND partition_id = 0
             UNION ALL
             SELECT 1, account_id, available_nano, 0 FROM ledger_balances{}",
            spend_selects(budgets, 2)
        );
        let query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(CONSUMER);
        let rows = bind_spend_queries(query, budgets)
            .fetch_all(&self.db.pool)
            .await?;
        let mut snapshot = Snapshot::default();
        for row in &rows {
            let kind: i32 = row.try_get(0)?;
            let value: i64 = row.try_get(2)?;
            match kind {
                0 => snapshot.ledger_next = u64::try_from(value).unwrap_or(0),
                _ => snapshot.read(kind, row.try_get(1)?, value, row.try_get(3)?),
            }
        }
        Ok(snapshot)
    }

    /// Every account's available balance, the spend `budgets` ask about and which of
    /// `events` the ledger applied (distributed mode, where its positions are topic offsets),
    /// read in one statement so they agree.
    pub async fn available_with_applied(
        &self,
        events: &[Uuid],
        budgets: &[SpendQuery],
    ) -> Result<(Snapshot, HashSet<Uuid>), sqlx::Error> {
        let mut sql = String::from(
            "SELECT 1 AS kind, account_id AS name, available_nano AS a, 0 AS b FROM ledger_balances",
        );
        sql.push_str(&spend_selects(budgets, 1));
        if !events.is_empty() {
            // Uuids render as hex and dashes only, so they are safe as literals; one parameter
            // per id would run into PostgreSQL's limit of 65,535.
            let _ = write!(
                sql,
                " UNION ALL SELECT 3, event_id, 0, 0 FROM consumer_applied_events \
                 WHERE consumer = '{CONSUMER}' AND event_id IN ("
            );
            for (i, id) in events.iter().enumerate() {
                let sep = if i == 0 { "" } else { "," };
                let _ = write!(sql, "{sep}'{id}'");
            }
            sql.push(')');
        }
        let query = sqlx::query(sqlx::AssertSqlSafe(sql));
        let rows = bind_spend_queries(query, budgets)
            .fetch_all(&self.db.pool)
            .await?;
        let mut snapshot = Snapshot::default();
        let mut applied = HashSet::new();
        for row in &rows {
            let kind: i32 = row.try_get(0)?;
            let name: String = row.try_get(1)?;
            if kind == 3 {
                if let Ok(id) = Uuid::parse_str(&name) {
                    applied.insert(id);
                }
            } else {
                snapshot.read(kind, name, row.try_get(2)?, row.try_get(3)?);
            }
        }
        Ok((snapshot, applied))
    }

    /// What `budgets` spent and hold now, as the ledger has it.
    pub async fn spend(&self, budgets: &[SpendQuery]) -> Result<Spends, sqlx::Error> {
        if budgets.is_empty() {
            return Ok(Spends::new());
        }
        let sql = spend_selects(budgets, 1);
        let sql = sql.trim_start_matches(" UNION ALL ").to_string();
        let query = sqlx::query(sqlx::AssertSqlSafe(sql));
        let mut snapshot = Snapshot::default();
        for row in bind_spend_queries(query, budgets)
            .fetch_all(&self.db.pool)
            .await?
        {
            snapshot.read(2, row.try_get(1)?, row.try_get(2)?, row.try_get(3)?);
        }
        Ok(snapshot.spend)
    }

    /// The balance of `account_id` (zero when it has no entries yet).
    pub async fn balance(&self, account_id: &str) -> Result<Balance, sqlx::Error> {
        let row = sqlx::query(
            "SELECT available_nano, held_nano, spent_nano, granted_nano
             FROM ledger_balances WHERE account_id = $1",
        )
        .bind(account_id)
        .fetch_optional(&self.db.pool)
        .await?;
        Ok(match row {
            Some(r) => Balance {
                available_nano: r.try_get(0)?,
                held_nano: r.try_get(1)?,
                spent_nano: r.try_get(2)?,
                granted_nano: r.try_get(3)?,
            },
            None => Balance::default(),
        })
    }

    /// Sum of postings to `account_id`'s available credit, straight from the journal.
    pub async fn posted_available(&self, account_id: &str) -> Result<i64, sqlx::Error> {
        sqlx::query(
            "SELECT CAST(COALESCE(SUM(amount_nano), 0) AS BIGINT) FROM ledger_postings
             WHERE ledger_account = $1",
        )
        .bind(LedgerAccount::Available(account_id.to_string()).code())
        .fetch_one(&self.db.pool)
        .await?
        .try_get(0)
    }
}

/// One posting as the finance API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PostingRow {
    /// Ledger account code (`acct_…:available`, `system:revenue`, …).
    pub account: String,
    /// Signed amount.
    pub amount_nano: i64,
}

/// One journal entry with its postings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EntryRow {
    /// Position in the journal.
    pub id: i64,
    /// The event it records.
    pub event_id: String,
    /// The request, for holds and settlements.
    pub request_id: Option<String>,
    /// `grant`, `hold`, `settle` or `expire`.
    pub kind: String,
    /// When the event occurred, µs since the epoch.
    pub occurred_at: i64,
    /// The postings; they sum to zero.
    pub postings: Vec<PostingRow>,
    /// For a settlement: the charge.
    pub charged_nano: Option<i64>,
    /// For a settlement or expiry: the hold released.
    pub released_nano: Option<i64>,
}

impl EntryRow {
    /// The entry's effect on its account's balance.
    pub fn delta(&self, account_id: &str) -> Balance {
        let mut b = Balance::default();
        for p in &self.postings {
            let code = p.account.as_str();
            if code == LedgerAccount::Available(account_id.to_string()).code() {
                b.available_nano += p.amount_nano;
            } else if code == LedgerAccount::Held(account_id.to_string()).code() {
                b.held_nano += p.amount_nano;
            } else if code == LedgerAccount::Revenue.code() {
                b.spent_nano += p.amount_nano;
            } else if code == LedgerAccount::Grants.code() {
                b.granted_nano -= p.amount_nano;
            }
        }
        b
    }
}

impl Balance {
    fn add(&mut self, d: &Balance) {
        self.available_nano += d.available_nano;
        self.held_nano += d.held_nano;
        self.spent_nano += d.spent_nano;
        self.granted_nano += d.granted_nano;
    }
}

/// One line of a statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatementLine {
    /// The entry.
    pub entry: EntryRow,
    /// Its effect on the balance.
    pub delta: Balance,
    /// The balance after it.
    pub balance: Balance,
}

/// An account's balance at the end of a day on which it moved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DailyBalance {
    /// `YYYY-MM-DD`, UTC.
    pub day: String,
    /// The balance after the day's last entry.
    pub balance: Balance,
}

/// An account's statement over `[from, to)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Statement {
    /// The account.
    pub account_id: String,
    /// Start, µs since the epoch (inclusive).
    pub from: i64,
    /// End, µs since the epoch (exclusive).
    pub to: i64,
    /// Balance before the first line.
    pub opening: Balance,
    /// Every entry of the period, in journal order.
    pub lines: Vec<StatementLine>,
    /// Sum of the lines' deltas.
    pub totals: Balance,
    /// Balance after the last line (= opening + totals).
    pub closing: Balance,
}

impl Ledger {
    /// Entries (with their postings, in one query) whose ids the `ids` subquery selects; the
    /// subquery takes `$1` (account), `$2` and `$3`.
    async fn entries_where(
        &self,
        ids: &'static str,
        binds: (&str, i64, i64),
    ) -> Result<Vec<EntryRow>, sqlx::Error> {
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT e.id, e.event_id, e.request_id, e.kind, e.occurred_at, e.charged_nano,
                    e.released_nano, p.ledger_account, p.amount_nano
             FROM ledger_entries e JOIN ledger_postings p ON p.entry_event_id = e.event_id
             WHERE e.id IN ({ids}) ORDER BY e.id, p.line"
        ));
        let rows = sqlx::query(sql)
            .bind(binds.0)
            .bind(binds.1)
            .bind(binds.2)
            .fetch_all(&self.db.pool)
            .await?;
        let mut entries: Vec<EntryRow> = Vec::new();
        for r in &rows {
            let id: i64 = r.try_get(0)?;
            if entries.last().is_none_or(|e| e.id != id) {
                entries.push(EntryRow {
                    id,
                    event_id: r.try_get(1)?,
                    request_id: r.try_get(2)?,
                    kind: r.try_get(3)?,
                    occurred_at: r.try_get(4)?,
                    postings: Vec::new(),
                    charged_nano: r.try_get(5)?,
                    released_nano: r.try_get(6)?,
                });
            }
            if let Some(e) = entries.last_mut() {
                e.postings.push(PostingRow {
                    account: r.try_get(7)?,
                    amount_nano: r.try_get(8)?,
                });
            }
        }
        Ok(entries)
    }

    /// Up to `limit` entries of `account_id` with ids above `after`, in journal order.
    pub async fn entries(
        &self,
        account_id: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<EntryRow>, sqlx::Error> {
        self.entries_where(
            "SELECT id FROM ledger_entries WHERE account_id = $1 AND id > $2 ORDER BY id LIMIT $3",
            (account_id, after, limit),
        )
        .await
    }

    /// Up to `limit` entries of `account_id`, newest first, with ids below `before`: a page of
    /// the journal read backwards along the `(account_id, id)` index.
    pub async fn recent_entries(
        &self,
        account_id: &str,
        before: i64,
        limit: i64,
    ) -> Result<Vec<EntryRow>, sqlx::Error> {
        let mut entries = self
            .entries_where(
                "SELECT id FROM ledger_entries WHERE account_id = $1 AND id < $2
                 ORDER BY id DESC LIMIT $3",
                (account_id, before, limit),
            )
            .await?;
        entries.reverse();
        Ok(entries)
    }

    /// The balance of `account_id` at the end of each day from `from` to `to` (`YYYY-MM-DD`,
    /// UTC, inclusive) on which it moved, oldest first.
    pub async fn daily(
        &self,
        account_id: &str,
        from: &str,
        to: &str,
    ) -> Result<Vec<DailyBalance>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT day, available_nano, held_nano, spent_nano, granted_nano FROM ledger_daily
             WHERE account_id = $1 AND day >= $2 AND day <= $3 ORDER BY day",
        )
        .bind(account_id)
        .bind(from)
        .bind(to)
        .fetch_all(&self.db.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(DailyBalance {
                    day: r.try_get(0)?,
                    balance: Balance {
                        available_nano: r.try_get(1)?,
                        held_nano: r.try_get(2)?,
                        spent_nano: r.try_get(3)?,
                        granted_nano: r.try_get(4)?,
                    },
                })
            })
            .collect()
    }

    /// The statement of `account_id` over `[from, to)` (µs since the epoch).
    pub async fn statement(
        &self,
        account_id: &str,
        from: i64,
        to: i64,
    ) -> Result<Statement, sqlx::Error> {
        let sums = sqlx::query(
            "SELECT p.ledger_account, CAST(SUM(p.amount_nano) AS BIGINT)
             FROM ledger_postings p JOIN ledger_entries e ON e.event_id = p.entry_event_id
             WHERE e.account_id = $1 AND e.occurred_at < $2 GROUP BY p.ledger_account",
        )
        .bind(account_id)
        .bind(from)
        .fetch_all(&self.db.pool)
        .await?;
        let opening = EntryRow {
            id: 0,
            event_id: String::new(),
            request_id: None,
            kind: "opening".into(),
            occurred_at: from,
            postings: sums
                .iter()
                .map(|r| {
                    Ok(PostingRow {
                        account: r.try_get(0)?,
                        amount_nano: r.try_get(1)?,
                    })
                })
                .collect::<Result<_, sqlx::Error>>()?,
            charged_nano: None,
            released_nano: None,
        }
        .delta(account_id);
        let during = self
            .entries_where(
                "SELECT id FROM ledger_entries
                 WHERE account_id = $1 AND occurred_at >= $2 AND occurred_at < $3",
                (account_id, from, to),
            )
            .await?;
        let mut balance = opening;
        let mut totals = Balance::default();
        let lines = during
            .into_iter()
            .map(|entry| {
                let delta = entry.delta(account_id);
                balance.add(&delta);
                totals.add(&delta);
                StatementLine {
                    entry,
                    delta,
                    balance,
                }
            })
            .collect();
        Ok(Statement {
            account_id: account_id.to_string(),
            from,
            to,
            opening,
            lines,
            totals,
            closing: balance,
        })
    }
}

/// Tables the ledger writes, in deletion order.
pub const TABLES: [&str; 6] = [
    "ledger_spend",
    "ledger_daily",
    "ledger_holds",
    "ledger_balances",
    "ledger_entries",
    "ledger_postings",
];

/// Drops every ledger row and the ledger's positions in one transaction (entry ids start again
/// at 1), so the next ledger run replays the log from the start to the same state.
pub async fn rebuild(db: &Database) -> Result<(), sqlx::Error> {
    let mut tx = db.pool.begin().await?;
    for table in TABLES {
        sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {table}")))
            .execute(&mut *tx)
            .await?;
    }
    let restart = match db.backend {
        lumina_eventlog::Backend::Sqlite => {
            "DELETE FROM sqlite_sequence WHERE name = 'ledger_entries'"
        }
        lumina_eventlog::Backend::Postgres => {
            "ALTER TABLE ledger_entries ALTER COLUMN id RESTART WITH 1"
        }
    };
    sqlx::query(restart).execute(&mut *tx).await?;
    lumina_eventlog::consumer::reset_consumer(&mut tx, CONSUMER).await?;
    tx.commit().await
}
