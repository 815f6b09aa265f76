//! The gateway's part of `lumina.toml`: providers, routes, breaker, limits. Deserialized with
//! the rest of the file, validated once at start with errors that name the key.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::routing::catalog::RoutePath;

/// The routable paths, in the order config and errors list them.
pub const PATHS: [RoutePath; 3] = [RoutePath::Fast, RoutePath::Balanced, RoutePath::Reasoning];

/// The key of the embeddings model in `models` and of its route in `[routes]`.
pub const EMBEDDINGS: &str = "embeddings";

/// Kinds of upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// Any OpenAI-compatible Chat Completions server.
    Openai,
    /// Anthropic's Messages API.
    Anthropic,
    /// Deterministic local answers for demos, tests and benchmarks.
    Simulated,
}

impl ProviderKind {
    /// Name recorded in events.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Openai => "openai",
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::Simulated => "simulated",
        }
    }
}

/// One `[[providers]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// Unique name, used in `[routes.*].providers` and in deployment ids.
    pub name: String,
    /// What the upstream speaks.
    pub kind: ProviderKind,
    /// Base URL (…/v1). Defaults: OpenAI's and Anthropic's public APIs.
    #[serde(default)]
    pub base_url: Option<String>,
    /// Environment variable holding the upstream API key; never the key itself.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Upstream model per path: `{ fast = "…", balanced = "…", reasoning = "…" }`, plus
    /// `embeddings = "…"` for an upstream that serves `/v1/embeddings`.
    #[serde(default)]
    pub models: BTreeMap<String, String>,
    /// Whole-attempt deadline.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// TCP/TLS connect deadline.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Deadline for the first byte of the answer; defaults to `timeout_ms`.
    #[serde(default)]
    pub first_byte_timeout_ms: Option<u64>,
    /// Longest silence between two streamed chunks; defaults to `timeout_ms`.
    #[serde(default)]
    pub idle_timeout_ms: Option<u64>,
    /// Largest non-streamed response body accepted from this upstream; a larger one fails
    /// the attempt.
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: usize,
    /// Most bytes one streamed answer may carry; past it the stream ends with an error event.
    #[serde(default = "default_max_stream_bytes")]
    pub max_stream_bytes: usize,
    /// `max_tokens` sent to Anthropic when the client gave none (it is required there).
    #[serde(default = "default_anthropic_max_tokens")]
    pub default_max_tokens: u32,
    /// Behaviour of a `simulated` provider.
    #[serde(default)]
    pub simulated: SimulatedConfig,
}

fn default_timeout_ms() -> u64 {
    60_000
}
fn default_connect_timeout_ms() -> u64 {
    5_000
}
fn default_max_response_bytes() -> usize {
    32 * 1024 * 1024
}
fn default_max_stream_bytes() -> usize {
    64 * 1024 * 1024
}
fn default_anthropic_max_tokens() -> u32 {
    4096
}

/// `[providers.simulated]`: how a simulated upstream behaves.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimulatedConfig {
    /// Delay before the response starts.
    pub latency_ms: u64,
    /// Extra delay before the first token of a stream.
    pub ttft_ms: u64,
    /// Streaming pace; 0 sends every token at once.
    pub tokens_per_second: u64,
    /// Completion length when `max_tokens` does not cap it lower.
    pub completion_tokens: u32,
    /// Share of requests that fail, 0..1.
    pub failure_rate: f64,
    /// Failures to draw from: `server_error`, `rate_limited`, `timeout`, `overload`, `cut`.
    pub failure_kinds: Vec<String>,
    /// A fixed answer instead of text derived from the prompt (a Fusion panel member with a
    /// planted claim, a judge's JSON); its tokens are its words.
    pub answer: Option<String>,
}

impl Default for SimulatedConfig {
    fn default() -> Self {
        SimulatedConfig {
            latency_ms: 0,
            ttft_ms: 0,
            tokens_per_second: 0,
            completion_tokens: 48,
            failure_rate: 0.0,
            failure_kinds: vec!["server_error".into()],
            answer: None,
        }
    }
}

/// Failure kinds a simulated provider can inject.
pub const SIMULATED_FAILURES: [&str; 5] =
    ["server_error", "rate_limited", "timeout", "overload", "cut"];

/// `[routes.<path>]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Providers in fallback order.
    pub providers: Vec<String>,
}

/// `[breaker]`: when a deployment is taken out of rotation.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker.
    pub consecutive_failures: u32,
    /// Failure share over the recent window that opens it…
    pub error_rate: f64,
    /// …once the window holds at least this many attempts.
    pub min_requests: u32,
    /// Attempts the error rate is computed over.
    pub window: u32,
    /// How long an open breaker waits before a half-open probe.
    pub cooldown_ms: u64,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            consecutive_failures: 5,
            error_rate: 0.5,
            min_requests: 20,
            window: 50,
            cooldown_ms: 10_000,
        }
    }
}

/// `[server]`: protection of the HTTP surface.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Largest request body accepted (413 beyond).
    pub max_body_bytes: usize,
    /// Most request headers accepted (431 beyond).
    pub max_headers: usize,
    /// Deadline for a client to send its headers.
    pub header_timeout_ms: u64,
    /// Deadline for a client to send its body (408 beyond).
    pub body_timeout_ms: u64,
    /// Most choices (`n`) one request may ask for (400 beyond).
    pub max_n: u32,
    /// Most connections open at once; the effective bound is also kept below the process's
    /// file-descriptor limit.
    pub max_connections: usize,
    /// Browser origins (`https://app.example.com`) allowed to call the `/v1` API; none: CORS
    /// is closed and no answer carries `access-control-allow-origin`. The admin API never is.
    pub cors_origins: Vec<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_body_bytes: 8 * 1024 * 1024,
            max_headers: 100,
            header_timeout_ms: 10_000,
            body_timeout_ms: 30_000,
            max_n: 8,
            max_connections: 10_000,
            cors_origins: Vec::new(),
        }
    }
}

/// `[fusion]`: Model Fusion, the panel behind `lumina-fusion`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FusionConfig {
    /// List and accept `lumina-fusion`.
    pub enabled: bool,
    /// The panel: 2 to 8 paths (`fast`, `balanced`, `reasoning`) or deployments
    /// (`provider/model`), each answering the prompt in parallel.
    pub panel: Vec<String>,
    /// The path or deployment that compares the answers as structured JSON; none: Lumina's
    /// own comparison only.
    pub judge: Option<String>,
    /// The path or deployment that writes the fused answer.
    pub synthesizer: String,
    /// Members that must answer before synthesis starts; default: a majority of the panel.
    pub quorum: Option<usize>,
    /// How long synthesis waits for the members past the quorum; later ones are cancelled.
    pub member_deadline_ms: u64,
    /// The most one Fusion request may hold and be charged, in credits (decimal string).
    pub max_cost: Option<String>,
}

impl Default for FusionConfig {
    fn default() -> Self {
        FusionConfig {
            enabled: false,
            panel: vec!["fast".into(), "balanced".into(), "reasoning".into()],
            judge: None,
            synthesizer: "balanced".into(),
            quorum: None,
            member_deadline_ms: 60_000,
            max_cost: None,
        }
    }
}

/// The gateway's sections of the configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct GatewayConfig {
    /// `[[providers]]`; a simulated provider serves every path when there is none.
    pub providers: Vec<ProviderConfig>,
    /// `[routes.fast]`, `[routes.balanced]`, `[routes.reasoning]`, `[routes.embeddings]`.
    pub routes: BTreeMap<String, RouteConfig>,
    /// `[breaker]`
    pub breaker: BreakerConfig,
    /// `[server]`
    pub server: ServerConfig,
    /// `[fusion]`
    pub fusion: FusionConfig,
}

/// The provider used when the configuration lists none.
pub fn default_simulated_provider() -> ProviderConfig {
    ProviderConfig {
        name: "simulated".into(),
        kind: ProviderKind::Simulated,
        base_url: None,
        api_key_env: None,
        models: PATHS
            .iter()
            .map(|p| p.as_str())
            .chain([EMBEDDINGS])
            .map(|p| (p.to_string(), format!("sim-{p}")))
            .collect(),
        timeout_ms: default_timeout_ms(),
        connect_timeout_ms: default_connect_timeout_ms(),
        first_byte_timeout_ms: None,
        idle_timeout_ms: None,
        max_response_bytes: default_max_response_bytes(),
        max_stream_bytes: default_max_stream_bytes(),
        default_max_tokens: default_anthropic_max_tokens(),
        simulated: SimulatedConfig::default(),
    }
}

impl GatewayConfig {
    /// Fills defaults (a simulated provider; routes from the providers' models) and checks
    /// every reference. Errors name the offending key.
    pub fn resolve(
        mut self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<GatewayConfig, String> {
        if self.providers.is_empty() {
            self.providers.push(default_simulated_provider());
        }
        for (i, p) in self.providers.iter().enumerate() {
            let key = format!("providers[{i}]");
            if p.name.trim().is_empty() {
                return Err(format!("{key}.name must not be empty"));
            }
            if self.providers[..i].iter().any(|q| q.name == p.name) {
                return Err(format!(
                    "{key}.name: provider '{}' is defined twice",
                    p.name
                ));
            }
            for path in p.models.keys() {
                if path != EMBEDDINGS && !PATHS.iter().any(|x| x.as_str() == path) {
                    return Err(format!(
                        "{key}.models.{path}: expected one of fast, balanced, reasoning, embeddings"
                    ));
                }
            }
            if p.kind == ProviderKind::Anthropic && p.models.contains_key(EMBEDDINGS) {
                return Err(format!(
                    "{key}.models.embeddings: Anthropic's API serves no embeddings"
                ));
            }
            if let Some(var) = &p.api_key_env
                && env(var).is_none_or(|v| v.is_empty())
            {
                return Err(format!(
                    "{key}.api_key_env: environment variable {var} is not set"
                ));
            }
            if p.kind == ProviderKind::Anthropic && p.api_key_env.is_none() {
                return Err(format!(
                    "{key}.api_key_env: an anthropic provider needs an API key"
                ));
            }
            if let Some(url) = &p.base_url
                && !(url.starts_with("http://") || url.starts_with("https://"))
            {
                return Err(format!(
                    "{key}.base_url: expected an http:// or https:// URL"
                ));
            }
            if p.max_response_bytes == 0 || p.max_stream_bytes == 0 {
                return Err(format!(
                    "{key}.max_response_bytes and max_stream_bytes must be positive"
                ));
            }
            if p.timeout_ms == 0 || p.connect_timeout_ms == 0 {
                return Err(format!(
                    "{key}.timeout_ms and connect_timeout_ms must be positive"
                ));
            }
            let s = &p.simulated;
            if !(0.0..=1.0).contains(&s.failure_rate) {
                return Err(format!(
                    "{key}.simulated.failure_rate: expected a number in 0..1"
                ));
            }
            if let Some(kind) = s
                .failure_kinds
                .iter()
                .find(|k| !SIMULATED_FAILURES.contains(&k.as_str()))
            {
                return Err(format!(
                    "{key}.simulated.failure_kinds: unknown kind '{kind}', expected any of {}",
                    SIMULATED_FAILURES.join(", ")
                ));
            }
        }
        for name in self.routes.keys() {
            if name != EMBEDDINGS && !PATHS.iter().any(|p| p.as_str() == name) {
                return Err(format!(
                    "routes.{name}: expected fast, balanced, reasoning or embeddings"
                ));
            }
        }
        for path in PATHS.iter().map(|p| p.as_str()).chain([EMBEDDINGS]) {
            match self.routes.get(path) {
                Some(route) => {
                    if route.providers.is_empty() {
                        return Err(format!(
                            "routes.{path}.providers must list at least one provider"
                        ));
                    }
                    for name in &route.providers {
                        let Some(provider) = self.providers.iter().find(|p| &p.name == name) else {
                            return Err(format!(
                                "routes.{path}.providers: no provider named '{name}'"
                            ));
                        };
                        if !provider.models.contains_key(path) {
                            return Err(format!(
                                "routes.{path}.providers: provider '{name}' has no models.{path}"
                            ));
                        }
                    }
                }
                None => {
                    let providers: Vec<String> = self
                        .providers
                        .iter()
                        .filter(|p| p.models.contains_key(path))
                        .map(|p| p.name.clone())
                        .collect();
                    if providers.is_empty() && path == EMBEDDINGS {
                        // No upstream serves embeddings: the gateway offers none.
                        continue;
                    }
                    if providers.is_empty() {
                        return Err(format!(
                            "routes.{path}: no provider has models.{path}; add one or a [routes.{path}] section"
                        ));
                    }
                    self.routes
                        .insert(path.to_string(), RouteConfig { providers });
                }
            }
        }
        let b = &self.breaker;
        if b.consecutive_failures == 0 || b.window == 0 || !(0.0..=1.0).contains(&b.error_rate) {
            return Err(
                "breaker: consecutive_failures and window must be positive, error_rate in 0..1"
                    .into(),
            );
        }
        if self.server.max_body_bytes == 0 || self.server.max_headers == 0 {
            return Err("server.max_body_bytes and server.max_headers must be positive".into());
        }
        if !(1..=128).contains(&self.server.max_n) {
            return Err("server.max_n: expected 1..=128 (OpenAI's own limit is 128)".into());
        }
        if self.server.max_connections == 0 {
            return Err("server.max_connections must be positive".into());
        }
        if self.server.header_timeout_ms == 0 || self.server.body_timeout_ms == 0 {
            return Err(
                "server.header_timeout_ms and server.body_timeout_ms must be positive".into(),
            );
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<GatewayConfig, String> {
        let c: GatewayConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        c.resolve(|v| (v == "SET").then(|| "x".to_string()))
    }

    #[test]
    fn no_providers_means_a_simulated_provider_on_every_path() {
        let c = parse("").unwrap();
        assert_eq!(c.providers.len(), 1);
        assert_eq!(c.routes["fast"].providers, ["simulated"]);
        assert_eq!(c.routes["reasoning"].providers, ["simulated"]);
        assert_eq!(c.routes[EMBEDDINGS].providers, ["simulated"]);
    }

    #[test]
    fn embeddings_are_a_route_of_their_own_and_optional() {
        let base = "[[providers]]\nname = \"a\"\nkind = \"openai\"\nbase_url = \"http://x/v1\"\nmodels = { fast = \"m\", balanced = \"m\", reasoning = \"m\" }\n";
        assert!(!parse(base).unwrap().routes.contains_key(EMBEDDINGS));
        let with = base.replace("reasoning = \"m\"", "reasoning = \"m\", embeddings = \"e\"");
        assert_eq!(parse(&with).unwrap().routes[EMBEDDINGS].providers, ["a"]);
        let e = parse(&format!("{base}[routes.embeddings]\nproviders = [\"a\"]\n")).unwrap_err();
        assert!(
            e.contains("routes.embeddings.providers") && e.contains("models.embeddings"),
            "{e}"
        );
        let claude = "[[providers]]\nname = \"c\"\nkind = \"anthropic\"\napi_key_env = \"SET\"\nmodels = { fast = \"m\", balanced = \"m\", reasoning = \"m\", embeddings = \"e\" }\n";
        let e = parse(claude).unwrap_err();
        assert!(e.contains("providers[0].models.embeddings"), "{e}");
    }

    #[test]
    fn bad_references_name_the_key() {
        let base = "[[providers]]\nname = \"a\"\nkind = \"openai\"\nbase_url = \"http://x/v1\"\nmodels = { fast = \"m\", balanced = \"m\", reasoning = \"m\" }\n";
        assert!(parse(base).is_ok());
        let e = parse(&format!("{base}[routes.fast]\nproviders = [\"b\"]\n")).unwrap_err();
        assert!(
            e.contains("routes.fast.providers") && e.contains("'b'"),
            "{e}"
        );
        let e = parse(&format!("{base}[routes.slow]\nproviders = [\"a\"]\n")).unwrap_err();
        assert!(e.contains("routes.slow"), "{e}");
        let e = parse(&base.replace("fast = \"m\"", "quick = \"m\"")).unwrap_err();
        assert!(e.contains("providers[0].models.quick"), "{e}");
        let e = parse(&format!("{base}api_key_env = \"UNSET\"\n")).unwrap_err();
        assert!(
            e.contains("providers[0].api_key_env") && e.contains("UNSET"),
            "{e}"
        );
        assert!(parse(&format!("{base}api_key_env = \"SET\"\n")).is_ok());
        let e = parse(&base.replace("\"openai\"", "\"gemini\"")).unwrap_err();
        assert!(e.contains("gemini"), "{e}");
        let e = parse(&base.replace("http://x/v1", "ftp://x")).unwrap_err();
        assert!(e.contains("providers[0].base_url"), "{e}");
        let e = parse(&format!(
            "{base}[providers.simulated]\nfailure_kinds = [\"meteor\"]\n"
        ))
        .unwrap_err();
        assert!(e.contains("failure_kinds") && e.contains("meteor"), "{e}");
    }

    #[test]
    fn a_path_nobody_serves_is_an_error() {
        let e =
            parse("[[providers]]\nname = \"a\"\nkind = \"simulated\"\nmodels = { fast = \"m\" }\n")
                .unwrap_err();
        assert!(e.contains("routes.balanced"), "{e}");
    }
}
