//! Settlement: what a request is billed and the `RequestSettled` that says so, committed before
//! the client receives the end of its answer. The charge is computed here and nowhere else
//! ([`call_charge`]); a request of several calls (a Fusion panel, its judge, its synthesizer)
//! is charged the sum of its calls' charges. A request the client abandons is still settled,
//! as `cancelled` with the calls that completed, by a guard that fires on drop.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use lumina_eventlog::{EventLog, LogError};
use lumina_schemas::{Event, NanoCredits};

use crate::api::error::ApiError;
use crate::engine::attempt::{Attempt, Attempts};
use crate::metering::content;
use crate::metering::credit::CreditBook;
use crate::metering::events::{Outcome, RequestMeta, SettleInfo};
use crate::metering::limits::InFlight;
use crate::metering::pricing::{Price, PriceTable, Tokens};
use crate::metering::usage::{self, Billed, UsageAnomaly};
use crate::providers::ReportedUsage;
use crate::routing::catalog::RoutePath;
use crate::routing::table::Deployment;
use crate::telemetry::{Span, instruments};
use crate::wire::{ChatRequest, TokenUsage};
use opentelemetry::KeyValue;

/// What an answer is made of, for estimating its usage when the upstream reported none.
pub enum AnswerText {
    /// A whole completion's JSON.
    Json(Bytes),
    /// The text a stream delivered.
    Text(String),
}

/// The usage to bill for an answer: the upstream's report when it is usable, else an estimate
/// from the request `body` and the `answer` (flagged when the report was unusable rather than
/// missing); completion tokens clamped to the request's `allowance`.
pub async fn bill(
    report: ReportedUsage,
    allowance: u64,
    body: &Bytes,
    answer: impl FnOnce() -> AnswerText,
) -> Billed {
    bill_with(report, allowance, || estimate_usage(body.clone(), answer())).await
}

/// The usage to bill: the upstream's report when it is usable, else what `estimate` counts
/// (flagged when the report was unusable rather than missing); completion tokens clamped to
/// `allowance`.
pub async fn bill_with<F: Future<Output = TokenUsage>>(
    report: ReportedUsage,
    allowance: u64,
    estimate: impl FnOnce() -> F,
) -> Billed {
    let anomaly = match report {
        ReportedUsage::Counted(usage) => return Billed::new(usage, false, None, allowance),
        ReportedUsage::Missing => None,
        ReportedUsage::Unrecognized => Some(UsageAnomaly::Unrecognized),
        ReportedUsage::OutOfRange => Some(UsageAnomaly::OutOfRange),
    };
    Billed::new(estimate().await, true, anomaly, allowance)
}

/// Estimates usage with the tokenizer, off the async runtime: the prompt from the request
/// body, the completion from the answer.
async fn estimate_usage(body: Bytes, answer: AnswerText) -> TokenUsage {
    tokio::task::spawn_blocking(move || {
        let text = match answer {
            AnswerText::Json(json) => usage::completion_text([&json[..]]),
            AnswerText::Text(text) => text,
        };
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

fn tokens(usage: TokenUsage) -> Tokens {
    Tokens {
        prompt: usage.prompt_tokens,
        completion: usage.completion_tokens,
        cached: usage.cached_tokens,
        reasoning: usage.reasoning_tokens,
    }
}

/// What `usage` of one call costs at `price`: the one place a charge is computed.
pub fn call_charge(price: &Price, usage: TokenUsage) -> NanoCredits {
    PriceTable::charge(price, tokens(usage))
}

/// The sum of two usages.
pub fn add_usage(a: TokenUsage, b: TokenUsage) -> TokenUsage {
    TokenUsage {
        prompt_tokens: a.prompt_tokens.saturating_add(b.prompt_tokens),
        completion_tokens: a.completion_tokens.saturating_add(b.completion_tokens),
        cached_tokens: a.cached_tokens.saturating_add(b.cached_tokens),
        reasoning_tokens: a.reasoning_tokens.saturating_add(b.reasoning_tokens),
    }
}

/// Calls billed with a request before its answering one (a Fusion panel and judge).
#[derive(Debug, Clone, Copy, Default)]
struct Prior {
    usage: TokenUsage,
    charge: NanoCredits,
    estimated: bool,
    calls: usize,
}

/// The call that answers a request, for its telemetry.
struct Answering {
    deployment: Arc<Deployment>,
    span: Span,
}

/// A request's settlement, from its hold to its `RequestSettled`; dropped before it settled,
/// it settles the request as cancelled from a spawned task, so no request ends unaccounted.
pub struct Settlement {
    log: EventLog,
    credits: Arc<CreditBook>,
    meta: Arc<RequestMeta>,
    hold: NanoCredits,
    price_version: Arc<str>,
    /// The answering deployment's price, once one answered.
    price: Option<Price>,
    /// The path the answering call is priced as (the request's, or a Fusion synthesizer's).
    price_path: RoutePath,
    /// Calls billed before the answering one.
    prior: Prior,
    /// What the drop guard records if the request is abandoned now.
    pending: Option<SettleInfo>,
    /// The request body, kept only when the key stores content.
    content_body: Option<Bytes>,
    /// The answering call, once one answered: its span ends with its usage and charge.
    answering: Option<Answering>,
    /// Counts the request among its key's requests in flight until the settlement is dropped.
    _in_flight: Option<InFlight>,
}

impl Settlement {
    /// The settlement counting the request among its key's in flight until it is dropped.
    pub fn counted(mut self, in_flight: Option<InFlight>) -> Self {
        self._in_flight = in_flight;
        self
    }

    /// The settlement of a request that holds `hold`, recorded in `log`, told to `credits`,
    /// priced with the table `price_version`.
    pub fn new(
        log: EventLog,
        credits: Arc<CreditBook>,
        price_version: Arc<str>,
        meta: Arc<RequestMeta>,
        hold: NanoCredits,
        body: &Bytes,
    ) -> Self {
        let content_body = meta.key.store_content.then(|| body.clone());
        let price_path = meta.path;
        Settlement {
            _in_flight: None,
            content_body,
            answering: None,
            log,
            credits,
            meta,
            hold,
            price_version,
            price: None,
            price_path,
            prior: Prior::default(),
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

    /// The settlement without the request's content, for answers that are no conversation
    /// (embedding vectors): nothing is recorded for keys that store content.
    pub fn without_content(mut self) -> Self {
        self.content_body = None;
        self
    }

    /// Attempt `number` began.
    pub fn attempt_started(&mut self, number: i32) {
        if let Some(p) = self.pending.as_mut() {
            p.attempts = number;
        }
    }

    /// The answering call is priced as `path` (a Fusion synthesizer's own path).
    pub fn priced_as(&mut self, path: RoutePath) {
        self.price_path = path;
    }

    /// Bills a call made before the answering one (a Fusion panel member, its judge): its
    /// `usage` and `charge` join the request's, from now on even if the request is abandoned.
    pub fn add_call(&mut self, billed: &Billed, charge: NanoCredits) {
        let prior = &mut self.prior;
        prior.usage = add_usage(prior.usage, billed.usage);
        prior.charge = NanoCredits(prior.charge.0.saturating_add(charge.0));
        prior.estimated |= billed.estimated;
        prior.calls += 1;
        if let Some(p) = self.pending.as_mut() {
            p.usage = prior.usage;
            p.charge = prior.charge;
            p.estimated = prior.estimated;
        }
    }

    /// The usage and charge of the calls billed before the answering one.
    pub fn prior(&self) -> (TokenUsage, NanoCredits) {
        (self.prior.usage, self.prior.charge)
    }

    /// Whether calls were billed before the answering one (a stream's own usage chunk is then
    /// not the request's).
    pub fn has_prior(&self) -> bool {
        self.prior.calls > 0
    }

    /// `attempt`'s deployment answers, at `prices`' price for it, its first byte after `ttft`.
    pub fn answered_by(&mut self, prices: &PriceTable, attempt: &Attempt, ttft: Duration) {
        let deployment = &attempt.deployment;
        self.answering = Some(Answering {
            deployment: deployment.clone(),
            span: attempt.span.clone(),
        });
        self.price = Some(prices.price(self.price_path.as_str(), Some(&deployment.id)));
        if let Some(p) = self.pending.as_mut() {
            p.provider = Some(deployment.provider_name.clone());
            p.deployment = Some(deployment.id.clone());
            p.ttft = Some(ttft);
        }
    }

    /// What `usage` costs on the answering deployment.
    fn charge(&self, usage: TokenUsage) -> NanoCredits {
        match &self.price {
            Some(price) => call_charge(price, usage),
            None => NanoCredits::ZERO,
        }
    }

    /// Settles an answer that ended as `outcome` after `attempts` attempts, billed `billed`
    /// (with the calls billed before it); `answer` (its JSON pieces) is recorded for keys that
    /// store content. Returns the request's charge.
    pub async fn answered(
        &mut self,
        outcome: Outcome,
        billed: &Billed,
        attempts: i32,
        error_class: Option<String>,
        answer: &[Bytes],
    ) -> Result<NanoCredits, ApiError> {
        let charge = NanoCredits(
            self.charge(billed.usage)
                .0
                .saturating_add(self.prior.charge.0),
        );
        let (provider, deployment, ttft) = match &self.pending {
            Some(p) => (p.provider.clone(), p.deployment.clone(), p.ttft),
            None => (None, None, None),
        };
        self.observe(billed.usage, self.charge(billed.usage));
        let info = SettleInfo {
            outcome,
            provider,
            deployment,
            usage: add_usage(self.prior.usage, billed.usage),
            estimated: billed.estimated || self.prior.estimated,
            anomaly: billed.anomaly,
            reported_completion: billed.reported_completion,
            ttft,
            attempts,
            error_class,
            charge,
            hold: self.hold,
        };
        self.commit(info, answer).await.map(|()| charge)
    }

    /// Settles a request none of whose attempts answered (charged only the calls billed before
    /// the answering one); `deployment` refused it, if one did.
    pub async fn failed(
        &mut self,
        attempts: &Attempts<'_>,
        deployment: Option<&Deployment>,
    ) -> Result<(), ApiError> {
        self.failed_as(attempts.count(), attempts.error_class(), deployment)
            .await
    }

    /// Settles a request that ended without an answer after `attempts` attempts, failing as
    /// `error_class` (charged only the calls billed before the answering one).
    pub async fn failed_as(
        &mut self,
        attempts: i32,
        error_class: Option<String>,
        deployment: Option<&Deployment>,
    ) -> Result<(), ApiError> {
        let info = SettleInfo {
            outcome: Outcome::Failed,
            provider: deployment.map(|d| d.provider_name.clone()),
            deployment: deployment.map(|d| d.id.clone()),
            usage: self.prior.usage,
            estimated: self.prior.estimated,
            anomaly: None,
            reported_completion: None,
            ttft: None,
            attempts,
            error_class,
            charge: self.prior.charge,
            hold: self.hold,
        };
        self.commit(info, &[]).await
    }

    /// The answering call's usage and charge in its span (which ends) and in the token usage
    /// histograms.
    fn observe(&self, usage: TokenUsage, charge: NanoCredits) {
        let Some(a) = &self.answering else {
            return;
        };
        let d = &a.deployment;
        let calls = d
            .instruments
            .on(self.meta.path, d.kind.as_str(), &d.upstream_model);
        calls.input_tokens.record(usage.prompt_tokens as f64);
        calls.output_tokens.record(usage.completion_tokens as f64);
        a.span.set(|| {
            vec![
                KeyValue::new(
                    "gen_ai.usage.input_tokens",
                    tokens_attr(usage.prompt_tokens),
                ),
                KeyValue::new(
                    "gen_ai.usage.output_tokens",
                    tokens_attr(usage.completion_tokens),
                ),
                KeyValue::new("lumina.cost", charge.to_string()),
            ]
        });
        a.span.end();
    }

    /// Commits the settlement (releasing the request's hold) and waits for it; for keys that
    /// store content, the prompt and `answer` go in the same commit.
    async fn commit(&mut self, info: SettleInfo, answer: &[Bytes]) -> Result<(), ApiError> {
        self.pending = None;
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
        instruments::cost(self.meta.path, info.charge.0);
        let event = self.meta.settled(&info, &self.price_version);
        commit_settlement(&self.log, &self.credits, &self.meta, &event, info.charge)
            .await
            .map_err(|e| ApiError::Unavailable(format!("The request could not be recorded: {e}")))
    }
}

/// A token count as a span attribute.
fn tokens_attr(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Commits a `RequestSettled` and tells the credit book, which from then on counts the
/// request's charge instead of its hold.
async fn commit_settlement(
    log: &EventLog,
    credits: &CreditBook,
    meta: &RequestMeta,
    event: &Event,
    charge: NanoCredits,
) -> Result<(), LogError> {
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
