//! The journal and balances in the database: [`LedgerProjection`] writes them inside the
//! consumer's transaction; [`Ledger`] reads them.
//!
//! Postings are inserted before their entry row; a trigger on the entry row refuses it unless
//! its postings exist and sum to zero, and postings cannot be changed afterwards — the database
//! enforces balance as well as [`JournalEntry::is_balanced`].

use lumina_eventlog::{ApplyError, Database};
use lumina_schemas::{Event, EventType, Payload};
use serde::Serialize;
use sqlx::{AnyConnection, Row};

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
        let hold = match (&event.payload, event.envelope.request_id.as_deref()) {
            (Payload::CreditsGranted(_), _) | (_, None) => HoldState::Missing,
            (_, Some(request_id)) => hold_state(conn, request_id).await?,
        };
        let entry = match entry_for(event, hold) {
            Ok(Some(entry)) => entry,
            Ok(None) => return Ok(()),
            Err(e) => return Err(ApplyError::Rejected(e.0)),
        };
        if !entry.is_balanced() {
            return Err(ApplyError::Rejected(format!(
                "entry for {} does not balance",
                entry.event_id
            )));
        }
        record_entry(conn, &entry).await?;
        update_hold(conn, event, &entry).await
    }
}

async fn hold_state(conn: &mut AnyConnection, request_id: &str) -> Result<HoldState, ApplyError> {
    let row = sqlx::query("SELECT amount_nano, status FROM ledger_holds WHERE request_id = $1")
        .bind(request_id)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(match row {
        None => HoldState::Missing,
        Some(r) => {
            let status: String = r.try_get(1)?;
            if status == "open" {
                HoldState::Open(r.try_get(0)?)
            } else {
                HoldState::Closed
            }
        }
    })
}

/// Moves the request's hold through its life: placed by a hold entry, closed by a settlement
/// or an expiry that released it.
async fn update_hold(
    conn: &mut AnyConnection,
    event: &Event,
    entry: &JournalEntry,
) -> Result<(), ApplyError> {
    let Some(request_id) = entry.request_id.as_deref() else {
        return Ok(());
    };
    match (&event.payload, entry.kind) {
        (Payload::RequestRouted(r), EntryKind::Hold) => {
            let (amount, ttl) = r
                .hold
                .as_ref()
                .map_or((0, 0), |h| (h.amount_nano, h.ttl_ms));
            sqlx::query(
                "INSERT INTO ledger_holds (request_id, account_id, amount_nano, placed_at, ttl_ms, status)
                 VALUES ($1, $2, $3, $4, $5, 'open')",
            )
            .bind(request_id)
            .bind(&entry.account_id)
            .bind(amount)
            .bind(entry.occurred_at)
            .bind(ttl)
            .execute(&mut *conn)
            .await?;
        }
        (_, EntryKind::Settle | EntryKind::Expire) if entry.released.is_some_and(|r| r.0 > 0) => {
            let status = if entry.kind == EntryKind::Settle {
                "settled"
            } else {
                "expired"
            };
            sqlx::query(
                "UPDATE ledger_holds SET status = $1, closed_at = $2
                 WHERE request_id = $3 AND status = 'open'",
            )
            .bind(status)
            .bind(entry.occurred_at)
            .bind(request_id)
            .execute(&mut *conn)
            .await?;
        }
        _ => {}
    }
    Ok(())
}

fn account_of(posting_account: &LedgerAccount) -> Option<&str> {
    match posting_account {
        LedgerAccount::Available(a) | LedgerAccount::Held(a) => Some(a),
        LedgerAccount::Revenue | LedgerAccount::Grants => None,
    }
}

async fn record_entry(conn: &mut AnyConnection, entry: &JournalEntry) -> Result<(), ApplyError> {
    let event_id = entry.event_id.to_string();
    for (line, posting) in (1i64..).zip(&entry.postings) {
        sqlx::query(
            "INSERT INTO ledger_postings (entry_event_id, line, ledger_account, account_id, amount_nano)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&event_id)
        .bind(line)
        .bind(posting.account.code())
        .bind(account_of(&posting.account).unwrap_or(&entry.account_id))
        .bind(posting.amount.0)
        .execute(&mut *conn)
        .await?;
    }
    sqlx::query(
        "INSERT INTO ledger_entries
             (event_id, kind, account_id, request_id, occurred_at, charged_nano, released_nano)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&event_id)
    .bind(entry.kind.as_str())
    .bind(&entry.account_id)
    .bind(entry.request_id.as_deref())
    .bind(entry.occurred_at)
    .bind(entry.charged.map(|c| c.0))
    .bind(entry.released.map(|r| r.0))
    .execute(&mut *conn)
    .await?;
    let d = entry.balance_delta();
    let after = sqlx::query(
        "INSERT INTO ledger_balances
             (account_id, available_nano, held_nano, spent_nano, granted_nano, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (account_id) DO UPDATE SET
             available_nano = ledger_balances.available_nano + excluded.available_nano,
             held_nano = ledger_balances.held_nano + excluded.held_nano,
             spent_nano = ledger_balances.spent_nano + excluded.spent_nano,
             granted_nano = ledger_balances.granted_nano + excluded.granted_nano,
             updated_at = excluded.updated_at
         RETURNING available_nano, held_nano, spent_nano, granted_nano",
    )
    .bind(&entry.account_id)
    .bind(d.available)
    .bind(d.held)
    .bind(d.spent)
    .bind(d.granted)
    .bind(entry.occurred_at)
    .fetch_one(&mut *conn)
    .await?;
    let closing: [i64; 4] = [
        after.try_get(0)?,
        after.try_get(1)?,
        after.try_get(2)?,
        after.try_get(3)?,
    ];
    sqlx::query(
        "INSERT INTO ledger_daily
             (account_id, day, available_nano, held_nano, spent_nano, granted_nano)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (account_id, day) DO UPDATE SET
             available_nano = excluded.available_nano, held_nano = excluded.held_nano,
             spent_nano = excluded.spent_nano, granted_nano = excluded.granted_nano",
    )
    .bind(&entry.account_id)
    .bind(day_of(entry.occurred_at))
    .bind(closing[0])
    .bind(closing[1])
    .bind(closing[2])
    .bind(closing[3])
    .execute(&mut *conn)
    .await?;
    Ok(())
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

impl Ledger {
    /// The ledger in `db`.
    pub fn new(db: Database) -> Ledger {
        Ledger { db }
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
