//! A circuit breaker per deployment: it opens after consecutive failures or a high error rate
//! over a recent window, rejects attempts while open, lets one probe through after the
//! cool-down (half-open), and closes again when the probe succeeds.
//!
//! State sits behind a short `std::sync::Mutex`, never held across an await.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::BreakerConfig;

/// What the breaker says about an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Go ahead.
    Allowed,
    /// Go ahead: this is the half-open probe.
    Probe,
    /// Skip this deployment; it is open.
    Rejected,
}

/// The breaker's state, for metrics and `/readyz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Attempts flow.
    Closed,
    /// Attempts are rejected until the cool-down ends.
    Open,
    /// One probe is in flight or allowed.
    HalfOpen,
}

impl BreakerState {
    /// `closed`, `open` or `half_open`.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }

    /// As the `lumina_breaker_state` gauge shows it: 0 closed, 1 half-open, 2 open.
    pub fn gauge(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::HalfOpen => 1.0,
            BreakerState::Open => 2.0,
        }
    }
}

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    consecutive_failures: u32,
    recent: VecDeque<bool>,
    opened_at: Option<Instant>,
    probe_in_flight: bool,
}

/// One deployment's breaker.
#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    inner: Mutex<Inner>,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Breaker {
        Breaker {
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                consecutive_failures: 0,
                recent: VecDeque::with_capacity(config.window as usize),
                opened_at: None,
                probe_in_flight: false,
            }),
            config,
        }
    }

    fn cooldown(&self) -> Duration {
        Duration::from_millis(self.config.cooldown_ms)
    }

    /// Asks to attempt this deployment now.
    pub fn admit(&self) -> Admission {
        let Ok(mut s) = self.inner.lock() else {
            return Admission::Allowed;
        };
        match s.state {
            BreakerState::Closed => Admission::Allowed,
            BreakerState::Open => {
                if s.opened_at.is_some_and(|t| t.elapsed() >= self.cooldown()) {
                    s.state = BreakerState::HalfOpen;
                    s.probe_in_flight = true;
                    Admission::Probe
                } else {
                    Admission::Rejected
                }
            }
            BreakerState::HalfOpen => {
                if s.probe_in_flight {
                    Admission::Rejected
                } else {
                    s.probe_in_flight = true;
                    Admission::Probe
                }
            }
        }
    }

    /// Records an attempt's outcome (client errors are not recorded: they say nothing about
    /// the deployment's health).
    pub fn record(&self, success: bool) {
        let Ok(mut s) = self.inner.lock() else {
            return;
        };
        if s.recent.len() == self.config.window as usize {
            s.recent.pop_front();
        }
        s.recent.push_back(success);
        match s.state {
            BreakerState::HalfOpen => {
                s.probe_in_flight = false;
                if success {
                    s.state = BreakerState::Closed;
                    s.consecutive_failures = 0;
                    s.recent.clear();
                    s.opened_at = None;
                } else {
                    s.state = BreakerState::Open;
                    s.opened_at = Some(Instant::now());
                }
            }
            BreakerState::Closed | BreakerState::Open => {
                if success {
                    s.consecutive_failures = 0;
                    return;
                }
                s.consecutive_failures += 1;
                let failures = s.recent.iter().filter(|ok| !**ok).count();
                let rate_trips = s.recent.len() >= self.config.min_requests as usize
                    && failures as f64 / s.recent.len() as f64 >= self.config.error_rate;
                if s.consecutive_failures >= self.config.consecutive_failures || rate_trips {
                    s.state = BreakerState::Open;
                    s.opened_at = Some(Instant::now());
                }
            }
        }
    }

    /// Gives back a probe that was admitted but not attempted (the request ended first).
    pub fn release_probe(&self) {
        if let Ok(mut s) = self.inner.lock()
            && s.state == BreakerState::HalfOpen
        {
            s.probe_in_flight = false;
        }
    }

    /// The current state.
    pub fn state(&self) -> BreakerState {
        self.inner.lock().map_or(BreakerState::Closed, |s| s.state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(cooldown_ms: u64) -> Breaker {
        Breaker::new(BreakerConfig {
            consecutive_failures: 3,
            error_rate: 0.5,
            min_requests: 10,
            window: 10,
            cooldown_ms,
        })
    }

    #[test]
    fn opens_after_consecutive_failures_and_closes_after_a_good_probe() {
        let b = breaker(20);
        for _ in 0..2 {
            assert_eq!(b.admit(), Admission::Allowed);
            b.record(false);
        }
        assert_eq!(b.state(), BreakerState::Closed);
        b.record(false);
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.admit(), Admission::Rejected);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(b.admit(), Admission::Probe);
        assert_eq!(b.admit(), Admission::Rejected, "only one probe at a time");
        b.record(true);
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.admit(), Admission::Allowed);
    }

    #[test]
    fn a_failed_probe_reopens() {
        let b = breaker(10);
        for _ in 0..3 {
            b.record(false);
        }
        std::thread::sleep(Duration::from_millis(15));
        assert_eq!(b.admit(), Admission::Probe);
        b.record(false);
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.admit(), Admission::Rejected);
    }

    #[test]
    fn opens_on_error_rate_without_consecutive_failures() {
        let b = breaker(1000);
        for i in 0..10 {
            b.record(i % 2 == 0);
        }
        assert_eq!(b.state(), BreakerState::Open);
    }
}
