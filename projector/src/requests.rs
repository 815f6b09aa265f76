//! Request views: one row per request (its route decision, settlement and feedback), its
//! upstream attempts, per-minute usage rollups behind `/v1/usage`, route statistics with
//! latency and time-to-first-token sketches (DDSketch) per path × deployment × task class, and
//! the same per hour × path × account for the dashboard's series.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use lumina_eventlog::ApplyError;
use lumina_eventlog::db::{RowValues, fetch_in, fetch_rows, insert_rows};
use lumina_schemas::payloads::RequestSettled;
use lumina_schemas::{Event, Payload};
use serde::{Deserialize, Serialize};
use sketches_ddsketch::{Config, DDSketch};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

/// Rows per multi-row statement (PostgreSQL allows 65,535 parameters, SQLite 32,766).
const ROWS: usize = 400;

/// The request-row columns each kind of event writes, after the key columns.
const ROUTED_COLS: &str = "requested_model, path, task_class, stream, policy_version, features, \
    scores, candidates, hold_nano, prompt_tokens_estimate, max_tokens, routed_at, api, top_features, \
    prefer, min_path, max_path, classified_path";
const SETTLED_COLS: &str = "outcome, provider, deployment, prompt_tokens, completion_tokens, \
    cached_tokens, reasoning_tokens, usage_estimated, charge_nano, price_table_version, latency_us, \
    ttft_us, attempts, error_class, settled_at";
const FEEDBACK_COLS: &str = "feedback_score, feedback_label, feedback_comment, feedback_at";

/// Applies a batch's request events — routed, attempted, settled, feedback, content — with a
/// few multi-row statements per kind instead of statements per event. Later facts win over
/// earlier ones of the same kind, as if applied one by one.
pub async fn apply_batch(conn: &mut AnyConnection, events: &[&Event]) -> Result<(), ApplyError> {
    let mut routed: BTreeMap<&str, &Event> = BTreeMap::new();
    let mut settled: BTreeMap<&str, &Event> = BTreeMap::new();
    let mut feedback: BTreeMap<&str, &Event> = BTreeMap::new();
    let mut attempts: Vec<&Event> = Vec::new();
    let mut content: Vec<&Event> = Vec::new();
    let mut minutes: BTreeMap<UsageKey<'_>, UsageSums> = BTreeMap::new();
    for &event in events {
        let env = &event.envelope;
        let Some(id) = env.request_id.as_deref() else {
            continue;
        };
        match &event.payload {
            Payload::RequestRouted(_) => {
                routed.insert(id, event);
            }
            Payload::UpstreamAttempted(_) => attempts.push(event),
            Payload::RequestSettled(s) => {
                settled.insert(id, event);
                let key = UsageKey {
                    account_id: &env.account_id,
                    minute: env.occurred_at.div_euclid(60_000_000) * 60,
                    project_id: env.project_id.as_deref().unwrap_or(""),
                    api_key_id: env.api_key_id.as_deref().unwrap_or(""),
                    path: &s.path,
                    provider: s.provider.as_deref().unwrap_or(""),
                };
                let sums = minutes.entry(key).or_default();
                sums.input += s.usage.prompt_tokens;
                sums.output += s.usage.completion_tokens;
                sums.cached += s.usage.cached_tokens;
                sums.reasoning += s.usage.reasoning_tokens;
                sums.requests += 1;
                sums.credits += s.charge_nano;
            }
            Payload::FeedbackReceived(_) => {
                feedback.insert(id, event);
            }
            Payload::RequestContentRecorded(_) => content.push(event),
            _ => {}
        }
    }
    // A request routed and settled in the same batch gets its row in one write, not two.
    let whole: Vec<(&Event, &Event)> = routed
        .iter()
        .filter_map(|(id, r)| Some((*r, *settled.get(id)?)))
        .collect();
    let routed_only: Vec<&Event> = routed
        .iter()
        .filter(|(id, _)| !settled.contains_key(*id))
        .map(|(_, e)| *e)
        .collect();
    let settled_only: Vec<&Event> = settled
        .iter()
        .filter(|(id, _)| !routed.contains_key(*id))
        .map(|(_, e)| *e)
        .collect();
    upsert_routed(conn, &routed_only).await?;
    upsert_whole(conn, &whole).await?;
    // Rows for requests whose routing was never seen, so attempts still have a request.
    let orphans: BTreeMap<&str, &Event> = attempts
        .iter()
        .filter_map(|e| Some((e.envelope.request_id.as_deref()?, *e)))
        .filter(|(id, _)| !routed.contains_key(id))
        .collect();
    ensure_rows(conn, &orphans).await?;
    insert_attempts(conn, &attempts).await?;
    upsert_settled(conn, &settled_only).await?;
    upsert_feedback(conn, &feedback).await?;
    insert_content(conn, &content).await?;
    add_usage(conn, &minutes).await?;
    Ok(())
}

/// One `usage_minutes` row's key.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct UsageKey<'a> {
    account_id: &'a str,
    minute: i64,
    project_id: &'a str,
    api_key_id: &'a str,
    path: &'a str,
    provider: &'a str,
}

/// What a batch adds to one `usage_minutes` row.
#[derive(Default)]
struct UsageSums {
    input: i64,
    output: i64,
    cached: i64,
    reasoning: i64,
    requests: i64,
    credits: i64,
}

/// `col = excluded.col` for each of `cols`.
fn excluded(cols: &str) -> String {
    cols.split(',')
        .map(str::trim)
        .map(|c| format!("{c} = excluded.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Binds a request row's key columns: request, account, project, API key.
fn bind_key<'q>(q: RowValues<'q>, event: &'q Event) -> RowValues<'q> {
    let env = &event.envelope;
    q.bind(env.request_id.as_deref().unwrap_or_default())
        .bind(env.account_id.as_str())
        .bind(env.project_id.as_deref())
        .bind(env.api_key_id.as_deref())
}

/// The routing's columns of a request row ([`ROUTED_COLS`]).
fn bind_routed<'q>(values: RowValues<'q>, event: &'q Event) -> RowValues<'q> {
    let Payload::RequestRouted(r) = &event.payload else {
        return values;
    };
    values
        .bind(r.requested_model.as_str())
        .bind(r.path.as_str())
        .bind(r.task_class.as_str())
        .bind(i64::from(r.stream))
        .bind(r.policy_version)
        .bind(serde_json::to_string(&r.features).unwrap_or_default())
        .bind(serde_json::to_string(&r.scores).unwrap_or_default())
        .bind(serde_json::to_string(&r.candidates).unwrap_or_default())
        .bind(r.hold.as_ref().map_or(0, |h| h.amount_nano))
        .bind(r.prompt_tokens_estimate)
        .bind(r.max_tokens)
        .bind(event.envelope.occurred_at)
        .bind(r.api.as_str())
        .bind(serde_json::to_string(&r.top_features).unwrap_or_default())
        .bind(r.prefer.as_str())
        .bind(r.min_path.as_deref())
        .bind(r.max_path.as_deref())
        .bind(r.classified_path.as_deref())
}

/// The settlement's columns of a request row ([`SETTLED_COLS`]).
fn bind_settled<'q>(values: RowValues<'q>, event: &'q Event) -> RowValues<'q> {
    let Payload::RequestSettled(s) = &event.payload else {
        return values;
    };
    values
        .bind(s.outcome.as_str())
        .bind(s.provider.as_deref())
        .bind(s.deployment.as_deref())
        .bind(s.usage.prompt_tokens)
        .bind(s.usage.completion_tokens)
        .bind(s.usage.cached_tokens)
        .bind(s.usage.reasoning_tokens)
        .bind(i64::from(s.usage.estimated))
        .bind(s.charge_nano)
        .bind(s.price_table_version.as_str())
        .bind(s.latency_us)
        .bind(s.ttft_us)
        .bind(i64::from(s.attempts))
        .bind(s.error_class.as_deref())
        .bind(event.envelope.occurred_at)
}

async fn upsert_routed(conn: &mut AnyConnection, rows: &[&Event]) -> Result<(), ApplyError> {
    let prefix = format!(
        "INSERT INTO requests (request_id, account_id, project_id, api_key_id, {ROUTED_COLS})"
    );
    let suffix = format!(
        "ON CONFLICT (request_id) DO UPDATE SET {}",
        excluded(ROUTED_COLS)
    );
    insert_rows(conn, &prefix, 22, &suffix, ROWS, rows, |q, e| {
        bind_routed(bind_key(q, e), e)
    })
    .await?;
    Ok(())
}

/// Rows of requests whose routing and settlement are both in the batch: every column at once.
async fn upsert_whole(
    conn: &mut AnyConnection,
    rows: &[(&Event, &Event)],
) -> Result<(), ApplyError> {
    let prefix = format!(
        "INSERT INTO requests (request_id, account_id, project_id, api_key_id, {ROUTED_COLS}, \
         {SETTLED_COLS})"
    );
    let suffix = format!(
        "ON CONFLICT (request_id) DO UPDATE SET {}, {}",
        excluded(ROUTED_COLS),
        excluded(SETTLED_COLS)
    );
    insert_rows(
        conn,
        &prefix,
        37,
        &suffix,
        ROWS / 2,
        rows,
        |q, (routed, settled)| bind_settled(bind_routed(bind_key(q, routed), routed), settled),
    )
    .await?;
    Ok(())
}

/// Key-only rows for requests not yet seen; existing rows are left alone.
async fn ensure_rows(
    conn: &mut AnyConnection,
    rows: &BTreeMap<&str, &Event>,
) -> Result<(), ApplyError> {
    let rows: Vec<&Event> = rows.values().copied().collect();
    insert_rows(
        conn,
        "INSERT INTO requests (request_id, account_id, project_id, api_key_id)",
        4,
        "ON CONFLICT (request_id) DO NOTHING",
        ROWS,
        &rows,
        |q, e| bind_key(q, e),
    )
    .await?;
    Ok(())
}

async fn insert_attempts(conn: &mut AnyConnection, rows: &[&Event]) -> Result<(), ApplyError> {
    insert_rows(
        conn,
        "INSERT INTO request_attempts (request_id, attempt, event_id, provider, deployment,
             upstream_model, started_at, ttfb_us, duration_us, outcome, error_class,
             http_status, fell_back, role)",
        14,
        "ON CONFLICT (request_id, attempt) DO NOTHING",
        ROWS,
        rows,
        |q, e| {
            let Payload::UpstreamAttempted(a) = &e.payload else {
                return q;
            };
            q.bind(e.envelope.request_id.as_deref().unwrap_or_default())
                .bind(i64::from(a.attempt))
                .bind(e.envelope.event_id.to_string())
                .bind(a.provider.as_str())
                .bind(a.deployment.as_str())
                .bind(a.upstream_model.as_str())
                .bind(a.started_at)
                .bind(a.ttfb_us)
                .bind(a.duration_us)
                .bind(a.outcome.as_str())
                .bind(a.error_class.as_deref())
                .bind(a.http_status.map(i64::from))
                .bind(i64::from(a.fell_back))
                .bind(a.role.as_deref())
        },
    )
    .await?;
    Ok(())
}

async fn upsert_settled(conn: &mut AnyConnection, rows: &[&Event]) -> Result<(), ApplyError> {
    let prefix = format!(
        "INSERT INTO requests (request_id, account_id, project_id, api_key_id, {SETTLED_COLS})"
    );
    let suffix = format!(
        "ON CONFLICT (request_id) DO UPDATE SET {}",
        excluded(SETTLED_COLS)
    );
    insert_rows(conn, &prefix, 19, &suffix, ROWS, rows, |q, e| {
        bind_settled(bind_key(q, e), e)
    })
    .await?;
    Ok(())
}

async fn upsert_feedback(
    conn: &mut AnyConnection,
    rows: &BTreeMap<&str, &Event>,
) -> Result<(), ApplyError> {
    let rows: Vec<&Event> = rows.values().copied().collect();
    let prefix = format!(
        "INSERT INTO requests (request_id, account_id, project_id, api_key_id, {FEEDBACK_COLS})"
    );
    let suffix = format!(
        "ON CONFLICT (request_id) DO UPDATE SET {}",
        excluded(FEEDBACK_COLS)
    );
    insert_rows(conn, &prefix, 8, &suffix, ROWS, &rows, |q, e| {
        let Payload::FeedbackReceived(f) = &e.payload else {
            return q;
        };
        bind_key(q, e)
            .bind(f.score)
            .bind(f.label.as_deref())
            .bind(f.comment.as_deref())
            .bind(e.envelope.occurred_at)
    })
    .await?;
    Ok(())
}

async fn insert_content(conn: &mut AnyConnection, rows: &[&Event]) -> Result<(), ApplyError> {
    insert_rows(
        conn,
        "INSERT INTO request_content (request_id, account_id, messages_json, answer, tool_calls_json)",
        5,
        "ON CONFLICT (request_id) DO NOTHING",
        ROWS,
        rows,
        |q, e| {
            let Payload::RequestContentRecorded(c) = &e.payload else {
                return q;
            };
            q.bind(e.envelope.request_id.as_deref().unwrap_or_default())
                .bind(e.envelope.account_id.as_str())
                .bind(c.messages_json.as_str())
                .bind(c.answer.as_deref())
                .bind(c.tool_calls_json.as_deref())
        },
    )
    .await?;
    Ok(())
}

async fn add_usage(
    conn: &mut AnyConnection,
    minutes: &BTreeMap<UsageKey<'_>, UsageSums>,
) -> Result<(), ApplyError> {
    let rows: Vec<(&UsageKey<'_>, &UsageSums)> = minutes.iter().collect();
    insert_rows(
        conn,
        "INSERT INTO usage_minutes (account_id, minute, project_id, api_key_id, path, provider,
             input_tokens, output_tokens, cached_tokens, reasoning_tokens, requests, credits_nano)",
        12,
        "ON CONFLICT (account_id, minute, project_id, api_key_id, path, provider) DO UPDATE SET
             input_tokens = usage_minutes.input_tokens + excluded.input_tokens,
             output_tokens = usage_minutes.output_tokens + excluded.output_tokens,
             cached_tokens = usage_minutes.cached_tokens + excluded.cached_tokens,
             reasoning_tokens = usage_minutes.reasoning_tokens + excluded.reasoning_tokens,
             requests = usage_minutes.requests + excluded.requests,
             credits_nano = usage_minutes.credits_nano + excluded.credits_nano",
        ROWS,
        &rows,
        |q, (k, v)| {
            q.bind(k.account_id)
                .bind(k.minute)
                .bind(k.project_id)
                .bind(k.api_key_id)
                .bind(k.path)
                .bind(k.provider)
                .bind(v.input)
                .bind(v.output)
                .bind(v.cached)
                .bind(v.reasoning)
                .bind(v.requests)
                .bind(v.credits)
        },
    )
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

impl RouteStats {
    /// The counters and sketches of a `route_stats` row selected as `path, deployment,
    /// task_class, requests, completed, failed, charge_nano, attempts, errors, timeouts,
    /// fallbacks, latency, ttft`; a sketch that does not decode goes to `corrupt` with its
    /// column's name, which refuses it or stands in another.
    pub(crate) fn from_row<E: From<sqlx::Error>>(
        r: &AnyRow,
        corrupt: impl Fn(&str, serde_json::Error) -> Result<DDSketch, E>,
    ) -> Result<RouteStats, E> {
        let sketch = |column: &str, i: usize| -> Result<DDSketch, E> {
            decode_sketch(&r.try_get::<String, _>(i)?).or_else(|e| corrupt(column, e))
        };
        Ok(RouteStats {
            requests: r.try_get(3)?,
            completed: r.try_get(4)?,
            failed: r.try_get(5)?,
            charge_nano: r.try_get(6)?,
            attempts: r.try_get(7)?,
            errors: r.try_get(8)?,
            timeouts: r.try_get(9)?,
            fallbacks: r.try_get(10)?,
            latency: sketch("latency", 11)?,
            ttft: sketch("ttft", 12)?,
        })
    }
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
    // Path and task class of each request: from the batch's own routing, else from its row.
    let mut classes: HashMap<String, (String, String)> = HashMap::new();
    for e in events {
        if let (Payload::RequestRouted(r), Some(id)) =
            (&e.payload, e.envelope.request_id.as_deref())
        {
            classes.insert(id.to_string(), (r.path.clone(), r.task_class.clone()));
        }
    }
    let missing: Vec<&str> = relevant
        .iter()
        .filter_map(|e| e.envelope.request_id.as_deref())
        .filter(|id| !classes.contains_key(*id))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let rows = fetch_in(
        conn,
        "SELECT request_id, path, task_class FROM requests WHERE request_id",
        "",
        ROWS,
        &missing,
    )
    .await?;
    for r in rows {
        classes.insert(
            r.try_get(0)?,
            (
                r.try_get::<Option<String>, _>(1)?.unwrap_or_default(),
                r.try_get::<Option<String>, _>(2)?.unwrap_or_default(),
            ),
        );
    }
    // Each fact's statistics row, then every row touched read in one statement.
    let keyed: Vec<(StatsKey, &Payload)> = relevant
        .iter()
        .filter_map(|e| {
            let id = e.envelope.request_id.as_deref()?;
            let (path, class) = classes.get(id).cloned().unwrap_or_default();
            let class = if class.is_empty() {
                "unknown".to_string()
            } else {
                class
            };
            let key = match &e.payload {
                Payload::RequestSettled(s) => (
                    if path.is_empty() {
                        s.path.clone()
                    } else {
                        path
                    },
                    s.deployment.clone().unwrap_or_else(|| "-".into()),
                    class,
                ),
                Payload::UpstreamAttempted(a) => (path, a.deployment.clone(), class),
                _ => return None,
            };
            Some((key, &e.payload))
        })
        .collect();
    let keys: Vec<&StatsKey> = keyed
        .iter()
        .map(|(k, _)| k)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut touched = load_stats(conn, &keys).await?;
    for (key, payload) in &keyed {
        let stats = touched.entry(key.clone()).or_default();
        match payload {
            Payload::RequestSettled(s) => {
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
    let rows: Vec<(&StatsKey, &RouteStats)> = touched.iter().collect();
    insert_rows(
        conn,
        "INSERT INTO route_stats (path, deployment, task_class, requests, completed, failed,
             charge_nano, attempts, errors, timeouts, fallbacks, latency, ttft)",
        13,
        "ON CONFLICT (path, deployment, task_class) DO UPDATE SET
             requests = excluded.requests, completed = excluded.completed,
             failed = excluded.failed, charge_nano = excluded.charge_nano,
             attempts = excluded.attempts, errors = excluded.errors,
             timeouts = excluded.timeouts, fallbacks = excluded.fallbacks,
             latency = excluded.latency, ttft = excluded.ttft",
        ROWS,
        &rows,
        |values, ((path, deployment, class), s)| {
            values
                .bind(path.as_str())
                .bind(deployment.as_str())
                .bind(class.as_str())
                .bind(s.requests)
                .bind(s.completed)
                .bind(s.failed)
                .bind(s.charge_nano)
                .bind(s.attempts)
                .bind(s.errors)
                .bind(s.timeouts)
                .bind(s.fallbacks)
                .bind(encode_sketch(&s.latency))
                .bind(encode_sketch(&s.ttft))
        },
    )
    .await?;
    Ok(())
}

/// The `path_hours` account that stands for every account together.
pub const ALL_ACCOUNTS: &str = "";

/// Seconds in a `path_hours` bucket.
pub const HOUR: i64 = 3_600;

/// One `path_hours` row: settled requests, those that did not complete, their charges, and
/// latency and time-to-first-token sketches (ms).
#[derive(Clone)]
pub struct HourStats {
    /// Settled requests.
    pub requests: i64,
    /// Failed, cut or cancelled ones.
    pub failed: i64,
    /// Sum of their charges.
    pub charge_nano: i64,
    /// End-to-end latency, ms.
    pub latency: DDSketch,
    /// Time to first token, ms.
    pub ttft: DDSketch,
}

impl Default for HourStats {
    fn default() -> Self {
        HourStats {
            requests: 0,
            failed: 0,
            charge_nano: 0,
            latency: DDSketch::new(Config::defaults()),
            ttft: DDSketch::new(Config::defaults()),
        }
    }
}

/// (account, hour, path) of a `path_hours` row.
type HourKey = (String, i64, String);

/// Folds a batch's settlements into the hourly series, under the request's account and under
/// [`ALL_ACCOUNTS`]: one read and one write per row touched.
pub async fn update_series(conn: &mut AnyConnection, events: &[&Event]) -> Result<(), ApplyError> {
    let mut keyed: Vec<(HourKey, &RequestSettled)> = Vec::new();
    for e in events {
        let Payload::RequestSettled(s) = &e.payload else {
            continue;
        };
        let hour = e.envelope.occurred_at.div_euclid(1_000_000 * HOUR) * HOUR;
        for account in [e.envelope.account_id.as_str(), ALL_ACCOUNTS] {
            keyed.push(((account.to_string(), hour, s.path.clone()), s));
        }
    }
    let keys: Vec<&HourKey> = keyed
        .iter()
        .map(|(k, _)| k)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut touched = load_hours(conn, &keys).await?;
    for (key, s) in &keyed {
        let stats = touched.entry(key.clone()).or_default();
        stats.requests += 1;
        if s.outcome != "completed" {
            stats.failed += 1;
        }
        stats.charge_nano = stats.charge_nano.saturating_add(s.charge_nano);
        stats.latency.add(s.latency_us as f64 / 1000.0);
        if let Some(t) = s.ttft_us {
            stats.ttft.add(t as f64 / 1000.0);
        }
    }
    let rows: Vec<(&HourKey, &HourStats)> = touched.iter().collect();
    insert_rows(
        conn,
        "INSERT INTO path_hours (account_id, hour, path, requests, failed, charge_nano,
             latency, ttft)",
        8,
        "ON CONFLICT (account_id, hour, path) DO UPDATE SET
             requests = excluded.requests, failed = excluded.failed,
             charge_nano = excluded.charge_nano, latency = excluded.latency,
             ttft = excluded.ttft",
        ROWS,
        &rows,
        |values, ((account, hour, path), s)| {
            values
                .bind(account.as_str())
                .bind(*hour)
                .bind(path.as_str())
                .bind(s.requests)
                .bind(s.failed)
                .bind(s.charge_nano)
                .bind(encode_sketch(&s.latency))
                .bind(encode_sketch(&s.ttft))
        },
    )
    .await?;
    Ok(())
}

/// The stored rows of `keys`, read in one statement (per slice on PostgreSQL).
async fn load_hours(
    conn: &mut AnyConnection,
    keys: &[&HourKey],
) -> Result<BTreeMap<HourKey, HourStats>, ApplyError> {
    let rows = fetch_rows(
        conn,
        "SELECT account_id, hour, path, requests, failed, charge_nano, latency, ttft
         FROM path_hours WHERE (account_id, hour, path) IN (",
        3,
        ")",
        ROWS,
        keys,
        |values, (account, hour, path)| {
            values
                .bind(account.as_str())
                .bind(*hour)
                .bind(path.as_str())
        },
    )
    .await?;
    let mut loaded = BTreeMap::new();
    for r in rows {
        loaded.insert(
            (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?),
            HourStats {
                requests: r.try_get(3)?,
                failed: r.try_get(4)?,
                charge_nano: r.try_get(5)?,
                latency: decode_sketch(&r.try_get::<String, _>(6)?)
                    .map_err(|e| ApplyError::Rejected(format!("corrupt latency sketch: {e}")))?,
                ttft: decode_sketch(&r.try_get::<String, _>(7)?)
                    .map_err(|e| ApplyError::Rejected(format!("corrupt ttft sketch: {e}")))?,
            },
        );
    }
    Ok(loaded)
}

/// A sketch as stored: JSON, or the empty string for an empty sketch — whose infinite
/// minimum and maximum JSON cannot carry.
fn encode_sketch(sketch: &DDSketch) -> String {
    if sketch.count() == 0 {
        String::new()
    } else {
        serde_json::to_string(sketch).unwrap_or_default()
    }
}

/// The inverse of [`encode_sketch`].
pub(crate) fn decode_sketch(text: &str) -> Result<DDSketch, serde_json::Error> {
    if text.is_empty() {
        Ok(DDSketch::new(Config::defaults()))
    } else {
        serde_json::from_str(text)
    }
}

/// The stored rows of `keys`, read in one statement (per slice on PostgreSQL).
async fn load_stats(
    conn: &mut AnyConnection,
    keys: &[&StatsKey],
) -> Result<BTreeMap<StatsKey, RouteStats>, ApplyError> {
    let rows = fetch_rows(
        conn,
        "SELECT path, deployment, task_class, requests, completed, failed, charge_nano,
             attempts, errors, timeouts, fallbacks, latency, ttft
         FROM route_stats WHERE (path, deployment, task_class) IN (",
        3,
        ")",
        ROWS,
        keys,
        |values, (path, deployment, class)| {
            values
                .bind(path.as_str())
                .bind(deployment.as_str())
                .bind(class.as_str())
        },
    )
    .await?;
    let mut loaded = BTreeMap::new();
    for r in rows {
        let stats = RouteStats::from_row(&r, |column, e| {
            Err(ApplyError::Rejected(format!(
                "corrupt {column} sketch: {e}"
            )))
        })?;
        loaded.insert((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?), stats);
    }
    Ok(loaded)
}
