//! The facts a request writes: `RequestRouted` when its path is chosen, one `UpstreamAttempted`
//! per attempt, and `RequestSettled` when it ends. Routed and attempted are queued without
//! waiting; the settlement is committed before the client receives the end of its answer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lumina_schemas::ids::RequestId;
use lumina_schemas::payloads::{
    BudgetThresholdCrossed, CreditHold, FusionPanelCompleted, RequestContentRecorded,
    RequestRouted, RequestSettled, UpstreamAttempted, Usage,
};
use lumina_schemas::{Envelope, Event, NanoCredits};

use crate::auth::KeyIdentity;
use crate::metering::credit::Crossing;
use crate::metering::pricing::ROUNDING;
use crate::metering::usage::UsageAnomaly;
use crate::providers::ErrorClass;
use crate::routing::catalog::RoutePath;
use crate::routing::classifier::Decision;
use crate::telemetry::RequestTrace;
use crate::wire::TokenUsage;

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The answer was delivered whole.
    Completed,
    /// No answer: every attempt failed, or the upstream refused the request.
    Failed,
    /// The client went away before the end.
    Cancelled,
    /// The upstream broke off after the client had received part of the answer.
    CutMidstream,
}

impl Outcome {
    /// Name recorded in `RequestSettled.outcome`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Failed => "failed",
            Outcome::Cancelled => "cancelled",
            Outcome::CutMidstream => "cut_midstream",
        }
    }
}

/// Who asked what, and when: shared by every event of a request.
#[derive(Debug, Clone)]
pub struct RequestMeta {
    /// `req_…`
    pub request_id: RequestId,
    /// The key that authenticated it.
    pub key: Arc<KeyIdentity>,
    /// Its trace: spans when tracing, and the trace id its events carry.
    pub trace: RequestTrace,
    /// This gateway.
    pub instance: Arc<str>,
    /// The `model` asked for.
    pub requested_model: String,
    /// The path taken.
    pub path: RoutePath,
    /// When the request arrived.
    pub started: Instant,
    /// The same, µs since the epoch.
    pub started_at: i64,
}

/// What `RequestRouted` records about the route.
#[derive(Debug, Clone)]
pub struct Routing<'a> {
    /// The API the request came in on.
    pub api: InboundApi,
    /// The classifier's decision.
    pub decision: &'a Decision,
    /// Whether the client asked for a stream.
    pub stream: bool,
    /// Routing policy version in force.
    pub policy_version: i64,
    /// Deployments in fallback order.
    pub candidates: Vec<String>,
    /// Estimated prompt tokens.
    pub prompt_tokens_estimate: u64,
    /// The client's output cap.
    pub max_tokens: Option<u64>,
    /// The credit hold placed.
    pub hold: Option<CreditHold>,
}

/// The inbound API a request came in on, as `RequestRouted` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboundApi {
    /// OpenAI's `/v1/chat/completions`.
    ChatCompletions,
    /// Anthropic's `/v1/messages`.
    Messages,
    /// OpenAI's `/v1/embeddings`.
    Embeddings,
    /// OpenAI's `/v1/responses`.
    Responses,
}

impl InboundApi {
    /// Every inbound API.
    pub const ALL: [InboundApi; 4] = [
        InboundApi::ChatCompletions,
        InboundApi::Messages,
        InboundApi::Responses,
        InboundApi::Embeddings,
    ];

    /// By its recorded name.
    pub fn parse(name: &str) -> Option<InboundApi> {
        InboundApi::ALL.into_iter().find(|a| a.as_str() == name)
    }

    /// The name recorded.
    pub fn as_str(self) -> &'static str {
        match self {
            InboundApi::ChatCompletions => "chat_completions",
            InboundApi::Messages => "messages",
            InboundApi::Embeddings => "embeddings",
            InboundApi::Responses => "responses",
        }
    }
}

/// One attempt, as recorded.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    /// 1 for the first.
    pub attempt: i32,
    /// Provider name.
    pub provider: String,
    /// Deployment id.
    pub deployment: String,
    /// Upstream model.
    pub upstream_model: String,
    /// Start, µs since the epoch.
    pub started_at: i64,
    /// Time to the first byte of the answer.
    pub ttfb: Option<Duration>,
    /// Duration of the attempt.
    pub duration: Duration,
    /// The failure, if it failed.
    pub error: Option<(ErrorClass, Option<u16>)>,
    /// Whether another attempt followed.
    pub fell_back: bool,
    /// Its role in a Fusion request.
    pub role: Option<Role>,
}

/// What a call of a Model Fusion request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A panel member answering the prompt.
    Panel,
    /// The judge comparing the panel's answers.
    Judge,
    /// The synthesizer writing the fused answer.
    Synthesizer,
}

impl Role {
    /// Name recorded in `UpstreamAttempted.role`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Panel => "panel",
            Role::Judge => "judge",
            Role::Synthesizer => "synthesizer",
        }
    }
}

/// How a request settles.
#[derive(Debug, Clone)]
pub struct SettleInfo {
    /// How it ended.
    pub outcome: Outcome,
    /// Provider name of the answering deployment.
    pub provider: Option<String>,
    /// The answering deployment.
    pub deployment: Option<String>,
    /// Token usage.
    pub usage: TokenUsage,
    /// Whether the usage is an estimate.
    pub estimated: bool,
    /// Why the usage differs from the upstream's report.
    pub anomaly: Option<UsageAnomaly>,
    /// The completion tokens reported, when billing clamped them.
    pub reported_completion: Option<u64>,
    /// Time to the first token reaching the client.
    pub ttft: Option<Duration>,
    /// Attempts made.
    pub attempts: i32,
    /// Why it failed, if it did.
    pub error_class: Option<String>,
    /// What it cost.
    pub charge: NanoCredits,
    /// The hold its settlement releases.
    pub hold: NanoCredits,
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

fn tokens(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl RequestMeta {
    fn envelope(&self) -> Envelope {
        let mut e = Envelope::new(self.key.account_id.as_str(), &*self.instance);
        e.request_id = Some(self.request_id.to_string());
        e.project_id = Some(self.key.project_id.to_string());
        e.api_key_id = Some(self.key.key_id.to_string());
        e.trace_id = self.trace.trace_id().map(str::to_string);
        e
    }

    /// `BudgetThresholdCrossed`, for the soft limit this request's hold crossed.
    pub fn threshold_crossed(&self, c: &Crossing) -> Event {
        Event::new(
            self.envelope(),
            BudgetThresholdCrossed {
                budget_id: c.budget_id.clone(),
                period_start: c.period_start,
                soft_limit_nano: c.soft_limit,
                limit_nano: c.limit,
                used_nano: c.used,
            },
        )
    }

    /// `RequestRouted`.
    pub fn routed(&self, r: Routing<'_>) -> Event {
        Event::new(
            self.envelope(),
            RequestRouted {
                requested_model: self.requested_model.clone(),
                path: self.path.as_str().into(),
                task_class: r.decision.task_class.into(),
                stream: r.stream,
                policy_version: r.policy_version,
                features: r.decision.features.to_map(),
                scores: r.decision.scores_map(),
                candidates: r.candidates,
                prompt_tokens_estimate: tokens(r.prompt_tokens_estimate),
                max_tokens: r.max_tokens.map(tokens),
                hold: r.hold,
                top_features: r.decision.top_features_records(),
                prefer: r.decision.prefer.as_str().into(),
                min_path: r.decision.bounds.0.map(|p| p.as_str().into()),
                max_path: r.decision.bounds.1.map(|p| p.as_str().into()),
                classified_path: r.decision.classified.map(|p| p.as_str().into()),
                api: r.api.as_str().into(),
            },
        )
    }

    /// `UpstreamAttempted`.
    pub fn attempted(&self, a: &AttemptRecord) -> Event {
        Event::new(
            self.envelope(),
            UpstreamAttempted {
                attempt: a.attempt,
                provider: a.provider.clone(),
                deployment: a.deployment.clone(),
                upstream_model: a.upstream_model.clone(),
                started_at: a.started_at,
                ttfb_us: a.ttfb.map(micros),
                duration_us: micros(a.duration),
                outcome: if a.error.is_some() { "error" } else { "ok" }.into(),
                error_class: a.error.map(|(c, _)| c.as_str().to_string()),
                http_status: a.error.and_then(|(_, s)| s).map(i32::from),
                fell_back: a.fell_back,
                role: a.role.map(|r| r.as_str().to_string()),
            },
        )
    }

    /// `RequestSettled`, priced with `price_table_version`.
    pub fn settled(&self, s: &SettleInfo, price_table_version: &str) -> Event {
        Event::new(
            self.envelope(),
            RequestSettled {
                outcome: s.outcome.as_str().into(),
                path: self.path.as_str().into(),
                provider: s.provider.clone(),
                deployment: s.deployment.clone(),
                usage: Usage {
                    prompt_tokens: tokens(s.usage.prompt_tokens),
                    completion_tokens: tokens(s.usage.completion_tokens),
                    cached_tokens: tokens(s.usage.cached_tokens),
                    reasoning_tokens: tokens(s.usage.reasoning_tokens),
                    estimated: s.estimated,
                },
                charge_nano: s.charge.0,
                price_table_version: price_table_version.into(),
                rounding: ROUNDING.into(),
                hold_released_nano: s.hold.0,
                latency_us: micros(self.started.elapsed()),
                ttft_us: s.ttft.map(micros),
                attempts: s.attempts,
                error_class: s.error_class.clone(),
                usage_anomaly: s.anomaly.map(|a| a.as_str().to_string()),
                reported_completion_tokens: s.reported_completion.map(tokens),
            },
        )
    }

    /// `FusionPanelCompleted`.
    pub fn fusion(&self, panel: FusionPanelCompleted) -> Event {
        Event::new(self.envelope(), panel)
    }

    /// `RequestContentRecorded`, for keys that opted in to content storage.
    pub fn content(&self, content: RequestContentRecorded) -> Event {
        Event::new(self.envelope(), content)
    }
}
