//! `POST /v1/chat/completions`: read and validate the body once, check the key's limits,
//! classify, then try the path's deployments in order (skipping open breakers, falling back on
//! failures that are not the client's) and answer — whole, or as a server-sent event stream.
//!
//! Accounting rides on the answer itself: usage comes from the upstream's own report in the
//! body or the stream the client receives (estimated with the tokenizer only when there is
//! none), and the `RequestSettled` event is committed before the client gets the end of its
//! answer. A request the client abandons is still settled, by a guard that fires on drop.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Extension;
use axum::body::Body;
use axum::extract::State;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use futures::{FutureExt, StreamExt};
use lumina_eventlog::EventLog;
use tokio::sync::mpsc;

use lumina_eventlog::LogRecord;
use lumina_ledger::pricing::{Price, PriceTable, Tokens};
use lumina_schemas::NanoCredits;
use lumina_schemas::payloads::CreditHold;

use crate::api::RequestId;
use crate::api::error::{ApiError, rate_limit_headers};
use crate::api::extract::{CustomerKey, RawBody};
use crate::metering::credit::CreditBook;
use crate::metering::events::{AttemptRecord, Outcome, RequestMeta, Routing, SettleInfo};
use crate::metering::limits::LimitStatus;
use crate::metering::usage::{Billed, UsageAnomaly};
use crate::metering::{content, cost, usage};
use crate::providers::{
    ChunkStream, Completion, ErrorClass, ProviderError, ReportedUsage, StreamChunk, UpstreamCall,
};
use crate::routing::catalog::ModelChoice;
use crate::routing::classifier::{self, Decision};
use crate::routing::table::Deployment;
use crate::state::AppState;
use crate::wire::{ChatChunk, ChatRequest, TokenUsage, UsageOut};

/// Completion tokens each choice of a request without `max_tokens` is assumed to use, for the
/// TPM limit (counted when the request starts; the actual output is not known yet).
const ASSUMED_COMPLETION_TOKENS: u64 = 256;

static X_LUMINA_ROUTE: HeaderName = HeaderName::from_static("x-lumina-route");
static X_LUMINA_PROVIDER: HeaderName = HeaderName::from_static("x-lumina-provider");
static X_LUMINA_ATTEMPTS: HeaderName = HeaderName::from_static("x-lumina-attempts");
static X_LUMINA_DEPLOYMENT: HeaderName = HeaderName::from_static("x-lumina-deployment");
static X_LUMINA_COST: HeaderName = HeaderName::from_static("x-lumina-cost");

fn trace_id(headers: &HeaderMap) -> Option<String> {
    let tp = headers.get("traceparent")?.to_str().ok()?;
    let mut parts = tp.split('-');
    let _version = parts.next()?;
    let trace = parts.next()?;
    (trace.len() == 32 && trace.bytes().all(|b| b.is_ascii_hexdigit())).then(|| trace.to_string())
}

/// Gives a half-open breaker's probe back if the attempt is abandoned before its outcome is
/// recorded (the client went away mid-attempt), so the breaker does not wait forever.
struct ProbeGuard<'a> {
    breaker: Option<&'a crate::providers::breaker::Breaker>,
}

impl<'a> ProbeGuard<'a> {
    /// `None` when the deployment's breaker is open.
    fn admit(d: &'a Deployment) -> Option<ProbeGuard<'a>> {
        use crate::providers::breaker::Admission;
        match d.breaker.admit() {
            Admission::Rejected => None,
            Admission::Allowed => Some(ProbeGuard { breaker: None }),
            Admission::Probe => Some(ProbeGuard {
                breaker: Some(&d.breaker),
            }),
        }
    }

    fn disarm(mut self) {
        self.breaker = None;
    }
}

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        if let Some(b) = self.breaker {
            b.release_probe();
        }
    }
}

/// Appends the request's settlement, or — if dropped before it settled — settles it as
/// cancelled from a spawned task, so no request ends unaccounted.
struct Settlement {
    log: EventLog,
    credits: Arc<CreditBook>,
    meta: Arc<RequestMeta>,
    hold: NanoCredits,
    price_version: Arc<str>,
    pending: Option<SettleInfo>,
    /// The request body, kept only when the key stores content.
    content_body: Option<Bytes>,
}

impl Settlement {
    fn new(
        state: &AppState,
        meta: Arc<RequestMeta>,
        hold: NanoCredits,
        body: &Bytes,
    ) -> Settlement {
        let content_body = meta.key.store_content.then(|| body.clone());
        let price_version = state.price_version.clone();
        Settlement {
            content_body,
            log: state.log.clone(),
            credits: state.credits.clone(),
            meta,
            hold,
            price_version,
            pending: Some(SettleInfo {
                outcome: Outcome::Cancelled,
                provider: None,
                deployment: None,
                usage: TokenUsage::default(),
                estimated: true,
                anomaly: None,
                reported_completion: None,
                ttft: None,
                attempts: 0,
                error_class: None,
                charge: NanoCredits::ZERO,
                hold,
            }),
        }
    }

    /// What the drop guard records if the request is abandoned now.
    fn progress(&mut self, f: impl FnOnce(&mut SettleInfo)) {
        if let Some(p) = self.pending.as_mut() {
            f(p);
        }
    }

    /// Commits the settlement (releasing the request's hold) and waits for it; for keys that
    /// store content, the prompt and `answer` (its JSON pieces) go in the same commit.
    async fn settle(&mut self, mut info: SettleInfo, answer: &[Bytes]) -> Result<(), ApiError> {
        self.pending = None;
        info.hold = self.hold;
        if let Some(body) = self.content_body.take() {
            let record = content::record(&body, answer.iter().map(|b| &b[..]));
            if let Err(e) = self
                .log
                .append_event_nowait(&self.meta.content(record))
                .await
            {
                tracing::error!(error = %e, "could not record a request's content");
            }
        }
        let event = self.meta.settled(&info, &self.price_version);
        commit_settlement(&self.log, &self.credits, &self.meta, &event, info.charge)
            .await
            .map_err(|e| ApiError::Unavailable(format!("The request could not be recorded: {e}")))
    }
}

/// Commits a `RequestSettled` and tells the credit book, which from then on counts the
/// request's charge instead of its hold.
async fn commit_settlement(
    log: &EventLog,
    credits: &CreditBook,
    meta: &RequestMeta,
    event: &lumina_schemas::Event,
    charge: NanoCredits,
) -> Result<(), lumina_eventlog::LogError> {
    let position = log.append_event(event).await?;
    credits.settled(
        &meta.request_id,
        charge.0,
        event.envelope.event_id,
        position,
    );
    Ok(())
}

impl Drop for Settlement {
    fn drop(&mut self) {
        if let Some(info) = self.pending.take() {
            let event = self.meta.settled(&info, &self.price_version);
            let log = self.log.clone();
            let credits = self.credits.clone();
            let meta = self.meta.clone();
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    if let Err(e) =
                        commit_settlement(&log, &credits, &meta, &event, info.charge).await
                    {
                        tracing::error!(error = %e, "could not settle an abandoned request");
                    }
                });
            }
        }
    }
}

/// Attempts so far, with the last failure's event held back until we know whether another
/// attempt follows it (`fell_back`).
struct Attempts<'a> {
    meta: &'a RequestMeta,
    log: &'a EventLog,
    records: Vec<AttemptRecord>,
    held: Option<AttemptRecord>,
    failures: Vec<(String, ProviderError)>,
    skipped: Vec<String>,
}

impl<'a> Attempts<'a> {
    fn new(meta: &'a RequestMeta, log: &'a EventLog) -> Self {
        Attempts {
            meta,
            log,
            records: Vec::new(),
            held: None,
            failures: Vec::new(),
            skipped: Vec::new(),
        }
    }

    fn count(&self) -> i32 {
        self.records.len() as i32 + i32::from(self.held.is_some())
    }

    async fn emit(&self, record: &AttemptRecord) {
        if let Err(e) = self
            .log
            .append_event_nowait(&self.meta.attempted(record))
            .await
        {
            tracing::error!(error = %e, "could not record an upstream attempt");
        }
    }

    /// A new attempt begins: the held failure led to it.
    async fn begin(&mut self) -> (i32, i64, Instant) {
        if let Some(mut held) = self.held.take() {
            held.fell_back = true;
            self.emit(&held).await;
            self.records.push(held);
        }
        (
            self.count() + 1,
            lumina_schemas::now_micros(),
            Instant::now(),
        )
    }

    fn record(
        d: &Deployment,
        attempt: i32,
        started_at: i64,
        started: Instant,
        ttfb: Option<Duration>,
        error: Option<&ProviderError>,
    ) -> AttemptRecord {
        AttemptRecord {
            attempt,
            provider: d.provider_name.clone(),
            deployment: d.id.clone(),
            upstream_model: d.upstream_model.clone(),
            started_at,
            ttfb,
            duration: started.elapsed(),
            error: error.map(|e| (e.class, e.status)),
            fell_back: false,
        }
    }

    fn failed(&mut self, d: &Deployment, attempt: (i32, i64, Instant), e: ProviderError) {
        self.held = Some(Self::record(
            d,
            attempt.0,
            attempt.1,
            attempt.2,
            None,
            Some(&e),
        ));
        self.failures.push((d.id.clone(), e));
    }

    /// Emits the held failure as final (no attempt followed).
    async fn finish(&mut self) {
        if let Some(held) = self.held.take() {
            self.emit(&held).await;
            self.records.push(held);
        }
    }

    /// The error for a request none of whose attempts succeeded.
    fn exhausted(&self, path: &str) -> ApiError {
        let mut parts: Vec<String> = self
            .failures
            .iter()
            .enumerate()
            .map(|(i, (d, e))| match e.status {
                Some(s) => format!("[{}] {d}: {} (HTTP {s})", i + 1, e.class.as_str()),
                None => format!("[{}] {d}: {}", i + 1, e.class.as_str()),
            })
            .collect();
        parts.extend(self.skipped.iter().map(|d| format!("{d}: circuit open")));
        let all_timeouts = !self.failures.is_empty()
            && self
                .failures
                .iter()
                .all(|(_, e)| e.class == ErrorClass::Timeout);
        let unavailable = self
            .failures
            .iter()
            .all(|(_, e)| matches!(e.class, ErrorClass::Overload | ErrorClass::RateLimited));
        let all_rate_limited = !self.failures.is_empty()
            && self
                .failures
                .iter()
                .all(|(_, e)| e.class == ErrorClass::RateLimited);
        let status = if all_timeouts {
            504
        } else if all_rate_limited {
            429
        } else if unavailable {
            503
        } else {
            502
        };
        ApiError::UpstreamFailed {
            status,
            message: format!(
                "All upstream attempts for the {path} path failed: {}",
                parts.join("; ")
            ),
            retry_after: self
                .failures
                .iter()
                .filter_map(|(_, e)| e.retry_after)
                .min(),
        }
    }

    fn error_class(&self) -> Option<String> {
        self.failures
            .last()
            .map(|(_, e)| e.class.as_str().to_string())
            .or_else(|| (!self.skipped.is_empty()).then(|| "circuit_open".to_string()))
    }
}

fn routed_headers(
    headers: &mut HeaderMap,
    meta: &RequestMeta,
    d: &Deployment,
    attempts: i32,
    limits: &LimitStatus,
) {
    headers.insert(
        X_LUMINA_ROUTE.clone(),
        HeaderValue::from_static(meta.path.as_str()),
    );
    if let Ok(v) = HeaderValue::from_str(&d.provider_name) {
        headers.insert(X_LUMINA_PROVIDER.clone(), v);
    }
    if let Ok(v) = HeaderValue::from_str(&d.id) {
        headers.insert(X_LUMINA_DEPLOYMENT.clone(), v);
    }
    if let Ok(v) = HeaderValue::from_str(&attempts.to_string()) {
        headers.insert(X_LUMINA_ATTEMPTS.clone(), v);
    }
    rate_limit_headers(headers, limits);
}

/// The handler.
pub async fn create(
    State(state): State<AppState>,
    CustomerKey(key): CustomerKey,
    Extension(RequestId(request_id)): Extension<RequestId>,
    headers: HeaderMap,
    RawBody(bytes): RawBody,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let started_at = lumina_schemas::now_micros();
    if !state.log.is_healthy() {
        return Err(ApiError::Unavailable(
            "The event log cannot take writes (disk full or I/O error), so no paid request can be recorded. Retry later.".into(),
        ));
    }
    let request = ChatRequest::parse(&bytes)?;
    if request.n > state.server.max_n {
        return Err(ApiError::invalid(
            format!(
                "'n' must be at most {} on this gateway (got {}).",
                state.server.max_n, request.n
            ),
            Some("n"),
        ));
    }
    let Some(choice) = state.catalog.resolve(request.model.as_str()) else {
        return Err(ApiError::ModelNotFound(request.model.as_str().to_string()));
    };
    let mut decision: Decision = classifier::classify(&request);
    if let ModelChoice::Path(path) = choice {
        decision.path = path;
    }
    let prompt_estimate = usage::quick_prompt_estimate(&request);
    let limits = state
        .limits
        .check(
            &key,
            prompt_estimate.saturating_add(
                request
                    .max_tokens
                    .unwrap_or(ASSUMED_COMPLETION_TOKENS)
                    .saturating_mul(u64::from(request.n)),
            ),
        )
        .map_err(|e| ApiError::RateLimited(Box::new(e)))?;
    let deployments = state.routes.deployments(decision.path);
    let meta = Arc::new(RequestMeta {
        request_id,
        key,
        trace_id: trace_id(&headers),
        instance: state.instance.clone(),
        requested_model: request.model.as_str().to_string(),
        path: decision.path,
        started,
        started_at,
    });
    let deployment_ids: Vec<&str> = deployments.iter().map(|d| d.id.as_str()).collect();
    let hold = state.prices.hold(
        decision.path.as_str(),
        &deployment_ids,
        prompt_estimate,
        request.max_tokens,
        request.n,
    );
    if hold.is_positive() {
        let db = state.admin.read_model().database();
        state
            .credits
            .hold(db, &meta.key.account_id, &meta.request_id, hold.0)
            .await
            .map_err(|e| ApiError::InsufficientQuota {
                available: NanoCredits(e.available),
                needed: NanoCredits(e.needed),
            })?;
    }
    let routed = meta.routed(Routing {
        decision: &decision,
        stream: request.stream,
        policy_version: state.routes.policy_version,
        candidates: deployments.iter().map(|d| d.id.clone()).collect(),
        prompt_tokens_estimate: prompt_estimate,
        max_tokens: request.max_tokens,
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
    match queued.await {
        Ok(position) => {
            state
                .credits
                .queued(&meta.request_id, routed.envelope.event_id, position);
        }
        Err(e) => {
            state.credits.cancel(&meta.request_id);
            return Err(ApiError::Unavailable(format!(
                "The request could not be recorded: {e}"
            )));
        }
    }
    let settlement = Settlement::new(&state, meta.clone(), hold, &bytes);
    if request.stream {
        stream(
            &state,
            &request,
            &bytes,
            &meta,
            deployments,
            settlement,
            limits,
        )
        .await
    } else {
        complete(
            &state,
            &request,
            &bytes,
            &meta,
            deployments,
            settlement,
            limits,
        )
        .await
    }
}

async fn complete(
    state: &AppState,
    request: &ChatRequest<'_>,
    body: &Bytes,
    meta: &Arc<RequestMeta>,
    deployments: &[Arc<Deployment>],
    mut settlement: Settlement,
    limits: LimitStatus,
) -> Result<Response, ApiError> {
    let mut attempts = Attempts::new(meta, &state.log);
    let mut answer: Option<(Arc<Deployment>, Completion, Duration)> = None;
    for d in deployments {
        let Some(_probe) = ProbeGuard::admit(d) else {
            attempts.skipped.push(d.id.clone());
            continue;
        };
        let attempt = attempts.begin().await;
        settlement.progress(|p| p.attempts = attempt.0);
        let call = UpstreamCall {
            request,
            upstream_model: &d.upstream_model,
            request_id: &meta.request_id,
        };
        match d.provider.complete(call).await {
            Ok(completion) => {
                d.breaker.record(true);
                let elapsed = attempt.2.elapsed();
                let record =
                    Attempts::record(d, attempt.0, attempt.1, attempt.2, Some(elapsed), None);
                attempts.emit(&record).await;
                attempts.records.push(record);
                answer = Some((d.clone(), completion, elapsed));
                break;
            }
            Err(e) if e.class.falls_back() => {
                d.breaker.record(false);
                attempts.failed(d, attempt, e);
            }
            Err(e) => {
                d.breaker.record(true);
                attempts.failed(d, attempt, e.clone());
                attempts.finish().await;
                settle_failed(&mut settlement, &attempts, Some(d)).await?;
                return Err(upstream_refusal(e));
            }
        }
    }
    attempts.finish().await;
    let Some((deployment, completion, ttfb)) = answer else {
        settle_failed(&mut settlement, &attempts, None).await?;
        return Err(attempts.exhausted(meta.path.as_str()));
    };
    let allowance =
        state
            .prices
            .output_allowance(meta.path.as_str(), request.max_tokens, request.n);
    let billed = bill(completion.usage, allowance, body, || {
        vec![completion.body.clone()]
    })
    .await;
    let usage = billed.usage;
    let charge = price(state, meta, &deployment, usage);
    settlement
        .settle(
            SettleInfo {
                outcome: Outcome::Completed,
                provider: Some(deployment.provider_name.clone()),
                deployment: Some(deployment.id.clone()),
                usage,
                estimated: billed.estimated,
                anomaly: billed.anomaly,
                reported_completion: billed.reported_completion,
                ttft: Some(ttfb),
                attempts: attempts.count(),
                error_class: None,
                charge,
                hold: NanoCredits::ZERO,
            },
            std::slice::from_ref(&completion.body),
        )
        .await?;
    let body = cost::with_cost(&completion.body, usage, charge, billed.anomaly.is_some());
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Ok(v) = HeaderValue::from_str(&charge.to_string()) {
        headers.insert(X_LUMINA_COST.clone(), v);
    }
    routed_headers(headers, meta, &deployment, attempts.count(), &limits);
    Ok(response)
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

async fn settle_failed(
    settlement: &mut Settlement,
    attempts: &Attempts<'_>,
    deployment: Option<&Deployment>,
) -> Result<(), ApiError> {
    settlement
        .settle(
            SettleInfo {
                outcome: Outcome::Failed,
                provider: deployment.map(|d| d.provider_name.clone()),
                deployment: deployment.map(|d| d.id.clone()),
                usage: TokenUsage::default(),
                estimated: false,
                anomaly: None,
                reported_completion: None,
                ttft: None,
                attempts: attempts.count(),
                error_class: attempts.error_class(),
                charge: NanoCredits::ZERO,
                hold: NanoCredits::ZERO,
            },
            &[],
        )
        .await
}

/// What `usage` on `deployment` costs, at the price table in force.
fn price(
    state: &AppState,
    meta: &RequestMeta,
    deployment: &Deployment,
    usage: TokenUsage,
) -> NanoCredits {
    let price = state.prices.price(meta.path.as_str(), Some(&deployment.id));
    PriceTable::charge(
        &price,
        Tokens {
            prompt: usage.prompt_tokens,
            completion: usage.completion_tokens,
            cached: usage.cached_tokens,
            reasoning: usage.reasoning_tokens,
        },
    )
}

/// The usage to bill for an answer: the upstream's report when it is usable, else an estimate
/// from the request `body` and the `answer`'s JSON pieces (flagged when the report was
/// unusable rather than missing); completion tokens clamped to the request's `allowance`.
async fn bill(
    report: ReportedUsage,
    allowance: u64,
    body: &Bytes,
    answer: impl FnOnce() -> Vec<Bytes>,
) -> Billed {
    let anomaly = match report {
        ReportedUsage::Counted(usage) => return Billed::new(usage, false, None, allowance),
        ReportedUsage::Missing => None,
        ReportedUsage::Unrecognized => Some(UsageAnomaly::Unrecognized),
        ReportedUsage::OutOfRange => Some(UsageAnomaly::OutOfRange),
    };
    let usage = estimate_usage(body.clone(), answer()).await;
    Billed::new(usage, true, anomaly, allowance)
}

/// Estimates usage with the tokenizer, off the async runtime: the prompt from the request
/// body, the completion from the answer's JSON pieces.
async fn estimate_usage(body: Bytes, answer: Vec<Bytes>) -> TokenUsage {
    tokio::task::spawn_blocking(move || {
        let text = usage::completion_text(answer.iter().map(|b| &b[..]));
        match ChatRequest::parse(&body) {
            Ok(request) => usage::estimate(&request, &text),
            Err(_) => TokenUsage {
                completion_tokens: usage::count_tokens(&text),
                ..TokenUsage::default()
            },
        }
    })
    .await
    .unwrap_or_default()
}

/// Appends `data: <json>\n\n`.
fn put_sse(out: &mut BytesMut, data: &[u8]) {
    out.reserve(data.len() + 8);
    out.put_slice(b"data: ");
    out.put_slice(data);
    out.put_slice(b"\n\n");
}

/// `data: <json>\n\n`
fn sse(data: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(data.len() + 8);
    put_sse(&mut b, data);
    b.freeze()
}

const DONE: &[u8] = b"data: [DONE]\n\n";

fn error_event(message: &str, code: &str) -> Bytes {
    let body = serde_json::json!({"error": {"message": message, "type": "server_error", "param": null, "code": code}});
    sse(body.to_string().as_bytes())
}

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

async fn stream(
    state: &AppState,
    request: &ChatRequest<'_>,
    body: &Bytes,
    meta: &Arc<RequestMeta>,
    deployments: &[Arc<Deployment>],
    mut settlement: Settlement,
    limits: LimitStatus,
) -> Result<Response, ApiError> {
    let mut attempts = Attempts::new(meta, &state.log);
    let mut opened = None;
    for d in deployments {
        let Some(probe) = ProbeGuard::admit(d) else {
            attempts.skipped.push(d.id.clone());
            continue;
        };
        let attempt = attempts.begin().await;
        settlement.progress(|p| p.attempts = attempt.0);
        let call = UpstreamCall {
            request,
            upstream_model: &d.upstream_model,
            request_id: &meta.request_id,
        };
        match first_chunk(d, call).await {
            Ok((chunks, first)) => {
                // The stream's outcome decides the probe; the pump records it.
                probe.disarm();
                opened = Some((d.clone(), attempt, chunks, first));
                break;
            }
            Err(e) if e.class.falls_back() => {
                d.breaker.record(false);
                attempts.failed(d, attempt, e);
            }
            Err(e) => {
                d.breaker.record(true);
                attempts.failed(d, attempt, e.clone());
                attempts.finish().await;
                settle_failed(&mut settlement, &attempts, Some(d)).await?;
                return Err(upstream_refusal(e));
            }
        }
    }
    attempts.finish().await;
    let Some((deployment, attempt, chunks, first)) = opened else {
        settle_failed(&mut settlement, &attempts, None).await?;
        return Err(attempts.exhausted(meta.path.as_str()));
    };
    let ttfb = attempt.2.elapsed();
    // The successful attempt is recorded by the pump when the stream ends.
    let count = attempt.0;
    settlement.progress(|p| {
        p.provider = Some(deployment.provider_name.clone());
        p.deployment = Some(deployment.id.clone());
        p.ttft = Some(ttfb);
    });
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let pump = Pump {
        meta: meta.clone(),
        log: state.log.clone(),
        deployment: deployment.clone(),
        attempt,
        attempts: count,
        ttfb,
        include_usage: request.include_usage,
        body: body.clone(),
        allowance: state
            .prices
            .output_allowance(meta.path.as_str(), request.max_tokens, request.n),
        price: state.prices.price(meta.path.as_str(), Some(&deployment.id)),
        settlement,
        tx,
    };
    tokio::spawn(pump.run(chunks, first));
    let body =
        Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok::<_, Infallible>));
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    routed_headers(headers, meta, &deployment, count, &limits);
    Ok(response)
}

/// Moves a stream from the upstream to the client, tracking usage, and settles it.
struct Pump {
    meta: Arc<RequestMeta>,
    log: EventLog,
    deployment: Arc<Deployment>,
    attempt: (i32, i64, Instant),
    attempts: i32,
    ttfb: Duration,
    include_usage: bool,
    /// The request body, parsed again only if usage has to be estimated.
    body: Bytes,
    /// The most completion tokens the request may be billed for.
    allowance: u64,
    /// The answering deployment's price.
    price: Price,
    settlement: Settlement,
    tx: mpsc::Sender<Bytes>,
}

enum End {
    Completed,
    Cut(ProviderError),
    ClientGone,
}

impl Pump {
    async fn run(mut self, mut chunks: ChunkStream, first: StreamChunk) {
        let mut usage: Option<ReportedUsage> = None;
        let mut usage_chunk: Option<Bytes> = None;
        let mut sent: Vec<Bytes> = Vec::new();
        let keep_all = self.meta.key.store_content;
        // Chunks already waiting upstream are sent together: one channel message and one
        // socket write instead of one per token.
        let mut out = BytesMut::new();
        let mut take = |chunk: StreamChunk, out: &mut BytesMut| {
            if chunk.usage.is_some() {
                usage = chunk.usage;
            }
            if chunk.usage_only {
                usage_chunk = Some(chunk.data);
                return;
            }
            if !matches!(usage, Some(ReportedUsage::Counted(_))) || keep_all {
                sent.push(chunk.data.clone());
            }
            put_sse(out, &chunk.data);
        };
        let mut next = Some(first);
        let end = 'pump: loop {
            let chunk = match next.take() {
                Some(c) => c,
                None => {
                    let item = tokio::select! {
                        biased;
                        _ = self.tx.closed() => break End::ClientGone,
                        item = chunks.next() => item,
                    };
                    match item {
                        Some(Ok(c)) => c,
                        Some(Err(e)) => break End::Cut(e),
                        None => break End::Completed,
                    }
                }
            };
            take(chunk, &mut out);
            let ready_end = loop {
                match chunks.next().now_or_never() {
                    Some(Some(Ok(c))) => take(c, &mut out),
                    Some(Some(Err(e))) => break Some(End::Cut(e)),
                    Some(None) => break Some(End::Completed),
                    None => break None,
                }
            };
            if !out.is_empty() && self.tx.send(out.split().freeze()).await.is_err() {
                break 'pump End::ClientGone;
            }
            if let Some(end) = ready_end {
                break end;
            }
        };
        drop(chunks);
        let failure = match &end {
            End::Cut(e) => Some(e),
            _ => None,
        };
        self.deployment.breaker.record(failure.is_none());
        let record = Attempts::record(
            &self.deployment,
            self.attempt.0,
            self.attempt.1,
            self.attempt.2,
            Some(self.ttfb),
            failure,
        );
        if let Err(e) = self
            .log
            .append_event_nowait(&self.meta.attempted(&record))
            .await
        {
            tracing::error!(error = %e, "could not record an upstream attempt");
        }
        let billed = bill(
            usage.unwrap_or(ReportedUsage::Missing),
            self.allowance,
            &self.body,
            || sent.clone(),
        )
        .await;
        let usage = billed.usage;
        let answer = sent;
        let outcome = match &end {
            End::Completed => Outcome::Completed,
            End::Cut(_) => Outcome::CutMidstream,
            End::ClientGone => Outcome::Cancelled,
        };
        let charge = PriceTable::charge(
            &self.price,
            Tokens {
                prompt: usage.prompt_tokens,
                completion: usage.completion_tokens,
                cached: usage.cached_tokens,
                reasoning: usage.reasoning_tokens,
            },
        );
        let settled = self
            .settlement
            .settle(
                SettleInfo {
                    outcome,
                    provider: Some(self.deployment.provider_name.clone()),
                    deployment: Some(self.deployment.id.clone()),
                    usage,
                    estimated: billed.estimated,
                    anomaly: billed.anomaly,
                    reported_completion: billed.reported_completion,
                    ttft: Some(self.ttfb),
                    attempts: self.attempts,
                    error_class: failure.map(|e| e.class.as_str().to_string()),
                    charge,
                    hold: NanoCredits::ZERO,
                },
                &answer,
            )
            .await;
        match (end, settled) {
            (End::ClientGone, _) => {}
            (End::Cut(e), _) => {
                let message = format!(
                    "The upstream {} broke off mid-stream ({}); the answer is incomplete.",
                    self.deployment.id,
                    e.class.as_str()
                );
                let _ = self.tx.send(error_event(&message, "upstream_cut")).await;
            }
            (End::Completed, Err(e)) => {
                let _ = self
                    .tx
                    .send(error_event(&e.to_string(), "not_recorded"))
                    .await;
            }
            (End::Completed, Ok(())) => {
                let mut end = BytesMut::new();
                if self.include_usage {
                    let chunk = usage_chunk.unwrap_or_else(|| self.usage_chunk(usage));
                    put_sse(
                        &mut end,
                        &cost::with_cost(&chunk, usage, charge, billed.anomaly.is_some()),
                    );
                }
                end.put_slice(DONE);
                let _ = self.tx.send(end.freeze()).await;
            }
        }
    }

    /// A usage chunk for upstreams that sent none.
    fn usage_chunk(&self, usage: TokenUsage) -> Bytes {
        let id = format!(
            "chatcmpl-{}",
            self.meta.request_id.trim_start_matches("req_")
        );
        let chunk = ChatChunk {
            id: &id,
            object: "chat.completion.chunk",
            created: self.meta.started_at / 1_000_000,
            model: &self.deployment.upstream_model,
            choices: Vec::new(),
            usage: Some(UsageOut::from(usage)),
            service_tier: "default",
            system_fingerprint: None,
        };
        Bytes::from(serde_json::to_vec(&chunk).unwrap_or_default())
    }
}
