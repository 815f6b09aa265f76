//! Attempts: the path's deployments tried in order behind their breakers, the one fallback loop
//! a whole answer and a stream share. Each attempt's `UpstreamAttempted` is queued once it is
//! known whether another attempt followed it (`fell_back`); the answering attempt is handed
//! back for its caller to record when it ends (at once for a whole answer, when the stream
//! ends for a stream).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use axum::http::HeaderValue;
use lumina_eventlog::EventLog;
use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;

use crate::api::error::ApiError;
use crate::metering::events::{AttemptRecord, RequestMeta, Role};
use crate::providers::breaker::{Admission, Breaker};
use crate::providers::{ErrorClass, ProviderError};
use crate::routing::catalog::RoutePath;
use crate::routing::table::Deployment;
use crate::telemetry::{RequestTrace, Span, instruments};

/// One attempt on one deployment.
#[derive(Clone)]
pub struct Attempt {
    /// 1 for the first.
    pub number: i32,
    /// The deployment tried.
    pub deployment: Arc<Deployment>,
    /// When it started, µs since the epoch.
    pub started_at: i64,
    /// When it started, for durations.
    pub started: Instant,
    /// Its role in a Fusion request.
    pub role: Option<Role>,
    /// Its client span (`chat {model}`), ended once the call is billed or failed.
    pub span: Span,
    /// The request's path, for its metrics.
    pub path: RoutePath,
}

impl Attempt {
    /// The attempt's end: as `UpstreamAttempted` records it (answered after `ttfb`, or failed
    /// with `error`), its duration in the request's upstream time and in
    /// `gen_ai_client_operation_duration_seconds`, and a failure on its span (which then
    /// ends).
    pub fn ended(
        &self,
        trace: &RequestTrace,
        ttfb: Option<Duration>,
        error: Option<&ProviderError>,
    ) -> AttemptRecord {
        let d = &self.deployment;
        let duration = self.started.elapsed();
        // A stream's answering attempt waited upstream only until its first chunk; the rest
        // of the stream is the client's to wait for.
        trace.waited_upstream(if error.is_none() {
            ttfb.unwrap_or(duration)
        } else {
            duration
        });
        let kind = d.kind.as_str();
        match error {
            None => d
                .instruments
                .on(self.path, kind, &d.upstream_model)
                .duration
                .record(duration.as_secs_f64()),
            Some(e) => {
                instruments::failed_call(
                    self.path,
                    kind,
                    &d.upstream_model,
                    e.class.as_str(),
                    duration.as_secs_f64(),
                );
                self.span.fail(e.class.as_str(), &e.message);
                self.span.set(|| {
                    let mut attributes = Vec::with_capacity(2);
                    if let Some(status) = e.status {
                        attributes.push(KeyValue::new(
                            "http.response.status_code",
                            i64::from(status),
                        ));
                    }
                    attributes.push(KeyValue::new("lumina.fell_back", e.class.falls_back()));
                    attributes
                });
                self.span.end();
            }
        }
        AttemptRecord {
            attempt: self.number,
            provider: d.provider_name.clone(),
            deployment: d.id.clone(),
            upstream_model: d.upstream_model.clone(),
            started_at: self.started_at,
            ttfb,
            duration,
            error: error.map(|e| (e.class, e.status)),
            fell_back: false,
            role: self.role,
        }
    }
}

/// Gives a half-open breaker's probe back if the attempt is abandoned before its outcome is
/// recorded (the client went away mid-attempt), so the breaker does not wait forever.
pub struct ProbeGuard<'a> {
    breaker: Option<&'a Breaker>,
}

impl<'a> ProbeGuard<'a> {
    /// `None` when the deployment's breaker is open.
    fn admit(d: &'a Deployment) -> Option<ProbeGuard<'a>> {
        match d.breaker.admit() {
            Admission::Rejected => None,
            Admission::Allowed => Some(ProbeGuard { breaker: None }),
            Admission::Probe => Some(ProbeGuard {
                breaker: Some(&d.breaker),
            }),
        }
    }

    /// The attempt's outcome will be recorded elsewhere (by a stream's pump).
    pub fn disarm(mut self) {
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

/// How the attempts ended.
pub enum Tried<'a, T> {
    /// A deployment answered with `value`.
    Answered {
        /// The answering attempt.
        attempt: Attempt,
        /// What it answered.
        value: T,
        /// Its breaker's probe, if it was one.
        probe: ProbeGuard<'a>,
    },
    /// The upstream of this deployment refused the request itself (the client's fault): no
    /// fallback.
    Refused(&'a Deployment, ProviderError),
    /// Every deployment failed or was skipped.
    Exhausted,
}

/// Attempts so far, with the last failure's event held back until it is known whether another
/// attempt follows it.
pub struct Attempts<'a> {
    meta: &'a RequestMeta,
    log: &'a EventLog,
    made: i32,
    /// Numbers attempts across the calls of one request (a Fusion request's several).
    numbers: Option<&'a AtomicI32>,
    role: Option<Role>,
    /// The attempt under way, until its outcome is known.
    current: Option<Attempt>,
    held: Option<AttemptRecord>,
    failures: Vec<(String, ProviderError)>,
    skipped: Vec<String>,
}

impl<'a> Attempts<'a> {
    /// No attempt yet.
    pub fn new(meta: &'a RequestMeta, log: &'a EventLog) -> Self {
        Attempts {
            meta,
            log,
            made: 0,
            numbers: None,
            role: None,
            current: None,
            held: None,
            failures: Vec::new(),
            skipped: Vec::new(),
        }
    }

    /// The attempts of one call of a Fusion request, in `role`, numbered from `numbers`, which
    /// every call of the request shares.
    pub fn in_role(
        meta: &'a RequestMeta,
        log: &'a EventLog,
        role: Role,
        numbers: &'a AtomicI32,
    ) -> Self {
        Attempts {
            numbers: Some(numbers),
            role: Some(role),
            ..Attempts::new(meta, log)
        }
    }

    /// Attempts made so far (by every call of the request, when they share numbers).
    pub fn count(&self) -> i32 {
        self.numbers
            .map_or(self.made, |n| n.load(Ordering::Relaxed))
    }

    /// Records the attempt under way, if any, as abandoned by the gateway (`cancelled`), after
    /// the run was dropped; the failure is this call's last.
    pub async fn abandon(&mut self, why: &str) {
        if let Some(attempt) = self.current.take() {
            let e = ProviderError::new(ErrorClass::Cancelled, why);
            self.emit(&attempt.ended(&self.meta.trace, None, Some(&e)))
                .await;
            self.failures.push((attempt.deployment.id.clone(), e));
        }
    }

    /// Records that `attempt` answered whole: its breaker's success and its
    /// `UpstreamAttempted`, then gives back its probe; returns how long it took.
    pub async fn answered(&self, attempt: &Attempt, probe: ProbeGuard<'_>) -> Duration {
        attempt.deployment.breaker.record(true);
        let took = attempt.started.elapsed();
        self.emit(&attempt.ended(&self.meta.trace, Some(took), None))
            .await;
        drop(probe);
        took
    }

    /// Queues an attempt's `UpstreamAttempted`.
    pub async fn emit(&self, record: &AttemptRecord) {
        if let Err(e) = self
            .log
            .append_event_nowait(&self.meta.attempted(record))
            .await
        {
            tracing::error!(error = %e, "could not record an upstream attempt");
        }
    }

    /// A new attempt on `deployment` begins: the held failure led to it.
    async fn begin(&mut self, deployment: &Arc<Deployment>) -> Attempt {
        self.release_held(true).await;
        self.made += 1;
        let number = self
            .numbers
            .map_or(self.made, |n| n.fetch_add(1, Ordering::Relaxed) + 1);
        let meta = self.meta;
        let path = meta.path;
        let span = meta.trace.child(
            || {
                format!(
                    "{} {}",
                    instruments::operation(path),
                    deployment.upstream_model
                )
            },
            SpanKind::Client,
            None,
            || {
                let mut attributes = vec![
                    KeyValue::new("gen_ai.operation.name", instruments::operation(path)),
                    KeyValue::new("gen_ai.provider.name", deployment.kind.as_str()),
                    KeyValue::new("gen_ai.request.model", deployment.upstream_model.clone()),
                    KeyValue::new("lumina.deployment", deployment.id.clone()),
                    KeyValue::new("lumina.provider", deployment.provider_name.clone()),
                    KeyValue::new("lumina.attempt", i64::from(number)),
                    KeyValue::new("lumina.path", path.as_str()),
                    KeyValue::new("lumina.breaker.state", deployment.breaker.state().as_str()),
                ];
                if let Some(role) = self.role {
                    attributes.push(KeyValue::new("lumina.fusion.role", role.as_str()));
                }
                if let Some((_, e)) = self.failures.last() {
                    attributes.push(KeyValue::new("lumina.fallback_reason", e.class.as_str()));
                }
                attributes
            },
        );
        let attempt = Attempt {
            number,
            deployment: deployment.clone(),
            started_at: lumina_schemas::now_micros(),
            started: Instant::now(),
            role: self.role,
            span,
            path,
        };
        self.current = Some(attempt.clone());
        attempt
    }

    async fn release_held(&mut self, fell_back: bool) {
        if let Some(mut held) = self.held.take() {
            held.fell_back = fell_back;
            self.emit(&held).await;
        }
    }

    /// Tries each of `deployments` in order with `call` (given the attempt's `traceparent`)
    /// until one answers, skipping those
    /// whose breaker is open and falling back on every failure that is not the client's.
    /// `started` hears of each attempt as it begins (for the settlement of a request the
    /// client abandons mid-attempt).
    pub async fn run<T, F, Fut>(
        &mut self,
        deployments: &'a [Arc<Deployment>],
        mut started: impl FnMut(i32),
        mut call: F,
    ) -> Tried<'a, T>
    where
        F: FnMut(&'a Deployment, Option<HeaderValue>) -> Fut,
        Fut: Future<Output = Result<T, ProviderError>>,
    {
        for d in deployments {
            let Some(probe) = ProbeGuard::admit(d) else {
                self.skipped.push(d.id.clone());
                continue;
            };
            let attempt = self.begin(d).await;
            started(attempt.number);
            let traceparent = self.meta.trace.upstream_traceparent(&attempt.span);
            let result = call(d, traceparent).await;
            self.current = None;
            match result {
                Ok(value) => {
                    return Tried::Answered {
                        attempt,
                        value,
                        probe,
                    };
                }
                Err(e) => {
                    let falls_back = e.class.falls_back();
                    d.breaker.record(!falls_back);
                    self.held = Some(attempt.ended(&self.meta.trace, None, Some(&e)));
                    self.failures.push((d.id.clone(), e.clone()));
                    if !falls_back {
                        self.release_held(false).await;
                        return Tried::Refused(d, e);
                    }
                }
            }
        }
        self.release_held(false).await;
        Tried::Exhausted
    }

    /// The deployment of the last failed attempt, if one failed.
    pub fn last_failed(&self) -> Option<&str> {
        self.failures.last().map(|(d, _)| d.as_str())
    }

    /// Each failed or skipped attempt, in order: `[1] deployment: class (HTTP status)`.
    pub fn failure_summary(&self) -> String {
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
        parts.join("; ")
    }

    /// The error for a request none of whose attempts succeeded.
    pub fn exhausted(&self) -> ApiError {
        let path = self.meta.path.as_str();
        let all = |class: ErrorClass| {
            !self.failures.is_empty() && self.failures.iter().all(|(_, e)| e.class == class)
        };
        let unavailable = self
            .failures
            .iter()
            .all(|(_, e)| matches!(e.class, ErrorClass::Overload | ErrorClass::RateLimited));
        let status = if all(ErrorClass::Timeout) {
            504
        } else if all(ErrorClass::RateLimited) {
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
                self.failure_summary()
            ),
            retry_after: self
                .failures
                .iter()
                .filter_map(|(_, e)| e.retry_after)
                .min(),
        }
    }

    /// The class of the last failure (or `circuit_open` when every deployment was skipped).
    pub fn error_class(&self) -> Option<String> {
        self.failures
            .last()
            .map(|(_, e)| e.class.as_str().to_string())
            .or_else(|| (!self.skipped.is_empty()).then(|| "circuit_open".to_string()))
    }
}
