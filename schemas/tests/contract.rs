//! The event contract: every type round-trips through Avro and JSON, every released schema
//! version keeps decoding (old with new, new with old), and the wire header is the Avro spec's.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use apache_avro::schema_compatibility::SchemaCompatibility;
use apache_avro::types::Value;
use lumina_schemas::codec::{self, CodecError, HEADER_LEN, MAGIC};
use lumina_schemas::payloads::ApiKeyCreated;
use lumina_schemas::samples::sample;
use lumina_schemas::{Event, EventType, Payload, decode, encode};

fn avro_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("avro")
}

fn with_nones(mut event: Event) -> Event {
    let e = &mut event.envelope;
    e.request_id = None;
    e.project_id = None;
    e.api_key_id = None;
    e.trace_id = None;
    event
}

#[test]
fn every_event_type_round_trips_through_avro() {
    for &t in EventType::ALL {
        for event in [sample(t, 42), with_nones(sample(t, 7))] {
            let bytes = encode(&event).unwrap();
            let decoded = decode(&bytes).unwrap();
            assert_eq!(decoded.event, event, "{t}");
            assert_eq!(decoded.schema_version, t.current_version(), "{t}");
        }
    }
}

#[test]
fn every_event_type_round_trips_through_json() {
    for &t in EventType::ALL {
        let event = sample(t, 9);
        let json = serde_json::to_string(&event).unwrap();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["event_type"], t.as_str());
        assert_eq!(value["schema_version"], t.current_version());
        assert!(value["occurred_at"].as_str().unwrap().ends_with('Z'));
        let back: Event = serde_json::from_str(&json).unwrap();
        assert_eq!(back, event, "{t}");
    }
}

/// CRC-64-AVRO as the Avro specification defines it, written out independently of the codec.
fn crc64_avro(data: &[u8]) -> u64 {
    const EMPTY: u64 = 0xc15d_213a_a4d7_a795;
    let mut table = [0u64; 256];
    for (i, slot) in table.iter_mut().enumerate() {
        let mut fp = i as u64;
        for _ in 0..8 {
            fp = (fp >> 1) ^ (EMPTY & (0u64.wrapping_sub(fp & 1)));
        }
        *slot = fp;
    }
    let mut fp = EMPTY;
    for &b in data {
        fp = (fp >> 8) ^ table[((fp ^ u64::from(b)) & 0xff) as usize];
    }
    fp
}

#[test]
fn messages_carry_the_single_object_header_with_the_writer_fingerprint() {
    for &t in EventType::ALL {
        let bytes = encode(&sample(t, 1)).unwrap();
        assert_eq!(bytes[..2], MAGIC);
        let schema = codec::schema(t, t.current_version()).unwrap();
        let expected = crc64_avro(schema.canonical_form().as_bytes()).to_le_bytes();
        assert_eq!(bytes[2..HEADER_LEN], expected, "{t}");
    }
}

#[test]
fn every_schema_file_is_released_and_shares_the_envelope() {
    let envelope: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(avro_dir().join("envelope.avsc")).unwrap())
            .unwrap();
    let envelope_fields = envelope["fields"].as_array().unwrap();
    let released: BTreeSet<(String, u32)> = codec::released_versions()
        .into_iter()
        .map(|(t, v)| (t.as_str().to_string(), v))
        .collect();
    let mut on_disk = BTreeSet::new();
    for dir in std::fs::read_dir(avro_dir()).unwrap() {
        let dir = dir.unwrap().path();
        if !dir.is_dir() {
            continue;
        }
        for file in std::fs::read_dir(&dir).unwrap() {
            let file = file.unwrap().path();
            let schema: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
            let version: u32 = file.file_stem().unwrap().to_str().unwrap()[1..]
                .parse()
                .unwrap();
            let name = schema["name"].as_str().unwrap().to_string();
            let fields = schema["fields"].as_array().unwrap();
            assert_eq!(
                &fields[..envelope_fields.len()],
                envelope_fields.as_slice(),
                "{} does not start with the envelope",
                file.display()
            );
            assert_eq!(fields.len(), envelope_fields.len() + 1);
            assert_eq!(fields.last().unwrap()["name"], "payload");
            on_disk.insert((name, version));
        }
    }
    assert_eq!(on_disk, released, "schema files and the registry disagree");
}

#[test]
fn consecutive_schema_versions_read_each_other() {
    for &t in EventType::ALL {
        for v in 1..t.current_version() {
            let old = codec::schema(t, v).unwrap();
            let new = codec::schema(t, v + 1).unwrap();
            SchemaCompatibility::mutual_read(old, new)
                .unwrap_or_else(|e| panic!("{t} v{v} and v{}: {e}", v + 1));
        }
    }
}

#[test]
fn api_key_created_v1_decodes_with_the_v2_reader_filling_defaults() {
    let event = sample(EventType::ApiKeyCreated, 3);
    let v1 = codec::encode_as_version(&event, 1).unwrap();
    assert_eq!(
        v1[2..HEADER_LEN],
        codec::header(EventType::ApiKeyCreated, 1).unwrap()[2..]
    );
    let decoded = decode(&v1).unwrap();
    assert_eq!(decoded.schema_version, 1);
    let Payload::ApiKeyCreated(key) = &decoded.event.payload else {
        panic!("wrong payload {:?}", decoded.event.payload)
    };
    let Payload::ApiKeyCreated(original) = &event.payload else {
        unreachable!()
    };
    assert_eq!(
        key,
        &ApiKeyCreated {
            store_content: false,
            rpm: None,
            tpm: None,
            routing_prefer: None,
            fusion_barred: false,
            expires_at: None,
            paths: None,
            surfaces: None,
            read_only: false,
            max_parallel_requests: None,
            admin_key_id: None,
            ..original.clone()
        }
    );
    assert_eq!(decoded.event.envelope, event.envelope);
}

#[test]
fn api_key_created_v2_decodes_with_the_v1_reader_dropping_new_fields() {
    let event = sample(EventType::ApiKeyCreated, 4);
    let v2 = encode(&event).unwrap();
    let writer = codec::schema(EventType::ApiKeyCreated, 2).unwrap();
    let reader = codec::schema(EventType::ApiKeyCreated, 1).unwrap();
    let value = apache_avro::reader::datum::GenericDatumReader::builder(writer)
        .reader_schema(reader)
        .build()
        .unwrap()
        .read_value(&mut &v2[HEADER_LEN..])
        .unwrap();
    let Value::Record(fields) = value else {
        panic!("not a record")
    };
    let payload = &fields.iter().find(|(n, _)| n == "payload").unwrap().1;
    let Value::Record(payload) = payload else {
        panic!("payload is not a record")
    };
    let names: Vec<&str> = payload.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["key_id", "name", "key_hash", "key_prefix"]);
    assert_eq!(payload[0].1, Value::String(format!("key_{:032x}", 4)));
}

/// Golden messages written by every released schema version, checked in once and never
/// regenerated: the current code must keep decoding them. `LUMINA_WRITE_FIXTURES=1` writes
/// the files that are missing (only ever for a newly released version).
#[test]
fn checked_in_messages_of_every_released_version_still_decode() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let write = std::env::var_os("LUMINA_WRITE_FIXTURES").is_some();
    for (t, v) in codec::released_versions() {
        let path = dir.join(format!("{}.v{v}.avro", t.as_str()));
        let expected = sample(t, 11);
        if write && !path.exists() {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, codec::encode_as_version(&expected, v).unwrap()).unwrap();
        }
        let bytes = std::fs::read(&path).unwrap_or_else(|e| {
            panic!("{}: {e} (released versions need a fixture)", path.display())
        });
        let decoded = decode(&bytes).unwrap();
        assert_eq!(decoded.schema_version, v);
        assert_eq!(
            decoded.event.envelope,
            expected.envelope,
            "{}",
            path.display()
        );
        if v == t.current_version() {
            assert_eq!(decoded.event, expected, "{}", path.display());
        }
    }
}

#[test]
fn malformed_messages_are_errors_not_panics() {
    assert!(matches!(decode(b""), Err(CodecError::NotSingleObject)));
    assert!(matches!(
        decode(b"{\"json\":1}"),
        Err(CodecError::NotSingleObject)
    ));
    let mut unknown = MAGIC.to_vec();
    unknown.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8, 0]);
    assert!(matches!(
        decode(&unknown),
        Err(CodecError::UnknownFingerprint(_))
    ));
    let good = encode(&sample(EventType::RequestSettled, 5)).unwrap();
    for cut in [HEADER_LEN, HEADER_LEN + 3, good.len() / 2, good.len() - 1] {
        assert!(
            matches!(decode(&good[..cut]), Err(CodecError::Body { .. })),
            "cut at {cut}: {:?}",
            decode(&good[..cut])
        );
    }
    let mut trailing = good.clone();
    trailing.push(0);
    assert!(matches!(decode(&trailing), Err(CodecError::Body { .. })));
    // Flip every byte of the body in turn: each result is an error or some event, never a panic.
    for i in HEADER_LEN..good.len() {
        let mut corrupt = good.clone();
        corrupt[i] ^= 0xff;
        let _ = decode(&corrupt);
    }
}

#[test]
fn request_routed_before_v4_came_in_on_chat_completions() {
    let event = sample(EventType::RequestRouted, 3);
    let Payload::RequestRouted(current) = &event.payload else {
        panic!("not RequestRouted")
    };
    assert_eq!(current.api, "messages");
    let old = decode(&codec::encode_as_version(&event, 3).unwrap()).unwrap();
    assert_eq!(old.schema_version, 3);
    let Payload::RequestRouted(routed) = &old.event.payload else {
        panic!("not RequestRouted")
    };
    assert_eq!(routed.api, "chat_completions");
    assert_eq!(routed.classified_path, current.classified_path);
}
