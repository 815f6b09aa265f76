//! Requests-per-minute and tokens-per-minute limits that hold across gateways (distributed
//! mode): one token bucket per key and limit in the shared PostgreSQL (`limit_buckets`: the
//! minute's quota may burst, then it refills evenly, as the in-memory limiter does), from which
//! each gateway leases a slice (a twentieth of the limit, or what the request needs) with one
//! `UPDATE`, and admits requests from its lease without a round trip. A lease is dropped a
//! second after it was taken, so whatever a gateway holds unused returns to nobody but cannot be
//! spent later either: every unit admitted was taken from the shared bucket within the last
//! second, and across any number of gateways a key gets at most its limit per minute plus one
//! second of refill (`limit / 60`) per gateway.
//!
//! `max_parallel_requests` across gateways: every [`EXCHANGE_EVERY`] each gateway writes its
//! requests in flight per key (`limit_in_flight`) and reads the others'; it admits while its
//! own count plus theirs is under the limit. Bound: beyond the limit, at most what the other
//! gateways admitted since their last write (one exchange interval, 200 ms).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lumina_eventlog::Database;
use lumina_schemas::ids::KeyId;
use sqlx::Row;

use crate::metering::limits::{LimitKind, LimitState};

/// How long a lease may be spent from.
const LEASE_LIFETIME: Duration = Duration::from_secs(1);

/// A lease is this fraction of the limit (at least what the request needs).
const LEASE_DIVISOR: i64 = 20;

/// Micro-units per unit: the bucket refills by fractions of a request or token.
const MICRO: i64 = 1_000_000;

/// What a gateway holds of one key's bucket.
#[derive(Debug, Clone, Copy)]
struct Lease {
    units: i64,
    taken: Instant,
    /// The shared bucket's level after the last take, whole units.
    bucket: i64,
}

/// The shared buckets and this gateway's leases of them, and the other gateways' requests in
/// flight.
pub struct SharedLimits {
    db: Database,
    leases: Mutex<HashMap<(KeyId, LimitKind), Lease>>,
    /// Per key, the others' requests in flight as of the last exchange.
    remote_in_flight: Mutex<HashMap<KeyId, u64>>,
}

/// How often gateways exchange their requests in flight.
pub const EXCHANGE_EVERY: Duration = Duration::from_millis(200);

/// A gateway's count is the others' until it is this old (the gateway stopped writing).
const IN_FLIGHT_FRESH: Duration = Duration::from_secs(2);

/// A limit refused a request: what it has, for the headers and `retry-after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Short {
    /// The limit's state.
    pub state: LimitState,
    /// Until enough refills for the request.
    pub retry_after: Duration,
}

fn kind_name(kind: LimitKind) -> &'static str {
    match kind {
        LimitKind::Requests => "requests",
        LimitKind::Tokens => "tokens",
    }
}

/// The limit's state with `remaining` units left.
fn state(limit: i64, remaining: i64) -> LimitState {
    let limit_u = u32::try_from(limit).unwrap_or(u32::MAX);
    let remaining = remaining.clamp(0, limit);
    LimitState {
        limit: limit_u,
        remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
        reset: refill_time(limit, limit - remaining),
    }
}

/// How long `units` take to refill at `limit` per minute.
fn refill_time(limit: i64, units: i64) -> Duration {
    let limit = u64::try_from(limit.max(1)).unwrap_or(u64::MAX);
    let units = u64::try_from(units.max(0)).unwrap_or(0);
    Duration::from_micros(units.saturating_mul(60_000_000) / limit)
}

impl SharedLimits {
    /// Buckets in `db` (PostgreSQL, shared by every gateway).
    pub fn new(db: Database) -> SharedLimits {
        SharedLimits {
            db,
            leases: Mutex::new(HashMap::new()),
            remote_in_flight: Mutex::new(HashMap::new()),
        }
    }

    /// The other gateways' requests of `key` in flight, as of the last exchange.
    pub fn remote_in_flight(&self, key: &KeyId) -> u64 {
        self.remote_in_flight
            .lock()
            .map_or(0, |m| m.get(key).copied().unwrap_or(0))
    }

    /// Writes this gateway's (`instance`) requests in flight per key and reads the others'.
    pub async fn exchange(
        &self,
        instance: &str,
        local: &[(KeyId, u64)],
    ) -> Result<(), sqlx::Error> {
        let now = lumina_schemas::now_micros();
        for (key, n) in local {
            sqlx::query(
                "INSERT INTO limit_in_flight (instance, key_id, n, updated_at)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (instance, key_id) DO UPDATE SET n = excluded.n,
                     updated_at = excluded.updated_at",
            )
            .bind(instance)
            .bind(key.as_str())
            .bind(i64::try_from(*n).unwrap_or(i64::MAX))
            .bind(now)
            .execute(&self.db.pool)
            .await?;
        }
        let fresh = now - i64::try_from(IN_FLIGHT_FRESH.as_micros()).unwrap_or(i64::MAX);
        let rows = sqlx::query(
            "SELECT key_id, CAST(SUM(n) AS BIGINT) FROM limit_in_flight
             WHERE instance <> $1 AND updated_at > $2 AND n > 0 GROUP BY key_id",
        )
        .bind(instance)
        .bind(fresh)
        .fetch_all(&self.db.pool)
        .await?;
        let mut remote = HashMap::with_capacity(rows.len());
        for row in &rows {
            let key: String = row.try_get(0)?;
            let n: i64 = row.try_get(1)?;
            remote.insert(KeyId::from(key), u64::try_from(n).unwrap_or(0));
        }
        if let Ok(mut m) = self.remote_in_flight.lock() {
            *m = remote;
        }
        Ok(())
    }

    /// Spends `cost` units of `key`'s `kind` limit (`limit` per minute) from this gateway's
    /// lease, taking a new lease from the shared bucket when it runs short.
    pub async fn spend(
        &self,
        key: &KeyId,
        kind: LimitKind,
        limit: i64,
        cost: i64,
    ) -> Result<LimitState, Short> {
        let slot = (key.clone(), kind);
        let held = self.spend_leased(&slot, cost);
        let (have, bucket) = match held {
            Ok(state_after) => return Ok(state(limit, state_after)),
            Err(have) => have,
        };
        if cost > limit {
            return Err(Short {
                state: state(limit, have + bucket),
                retry_after: Duration::from_secs(60),
            });
        }
        let want = (cost - have).max(limit.saturating_add(LEASE_DIVISOR - 1) / LEASE_DIVISOR);
        let taken = match self.take(key, kind, limit, want).await {
            Ok(taken) => taken,
            Err(e) => {
                // The shared database is away: fall back to what this gateway holds, so a
                // database outage refuses rather than admits without a limit.
                tracing::warn!(error = %e, "cannot lease from the shared rate limit");
                return Err(Short {
                    state: state(limit, have),
                    retry_after: Duration::from_secs(1),
                });
            }
        };
        let Ok(mut leases) = self.leases.lock() else {
            return Err(Short {
                state: state(limit, 0),
                retry_after: Duration::from_secs(1),
            });
        };
        let lease = leases.entry(slot).or_insert(Lease {
            units: 0,
            taken: Instant::now(),
            bucket: 0,
        });
        if lease.taken.elapsed() >= LEASE_LIFETIME {
            lease.units = 0;
        }
        lease.units += taken.granted;
        lease.taken = Instant::now();
        lease.bucket = taken.level;
        if lease.units >= cost {
            lease.units -= cost;
            Ok(state(limit, lease.units + lease.bucket))
        } else {
            Err(Short {
                state: state(limit, lease.units + lease.bucket),
                retry_after: refill_time(limit, cost - lease.units - lease.bucket),
            })
        }
    }

    /// Spends from the lease when it covers `cost`: the units left (lease and bucket);
    /// otherwise what the lease has and the bucket's last level.
    fn spend_leased(&self, slot: &(KeyId, LimitKind), cost: i64) -> Result<i64, (i64, i64)> {
        let Ok(mut leases) = self.leases.lock() else {
            return Err((0, 0));
        };
        let Some(lease) = leases.get_mut(slot) else {
            return Err((0, 0));
        };
        if lease.taken.elapsed() >= LEASE_LIFETIME {
            lease.units = 0;
        }
        if lease.units >= cost {
            lease.units -= cost;
            Ok(lease.units + lease.bucket)
        } else {
            Err((lease.units, lease.bucket))
        }
    }

    /// Takes up to `want` whole units from the shared bucket (refilled for the time since it
    /// was last touched, at most full), creating it full the first time.
    async fn take(
        &self,
        key: &KeyId,
        kind: LimitKind,
        limit: i64,
        want: i64,
    ) -> Result<Taken, sqlx::Error> {
        let cap = limit.saturating_mul(MICRO);
        for _ in 0..2 {
            let now = lumina_schemas::now_micros();
            let row = sqlx::query(
                "UPDATE limit_buckets b SET level_micro = r.level - r.granted * 1000000,
                        updated_at = $4
                 FROM (SELECT key_id, kind, level, LEAST($5, FLOOR(level / 1000000)) AS granted
                       FROM (SELECT key_id, kind,
                                    LEAST(CAST($3 AS NUMERIC), level_micro
                                          + CAST(LEAST(GREATEST($4 - updated_at, 0), 60000000) AS NUMERIC)
                                            * $3 / 60000000) AS level
                             FROM limit_buckets WHERE key_id = $1 AND kind = $2 FOR UPDATE) l) r
                 WHERE b.key_id = r.key_id AND b.kind = r.kind
                 RETURNING CAST(r.granted AS BIGINT), CAST(FLOOR((r.level - r.granted * 1000000) / 1000000) AS BIGINT)",
            )
            .bind(key.as_str())
            .bind(kind_name(kind))
            .bind(cap)
            .bind(now)
            .bind(want)
            .fetch_optional(&self.db.pool)
            .await?;
            if let Some(row) = row {
                return Ok(Taken {
                    granted: row.try_get(0)?,
                    level: row.try_get(1)?,
                });
            }
            sqlx::query(
                "INSERT INTO limit_buckets (key_id, kind, level_micro, updated_at)
                 VALUES ($1, $2, $3, $4) ON CONFLICT (key_id, kind) DO NOTHING",
            )
            .bind(key.as_str())
            .bind(kind_name(kind))
            .bind(cap)
            .bind(now)
            .execute(&self.db.pool)
            .await?;
        }
        Ok(Taken {
            granted: 0,
            level: 0,
        })
    }
}

/// What a take from the shared bucket gave.
struct Taken {
    granted: i64,
    level: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_and_refill_times_follow_the_limit() {
        assert_eq!(refill_time(60, 1), Duration::from_secs(1));
        assert_eq!(refill_time(60, 60), Duration::from_secs(60));
        let s = state(60, 45);
        assert_eq!((s.limit, s.remaining), (60, 45));
        assert_eq!(s.reset, Duration::from_secs(15));
        assert_eq!(state(60, 90).remaining, 60);
        assert_eq!(state(60, -3).remaining, 0);
    }
}
