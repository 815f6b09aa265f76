//! Payload types, one per event type, field for field as in `avro/<type>/v<current>.avsc`.
//!
//! Field order matters: the Avro serializer writes fields in schema order, so each struct lists
//! its fields exactly as its current schema does. Optional fields are `Option`, matching
//! `["null", T]` unions.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A customer account was opened with its default project.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccountOpened {
    /// Display name of the account.
    pub name: String,
    /// The project created with the account; keys without a project belong to it.
    pub default_project_id: String,
    /// Display name of the default project.
    pub default_project_name: String,
    /// The admin key that made the change (`adm_…`); absent in events from before roles.
    #[serde(default)]
    pub admin_key_id: Option<String>,
}

/// A project was created in an account (besides the default one [`AccountOpened`] creates).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProjectCreated {
    /// The new project's id (`proj_…`).
    pub project_id: String,
    /// Its display name.
    pub name: String,
    /// The admin key that made the change (`adm_…`); absent in events from before roles.
    #[serde(default)]
    pub admin_key_id: Option<String>,
}

/// A project of the account was given a new name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProjectRenamed {
    /// The project.
    pub project_id: String,
    /// The new display name.
    pub name: String,
    /// The admin key that made the change (`adm_…`); absent in events from before roles.
    #[serde(default)]
    pub admin_key_id: Option<String>,
}

/// A project was archived: no new keys are issued in it and its keys stop authenticating.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProjectArchived {
    /// The project.
    pub project_id: String,
    /// The admin key that made the change (`adm_…`); absent in events from before roles.
    #[serde(default)]
    pub admin_key_id: Option<String>,
}

/// An admin key was issued. The key itself is never part of any event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdminKeyCreated {
    /// The new key's id (`adm_…`).
    pub key_id: String,
    /// Display name.
    pub name: String,
    /// `owner`, `operator`, `finance` or `viewer`.
    pub role: String,
    /// Hex HMAC-SHA-256 of the key under the deployment's key secret.
    pub key_hash: String,
    /// The key's first characters, to recognise it by.
    pub key_prefix: String,
    /// The admin key that issued it.
    pub admin_key_id: Option<String>,
}

/// An admin key was revoked: it fails from the next request on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdminKeyRevoked {
    /// The revoked key.
    pub key_id: String,
    /// The admin key that revoked it.
    pub admin_key_id: Option<String>,
}

/// A budget was set (or replaced, with the same id) on an account, a project or a key: the
/// most its requests may spend in each period. The envelope names the account, and the project
/// or key it is set on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BudgetSet {
    /// The budget (`bud_…`).
    pub budget_id: String,
    /// What it limits: `account`, `project` or `key`.
    pub scope: String,
    /// The account, project or key id.
    pub scope_id: String,
    /// The most its scope may spend in a period, nano-credits.
    pub limit_nano: i64,
    /// `day`, `week` (Monday to Sunday), `month` or `total`.
    pub period: String,
    /// The IANA time zone whose calendar the periods follow.
    pub timezone: String,
    /// Spend past which `BudgetThresholdCrossed` is recorded once per period, nano-credits.
    pub soft_limit_nano: Option<i64>,
    /// The admin key that made the change (`adm_…`); absent in events from before roles.
    #[serde(default)]
    pub admin_key_id: Option<String>,
}

/// A budget was removed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BudgetRemoved {
    /// The budget.
    pub budget_id: String,
    /// The admin key that made the change (`adm_…`); absent in events from before roles.
    #[serde(default)]
    pub admin_key_id: Option<String>,
}

/// A request took a budget's use past its soft limit, the first time in the period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BudgetThresholdCrossed {
    /// The budget.
    pub budget_id: String,
    /// The start of the period, µs since the epoch (0 for a `total` budget).
    pub period_start: i64,
    /// The soft limit crossed, nano-credits.
    pub soft_limit_nano: i64,
    /// The budget's limit, nano-credits.
    pub limit_nano: i64,
    /// What the period had used with the request's hold, nano-credits.
    pub used_nano: i64,
}

/// Credits were added to an account's balance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreditsGranted {
    /// Positive amount in nano-credits.
    pub amount_nano: i64,
    /// Why the credits were granted, if someone said.
    pub reason: Option<String>,
    /// Who granted them: `admin`, `demo`, or an operator tool.
    pub granted_by: String,
}

/// An API key was issued. The key itself is never part of any event.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ApiKeyCreated {
    /// The key's public id (`key_…`).
    pub key_id: String,
    /// Display name.
    pub name: String,
    /// Hex HMAC-SHA-256 of the secret key under the server's key secret.
    pub key_hash: String,
    /// The first characters of the key, for people to tell keys apart.
    pub key_prefix: String,
    /// Whether prompts and answers of this key may be kept in eval datasets (v2).
    #[serde(default)]
    pub store_content: bool,
    /// Requests per minute allowed; `None` for no limit (v2).
    #[serde(default)]
    pub rpm: Option<i64>,
    /// Tokens per minute allowed; `None` for no limit (v2).
    #[serde(default)]
    pub tpm: Option<i64>,
    /// The key's default routing preference (`cost`, `balanced`, `quality`) (v3).
    #[serde(default)]
    pub routing_prefer: Option<String>,
    /// Whether the key is refused `lumina-fusion` and kept off Fusion panels by `lumina-auto`
    /// (v4).
    #[serde(default)]
    pub fusion_barred: bool,
    /// From this instant (µs since the epoch) the key no longer authenticates (v5).
    #[serde(default)]
    pub expires_at: Option<i64>,
    /// The paths the key may be routed to; `None`: all (v5).
    #[serde(default)]
    pub paths: Option<Vec<String>>,
    /// The inbound APIs the key may call; `None`: all (v5).
    #[serde(default)]
    pub surfaces: Option<Vec<String>>,
    /// The key reads its usage and requests but makes no completion (v5).
    #[serde(default)]
    pub read_only: bool,
    /// Requests of the key in flight at once on one gateway (v5).
    #[serde(default)]
    pub max_parallel_requests: Option<i64>,
    /// The admin key that made the change (`adm_…`); absent in events from before roles.
    #[serde(default)]
    pub admin_key_id: Option<String>,
}

/// A key was given an expiry (rotation: the old key expires once the overlap ends).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKeyExpirySet {
    /// The key.
    pub key_id: String,
    /// From this instant (µs since the epoch) it no longer authenticates.
    pub expires_at: i64,
    /// The key issued in its place, when rotated.
    #[serde(default)]
    pub replaced_by: Option<String>,
    /// The admin key that made the change (`adm_…`); absent in events from before roles.
    #[serde(default)]
    pub admin_key_id: Option<String>,
}

/// An API key was revoked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKeyRevoked {
    /// The revoked key's id.
    pub key_id: String,
    /// Why, if someone said.
    pub reason: Option<String>,
    /// The admin key that made the change (`adm_…`); absent in events from before roles.
    #[serde(default)]
    pub admin_key_id: Option<String>,
}

/// A key's rate limits were changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LimitsChanged {
    /// The key whose limits changed.
    pub key_id: String,
    /// New requests-per-minute limit; `None` removes it.
    pub rpm: Option<i64>,
    /// New tokens-per-minute limit; `None` removes it.
    pub tpm: Option<i64>,
    /// The admin key that made the change (`adm_…`); absent in events from before roles.
    #[serde(default)]
    pub admin_key_id: Option<String>,
}

/// A routing policy snapshot was published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyPublished {
    /// Monotonic policy version.
    pub policy_version: i64,
    /// The policy as JSON.
    pub snapshot_json: String,
    /// What prompted the new version.
    pub reason: String,
    /// The admin key that made the change (`adm_…`); absent in events from before roles.
    #[serde(default)]
    pub admin_key_id: Option<String>,
}

/// A routing policy published earlier became the active one again (`lumina policy rollback`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyActivated {
    /// The version now in force.
    pub policy_version: i64,
    /// Why.
    pub reason: String,
    /// The admin key that made the change (`adm_…`); absent in events from before roles.
    #[serde(default)]
    pub admin_key_id: Option<String>,
}

/// The credit hold a request placed before calling upstream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreditHold {
    /// Held amount in nano-credits.
    pub amount_nano: i64,
    /// Price table version the hold was priced with.
    pub price_table_version: String,
    /// How long the hold lives without a settlement.
    pub ttl_ms: i64,
}

/// One classifier input's share of a routing decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureContribution {
    /// A structural feature's name, or `word:`, `bigram:` or `chars:` and the n-gram's text.
    pub name: String,
    /// The input's value.
    pub value: f64,
    /// Value × weight for the chosen path (positive: pushed towards it).
    pub contribution: f64,
}

/// The gateway authenticated a request, chose its path and held credits for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestRouted {
    /// The `model` the client asked for.
    pub requested_model: String,
    /// `fast`, `balanced`, `reasoning`, `fusion` or `embeddings`.
    pub path: String,
    /// The classifier's task class.
    pub task_class: String,
    /// Whether the client asked for a stream.
    pub stream: bool,
    /// Routing policy version in force.
    pub policy_version: i64,
    /// Classifier features by name.
    pub features: BTreeMap<String, f64>,
    /// Classifier score per path.
    pub scores: BTreeMap<String, f64>,
    /// Deployments in fallback order.
    pub candidates: Vec<String>,
    /// Estimated prompt tokens.
    pub prompt_tokens_estimate: i64,
    /// The client's output token cap, if any.
    pub max_tokens: Option<i64>,
    /// The credit hold placed, if the request is paid.
    pub hold: Option<CreditHold>,
    /// The classifier inputs that weighed most, largest magnitude first; v2.
    #[serde(default)]
    pub top_features: Vec<FeatureContribution>,
    /// The cost–quality preference applied (`cost`, `balanced`, `quality`); v3.
    #[serde(default = "balanced")]
    pub prefer: String,
    /// The weakest path allowed, when bounded; v3.
    #[serde(default)]
    pub min_path: Option<String>,
    /// The strongest path allowed, when bounded; v3.
    #[serde(default)]
    pub max_path: Option<String>,
    /// The classifier's own choice when the bounds moved the request to another path; v3.
    #[serde(default)]
    pub classified_path: Option<String>,
    /// The inbound API the request came in on (`chat_completions`, `messages`, `embeddings`,
    /// `responses`); v4, earlier versions were all chat completions.
    #[serde(default = "chat_completions")]
    pub api: String,
}

fn balanced() -> String {
    "balanced".into()
}

fn chat_completions() -> String {
    "chat_completions".into()
}

/// One attempt to call an upstream deployment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpstreamAttempted {
    /// 1 for the first attempt.
    pub attempt: i32,
    /// Provider kind (`openai`, `anthropic`, `simulated`, …).
    pub provider: String,
    /// Deployment name from the configuration.
    pub deployment: String,
    /// Model name sent upstream.
    pub upstream_model: String,
    /// Start of the attempt, µs since the epoch.
    pub started_at: i64,
    /// Time to first byte from the upstream, µs.
    pub ttfb_us: Option<i64>,
    /// Duration of the attempt, µs.
    pub duration_us: i64,
    /// `ok` or `error`.
    pub outcome: String,
    /// Error class when the attempt failed.
    pub error_class: Option<String>,
    /// Upstream HTTP status, when one was received.
    pub http_status: Option<i32>,
    /// Whether this attempt's failure led to another attempt.
    pub fell_back: bool,
    /// What the call was for in a Fusion request (`panel`, `judge`, `synthesizer`); `None`
    /// for every other request; v2.
    #[serde(default)]
    pub role: Option<String>,
}

/// Token usage of a request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: i64,
    /// Completion tokens.
    pub completion_tokens: i64,
    /// Prompt tokens served from the provider's cache.
    pub cached_tokens: i64,
    /// Reasoning tokens inside the completion.
    pub reasoning_tokens: i64,
    /// True when the provider did not report usage and it was estimated.
    pub estimated: bool,
}

/// A request ended and was charged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestSettled {
    /// `completed`, `failed`, `cancelled` (the client went away) or `cut_midstream`.
    pub outcome: String,
    /// The path the request took.
    pub path: String,
    /// Provider of the answering deployment.
    pub provider: Option<String>,
    /// The answering deployment.
    pub deployment: Option<String>,
    /// Token usage.
    pub usage: Usage,
    /// The charge in nano-credits.
    pub charge_nano: i64,
    /// Price table version the charge used.
    pub price_table_version: String,
    /// The rounding rule applied once to the charge.
    pub rounding: String,
    /// The hold released by this settlement.
    pub hold_released_nano: i64,
    /// End-to-end latency, µs.
    pub latency_us: i64,
    /// Time to first token, µs.
    pub ttft_us: Option<i64>,
    /// Number of upstream attempts.
    pub attempts: i32,
    /// Error class when the request failed.
    pub error_class: Option<String>,
    /// Why the billed usage differs from the upstream's report (`completion_clamped`,
    /// `usage_out_of_range`, `usage_unrecognized`); v2.
    #[serde(default)]
    pub usage_anomaly: Option<String>,
    /// The completion tokens the upstream reported when an anomaly made Lumina bill another
    /// number; v2.
    #[serde(default)]
    pub reported_completion_tokens: Option<i64>,
}

/// A client rated a request's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeedbackReceived {
    /// Numeric score, if given.
    pub score: Option<f64>,
    /// Label, if given.
    pub label: Option<String>,
    /// Free-text comment, if given.
    pub comment: Option<String>,
    /// Where the feedback came from (`api`, `eval`, …).
    pub source: String,
}

/// A hold with no settlement was released after its TTL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HoldExpired {
    /// Released amount in nano-credits.
    pub amount_nano: i64,
    /// When the hold was placed, µs since the epoch.
    pub hold_placed_at: i64,
    /// The TTL that ran out.
    pub ttl_ms: i64,
}

/// One route of a Fusion panel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Panelist {
    /// Path of the panelist.
    pub path: String,
    /// Deployment that answered.
    pub deployment: String,
    /// `completed` or `failed`.
    pub outcome: String,
    /// What the panelist's call cost, nano-credits.
    pub charge_nano: i64,
    /// Completion tokens of the panelist.
    pub completion_tokens: i64,
    /// Latency of the panelist, µs.
    pub latency_us: i64,
}

/// A Fusion panel ran and its answers were fused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FusionPanelCompleted {
    /// The panel's routes.
    pub panelists: Vec<Panelist>,
    /// Deployment that wrote the fused answer.
    pub synthesizer_deployment: String,
    /// Share of claims the panel agreed on, 0..1.
    pub agreement: f64,
    /// Short descriptions of where the panel disagreed.
    pub disagreements: Vec<String>,
}

/// The prompt and answer of a request, recorded only for keys created with `store_content`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestContentRecorded {
    /// The request's `messages` array as the client sent it, JSON text.
    pub messages_json: String,
    /// The assistant's answer text, when there was one.
    pub answer: Option<String>,
    /// The answer's tool calls, JSON text, when there were any.
    pub tool_calls_json: Option<String>,
}

/// An eval item's answer was scored (`lumina eval run`). The item's request is the envelope's
/// `request_id`; path, deployment, task classes and charges are the gateway's own record of the
/// requests, never the client's word.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalCompleted {
    /// The eval run this result belongs to.
    pub run_id: String,
    /// The eval dataset's name.
    pub dataset: String,
    /// The item's id within the dataset.
    pub item_id: String,
    /// The `model` the item's request asked for.
    pub model: String,
    /// The path the gateway chose for the item's request.
    pub path: String,
    /// The deployment that answered.
    pub deployment: Option<String>,
    /// The item's task class from the dataset, when it has one.
    pub task_class: Option<String>,
    /// The task class the gateway's classifier recorded for the request.
    pub routed_task_class: Option<String>,
    /// `exact`, `regex`, `json_schema`, `numeric` or `judge`.
    pub check_kind: String,
    /// The answer's score, 0 to 1.
    pub score: f64,
    /// Whether the score met the check's bar.
    pub passed: bool,
    /// The item request's charge in nano-credits, as settled.
    pub cost_nano: i64,
    /// The item request's latency as the eval client measured it, milliseconds.
    pub latency_ms: f64,
    /// The judge's request, for judge checks.
    pub judge_request_id: Option<String>,
    /// The judge request's charge in nano-credits, as settled.
    pub judge_cost_nano: Option<i64>,
}
