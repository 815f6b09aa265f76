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
//! Budgets are checked in the same step: a budget's use = what the snapshot (read in the same
//! statement) says its scope settled in the current period and holds, plus what the book's
//! requests of that scope take, by the same rule as the balance. A snapshot from before the
//! period turned counts only its open holds.
//!
//! Several gateways: each sees the others' holds only once the ledger applied them and its next
//! snapshot is read, so the overspend bound is (the holds other gateways place within one
//! refresh interval plus the ledger's lag) plus any charge above its hold (usage beyond the
//! estimate). With one gateway, concurrent requests can never overspend: holds are taken under
//! one lock.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use lumina_eventlog::LogError;
use lumina_ledger::{Ledger, Spend, SpendQuery, SpendScope, Spends};
use lumina_projector::ReadModel;
use lumina_schemas::ids::{AccountId, KeyId, ProjectId, RequestId};
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::metering::budget::Budget;

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
    /// The account, project and key it is for, in [`scope_index`] order.
    scopes: [String; 3],
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

/// Where a scope's entry sits in a request's scopes and in per-scope tables: account,
/// project, key.
fn scope_index(scope: SpendScope) -> usize {
    match scope {
        SpendScope::Account => 0,
        SpendScope::Project => 1,
        SpendScope::Key => 2,
    }
}

/// A budget in force and what the last snapshot said it used.
struct BudgetState {
    budget: Budget,
    /// The period start the snapshot's spend is for, and the spend.
    snapshot: Option<(i64, Spend)>,
}

#[derive(Default)]
struct Book {
    available: HashMap<String, i64>,
    /// When the last snapshot was installed.
    refreshed_at: Option<Instant>,
    /// The ledger's next log position in the last snapshot (embedded mode).
    ledger_next: u64,
    pending: HashMap<String, Pending>,
    /// What the pending requests take, per account, project and key (in [`scope_index`] order).
    pending_by: [HashMap<String, i64>; 3],
    budgets: Vec<BudgetState>,
    /// Indexes into `budgets` by the id they limit, per scope (in [`scope_index`] order).
    budgets_by: [HashMap<String, Vec<usize>>; 3],
}

impl Book {
    fn pending_of(&self, scope: SpendScope, id: &str) -> i64 {
        self.pending_by[scope_index(scope)]
            .get(id)
            .copied()
            .unwrap_or(0)
    }

    fn available_to(&self, account_id: &str) -> i64 {
        self.available.get(account_id).copied().unwrap_or(0)
            - self.pending_of(SpendScope::Account, account_id)
    }

    fn remove(&mut self, request_id: &str) {
        if let Some(p) = self.pending.remove(request_id) {
            add_to_scopes(&mut self.pending_by, &p.scopes, -p.contribution());
        }
    }

    /// What `state`'s budget has used in the period starting at `period_start`: the
    /// snapshot's spend when it is for that period (only its open holds when the period has
    /// turned since), plus what pending requests of its scope take.
    fn used(&self, state: &BudgetState, period_start: i64) -> i64 {
        let snapshot = match state.snapshot {
            Some((start, spend)) if start == period_start => spend.settled + spend.held,
            Some((_, spend)) => spend.held,
            None => 0,
        };
        snapshot + self.pending_of(state.budget.scope, &state.budget.scope_id)
    }

    /// The budgets limiting a request of `scopes`, the key's first, then its project's, then
    /// its account's.
    fn budgets_of<'a>(&'a self, scopes: [&'a str; 3]) -> impl Iterator<Item = usize> + 'a {
        (0..3).rev().flat_map(move |i| {
            self.budgets_by[i]
                .get(scopes[i])
                .into_iter()
                .flatten()
                .copied()
        })
    }
}

/// Adds `delta` to what each of `scopes` has pending, dropping totals that reach zero.
fn add_to_scopes(totals: &mut [HashMap<String, i64>; 3], scopes: &[String; 3], delta: i64) {
    if delta == 0 {
        return;
    }
    for (map, id) in totals.iter_mut().zip(scopes) {
        match map.get_mut(id.as_str()) {
            Some(total) => {
                *total += delta;
                if *total == 0 {
                    map.remove(id.as_str());
                }
            }
            None => {
                map.insert(id.clone(), delta);
            }
        }
    }
}

/// Who a hold is for: the account, project and key a budget may limit.
#[derive(Debug, Clone, Copy)]
pub struct Holder<'a> {
    /// The key's account.
    pub account_id: &'a AccountId,
    /// The key's project.
    pub project_id: &'a ProjectId,
    /// The key.
    pub key_id: &'a KeyId,
}

impl Holder<'_> {
    fn scopes(&self) -> [&str; 3] {
        [
            self.account_id.as_str(),
            self.project_id.as_str(),
            self.key_id.as_str(),
        ]
    }
}

/// A budget refused a hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverBudget {
    /// The budget (`bud_…`).
    pub budget_id: String,
    /// What it limits.
    pub scope: SpendScope,
    /// The account, project or key id.
    pub scope_id: String,
    /// `day`, `week`, `month` or `total`.
    pub period: &'static str,
    /// Its limit, nano-credits.
    pub limit: i64,
    /// What the period has used, nano-credits.
    pub used: i64,
    /// What the request needs held.
    pub needed: i64,
}

/// Why a hold was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// The account cannot cover it.
    Insufficient(Insufficient),
    /// It would take a budget past its limit.
    OverBudget(Box<OverBudget>),
}

/// A request's use took a budget past its soft limit for the first time in the period: record
/// it (`BudgetThresholdCrossed`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crossing {
    /// The budget.
    pub budget_id: String,
    /// The period's start, µs (0 for `total`).
    pub period_start: i64,
    /// The soft limit, nano-credits.
    pub soft_limit: i64,
    /// The limit, nano-credits.
    pub limit: i64,
    /// The period's use with the request's hold, nano-credits.
    pub used: i64,
}

/// A hold placed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Held {
    /// When a budget in force has reached its soft limit: what the tightest budget has left
    /// after this hold, nano-credits (never negative).
    pub budget_remaining: Option<i64>,
    /// Soft limits this hold crossed first in their period.
    pub crossings: Vec<Crossing>,
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
        self.book
            .lock()
            .map_or(0, |b| b.available_to(account_id.as_str()))
    }

    /// Holds `amount` for `request_id` when the account can cover it and no budget of the
    /// holder would pass its limit in the period holding `now`.
    pub fn try_hold(
        &self,
        holder: Holder<'_>,
        request_id: &RequestId,
        amount: i64,
        now: DateTime<Utc>,
    ) -> Result<Held, Refused> {
        let Ok(mut book) = self.book.lock() else {
            return Err(Refused::Insufficient(Insufficient {
                available: 0,
                needed: amount,
            }));
        };
        let scopes = holder.scopes();
        let available = book.available_to(scopes[0]);
        if available < amount {
            return Err(Refused::Insufficient(Insufficient {
                available,
                needed: amount,
            }));
        }
        let mut held = Held::default();
        if !book.budgets.is_empty() {
            let mut soft_reached = false;
            let mut remaining = i64::MAX;
            let mut crossed = Vec::new();
            for i in book.budgets_of(scopes) {
                let state = &book.budgets[i];
                let b = &state.budget;
                let period_start = b.period_start(now);
                let used = book.used(state, period_start);
                let after = used.saturating_add(amount);
                if after > b.limit {
                    return Err(Refused::OverBudget(Box::new(OverBudget {
                        budget_id: b.id.clone(),
                        scope: b.scope,
                        scope_id: b.scope_id.clone(),
                        period: b.period.as_str(),
                        limit: b.limit,
                        used,
                        needed: amount,
                    })));
                }
                remaining = remaining.min(b.limit - after);
                if let Some(soft) = b.soft_limit.filter(|soft| after >= *soft) {
                    soft_reached = true;
                    if b.crossed.is_none_or(|c| c < period_start) {
                        crossed.push((i, period_start));
                        held.crossings.push(Crossing {
                            budget_id: b.id.clone(),
                            period_start,
                            soft_limit: soft,
                            limit: b.limit,
                            used: after,
                        });
                    }
                }
            }
            for (i, period_start) in crossed {
                book.budgets[i].budget.crossed = Some(period_start);
            }
            held.budget_remaining = soft_reached.then_some(remaining);
        }
        book.pending.insert(
            request_id.to_string(),
            Pending {
                scopes: scopes.map(str::to_string),
                amount,
                position: Position::Unknown,
                event_id: None,
                reflected: false,
                settled: None,
                placed: Instant::now(),
            },
        );
        let Book {
            pending_by,
            pending,
            ..
        } = &mut *book;
        if let Some(p) = pending.get(request_id.as_str()) {
            add_to_scopes(pending_by, &p.scopes, amount);
        }
        Ok(held)
    }

    /// Installs the budgets in force. What the last snapshot said a budget used stays with it
    /// while it limits the same scope; so does the latest period whose soft limit it crossed.
    pub fn set_budgets(&self, budgets: Vec<Budget>) {
        let Ok(mut book) = self.book.lock() else {
            return;
        };
        let mut before: HashMap<String, BudgetState> = std::mem::take(&mut book.budgets)
            .into_iter()
            .map(|s| (s.budget.id.clone(), s))
            .collect();
        let mut by: [HashMap<String, Vec<usize>>; 3] = Default::default();
        let mut states = Vec::with_capacity(budgets.len());
        for mut budget in budgets {
            let mut snapshot = None;
            if let Some(old) = before.remove(&budget.id)
                && old.budget.scope == budget.scope
                && old.budget.scope_id == budget.scope_id
            {
                snapshot = old.snapshot;
                budget.crossed = budget.crossed.max(old.budget.crossed);
            }
            by[scope_index(budget.scope)]
                .entry(budget.scope_id.clone())
                .or_default()
                .push(states.len());
            states.push(BudgetState { budget, snapshot });
        }
        book.budgets = states;
        book.budgets_by = by;
    }

    /// Reloads the budgets in force from the read model.
    pub async fn refresh_budgets(&self, read_model: &ReadModel) -> Result<(), sqlx::Error> {
        let rows = read_model.budgets(None).await?;
        self.set_budgets(rows.iter().filter_map(Budget::from_row).collect());
        Ok(())
    }

    /// What to ask the ledger about each budget's period holding `now`.
    fn spend_queries(&self, now: DateTime<Utc>) -> Vec<SpendQuery> {
        self.book.lock().map_or_else(
            |_| Vec::new(),
            |b| b.budgets.iter().map(|s| s.budget.query(now)).collect(),
        )
    }

    /// [`CreditBook::try_hold`], but an account missing from the snapshot (opened through
    /// another gateway since the last refresh) gets a fresh snapshot first: its key already
    /// works here, so its credit must too. Snapshots read this way are at least
    /// `UNKNOWN_ACCOUNT_REFRESH` apart, so unknown accounts cannot turn requests into queries.
    pub async fn hold(
        &self,
        ledger: &Ledger,
        holder: Holder<'_>,
        request_id: &RequestId,
        amount: i64,
    ) -> Result<Held, Refused> {
        let refused = match self.try_hold(holder, request_id, amount, Utc::now()) {
            Ok(held) => return Ok(held),
            Err(refused @ Refused::OverBudget(_)) => return Err(refused),
            Err(refused) => refused,
        };
        let stale = self.book.lock().is_ok_and(|b| {
            !b.available.contains_key(holder.account_id.as_str())
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
        self.try_hold(holder, request_id, amount, Utc::now())
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
        if carried {
            book.remove(request_id);
            return;
        }
        p.settled = Some(Settled {
            charge,
            event_id,
            position,
            seen: if by_position { Seen::No } else { Seen::Unknown },
        });
        let delta = p.contribution() - before;
        let Book {
            pending_by,
            pending,
            ..
        } = &mut *book;
        if let Some(p) = pending.get(request_id) {
            add_to_scopes(pending_by, &p.scopes, delta);
        }
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
        let queries = self.spend_queries(Utc::now());
        match self.reflection {
            Reflection::LogPosition => {
                let snapshot = ledger.available_at_position(&queries).await?;
                let next = snapshot.ledger_next;
                self.install(
                    snapshot.available,
                    Some(next),
                    (&queries, &snapshot.spend),
                    |p| matches!(p.position, Position::Known(position) if position < next),
                    |s| (s.position >= next).then_some(Seen::No),
                );
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
                let (snapshot, applied) = ledger.available_with_applied(&ids, &queries).await?;
                self.install_applied(
                    snapshot.available,
                    (&queries, &snapshot.spend),
                    &Applied {
                        ids: applied,
                        asked,
                    },
                );
            }
        }
        Ok(())
    }

    /// Keeps what `spends` says each budget of `queries` used, for the period it asked about
    /// (a budget redefined meanwhile keeps its old figure until the next snapshot).
    fn install_spend(book: &mut Book, queries: &[SpendQuery], spends: &Spends) {
        let queries: HashMap<&str, &SpendQuery> =
            queries.iter().map(|q| (q.budget_id.as_str(), q)).collect();
        for state in &mut book.budgets {
            let b = &state.budget;
            let Some(q) = queries.get(b.id.as_str()) else {
                continue;
            };
            if q.scope != b.scope || q.scope_id != b.scope_id {
                continue;
            }
            if let Some(spend) = spends.get(&b.id) {
                state.snapshot = Some((q.since.unwrap_or(0), *spend));
            }
        }
    }

    fn install_applied(
        &self,
        available: HashMap<String, i64>,
        spend: (&[SpendQuery], &Spends),
        applied: &Applied,
    ) {
        self.install(
            available,
            None,
            spend,
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
            (&[], &Spends::new()),
            |p| matches!(p.position, Position::Known(position) if position < ledger_next),
            |s| (s.position >= ledger_next).then_some(Seen::No),
        );
    }

    /// Installs `available` and the budgets' `spend`; marks the holds it `includes_hold`,
    /// drops the requests whose settlement it includes (`settlement` answers `None`) and those
    /// that never reached the log. One lock, so no hold sees the spend without the balances.
    fn install(
        &self,
        available: HashMap<String, i64>,
        ledger_next: Option<u64>,
        (queries, spends): (&[SpendQuery], &Spends),
        includes_hold: impl Fn(&Pending) -> bool,
        settlement: impl Fn(&Settled) -> Option<Seen>,
    ) {
        let Ok(mut book) = self.book.lock() else {
            return;
        };
        book.available = available;
        Self::install_spend(&mut book, queries, spends);
        book.refreshed_at = Some(Instant::now());
        if let Some(next) = ledger_next {
            book.ledger_next = next;
        }
        // Each entry's contribution changes here only when the snapshot now carries its hold
        // or its settlement, or when it goes: the totals take the difference, entry by entry,
        // rather than being recounted (thousands of pending requests under load, every
        // refresh, under the lock every hold waits for).
        let Book {
            pending,
            pending_by,
            ..
        } = &mut *book;
        pending.retain(|_, p| {
            let before = p.contribution();
            let keep = Self::reflect(p, &includes_hold, &settlement);
            let after = if keep { p.contribution() } else { 0 };
            add_to_scopes(pending_by, &p.scopes, after - before);
            keep
        });
    }

    /// Updates `p` from a snapshot; false when the request is done with (the snapshot includes
    /// its settlement, its hold never reached the log, or it was never settled for too long).
    fn reflect(
        p: &mut Pending,
        includes_hold: &impl Fn(&Pending) -> bool,
        settlement: &impl Fn(&Settled) -> Option<Seen>,
    ) -> bool {
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
                None => false,
                Some(seen) => {
                    s.seen = seen;
                    true
                }
            },
            None => !(p.reflected && p.placed.elapsed() > FORGET_UNSETTLED),
        }
    }

    /// Requests whose hold or settlement no snapshot includes yet.
    pub fn pending_holds(&self) -> usize {
        self.book.lock().map_or(0, |b| b.pending.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An account with a project and a key named after it.
    struct Ids(AccountId, ProjectId, KeyId);

    impl Ids {
        fn holder(&self) -> Holder<'_> {
            Holder {
                account_id: &self.0,
                project_id: &self.1,
                key_id: &self.2,
            }
        }
    }

    fn ids(account: &str) -> Ids {
        Ids(
            account.into(),
            format!("{account}-p").into(),
            format!("{account}-k").into(),
        )
    }

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
        book.try_hold(ids("a").holder(), &"r1".into(), 60, Utc::now())
            .unwrap();
        assert_eq!(book.available(&"a".into()), 40);
        assert_eq!(
            book.try_hold(ids("a").holder(), &"r2".into(), 41, Utc::now()),
            Err(Refused::Insufficient(Insufficient {
                available: 40,
                needed: 41
            }))
        );
        book.try_hold(ids("a").holder(), &"r3".into(), 40, Utc::now())
            .unwrap();
        assert_eq!(book.available(&"a".into()), 0);
        book.cancel(&"r1".into());
        assert_eq!(book.available(&"a".into()), 60);
        assert_eq!(
            book.try_hold(ids("b").holder(), &"r4".into(), 1, Utc::now()),
            Err(Refused::Insufficient(Insufficient {
                available: 0,
                needed: 1
            }))
        );
    }

    #[test]
    fn a_snapshot_past_the_hold_replaces_it() {
        let book = book_with("a", 100);
        book.try_hold(ids("a").holder(), &"r1".into(), 30, Utc::now())
            .unwrap();
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
        book.try_hold(ids("a").holder(), &"r1".into(), 60, Utc::now())
            .unwrap();
        let (tx, rx) = oneshot::channel();
        book.queued(&"r1".into(), Uuid::now_v7(), rx);
        tx.send(Ok(7)).unwrap();
        assert_eq!(book.available(&"a".into()), 40);
        // Settled at position 9 for 10: the unused 50 is spendable at once.
        book.settled(&"r1".into(), 10, Uuid::now_v7(), 9);
        assert_eq!(book.available(&"a".into()), 90);
        book.try_hold(ids("a").holder(), &"r2".into(), 90, Utc::now())
            .unwrap();
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
        book.try_hold(ids("a").holder(), &"r1".into(), 60, Utc::now())
            .unwrap();
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
            (&[], &Spends::new()),
            &Applied {
                ids: HashSet::new(),
                asked: HashSet::new(),
            },
        );
        book.try_hold(ids("a").holder(), &"r1".into(), 60, Utc::now())
            .unwrap();
        let (_tx, rx) = oneshot::channel();
        book.queued(&"r1".into(), routed, rx);
        book.settled(&"r1".into(), 10, settled, 0);
        assert_eq!(book.available(&"a".into()), 90);
        // The hold applied; the settlement was not asked about: counted cautiously.
        book.install_applied(
            HashMap::from([("a".to_string(), 40)]),
            (&[], &Spends::new()),
            &Applied {
                ids: HashSet::from([routed]),
                asked: HashSet::new(),
            },
        );
        assert_eq!(book.available(&"a".into()), 40);
        // Asked and not applied: the unused part of the hold comes back.
        book.install_applied(
            HashMap::from([("a".to_string(), 40)]),
            (&[], &Spends::new()),
            &Applied {
                ids: HashSet::new(),
                asked: HashSet::from([settled]),
            },
        );
        assert_eq!(book.available(&"a".into()), 90);
        book.install_applied(
            HashMap::from([("a".to_string(), 90)]),
            (&[], &Spends::new()),
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
        book.try_hold(ids("a").holder(), &"r1".into(), 30, Utc::now())
            .unwrap();
        let (tx, rx) = oneshot::channel::<Result<u64, LogError>>();
        book.queued(&"r1".into(), Uuid::now_v7(), rx);
        drop(tx);
        book.apply_snapshot(HashMap::from([("a".to_string(), 100)]), 1);
        assert_eq!(book.available(&"a".into()), 100);
    }

    fn budget(id: &str, scope: SpendScope, scope_id: &str, limit: i64, period: &str) -> Budget {
        Budget {
            id: id.into(),
            account_id: "a".into(),
            scope,
            scope_id: scope_id.into(),
            limit,
            soft_limit: None,
            period: crate::metering::budget::Period::parse(period).unwrap(),
            tz: crate::metering::budget::timezone("America/New_York").unwrap(),
            crossed: None,
        }
    }

    fn at(rfc3339: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(rfc3339).unwrap().to_utc()
    }

    fn over(refused: Result<Held, Refused>) -> String {
        match refused {
            Err(Refused::OverBudget(o)) => o.budget_id,
            other => panic!("expected a budget refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_key_a_project_and_an_account_budget_each_refuse_on_their_own() {
        let now = at("2026-12-03T12:00:00Z");
        let book = book_with("a", 1_000);
        book.set_budgets(vec![
            budget("bud_key", SpendScope::Key, "a-k", 100, "total"),
            budget("bud_project", SpendScope::Project, "a-p", 200, "month"),
            budget("bud_account", SpendScope::Account, "a", 300, "week"),
        ]);
        let a = ids("a");
        book.try_hold(a.holder(), &"r1".into(), 100, now).unwrap();
        // The key's budget is spent; its project and account have room.
        assert_eq!(
            over(book.try_hold(a.holder(), &"r2".into(), 1, now)),
            "bud_key"
        );
        // Another key of the project passes the key budget but not the project's.
        let other_key = Ids("a".into(), "a-p".into(), "a-k2".into());
        book.try_hold(other_key.holder(), &"r3".into(), 100, now)
            .unwrap();
        assert_eq!(
            over(book.try_hold(other_key.holder(), &"r4".into(), 1, now)),
            "bud_project"
        );
        // A key of another project of the account runs into the account's budget.
        let other_project = Ids("a".into(), "a-p2".into(), "a-k3".into());
        book.try_hold(other_project.holder(), &"r5".into(), 100, now)
            .unwrap();
        assert_eq!(
            over(book.try_hold(other_project.holder(), &"r6".into(), 1, now)),
            "bud_account"
        );
        // A refused hold takes nothing; a cancelled one gives its room back.
        assert_eq!(book.available(&"a".into()), 700);
        book.cancel(&"r1".into());
        book.try_hold(a.holder(), &"r7".into(), 100, now).unwrap();
    }

    #[test]
    fn a_day_budget_in_new_york_resets_at_local_midnight() {
        let book = book_with("a", 1_000);
        book.set_budgets(vec![budget("bud_day", SpendScope::Key, "a-k", 100, "day")]);
        let a = ids("a");
        // 23:30 on 2 December in New York: the ledger says the day spent 90 and holds 0.
        let evening = at("2026-12-03T04:30:00Z");
        let queries = book.spend_queries(evening);
        assert_eq!(
            queries[0].since,
            Some(at("2026-12-02T05:00:00Z").timestamp_micros())
        );
        book.install_applied(
            HashMap::from([("a".to_string(), 1_000)]),
            (
                &queries,
                &Spends::from([(
                    "bud_day".to_string(),
                    Spend {
                        settled: 90,
                        held: 0,
                    },
                )]),
            ),
            &Applied {
                ids: HashSet::new(),
                asked: HashSet::new(),
            },
        );
        book.try_hold(a.holder(), &"r1".into(), 10, evening)
            .unwrap();
        assert_eq!(
            over(book.try_hold(a.holder(), &"r2".into(), 1, at("2026-12-03T04:59:59Z"))),
            "bud_day"
        );
        // Local midnight: the day starts again; only the hold still open (10) counts.
        let midnight = at("2026-12-03T05:00:00Z");
        book.try_hold(a.holder(), &"r3".into(), 90, midnight)
            .unwrap();
        assert_eq!(
            over(book.try_hold(a.holder(), &"r4".into(), 1, midnight)),
            "bud_day"
        );
        // The next snapshot asks about the new day.
        assert_eq!(
            book.spend_queries(midnight)[0].since,
            Some(midnight.timestamp_micros())
        );
    }

    #[test]
    fn a_soft_limit_is_crossed_once_per_period() {
        let book = book_with("a", 1_000);
        let mut b = budget("bud_soft", SpendScope::Account, "a", 100, "day");
        b.soft_limit = Some(50);
        book.set_budgets(vec![b.clone()]);
        let a = ids("a");
        let now = at("2026-12-03T12:00:00Z");
        let held = book.try_hold(a.holder(), &"r1".into(), 40, now).unwrap();
        assert_eq!(held, Held::default());
        let held = book.try_hold(a.holder(), &"r2".into(), 20, now).unwrap();
        assert_eq!(held.budget_remaining, Some(40));
        assert_eq!(held.crossings.len(), 1);
        assert_eq!(held.crossings[0].used, 60);
        assert_eq!(
            held.crossings[0].period_start,
            at("2026-12-03T05:00:00Z").timestamp_micros()
        );
        let held = book.try_hold(a.holder(), &"r3".into(), 10, now).unwrap();
        assert_eq!(held.budget_remaining, Some(30));
        assert!(held.crossings.is_empty());
        // Reinstalling the budget from a read model that has not recorded the crossing yet
        // does not forget it.
        book.set_budgets(vec![b]);
        assert!(
            book.try_hold(a.holder(), &"r4".into(), 1, now)
                .unwrap()
                .crossings
                .is_empty()
        );
        // The next day crosses again (the 11 still held count in it).
        book.cancel(&"r1".into());
        book.cancel(&"r2".into());
        let tomorrow = at("2026-12-04T12:00:00Z");
        let held = book
            .try_hold(a.holder(), &"r5".into(), 45, tomorrow)
            .unwrap();
        assert_eq!(held.crossings.len(), 1);
        assert_eq!(held.crossings[0].used, 56);
        assert_eq!(held.budget_remaining, Some(44));
    }

    /// What each scope's pending requests take, counted from scratch.
    fn recounted(book: &CreditBook) -> [HashMap<String, i64>; 3] {
        let b = book.book.lock().unwrap();
        let mut totals: [HashMap<String, i64>; 3] = Default::default();
        for p in b.pending.values() {
            add_to_scopes(&mut totals, &p.scopes, p.contribution());
        }
        totals
    }

    #[test]
    fn the_pending_totals_kept_step_by_step_equal_a_recount() {
        for reflection in [Reflection::LogPosition, Reflection::AppliedEvent] {
            let book = CreditBook::with_reflection(reflection);
            let accounts = ["a", "b", "c"];
            book.apply_snapshot(
                accounts
                    .iter()
                    .map(|a| (a.to_string(), 1_000_000))
                    .collect(),
                0,
            );
            let mut seed = 0x2545_f491_u64;
            let mut next = move || {
                seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                seed >> 33
            };
            let mut position = 0u64;
            let mut open: Vec<(RequestId, Uuid, Option<Uuid>)> = Vec::new();
            let mut applied: HashSet<Uuid> = HashSet::new();
            for step in 0..600 {
                match next() % 5 {
                    0 | 1 => {
                        let account = accounts[(next() % 3) as usize];
                        let id: RequestId = format!("r{step}").as_str().into();
                        let amount = 1 + (next() % 500) as i64;
                        if book
                            .try_hold(ids(account).holder(), &id, amount, Utc::now())
                            .is_ok()
                        {
                            let routed = Uuid::now_v7();
                            let (tx, rx) = oneshot::channel();
                            book.queued(&id, routed, rx);
                            position += 1;
                            tx.send(Ok(position)).unwrap();
                            open.push((id, routed, None));
                        }
                    }
                    2 if !open.is_empty() => {
                        let i = (next() as usize) % open.len();
                        if open[i].2.is_none() {
                            let settled = Uuid::now_v7();
                            position += 1;
                            book.settled(&open[i].0, (next() % 300) as i64, settled, position);
                            open[i].2 = Some(settled);
                        }
                    }
                    3 if !open.is_empty() => {
                        let (id, ..) = open.swap_remove((next() as usize) % open.len());
                        book.cancel(&id);
                    }
                    _ => {
                        // The ledger caught up with part of what was queued.
                        let upto = position.saturating_sub(next() % 8);
                        for (_, routed, settled) in &open {
                            if next() % 2 == 0 {
                                applied.insert(*routed);
                                applied.extend(settled);
                            }
                        }
                        let available = accounts
                            .iter()
                            .map(|a| (a.to_string(), 1_000_000 - (next() % 1_000) as i64))
                            .collect();
                        match reflection {
                            Reflection::LogPosition => book.apply_snapshot(available, upto + 1),
                            Reflection::AppliedEvent => book.install_applied(
                                available,
                                (&[], &Spends::new()),
                                &Applied {
                                    ids: applied.clone(),
                                    asked: open.iter().filter_map(|o| o.2).collect(),
                                },
                            ),
                        }
                    }
                }
                let kept = book.book.lock().unwrap().pending_by.clone();
                assert_eq!(kept, recounted(&book), "{reflection:?}, step {step}");
            }
        }
    }
}
