//! The OpenAI chat request as a client sends it: the duplicate-member check every body goes
//! through, then the borrowed parse into the engine's view, then what the engine reads of it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lumina_gateway::json_keys;
use lumina_gateway::wire::ChatRequest;

fuzz_target!(|data: &[u8]| {
    let _ = json_keys::check(data);
    if let Ok(request) = ChatRequest::parse(data) {
        let _ = request.prompt_chars();
        for m in &request.messages {
            if let Some(c) = &m.content {
                c.for_each_text(|t| {
                    let _ = t.len();
                });
            }
        }
    }
});
