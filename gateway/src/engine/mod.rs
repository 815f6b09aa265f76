//! The completion engine: a request's life, whatever API it came in on. An inbound surface (the
//! OpenAI chat API in `api/chat.rs`, Anthropic Messages in `api/messages.rs`) parses its
//! protocol into a [`Call`] and renders what the engine answers; the engine resolves the model,
//! classifies, checks the key's limits, holds credit and records `RequestRouted` ([`admit`]),
//! tries the path's deployments in order behind their breakers (`attempt`), and settles
//! (`settle`) — for a whole answer ([`complete`]) or a stream ([`stream`], pumped by
//! `stream::Pump`) — committing `RequestSettled` before the answer's last byte. Embeddings
//! (`embed`) take the same admission, attempts and settlement.
//!
//! It never touches HTTP: failures are [`ApiError`] values each surface renders in its own
//! shape, and a stream is written through the surface's [`StreamRenderer`].

pub mod attempt;
pub mod embed;
pub mod fusion;
pub mod settle;
pub mod stream;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::HeaderValue;
use bytes::Bytes;
use futures::StreamExt;
use lumina_eventlog::LogRecord;
use lumina_schemas::NanoCredits;
use lumina_schemas::ids::RequestId;
use lumina_schemas::payloads::CreditHold;
use opentelemetry::KeyValue;
use tokio::sync::mpsc;

use crate::api::error::ApiError;
use crate::auth::KeyIdentity;
use crate::engine::attempt::{Attempt, Attempts, Tried};
use crate::engine::settle::{AnswerText, Settlement, bill};
use crate::engine::stream::Pump;
use crate::metering::credit::{Holder, Refused};
use crate::metering::events::{InboundApi, Outcome, RequestMeta, Routing as RoutingRecord};
use crate::metering::limits::LimitStatus;
use crate::metering::usage;
use crate::providers::{
    AnthropicNative, ChunkStream, ErrorClass, ProviderError, StreamChunk, UpstreamCall,
};
use crate::routing::catalog::{ModelChoice, RoutePath};
use crate::routing::classifier::{self, Decision};
use crate::routing::table::{Deployment, Routing};
use crate::state::AppState;
use crate::telemetry::{self, RequestTrace, ResponseInfo, Span, instruments};
use crate::wire::{ChatRequest, TokenUsage};

pub use stream::{Ending, RenderError, StreamEnd, StreamRenderer};

/// Completion tokens each choice of a request without `max_tokens` is assumed to use, for the
/// TPM limit (counted when the request starts; the actual output is not known yet).
const ASSUMED_COMPLETION_TOKENS: u64 = 256;

/// One request as a surface hands it to the engine.
pub struct Call<'a> {
    /// The request, in the OpenAI chat view every surface translates into.
    pub request: &'a ChatRequest<'a>,
    /// The client's bytes: an OpenAI-compatible upstream receives them with only `model` and
    /// `stream_options` rewritten; estimates and content capture read them too.
    pub body: &'a Bytes,
    /// The key that authenticated it.
    pub key: Arc<KeyIdentity>,
    /// Its id.
    pub request_id: RequestId,
    /// Its trace.
    pub trace: RequestTrace,
    /// Anthropic's protocol headers, when the request came in as a Messages request.
    pub anthropic: Option<AnthropicNative>,
    /// The API it came in on.
    pub api: InboundApi,
}

/// A request past its limits and its hold, with `RequestRouted` queued.
struct Admitted {
    meta: Arc<RequestMeta>,
    policy_version: i64,
    deployments: Arc<[Arc<Deployment>]>,
    limits: LimitStatus,
    /// The most completion tokens it may be billed for.
    allowance: u64,
    settlement: Settlement,
}

/// How an answer reached the client, for its headers.
pub struct Route {
    /// The request.
    pub meta: Arc<RequestMeta>,
    /// The deployment that answered.
    pub deployment: Arc<Deployment>,
    /// Attempts made.
    pub attempts: i32,
    /// The key's limits after this request.
    pub limits: LimitStatus,
    /// The routing policy's version.
    pub policy_version: i64,
}

/// A whole answer, settled.
pub struct Answer {
    /// How it was routed.
    pub route: Route,
    /// The upstream's answer (OpenAI `chat.completion` JSON).
    pub body: Bytes,
    /// The usage billed.
    pub usage: TokenUsage,
    /// Its charge, as journaled.
    pub charge: NanoCredits,
    /// Whether the billed usage differs from the upstream's (its `usage` must be replaced).
    pub replace_usage: bool,
}

/// A stream under way; its body ends once the request is settled.
pub struct Streaming {
    /// How it was routed.
    pub route: Route,
    /// The rendered stream.
    pub body: mpsc::Receiver<Bytes>,
}

/// Who sent a request, whatever its surface.
struct Origin<'a> {
    key: &'a Arc<KeyIdentity>,
    request_id: &'a RequestId,
    trace: &'a RequestTrace,
    /// The client's bytes.
    body: &'a Bytes,
}

/// What admission weighs once the route is decided.
struct Plan<'a> {
    api: InboundApi,
    requested_model: &'a str,
    decision: Decision,
    stream: bool,
    prompt_estimate: u64,
    max_tokens: Option<u64>,
    n: u32,
    panel: Option<PanelPlan>,
}

/// What a request of several calls (a Fusion panel) holds and counts, instead of one call on
/// its path.
pub struct PanelPlan {
    /// The sum of its calls' holds.
    pub hold: NanoCredits,
    /// Every deployment it may call, for `RequestRouted.candidates`.
    pub candidates: Vec<Arc<Deployment>>,
    /// The tokens its calls may use, for the key's TPM limit.
    pub tokens: u64,
}

/// Refuses every paid request while the event log cannot take writes.
fn writable(state: &AppState) -> Result<(), ApiError> {
    if state.log.is_healthy() {
        return Ok(());
    }
    Err(ApiError::Unavailable(
        "The event log cannot take writes (disk full or I/O error), so no paid request can be recorded. Retry later.".into(),
    ))
}

/// Checks everything that comes before an upstream is called: the log takes writes, `n` is
/// within bounds, the model exists; classifies; then [`admit_plan`] (for `panel`'s calls when
/// it is a Fusion request).
async fn admit(
    state: &AppState,
    call: &Call<'_>,
    panel: Option<PanelPlan>,
) -> Result<Admitted, ApiError> {
    let started = Instant::now();
    let request = call.request;
    writable(state)?;
    if request.n > state.server.max_n {
        return Err(ApiError::invalid(
            format!(
                "'n' must be at most {} on this gateway (got {}).",
                state.server.max_n, request.n
            ),
            Some("n"),
        ));
    }
    let choice = match state.catalog.resolve(request.model.as_str()) {
        None => return Err(ApiError::ModelNotFound(request.model.as_str().to_string())),
        Some(ModelChoice::Path(RoutePath::Embeddings)) => {
            return Err(ApiError::invalid(
                format!(
                    "'{}' is an embeddings model: send it to /v1/embeddings.",
                    request.model.as_str()
                ),
                Some("model"),
            ));
        }
        Some(choice) => choice,
    };
    let routing = state.routes.routing();
    let mut decision = decide(call, &routing, choice);
    if panel.is_some() {
        decision.path = RoutePath::Fusion;
    }
    let origin = Origin {
        key: &call.key,
        request_id: &call.request_id,
        trace: &call.trace,
        body: call.body,
    };
    let plan = Plan {
        api: call.api,
        requested_model: request.model.as_str(),
        decision,
        stream: request.stream,
        prompt_estimate: usage::quick_prompt_estimate(request),
        max_tokens: request.max_tokens,
        n: request.n,
        panel,
    };
    admit_plan(state, origin, plan, started, &routing).await
}

/// The route of `call`, which asked for `choice`: classified, then the path it named, or for
/// `lumina-auto` the classifier's bounded by the request's, else the policy's task class's.
fn decide(call: &Call<'_>, routing: &Routing, choice: ModelChoice) -> Decision {
    let request = call.request;
    let policy = &routing.policy;
    let asked = request.routing;
    // The request's preference, else its key's, else the policy's.
    let prefer = asked.prefer.or(call.key.prefer).unwrap_or(policy.prefer);
    let mut decision = classifier::classify_preferring(request, policy, prefer);
    match choice {
        ModelChoice::Path(path) => decision.path = path,
        ModelChoice::Auto => {
            let (class_min, class_max) = policy.bounds(decision.task_class);
            decision.bound(asked.min_path.or(class_min), asked.max_path.or(class_max));
            if let Some(allowed) = &call.key.paths {
                decision.path = within(decision.path, allowed);
            }
        }
    }
    decision
}

/// `path`, or the path of `allowed` nearest to it: the weakest at least as strong, else the
/// strongest weaker (a key's path scope bounding `lumina-auto`).
fn within(path: RoutePath, allowed: &[RoutePath]) -> RoutePath {
    let tiers = || {
        allowed
            .iter()
            .copied()
            .filter(|p| RoutePath::parse_tier(p.as_str()).is_some())
    };
    if allowed.contains(&path) {
        return path;
    }
    tiers()
        .filter(|p| p.rank() >= path.rank())
        .min_by_key(|p| p.rank())
        .or_else(|| tiers().max_by_key(|p| p.rank()))
        .unwrap_or(path)
}

/// Refuses `asked` when it is not one of `scope` (a key's surfaces or paths), naming those it
/// may `verb` instead.
fn allowed<T: Copy + PartialEq>(
    scope: &[T],
    asked: T,
    name: fn(T) -> &'static str,
    verb: &str,
    code: &'static str,
) -> Result<(), ApiError> {
    if scope.contains(&asked) {
        return Ok(());
    }
    let names: Vec<&str> = scope.iter().map(|s| name(*s)).collect();
    Err(ApiError::OutOfScope {
        message: format!(
            "This API key may not {verb} {}; it may {verb}: {}.",
            name(asked),
            names.join(", ")
        ),
        code,
    })
}

/// Refuses what `key`'s scopes do not allow: any completion of a read-only key, an inbound API
/// or a path outside its scopes.
fn in_scope(key: &KeyIdentity, api: InboundApi, path: RoutePath) -> Result<(), ApiError> {
    if key.read_only {
        return Err(ApiError::OutOfScope {
            message: "This API key is read-only: it may call /v1/usage and /v1/requests, not make completions.".into(),
            code: "read_only_key",
        });
    }
    if let Some(surfaces) = &key.surfaces {
        allowed(
            surfaces,
            api,
            InboundApi::as_str,
            "call",
            "surface_not_allowed",
        )?;
    }
    if let Some(paths) = &key.paths {
        allowed(paths, path, RoutePath::as_str, "use", "model_not_allowed")?;
    }
    Ok(())
}

/// Counts the key's limits, holds credit and queues `RequestRouted` for a request whose route
/// is decided.
async fn admit_plan(
    state: &AppState,
    origin: Origin<'_>,
    plan: Plan<'_>,
    started: Instant,
    routing: &Routing,
) -> Result<Admitted, ApiError> {
    let started_at = lumina_schemas::now_micros();
    let Plan {
        api,
        requested_model,
        decision,
        stream,
        prompt_estimate,
        max_tokens,
        n,
        panel,
    } = plan;
    let completion_estimate = max_tokens
        .unwrap_or(ASSUMED_COMPLETION_TOKENS)
        .saturating_mul(u64::from(n));
    let tokens = match &panel {
        Some(p) => p.tokens,
        None => prompt_estimate.saturating_add(completion_estimate),
    };
    in_scope(origin.key, api, decision.path)?;
    let in_flight = state
        .limits
        .enter(origin.key)
        .map_err(|e| ApiError::TooManyParallel(e.limit))?;
    let mut limits = state
        .limits
        .admit(origin.key, tokens)
        .await
        .map_err(|e| ApiError::RateLimited(Box::new(e)))?;
    let deployments: Arc<[Arc<Deployment>]> = match &panel {
        Some(p) => p.candidates.iter().cloned().collect(),
        None => state.routes.deployments(routing, decision.path),
    };
    let meta = Arc::new(RequestMeta {
        request_id: origin.request_id.clone(),
        key: origin.key.clone(),
        trace: origin.trace.clone(),
        instance: state.instance.clone(),
        requested_model: requested_model.to_string(),
        path: decision.path,
        started,
        started_at,
    });
    let path = decision.path.as_str();
    let deployment_ids: Vec<&str> = deployments.iter().map(|d| d.id.as_str()).collect();
    let hold = match &panel {
        Some(p) => p.hold,
        None => state
            .prices
            .hold(path, &deployment_ids, prompt_estimate, max_tokens, n),
    };
    let mut crossings = Vec::new();
    if hold.is_positive() {
        let holder = Holder {
            account_id: &meta.key.account_id,
            project_id: &meta.key.project_id,
            key_id: &meta.key.key_id,
        };
        let held = state
            .credits
            .hold(&state.ledger, holder, &meta.request_id, hold.0)
            .await
            .map_err(|refused| match refused {
                Refused::Insufficient(e) => ApiError::InsufficientQuota {
                    available: NanoCredits(e.available),
                    needed: NanoCredits(e.needed),
                },
                Refused::OverBudget(b) => ApiError::BudgetExceeded(b),
            })?;
        limits.budget_remaining = held.budget_remaining;
        crossings = held.crossings;
    }
    let routed = meta.routed(RoutingRecord {
        api,
        decision: &decision,
        stream,
        policy_version: routing.version(),
        candidates: deployments.iter().map(|d| d.id.clone()).collect(),
        prompt_tokens_estimate: prompt_estimate,
        max_tokens,
        hold: hold.is_positive().then(|| CreditHold {
            amount_nano: hold.0,
            price_table_version: state.prices.version.clone(),
            ttl_ms: i64::try_from(state.prices.hold_ttl_ms).unwrap_or(i64::MAX),
        }),
    });
    let queued = async {
        let record = LogRecord::from_event(&routed).map_err(lumina_eventlog::LogError::from)?;
        state.log.append_deferred(record).await
    };
    route_span(&meta, &decision, routing.version(), hold, started);
    match queued.await {
        Ok(position) => {
            state
                .credits
                .queued(&meta.request_id, routed.envelope.event_id, position);
            for crossing in &crossings {
                if let Err(e) = state
                    .log
                    .append_event_nowait(&meta.threshold_crossed(crossing))
                    .await
                {
                    tracing::warn!(error = %e, budget = %crossing.budget_id, "budget threshold not recorded");
                }
            }
        }
        Err(e) => {
            state.credits.cancel(&meta.request_id);
            return Err(ApiError::Unavailable(format!(
                "The request could not be recorded: {e}"
            )));
        }
    }
    Ok(Admitted {
        settlement: Settlement::new(
            state.log.clone(),
            state.credits.clone(),
            state.price_version.clone(),
            meta.clone(),
            hold,
            origin.body,
        )
        .counted(in_flight),
        meta,
        policy_version: routing.version(),
        deployments,
        limits,
        allowance: state.prices.output_allowance(path, max_tokens, n),
    })
}

/// The `lumina.route` span of a request routed as `decision`, from `started` (admission's
/// start) to now.
fn route_span(
    meta: &RequestMeta,
    decision: &Decision,
    policy_version: i64,
    hold: NanoCredits,
    started: Instant,
) {
    if !meta.trace.is_recording() {
        return;
    }
    let start = std::time::SystemTime::now()
        .checked_sub(started.elapsed())
        .unwrap_or_else(std::time::SystemTime::now);
    let span = meta.trace.child(
        || "lumina.route".into(),
        opentelemetry::trace::SpanKind::Internal,
        Some(start),
        || {
            let mut attributes = vec![
                KeyValue::new("lumina.policy.version", policy_version),
                KeyValue::new("lumina.path", decision.path.as_str()),
                KeyValue::new("lumina.task_class", decision.task_class),
                KeyValue::new("lumina.requested_model", meta.requested_model.clone()),
                KeyValue::new("lumina.prefer", decision.prefer.as_str()),
                KeyValue::new("lumina.score.fast", decision.scores[0]),
                KeyValue::new("lumina.score.balanced", decision.scores[1]),
                KeyValue::new("lumina.score.reasoning", decision.scores[2]),
                KeyValue::new("lumina.hold", hold.to_string()),
            ];
            if let Some(classified) = decision.classified {
                attributes.push(KeyValue::new("lumina.classified_path", classified.as_str()));
            }
            // N-gram features quote the prompt: they are content.
            let content = meta.trace.captures_content(meta.key.store_content);
            let top: Vec<opentelemetry::StringValue> = decision
                .top_features
                .iter()
                .filter(|c| {
                    content
                        || !["word:", "bigram:", "bytes:"]
                            .iter()
                            .any(|p| c.name.starts_with(p))
                })
                .map(|c| format!("{}={:+.4}", c.name, c.contribution).into())
                .collect();
            if !top.is_empty() {
                attributes.push(KeyValue::new(
                    "lumina.top_features",
                    opentelemetry::Value::Array(opentelemetry::Array::String(top)),
                ));
            }
            attributes
        },
    );
    span.end();
}

/// The call an attempt on `d` makes, `traceparent` naming its span.
fn upstream_call<'a>(
    call: &'a Call<'a>,
    meta: &'a RequestMeta,
    d: &'a Deployment,
    traceparent: Option<HeaderValue>,
) -> UpstreamCall<'a> {
    UpstreamCall {
        request: call.request,
        upstream_model: &d.upstream_model,
        request_id: meta.request_id.as_str(),
        anthropic: call.anthropic.as_ref(),
        traceparent,
    }
}

/// The client error an upstream returned, to answer as it is.
fn upstream_refusal(e: ProviderError) -> ApiError {
    let client = e.client_error.unwrap_or_else(|| {
        Box::new(crate::providers::UpstreamClientError {
            status: e.status.unwrap_or(400),
            message: e.message,
            kind: None,
            param: None,
            code: None,
        })
    });
    ApiError::Upstream(client)
}

/// Settles a request none of whose attempts answered and says why: the upstream's refusal of
/// the request, or every attempt's failure.
async fn unanswered(
    settlement: &mut Settlement,
    attempts: &Attempts<'_>,
    refused: Option<(&Deployment, ProviderError)>,
) -> ApiError {
    let refused_by = refused.as_ref().map(|(d, _)| *d);
    if let Err(e) = settlement.failed(attempts, refused_by).await {
        return e;
    }
    match refused {
        Some((_, e)) => upstream_refusal(e),
        None => attempts.exhausted(),
    }
}

/// The answer of attempts that end with the whole of it (not a stream): recorded as answered
/// (breaker, `UpstreamAttempted`, the settlement's deployment), or the request settled as
/// failed and the error to answer.
async fn whole<'a, T>(
    state: &AppState,
    tried: Tried<'a, T>,
    attempts: &Attempts<'_>,
    settlement: &mut Settlement,
) -> Result<(Attempt, T), ApiError> {
    match tried {
        Tried::Answered {
            attempt,
            value,
            probe,
        } => {
            let ttfb = attempts.answered(&attempt, probe).await;
            settlement.answered_by(&state.prices, &attempt, ttfb);
            Ok((attempt, value))
        }
        Tried::Refused(deployment, e) => {
            Err(unanswered(settlement, attempts, Some((deployment, e))).await)
        }
        Tried::Exhausted => Err(unanswered(settlement, attempts, None).await),
    }
}

/// The first chunk of attempts that open a stream: the answering deployment made the
/// settlement's, its time to first byte; or the request settled as failed and the error to
/// answer. The stream's outcome decides a probing breaker (the pump records it).
async fn opened<'a, T>(
    state: &AppState,
    tried: Tried<'a, T>,
    attempts: &Attempts<'_>,
    settlement: &mut Settlement,
) -> Result<(Attempt, T, Duration), ApiError> {
    match tried {
        Tried::Answered {
            attempt,
            value,
            probe,
        } => {
            probe.disarm();
            let ttfb = attempt.started.elapsed();
            settlement.answered_by(&state.prices, &attempt, ttfb);
            Ok((attempt, value, ttfb))
        }
        Tried::Refused(deployment, e) => {
            Err(unanswered(settlement, attempts, Some((deployment, e))).await)
        }
        Tried::Exhausted => Err(unanswered(settlement, attempts, None).await),
    }
}

/// What a whole answer says of itself on its attempt's span (`gen_ai.response.*`), and for
/// keys whose content may be traced, the conversation and the answer.
fn traced_answer(span: &Span, meta: &RequestMeta, request: &Bytes, answer: &Bytes) {
    if !span.is_recording() {
        return;
    }
    let mut info = ResponseInfo::default();
    info.read(answer);
    let content = meta.trace.captures_content(meta.key.store_content);
    span.set(|| {
        let mut attributes = Vec::new();
        info.attributes(&mut attributes);
        if content {
            telemetry::content_attributes(
                request,
                telemetry::Answered::Completion(answer),
                &mut attributes,
            );
        }
        attributes
    });
}

/// A stream's first chunk is about to leave: its time to first token since the request
/// arrived, and the time Lumina took until then (upstream waits excluded, `ttfb` of the
/// answering attempt among them).
pub(crate) fn first_token(meta: &RequestMeta, attempt: &Attempt, ttfb: Duration) {
    let d = &attempt.deployment;
    d.instruments
        .on(meta.path, d.kind.as_str(), &d.upstream_model)
        .ttft
        .record(meta.trace.received().elapsed().as_secs_f64());
    instruments::overhead(meta.path, meta.trace.overhead(ttfb).as_secs_f64());
}

/// Whether a Fusion panel answers `call`: it asks for `lumina-fusion` (refused when its key is
/// barred from Fusion), or for `lumina-auto` and the policy sends its task class's reasoning
/// requests to Fusion (a text request, `n` 1, its key not barred).
fn is_fusion(state: &AppState, call: &Call<'_>) -> Result<bool, ApiError> {
    let request = call.request;
    match state.catalog.resolve(request.model.as_str()) {
        Some(ModelChoice::Path(RoutePath::Fusion)) if call.key.fusion_barred => {
            Err(ApiError::FusionBarred)
        }
        Some(ModelChoice::Path(RoutePath::Fusion)) => Ok(true),
        Some(ModelChoice::Auto)
            if state.fusion.enabled
                && !call.key.fusion_barred
                && call
                    .key
                    .paths
                    .as_ref()
                    .is_none_or(|p| p.contains(&RoutePath::Fusion))
                && request.n == 1
                && request.tools.is_empty() =>
        {
            let routing = state.routes.routing();
            if routing.policy.fusion_classes.is_empty() {
                return Ok(false);
            }
            let decision = decide(call, &routing, ModelChoice::Auto);
            Ok(decision.path == RoutePath::Reasoning && routing.policy.fuses(decision.task_class))
        }
        _ => Ok(false),
    }
}

/// A whole answer: attempts until a deployment answers, then bills and settles it (a Fusion
/// request: its panel, judge and synthesis).
pub async fn complete(state: &AppState, call: Call<'_>) -> Result<Answer, ApiError> {
    if is_fusion(state, &call)? {
        return fusion::complete(state, call).await;
    }
    let Admitted {
        meta,
        policy_version,
        deployments,
        limits,
        allowance,
        mut settlement,
    } = admit(state, &call, None).await?;
    let mut attempts = Attempts::new(&meta, &state.log);
    let tried = attempts
        .run(
            &deployments,
            |n| settlement.attempt_started(n),
            |d, tp| d.provider.complete(upstream_call(&call, &meta, d, tp)),
        )
        .await;
    let (attempt, completion) = whole(state, tried, &attempts, &mut settlement).await?;
    let body = completion.body;
    traced_answer(&attempt.span, &meta, call.body, &body);
    let billed = bill(completion.usage, allowance, call.body, || {
        AnswerText::Json(body.clone())
    })
    .await;
    let charge = settlement
        .answered(
            Outcome::Completed,
            &billed,
            attempts.count(),
            None,
            std::slice::from_ref(&body),
        )
        .await?;
    instruments::overhead(meta.path, meta.trace.overhead(Duration::ZERO).as_secs_f64());
    Ok(Answer {
        route: Route {
            meta: meta.clone(),
            deployment: attempt.deployment,
            attempts: attempts.count(),
            limits,
            policy_version,
        },
        body,
        usage: billed.usage,
        charge,
        replace_usage: billed.anomaly.is_some(),
    })
}

/// Opens a stream on `d` and reads its first chunk: until then, another deployment can still
/// take the request.
async fn first_chunk(
    d: &Deployment,
    call: UpstreamCall<'_>,
) -> Result<(ChunkStream, StreamChunk), ProviderError> {
    let mut chunks = d.provider.stream(call).await?;
    match chunks.next().await {
        Some(Ok(first)) => Ok((chunks, first)),
        Some(Err(e)) => Err(e),
        None => Err(ProviderError::new(
            ErrorClass::Cut,
            "the upstream stream ended before its first chunk",
        )),
    }
}

/// A stream: attempts until a deployment's stream yields its first chunk, then pumps the rest
/// through `renderer` from a task of its own, which settles the request before the stream's
/// end.
pub async fn stream(
    state: &AppState,
    call: Call<'_>,
    renderer: Box<dyn StreamRenderer>,
) -> Result<Streaming, ApiError> {
    if is_fusion(state, &call)? {
        return fusion::stream(state, call, renderer).await;
    }
    let Admitted {
        meta,
        policy_version,
        deployments,
        limits,
        allowance,
        mut settlement,
    } = admit(state, &call, None).await?;
    let mut attempts = Attempts::new(&meta, &state.log);
    let tried = attempts
        .run(
            &deployments,
            |n| settlement.attempt_started(n),
            |d, tp| first_chunk(d, upstream_call(&call, &meta, d, tp)),
        )
        .await;
    let (attempt, (chunks, first), ttfb) = opened(state, tried, &attempts, &mut settlement).await?;
    first_token(&meta, &attempt, ttfb);
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let route = Route {
        meta: meta.clone(),
        deployment: attempt.deployment.clone(),
        attempts: attempt.number,
        limits,
        policy_version,
    };
    let pump = Pump {
        meta: meta.clone(),
        log: state.log.clone(),
        attempt,
        ttfb,
        body: call.body.clone(),
        allowance,
        settlement,
        renderer,
        report: None,
        tx,
    };
    tokio::spawn(pump.run(chunks, first));
    Ok(Streaming { route, body: rx })
}
