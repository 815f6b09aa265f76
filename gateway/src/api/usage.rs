//! `GET /v1/usage`: the calling key's account usage in the shape of OpenAI's organization usage
//! API (`/organization/usage/completions`): time buckets of results, grouped and filtered,
//! paged by bucket, with credits beside tokens.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::Uri;
use lumina_projector::views::UsageRow;
use lumina_schemas::NanoCredits;
use serde::Serialize;

use crate::api::error::ApiError;
use crate::api::extract::CustomerKey;
use crate::state::AppState;

/// A query parameter given once or repeated (`a=1&a=2`, `a[]=1`, or `a=1,2`).
pub fn query_lists(uri: &Uri) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()) {
        let key = k.trim_end_matches("[]").to_string();
        let values = out.entry(key).or_default();
        values.extend(
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string),
        );
    }
    out
}

fn one<'a>(q: &'a BTreeMap<String, Vec<String>>, name: &str) -> Option<&'a str> {
    q.get(name).and_then(|v| v.first()).map(String::as_str)
}

fn int(q: &BTreeMap<String, Vec<String>>, name: &str) -> Result<Option<i64>, ApiError> {
    one(q, name)
        .map(|v| {
            v.parse::<i64>().map_err(|_| {
                ApiError::invalid(
                    format!("'{name}' must be an integer, got '{v}'"),
                    Some(name),
                )
            })
        })
        .transpose()
}

/// Answers 404 — the same for ids that do not exist and ids of another account, so ids never
/// leak — unless every key and project id named in a filter belongs to `account_id`.
pub async fn ensure_owned(
    state: &AppState,
    account_id: &str,
    key_ids: &[String],
    project_ids: &[String],
) -> Result<(), ApiError> {
    let views = &state.read_model;
    let unavailable =
        |e: sqlx::Error| ApiError::Unavailable(format!("read models unavailable: {e}"));
    for id in key_ids {
        let key = views.key(id).await.map_err(unavailable)?;
        if key.is_none_or(|k| k.account_id != account_id) {
            return Err(ApiError::NotFound {
                message: format!("No API key found with id '{id}'"),
                param: Some("api_key_ids".into()),
            });
        }
    }
    for id in project_ids {
        let project = views.project(id).await.map_err(unavailable)?;
        if project.is_none_or(|p| p.account_id != account_id) {
            return Err(ApiError::NotFound {
                message: format!("No project found with id '{id}'"),
                param: Some("project_ids".into()),
            });
        }
    }
    Ok(())
}

const GROUPS: [&str; 4] = ["project_id", "api_key_id", "model", "provider"];

/// One result of a bucket.
#[derive(Serialize, Default, Clone)]
pub struct UsageResult {
    object: &'static str,
    input_tokens: i64,
    output_tokens: i64,
    input_cached_tokens: i64,
    input_audio_tokens: i64,
    output_audio_tokens: i64,
    num_model_requests: i64,
    project_id: Option<String>,
    user_id: Option<String>,
    api_key_id: Option<String>,
    model: Option<String>,
    batch: Option<bool>,
    provider: Option<String>,
    reasoning_tokens: i64,
    credits: String,
    credits_nano: i64,
}

/// One time bucket.
#[derive(Serialize)]
pub struct Bucket {
    object: &'static str,
    start_time: i64,
    end_time: i64,
    results: Vec<UsageResult>,
}

/// A page of buckets.
#[derive(Serialize)]
pub struct UsagePage {
    object: &'static str,
    data: Vec<Bucket>,
    has_more: bool,
    next_page: Option<String>,
}

/// The latest time a usage query may name: the end of the year 9999, so no bucket bound can
/// overflow.
const MAX_UNIX_SECONDS: i64 = 253_402_300_799;

/// `GET /v1/usage`
pub async fn usage(
    State(state): State<AppState>,
    CustomerKey(key): CustomerKey,
    uri: Uri,
) -> Result<Json<UsagePage>, ApiError> {
    let q = query_lists(&uri);
    let start = int(&q, "start_time")?.ok_or_else(|| {
        ApiError::invalid(
            "Missing required parameter: 'start_time'.",
            Some("start_time"),
        )
    })?;
    let now = lumina_schemas::now_micros() / 1_000_000;
    let end = int(&q, "end_time")?.unwrap_or(now + 1);
    for (name, value) in [("start_time", start), ("end_time", end)] {
        if !(0..=MAX_UNIX_SECONDS).contains(&value) {
            return Err(ApiError::invalid(
                format!(
                    "'{name}' must be Unix seconds between 0 and {MAX_UNIX_SECONDS} (year 9999), got {value}"
                ),
                Some(name),
            ));
        }
    }
    if end <= start {
        return Err(ApiError::invalid(
            "'end_time' must be after 'start_time'",
            Some("end_time"),
        ));
    }
    let (width, default_limit, max_limit) = match one(&q, "bucket_width").unwrap_or("1d") {
        "1m" => (60, 60, 1440),
        "1h" => (3600, 24, 168),
        "1d" => (86_400, 7, 31),
        other => {
            return Err(ApiError::invalid(
                format!("'bucket_width' must be 1m, 1h or 1d, got '{other}'"),
                Some("bucket_width"),
            ));
        }
    };
    let limit = int(&q, "limit")?.unwrap_or(default_limit);
    if !(1..=max_limit).contains(&limit) {
        return Err(ApiError::invalid(
            format!("'limit' must be between 1 and {max_limit}"),
            Some("limit"),
        ));
    }
    let group_by: Vec<String> = q.get("group_by").cloned().unwrap_or_default();
    if let Some(bad) = group_by.iter().find(|g| !GROUPS.contains(&g.as_str())) {
        return Err(ApiError::invalid(
            format!("'group_by' accepts {}; got '{bad}'", GROUPS.join(", ")),
            Some("group_by"),
        ));
    }
    let filter = |name: &str| q.get(name).filter(|v| !v.is_empty()).cloned();
    let (projects, keys, models) = (
        filter("project_ids"),
        filter("api_key_ids"),
        filter("models"),
    );
    ensure_owned(
        &state,
        key.account_id.as_str(),
        keys.as_deref().unwrap_or_default(),
        projects.as_deref().unwrap_or_default(),
    )
    .await?;
    let aligned = start - start.rem_euclid(width);
    let first = match one(&q, "page") {
        Some(p) => p
            .parse::<i64>()
            .ok()
            .filter(|p| *p >= aligned && (p - aligned) % width == 0)
            .ok_or_else(|| {
                ApiError::invalid(
                    "'page' is not a cursor this endpoint returned",
                    Some("page"),
                )
            })?,
        None => aligned,
    };
    let mut starts = Vec::new();
    let mut t = first;
    while t < end && (starts.len() as i64) < limit {
        starts.push(t);
        t += width;
    }
    let has_more = t < end;
    let rows = match (starts.first(), starts.last()) {
        (Some(&s), Some(&l)) => state
            .read_model
            .usage(key.account_id.as_str(), s.min(start - 59), l + width)
            .await
            .map_err(|e| ApiError::Unavailable(format!("usage views unavailable: {e}")))?,
        _ => Vec::new(),
    };
    let keep = |r: &UsageRow| {
        projects.as_ref().is_none_or(|p| p.contains(&r.project_id))
            && keys.as_ref().is_none_or(|k| k.contains(&r.api_key_id))
            && models.as_ref().is_none_or(|m| {
                m.iter()
                    .any(|m| m == &r.path || m == &format!("lumina-{}", r.path))
            })
            // Rollups are per minute: a minute counts when it overlaps [start, end).
            && r.minute + 60 > start
            && r.minute < end
    };
    let grouped = |g: &str| group_by.iter().any(|x| x == g);
    let data = starts
        .iter()
        .map(|&bucket| {
            let mut results: BTreeMap<[Option<String>; 4], UsageResult> = BTreeMap::new();
            for r in rows
                .iter()
                .filter(|r| r.minute >= bucket && r.minute < bucket + width && keep(r))
            {
                let group = [
                    grouped("project_id").then(|| r.project_id.clone()),
                    grouped("api_key_id").then(|| r.api_key_id.clone()),
                    grouped("model").then(|| r.path.clone()),
                    grouped("provider").then(|| r.provider.clone()),
                ];
                let e = results.entry(group.clone()).or_insert_with(|| UsageResult {
                    object: "organization.usage.completions.result",
                    project_id: group[0].clone(),
                    api_key_id: group[1].clone(),
                    model: group[2].clone(),
                    provider: group[3].clone(),
                    ..UsageResult::default()
                });
                e.input_tokens = e.input_tokens.saturating_add(r.input_tokens);
                e.output_tokens = e.output_tokens.saturating_add(r.output_tokens);
                e.input_cached_tokens = e.input_cached_tokens.saturating_add(r.cached_tokens);
                e.reasoning_tokens = e.reasoning_tokens.saturating_add(r.reasoning_tokens);
                e.num_model_requests = e.num_model_requests.saturating_add(r.requests);
                e.credits_nano = e.credits_nano.checked_add(r.credits_nano).ok_or_else(|| {
                    ApiError::Unavailable("the credits of a usage bucket overflow".into())
                })?;
            }
            Ok(Bucket {
                object: "bucket",
                start_time: bucket,
                end_time: bucket + width,
                results: results
                    .into_values()
                    .map(|mut r| {
                        r.credits = NanoCredits(r.credits_nano).to_string();
                        r
                    })
                    .collect(),
            })
        })
        .collect::<Result<Vec<Bucket>, ApiError>>()?;
    Ok(Json(UsagePage {
        object: "page",
        data,
        has_more,
        next_page: has_more.then(|| t.to_string()),
    }))
}
