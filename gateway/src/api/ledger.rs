//! The finance surfaces (admin key): an account's journal entries, and statements as JSON or
//! CSV. Amounts are integer nano-credits; statements add decimal credit renderings.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, NaiveDate, Utc};
use lumina_ledger::store::{EntryRow, Statement};
use lumina_schemas::NanoCredits;
use serde::{Deserialize, Serialize};

use crate::api::error::ApiError;
use crate::api::extract::{AdminKey, ApiQuery};
use crate::state::AppState;

/// Query of the entries endpoint.
#[derive(Deserialize)]
pub struct EntriesQuery {
    #[serde(default)]
    limit: Option<i64>,
    #[serde(default)]
    after: Option<i64>,
}

/// A page of entries.
#[derive(Serialize)]
pub struct EntriesPage {
    object: &'static str,
    data: Vec<EntryRow>,
    has_more: bool,
    last_id: Option<i64>,
}

/// `GET /admin/ledger/accounts/{id}/entries?limit=&after=`
pub async fn entries(
    State(state): State<AppState>,
    _admin: AdminKey,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<EntriesQuery>,
) -> Result<Json<EntriesPage>, ApiError> {
    state.admin.account(&id).await?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid(
            "'limit' must be between 1 and 1000",
            Some("limit"),
        ));
    }
    let mut data = state
        .ledger
        .entries(&id, q.after.unwrap_or(0), limit + 1)
        .await
        .map_err(|e| ApiError::Unavailable(format!("ledger unavailable: {e}")))?;
    let has_more = data.len() as i64 > limit;
    data.truncate(limit as usize);
    Ok(Json(EntriesPage {
        object: "list",
        last_id: data.last().map(|e| e.id),
        has_more,
        data,
    }))
}

/// Query of the statements endpoint.
#[derive(Deserialize)]
pub struct StatementQuery {
    account_id: String,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    format: Option<String>,
}

/// Parses a statement bound: RFC 3339, a `YYYY-MM-DD` day (UTC midnight) or Unix seconds.
pub fn parse_time(text: &str, param: &str) -> Result<i64, ApiError> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc).timestamp_micros());
    }
    if let Ok(d) = NaiveDate::parse_from_str(text, "%Y-%m-%d")
        && let Some(t) = d.and_hms_opt(0, 0, 0)
    {
        return Ok(t.and_utc().timestamp_micros());
    }
    if let Ok(secs) = text.parse::<i64>() {
        return secs
            .checked_mul(1_000_000)
            .ok_or_else(|| ApiError::invalid(format!("'{param}' is out of range"), Some(param)));
    }
    Err(ApiError::invalid(
        format!("'{param}' must be an RFC 3339 time, a YYYY-MM-DD day or Unix seconds"),
        Some(param),
    ))
}

fn credits(nano: i64) -> String {
    NanoCredits(nano).to_string()
}

/// A statement rendered for JSON, with decimal credits beside the integers.
#[derive(Serialize)]
struct StatementJson<'a> {
    object: &'static str,
    #[serde(flatten)]
    statement: &'a Statement,
    opening_available: String,
    closing_available: String,
    total_granted: String,
    total_spent: String,
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The statement as CSV: one row per entry, with opening and closing rows.
pub fn statement_csv(st: &Statement) -> String {
    let mut out = String::from(
        "row,entry_id,occurred_at,kind,request_id,event_id,available_delta_nano,held_delta_nano,spent_delta_nano,granted_delta_nano,available_nano,held_nano,spent_nano,granted_nano,available_credits\n",
    );
    let b = &st.opening;
    out.push_str(&format!(
        "opening,,{},,,,,,,,{},{},{},{},{}\n",
        lumina_schemas::events::micros_to_rfc3339(st.from),
        b.available_nano,
        b.held_nano,
        b.spent_nano,
        b.granted_nano,
        credits(b.available_nano)
    ));
    for l in &st.lines {
        let (d, b) = (&l.delta, &l.balance);
        out.push_str(&format!(
            "entry,{},{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
            l.entry.id,
            lumina_schemas::events::micros_to_rfc3339(l.entry.occurred_at),
            l.entry.kind,
            csv_field(l.entry.request_id.as_deref().unwrap_or("")),
            l.entry.event_id,
            d.available_nano,
            d.held_nano,
            d.spent_nano,
            d.granted_nano,
            b.available_nano,
            b.held_nano,
            b.spent_nano,
            b.granted_nano,
            credits(b.available_nano)
        ));
    }
    let b = &st.closing;
    out.push_str(&format!(
        "closing,,{},,,,{},{},{},{},{},{},{},{},{}\n",
        lumina_schemas::events::micros_to_rfc3339(st.to),
        st.totals.available_nano,
        st.totals.held_nano,
        st.totals.spent_nano,
        st.totals.granted_nano,
        b.available_nano,
        b.held_nano,
        b.spent_nano,
        b.granted_nano,
        credits(b.available_nano)
    ));
    out
}

/// `GET /admin/ledger/statements?account_id=&from=&to=&format=csv|json`
pub async fn statement(
    State(state): State<AppState>,
    _admin: AdminKey,
    ApiQuery(q): ApiQuery<StatementQuery>,
) -> Result<Response, ApiError> {
    state.admin.account(&q.account_id).await?;
    let from = match &q.from {
        Some(t) => parse_time(t, "from")?,
        None => 0,
    };
    let to = match &q.to {
        Some(t) => parse_time(t, "to")?,
        None => lumina_schemas::now_micros() + 1,
    };
    if to <= from {
        return Err(ApiError::invalid("'to' must be after 'from'", Some("to")));
    }
    let st = state
        .ledger
        .statement(&q.account_id, from, to)
        .await
        .map_err(|e| ApiError::Unavailable(format!("ledger unavailable: {e}")))?;
    match q.format.as_deref().unwrap_or("json") {
        "json" => Ok(Json(StatementJson {
            object: "statement",
            statement: &st,
            opening_available: credits(st.opening.available_nano),
            closing_available: credits(st.closing.available_nano),
            total_granted: credits(st.totals.granted_nano),
            total_spent: credits(st.totals.spent_nano),
        })
        .into_response()),
        "csv" => Ok((
            [(CONTENT_TYPE, "text/csv; charset=utf-8")],
            statement_csv(&st),
        )
            .into_response()),
        other => Err(ApiError::invalid(
            format!("'format' must be csv or json, not '{other}'"),
            Some("format"),
        )),
    }
}
