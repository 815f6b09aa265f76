//! The `lumina-auto` classifier on a ~4,000-token conversation (target < 20 µs p99): the shipped
//! learned policy and the hand-written cues, and request parsing plus classification together.
//! Before criterion's runs it times 20,000 single calls and prints the fastest, p50 and p99.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use criterion::{Criterion, criterion_group, criterion_main};
use lumina_gateway::metering::usage::count_tokens;
use lumina_gateway::routing::classifier::{classify, classify_with};
use lumina_gateway::routing::policy::Policy;
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

/// Fastest, p50, p90 and p99 of single calls, in µs.
fn percentiles(mut f: impl FnMut()) -> (f64, f64, f64, f64) {
    for _ in 0..2_000 {
        f();
    }
    let mut times: Vec<u128> = (0..20_000)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_nanos()
        })
        .collect();
    times.sort_unstable();
    let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize] as f64 / 1000.0;
    (at(0.0), at(0.50), at(0.90), at(0.99))
}

fn bench(c: &mut Criterion) {
    let body = long_conversation();
    let request = ChatRequest::parse(body.as_bytes()).unwrap();
    let tokens = count_tokens(&body);
    let cues = Policy::cues();
    let (min, p50, p90, p99) = percentiles(|| {
        std::hint::black_box(classify(&request));
    });
    eprintln!(
        "learned classifier, ~{tokens}-token conversation: fastest {min:.1} µs, p50 {p50:.1} µs, p90 {p90:.1} µs, p99 {p99:.1} µs"
    );
    let (min, p50, p90, p99) = percentiles(|| {
        std::hint::black_box(classify_with(&request, &cues));
    });
    eprintln!(
        "cue classifier, ~{tokens}-token conversation: fastest {min:.1} µs, p50 {p50:.1} µs, p90 {p90:.1} µs, p99 {p99:.1} µs"
    );
    c.bench_function(&format!("classify ~{tokens}-token conversation"), |b| {
        b.iter(|| classify(&request))
    });
    c.bench_function(
        &format!("classify ~{tokens}-token conversation, hand-written cues"),
        |b| b.iter(|| classify_with(&request, &cues)),
    );
    c.bench_function("parse + classify the same request", |b| {
        b.iter(|| classify(&ChatRequest::parse(body.as_bytes()).unwrap()))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
