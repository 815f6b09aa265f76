//! Anthropic's Messages request translated into the OpenAI chat view, for a completion and
//! for `count_tokens`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lumina_gateway::anthropic_wire::translate_request;

fuzz_target!(|data: &[u8]| {
    let _ = translate_request(data, false);
    let _ = translate_request(data, true);
});
