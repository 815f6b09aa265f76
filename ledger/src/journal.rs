//! The pure core: which journal entry an event makes. No I/O; every function here is a plain
//! function of its input, unit-tested without a database.

use lumina_schemas::{Event, NanoCredits, Payload};
use uuid::Uuid;

/// A ledger account: a customer's available or held credit, or a system account.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LedgerAccount {
    /// Credit a customer can spend.
    Available(String),
    /// Credit held for requests in flight.
    Held(String),
    /// What customers paid for completed work.
    Revenue,
    /// The source of granted credits.
    Grants,
}

impl LedgerAccount {
    /// Stable code stored with each posting (`acct_…:available`, `system:revenue`).
    pub fn code(&self) -> String {
        match self {
            LedgerAccount::Available(a) => format!("{a}:available"),
            LedgerAccount::Held(a) => format!("{a}:held"),
            LedgerAccount::Revenue => "system:revenue".into(),
            LedgerAccount::Grants => "system:grants".into(),
        }
    }
}

/// What kind of money event an entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// Credits granted.
    Grant,
    /// Credits held for a request.
    Hold,
    /// A request charged and its hold released.
    Settle,
    /// An orphaned hold released.
    Expire,
}

impl EntryKind {
    /// Name stored in the journal.
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Grant => "grant",
            EntryKind::Hold => "hold",
            EntryKind::Settle => "settle",
            EntryKind::Expire => "expire",
        }
    }
}

/// One line of an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Posting {
    /// Where the money moves.
    pub account: LedgerAccount,
    /// Signed amount; an entry's postings sum to zero.
    pub amount: NanoCredits,
}

/// One journal entry, derived from one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalEntry {
    /// The event it records (unique in the journal).
    pub event_id: Uuid,
    /// What kind of money event.
    pub kind: EntryKind,
    /// The customer account.
    pub account_id: String,
    /// The request, for holds and settlements.
    pub request_id: Option<String>,
    /// When the event occurred, µs since the epoch.
    pub occurred_at: i64,
    /// The lines; they sum to zero.
    pub postings: Vec<Posting>,
}

/// How one entry moves a customer's balance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BalanceDelta {
    /// Change of spendable credit.
    pub available: i64,
    /// Change of held credit.
    pub held: i64,
    /// Change of spent credit (revenue from this customer).
    pub spent: i64,
    /// Change of granted credit.
    pub granted: i64,
}

impl JournalEntry {
    /// Whether the postings sum to exactly zero (without overflow).
    pub fn is_balanced(&self) -> bool {
        self.postings
            .iter()
            .try_fold(0i64, |sum, p| sum.checked_add(p.amount.0))
            == Some(0)
    }

    /// The entry's effect on its customer's balance, derived from its postings.
    pub fn balance_delta(&self) -> BalanceDelta {
        let mut d = BalanceDelta::default();
        for p in &self.postings {
            match &p.account {
                LedgerAccount::Available(a) if *a == self.account_id => d.available += p.amount.0,
                LedgerAccount::Held(a) if *a == self.account_id => d.held += p.amount.0,
                LedgerAccount::Revenue => d.spent += p.amount.0,
                LedgerAccount::Grants => d.granted -= p.amount.0,
                _ => {}
            }
        }
        d
    }
}

/// Why an event cannot be journaled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unjournalable(pub String);

/// The journal entry `event` makes, or `None` when it moves no money.
pub fn entry_for(event: &Event) -> Result<Option<JournalEntry>, Unjournalable> {
    let env = &event.envelope;
    let account = env.account_id.clone();
    let (kind, postings) = match &event.payload {
        Payload::CreditsGranted(g) => {
            if g.amount_nano <= 0 {
                return Err(Unjournalable(format!(
                    "grant of {} nano-credits is not positive",
                    g.amount_nano
                )));
            }
            let amount = NanoCredits(g.amount_nano);
            (
                EntryKind::Grant,
                vec![
                    Posting {
                        account: LedgerAccount::Grants,
                        amount: NanoCredits(-amount.0),
                    },
                    Posting {
                        account: LedgerAccount::Available(account.clone()),
                        amount,
                    },
                ],
            )
        }
        _ => return Ok(None),
    };
    Ok(Some(JournalEntry {
        event_id: env.event_id,
        kind,
        account_id: account,
        request_id: env.request_id.clone(),
        occurred_at: env.occurred_at,
        postings,
    }))
}

#[cfg(test)]
mod tests {
    use lumina_schemas::payloads::CreditsGranted;
    use lumina_schemas::{Envelope, EventType};

    use super::*;

    fn grant(amount: i64) -> Event {
        Event::new(
            Envelope::new("acct_1", "t"),
            CreditsGranted {
                amount_nano: amount,
                reason: None,
                granted_by: "admin".into(),
            },
        )
    }

    #[test]
    fn a_grant_moves_credit_from_grants_to_available() {
        let entry = entry_for(&grant(12_500_000_000)).unwrap().unwrap();
        assert_eq!(entry.kind, EntryKind::Grant);
        assert!(entry.is_balanced());
        assert_eq!(
            entry.balance_delta(),
            BalanceDelta {
                available: 12_500_000_000,
                held: 0,
                spent: 0,
                granted: 12_500_000_000
            }
        );
    }

    #[test]
    fn non_positive_grants_are_refused() {
        assert!(entry_for(&grant(0)).is_err());
        assert!(entry_for(&grant(-5)).is_err());
    }

    #[test]
    fn events_that_move_no_money_make_no_entry() {
        let opened = lumina_schemas::samples::sample(EventType::AccountOpened, 1);
        assert_eq!(entry_for(&opened), Ok(None));
    }

    #[test]
    fn unbalanced_or_overflowing_postings_are_detected() {
        let mut entry = entry_for(&grant(10)).unwrap().unwrap();
        entry.postings[0].amount = NanoCredits(-9);
        assert!(!entry.is_balanced());
        entry.postings = vec![
            Posting {
                account: LedgerAccount::Revenue,
                amount: NanoCredits(i64::MAX),
            },
            Posting {
                account: LedgerAccount::Revenue,
                amount: NanoCredits(1),
            },
        ];
        assert!(!entry.is_balanced());
    }
}
