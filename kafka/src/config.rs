//! `[kafka]`: where the topic lives and how to reach it; topics are created on start.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use serde::Deserialize;

/// The largest message Lumina produces and asks of the topics it creates (64 MiB): an event
/// recording a request's content can be as large as the request body (8 MiB by default), and
/// Kafka's default of 1 MB would refuse it.
pub const MAX_MESSAGE_BYTES: &str = "67108864";

/// `[kafka]` in `lumina.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port…]`.
    pub brokers: String,
    /// The event topic.
    #[serde(default = "default_topic")]
    pub topic: String,
    /// The routing-policy topic.
    #[serde(default = "default_policy_topic")]
    pub policy_topic: String,
    /// Partitions of topics Lumina creates.
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    /// Replication factor of topics Lumina creates.
    #[serde(default = "default_replication")]
    pub replication_factor: i32,
    /// How ledger and projector processes split the partitions: `group` (a consumer group,
    /// cooperative rebalancing; on Apache Kafka a member that dies, its leader included, is
    /// replaced after the session timeout) or `all` (each process takes every partition;
    /// several run as hot standbys, the database keeps effects exactly once). `all` suits
    /// brokers whose coordinator keeps a dead leader in charge of the group (Tansu 0.6).
    #[serde(default)]
    pub assignment: Assignment,
    /// Whether each message carries `event_type` and `event_id` headers, for tools that route
    /// on headers without decoding. Off by default: the value is self-describing (its schema
    /// fingerprint names the type, its envelope the id), so headers only repeat it. On Apache
    /// Kafka they cost little (shipping ~10–25% slower, lag unchanged); a broker that stores
    /// every header as a row of its own (Tansu) ships and serves ~2.7× fewer events/s.
    #[serde(default = "default_headers")]
    pub headers: bool,
    /// How long shipped entries stay in a gateway's local log, in seconds.
    #[serde(default = "default_retention")]
    pub shipped_retention_seconds: u64,
    /// librdkafka settings passed through to every client (TLS, SASL, timeouts…), e.g.
    /// `"security.protocol" = "SASL_SSL"`.
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
}

/// How consumers get their partitions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Assignment {
    /// A consumer group with cooperative-sticky rebalancing.
    #[default]
    Group,
    /// Every partition, without a group.
    All,
}

fn default_topic() -> String {
    "lumina.events".into()
}

fn default_policy_topic() -> String {
    "lumina.policy".into()
}

fn default_partitions() -> i32 {
    6
}

fn default_replication() -> i32 {
    1
}

fn default_headers() -> bool {
    false
}

fn default_retention() -> u64 {
    24 * 3600
}

impl KafkaConfig {
    /// A configuration with defaults for `brokers`.
    pub fn new(brokers: impl Into<String>) -> KafkaConfig {
        KafkaConfig {
            brokers: brokers.into(),
            topic: default_topic(),
            policy_topic: default_policy_topic(),
            partitions: default_partitions(),
            replication_factor: default_replication(),
            assignment: Assignment::Group,
            headers: default_headers(),
            shipped_retention_seconds: default_retention(),
            settings: BTreeMap::new(),
        }
    }

    /// Where undecodable messages go: `<topic>.dlq`.
    pub fn dlq_topic(&self) -> String {
        format!("{}.dlq", self.topic)
    }

    /// Shipped entries older than this are pruned from the local log.
    pub fn retention(&self) -> Duration {
        Duration::from_secs(self.shipped_retention_seconds)
    }

    /// Checks what cannot be known from the types.
    pub fn validate(&self) -> Result<(), String> {
        if self.brokers.trim().is_empty() {
            return Err("kafka.brokers must name at least one broker".into());
        }
        if self.topic.trim().is_empty() || self.policy_topic.trim().is_empty() {
            return Err("kafka.topic and kafka.policy_topic must not be empty".into());
        }
        if self.partitions < 1 || self.replication_factor < 1 {
            return Err("kafka.partitions and kafka.replication_factor must be at least 1".into());
        }
        Ok(())
    }

    /// A client configuration: the brokers, then the pass-through settings.
    pub fn client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        for (k, v) in &self.settings {
            c.set(k, v);
        }
        c
    }

    /// Creates the event, policy and dead-letter topics when missing.
    pub async fn ensure_topics(&self) -> Result<(), String> {
        let admin: AdminClient<DefaultClientContext> = self
            .client()
            .create()
            .map_err(|e| format!("kafka admin client: {e}"))?;
        let dlq = self.dlq_topic();
        let topics = [
            NewTopic::new(
                &self.topic,
                self.partitions,
                TopicReplication::Fixed(self.replication_factor),
            )
            .set("max.message.bytes", MAX_MESSAGE_BYTES),
            NewTopic::new(
                &self.policy_topic,
                1,
                TopicReplication::Fixed(self.replication_factor),
            ),
            NewTopic::new(&dlq, 1, TopicReplication::Fixed(self.replication_factor))
                .set("max.message.bytes", MAX_MESSAGE_BYTES),
        ];
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = admin
            .create_topics(&topics, &options)
            .await
            .map_err(|e| format!("cannot create topics on {}: {e}", self.brokers))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => return Err(format!("cannot create topic {topic}: {code}")),
            }
        }
        Ok(())
    }
}
