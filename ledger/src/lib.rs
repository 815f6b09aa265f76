//! The ledger: events in, a double-entry journal and per-account balances out, in exact
//! nano-credits. Every money event becomes one journal entry (keyed by its `event_id`) whose
//! postings sum to zero — checked here and by the database — and the account's balance moves in
//! the same transaction.
//!
//! Today it journals credit grants; holds, settlements and expiries join with the gateway's
//! request events. It never calls the gateway or the projector.

pub mod journal;
pub mod store;

pub use journal::{EntryKind, JournalEntry, LedgerAccount, Posting, entry_for};
pub use store::{Balance, Ledger, LedgerProjection};

/// Consumer name of the ledger: the key of its positions and applied event ids.
pub const CONSUMER: &str = "ledger";
