//! Encode and decode cost of a typical hot-path event.
#![allow(clippy::expect_used)]
#![allow(missing_docs)]

use criterion::{Criterion, criterion_group, criterion_main};
use lumina_schemas::payloads::{RequestSettled, Usage};
use lumina_schemas::{Envelope, Event, decode, encode_into};

fn settled() -> Event {
    let mut envelope = Envelope::new("acct_0193", "gw-1");
    envelope.request_id = Some("req_0193a1b2c3".into());
    envelope.api_key_id = Some("key_0193".into());
    envelope.project_id = Some("proj_0193".into());
    Event::new(
        envelope,
        RequestSettled {
            outcome: "completed".into(),
            path: "fast".into(),
            provider: Some("simulated".into()),
            deployment: Some("sim-fast".into()),
            usage: Usage {
                prompt_tokens: 120,
                completion_tokens: 380,
                cached_tokens: 0,
                reasoning_tokens: 0,
                estimated: false,
            },
            charge_nano: 1_234_567,
            price_table_version: "default-1".into(),
            rounding: "half_up_nano".into(),
            hold_released_nano: 9_000_000,
            latency_us: 812_000,
            ttft_us: Some(95_000),
            attempts: 1,
            error_class: None,
            usage_anomaly: None,
            reported_completion_tokens: None,
        },
    )
}

fn bench_codec(c: &mut Criterion) {
    let event = settled();
    let mut buf = Vec::with_capacity(512);
    c.bench_function("encode RequestSettled", |b| {
        b.iter(|| {
            buf.clear();
            encode_into(&event, &mut buf).expect("encode");
        })
    });
    let bytes = lumina_schemas::encode(&event).expect("encode");
    c.bench_function("decode RequestSettled", |b| {
        b.iter(|| decode(&bytes).expect("decode"))
    });
}

criterion_group!(benches, bench_codec);
criterion_main!(benches);
