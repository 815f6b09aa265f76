//! Avro single-object encoding of events: `C3 01`, the writer schema's 8-byte CRC-64-AVRO
//! fingerprint (little-endian), then the Avro binary body. Every message names its writer
//! schema, so any released version decodes without a registry service.
//!
//! The schema registry here is built once from the `.avsc` files compiled into the crate.

use std::collections::HashMap;
use std::sync::LazyLock;

use apache_avro::headers::{HeaderBuilder, RabinFingerprintHeader};
use apache_avro::schema::ResolvedSchema;
use apache_avro::{Schema, to_value};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::binary::{self, Node};
use crate::events::{Envelope, Event, EventType, PayloadDecoder, PayloadVisitor, SCHEMA_SOURCES};

/// Length of the single-object header: 2 magic bytes and an 8-byte fingerprint.
pub const HEADER_LEN: usize = 10;
/// The single-object encoding's magic bytes.
pub const MAGIC: [u8; 2] = [0xC3, 0x01];

/// Why an event could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The bundled schemas failed to load: a build defect, caught by the crate's tests.
    #[error("schema registry failed to load: {0}")]
    Registry(String),
    /// The message is shorter than a header or lacks the magic bytes.
    #[error("not an Avro single-object message (missing C3 01 header)")]
    NotSingleObject,
    /// The fingerprint names no schema this build knows.
    #[error("unknown writer schema fingerprint {0}")]
    UnknownFingerprint(String),
    /// No schema of that type and version is released.
    #[error("no schema {0} v{1}")]
    UnknownVersion(EventType, u32),
    /// The body does not match its writer schema.
    #[error("malformed {event_type} v{version} body: {reason}")]
    Body {
        /// Type named by the fingerprint.
        event_type: EventType,
        /// Version named by the fingerprint.
        version: u32,
        /// The Avro decoder's complaint.
        reason: String,
    },
    /// The event could not be written with its schema.
    #[error("cannot encode {0}: {1}")]
    Encode(EventType, String),
}

struct SchemaEntry {
    event_type: EventType,
    version: u32,
    schema: &'static Schema,
    header: [u8; HEADER_LEN],
    /// The schema compiled for reading and writing bodies.
    node: Node,
}

struct Registry {
    entries: Vec<SchemaEntry>,
    by_fingerprint: HashMap<[u8; 8], usize>,
    current: HashMap<EventType, usize>,
}

static REGISTRY: LazyLock<Result<Registry, String>> = LazyLock::new(build_registry);

fn build_registry() -> Result<Registry, String> {
    // Parsed schemas live for the whole process; leaking them lets readers and writers
    // borrow them with 'static lifetimes instead of re-resolving names per message.
    let mut parsed: Vec<(EventType, u32, &'static Schema)> = Vec::new();
    for &(event_type, version, source) in SCHEMA_SOURCES {
        let schema =
            Schema::parse_str(source).map_err(|e| format!("{event_type} v{version}: {e}"))?;
        parsed.push((event_type, version, Box::leak(Box::new(schema))));
    }
    let mut entries = Vec::new();
    let mut by_fingerprint = HashMap::new();
    let mut current = HashMap::new();
    for &(event_type, version, schema) in &parsed {
        let header_vec = RabinFingerprintHeader::from_schema(schema).build_header();
        let header: [u8; HEADER_LEN] = header_vec
            .as_slice()
            .try_into()
            .map_err(|_| format!("{event_type} v{version}: header is not {HEADER_LEN} bytes"))?;
        let resolved = ResolvedSchema::try_from(schema).map_err(|e| e.to_string())?;
        let is_current = version == event_type.current_version();
        let node = binary::compile(schema, resolved.get_names())
            .map_err(|e| format!("{event_type} v{version}: {e}"))?;
        let mut fingerprint = [0u8; 8];
        fingerprint.copy_from_slice(&header[2..]);
        if by_fingerprint.insert(fingerprint, entries.len()).is_some() {
            return Err(format!("{event_type} v{version}: duplicate fingerprint"));
        }
        if is_current {
            current.insert(event_type, entries.len());
        }
        entries.push(SchemaEntry {
            event_type,
            version,
            schema,
            header,
            node,
        });
    }
    for &t in EventType::ALL {
        if !current.contains_key(&t) {
            return Err(format!("{t} has no schema for its current version"));
        }
    }
    Ok(Registry {
        entries,
        by_fingerprint,
        current,
    })
}

fn registry() -> Result<&'static Registry, CodecError> {
    REGISTRY
        .as_ref()
        .map_err(|e| CodecError::Registry(e.clone()))
}

impl Registry {
    fn entry(&self, event_type: EventType, version: u32) -> Result<&SchemaEntry, CodecError> {
        let idx = if version == event_type.current_version() {
            self.current.get(&event_type).copied()
        } else {
            self.entries
                .iter()
                .position(|e| e.event_type == event_type && e.version == version)
        };
        idx.map(|i| &self.entries[i])
            .ok_or(CodecError::UnknownVersion(event_type, version))
    }
}

/// The parsed schema of `event_type` at `version`, if released.
pub fn schema(event_type: EventType, version: u32) -> Option<&'static Schema> {
    let reg = registry().ok()?;
    reg.entry(event_type, version).ok().map(|e| e.schema)
}

/// The single-object header (magic and fingerprint) of `event_type` at `version`.
pub fn header(event_type: EventType, version: u32) -> Option<[u8; HEADER_LEN]> {
    let reg = registry().ok()?;
    reg.entry(event_type, version).ok().map(|e| e.header)
}

/// Checks that every bundled schema parses and every type has its current version.
pub fn check_registry() -> Result<(), CodecError> {
    registry().map(|_| ())
}

#[derive(Serialize)]
struct WireOut<'a, P> {
    event_id: &'a str,
    event_type: &'static str,
    schema_version: i32,
    occurred_at: i64,
    request_id: Option<&'a str>,
    account_id: &'a str,
    project_id: Option<&'a str>,
    api_key_id: Option<&'a str>,
    gateway_instance: &'a str,
    trace_id: Option<&'a str>,
    payload: &'a P,
}

#[derive(Deserialize)]
struct WireIn<P> {
    event_id: String,
    event_type: String,
    schema_version: i32,
    occurred_at: i64,
    request_id: Option<String>,
    account_id: String,
    project_id: Option<String>,
    api_key_id: Option<String>,
    gateway_instance: String,
    trace_id: Option<String>,
    payload: P,
}

/// Appends the single-object encoding of `event` (current schema) to `buf`.
pub fn encode_into(event: &Event, buf: &mut Vec<u8>) -> Result<(), CodecError> {
    let event_type = event.event_type();
    let entry = registry()?.entry(event_type, event_type.current_version())?;
    buf.extend_from_slice(&entry.header);
    let mut id_buf = Uuid::encode_buffer();
    let event_id: &str = event
        .envelope
        .event_id
        .hyphenated()
        .encode_lower(&mut id_buf);
    event.payload.visit(BodyWriter {
        entry,
        envelope: &event.envelope,
        event_id,
        buf,
    })
}

/// The single-object encoding of `event` with the current schema of its type.
pub fn encode(event: &Event) -> Result<Vec<u8>, CodecError> {
    let mut buf = Vec::with_capacity(256);
    encode_into(event, &mut buf)?;
    Ok(buf)
}

struct BodyWriter<'a> {
    entry: &'a SchemaEntry,
    envelope: &'a Envelope,
    event_id: &'a str,
    buf: &'a mut Vec<u8>,
}

fn wire_out<'w, P>(
    event_type: EventType,
    envelope: &'w Envelope,
    event_id: &'w str,
    payload: &'w P,
    schema_version: u32,
) -> WireOut<'w, P> {
    WireOut {
        event_id,
        event_type: event_type.as_str(),
        schema_version: i32::try_from(schema_version).unwrap_or(i32::MAX),
        occurred_at: envelope.occurred_at,
        request_id: envelope.request_id.as_deref(),
        account_id: &envelope.account_id,
        project_id: envelope.project_id.as_deref(),
        api_key_id: envelope.api_key_id.as_deref(),
        gateway_instance: &envelope.gateway_instance,
        trace_id: envelope.trace_id.as_deref(),
        payload,
    }
}

impl PayloadVisitor for BodyWriter<'_> {
    type Output = Result<(), CodecError>;

    fn visit<P: Serialize>(self, payload: &P) -> Self::Output {
        let BodyWriter {
            entry,
            envelope,
            event_id,
            buf,
        } = self;
        let wire = wire_out(entry.event_type, envelope, event_id, payload, entry.version);
        binary::encode(&entry.node, &wire, buf)
            .map_err(|e| CodecError::Encode(entry.event_type, e.to_string()))
    }
}

/// Encodes `event` as a writer pinned to an older released `version` of its schema would:
/// fields that version lacks are dropped. For compatibility tests and mixed-version fleets.
pub fn encode_as_version(event: &Event, version: u32) -> Result<Vec<u8>, CodecError> {
    let event_type = event.event_type();
    let reg = registry()?;
    let current = reg.entry(event_type, event_type.current_version())?;
    let target = reg.entry(event_type, version)?;
    let mut id_buf = Uuid::encode_buffer();
    let event_id: &str = event
        .envelope
        .event_id
        .hyphenated()
        .encode_lower(&mut id_buf);
    let value = event.payload.visit(ValueBuilder {
        event_type: current.event_type,
        envelope: &event.envelope,
        event_id,
        version,
    })?;
    let fail = |e: apache_avro::Error| CodecError::Encode(event_type, e.to_string());
    let value = value.resolve(target.schema).map_err(fail)?;
    let mut out = target.header.to_vec();
    apache_avro::writer::datum::GenericDatumWriter::builder(target.schema)
        .build()
        .map_err(fail)?
        .write_value(&mut out, value)
        .map_err(fail)?;
    Ok(out)
}

struct ValueBuilder<'a> {
    event_type: EventType,
    envelope: &'a Envelope,
    event_id: &'a str,
    version: u32,
}

impl PayloadVisitor for ValueBuilder<'_> {
    type Output = Result<apache_avro::types::Value, CodecError>;

    fn visit<P: Serialize>(self, payload: &P) -> Self::Output {
        let wire = wire_out(
            self.event_type,
            self.envelope,
            self.event_id,
            payload,
            self.version,
        );
        to_value(wire).map_err(|e| CodecError::Encode(self.event_type, e.to_string()))
    }
}

/// A decoded event and the schema version it was written with.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// The event, in the current Rust types.
    pub event: Event,
    /// The writer's schema version.
    pub schema_version: u32,
}

/// The event type and version a message's header names, without decoding the body.
pub fn peek(bytes: &[u8]) -> Result<(EventType, u32), CodecError> {
    let entry = lookup(bytes)?;
    Ok((entry.event_type, entry.version))
}

fn lookup(bytes: &[u8]) -> Result<&'static SchemaEntry, CodecError> {
    if bytes.len() < HEADER_LEN || bytes[..2] != MAGIC {
        return Err(CodecError::NotSingleObject);
    }
    let mut fingerprint = [0u8; 8];
    fingerprint.copy_from_slice(&bytes[2..HEADER_LEN]);
    let reg = registry()?;
    reg.by_fingerprint
        .get(&fingerprint)
        .map(|&i| &reg.entries[i])
        .ok_or_else(|| CodecError::UnknownFingerprint(hex_lower(&fingerprint)))
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Decodes a single-object message written with any released schema version.
pub fn decode(bytes: &[u8]) -> Result<Decoded, CodecError> {
    let entry = lookup(bytes)?;
    let mut envelope = None;
    let payload = entry.event_type.decode_payload(BodyReader {
        entry,
        body: &bytes[HEADER_LEN..],
        envelope: &mut envelope,
    })?;
    let envelope = envelope.ok_or_else(|| body_error(entry, "no envelope decoded"))?;
    Ok(Decoded {
        event: Event { envelope, payload },
        schema_version: entry.version,
    })
}

fn body_error(entry: &SchemaEntry, reason: impl ToString) -> CodecError {
    CodecError::Body {
        event_type: entry.event_type,
        version: entry.version,
        reason: reason.to_string(),
    }
}

/// Decodes one body into the payload struct, leaving the envelope in `envelope`.
struct BodyReader<'a> {
    entry: &'static SchemaEntry,
    body: &'a [u8],
    envelope: &'a mut Option<Envelope>,
}

impl PayloadDecoder for BodyReader<'_> {
    type Error = CodecError;

    fn decode<P: DeserializeOwned>(self) -> Result<P, CodecError> {
        let entry = self.entry;
        let mut body = self.body;
        // Read straight into the Rust types with the writer's schema; fields an older writer
        // lacks take their serde defaults, the evolution rule the schemas follow.
        let wire: WireIn<P> =
            binary::decode(&entry.node, &mut body).map_err(|e| body_error(entry, e))?;
        if !body.is_empty() {
            return Err(body_error(entry, format!("{} trailing bytes", body.len())));
        }
        if wire.event_type != entry.event_type.as_str() {
            return Err(body_error(
                entry,
                format!("event_type `{}` does not match its schema", wire.event_type),
            ));
        }
        let event_id = Uuid::parse_str(&wire.event_id).map_err(|e| body_error(entry, e))?;
        if i64::from(wire.schema_version) != i64::from(entry.version) {
            return Err(body_error(
                entry,
                format!(
                    "schema_version {} does not match its schema",
                    wire.schema_version
                ),
            ));
        }
        *self.envelope = Some(Envelope {
            event_id,
            occurred_at: wire.occurred_at,
            request_id: wire.request_id,
            account_id: wire.account_id,
            project_id: wire.project_id,
            api_key_id: wire.api_key_id,
            gateway_instance: wire.gateway_instance,
            trace_id: wire.trace_id,
        });
        Ok(wire.payload)
    }
}

/// Every released (type, version) pair, oldest first per type.
pub fn released_versions() -> Vec<(EventType, u32)> {
    SCHEMA_SOURCES.iter().map(|&(t, v, _)| (t, v)).collect()
}
