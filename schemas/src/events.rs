//! The event model: the envelope every event carries, the closed set of event types, and the
//! JSON rendering used by people and JSONL exports.
//!
//! Adding an event type means: a schema under `avro/<snake_name>/v1.avsc`, a payload struct in
//! [`crate::payloads`], and one line in the `event_types!` invocation below.

use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::de::Error as _;
use serde::ser::SerializeStruct;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

use crate::payloads;

/// The fields every event carries beside its payload (DESIGN §3).
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// UUIDv7, unique forever; consumers drop duplicates by it.
    pub event_id: Uuid,
    /// When the fact became true, µs since the Unix epoch (UTC).
    pub occurred_at: i64,
    /// The request this fact belongs to.
    pub request_id: Option<String>,
    /// The account; the Kafka key. [`SYSTEM_ACCOUNT`] for global facts.
    pub account_id: String,
    /// The project, when known.
    pub project_id: Option<String>,
    /// The API key's id, when the fact came from a keyed request.
    pub api_key_id: Option<String>,
    /// The process that wrote the event.
    pub gateway_instance: String,
    /// W3C trace id when the request carried one.
    pub trace_id: Option<String>,
}

/// Account id used for facts that belong to no customer (policy snapshots).
pub const SYSTEM_ACCOUNT: &str = "system";

impl Envelope {
    /// A new envelope for `account_id`, stamped now with a fresh UUIDv7.
    pub fn new(account_id: impl Into<String>, gateway_instance: impl Into<String>) -> Self {
        Envelope {
            event_id: Uuid::now_v7(),
            occurred_at: now_micros(),
            request_id: None,
            account_id: account_id.into(),
            project_id: None,
            api_key_id: None,
            gateway_instance: gateway_instance.into(),
            trace_id: None,
        }
    }
}

/// Microseconds since the Unix epoch, now.
pub fn now_micros() -> i64 {
    Utc::now().timestamp_micros()
}

/// One immutable fact: envelope and payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Identity, time and ownership of the fact.
    pub envelope: Envelope,
    /// What happened.
    pub payload: Payload,
}

impl Event {
    /// Wraps a payload in an envelope.
    pub fn new(envelope: Envelope, payload: impl Into<Payload>) -> Self {
        Event {
            envelope,
            payload: payload.into(),
        }
    }

    /// The event's type.
    pub fn event_type(&self) -> EventType {
        self.payload.event_type()
    }
}

macro_rules! event_types {
    ($( $variant:ident => $dir:literal [$($version:literal),+] current $current:literal; )+) => {
        /// The closed set of event types.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum EventType {
            $(
                #[doc = concat!("`", stringify!($variant), "`")]
                $variant,
            )+
        }

        impl EventType {
            /// Every event type.
            pub const ALL: &'static [EventType] = &[$(EventType::$variant),+];

            /// The type's name, as in `event_type` and the schema's record name.
            pub fn as_str(self) -> &'static str {
                match self { $(EventType::$variant => stringify!($variant)),+ }
            }

            /// Parses a type name; `None` when unknown.
            pub fn from_name(name: &str) -> Option<EventType> {
                match name { $(stringify!($variant) => Some(EventType::$variant),)+ _ => None }
            }

            /// The schema version this code writes.
            pub fn current_version(self) -> u32 {
                match self { $(EventType::$variant => $current),+ }
            }
        }

        /// Every released schema: (type, version, schema JSON), oldest first per type.
        pub(crate) const SCHEMA_SOURCES: &[(EventType, u32, &str)] = &[
            $($(
                (
                    EventType::$variant,
                    $version,
                    include_str!(concat!("../avro/", $dir, "/v", stringify!($version), ".avsc")),
                ),
            )+)+
        ];

        /// An event's payload, one variant per event type.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Payload {
            $(
                #[doc = concat!("`", stringify!($variant), "`")]
                $variant(payloads::$variant),
            )+
        }

        impl Payload {
            /// The payload's event type.
            pub fn event_type(&self) -> EventType {
                match self { $(Payload::$variant(_) => EventType::$variant),+ }
            }

            /// Decodes a payload of type `event_type` from a JSON value.
            pub fn from_json(event_type: EventType, value: serde_json::Value)
                -> Result<Payload, serde_json::Error>
            {
                Ok(match event_type {
                    $(EventType::$variant => Payload::$variant(serde_json::from_value(value)?)),+
                })
            }
        }

        impl Serialize for Payload {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                match self { $(Payload::$variant(p) => p.serialize(serializer)),+ }
            }
        }

        $(
            impl From<payloads::$variant> for Payload {
                fn from(p: payloads::$variant) -> Payload { Payload::$variant(p) }
            }
        )+

        impl Payload {
            /// Hands the payload struct, whatever its type, to `visitor`.
            pub(crate) fn visit<V: PayloadVisitor>(&self, visitor: V) -> V::Output {
                match self { $(Payload::$variant(p) => visitor.visit(p)),+ }
            }
        }

        impl EventType {
            /// Decodes this type's payload struct with `decoder` and wraps it.
            pub(crate) fn decode_payload<D: PayloadDecoder>(self, decoder: D) -> Result<Payload, D::Error> {
                match self { $(EventType::$variant => decoder.decode::<payloads::$variant>().map(Payload::$variant)),+ }
            }
        }
    };
}

event_types! {
    AccountOpened => "account_opened" [1, 2] current 2;
    CreditsGranted => "credits_granted" [1] current 1;
    ApiKeyCreated => "api_key_created" [1, 2, 3, 4, 5, 6] current 6;
    ApiKeyRevoked => "api_key_revoked" [1, 2] current 2;
    LimitsChanged => "limits_changed" [1, 2] current 2;
    PolicyPublished => "policy_published" [1, 2] current 2;
    PolicyActivated => "policy_activated" [1, 2] current 2;
    RequestRouted => "request_routed" [1, 2, 3, 4] current 4;
    UpstreamAttempted => "upstream_attempted" [1, 2] current 2;
    RequestSettled => "request_settled" [1, 2] current 2;
    FeedbackReceived => "feedback_received" [1] current 1;
    HoldExpired => "hold_expired" [1] current 1;
    FusionPanelCompleted => "fusion_panel_completed" [1] current 1;
    RequestContentRecorded => "request_content_recorded" [1] current 1;
    EvalCompleted => "eval_completed" [1] current 1;
    ProjectCreated => "project_created" [1, 2] current 2;
    ProjectRenamed => "project_renamed" [1, 2] current 2;
    ProjectArchived => "project_archived" [1, 2] current 2;
    ApiKeyExpirySet => "api_key_expiry_set" [1, 2] current 2;
    BudgetSet => "budget_set" [1] current 1;
    BudgetRemoved => "budget_removed" [1] current 1;
    BudgetThresholdCrossed => "budget_threshold_crossed" [1] current 1;
    AdminKeyCreated => "admin_key_created" [1] current 1;
    AdminKeyRevoked => "admin_key_revoked" [1] current 1;
}

/// Something done with a payload struct, generic over its type.
pub(crate) trait PayloadVisitor {
    type Output;
    fn visit<P: Serialize>(self, payload: &P) -> Self::Output;
}

/// Something that produces a payload struct of a type chosen at run time.
pub(crate) trait PayloadDecoder {
    type Error;
    fn decode<P: serde::de::DeserializeOwned>(self) -> Result<P, Self::Error>;
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Renders µs since the epoch as RFC 3339 with microseconds, e.g. `2026-11-25T12:00:00.000001Z`.
pub fn micros_to_rfc3339(micros: i64) -> String {
    DateTime::<Utc>::from_timestamp_micros(micros)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Micros, true))
        .unwrap_or_else(|| micros.to_string())
}

/// The JSON rendering: envelope fields, `event_type`, `schema_version`, then `payload`.
impl Serialize for Event {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let e = &self.envelope;
        let mut s = serializer.serialize_struct("Event", 11)?;
        s.serialize_field("event_id", &e.event_id.hyphenated().to_string())?;
        s.serialize_field("event_type", self.event_type().as_str())?;
        s.serialize_field("schema_version", &self.event_type().current_version())?;
        s.serialize_field("occurred_at", &micros_to_rfc3339(e.occurred_at))?;
        s.serialize_field("request_id", &e.request_id)?;
        s.serialize_field("account_id", &e.account_id)?;
        s.serialize_field("project_id", &e.project_id)?;
        s.serialize_field("api_key_id", &e.api_key_id)?;
        s.serialize_field("gateway_instance", &e.gateway_instance)?;
        s.serialize_field("trace_id", &e.trace_id)?;
        s.serialize_field("payload", &self.payload)?;
        s.end()
    }
}

#[derive(Deserialize)]
struct EventJson {
    event_id: Uuid,
    event_type: String,
    occurred_at: DateTime<Utc>,
    request_id: Option<String>,
    account_id: String,
    project_id: Option<String>,
    api_key_id: Option<String>,
    gateway_instance: String,
    trace_id: Option<String>,
    payload: serde_json::Value,
}

impl<'de> Deserialize<'de> for Event {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let j = EventJson::deserialize(deserializer)?;
        let event_type = EventType::from_name(&j.event_type)
            .ok_or_else(|| D::Error::custom(format!("unknown event_type `{}`", j.event_type)))?;
        let payload = Payload::from_json(event_type, j.payload).map_err(D::Error::custom)?;
        Ok(Event {
            envelope: Envelope {
                event_id: j.event_id,
                occurred_at: j.occurred_at.timestamp_micros(),
                request_id: j.request_id,
                account_id: j.account_id,
                project_id: j.project_id,
                api_key_id: j.api_key_id,
                gateway_instance: j.gateway_instance,
                trace_id: j.trace_id,
            },
            payload,
        })
    }
}
