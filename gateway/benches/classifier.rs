//! The `lumina-auto` classifier on a ~4,000-token conversation (target < 20 µs), and request
//! parsing plus classification together.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use criterion::{Criterion, criterion_group, criterion_main};
use lumina_gateway::metering::usage::count_tokens;
use lumina_gateway::routing::classifier::classify;
use lumina_gateway::wire::ChatRequest;

fn long_conversation() -> String {
    let paragraph = "We are migrating the billing service to the new gateway. First, list the \
        endpoints that still call the old API; then explain why the retry policy doubles \
        charges when a stream is cut, and propose a plan with trade-offs. The function \
        `settle()` returns early on timeouts, see the stack trace below. ";
    let mut text = String::new();
    while count_tokens(&text) < 3900 {
        text.push_str(paragraph);
    }
    let messages: Vec<serde_json::Value> = text
        .as_bytes()
        .chunks(2000)
        .enumerate()
        .map(|(i, chunk)| {
            serde_json::json!({
                "role": if i % 2 == 0 { "user" } else { "assistant" },
                "content": String::from_utf8_lossy(chunk),
            })
        })
        .collect();
    serde_json::json!({"model": "lumina-auto", "messages": messages}).to_string()
}

fn bench(c: &mut Criterion) {
    let body = long_conversation();
    let request = ChatRequest::parse(body.as_bytes()).unwrap();
    let tokens = count_tokens(&body);
    c.bench_function(&format!("classify ~{tokens}-token conversation"), |b| {
        b.iter(|| classify(&request))
    });
    c.bench_function("parse + classify the same request", |b| {
        b.iter(|| classify(&ChatRequest::parse(body.as_bytes()).unwrap()))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
