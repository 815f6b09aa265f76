//! Reading the event topic outside any consumer group, for `lumina replay` and
//! `lumina events tail`: every partition from an offset, a timestamp or the end, up to the end
//! as it was when reading started, a timestamp, or for ever.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::config::KafkaConfig;

/// Where reading starts in every partition.
#[derive(Debug, Clone, Copy)]
pub enum Start {
    /// The first message kept.
    Beginning,
    /// This offset (or the first kept after it).
    Offset(i64),
    /// The first message at or after this time, ms since the epoch.
    Time(i64),
    /// New messages only.
    End,
}

/// Where reading stops.
#[derive(Debug, Clone, Copy)]
pub enum Stop {
    /// At the end of each partition as it was when reading started.
    End,
    /// Before the first message at or after this time, ms since the epoch (or at the end).
    Time(i64),
    /// Never: follow new messages.
    Follow,
}

/// One message read back.
pub struct TopicMessage<'a> {
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Broker timestamp, ms since the epoch, when known.
    pub timestamp_ms: Option<i64>,
    /// The bytes: an Avro single-object event.
    pub payload: &'a [u8],
}

fn err(e: rdkafka::error::KafkaError) -> String {
    e.to_string()
}

/// Reads `config.topic` from `start` to `stop`, handing each message to `each` (which returns
/// `false` to stop early). Returns each partition's end offset as of the start. Blocking.
pub fn read(
    config: &KafkaConfig,
    start: Start,
    stop: Stop,
    mut each: impl FnMut(TopicMessage<'_>) -> Result<bool, String>,
) -> Result<BTreeMap<i32, i64>, String> {
    let consumer: BaseConsumer = config
        .client()
        .set("group.id", "lumina-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .map_err(err)?;
    let timeout = Duration::from_secs(10);
    let metadata = consumer
        .fetch_metadata(Some(&config.topic), timeout)
        .map_err(err)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == config.topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(format!("topic {} has no partitions", config.topic));
    }
    // Where each partition ends now; partitions with nothing left to read are done.
    let mut ends: BTreeMap<i32, i64> = BTreeMap::new();
    let mut remaining: BTreeMap<i32, i64> = BTreeMap::new();
    let mut tpl = TopicPartitionList::new();
    for &p in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(&config.topic, p, timeout)
            .map_err(err)?;
        let from = match start {
            Start::Beginning | Start::Time(_) => Offset::Beginning,
            Start::Offset(o) => Offset::Offset(o.max(low)),
            Start::End => Offset::End,
        };
        ends.insert(p, high);
        let first = match (start, from) {
            (Start::End, _) => high,
            (_, Offset::Offset(o)) => o,
            _ => low,
        };
        if !matches!(stop, Stop::Follow) && first >= high {
            continue;
        }
        remaining.insert(p, high);
        tpl.add_partition_offset(&config.topic, p, from)
            .map_err(err)?;
    }
    if let Start::Time(ms) = start {
        let mut times = TopicPartitionList::new();
        for &p in remaining.keys() {
            times
                .add_partition_offset(&config.topic, p, Offset::Offset(ms))
                .map_err(err)?;
        }
        tpl = consumer.offsets_for_times(times, timeout).map_err(err)?;
    }
    if remaining.is_empty() {
        return Ok(ends);
    }
    consumer.assign(&tpl).map_err(err)?;
    while matches!(stop, Stop::Follow) || !remaining.is_empty() {
        let Some(message) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let m = message.map_err(err)?;
        let partition = m.partition();
        let Some(&end) = remaining.get(&partition).or(match stop {
            Stop::Follow => Some(&i64::MAX),
            _ => None,
        }) else {
            continue;
        };
        let timestamp_ms = m.timestamp().to_millis();
        let past_time = matches!((stop, timestamp_ms), (Stop::Time(t), Some(ts)) if ts >= t);
        if !past_time {
            let go_on = each(TopicMessage {
                partition,
                offset: m.offset(),
                timestamp_ms,
                payload: m.payload().unwrap_or_default(),
            })?;
            if !go_on {
                return Ok(ends);
            }
        }
        if past_time || m.offset() + 1 >= end {
            remaining.remove(&partition);
        }
    }
    Ok(ends)
}
