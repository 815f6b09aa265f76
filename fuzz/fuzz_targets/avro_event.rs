//! An event as a consumer reads it off the log or the topic: Avro single-object encoding of
//! any event type and version, then its JSON rendering.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(decoded) = lumina_schemas::codec::decode(data) {
        let _ = lumina_schemas::codec::encode(&decoded.event);
    }
});
