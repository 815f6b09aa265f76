//! The GenAI metrics, named after the OpenTelemetry GenAI semantic conventions as Prometheus
//! spells them (`gen_ai_client_token_usage`, `gen_ai_client_operation_duration_seconds`,
//! `gen_ai_server_time_to_first_token_seconds`, labelled `gen_ai_operation_name`,
//! `gen_ai_provider_name`, `gen_ai_request_model`, `lumina_path`), Lumina's own
//! (`lumina_gateway_overhead_seconds`: a request's time in Lumina, upstream waits excluded;
//! `lumina_cost_nano_credits_total` per path), and their bucket boundaries. Handles are made
//! once per deployment and path, so recording costs no label formatting or registry lookup.

use std::sync::OnceLock;

use metrics::{Counter, Histogram};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder};

use crate::routing::catalog::RoutePath;

/// Tokens per call, input and output (`gen_ai_token_type`).
pub const TOKEN_USAGE: &str = "gen_ai_client_token_usage";
/// Seconds per upstream call, whole (a stream: to its last chunk).
pub const OPERATION_DURATION: &str = "gen_ai_client_operation_duration_seconds";
/// Seconds from a streamed request's arrival to its first chunk leaving for the client.
pub const TIME_TO_FIRST_TOKEN: &str = "gen_ai_server_time_to_first_token_seconds";
/// Seconds a request spends in Lumina itself: from its arrival to its answer (a stream: to
/// its first chunk), less the time waiting on upstreams.
pub const GATEWAY_OVERHEAD: &str = "lumina_gateway_overhead_seconds";
/// Nano-credits charged, per path.
pub const COST: &str = "lumina_cost_nano_credits_total";
/// A deployment's breaker: 0 closed, 1 half-open, 2 open.
pub const BREAKER_STATE: &str = "lumina_breaker_state";

/// The conventions' advised boundaries for token counts.
const TOKEN_BUCKETS: [f64; 14] = [
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
    16777216.0, 67108864.0,
];
/// The conventions' advised boundaries for a call's duration.
const DURATION_BUCKETS: [f64; 14] = [
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
];
/// The conventions' advised boundaries for time to first token.
const TTFT_BUCKETS: [f64; 16] = [
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];
/// Fine boundaries below a millisecond, where Lumina's own time lies.
const OVERHEAD_BUCKETS: [f64; 16] = [
    0.000_025, 0.000_05, 0.000_1, 0.000_15, 0.000_2, 0.000_3, 0.000_4, 0.000_5, 0.000_75, 0.001,
    0.002, 0.005, 0.01, 0.025, 0.1, 1.0,
];

/// Gives the GenAI and overhead histograms real buckets (the recorder's other histograms stay
/// summaries).
pub fn with_buckets(builder: PrometheusBuilder) -> Result<PrometheusBuilder, BuildError> {
    builder
        .set_buckets_for_metric(Matcher::Full(TOKEN_USAGE.into()), &TOKEN_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(OPERATION_DURATION.into()), &DURATION_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(TIME_TO_FIRST_TOKEN.into()), &TTFT_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(GATEWAY_OVERHEAD.into()), &OVERHEAD_BUCKETS)
}

/// A path's index into per-path tables.
fn slot(path: RoutePath) -> usize {
    match path {
        RoutePath::Fast => 0,
        RoutePath::Balanced => 1,
        RoutePath::Reasoning => 2,
        RoutePath::Fusion => 3,
        RoutePath::Embeddings => 4,
    }
}

/// `gen_ai.operation.name` of a call on `path`.
pub fn operation(path: RoutePath) -> &'static str {
    match path {
        RoutePath::Embeddings => "embeddings",
        _ => "chat",
    }
}

/// One deployment's instruments on one path.
pub struct CallInstruments {
    /// Successful calls' durations.
    pub duration: Histogram,
    /// Input tokens billed per answered call.
    pub input_tokens: Histogram,
    /// Output tokens billed per answered call.
    pub output_tokens: Histogram,
    /// Time to first token of streams it answered.
    pub ttft: Histogram,
}

/// A deployment's instruments per path, made on first use (after the recorder is installed).
#[derive(Default)]
pub struct DeploymentInstruments {
    by_path: [OnceLock<CallInstruments>; 5],
}

impl DeploymentInstruments {
    /// The instruments of `provider`'s `model` (as `gen_ai_provider_name` and
    /// `gen_ai_request_model`) on `path`.
    pub fn on(&self, path: RoutePath, provider: &str, model: &str) -> &CallInstruments {
        self.by_path[slot(path)].get_or_init(|| {
            let labels = [
                ("gen_ai_operation_name", operation(path).to_string()),
                ("gen_ai_provider_name", provider.to_string()),
                ("gen_ai_request_model", model.to_string()),
                ("lumina_path", path.as_str().to_string()),
            ];
            let tokens = |kind: &'static str| {
                let mut l: Vec<(&'static str, String)> = labels.to_vec();
                l.push(("gen_ai_token_type", kind.to_string()));
                metrics::histogram!(TOKEN_USAGE, &l)
            };
            CallInstruments {
                duration: metrics::histogram!(OPERATION_DURATION, &labels),
                input_tokens: tokens("input"),
                output_tokens: tokens("output"),
                ttft: metrics::histogram!(TIME_TO_FIRST_TOKEN, &labels),
            }
        })
    }
}

/// Records a failed call's duration, labelled with its `error_type` as well.
pub fn failed_call(path: RoutePath, provider: &str, model: &str, error_type: &str, secs: f64) {
    metrics::histogram!(
        OPERATION_DURATION,
        "gen_ai_operation_name" => operation(path),
        "gen_ai_provider_name" => provider.to_string(),
        "gen_ai_request_model" => model.to_string(),
        "lumina_path" => path.as_str(),
        "error_type" => error_type.to_string()
    )
    .record(secs);
}

/// Per-path handles that need no deployment.
struct PathInstruments {
    overhead: Histogram,
    cost: Counter,
}

static BY_PATH: [OnceLock<PathInstruments>; 5] = [const { OnceLock::new() }; 5];

fn of_path(path: RoutePath) -> &'static PathInstruments {
    BY_PATH[slot(path)].get_or_init(|| PathInstruments {
        overhead: metrics::histogram!(GATEWAY_OVERHEAD, "lumina_path" => path.as_str()),
        cost: metrics::counter!(COST, "lumina_path" => path.as_str()),
    })
}

/// Records a request's time in Lumina.
pub fn overhead(path: RoutePath, secs: f64) {
    of_path(path).overhead.record(secs);
}

/// Counts a request's charge.
pub fn cost(path: RoutePath, nano: i64) {
    if let Ok(n) = u64::try_from(nano)
        && n > 0
    {
        of_path(path).cost.increment(n);
    }
}
