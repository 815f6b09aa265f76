//! Per-key requests-per-minute and tokens-per-minute limits, enforced in memory with
//! `governor` (GCRA: a full minute's quota may burst, then it refills evenly), and the count of
//! a key's requests in flight against its `max_parallel_requests`. The limiter of a key is
//! rebuilt when its limits change (`LimitsChanged`). In distributed mode rpm and tpm are
//! counted in buckets every gateway shares instead ([`crate::metering::shared_limits`]).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use lumina_schemas::ids::KeyId;

use crate::auth::KeyIdentity;
use crate::metering::shared_limits::SharedLimits;

type Limiter = RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;

struct Window {
    limit: u32,
    limiter: Limiter,
}

impl Window {
    fn new(limit: i64) -> Option<Window> {
        let limit = NonZeroU32::new(u32::try_from(limit).ok()?)?;
        Some(Window {
            limit: limit.get(),
            limiter: RateLimiter::direct(Quota::per_minute(limit)).with_middleware(),
        })
    }

    /// Time for one unit to refill.
    fn period(&self) -> Duration {
        Duration::from_secs(60) / self.limit
    }
}

struct KeyWindows {
    rpm_limit: Option<i64>,
    tpm_limit: Option<i64>,
    requests: Option<Window>,
    tokens: Option<Window>,
}

/// One limit's state after a check, for the `x-ratelimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitState {
    /// The limit per minute.
    pub limit: u32,
    /// What is left now.
    pub remaining: u32,
    /// Until the limit is back at full.
    pub reset: Duration,
}

/// Both limits' state after an admitted request, and its budgets' once one passed its soft
/// limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitStatus {
    /// Requests per minute, when limited.
    pub requests: Option<LimitState>,
    /// Tokens per minute, when limited.
    pub tokens: Option<LimitState>,
    /// What the tightest budget has left after the request's hold, nano-credits, once a
    /// budget in force reached its soft limit.
    pub budget_remaining: Option<i64>,
}

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitKind {
    /// Requests per minute.
    Requests,
    /// Tokens per minute.
    Tokens,
}

/// A refused request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitExceeded {
    /// Which limit.
    pub kind: LimitKind,
    /// How long until a retry can pass.
    pub retry_after: Duration,
    /// State of both limits, for the headers.
    pub status: LimitStatus,
    /// For people.
    pub message: String,
}

/// Limiters of every key that has limits.
#[derive(Default)]
pub struct Limits {
    keys: Mutex<HashMap<KeyId, Arc<Mutex<KeyWindows>>>>,
    in_flight: Mutex<HashMap<KeyId, Arc<AtomicU64>>>,
    /// In distributed mode: rpm and tpm kept in buckets every gateway shares.
    shared: Option<SharedLimits>,
}

/// A request counted among its key's requests in flight until it is dropped.
pub struct InFlight(Arc<AtomicU64>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A request over its key's `max_parallel_requests`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyInFlight {
    /// The limit.
    pub limit: u64,
}

fn state_after(window: &Window, remaining: u32) -> LimitState {
    LimitState {
        limit: window.limit,
        remaining,
        reset: window.period() * (window.limit - remaining.min(window.limit)),
    }
}

impl Limits {
    /// No limiters yet; rpm and tpm counted in this process.
    pub fn new() -> Limits {
        Limits::default()
    }

    /// rpm and tpm counted in buckets in `db` that every gateway on it shares.
    pub fn shared(db: lumina_eventlog::Database) -> Limits {
        Limits {
            shared: Some(SharedLimits::new(db)),
            ..Limits::default()
        }
    }

    /// Distributed mode: writes this gateway's (`instance`) requests in flight per key and
    /// reads the other gateways', which [`Limits::enter`] then counts too. Keys with nothing in
    /// flight are written once more as 0 and then forgotten.
    pub async fn exchange(&self, instance: &str) -> Result<(), sqlx::Error> {
        let Some(shared) = &self.shared else {
            return Ok(());
        };
        let local: Vec<(KeyId, u64)> = match self.in_flight.lock() {
            Ok(mut map) => {
                let counts = map
                    .iter()
                    .map(|(k, n)| (k.clone(), n.load(Ordering::Acquire)))
                    .collect();
                // Idle keys whose count nobody else holds leave the table next time round.
                map.retain(|_, n| Arc::strong_count(n) > 1 || n.load(Ordering::Acquire) > 0);
                counts
            }
            Err(_) => Vec::new(),
        };
        shared.exchange(instance, &local).await
    }

    /// Counts a request of `key` needing about `tokens` against its rpm and tpm: in the
    /// shared buckets in distributed mode, in memory otherwise ([`Limits::check`]).
    pub async fn admit(
        &self,
        key: &KeyIdentity,
        tokens: u64,
    ) -> Result<LimitStatus, LimitExceeded> {
        let Some(shared) = &self.shared else {
            return self.check(key, tokens);
        };
        let mut status = LimitStatus::default();
        if let Some(rpm) = key.rpm {
            match shared.spend(&key.key_id, LimitKind::Requests, rpm, 1).await {
                Ok(state) => status.requests = Some(state),
                Err(short) => {
                    status.requests = Some(short.state);
                    return Err(LimitExceeded {
                        kind: LimitKind::Requests,
                        retry_after: short.retry_after,
                        status,
                        message: format!(
                            "Rate limit reached for requests: limit {rpm} per minute. Please try again in {}.",
                            format_reset(short.retry_after)
                        ),
                    });
                }
            }
        }
        if let Some(tpm) = key.tpm {
            let cost = i64::try_from(tokens.max(1)).unwrap_or(i64::MAX);
            match shared
                .spend(&key.key_id, LimitKind::Tokens, tpm, cost)
                .await
            {
                Ok(state) => status.tokens = Some(state),
                Err(short) => {
                    status.tokens = Some(short.state);
                    let message = if cost > tpm {
                        format!(
                            "This request needs about {tokens} tokens, more than the key's limit of {tpm} tokens per minute. Lower max_tokens or the prompt."
                        )
                    } else {
                        format!(
                            "Rate limit reached for tokens: limit {tpm} per minute, this request needs about {tokens}. Please try again in {}.",
                            format_reset(short.retry_after)
                        )
                    };
                    return Err(LimitExceeded {
                        kind: LimitKind::Tokens,
                        retry_after: short.retry_after,
                        status,
                        message,
                    });
                }
            }
        }
        Ok(status)
    }

    fn windows(&self, key: &KeyIdentity) -> Option<Arc<Mutex<KeyWindows>>> {
        if key.rpm.is_none() && key.tpm.is_none() {
            return None;
        }
        let mut keys = self.keys.lock().ok()?;
        let entry = keys.entry(key.key_id.clone()).or_insert_with(|| {
            Arc::new(Mutex::new(KeyWindows {
                rpm_limit: None,
                tpm_limit: None,
                requests: None,
                tokens: None,
            }))
        });
        Some(entry.clone())
    }

    /// Counts one more request of `key` in flight, or refuses it when `max_parallel_requests`
    /// are already; `None` for a key without that limit.
    pub fn enter(&self, key: &KeyIdentity) -> Result<Option<InFlight>, TooManyInFlight> {
        let Some(limit) = key.max_parallel_requests else {
            return Ok(None);
        };
        let counter = match self.in_flight.lock() {
            Ok(mut map) => map.entry(key.key_id.clone()).or_default().clone(),
            Err(_) => return Ok(None),
        };
        let elsewhere = self
            .shared
            .as_ref()
            .map_or(0, |s| s.remote_in_flight(&key.key_id));
        let entered = counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n.saturating_add(elsewhere) < limit).then_some(n + 1)
        });
        match entered {
            Ok(_) => Ok(Some(InFlight(counter))),
            Err(_) => Err(TooManyInFlight { limit }),
        }
    }

    /// Counts one request of `tokens` estimated tokens against `key`'s limits.
    pub fn check(&self, key: &KeyIdentity, tokens: u64) -> Result<LimitStatus, LimitExceeded> {
        let Some(windows) = self.windows(key) else {
            return Ok(LimitStatus::default());
        };
        let Ok(mut w) = windows.lock() else {
            return Ok(LimitStatus::default());
        };
        if w.rpm_limit != key.rpm {
            w.rpm_limit = key.rpm;
            w.requests = key.rpm.and_then(Window::new);
        }
        if w.tpm_limit != key.tpm {
            w.tpm_limit = key.tpm;
            w.tokens = key.tpm.and_then(Window::new);
        }
        let clock = DefaultClock::default();
        let mut status = LimitStatus {
            requests: w.requests.as_ref().map(|r| state_after(r, r.limit)),
            tokens: w.tokens.as_ref().map(|t| state_after(t, t.limit)),
            budget_remaining: None,
        };
        if let Some(r) = &w.requests {
            match r.limiter.check() {
                Ok(snapshot) => {
                    status.requests = Some(state_after(r, snapshot.remaining_burst_capacity()))
                }
                Err(not_until) => {
                    let retry_after = not_until.wait_time_from(clock.now());
                    status.requests = Some(LimitState {
                        limit: r.limit,
                        remaining: 0,
                        reset: r.period() * r.limit,
                    });
                    return Err(LimitExceeded {
                        kind: LimitKind::Requests,
                        retry_after,
                        status,
                        message: format!(
                            "Rate limit reached for requests: limit {} per minute. Please try again in {}.",
                            r.limit,
                            format_reset(retry_after)
                        ),
                    });
                }
            }
        }
        if let Some(t) = &w.tokens {
            let n = u32::try_from(tokens.max(1)).unwrap_or(u32::MAX);
            let Some(n) = NonZeroU32::new(n) else {
                return Ok(status);
            };
            match t.limiter.check_n(n) {
                Ok(Ok(snapshot)) => {
                    status.tokens = Some(state_after(t, snapshot.remaining_burst_capacity()))
                }
                Ok(Err(not_until)) => {
                    let retry_after = not_until.wait_time_from(clock.now());
                    status.tokens = Some(LimitState {
                        limit: t.limit,
                        remaining: 0,
                        reset: retry_after,
                    });
                    return Err(LimitExceeded {
                        kind: LimitKind::Tokens,
                        retry_after,
                        status,
                        message: format!(
                            "Rate limit reached for tokens: limit {} per minute, this request needs about {tokens}. Please try again in {}.",
                            t.limit,
                            format_reset(retry_after)
                        ),
                    });
                }
                Err(_) => {
                    status.tokens = Some(state_after(t, 0));
                    return Err(LimitExceeded {
                        kind: LimitKind::Tokens,
                        retry_after: Duration::from_secs(60),
                        status,
                        message: format!(
                            "This request needs about {tokens} tokens, more than the key's limit of {} tokens per minute. Lower max_tokens or the prompt.",
                            t.limit
                        ),
                    });
                }
            }
        }
        Ok(status)
    }
}

/// A duration the way OpenAI's reset headers write it: `120ms`, `1.5s`, `6m0s`.
pub fn format_reset(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        let s = format!("{:.3}", d.as_secs_f64());
        format!("{}s", s.trim_end_matches('0').trim_end_matches('.'))
    } else {
        format!("{}m{}s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

/// Seconds for `retry-after`, rounded up.
pub fn retry_after_secs(d: Duration) -> u64 {
    d.as_millis().div_ceil(1000).max(1) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(rpm: Option<i64>, tpm: Option<i64>) -> KeyIdentity {
        KeyIdentity {
            key_id: "key_1".into(),
            account_id: "acct_1".into(),
            project_id: "proj_1".into(),
            rpm,
            tpm,
            store_content: false,
            prefer: None,
            fusion_barred: false,
            expires_at: None,
            paths: None,
            surfaces: None,
            read_only: false,
            max_parallel_requests: None,
        }
    }

    #[test]
    fn requests_beyond_the_minute_quota_are_refused_with_a_retry_time() {
        let limits = Limits::new();
        let k = key(Some(3), None);
        for remaining in [2, 1, 0] {
            let s = limits.check(&k, 10).unwrap();
            assert_eq!(s.requests.unwrap().remaining, remaining);
        }
        let e = limits.check(&k, 10).unwrap_err();
        assert_eq!(e.kind, LimitKind::Requests);
        assert!(
            e.retry_after > Duration::from_secs(15) && e.retry_after <= Duration::from_secs(20),
            "{:?}",
            e.retry_after
        );
    }

    #[test]
    fn tokens_beyond_the_quota_are_refused() {
        let limits = Limits::new();
        let k = key(None, Some(1000));
        assert_eq!(
            limits.check(&k, 600).unwrap().tokens.unwrap().remaining,
            400
        );
        assert_eq!(limits.check(&k, 600).unwrap_err().kind, LimitKind::Tokens);
        let e = limits.check(&k, 5000).unwrap_err();
        assert!(
            e.message.contains("more than the key's limit"),
            "{}",
            e.message
        );
    }

    #[test]
    fn keys_without_limits_are_never_refused_and_changed_limits_apply() {
        let limits = Limits::new();
        for _ in 0..1000 {
            assert_eq!(
                limits.check(&key(None, None), 100).unwrap(),
                LimitStatus::default()
            );
        }
        limits.check(&key(Some(1), None), 1).unwrap();
        assert!(limits.check(&key(Some(1), None), 1).is_err());
        limits.check(&key(Some(100), None), 1).unwrap();
    }

    #[test]
    fn resets_are_written_like_openai() {
        assert_eq!(format_reset(Duration::from_millis(120)), "120ms");
        assert_eq!(format_reset(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_reset(Duration::from_secs(360)), "6m0s");
    }
}
