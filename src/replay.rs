//! `lumina replay`: prints a data dir's local log as JSON lines, filtered by position, event
//! type and account. Safe beside a running `lumina serve`.

use std::io::Write;

use anyhow::bail;
use lumina_eventlog::LogReader;
use lumina_schemas::EventType;

/// What to print.
pub struct ReplayFilter {
    /// First position printed.
    pub from: u64,
    /// Only this event type.
    pub event_type: Option<String>,
    /// Only this account.
    pub account: Option<String>,
}

/// Writes matching events as JSON lines (`position` first, then the event's JSON rendering).
pub fn replay(
    log_path: &std::path::Path,
    filter: &ReplayFilter,
    out: &mut impl Write,
) -> anyhow::Result<u64> {
    if let Some(t) = &filter.event_type
        && EventType::from_name(t).is_none()
    {
        let known: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
        bail!(
            "unknown event type '{t}'; known types: {}",
            known.join(", ")
        );
    }
    let reader = LogReader::open(log_path)?;
    let mut after = filter.from.saturating_sub(1);
    let mut printed = 0;
    loop {
        let batch = reader.read_after_blocking(after, 1000)?;
        let Some(last) = batch.last() else {
            break;
        };
        after = last.position;
        for entry in batch {
            if filter
                .event_type
                .as_deref()
                .is_some_and(|t| t != entry.event_type)
                || filter
                    .account
                    .as_deref()
                    .is_some_and(|a| a != entry.account_id)
            {
                continue;
            }
            match lumina_schemas::decode(&entry.bytes) {
                Ok(decoded) => {
                    let mut value = serde_json::to_value(&decoded.event)?;
                    if let Some(map) = value.as_object_mut() {
                        map.insert("position".into(), entry.position.into());
                    }
                    serde_json::to_writer(&mut *out, &value)?;
                    out.write_all(b"\n")?;
                    printed += 1;
                }
                Err(e) => {
                    tracing::warn!(position = entry.position, error = %e, "undecodable entry skipped");
                }
            }
        }
    }
    out.flush()?;
    Ok(printed)
}
