//! The Kafka event source: a consumer-group member that never commits offsets to the broker.
//! On each assignment it reads the consumer's stored positions from the database — written in
//! the same transactions as the effects — and starts every assigned partition there; messages
//! below that position or of partitions it no longer owns are dropped. Cooperative rebalancing
//! (`cooperative-sticky`) moves only the partitions that change owner. Dead-lettered messages
//! are copied to `<topic>.dlq` with the reason. Dropping the source closes its clients within
//! [`CLOSE_WAIT`] each, whatever the broker's state.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use lumina_eventlog::consumer::load_positions;
use lumina_eventlog::{Database, EventSource, Polled, SourceError, SourceMessage};
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::close::{CLOSE_WAIT, close_within};
use crate::config::{Assignment, KafkaConfig, MAX_MESSAGE_BYTES};

/// Assigned partitions and the first offset accepted from each.
type Floors = Arc<Mutex<HashMap<i32, i64>>>;

fn floors(f: &Floors) -> std::sync::MutexGuard<'_, HashMap<i32, i64>> {
    f.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Seeks newly assigned partitions to the stored positions.
struct Context {
    db: Database,
    consumer: &'static str,
    topic: String,
    runtime: tokio::runtime::Handle,
    floors: Floors,
}

impl ClientContext for Context {}

impl Context {
    /// The stored positions, read on the runtime from librdkafka's polling thread (a blocking
    /// thread, never a runtime worker). Partitions without one start at the beginning.
    fn stored(&self) -> HashMap<i32, i64> {
        for attempt in 1..=5 {
            match self
                .runtime
                .block_on(load_positions(&self.db, self.consumer, &self.topic))
            {
                Ok(positions) => return positions.into_iter().collect(),
                Err(e) => {
                    tracing::warn!(consumer = self.consumer, error = %e, attempt, "cannot load positions on assignment");
                    std::thread::sleep(Duration::from_millis(200 * attempt));
                }
            }
        }
        // Starting from the beginning is safe: every applied event_id is skipped.
        HashMap::new()
    }
}

impl Context {
    /// Sets each of `partitions`' start in `tpl` to the stored position (or the beginning)
    /// and accepts its messages from there on.
    fn start_partitions(&self, tpl: &mut TopicPartitionList, partitions: &[i32]) {
        let stored = self.stored();
        let mut f = floors(&self.floors);
        for &p in partitions {
            let offset = stored.get(&p).copied();
            let at = offset.map_or(Offset::Beginning, Offset::Offset);
            if let Err(e) = tpl.set_partition_offset(&self.topic, p, at) {
                tracing::warn!(partition = p, error = %e, "cannot set the start offset");
            }
            f.insert(p, offset.unwrap_or(0));
        }
    }
}

impl ConsumerContext for Context {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let partitions: Vec<i32> = tpl
            .elements_for_topic(&self.topic)
            .iter()
            .map(|e| e.partition())
            .collect();
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.start_partitions(tpl, &partitions);
                tracing::info!(consumer = self.consumer, ?partitions, "partitions assigned");
                let result = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                if let Err(e) = result {
                    tracing::error!(error = %e, "assignment failed");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                {
                    let mut f = floors(&self.floors);
                    for p in &partitions {
                        f.remove(p);
                    }
                }
                tracing::info!(consumer = self.consumer, ?partitions, "partitions revoked");
                let result = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(e) = result {
                    tracing::error!(error = %e, "unassignment failed");
                }
            }
            other => {
                tracing::warn!(error = ?other, "rebalance error");
                floors(&self.floors).clear();
                let _ = consumer.unassign();
            }
        }
    }
}

/// Reads the event topic: as one member of the consumer's group, or (`assignment = "all"`)
/// every partition on its own.
pub struct KafkaSource {
    topic: String,
    dlq_topic: String,
    /// Taken when the source is dropped, to be closed within a bound.
    consumer: Option<Arc<BaseConsumer<Context>>>,
    floors: Floors,
    /// Taken when the source is dropped, likewise.
    dlq: Option<Arc<FutureProducer>>,
}

impl KafkaSource {
    /// Joins group `lumina-<consumer>` (or `group.id` from the settings) on the event topic,
    /// or with `assignment = "all"` takes every partition of the topic itself.
    pub async fn connect(
        config: &KafkaConfig,
        db: Database,
        consumer: &'static str,
    ) -> Result<KafkaSource, SourceError> {
        let err = |e: rdkafka::error::KafkaError| SourceError::Other(e.to_string());
        let floors: Floors = Arc::default();
        let context = Context {
            db,
            consumer,
            topic: config.topic.clone(),
            runtime: tokio::runtime::Handle::current(),
            floors: floors.clone(),
        };
        let mut client = rdkafka::ClientConfig::new();
        client
            .set("bootstrap.servers", &config.brokers)
            .set("group.id", format!("lumina-{consumer}"))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("session.timeout.ms", "10000")
            // Apache Kafka answers a fetch as soon as data arrives, so this only bounds idle
            // polls (an idle fetch every 100 ms costs nothing worth measuring); brokers that
            // sleep through it on every fetch (Tansu: the default 500 ms held produce-to-apply
            // lag at p50 ~440 ms) keep a usable lag with it.
            .set("fetch.wait.max.ms", "100")
            .set("heartbeat.interval.ms", "1000")
            // The rebalance timeout: how long a join waits for members that died without
            // leaving. The loop polls every few hundred milliseconds, so 15 s is plenty.
            .set("max.poll.interval.ms", "15000");
        for (k, v) in &config.settings {
            client.set(k, v);
        }
        let kafka: BaseConsumer<Context> = client.create_with_context(context).map_err(err)?;
        let kafka = Arc::new(kafka);
        match config.assignment {
            Assignment::Group => kafka.subscribe(&[config.topic.as_str()]).map_err(err)?,
            Assignment::All => {
                let k = kafka.clone();
                let topic = config.topic.clone();
                tokio::task::spawn_blocking(move || assign_all(&k, &topic))
                    .await
                    .map_err(|e| SourceError::Other(format!("assignment task failed: {e}")))??;
            }
        }
        let dlq: FutureProducer = config
            .client()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.max.bytes", MAX_MESSAGE_BYTES)
            .create()
            .map_err(err)?;
        Ok(KafkaSource {
            topic: config.topic.clone(),
            dlq_topic: config.dlq_topic(),
            consumer: Some(kafka),
            floors,
            dlq: Some(Arc::new(dlq)),
        })
    }

    fn consumer(&self) -> Result<Arc<BaseConsumer<Context>>, SourceError> {
        self.consumer
            .clone()
            .ok_or_else(|| SourceError::Other("the Kafka consumer is closed".into()))
    }
}

impl Drop for KafkaSource {
    /// Leaves the group and closes the dead-letter producer, waiting on the broker for at most
    /// [`CLOSE_WAIT`] each.
    fn drop(&mut self) {
        if let Some(consumer) = self.consumer.take() {
            close_within(consumer, CLOSE_WAIT, "consumer");
        }
        if let Some(dlq) = self.dlq.take() {
            close_within(dlq, CLOSE_WAIT, "dlq-producer");
        }
    }
}

impl KafkaSource {
    /// The end of every partition of the topic now: `(partition, high watermark)` for each
    /// partition that holds messages.
    pub async fn ends(&self) -> Result<Vec<(i32, i64)>, SourceError> {
        let consumer = self.consumer()?;
        let topic = self.topic.clone();
        tokio::task::spawn_blocking(move || {
            let err = |e: rdkafka::error::KafkaError| SourceError::Other(e.to_string());
            let timeout = Duration::from_secs(10);
            let metadata = consumer
                .fetch_metadata(Some(&topic), timeout)
                .map_err(err)?;
            let mut ends = Vec::new();
            for t in metadata.topics().iter().filter(|t| t.name() == topic) {
                for p in t.partitions() {
                    let (low, high) = consumer
                        .fetch_watermarks(&topic, p.id(), timeout)
                        .map_err(err)?;
                    if high > low {
                        ends.push((p.id(), high));
                    }
                }
            }
            Ok(ends)
        })
        .await
        .map_err(|e| SourceError::Other(format!("watermark task failed: {e}")))?
    }
}

impl EventSource for KafkaSource {
    fn stream(&self) -> &str {
        &self.topic
    }

    /// Positions are applied per assignment, in the rebalance callback.
    async fn seek(&mut self, _next_offsets: &[(i32, i64)]) -> Result<(), SourceError> {
        Ok(())
    }

    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Polled, SourceError> {
        let consumer = self.consumer()?;
        let floors = self.floors.clone();
        let messages = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            let mut timeout = wait;
            while out.len() < max {
                match consumer.poll(timeout) {
                    None => break,
                    Some(Err(e)) if out.is_empty() => {
                        return Err(SourceError::Other(e.to_string()));
                    }
                    Some(Err(_)) => break,
                    Some(Ok(m)) => {
                        timeout = Duration::ZERO;
                        let wanted =
                            floors_of(&floors, m.partition()).is_some_and(|f| m.offset() >= f);
                        if wanted {
                            out.push(SourceMessage {
                                partition: m.partition(),
                                offset: m.offset(),
                                bytes: m.payload().unwrap_or_default().to_vec(),
                            });
                        }
                    }
                }
            }
            Ok(out)
        })
        .await
        .map_err(|e| SourceError::Other(format!("poll task failed: {e}")))??;
        Ok(Polled {
            messages,
            next_offsets: Vec::new(),
        })
    }

    async fn dead_lettered(&mut self, message: &SourceMessage, reason: &str) {
        let partition = message.partition.to_string();
        let offset = message.offset.to_string();
        let headers = OwnedHeaders::new_with_capacity(4)
            .insert(Header {
                key: "reason",
                value: Some(reason),
            })
            .insert(Header {
                key: "source_topic",
                value: Some(self.topic.as_str()),
            })
            .insert(Header {
                key: "source_partition",
                value: Some(partition.as_str()),
            })
            .insert(Header {
                key: "source_offset",
                value: Some(offset.as_str()),
            });
        let record: FutureRecord<'_, (), [u8]> = FutureRecord::to(&self.dlq_topic)
            .payload(message.bytes.as_slice())
            .headers(headers);
        let Some(dlq) = &self.dlq else {
            return;
        };
        if let Err((e, _)) = dlq.send(record, Duration::from_secs(10)).await {
            tracing::error!(error = %e, partition = message.partition, offset = message.offset,
                "cannot copy a dead letter to the dead-letter topic (it is in dead_letters)");
        }
    }
}

/// Takes every partition of `topic`, each from its stored position; waits for the broker.
fn assign_all(consumer: &BaseConsumer<Context>, topic: &str) -> Result<(), SourceError> {
    let partitions: Vec<i32> = loop {
        match consumer.fetch_metadata(Some(topic), Duration::from_secs(5)) {
            Ok(m) => {
                let found: Vec<i32> = m
                    .topics()
                    .iter()
                    .filter(|t| t.name() == topic)
                    .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                    .collect();
                if !found.is_empty() {
                    break found;
                }
                tracing::warn!(topic, "topic has no partitions yet; retrying");
            }
            Err(e) => tracing::warn!(topic, error = %e, "cannot read topic metadata; retrying"),
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    let mut tpl = TopicPartitionList::new();
    for &p in &partitions {
        tpl.add_partition(topic, p);
    }
    consumer.context().start_partitions(&mut tpl, &partitions);
    consumer
        .assign(&tpl)
        .map_err(|e| SourceError::Other(e.to_string()))?;
    tracing::info!(topic, ?partitions, "took every partition");
    Ok(())
}

fn floors_of(f: &Floors, partition: i32) -> Option<i64> {
    floors(f).get(&partition).copied()
}
