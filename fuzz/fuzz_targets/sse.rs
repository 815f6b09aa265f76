//! The server-sent-events decoder an upstream stream goes through, fed in two pieces split at
//! a point the input chooses (a chunk boundary anywhere, mid-line included).
#![no_main]

use libfuzzer_sys::fuzz_target;
use lumina_gateway::providers::sse::SseDecoder;

fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    let (a, b) = data.split_at(split);
    let mut decoder = SseDecoder::default();
    decoder.push(a);
    while decoder.next_event().is_some() {}
    decoder.push(b);
    while decoder.next_event().is_some() {}
    let _ = decoder.has_partial();
});
