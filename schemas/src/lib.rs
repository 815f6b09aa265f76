//! The event contract of Lumina (DESIGN §3): one Avro schema per event type under `avro/`, the
//! Rust types that mirror them, the single-object codec, and the JSON rendering.
//!
//! This crate is pure: no I/O, no clocks beyond stamping new envelopes. Schemas only evolve by
//! adding fields with defaults; every released version stays under `avro/` and keeps decoding.

pub mod binary;
pub mod codec;
pub mod events;
pub mod ids;
pub mod money;
pub mod payloads;
pub mod samples;

pub use codec::{CodecError, Decoded, decode, encode, encode_into};
pub use events::{Envelope, Event, EventType, Payload, SYSTEM_ACCOUNT, now_micros};
pub use money::NanoCredits;
