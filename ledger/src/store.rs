//! The journal and balances in the database: [`LedgerProjection`] writes them inside the
//! consumer's transaction; [`Ledger`] reads them.
//!
//! Postings are inserted before their entry row; a trigger on the entry row refuses it unless
//! its postings exist and sum to zero, and postings cannot be changed afterwards — the database
//! enforces balance as well as [`JournalEntry::is_balanced`].

use lumina_eventlog::{ApplyError, Database};
use lumina_schemas::{Event, EventType};
use serde::Serialize;
use sqlx::{AnyConnection, Row};

use crate::CONSUMER;
use crate::journal::{JournalEntry, LedgerAccount, entry_for};

/// Journals money events and moves balances.
#[derive(Debug, Clone, Copy, Default)]
pub struct LedgerProjection;

impl lumina_eventlog::Projection for LedgerProjection {
    fn name(&self) -> &'static str {
        CONSUMER
    }

    fn handles(&self, event_type: EventType) -> bool {
        event_type == EventType::CreditsGranted
    }

    async fn apply(&self, conn: &mut AnyConnection, event: &Event) -> Result<(), ApplyError> {
        let entry = match entry_for(event) {
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
        record_entry(conn, &entry).await
    }
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
        "INSERT INTO ledger_entries (event_id, kind, account_id, request_id, occurred_at)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&event_id)
    .bind(entry.kind.as_str())
    .bind(&entry.account_id)
    .bind(entry.request_id.as_deref())
    .bind(entry.occurred_at)
    .execute(&mut *conn)
    .await?;
    let d = entry.balance_delta();
    sqlx::query(
        "INSERT INTO ledger_balances
             (account_id, available_nano, held_nano, spent_nano, granted_nano, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (account_id) DO UPDATE SET
             available_nano = ledger_balances.available_nano + excluded.available_nano,
             held_nano = ledger_balances.held_nano + excluded.held_nano,
             spent_nano = ledger_balances.spent_nano + excluded.spent_nano,
             granted_nano = ledger_balances.granted_nano + excluded.granted_nano,
             updated_at = excluded.updated_at",
    )
    .bind(&entry.account_id)
    .bind(d.available)
    .bind(d.held)
    .bind(d.spent)
    .bind(d.granted)
    .bind(entry.occurred_at)
    .execute(&mut *conn)
    .await?;
    Ok(())
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
