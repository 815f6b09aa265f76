//! Model Fusion: one request answered by a panel of routes in parallel, their answers compared
//! claim by claim (`analysis`, and a judge when one is configured, `judge`), and one fused
//! answer written by a synthesizer — streamed, or returned whole. It is one request to the
//! ledger: one hold (the sum of every call's, capped by `max_cost`), one `RequestSettled` whose
//! charge is the sum of the calls' charges, every call an `UpstreamAttempted` tagged with its
//! role, and `FusionPanelCompleted` with the members and the analysis.
//!
//! Members run with their own fallback, each bounded by `member_deadline_ms`: synthesis starts
//! once every member answered, failed or was cancelled at the deadline; it needs `quorum`
//! answers (else 502 naming each member's error, only completed calls charged). A member that
//! fails or is cancelled costs only what its upstream reported (nothing, as it returned no
//! answer).

pub mod analysis;
pub mod judge;

use std::sync::Arc;
use std::sync::atomic::AtomicI32;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use lumina_schemas::NanoCredits;
use lumina_schemas::payloads::{FusionPanelCompleted, Panelist};
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, watch};

use crate::api::error::ApiError;
use crate::config::FusionConfig;
use crate::engine::attempt::{Attempts, Tried};
use crate::engine::fusion::analysis::Analysis;
use crate::engine::fusion::judge::{JUDGE_MAX_TOKENS, Verdict};
use crate::engine::settle::{AnswerText, Settlement, add_usage, bill, call_charge};
use crate::engine::stream::{EndReport, Pump};
use crate::engine::{
    Admitted, Answer, Call, PanelPlan, Route, StreamRenderer, Streaming, admit, first_chunk,
    opened, whole,
};
use crate::metering::events::{Outcome, RequestMeta, Role};
use crate::metering::limits::LimitStatus;
use crate::metering::usage::{self, Billed};
use crate::providers::UpstreamCall;
use crate::routing::catalog::RoutePath;
use crate::routing::table::{Deployment, RouteTable};
use crate::state::AppState;
use crate::wire::{self, ChatRequest, MAX_PANEL, RawObject, TokenUsage, UsageOut};

/// Tokens of instructions and framing a judge or synthesizer prompt adds to what it quotes.
const FRAMING_TOKENS: u64 = 512;
/// Longest answer of one member quoted to the judge and synthesizer, in characters.
const QUOTED_CHARS: usize = 32 * 1024;

/// A panel seat, the judge or the synthesizer: a path (its deployments in the policy's order,
/// falling back along them) or one deployment.
#[derive(Clone)]
pub struct Member {
    name: String,
    path: RoutePath,
    deployment: Option<Arc<Deployment>>,
}

impl Member {
    /// `fast`, `balanced`, `reasoning`, or a deployment `provider/model` of one of them.
    fn parse(name: &str, routes: &RouteTable) -> Result<Member, String> {
        if let Some(path) = RoutePath::parse_tier(name) {
            return Ok(Member {
                name: name.to_string(),
                path,
                deployment: None,
            });
        }
        match routes.find(name) {
            Some((path, d)) => Ok(Member {
                name: name.to_string(),
                path,
                deployment: Some(d),
            }),
            None => Err(format!(
                "'{name}' is neither a path (fast, balanced, reasoning) nor a configured deployment (provider/model)"
            )),
        }
    }

    fn deployments(&self, state: &AppState) -> Arc<[Arc<Deployment>]> {
        match &self.deployment {
            Some(d) => Arc::from(vec![d.clone()]),
            None => state.routes.deployments(&state.routes.routing(), self.path),
        }
    }
}

/// `[fusion]`, resolved against the route table at start.
pub struct Fusion {
    /// Whether `lumina-fusion` is offered.
    pub enabled: bool,
    panel: Vec<Member>,
    judge: Option<Member>,
    synthesizer: Member,
    quorum: Option<usize>,
    member_deadline: Duration,
    max_cost: Option<NanoCredits>,
}

impl Fusion {
    /// The configuration checked against `routes`; errors name the key.
    pub fn resolve(config: &FusionConfig, routes: &RouteTable) -> Result<Fusion, String> {
        if !(2..=MAX_PANEL).contains(&config.panel.len()) {
            return Err(format!(
                "fusion.panel: a panel has 2 to {MAX_PANEL} members (got {})",
                config.panel.len()
            ));
        }
        let panel = config
            .panel
            .iter()
            .enumerate()
            .map(|(i, m)| Member::parse(m, routes).map_err(|e| format!("fusion.panel[{i}]: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let judge = match &config.judge {
            Some(j) => Some(Member::parse(j, routes).map_err(|e| format!("fusion.judge: {e}"))?),
            None => None,
        };
        let synthesizer = Member::parse(&config.synthesizer, routes)
            .map_err(|e| format!("fusion.synthesizer: {e}"))?;
        if let Some(q) = config.quorum
            && !(1..=panel.len()).contains(&q)
        {
            return Err(format!(
                "fusion.quorum: between 1 and the panel's {} members (got {q})",
                panel.len()
            ));
        }
        if config.member_deadline_ms == 0 {
            return Err("fusion.member_deadline_ms must be positive".into());
        }
        let max_cost = match &config.max_cost {
            Some(text) => Some(
                NanoCredits::parse_credits(text)
                    .ok()
                    .filter(|c| c.is_positive())
                    .ok_or_else(|| {
                        format!("fusion.max_cost: `{text}` is not a positive number of credits")
                    })?,
            ),
            None => None,
        };
        Ok(Fusion {
            enabled: config.enabled,
            panel,
            judge,
            synthesizer,
            quorum: config.quorum,
            member_deadline: Duration::from_millis(config.member_deadline_ms),
            max_cost,
        })
    }
}

/// One request's Fusion settings: the configuration with the request's overrides.
struct Settings {
    panel: Vec<Member>,
    quorum: usize,
    deadline: Duration,
    max_cost: Option<NanoCredits>,
}

fn settings(state: &AppState, request: &ChatRequest<'_>) -> Result<Settings, ApiError> {
    let fusion = &state.fusion;
    if request.n > 1 {
        return Err(ApiError::invalid(
            "'n' must be 1 for lumina-fusion: the panel writes one fused answer.",
            Some("n"),
        ));
    }
    if !request.tools.is_empty() {
        return Err(ApiError::invalid(
            "lumina-fusion fuses text answers and does not take 'tools'; send tool calls to another model.",
            Some("tools"),
        ));
    }
    let options = request.fusion.clone().unwrap_or_default();
    let panel = match &options.panel {
        Some(names) => names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                Member::parse(name, &state.routes).map_err(|e| {
                    ApiError::invalid(
                        format!("Invalid 'lumina.fusion.panel[{i}]': {e}."),
                        Some(&format!("lumina.fusion.panel[{i}]")),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?,
        None => fusion.panel.clone(),
    };
    let quorum = options
        .quorum
        .or(fusion.quorum)
        .unwrap_or(panel.len() / 2 + 1);
    if quorum > panel.len() {
        return Err(ApiError::invalid(
            format!(
                "'lumina.fusion.quorum' is {quorum}, more than the panel's {} members.",
                panel.len()
            ),
            Some("lumina.fusion.quorum"),
        ));
    }
    Ok(Settings {
        panel: named_uniquely(panel),
        quorum,
        deadline: options
            .member_deadline_ms
            .map_or(fusion.member_deadline, Duration::from_millis),
        max_cost: options.max_cost.or(fusion.max_cost),
    })
}

/// Members named `fast`, `fast#2`… when a name repeats, so every answer has its own name.
fn named_uniquely(mut panel: Vec<Member>) -> Vec<Member> {
    for i in 0..panel.len() {
        let seen = panel[..i]
            .iter()
            .filter(|m| m.name.split('#').next() == Some(panel[i].name.as_str()))
            .count();
        if seen > 0 {
            panel[i].name = format!("{}#{}", panel[i].name, seen + 1);
        }
    }
    panel
}

/// The client's request without `stream`, `stream_options` and `lumina`: what each member
/// answers.
fn member_body(request: &ChatRequest<'_>) -> Bytes {
    let mut out = Vec::with_capacity(256);
    out.push(b'{');
    let mut first = true;
    for (key, value) in &request.fields.0 {
        if matches!(key.as_str(), "stream" | "stream_options" | "lumina") {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        out.extend_from_slice(wire::json_string(key.as_str()).as_bytes());
        out.push(b':');
        out.extend_from_slice(value.get().as_bytes());
    }
    out.push(b'}');
    Bytes::from(out)
}

/// The conversation as text, `role: text` per message, for the judge.
fn conversation_text(request: &ChatRequest<'_>) -> String {
    let mut out = String::new();
    for m in &request.messages {
        out.push_str(m.role.as_str());
        out.push_str(": ");
        if let Some(c) = &m.content {
            c.for_each_text(|t| out.push_str(t));
        }
        out.push('\n');
    }
    out
}

/// The assistant text of a chat completion.
fn answer_text(body: &[u8]) -> String {
    usage::completion_text([body])
}

fn quoted(text: &str) -> &str {
    match text.char_indices().nth(QUOTED_CHARS) {
        Some((i, _)) => &text[..i],
        None => text,
    }
}

/// How a call of the panel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Status {
    Completed,
    Failed,
    Cancelled,
}

/// What one member did, as the answer reports it.
struct MemberResult {
    name: String,
    path: RoutePath,
    deployment: Option<String>,
    status: Status,
    latency: Duration,
    usage: TokenUsage,
    cost: NanoCredits,
    answer: Option<String>,
    error: Option<String>,
}

/// A credit amount as a JSON number, written from its exact decimal.
fn credits(c: NanoCredits) -> Box<RawValue> {
    RawValue::from_string(c.to_string())
        .unwrap_or_else(|_| RawValue::from_string("0".into()).unwrap_or_default())
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[derive(Serialize)]
struct PanelEntry<'a> {
    member: &'a str,
    deployment: Option<&'a str>,
    path: &'static str,
    status: Status,
    latency_ms: u64,
    usage: UsageOut,
    cost: Box<RawValue>,
    answer: Option<&'a str>,
    error: Option<&'a str>,
}

/// One call (judge or synthesizer) as the answer reports it.
#[derive(Clone, Serialize)]
struct CallReport {
    deployment: Option<String>,
    path: &'static str,
    latency_ms: u64,
    usage: UsageOut,
    cost: Box<RawValue>,
}

#[derive(Clone, Serialize)]
struct JudgeReport {
    /// `valid`, `invalid` (the answer is not a verdict; Lumina's analysis stands) or `failed`.
    status: &'static str,
    #[serde(flatten)]
    call: Option<CallReport>,
    verdict: Option<Verdict>,
    error: Option<String>,
}

#[derive(Serialize)]
struct FusionReport<'a> {
    panel: Vec<PanelEntry<'a>>,
    analysis: &'a Analysis,
    agreement: f64,
    judge: Option<&'a JudgeReport>,
    synthesizer: CallReport,
}

#[derive(Serialize)]
struct Report<'a> {
    fusion: FusionReport<'a>,
}

/// The panel's work before synthesis, kept for the answer's report.
struct Deliberation {
    members: Vec<MemberResult>,
    analysis: Analysis,
    judge: Option<JudgeReport>,
}

impl Deliberation {
    /// The `lumina` object: the panel, the analysis, the judge and the synthesizer's `call`.
    fn report(&self, synthesizer: CallReport) -> Option<Bytes> {
        let panel = self
            .members
            .iter()
            .map(|m| PanelEntry {
                member: &m.name,
                deployment: m.deployment.as_deref(),
                path: m.path.as_str(),
                status: m.status,
                latency_ms: millis(m.latency),
                usage: UsageOut::from(m.usage),
                cost: credits(m.cost),
                answer: m.answer.as_deref(),
                error: m.error.as_deref(),
            })
            .collect();
        let report = Report {
            fusion: FusionReport {
                panel,
                analysis: &self.analysis,
                agreement: self.analysis.agreement,
                judge: self.judge.as_ref(),
                synthesizer,
            },
        };
        serde_json::to_vec(&report).ok().map(Bytes::from)
    }

    /// `FusionPanelCompleted`, once `synthesizer` answers.
    fn event(&self, synthesizer: &Deployment) -> FusionPanelCompleted {
        FusionPanelCompleted {
            panelists: self
                .members
                .iter()
                .map(|m| Panelist {
                    path: m.path.as_str().into(),
                    deployment: m.deployment.clone().unwrap_or_default(),
                    outcome: match m.status {
                        Status::Completed => "completed",
                        Status::Failed => "failed",
                        Status::Cancelled => "cancelled",
                    }
                    .into(),
                    charge_nano: m.cost.0,
                    completion_tokens: i64::try_from(m.usage.completion_tokens).unwrap_or(i64::MAX),
                    latency_us: i64::try_from(m.latency.as_micros()).unwrap_or(i64::MAX),
                })
                .collect(),
            synthesizer_deployment: synthesizer.id.clone(),
            agreement: self.analysis.agreement,
            disagreements: self
                .analysis
                .contradictions
                .iter()
                .map(analysis::Contradiction::summary)
                .collect(),
        }
    }
}

/// What a call of the request bills, and a `CallReport` of it.
struct Billing {
    billed: Billed,
    charge: NanoCredits,
}

/// Bills one answered call of `path` on `d`.
async fn bill_call(
    state: &AppState,
    path: RoutePath,
    d: &Deployment,
    completion: &crate::providers::Completion,
    allowance: u64,
    body: &Bytes,
) -> Billing {
    let billed = bill(completion.usage, allowance, body, || {
        AnswerText::Json(completion.body.clone())
    })
    .await;
    let price = state.prices.price(path.as_str(), Some(&d.id));
    let charge = call_charge(&price, billed.usage);
    Billing { billed, charge }
}

/// Everything one request's calls share.
struct Context<'a> {
    state: &'a AppState,
    meta: &'a RequestMeta,
    numbers: &'a AtomicI32,
}

/// When a member's call is given up.
struct Cutoff {
    /// The member deadline.
    deadline: tokio::time::Instant,
    /// Says `true` once the panel can no longer reach its quorum.
    stop: watch::Receiver<bool>,
}

/// Asks one member on `deployments`, until it answers or `cutoff`.
async fn ask(
    cx: &Context<'_>,
    member: &Member,
    deployments: &[Arc<Deployment>],
    request: &ChatRequest<'_>,
    body: &Bytes,
    call: &Call<'_>,
    cutoff: Cutoff,
) -> (MemberResult, Option<Billing>) {
    let Cutoff { deadline, mut stop } = cutoff;
    let started = Instant::now();
    let allowance = cx
        .state
        .prices
        .output_allowance(member.path.as_str(), request.max_tokens, 1);
    let mut attempts = Attempts::in_role(cx.meta, &cx.state.log, Role::Panel, cx.numbers);
    let mut result = MemberResult {
        name: member.name.clone(),
        path: member.path,
        deployment: None,
        status: Status::Failed,
        latency: Duration::ZERO,
        usage: TokenUsage::default(),
        cost: NanoCredits::ZERO,
        answer: None,
        error: None,
    };
    let tried = {
        let run = attempts.run(
            deployments,
            |_| {},
            |d, traceparent| {
                d.provider.complete(UpstreamCall {
                    request,
                    upstream_model: &d.upstream_model,
                    request_id: cx.meta.request_id.as_str(),
                    anthropic: call.anthropic.as_ref(),
                    traceparent,
                })
            },
        );
        tokio::select! {
            tried = run => Some(tried),
            () = tokio::time::sleep_until(deadline) => None,
            _ = stop.wait_for(|s| *s) => None,
        }
    };
    let mut billing = None;
    match tried {
        Some(Tried::Answered {
            attempt,
            value,
            probe,
        }) => {
            attempts.answered(&attempt, probe).await;
            let b = bill_call(
                cx.state,
                member.path,
                &attempt.deployment,
                &value,
                allowance,
                body,
            )
            .await;
            result.status = Status::Completed;
            result.deployment = Some(attempt.deployment.id.clone());
            result.usage = b.billed.usage;
            result.cost = b.charge;
            result.answer = Some(answer_text(&value.body));
            billing = Some(b);
        }
        Some(Tried::Refused(d, e)) => {
            result.deployment = Some(d.id.clone());
            result.error = Some(match e.status {
                Some(s) => format!("{}: {} (HTTP {s}): {}", d.id, e.class.as_str(), e.message),
                None => format!("{}: {}: {}", d.id, e.class.as_str(), e.message),
            });
        }
        Some(Tried::Exhausted) => {
            result.deployment = attempts.last_failed().map(str::to_string);
            result.error = Some(attempts.failure_summary());
        }
        None => {
            let why = if *stop.borrow() {
                "cancelled: the panel could no longer reach its quorum".to_string()
            } else {
                format!(
                    "cancelled after member_deadline_ms ({} ms)",
                    millis(started.elapsed())
                )
            };
            attempts.abandon(&why).await;
            result.status = Status::Cancelled;
            result.error = Some(why);
        }
    }
    result.latency = started.elapsed();
    (result, billing)
}

/// The members' deployment lists, each led where possible by a provider no earlier member is
/// led by, so the panel's answers come from distinct providers; the rest keep their order.
fn spread(lists: impl Iterator<Item = Deployments>) -> Vec<Vec<Arc<Deployment>>> {
    let mut leads: Vec<String> = Vec::new();
    lists
        .map(|list| {
            let mut list = list.to_vec();
            if let Some(i) = list.iter().position(|d| !leads.contains(&d.provider_name)) {
                let lead = list.remove(i);
                list.insert(0, lead);
            }
            if let Some(first) = list.first() {
                leads.push(first.provider_name.clone());
            }
            list
        })
        .collect()
}

/// Runs the panel, then the judge: every completed call billed into `settlement` as it ends.
async fn deliberate(
    cx: &Context<'_>,
    settings: &Settings,
    call: &Call<'_>,
    settlement: &mut Settlement,
) -> Result<Deliberation, ApiError> {
    let body = member_body(call.request);
    let request = ChatRequest::parse(&body)?;
    let deadline = tokio::time::Instant::now() + settings.deadline;
    let (stop_tx, stop_rx) = watch::channel(false);
    let lists = spread(settings.panel.iter().map(|m| m.deployments(cx.state)));
    let mut pending: FuturesUnordered<_> = settings
        .panel
        .iter()
        .zip(&lists)
        .enumerate()
        .map(|(i, (m, list))| {
            let cutoff = Cutoff {
                deadline,
                stop: stop_rx.clone(),
            };
            let (request, body) = (&request, &body);
            async move { (i, ask(cx, m, list, request, body, call, cutoff).await) }
        })
        .collect();
    let mut results: Vec<Option<MemberResult>> = settings.panel.iter().map(|_| None).collect();
    let mut answered = 0;
    let mut left = settings.panel.len();
    while let Some((i, (result, billing))) = pending.next().await {
        left -= 1;
        if let Some(b) = billing {
            settlement.add_call(&b.billed, b.charge);
            answered += 1;
        }
        results[i] = Some(result);
        if answered + left < settings.quorum {
            let _ = stop_tx.send(true);
        }
    }
    drop(pending);
    let members: Vec<MemberResult> = results.into_iter().flatten().collect();
    if answered < settings.quorum {
        let errors: Vec<String> = members
            .iter()
            .filter(|m| m.status != Status::Completed)
            .map(|m| format!("{}: {}", m.name, m.error.as_deref().unwrap_or("no answer")))
            .collect();
        return Err(ApiError::UpstreamFailed {
            status: 502,
            message: format!(
                "The Fusion panel missed its quorum: {answered} of {} members answered, {} needed. {}",
                members.len(),
                settings.quorum,
                errors.join("; ")
            ),
            retry_after: None,
        });
    }
    let answering: Vec<(&str, &str)> = members
        .iter()
        .filter_map(|m| Some((m.name.as_str(), quoted(m.answer.as_deref()?))))
        .collect();
    let names: Vec<&str> = answering.iter().map(|(n, _)| *n).collect();
    let answers: Vec<&str> = answering.iter().map(|(_, a)| *a).collect();
    let analysis = analysis::analyse(&names, &answers);
    let judge = match &cx.state.fusion.judge {
        Some(j) => Some(judged(cx, j, call, &names, &answers, settlement).await),
        None => None,
    };
    Ok(Deliberation {
        members,
        analysis,
        judge,
    })
}

/// Asks the judge to compare `answers`, and validates its verdict.
async fn judged(
    cx: &Context<'_>,
    judge: &Member,
    call: &Call<'_>,
    names: &[&str],
    answers: &[&str],
    settlement: &mut Settlement,
) -> JudgeReport {
    let body = Bytes::from(judge::request_body(
        &conversation_text(call.request),
        names,
        answers,
    ));
    let failed = |error: String| JudgeReport {
        status: "failed",
        call: None,
        verdict: None,
        error: Some(error),
    };
    let request = match ChatRequest::parse(&body) {
        Ok(r) => r,
        Err(e) => return failed(e.message),
    };
    let started = Instant::now();
    let deployments = judge.deployments(cx.state);
    let mut attempts = Attempts::in_role(cx.meta, &cx.state.log, Role::Judge, cx.numbers);
    let tried = attempts
        .run(
            &deployments,
            |_| {},
            |d, traceparent| {
                d.provider.complete(UpstreamCall {
                    request: &request,
                    upstream_model: &d.upstream_model,
                    request_id: cx.meta.request_id.as_str(),
                    anthropic: None,
                    traceparent,
                })
            },
        )
        .await;
    match tried {
        Tried::Answered {
            attempt,
            value,
            probe,
        } => {
            attempts.answered(&attempt, probe).await;
            let b = bill_call(
                cx.state,
                judge.path,
                &attempt.deployment,
                &value,
                JUDGE_MAX_TOKENS,
                &body,
            )
            .await;
            settlement.add_call(&b.billed, b.charge);
            let report = CallReport {
                deployment: Some(attempt.deployment.id.clone()),
                path: judge.path.as_str(),
                latency_ms: millis(started.elapsed()),
                usage: UsageOut::from(b.billed.usage),
                cost: credits(b.charge),
            };
            match judge::verdict(&answer_text(&value.body), names) {
                Ok(v) => JudgeReport {
                    status: "valid",
                    call: Some(report),
                    verdict: Some(v),
                    error: None,
                },
                Err(e) => JudgeReport {
                    status: "invalid",
                    call: Some(report),
                    verdict: None,
                    error: Some(e),
                },
            }
        }
        Tried::Refused(d, e) => failed(format!("{}: {}", d.id, e.message)),
        Tried::Exhausted => failed(attempts.failure_summary()),
    }
}

/// The synthesizer's request: its instructions, the client's conversation, and the panel's
/// answers with the analysis.
fn synthesis_body(
    request: &ChatRequest<'_>,
    deliberation: &Deliberation,
    stream: bool,
) -> Result<Bytes, ApiError> {
    const INSTRUCTIONS: &str = "You are the synthesizer of a panel of models that each answered the conversation that follows. Write the single best answer to the user's last message: keep what the panel agrees on, resolve its contradictions (say which side is right, or that it is uncertain), and include the unique points that are sound. Answer the user directly and do not mention the panel.";
    let mut panel = String::from("The panel's answers:\n");
    for m in &deliberation.members {
        if let Some(a) = &m.answer {
            panel.push_str(&format!(
                "<answer member=\"{}\">\n{}\n</answer>\n",
                m.name,
                quoted(a)
            ));
        }
    }
    let a = &deliberation.analysis;
    panel.push_str(&format!("Agreement: {:.2}.\n", a.agreement));
    for c in &a.contradictions {
        panel.push_str(&format!("Contradiction: {}\n", c.summary()));
    }
    if let Some(v) = deliberation.judge.as_ref().and_then(|j| j.verdict.as_ref())
        && let Ok(text) = serde_json::to_string(v)
    {
        panel.push_str(&format!("The judge's verdict: {text}\n"));
    }
    panel.push_str("Write the fused answer to my last message now.");
    let messages: Vec<&RawValue> = request
        .fields
        .get("messages")
        .and_then(|raw| serde_json::from_str(raw.get()).ok())
        .unwrap_or_default();
    let mut body = serde_json::json!({
        "model": "synthesizer",
        "messages": [],
        "stream": stream,
    });
    let mut all: Vec<Box<RawValue>> = Vec::with_capacity(messages.len() + 2);
    let system = serde_json::json!({"role": "system", "content": INSTRUCTIONS}).to_string();
    let user = serde_json::json!({"role": "user", "content": panel}).to_string();
    for text in std::iter::once(system)
        .chain(messages.iter().map(|m| m.get().to_string()))
        .chain(std::iter::once(user))
    {
        all.push(RawValue::from_string(text).map_err(|e| ApiError::Internal(e.to_string()))?);
    }
    body["messages"] = serde_json::to_value(&all).map_err(|e| ApiError::Internal(e.to_string()))?;
    if let Some(m) = request.max_tokens {
        body["max_tokens"] = m.into();
    }
    if stream {
        body["stream_options"] = serde_json::json!({"include_usage": true});
    }
    serde_json::to_vec(&body)
        .map(Bytes::from)
        .map_err(|e| ApiError::Internal(e.to_string()))
}

/// A call's deployments in attempt order.
type Deployments = Arc<[Arc<Deployment>]>;

/// The hold, candidates and token count of a Fusion request, before any call; 402 when
/// `max_cost` cannot cover the hold.
fn plan(
    state: &AppState,
    settings: &Settings,
    request: &ChatRequest<'_>,
) -> Result<(PanelPlan, Vec<Deployments>), ApiError> {
    let prices = &state.prices;
    let prompt = usage::quick_prompt_estimate(request);
    let mut hold = NanoCredits::ZERO;
    let mut tokens = 0u64;
    let mut quoted_tokens = 0u64;
    let mut candidates: Vec<Arc<Deployment>> = Vec::new();
    let mut lists = Vec::new();
    let mut add = |member: &Member, prompt: u64, max_tokens: Option<u64>| -> u64 {
        let deployments = member.deployments(state);
        let ids: Vec<&str> = deployments.iter().map(|d| d.id.as_str()).collect();
        let path = member.path.as_str();
        let h = prices.hold(path, &ids, prompt, max_tokens, 1);
        hold = NanoCredits(hold.0.saturating_add(h.0));
        let allowance = prices.output_allowance(path, max_tokens, 1);
        tokens = tokens.saturating_add(prompt).saturating_add(allowance);
        for d in deployments.iter() {
            if !candidates.iter().any(|c| c.id == d.id) {
                candidates.push(d.clone());
            }
        }
        lists.push(deployments);
        allowance
    };
    for m in &settings.panel {
        quoted_tokens = quoted_tokens.saturating_add(add(m, prompt, request.max_tokens));
    }
    let fusion = &state.fusion;
    let quoting = prompt
        .saturating_add(quoted_tokens)
        .saturating_add(FRAMING_TOKENS);
    let judge_tokens = match &fusion.judge {
        Some(j) => add(j, quoting, Some(JUDGE_MAX_TOKENS)),
        None => 0,
    };
    add(
        &fusion.synthesizer,
        quoting.saturating_add(judge_tokens),
        request.max_tokens,
    );
    if let Some(cap) = settings.max_cost
        && hold.0 > cap.0
    {
        return Err(ApiError::OverCostCap { cap, needed: hold });
    }
    Ok((
        PanelPlan {
            hold,
            candidates,
            tokens,
        },
        lists,
    ))
}

/// Settles a request whose panel missed its quorum (`e`), charged the calls that completed.
async fn missed(settlement: &mut Settlement, numbers: &AtomicI32, e: ApiError) -> ApiError {
    let attempts = numbers.load(std::sync::atomic::Ordering::Relaxed);
    match settlement
        .failed_as(attempts, Some("quorum_missed".into()), None)
        .await
    {
        Ok(()) => e,
        Err(not_recorded) => not_recorded,
    }
}

/// The request admitted with its panel's hold, and the deployments of the synthesizer.
async fn admitted(
    state: &AppState,
    call: &Call<'_>,
) -> Result<(Settings, Admitted, Arc<[Arc<Deployment>]>), ApiError> {
    let settings = settings(state, call.request)?;
    let (panel, mut lists) = plan(state, &settings, call.request)?;
    let synthesizer = lists
        .pop()
        .ok_or_else(|| ApiError::Internal("a Fusion plan without a synthesizer".into()))?;
    let admitted = admit(state, call, Some(panel)).await?;
    Ok((settings, admitted, synthesizer))
}

/// `body` (a chat completion) with the `lumina` report as a member.
fn with_report(body: &[u8], report: &[u8]) -> Result<Bytes, ApiError> {
    let members: RawObject<'_> = serde_json::from_slice(body)
        .map_err(|e| ApiError::Internal(format!("the synthesis is not an object: {e}")))?;
    let mut out = Vec::with_capacity(body.len() + report.len() + 16);
    out.push(b'{');
    for (key, value) in &members.0 {
        if key.as_str() == "lumina" {
            continue;
        }
        out.extend_from_slice(wire::json_string(key.as_str()).as_bytes());
        out.push(b':');
        out.extend_from_slice(value.get().as_bytes());
        out.push(b',');
    }
    out.extend_from_slice(b"\"lumina\":");
    out.extend_from_slice(report);
    out.push(b'}');
    Ok(Bytes::from(out))
}

/// A Fusion request admitted and deliberated, its synthesis still to write.
struct Deliberated {
    meta: Arc<RequestMeta>,
    policy_version: i64,
    limits: LimitStatus,
    settlement: Settlement,
    /// Numbers the request's calls, panel to synthesizer.
    numbers: AtomicI32,
    deliberation: Deliberation,
    /// The synthesizer's deployments, in attempt order.
    deployments: Deployments,
    /// The synthesizer's request.
    body: Bytes,
}

/// Admits a Fusion request, runs its panel and judge, and writes the synthesizer's request
/// (`stream`ed or not); a missed quorum is settled and answered as an error.
async fn deliberated(
    state: &AppState,
    call: &Call<'_>,
    stream: bool,
) -> Result<Deliberated, ApiError> {
    let (settings, admitted, deployments) = admitted(state, call).await?;
    let Admitted {
        meta,
        policy_version,
        limits,
        mut settlement,
        ..
    } = admitted;
    let numbers = AtomicI32::new(0);
    let cx = Context {
        state,
        meta: &meta,
        numbers: &numbers,
    };
    let deliberation = match deliberate(&cx, &settings, call, &mut settlement).await {
        Ok(d) => d,
        Err(e) => return Err(missed(&mut settlement, &numbers, e).await),
    };
    let body = synthesis_body(call.request, &deliberation, stream)?;
    settlement.priced_as(state.fusion.synthesizer.path);
    Ok(Deliberated {
        meta,
        policy_version,
        limits,
        settlement,
        numbers,
        deliberation,
        deployments,
        body,
    })
}

/// A Fusion request answered whole.
pub async fn complete(state: &AppState, call: Call<'_>) -> Result<Answer, ApiError> {
    let Deliberated {
        meta,
        policy_version,
        limits,
        mut settlement,
        numbers,
        deliberation,
        deployments,
        body,
    } = deliberated(state, &call, false).await?;
    let synthesizer = &state.fusion.synthesizer;
    let request = ChatRequest::parse(&body)?;
    let started = Instant::now();
    let mut attempts = Attempts::in_role(&meta, &state.log, Role::Synthesizer, &numbers);
    let tried = attempts
        .run(
            &deployments,
            |n| settlement.attempt_started(n),
            |d, traceparent| {
                d.provider.complete(UpstreamCall {
                    request: &request,
                    upstream_model: &d.upstream_model,
                    request_id: meta.request_id.as_str(),
                    anthropic: None,
                    traceparent,
                })
            },
        )
        .await;
    let (attempt, completion) = whole(state, tried, &attempts, &mut settlement).await?;
    let allowance = state
        .prices
        .output_allowance(synthesizer.path.as_str(), request.max_tokens, 1);
    let billed = bill(completion.usage, allowance, &body, || {
        AnswerText::Json(completion.body.clone())
    })
    .await;
    let (prior_usage, prior_charge) = settlement.prior();
    let charge = settlement
        .answered(
            Outcome::Completed,
            &billed,
            attempts.count(),
            None,
            std::slice::from_ref(&completion.body),
        )
        .await?;
    put_panel_event(state, &meta, &deliberation, &attempt.deployment).await;
    let report = deliberation
        .report(CallReport {
            deployment: Some(attempt.deployment.id.clone()),
            path: synthesizer.path.as_str(),
            latency_ms: millis(started.elapsed()),
            usage: UsageOut::from(billed.usage),
            cost: credits(NanoCredits(charge.0 - prior_charge.0)),
        })
        .ok_or_else(|| ApiError::Internal("the Fusion report did not serialise".into()))?;
    Ok(Answer {
        route: Route {
            meta: meta.clone(),
            deployment: attempt.deployment,
            attempts: attempts.count(),
            limits,
            policy_version,
        },
        body: with_report(&completion.body, &report)?,
        usage: add_usage(prior_usage, billed.usage),
        charge,
        replace_usage: true,
    })
}

/// Queues `FusionPanelCompleted`.
async fn put_panel_event(
    state: &AppState,
    meta: &RequestMeta,
    deliberation: &Deliberation,
    synthesizer: &Deployment,
) {
    let event = meta.fusion(deliberation.event(synthesizer));
    if let Err(e) = state.log.append_event_nowait(&event).await {
        tracing::error!(error = %e, "could not record a Fusion panel");
    }
}

/// A Fusion request streamed: the panel and judge answer whole, then the synthesis streams
/// through `renderer`, its end carrying the report.
pub async fn stream(
    state: &AppState,
    call: Call<'_>,
    renderer: Box<dyn StreamRenderer>,
) -> Result<Streaming, ApiError> {
    let Deliberated {
        meta,
        policy_version,
        limits,
        mut settlement,
        numbers,
        deliberation,
        deployments,
        body,
    } = deliberated(state, &call, true).await?;
    let synthesizer = &state.fusion.synthesizer;
    let request = ChatRequest::parse(&body)?;
    let mut attempts = Attempts::in_role(&meta, &state.log, Role::Synthesizer, &numbers);
    let tried = attempts
        .run(
            &deployments,
            |n| settlement.attempt_started(n),
            |d, traceparent| {
                first_chunk(
                    d,
                    UpstreamCall {
                        request: &request,
                        upstream_model: &d.upstream_model,
                        request_id: meta.request_id.as_str(),
                        anthropic: None,
                        traceparent,
                    },
                )
            },
        )
        .await;
    let (attempt, (chunks, first), ttfb) = opened(state, tried, &attempts, &mut settlement).await?;
    put_panel_event(state, &meta, &deliberation, &attempt.deployment).await;
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let route = Route {
        meta: meta.clone(),
        deployment: attempt.deployment.clone(),
        attempts: attempt.number,
        limits,
        policy_version,
    };
    let synthesizer_path = synthesizer.path;
    let synthesizer_deployment = attempt.deployment.id.clone();
    let started = attempt.started;
    let report: EndReport = Box::new(move |usage, charge| {
        deliberation.report(CallReport {
            deployment: Some(synthesizer_deployment),
            path: synthesizer_path.as_str(),
            latency_ms: millis(started.elapsed()),
            usage: UsageOut::from(usage),
            cost: credits(charge),
        })
    });
    let allowance = state
        .prices
        .output_allowance(synthesizer_path.as_str(), request.max_tokens, 1);
    let pump = Pump {
        meta: meta.clone(),
        log: state.log.clone(),
        attempt,
        ttfb,
        body,
        allowance,
        settlement,
        renderer,
        report: Some(report),
        tx,
    };
    tokio::spawn(pump.run(chunks, first));
    Ok(Streaming { route, body: rx })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_members_get_their_own_names() {
        let m = |name: &str| Member {
            name: name.into(),
            path: RoutePath::Fast,
            deployment: None,
        };
        let named = named_uniquely(vec![m("fast"), m("balanced"), m("fast"), m("fast")]);
        let names: Vec<&str> = named.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["fast", "balanced", "fast#2", "fast#3"]);
    }

    #[test]
    fn the_panel_is_spread_over_distinct_providers_where_it_can_be() {
        let d = |provider: &str| {
            Arc::new(Deployment {
                id: format!("{provider}/m"),
                provider_name: provider.into(),
                kind: crate::config::ProviderKind::Simulated,
                upstream_model: "m".into(),
                provider: Arc::new(crate::providers::simulated::Simulated::new(
                    Default::default(),
                )),
                breaker: crate::providers::breaker::Breaker::new(Default::default()),
                instruments: Default::default(),
            })
        };
        let (a, b, c) = (d("a"), d("b"), d("c"));
        let lists: Vec<Deployments> = vec![
            Arc::from(vec![a.clone(), b.clone()]),
            Arc::from(vec![a.clone(), b.clone()]),
            Arc::from(vec![a.clone(), c.clone()]),
            Arc::from(vec![a.clone()]),
        ];
        let spread = spread(lists.into_iter());
        let leads: Vec<&str> = spread.iter().map(|l| l[0].provider_name.as_str()).collect();
        assert_eq!(leads, ["a", "b", "c", "a"]);
        assert_eq!(spread[1][1].provider_name, "a", "the fallback stays behind");
    }

    #[test]
    fn the_report_goes_into_the_completion_once() {
        let body = br#"{"id":"x","lumina":{"old":1},"choices":[]}"#;
        let out = with_report(body, br#"{"fusion":{}}"#).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["lumina"], serde_json::json!({"fusion": {}}));
        assert_eq!(v["id"], "x");
    }

    #[test]
    fn members_answer_the_request_without_stream_or_lumina_options() {
        let body = br#"{"model":"lumina-fusion","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}],"lumina":{"fusion":{"quorum":1}},"temperature":0.2}"#;
        let request = ChatRequest::parse(body).unwrap();
        let member = member_body(&request);
        let v: serde_json::Value = serde_json::from_slice(&member).unwrap();
        assert!(v.get("stream").is_none() && v.get("lumina").is_none());
        assert_eq!(v["temperature"], 0.2);
        assert_eq!(v["messages"][0]["content"], "hi");
    }
}
