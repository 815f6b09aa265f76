//! The ledger: events in, a double-entry journal and per-account balances out, in exact
//! nano-credits. Every money event becomes one journal entry (keyed by its `event_id`) whose
//! postings sum to zero — checked here and by the database — and the account's balance moves in
//! the same transaction.
//!
//! It journals grants, the credit holds requests place, their settlements and the expiry of
//! orphaned holds. It never calls the gateway or the projector.

pub mod journal;
pub mod reconcile;
pub mod store;
pub mod sweeper;

pub use journal::{EntryKind, HoldState, JournalEntry, LedgerAccount, Posting, entry_for};
pub use store::{
    Available, Balance, DailyBalance, Ledger, LedgerProjection, Snapshot, Spend, SpendQuery,
    SpendScope, Spends, spend_bucket,
};

/// Consumer name of the ledger: the key of its positions and applied event ids.
pub const CONSUMER: &str = "ledger";
