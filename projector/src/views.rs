//! Queries over the request views: usage rows for `/v1/usage`, request logs and traces, route
//! statistics with quantiles read from their sketches, and the hourly series per path.

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::ReadModel;
use crate::requests::{HourStats, RouteStats, decode_sketch};

/// One per-minute usage rollup row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRow {
    /// Minute start, Unix seconds.
    pub minute: i64,
    /// Project.
    pub project_id: String,
    /// API key.
    pub api_key_id: String,
    /// Lumina path (the `model` of `/v1/usage`).
    pub path: String,
    /// Provider that answered.
    pub provider: String,
    /// Prompt tokens.
    pub input_tokens: i64,
    /// Completion tokens.
    pub output_tokens: i64,
    /// Cached prompt tokens.
    pub cached_tokens: i64,
    /// Reasoning tokens.
    pub reasoning_tokens: i64,
    /// Settled requests.
    pub requests: i64,
    /// Charges, nano-credits.
    pub credits_nano: i64,
}

/// One request as the views hold it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RequestRow {
    /// `req_…`
    pub request_id: String,
    /// Owning account.
    pub account_id: String,
    /// Project.
    pub project_id: Option<String>,
    /// API key.
    pub api_key_id: Option<String>,
    /// The `model` asked for.
    pub requested_model: Option<String>,
    /// The inbound API (`chat_completions`, `messages`, `embeddings`).
    pub api: Option<String>,
    /// Path taken.
    pub path: Option<String>,
    /// Classifier task class.
    pub task_class: Option<String>,
    /// Streamed or not.
    pub stream: Option<bool>,
    /// Routing policy version.
    pub policy_version: Option<i64>,
    /// Classifier features (JSON object).
    pub features: Option<serde_json::Value>,
    /// Classifier scores (JSON object).
    pub scores: Option<serde_json::Value>,
    /// Deployments in fallback order.
    pub candidates: Option<serde_json::Value>,
    /// Credit hold placed.
    pub hold_nano: Option<i64>,
    /// Prompt estimate at routing.
    pub prompt_tokens_estimate: Option<i64>,
    /// Client's output cap.
    pub max_tokens: Option<i64>,
    /// When routed, µs since the epoch.
    pub routed_at: Option<i64>,
    /// How it ended (`None` while in flight).
    pub outcome: Option<String>,
    /// Provider that answered.
    pub provider: Option<String>,
    /// Deployment that answered.
    pub deployment: Option<String>,
    /// Prompt tokens.
    pub prompt_tokens: Option<i64>,
    /// Completion tokens.
    pub completion_tokens: Option<i64>,
    /// Cached prompt tokens.
    pub cached_tokens: Option<i64>,
    /// Reasoning tokens.
    pub reasoning_tokens: Option<i64>,
    /// Whether usage was estimated.
    pub usage_estimated: Option<bool>,
    /// Charge, nano-credits.
    pub charge_nano: Option<i64>,
    /// Price table of the charge.
    pub price_table_version: Option<String>,
    /// End-to-end latency, µs.
    pub latency_us: Option<i64>,
    /// Time to first token, µs.
    pub ttft_us: Option<i64>,
    /// Attempts made.
    pub attempts: Option<i64>,
    /// Why it failed.
    pub error_class: Option<String>,
    /// When settled, µs since the epoch.
    pub settled_at: Option<i64>,
    /// Feedback score.
    pub feedback_score: Option<f64>,
    /// Feedback label.
    pub feedback_label: Option<String>,
    /// Feedback comment.
    pub feedback_comment: Option<String>,
    /// The classifier inputs that weighed most (JSON array of `{name, value, contribution}`).
    pub top_features: Option<serde_json::Value>,
    /// The cost–quality preference applied.
    pub prefer: Option<String>,
    /// The weakest path allowed, when bounded.
    pub min_path: Option<String>,
    /// The strongest path allowed, when bounded.
    pub max_path: Option<String>,
    /// The classifier's own choice when the bounds moved the request to another path.
    pub classified_path: Option<String>,
}

/// One upstream attempt of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AttemptRow {
    /// 1 for the first.
    pub attempt: i64,
    /// Provider name.
    pub provider: String,
    /// Deployment id.
    pub deployment: String,
    /// Upstream model.
    pub upstream_model: String,
    /// Start, µs since the epoch.
    pub started_at: i64,
    /// Time to first byte, µs.
    pub ttfb_us: Option<i64>,
    /// Duration, µs.
    pub duration_us: i64,
    /// `ok` or `error`.
    pub outcome: String,
    /// Error class.
    pub error_class: Option<String>,
    /// Upstream status.
    pub http_status: Option<i64>,
    /// Whether another attempt followed.
    pub fell_back: bool,
    /// `panel`, `judge` or `synthesizer` in a Fusion request; none for an ordinary attempt.
    pub role: Option<String>,
}

/// Filters of a request listing.
#[derive(Debug, Clone, Default)]
pub struct RequestFilter {
    /// Only this account (customer endpoints always set it).
    pub account_id: Option<String>,
    /// Only this key.
    pub api_key_id: Option<String>,
    /// Only this path.
    pub path: Option<String>,
    /// Only this outcome (`in_progress` for unsettled).
    pub status: Option<String>,
    /// Routed at or after, µs.
    pub since: Option<i64>,
    /// Routed before, µs.
    pub until: Option<i64>,
    /// Request ids below this one (the list is newest first).
    pub after: Option<String>,
}

/// Route statistics of one path × deployment × task class, with quantiles.
#[derive(Debug, Clone, Serialize)]
pub struct RouteStatsView {
    /// Path.
    pub path: String,
    /// Deployment.
    pub deployment: String,
    /// Task class.
    pub task_class: String,
    /// Settled requests.
    pub requests: i64,
    /// Completed ones.
    pub completed: i64,
    /// Others.
    pub failed: i64,
    /// Upstream attempts.
    pub attempts: i64,
    /// Failed attempts / attempts.
    pub error_rate: f64,
    /// Timed-out attempts / attempts.
    pub timeout_rate: f64,
    /// Attempts that fell back / attempts.
    pub fallback_rate: f64,
    /// Mean charge per request, nano-credits (integer division).
    pub cost_per_request_nano: i64,
    /// Every charge of these requests, nano-credits (exact).
    pub charge_nano: i64,
    /// Latency quantiles, ms: p50, p90, p99.
    pub latency_ms: Quantiles,
    /// Time-to-first-token quantiles, ms.
    pub ttft_ms: Quantiles,
}

/// Quantiles read from a sketch.
#[derive(Debug, Clone, Serialize)]
pub struct Quantiles {
    /// Median.
    pub p50: Option<f64>,
    /// 90th percentile.
    pub p90: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
}

/// One path's requests over one hour (or, in [`PathSeries::totals`], over the whole window).
#[derive(Debug, Clone, Serialize)]
pub struct PathPoint {
    /// Path.
    pub path: String,
    /// Unix seconds of the hour's start (the window's start, for totals).
    pub hour: i64,
    /// Settled requests.
    pub requests: i64,
    /// Those that did not complete.
    pub failed: i64,
    /// Every charge of these requests, nano-credits (exact).
    pub charge_nano: i64,
    /// Latency quantiles, ms.
    pub latency_ms: Quantiles,
    /// Time-to-first-token quantiles, ms.
    pub ttft_ms: Quantiles,
}

/// Hourly points per path over a window, and each path's totals over it, from `path_hours`.
#[derive(Debug, Clone, Serialize)]
pub struct PathSeries {
    /// Points in (hour, path) order; hours without traffic have none.
    pub points: Vec<PathPoint>,
    /// One per path with traffic in the window, sketches merged across its hours.
    pub totals: Vec<PathPoint>,
}

fn point(path: String, hour: i64, s: &HourStats) -> PathPoint {
    PathPoint {
        path,
        hour,
        requests: s.requests,
        failed: s.failed,
        charge_nano: s.charge_nano,
        latency_ms: quantiles(&s.latency),
        ttft_ms: quantiles(&s.ttft),
    }
}

fn quantiles(s: &sketches_ddsketch::DDSketch) -> Quantiles {
    let q = |p| {
        s.quantile(p)
            .ok()
            .flatten()
            .map(|v| (v * 1000.0).round() / 1000.0)
    };
    Quantiles {
        p50: q(0.5),
        p90: q(0.9),
        p99: q(0.99),
    }
}

pub(crate) const REQUEST_COLUMNS: &str = "request_id, account_id, project_id, api_key_id, requested_model, path, \
    task_class, stream, policy_version, features, scores, candidates, hold_nano, prompt_tokens_estimate, \
    max_tokens, routed_at, outcome, provider, deployment, prompt_tokens, completion_tokens, cached_tokens, \
    reasoning_tokens, usage_estimated, charge_nano, price_table_version, latency_us, ttft_us, attempts, \
    error_class, settled_at, feedback_score, feedback_label, feedback_comment, api, top_features, prefer, min_path, max_path, \
    classified_path";

fn json_col(r: &AnyRow, i: usize) -> Result<Option<serde_json::Value>, sqlx::Error> {
    Ok(r.try_get::<Option<String>, _>(i)?
        .and_then(|t| serde_json::from_str(&t).ok()))
}

fn bool_col(r: &AnyRow, i: usize) -> Result<Option<bool>, sqlx::Error> {
    Ok(r.try_get::<Option<i64>, _>(i)?.map(|v| v != 0))
}

pub(crate) fn request_row(r: &AnyRow) -> Result<RequestRow, sqlx::Error> {
    Ok(RequestRow {
        request_id: r.try_get(0)?,
        account_id: r.try_get(1)?,
        project_id: r.try_get(2)?,
        api_key_id: r.try_get(3)?,
        requested_model: r.try_get(4)?,
        path: r.try_get(5)?,
        task_class: r.try_get(6)?,
        stream: bool_col(r, 7)?,
        policy_version: r.try_get(8)?,
        features: json_col(r, 9)?,
        scores: json_col(r, 10)?,
        candidates: json_col(r, 11)?,
        hold_nano: r.try_get(12)?,
        prompt_tokens_estimate: r.try_get(13)?,
        max_tokens: r.try_get(14)?,
        routed_at: r.try_get(15)?,
        outcome: r.try_get(16)?,
        provider: r.try_get(17)?,
        deployment: r.try_get(18)?,
        prompt_tokens: r.try_get(19)?,
        completion_tokens: r.try_get(20)?,
        cached_tokens: r.try_get(21)?,
        reasoning_tokens: r.try_get(22)?,
        usage_estimated: bool_col(r, 23)?,
        charge_nano: r.try_get(24)?,
        price_table_version: r.try_get(25)?,
        latency_us: r.try_get(26)?,
        ttft_us: r.try_get(27)?,
        attempts: r.try_get(28)?,
        error_class: r.try_get(29)?,
        settled_at: r.try_get(30)?,
        feedback_score: r.try_get(31)?,
        feedback_label: r.try_get(32)?,
        feedback_comment: r.try_get(33)?,
        api: r.try_get(34)?,
        top_features: json_col(r, 35)?,
        prefer: r.try_get(36)?,
        min_path: r.try_get(37)?,
        max_path: r.try_get(38)?,
        classified_path: r.try_get(39)?,
    })
}

impl ReadModel {
    /// Usage rollups of `account_id` for minutes in `[start, end)` (Unix seconds).
    pub async fn usage(
        &self,
        account_id: &str,
        start: i64,
        end: i64,
    ) -> Result<Vec<UsageRow>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT minute, project_id, api_key_id, path, provider, input_tokens, output_tokens,
                 cached_tokens, reasoning_tokens, requests, credits_nano
             FROM usage_minutes WHERE account_id = $1 AND minute >= $2 AND minute < $3
             ORDER BY minute",
        )
        .bind(account_id)
        .bind(start)
        .bind(end)
        .fetch_all(&self.database().pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(UsageRow {
                    minute: r.try_get(0)?,
                    project_id: r.try_get(1)?,
                    api_key_id: r.try_get(2)?,
                    path: r.try_get(3)?,
                    provider: r.try_get(4)?,
                    input_tokens: r.try_get(5)?,
                    output_tokens: r.try_get(6)?,
                    cached_tokens: r.try_get(7)?,
                    reasoning_tokens: r.try_get(8)?,
                    requests: r.try_get(9)?,
                    credits_nano: r.try_get(10)?,
                })
            })
            .collect()
    }

    /// Requests matching `filter`, newest first, at most `limit`. The statement names only the
    /// filters given, so the planner sees each as a constraint and can take its index.
    pub async fn requests(
        &self,
        filter: &RequestFilter,
        limit: i64,
    ) -> Result<Vec<RequestRow>, sqlx::Error> {
        let mut clauses: Vec<String> = Vec::new();
        let mut n = 0;
        let mut next = || {
            n += 1;
            n
        };
        if filter.account_id.is_some() {
            clauses.push(format!("account_id = ${}", next()));
        }
        if filter.api_key_id.is_some() {
            clauses.push(format!("api_key_id = ${}", next()));
        }
        if filter.path.is_some() {
            clauses.push(format!("path = ${}", next()));
        }
        match filter.status.as_deref() {
            Some("in_progress") => clauses.push("outcome IS NULL".into()),
            Some(_) => clauses.push(format!("outcome = ${}", next())),
            None => {}
        }
        if filter.since.is_some() {
            clauses.push(format!("routed_at >= ${}", next()));
        }
        if filter.until.is_some() {
            clauses.push(format!("routed_at < ${}", next()));
        }
        if filter.after.is_some() {
            clauses.push(format!("request_id < ${}", next()));
        }
        let limit_param = next();
        let sql = format!(
            "SELECT {REQUEST_COLUMNS} FROM requests{}{} ORDER BY request_id DESC LIMIT ${limit_param}",
            if clauses.is_empty() { "" } else { " WHERE " },
            clauses.join(" AND ")
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for value in [&filter.account_id, &filter.api_key_id, &filter.path]
            .into_iter()
            .flatten()
        {
            query = query.bind(value.as_str());
        }
        if let Some(status) = filter.status.as_deref().filter(|s| *s != "in_progress") {
            query = query.bind(status);
        }
        for value in [filter.since, filter.until].into_iter().flatten() {
            query = query.bind(value);
        }
        if let Some(after) = &filter.after {
            query = query.bind(after.as_str());
        }
        let rows = query.bind(limit).fetch_all(&self.database().pool).await?;
        rows.iter().map(request_row).collect()
    }

    /// One request and its attempts; with `account`, only if the request is that account's.
    /// The account is part of the lookup, so another account's request costs exactly what an
    /// unknown id costs (nothing tells the two apart, not even the time to answer).
    pub async fn request(
        &self,
        request_id: &str,
        account: Option<&str>,
    ) -> Result<Option<(RequestRow, Vec<AttemptRow>)>, sqlx::Error> {
        let scope = if account.is_some() {
            " AND account_id = $2"
        } else {
            ""
        };
        let sql = sqlx::AssertSqlSafe(format!(
            "SELECT {REQUEST_COLUMNS} FROM requests WHERE request_id = $1{scope}"
        ));
        let mut query = sqlx::query(sql).bind(request_id);
        if let Some(account) = account {
            query = query.bind(account);
        }
        let Some(row) = query.fetch_optional(&self.database().pool).await? else {
            return Ok(None);
        };
        let attempts = sqlx::query(
            "SELECT attempt, provider, deployment, upstream_model, started_at, ttfb_us, duration_us,
                 outcome, error_class, http_status, fell_back, role
             FROM request_attempts WHERE request_id = $1 ORDER BY attempt",
        )
        .bind(request_id)
        .fetch_all(&self.database().pool)
        .await?
        .iter()
        .map(|r| {
            Ok(AttemptRow {
                attempt: r.try_get(0)?,
                provider: r.try_get(1)?,
                deployment: r.try_get(2)?,
                upstream_model: r.try_get(3)?,
                started_at: r.try_get(4)?,
                ttfb_us: r.try_get(5)?,
                duration_us: r.try_get(6)?,
                outcome: r.try_get(7)?,
                error_class: r.try_get(8)?,
                http_status: r.try_get(9)?,
                fell_back: r.try_get::<i64, _>(10)? != 0,
                role: r.try_get(11)?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
        Ok(Some((request_row(&row)?, attempts)))
    }

    /// Route statistics, with quantiles.
    pub async fn route_stats(&self) -> Result<Vec<RouteStatsView>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT path, deployment, task_class, requests, completed, failed, charge_nano, attempts,
                 errors, timeouts, fallbacks, latency, ttft
             FROM route_stats ORDER BY path, deployment, task_class",
        )
        .fetch_all(&self.database().pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            // A sketch that does not decode shows as empty rather than failing the page.
            let stats = RouteStats::from_row(r, |_, _| {
                Ok::<_, sqlx::Error>(RouteStats::default().latency)
            })?;
            let rate = |n: i64| {
                if stats.attempts > 0 {
                    n as f64 / stats.attempts as f64
                } else {
                    0.0
                }
            };
            out.push(RouteStatsView {
                path: r.try_get(0)?,
                deployment: r.try_get(1)?,
                task_class: r.try_get(2)?,
                requests: stats.requests,
                completed: stats.completed,
                failed: stats.failed,
                attempts: stats.attempts,
                error_rate: rate(stats.errors),
                timeout_rate: rate(stats.timeouts),
                fallback_rate: rate(stats.fallbacks),
                cost_per_request_nano: if stats.requests > 0 {
                    stats.charge_nano / stats.requests
                } else {
                    0
                },
                charge_nano: stats.charge_nano,
                latency_ms: quantiles(&stats.latency),
                ttft_ms: quantiles(&stats.ttft),
            });
        }
        Ok(out)
    }

    /// The hourly series of `account` (or every account: [`crate::requests::ALL_ACCOUNTS`]) for
    /// the hours starting in `from..to` (unix seconds): one range read of the primary key.
    pub async fn path_series(
        &self,
        account: &str,
        from: i64,
        to: i64,
    ) -> Result<PathSeries, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT hour, path, requests, failed, charge_nano, latency, ttft FROM path_hours
             WHERE account_id = $1 AND hour >= $2 AND hour < $3 ORDER BY hour, path",
        )
        .bind(account)
        .bind(from)
        .bind(to)
        .fetch_all(&self.database().pool)
        .await?;
        let mut points = Vec::with_capacity(rows.len());
        let mut totals: BTreeMap<String, HourStats> = BTreeMap::new();
        for r in &rows {
            let path: String = r.try_get(1)?;
            let stats = HourStats {
                requests: r.try_get(2)?,
                failed: r.try_get(3)?,
                charge_nano: r.try_get(4)?,
                latency: decode_sketch(&r.try_get::<String, _>(5)?)
                    .unwrap_or_else(|_| HourStats::default().latency),
                ttft: decode_sketch(&r.try_get::<String, _>(6)?)
                    .unwrap_or_else(|_| HourStats::default().ttft),
            };
            let total = totals.entry(path.clone()).or_default();
            total.requests += stats.requests;
            total.failed += stats.failed;
            total.charge_nano = total.charge_nano.saturating_add(stats.charge_nano);
            // Sketches of one configuration always merge; a corrupt one is left out.
            let _ = total.latency.merge(&stats.latency);
            let _ = total.ttft.merge(&stats.ttft);
            points.push(point(path, r.try_get(0)?, &stats));
        }
        let totals = totals
            .into_iter()
            .map(|(path, s)| point(path, from, &s))
            .collect();
        Ok(PathSeries { points, totals })
    }
}
