//! Request views: one row per request (its route decision, settlement and feedback), its
//! upstream attempts, per-minute usage rollups behind `/v1/usage`, and route statistics with
//! latency and time-to-first-token sketches (DDSketch) per path × deployment × task class.

use std::collections::{BTreeMap, HashMap};

use lumina_eventlog::ApplyError;
use lumina_schemas::{Event, Payload};
use serde::{Deserialize, Serialize};
use sketches_ddsketch::{Config, DDSketch};
use sqlx::{AnyConnection, Row};

/// Applies one request event's row effects (statistics are applied per batch).
pub async fn apply(conn: &mut AnyConnection, event: &Event) -> Result<(), ApplyError> {
    let env = &event.envelope;
    let Some(request_id) = env.request_id.as_deref() else {
        return Ok(());
    };
    match &event.payload {
        Payload::RequestRouted(r) => {
            sqlx::query(
                "INSERT INTO requests (request_id, account_id, project_id, api_key_id, requested_model,
                     path, task_class, stream, policy_version, features, scores, candidates, hold_nano,
                     prompt_tokens_estimate, max_tokens, routed_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
                 ON CONFLICT (request_id) DO UPDATE SET
                     requested_model = excluded.requested_model, path = excluded.path,
                     task_class = excluded.task_class, stream = excluded.stream,
                     policy_version = excluded.policy_version, features = excluded.features,
                     scores = excluded.scores, candidates = excluded.candidates,
                     hold_nano = excluded.hold_nano,
                     prompt_tokens_estimate = excluded.prompt_tokens_estimate,
                     max_tokens = excluded.max_tokens, routed_at = excluded.routed_at",
            )
            .bind(request_id)
            .bind(&env.account_id)
            .bind(env.project_id.as_deref())
            .bind(env.api_key_id.as_deref())
            .bind(&r.requested_model)
            .bind(&r.path)
            .bind(&r.task_class)
            .bind(i64::from(r.stream))
            .bind(r.policy_version)
            .bind(serde_json::to_string(&r.features).unwrap_or_default())
            .bind(serde_json::to_string(&r.scores).unwrap_or_default())
            .bind(serde_json::to_string(&r.candidates).unwrap_or_default())
            .bind(r.hold.as_ref().map_or(0, |h| h.amount_nano))
            .bind(r.prompt_tokens_estimate)
            .bind(r.max_tokens)
            .bind(env.occurred_at)
            .execute(&mut *conn)
            .await?;
        }
        Payload::UpstreamAttempted(a) => {
            ensure_row(conn, event, request_id).await?;
            sqlx::query(
                "INSERT INTO request_attempts (request_id, attempt, event_id, provider, deployment,
                     upstream_model, started_at, ttfb_us, duration_us, outcome, error_class,
                     http_status, fell_back)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
                 ON CONFLICT (request_id, attempt) DO NOTHING",
            )
            .bind(request_id)
            .bind(i64::from(a.attempt))
            .bind(env.event_id.to_string())
            .bind(&a.provider)
            .bind(&a.deployment)
            .bind(&a.upstream_model)
            .bind(a.started_at)
            .bind(a.ttfb_us)
            .bind(a.duration_us)
            .bind(&a.outcome)
            .bind(a.error_class.as_deref())
            .bind(a.http_status.map(i64::from))
            .bind(i64::from(a.fell_back))
            .execute(&mut *conn)
            .await?;
        }
        Payload::RequestSettled(s) => {
            ensure_row(conn, event, request_id).await?;
            sqlx::query(
                "UPDATE requests SET outcome = $1, provider = $2, deployment = $3,
                     prompt_tokens = $4, completion_tokens = $5, cached_tokens = $6,
                     reasoning_tokens = $7, usage_estimated = $8, charge_nano = $9,
                     price_table_version = $10, latency_us = $11, ttft_us = $12, attempts = $13,
                     error_class = $14, settled_at = $15
                 WHERE request_id = $16",
            )
            .bind(&s.outcome)
            .bind(s.provider.as_deref())
            .bind(s.deployment.as_deref())
            .bind(s.usage.prompt_tokens)
            .bind(s.usage.completion_tokens)
            .bind(s.usage.cached_tokens)
            .bind(s.usage.reasoning_tokens)
            .bind(i64::from(s.usage.estimated))
            .bind(s.charge_nano)
            .bind(&s.price_table_version)
            .bind(s.latency_us)
            .bind(s.ttft_us)
            .bind(i64::from(s.attempts))
            .bind(s.error_class.as_deref())
            .bind(env.occurred_at)
            .bind(request_id)
            .execute(&mut *conn)
            .await?;
            let minute = env.occurred_at.div_euclid(60_000_000) * 60;
            sqlx::query(
                "INSERT INTO usage_minutes (account_id, minute, project_id, api_key_id, path, provider,
                     input_tokens, output_tokens, cached_tokens, reasoning_tokens, requests, credits_nano)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 1, $11)
                 ON CONFLICT (account_id, minute, project_id, api_key_id, path, provider) DO UPDATE SET
                     input_tokens = usage_minutes.input_tokens + excluded.input_tokens,
                     output_tokens = usage_minutes.output_tokens + excluded.output_tokens,
                     cached_tokens = usage_minutes.cached_tokens + excluded.cached_tokens,
                     reasoning_tokens = usage_minutes.reasoning_tokens + excluded.reasoning_tokens,
                     requests = usage_minutes.requests + 1,
                     credits_nano = usage_minutes.credits_nano + excluded.credits_nano",
            )
            .bind(&env.account_id)
            .bind(minute)
            .bind(env.project_id.as_deref().unwrap_or(""))
            .bind(env.api_key_id.as_deref().unwrap_or(""))
            .bind(&s.path)
            .bind(s.provider.as_deref().unwrap_or(""))
            .bind(s.usage.prompt_tokens)
            .bind(s.usage.completion_tokens)
            .bind(s.usage.cached_tokens)
            .bind(s.usage.reasoning_tokens)
            .bind(s.charge_nano)
            .execute(&mut *conn)
            .await?;
        }
        Payload::RequestContentRecorded(c) => {
            sqlx::query(
                "INSERT INTO request_content (request_id, account_id, messages_json, answer, tool_calls_json)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (request_id) DO NOTHING",
            )
            .bind(request_id)
            .bind(&env.account_id)
            .bind(&c.messages_json)
            .bind(c.answer.as_deref())
            .bind(c.tool_calls_json.as_deref())
            .execute(&mut *conn)
            .await?;
        }
        Payload::FeedbackReceived(f) => {
            ensure_row(conn, event, request_id).await?;
            sqlx::query(
                "UPDATE requests SET feedback_score = $1, feedback_label = $2, feedback_comment = $3,
                     feedback_at = $4 WHERE request_id = $5",
            )
            .bind(f.score)
            .bind(f.label.as_deref())
            .bind(f.comment.as_deref())
            .bind(env.occurred_at)
            .bind(request_id)
            .execute(&mut *conn)
            .await?;
        }
        _ => {}
    }
    Ok(())
}

/// A row for a request whose `RequestRouted` has not been seen (it may arrive later, or was
/// lost in a crash): later facts still have somewhere to land.
async fn ensure_row(
    conn: &mut AnyConnection,
    event: &Event,
    request_id: &str,
) -> Result<(), ApplyError> {
    let env = &event.envelope;
    sqlx::query(
        "INSERT INTO requests (request_id, account_id, project_id, api_key_id)
         VALUES ($1, $2, $3, $4) ON CONFLICT (request_id) DO NOTHING",
    )
    .bind(request_id)
    .bind(&env.account_id)
    .bind(env.project_id.as_deref())
    .bind(env.api_key_id.as_deref())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Counters and sketches of one path × deployment × task class.
#[derive(Clone, Serialize, Deserialize)]
pub struct RouteStats {
    /// Settled requests.
    pub requests: i64,
    /// Completed ones.
    pub completed: i64,
    /// Failed, cut or cancelled ones.
    pub failed: i64,
    /// Sum of their charges.
    pub charge_nano: i64,
    /// Upstream attempts.
    pub attempts: i64,
    /// Attempts that failed.
    pub errors: i64,
    /// Attempts that timed out.
    pub timeouts: i64,
    /// Attempts whose failure led to a fallback.
    pub fallbacks: i64,
    /// End-to-end latency, ms.
    pub latency: DDSketch,
    /// Time to first token, ms.
    pub ttft: DDSketch,
}

impl Default for RouteStats {
    fn default() -> Self {
        RouteStats {
            requests: 0,
            completed: 0,
            failed: 0,
            charge_nano: 0,
            attempts: 0,
            errors: 0,
            timeouts: 0,
            fallbacks: 0,
            latency: DDSketch::new(Config::defaults()),
            ttft: DDSketch::new(Config::defaults()),
        }
    }
}

type StatsKey = (String, String, String);

/// Folds a batch's settlements and attempts into the route statistics: one read and one write
/// per statistics row touched.
pub async fn update_stats(conn: &mut AnyConnection, events: &[&Event]) -> Result<(), ApplyError> {
    let relevant: Vec<&&Event> = events
        .iter()
        .filter(|e| {
            matches!(
                e.payload,
                Payload::RequestSettled(_) | Payload::UpstreamAttempted(_)
            )
        })
        .collect();
    if relevant.is_empty() {
        return Ok(());
    }
    let mut classes: HashMap<String, (String, String)> = HashMap::new();
    for e in &relevant {
        let Some(id) = e.envelope.request_id.as_deref() else {
            continue;
        };
        if classes.contains_key(id) {
            continue;
        }
        let row = sqlx::query("SELECT path, task_class FROM requests WHERE request_id = $1")
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
        let (path, class) = match row {
            Some(r) => (
                r.try_get::<Option<String>, _>(0)?.unwrap_or_default(),
                r.try_get::<Option<String>, _>(1)?.unwrap_or_default(),
            ),
            None => (String::new(), String::new()),
        };
        classes.insert(id.to_string(), (path, class));
    }
    let mut touched: BTreeMap<StatsKey, RouteStats> = BTreeMap::new();
    for e in relevant {
        let Some(id) = e.envelope.request_id.as_deref() else {
            continue;
        };
        let (path, class) = classes.get(id).cloned().unwrap_or_default();
        let class = if class.is_empty() {
            "unknown".to_string()
        } else {
            class
        };
        match &e.payload {
            Payload::RequestSettled(s) => {
                let path = if path.is_empty() {
                    s.path.clone()
                } else {
                    path
                };
                let key = (
                    path,
                    s.deployment.clone().unwrap_or_else(|| "-".into()),
                    class,
                );
                let stats = load_stats(conn, &mut touched, key).await?;
                stats.requests += 1;
                if s.outcome == "completed" {
                    stats.completed += 1;
                } else {
                    stats.failed += 1;
                }
                stats.charge_nano += s.charge_nano;
                stats.latency.add(s.latency_us as f64 / 1000.0);
                if let Some(t) = s.ttft_us {
                    stats.ttft.add(t as f64 / 1000.0);
                }
            }
            Payload::UpstreamAttempted(a) => {
                let key = (path, a.deployment.clone(), class);
                let stats = load_stats(conn, &mut touched, key).await?;
                stats.attempts += 1;
                if a.outcome != "ok" {
                    stats.errors += 1;
                }
                if a.error_class.as_deref() == Some("timeout") {
                    stats.timeouts += 1;
                }
                if a.fell_back {
                    stats.fallbacks += 1;
                }
            }
            _ => {}
        }
    }
    for ((path, deployment, class), s) in touched {
        sqlx::query(
            "INSERT INTO route_stats (path, deployment, task_class, requests, completed, failed,
                 charge_nano, attempts, errors, timeouts, fallbacks, latency, ttft)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
             ON CONFLICT (path, deployment, task_class) DO UPDATE SET
                 requests = excluded.requests, completed = excluded.completed,
                 failed = excluded.failed, charge_nano = excluded.charge_nano,
                 attempts = excluded.attempts, errors = excluded.errors,
                 timeouts = excluded.timeouts, fallbacks = excluded.fallbacks,
                 latency = excluded.latency, ttft = excluded.ttft",
        )
        .bind(path)
        .bind(deployment)
        .bind(class)
        .bind(s.requests)
        .bind(s.completed)
        .bind(s.failed)
        .bind(s.charge_nano)
        .bind(s.attempts)
        .bind(s.errors)
        .bind(s.timeouts)
        .bind(s.fallbacks)
        .bind(serde_json::to_string(&s.latency).unwrap_or_default())
        .bind(serde_json::to_string(&s.ttft).unwrap_or_default())
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

async fn load_stats<'m>(
    conn: &mut AnyConnection,
    touched: &'m mut BTreeMap<StatsKey, RouteStats>,
    key: StatsKey,
) -> Result<&'m mut RouteStats, ApplyError> {
    if !touched.contains_key(&key) {
        let row = sqlx::query(
            "SELECT requests, completed, failed, charge_nano, attempts, errors, timeouts, fallbacks,
                 latency, ttft FROM route_stats WHERE path = $1 AND deployment = $2 AND task_class = $3",
        )
        .bind(&key.0)
        .bind(&key.1)
        .bind(&key.2)
        .fetch_optional(&mut *conn)
        .await?;
        let stats = match row {
            None => RouteStats::default(),
            Some(r) => RouteStats {
                requests: r.try_get(0)?,
                completed: r.try_get(1)?,
                failed: r.try_get(2)?,
                charge_nano: r.try_get(3)?,
                attempts: r.try_get(4)?,
                errors: r.try_get(5)?,
                timeouts: r.try_get(6)?,
                fallbacks: r.try_get(7)?,
                latency: serde_json::from_str(&r.try_get::<String, _>(8)?)
                    .map_err(|e| ApplyError::Rejected(format!("corrupt latency sketch: {e}")))?,
                ttft: serde_json::from_str(&r.try_get::<String, _>(9)?)
                    .map_err(|e| ApplyError::Rejected(format!("corrupt ttft sketch: {e}")))?,
            },
        };
        touched.insert(key.clone(), stats);
    }
    touched
        .get_mut(&key)
        .ok_or_else(|| ApplyError::Rejected("route statistics vanished".into()))
}
