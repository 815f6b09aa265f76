//! The pure core: which journal entry an event makes. No I/O; every function here is a plain
//! function of its input, unit-tested without a database.

use lumina_schemas::money::MAX_ACCOUNT_CREDITS;
use lumina_schemas::{Event, EventType, NanoCredits, Payload};
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
    /// For a settlement: what was charged.
    pub charged: Option<NanoCredits>,
    /// For a settlement or expiry: how much of the hold went back to available.
    pub released: Option<NanoCredits>,
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

/// What the ledger knows of a request's hold when an event about it arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldState {
    /// No hold was journaled for the request.
    Missing,
    /// A hold of this many nano-credits is open.
    Open(i64),
    /// The hold was settled or expired already.
    Closed,
}

/// The event types that move money.
pub const MONEY_EVENTS: [EventType; 4] = [
    EventType::CreditsGranted,
    EventType::RequestRouted,
    EventType::RequestSettled,
    EventType::HoldExpired,
];

fn posting(account: LedgerAccount, amount: i64) -> Option<Posting> {
    (amount != 0).then_some(Posting {
        account,
        amount: NanoCredits(amount),
    })
}

/// The journal entry `event` makes given the state of its request's hold, or `None` when it
/// moves no money.
///
/// - grant G: grants −G, available +G;
/// - hold H (`RequestRouted`): available −H, held +H;
/// - settlement with charge C of an open hold H: held −H, revenue +C, available +(H−C);
///   of a hold already closed (expired) or never placed: available −C, revenue +C;
/// - expiry of an open hold H: held −H, available +H.
pub fn entry_for(event: &Event, hold: HoldState) -> Result<Option<JournalEntry>, Unjournalable> {
    let env = &event.envelope;
    let account = env.account_id.clone();
    let available = || LedgerAccount::Available(account.clone());
    let held = || LedgerAccount::Held(account.clone());
    let (kind, postings, charged, released): (
        EntryKind,
        Vec<Option<Posting>>,
        Option<i64>,
        Option<i64>,
    ) = match &event.payload {
        Payload::CreditsGranted(g) => {
            if g.amount_nano > MAX_ACCOUNT_CREDITS.0 {
                return Err(Unjournalable(format!(
                    "grant of {} nano-credits is more than an account can hold",
                    g.amount_nano
                )));
            }
            if g.amount_nano <= 0 {
                return Err(Unjournalable(format!(
                    "grant of {} nano-credits is not positive",
                    g.amount_nano
                )));
            }
            (
                EntryKind::Grant,
                vec![
                    posting(LedgerAccount::Grants, -g.amount_nano),
                    posting(available(), g.amount_nano),
                ],
                None,
                None,
            )
        }
        Payload::RequestRouted(r) => {
            let Some(h) = r.hold.as_ref().filter(|h| h.amount_nano != 0) else {
                return Ok(None);
            };
            if h.amount_nano > MAX_ACCOUNT_CREDITS.0 {
                return Err(Unjournalable(format!(
                    "hold of {} nano-credits is more than an account can hold",
                    h.amount_nano
                )));
            }
            if h.amount_nano < 0 {
                return Err(Unjournalable(format!(
                    "hold of {} nano-credits is negative",
                    h.amount_nano
                )));
            }
            if hold != HoldState::Missing {
                return Err(Unjournalable(
                    "a hold for this request exists already".into(),
                ));
            }
            (
                EntryKind::Hold,
                vec![
                    posting(available(), -h.amount_nano),
                    posting(held(), h.amount_nano),
                ],
                None,
                None,
            )
        }
        Payload::RequestSettled(s) => {
            let charge = s.charge_nano;
            if charge > MAX_ACCOUNT_CREDITS.0 {
                return Err(Unjournalable(format!(
                    "charge of {charge} nano-credits is more than an account can hold"
                )));
            }
            if charge < 0 {
                return Err(Unjournalable(format!(
                    "charge of {charge} nano-credits is negative"
                )));
            }
            match hold {
                HoldState::Open(h) => (
                    EntryKind::Settle,
                    vec![
                        posting(held(), -h),
                        posting(LedgerAccount::Revenue, charge),
                        posting(available(), h - charge),
                    ],
                    Some(charge),
                    Some(h),
                ),
                HoldState::Missing | HoldState::Closed if charge == 0 => return Ok(None),
                HoldState::Missing | HoldState::Closed => (
                    EntryKind::Settle,
                    vec![
                        posting(available(), -charge),
                        posting(LedgerAccount::Revenue, charge),
                    ],
                    Some(charge),
                    Some(0),
                ),
            }
        }
        Payload::HoldExpired(_) => match hold {
            HoldState::Open(h) => (
                EntryKind::Expire,
                vec![posting(held(), -h), posting(available(), h)],
                None,
                Some(h),
            ),
            _ => return Ok(None),
        },
        _ => return Ok(None),
    };
    let postings: Vec<Posting> = postings.into_iter().flatten().collect();
    if postings.is_empty() {
        return Ok(None);
    }
    Ok(Some(JournalEntry {
        event_id: env.event_id,
        kind,
        account_id: account,
        request_id: env.request_id.clone(),
        occurred_at: env.occurred_at,
        postings,
        charged: charged.map(NanoCredits),
        released: released.map(NanoCredits),
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
        let entry = entry_for(&grant(12_500_000_000), HoldState::Missing)
            .unwrap()
            .unwrap();
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
        assert!(entry_for(&grant(0), HoldState::Missing).is_err());
        assert!(entry_for(&grant(-5), HoldState::Missing).is_err());
    }

    #[test]
    fn events_that_move_no_money_make_no_entry() {
        let opened = lumina_schemas::samples::sample(EventType::AccountOpened, 1);
        assert_eq!(entry_for(&opened, HoldState::Missing), Ok(None));
    }

    #[test]
    fn unbalanced_or_overflowing_postings_are_detected() {
        let mut entry = entry_for(&grant(10), HoldState::Missing).unwrap().unwrap();
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

    fn routed(hold: i64) -> Event {
        let mut e = lumina_schemas::samples::sample(EventType::RequestRouted, 1);
        if let Payload::RequestRouted(r) = &mut e.payload {
            r.hold.as_mut().unwrap().amount_nano = hold;
        }
        e
    }

    fn settled(charge: i64) -> Event {
        let mut e = lumina_schemas::samples::sample(EventType::RequestSettled, 1);
        if let Payload::RequestSettled(s) = &mut e.payload {
            s.charge_nano = charge;
        }
        e
    }

    fn delta(e: &Event, hold: HoldState) -> BalanceDelta {
        entry_for(e, hold).unwrap().unwrap().balance_delta()
    }

    #[test]
    fn hold_settle_and_expire_move_money_between_available_held_and_revenue() {
        assert_eq!(
            delta(&routed(100), HoldState::Missing),
            BalanceDelta {
                available: -100,
                held: 100,
                spent: 0,
                granted: 0
            }
        );
        let settle = entry_for(&settled(30), HoldState::Open(100))
            .unwrap()
            .unwrap();
        assert!(settle.is_balanced());
        assert_eq!(
            (settle.charged, settle.released),
            (Some(NanoCredits(30)), Some(NanoCredits(100)))
        );
        assert_eq!(
            settle.balance_delta(),
            BalanceDelta {
                available: 70,
                held: -100,
                spent: 30,
                granted: 0
            }
        );
        // A charge above the hold takes the rest from available.
        assert_eq!(
            delta(&settled(130), HoldState::Open(100)),
            BalanceDelta {
                available: -30,
                held: -100,
                spent: 130,
                granted: 0
            }
        );
        // After an expiry the hold is gone: the charge comes from available.
        assert_eq!(
            delta(&settled(30), HoldState::Closed),
            BalanceDelta {
                available: -30,
                held: 0,
                spent: 30,
                granted: 0
            }
        );
        let expire = lumina_schemas::samples::sample(EventType::HoldExpired, 1);
        assert_eq!(
            delta(&expire, HoldState::Open(100)),
            BalanceDelta {
                available: 100,
                held: -100,
                spent: 0,
                granted: 0
            }
        );
    }

    #[test]
    fn events_that_change_nothing_make_no_entry() {
        let expire = lumina_schemas::samples::sample(EventType::HoldExpired, 1);
        assert_eq!(entry_for(&expire, HoldState::Closed), Ok(None));
        assert_eq!(entry_for(&expire, HoldState::Missing), Ok(None));
        assert_eq!(entry_for(&settled(0), HoldState::Missing), Ok(None));
        assert_eq!(entry_for(&routed(0), HoldState::Missing), Ok(None));
        assert!(
            entry_for(&routed(5), HoldState::Open(5)).is_err(),
            "a second hold for one request"
        );
        assert!(entry_for(&settled(-1), HoldState::Open(5)).is_err());
    }
}
