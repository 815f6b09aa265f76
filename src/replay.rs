//! `lumina replay` and `lumina events tail`: print events as JSON lines, filtered by event type
//! and account — from a data dir's local log (by position; safe beside a running `lumina
//! serve`), or from the Kafka topic (by offset or time, to a bound, or following).

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

impl ReplayFilter {
    fn check(&self) -> anyhow::Result<()> {
        if let Some(t) = &self.event_type
            && EventType::from_name(t).is_none()
        {
            let known: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
            bail!(
                "unknown event type '{t}'; known types: {}",
                known.join(", ")
            );
        }
        Ok(())
    }

    fn wants(&self, event_type: &str, account: &str) -> bool {
        self.event_type.as_deref().is_none_or(|t| t == event_type)
            && self.account.as_deref().is_none_or(|a| a == account)
    }
}

/// Writes `event` as one JSON line with `extra` fields (its position) first.
fn write_line(
    out: &mut impl Write,
    event: &lumina_schemas::Event,
    extra: &[(&str, serde_json::Value)],
) -> anyhow::Result<()> {
    let mut value = serde_json::to_value(event)?;
    if let Some(map) = value.as_object_mut() {
        for (k, v) in extra {
            map.insert((*k).into(), v.clone());
        }
    }
    serde_json::to_writer(&mut *out, &value)?;
    out.write_all(b"\n")?;
    Ok(())
}

/// Avro object-container files, one per event type (`<dir>/<EventType>.avro`), each written with
/// the current schema of its type from `schemas/avro` — readable by any Avro tool.
pub struct AvroFiles {
    dir: std::path::PathBuf,
    writers: std::collections::HashMap<
        EventType,
        apache_avro::Writer<'static, std::io::BufWriter<std::fs::File>>,
    >,
}

impl AvroFiles {
    /// Files in `dir` (created when missing).
    pub fn new(dir: &std::path::Path) -> anyhow::Result<AvroFiles> {
        std::fs::create_dir_all(dir)?;
        Ok(AvroFiles {
            dir: dir.to_path_buf(),
            writers: std::collections::HashMap::new(),
        })
    }

    /// Appends `event`, upgraded to the current version of its type's schema.
    pub fn append(&mut self, event: &lumina_schemas::Event) -> anyhow::Result<()> {
        let event_type = event.event_type();
        let schema = lumina_schemas::codec::schema(event_type, event_type.current_version())
            .ok_or_else(|| anyhow::anyhow!("no schema for {}", event_type.as_str()))?;
        let bytes = lumina_schemas::encode(event)?;
        let value = apache_avro::reader::datum::GenericDatumReader::builder(schema)
            .build()?
            .read_value(&mut &bytes[lumina_schemas::codec::HEADER_LEN..])?;
        let writer = match self.writers.entry(event_type) {
            std::collections::hash_map::Entry::Occupied(w) => w.into_mut(),
            std::collections::hash_map::Entry::Vacant(slot) => {
                let path = self.dir.join(format!("{}.avro", event_type.as_str()));
                let file = std::io::BufWriter::new(std::fs::File::create(&path)?);
                slot.insert(apache_avro::Writer::new(schema, file)?)
            }
        };
        writer.append_value(value)?;
        Ok(())
    }

    /// Flushes every file.
    pub fn finish(self) -> anyhow::Result<()> {
        for (_, writer) in self.writers {
            let mut file = writer.into_inner()?;
            std::io::Write::flush(&mut file)?;
        }
        Ok(())
    }
}

/// Where replayed events go.
pub enum Sink<'a, W: Write> {
    /// JSON lines.
    Json(&'a mut W),
    /// Avro container files.
    Avro(AvroFiles),
}

/// Writes matching events of the topic as JSON lines (with `partition` and `offset`), each
/// `event_id` once; returns how many. Blocking.
pub fn replay_topic<W: Write>(
    config: &lumina_kafka::KafkaConfig,
    filter: &ReplayFilter,
    start: lumina_kafka::reader::Start,
    stop: lumina_kafka::reader::Stop,
    mut sink: Sink<'_, W>,
) -> anyhow::Result<u64> {
    filter.check()?;
    let mut printed = 0;
    let mut seen = std::collections::HashSet::new();
    let follow = matches!(stop, lumina_kafka::reader::Stop::Follow);
    lumina_kafka::reader::read(config, start, stop, |m| {
        let decoded = match lumina_schemas::decode(m.payload) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(partition = m.partition, offset = m.offset, error = %e, "undecodable message skipped");
                return Ok(true);
            }
        };
        let event = &decoded.event;
        // A shipper resending after a crash can repeat an event: print it once.
        if !seen.insert(event.envelope.event_id) {
            return Ok(true);
        }
        if filter.wants(event.event_type().as_str(), &event.envelope.account_id) {
            match &mut sink {
                Sink::Json(out) => {
                    let extra = [
                        ("partition", m.partition.into()),
                        ("offset", m.offset.into()),
                    ];
                    write_line(*out, event, &extra)
                        .and_then(|()| {
                            if follow {
                                out.flush()?;
                            }
                            Ok(())
                        })
                        .map_err(|e| e.to_string())?;
                }
                Sink::Avro(files) => files.append(event).map_err(|e| e.to_string())?,
            }
            printed += 1;
        }
        Ok(true)
    })
    .map_err(|e| anyhow::anyhow!("reading {}: {e}", config.topic))?;
    match sink {
        Sink::Json(out) => out.flush()?,
        Sink::Avro(files) => files.finish()?,
    }
    Ok(printed)
}

/// Writes matching events as JSON lines (`position` first, then the event's JSON rendering).
pub fn replay(
    log_path: &std::path::Path,
    filter: &ReplayFilter,
    out: &mut impl Write,
) -> anyhow::Result<u64> {
    filter.check()?;
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
            if !filter.wants(&entry.event_type, &entry.account_id) {
                continue;
            }
            match lumina_schemas::decode(&entry.bytes) {
                Ok(decoded) => {
                    write_line(out, &decoded.event, &[("position", entry.position.into())])?;
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
