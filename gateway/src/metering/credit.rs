//! Credit holds against the available balance, in memory.
//!
//! The book holds a snapshot of every account's available balance as the ledger has it, read
//! together with the ledger's position in the local log (one statement, so the two agree), and
//! the holds this gateway placed that the snapshot may not include yet. Available to a request
//! = snapshot − what each of those requests takes: its hold, or once it settled its charge (so
//! the unused part of a hold is spendable the moment the settlement is committed, not when the
//! ledger applies it). A request leaves the book once a snapshot is read whose ledger position
//! is past its `RequestSettled`: from then on the snapshot itself carries it.
//!
//! In distributed mode the ledger's positions are topic offsets, which say nothing about a
//! gateway's local log; there the book asks which of its requests' `RequestRouted` and
//! `RequestSettled` events the ledger applied (`consumer_applied_events`, read in the same
//! statement as the balances, so the two agree). A settlement recorded after the question was
//! asked counts cautiously until the next snapshot answers it.
//!
//! Several gateways: each sees the others' holds only once the ledger applied them and its next
//! snapshot is read, so the overspend bound is (the holds other gateways place within one
//! refresh interval plus the ledger's lag) plus any charge above its hold (usage beyond the
//! estimate). With one gateway, concurrent requests can never overspend: holds are taken under
//! one lock.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lumina_eventlog::LogError;
use lumina_ledger::Ledger;
use lumina_schemas::ids::{AccountId, RequestId};
use tokio::sync::oneshot;
use uuid::Uuid;

/// Where a hold's `RequestRouted` landed in the log.
enum Position {
    /// Queued; the writer will say.
    Waiting(oneshot::Receiver<Result<u64, LogError>>),
    /// Committed at this position.
    Known(u64),
    /// Not queued yet.
    Unknown,
}

/// Whether the last snapshot includes an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// It does not.
    No,
    /// Nobody asked (the event was recorded after the snapshot's query was built).
    Unknown,
}

/// A request's committed settlement.
struct Settled {
    charge: i64,
    event_id: Uuid,
    position: u64,
    seen: Seen,
}

struct Pending {
    account_id: String,
    amount: i64,
    position: Position,
    /// The hold's `RequestRouted` event, once queued.
    event_id: Option<Uuid>,
    /// Whether a snapshot included the hold (its `RequestRouted`).
    reflected: bool,
    /// The settlement, once committed.
    settled: Option<Settled>,
    /// When the hold was placed.
    placed: Instant,
}

impl Pending {
    /// What this request takes off the snapshot's available balance: the hold until it
    /// settles, then its charge; once the snapshot carries the hold, nothing until it settles,
    /// then the difference between charge and hold (negative: the unused part comes back).
    /// A settlement the snapshot may already carry counts as carried only when that is the
    /// cautious reading.
    fn contribution(&self) -> i64 {
        match (&self.settled, self.reflected) {
            (None, false) => self.amount,
            (Some(s), false) => s.charge,
            (None, true) => 0,
            (Some(s), true) if s.seen == Seen::No => s.charge - self.amount,
            (Some(s), true) => (s.charge - self.amount).max(0),
        }
    }
}

/// Entries whose hold the ledger carries but whose settlement never came are forgotten after
/// this long (they take nothing off the balance by then; forgetting them only bounds memory).
const FORGET_UNSETTLED: Duration = Duration::from_secs(60);

#[derive(Default)]
struct Book {
    available: HashMap<String, i64>,
    /// When the last snapshot was installed.
    refreshed_at: Option<Instant>,
    /// The ledger's next log position in the last snapshot (embedded mode).
    ledger_next: u64,
    pending: HashMap<String, Pending>,
    pending_by_account: HashMap<String, i64>,
}

impl Book {
    fn pending_of(&self, account_id: &str) -> i64 {
        self.pending_by_account
            .get(account_id)
            .copied()
            .unwrap_or(0)
    }

    fn remove(&mut self, request_id: &str) {
        if let Some(p) = self.pending.remove(request_id) {
            self.add_to_account(&p.account_id, -p.contribution());
        }
    }

    fn add_to_account(&mut self, account_id: &str, delta: i64) {
        if delta == 0 {
            return;
        }
        let total = self
            .pending_by_account
            .entry(account_id.to_string())
            .or_insert(0);
        *total += delta;
        if *total == 0 {
            self.pending_by_account.remove(account_id);
        }
    }

    fn recount(&mut self) {
        let mut totals: HashMap<String, i64> = HashMap::new();
        for p in self.pending.values() {
            *totals.entry(p.account_id.clone()).or_insert(0) += p.contribution();
        }
        totals.retain(|_, v| *v != 0);
        self.pending_by_account = totals;
    }
}

/// A request's hold was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Insufficient {
    /// What the account has available now, nano-credits.
    pub available: i64,
    /// What the request needs held.
    pub needed: i64,
}

/// How the book learns that the ledger's balances include one of its holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Reflection {
    /// The ledger consumes this gateway's local log: compare log positions (embedded mode).
    #[default]
    LogPosition,
    /// The ledger consumes a topic: look the hold's event up among the ledger's applied events
    /// (distributed mode).
    AppliedEvent,
}

/// The gateway's view of available credit.
#[derive(Default)]
pub struct CreditBook {
    book: Mutex<Book>,
    reflection: Reflection,
}

/// The least time between two snapshots read on demand for an account the book does not know.
const UNKNOWN_ACCOUNT_REFRESH: Duration = Duration::from_millis(50);

/// What a snapshot says about the book's events (distributed mode).
struct Applied {
    /// Events the ledger applied.
    ids: HashSet<Uuid>,
    /// Settlement events the query asked about.
    asked: HashSet<Uuid>,
}

impl CreditBook {
    /// An empty book for a ledger on this gateway's local log; [`CreditBook::refresh`] loads
    /// the ledger's balances.
    pub fn new() -> CreditBook {
        CreditBook::default()
    }

    /// An empty book that learns the ledger carries a hold as `reflection` says.
    pub fn with_reflection(reflection: Reflection) -> CreditBook {
        CreditBook {
            book: Mutex::default(),
            reflection,
        }
    }

    /// Available credit of `account_id` as this gateway sees it.
    pub fn available(&self, account_id: &AccountId) -> i64 {
        let account_id = account_id.as_str();
        self.book.lock().map_or(0, |b| {
            b.available.get(account_id).copied().unwrap_or(0) - b.pending_of(account_id)
        })
    }

    /// Holds `amount` for `request_id` when the account can cover it.
    pub fn try_hold(
        &self,
        account_id: &AccountId,
        request_id: &RequestId,
        amount: i64,
    ) -> Result<(), Insufficient> {
        let (account_id, request_id) = (account_id.as_str(), request_id.as_str());
        let Ok(mut book) = self.book.lock() else {
            return Err(Insufficient {
                available: 0,
                needed: amount,
            });
        };
        let available =
            book.available.get(account_id).copied().unwrap_or(0) - book.pending_of(account_id);
        if available < amount {
            return Err(Insufficient {
                available,
                needed: amount,
            });
        }
        book.pending.insert(
            request_id.to_string(),
            Pending {
                account_id: account_id.to_string(),
                amount,
                position: Position::Unknown,
                event_id: None,
                reflected: false,
                settled: None,
                placed: Instant::now(),
            },
        );
        book.add_to_account(account_id, amount);
        Ok(())
    }

    /// [`CreditBook::try_hold`], but an account missing from the snapshot (opened through
    /// another gateway since the last refresh) gets a fresh snapshot first: its key already
    /// works here, so its credit must too. Snapshots read this way are at least
    /// `UNKNOWN_ACCOUNT_REFRESH` apart, so unknown accounts cannot turn requests into queries.
    pub async fn hold(
        &self,
        ledger: &Ledger,
        account_id: &AccountId,
        request_id: &RequestId,
        amount: i64,
    ) -> Result<(), Insufficient> {
        let refused = match self.try_hold(account_id, request_id, amount) {
            Ok(()) => return Ok(()),
            Err(refused) => refused,
        };
        let stale = self.book.lock().is_ok_and(|b| {
            !b.available.contains_key(account_id.as_str())
                && b.refreshed_at
                    .is_none_or(|at| at.elapsed() >= UNKNOWN_ACCOUNT_REFRESH)
        });
        if !stale {
            return Err(refused);
        }
        if let Err(e) = self.refresh(ledger).await {
            tracing::warn!(error = %e, "credit refresh for an unknown account failed");
            return Err(refused);
        }
        self.try_hold(account_id, request_id, amount)
    }

    /// Records the hold's `RequestRouted` event and where it will land in the log.
    pub fn queued(
        &self,
        request_id: &RequestId,
        event_id: Uuid,
        position: oneshot::Receiver<Result<u64, LogError>>,
    ) {
        if let Ok(mut book) = self.book.lock()
            && let Some(p) = book.pending.get_mut(request_id.as_str())
        {
            p.position = Position::Waiting(position);
            p.event_id = Some(event_id);
        }
    }

    /// The request settled: its `RequestSettled` (event `event_id`, charging `charge`) was
    /// committed at `position`. From now on the request takes its charge off the balance
    /// instead of its hold, until a snapshot carries the settlement.
    pub fn settled(&self, request_id: &RequestId, charge: i64, event_id: Uuid, position: u64) {
        let request_id = request_id.as_str();
        let Ok(mut book) = self.book.lock() else {
            return;
        };
        let by_position = self.reflection == Reflection::LogPosition;
        let carried = by_position && position < book.ledger_next;
        let Some(p) = book.pending.get_mut(request_id) else {
            return;
        };
        let before = p.contribution();
        let account_id = p.account_id.clone();
        if carried {
            book.pending.remove(request_id);
            book.add_to_account(&account_id, -before);
            return;
        }
        p.settled = Some(Settled {
            charge,
            event_id,
            position,
            seen: if by_position { Seen::No } else { Seen::Unknown },
        });
        let after = p.contribution();
        book.add_to_account(&account_id, after - before);
    }

    /// Forgets a hold that never reached the log.
    pub fn cancel(&self, request_id: &RequestId) {
        if let Ok(mut book) = self.book.lock() {
            book.remove(request_id.as_str());
        }
    }

    /// Reads every balance and what the ledger applied of this gateway's holds, then drops
    /// the holds the balances include.
    pub async fn refresh(&self, ledger: &Ledger) -> Result<(), sqlx::Error> {
        match self.reflection {
            Reflection::LogPosition => {
                let (available, ledger_next) = ledger.available_at_position().await?;
                self.apply_snapshot(available, ledger_next);
            }
            Reflection::AppliedEvent => {
                let mut asked = HashSet::new();
                let mut ids = Vec::new();
                if let Ok(book) = self.book.lock() {
                    for p in book.pending.values() {
                        if let Some(s) = &p.settled {
                            ids.push(s.event_id);
                            asked.insert(s.event_id);
                        }
                        if !p.reflected
                            && let Some(id) = p.event_id
                        {
                            ids.push(id);
                        }
                    }
                }
                let (available, applied) = ledger.available_with_applied(&ids).await?;
                self.install_applied(
                    available,
                    &Applied {
                        ids: applied,
                        asked,
                    },
                );
            }
        }
        Ok(())
    }

    fn install_applied(&self, available: HashMap<String, i64>, applied: &Applied) {
        self.install(
            available,
            None,
            |p| p.event_id.is_some_and(|id| applied.ids.contains(&id)),
            |s| {
                if applied.ids.contains(&s.event_id) {
                    None
                } else if applied.asked.contains(&s.event_id) {
                    Some(Seen::No)
                } else {
                    Some(Seen::Unknown)
                }
            },
        );
    }

    /// Installs a snapshot of available balances taken at ledger position `ledger_next`, and
    /// drops the holds and settlements it includes.
    pub fn apply_snapshot(&self, available: HashMap<String, i64>, ledger_next: u64) {
        self.install(
            available,
            Some(ledger_next),
            |p| matches!(p.position, Position::Known(position) if position < ledger_next),
            |s| (s.position >= ledger_next).then_some(Seen::No),
        );
    }

    /// Installs `available`; marks the holds it `includes_hold`, drops the requests whose
    /// settlement it includes (`settlement` answers `None`) and those that never reached the
    /// log.
    fn install(
        &self,
        available: HashMap<String, i64>,
        ledger_next: Option<u64>,
        includes_hold: impl Fn(&Pending) -> bool,
        settlement: impl Fn(&Settled) -> Option<Seen>,
    ) {
        let Ok(mut book) = self.book.lock() else {
            return;
        };
        book.available = available;
        book.refreshed_at = Some(Instant::now());
        if let Some(next) = ledger_next {
            book.ledger_next = next;
        }
        book.pending.retain(|_, p| {
            if let Position::Waiting(rx) = &mut p.position {
                match rx.try_recv() {
                    Ok(Ok(position)) => p.position = Position::Known(position),
                    // The hold never reached the log; nothing will reflect it.
                    Ok(Err(_)) | Err(oneshot::error::TryRecvError::Closed) => return false,
                    Err(oneshot::error::TryRecvError::Empty) => {}
                }
            }
            if !p.reflected && includes_hold(p) {
                p.reflected = true;
            }
            match p.settled.as_mut() {
                Some(s) => match settlement(s) {
                    None => return false,
                    Some(seen) => s.seen = seen,
                },
                None if p.reflected && p.placed.elapsed() > FORGET_UNSETTLED => return false,
                None => {}
            }
            true
        });
        book.recount();
    }

    /// Requests whose hold or settlement no snapshot includes yet.
    pub fn pending_holds(&self) -> usize {
        self.book.lock().map_or(0, |b| b.pending.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book_with(account: &str, available: i64) -> CreditBook {
        let book = CreditBook::new();
        if let Ok(mut b) = book.book.lock() {
            b.available.insert(account.into(), available);
        }
        book
    }

    #[test]
    fn holds_are_refused_once_the_available_credit_is_spoken_for() {
        let book = book_with("a", 100);
        book.try_hold(&"a".into(), &"r1".into(), 60).unwrap();
        assert_eq!(book.available(&"a".into()), 40);
        assert_eq!(
            book.try_hold(&"a".into(), &"r2".into(), 41),
            Err(Insufficient {
                available: 40,
                needed: 41
            })
        );
        book.try_hold(&"a".into(), &"r3".into(), 40).unwrap();
        assert_eq!(book.available(&"a".into()), 0);
        book.cancel(&"r1".into());
        assert_eq!(book.available(&"a".into()), 60);
        assert_eq!(
            book.try_hold(&"b".into(), &"r4".into(), 1),
            Err(Insufficient {
                available: 0,
                needed: 1
            })
        );
    }

    #[test]
    fn a_snapshot_past_the_hold_replaces_it() {
        let book = book_with("a", 100);
        book.try_hold(&"a".into(), &"r1".into(), 30).unwrap();
        let (tx, rx) = oneshot::channel();
        book.queued(&"r1".into(), Uuid::now_v7(), rx);
        tx.send(Ok(7)).unwrap();
        // A snapshot taken before the ledger applied position 7 does not include the hold.
        book.apply_snapshot(HashMap::from([("a".to_string(), 100)]), 7);
        assert_eq!(book.available(&"a".into()), 70);
        assert_eq!(book.pending_holds(), 1);
        // One taken after it does: the snapshot carries the hold, the book adds nothing (it
        // keeps the request until its settlement, to give back the unused part then).
        book.apply_snapshot(HashMap::from([("a".to_string(), 70)]), 8);
        assert_eq!(book.available(&"a".into()), 70);
        assert_eq!(book.pending_holds(), 1);
    }

    #[test]
    fn a_settled_request_takes_its_charge_not_its_hold() {
        let book = book_with("a", 100);
        book.try_hold(&"a".into(), &"r1".into(), 60).unwrap();
        let (tx, rx) = oneshot::channel();
        book.queued(&"r1".into(), Uuid::now_v7(), rx);
        tx.send(Ok(7)).unwrap();
        assert_eq!(book.available(&"a".into()), 40);
        // Settled at position 9 for 10: the unused 50 is spendable at once.
        book.settled(&"r1".into(), 10, Uuid::now_v7(), 9);
        assert_eq!(book.available(&"a".into()), 90);
        book.try_hold(&"a".into(), &"r2".into(), 90).unwrap();
        book.cancel(&"r2".into());
        // The ledger applied the hold but not the settlement: the snapshot holds back 60.
        book.apply_snapshot(HashMap::from([("a".to_string(), 40)]), 8);
        assert_eq!(book.available(&"a".into()), 90);
        assert_eq!(book.pending_holds(), 1);
        // Both applied: the snapshot carries everything and the request leaves the book.
        book.apply_snapshot(HashMap::from([("a".to_string(), 90)]), 10);
        assert_eq!(book.available(&"a".into()), 90);
        assert_eq!(book.pending_holds(), 0);
    }

    #[test]
    fn a_settlement_the_last_snapshot_already_carries_leaves_at_once() {
        let book = book_with("a", 100);
        book.try_hold(&"a".into(), &"r1".into(), 60).unwrap();
        let (tx, rx) = oneshot::channel();
        book.queued(&"r1".into(), Uuid::now_v7(), rx);
        tx.send(Ok(3)).unwrap();
        // A snapshot read after the ledger applied both events, before the book heard of the
        // settlement.
        book.apply_snapshot(HashMap::from([("a".to_string(), 90)]), 5);
        assert_eq!(book.available(&"a".into()), 90);
        book.settled(&"r1".into(), 10, Uuid::now_v7(), 4);
        assert_eq!(book.available(&"a".into()), 90);
        assert_eq!(book.pending_holds(), 0);
    }

    #[test]
    fn applied_events_release_only_what_the_snapshot_was_asked_about() {
        let book = CreditBook::with_reflection(Reflection::AppliedEvent);
        let routed = Uuid::now_v7();
        let settled = Uuid::now_v7();
        book.install_applied(
            HashMap::from([("a".to_string(), 100)]),
            &Applied {
                ids: HashSet::new(),
                asked: HashSet::new(),
            },
        );
        book.try_hold(&"a".into(), &"r1".into(), 60).unwrap();
        let (_tx, rx) = oneshot::channel();
        book.queued(&"r1".into(), routed, rx);
        book.settled(&"r1".into(), 10, settled, 0);
        assert_eq!(book.available(&"a".into()), 90);
        // The hold applied; the settlement was not asked about: counted cautiously.
        book.install_applied(
            HashMap::from([("a".to_string(), 40)]),
            &Applied {
                ids: HashSet::from([routed]),
                asked: HashSet::new(),
            },
        );
        assert_eq!(book.available(&"a".into()), 40);
        // Asked and not applied: the unused part of the hold comes back.
        book.install_applied(
            HashMap::from([("a".to_string(), 40)]),
            &Applied {
                ids: HashSet::new(),
                asked: HashSet::from([settled]),
            },
        );
        assert_eq!(book.available(&"a".into()), 90);
        book.install_applied(
            HashMap::from([("a".to_string(), 90)]),
            &Applied {
                ids: HashSet::from([settled]),
                asked: HashSet::from([settled]),
            },
        );
        assert_eq!(book.available(&"a".into()), 90);
        assert_eq!(book.pending_holds(), 0);
    }

    #[test]
    fn a_hold_that_never_reached_the_log_is_dropped() {
        let book = book_with("a", 100);
        book.try_hold(&"a".into(), &"r1".into(), 30).unwrap();
        let (tx, rx) = oneshot::channel::<Result<u64, LogError>>();
        book.queued(&"r1".into(), Uuid::now_v7(), rx);
        drop(tx);
        book.apply_snapshot(HashMap::from([("a".to_string(), 100)]), 1);
        assert_eq!(book.available(&"a".into()), 100);
    }
}
