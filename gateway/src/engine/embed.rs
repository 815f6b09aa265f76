//! Embeddings through the engine: the same admission (limits, hold, `RequestRouted`), attempt
//! loop, breakers and settlement as a completion, on the embeddings route, billed per input
//! token. Content is not recorded: the answer is vectors, not a conversation.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use lumina_schemas::NanoCredits;
use lumina_schemas::ids::RequestId;

use crate::api::error::ApiError;
use crate::auth::KeyIdentity;
use crate::embeddings::{self, EmbeddingsRequest};
use crate::engine::attempt::Attempts;
use crate::engine::settle::bill_with;
use crate::engine::{Admitted, Origin, Plan, Route, admit_plan, whole, writable};
use crate::metering::events::{InboundApi, Outcome};
use crate::providers::EmbedCall;
use crate::routing::catalog::{ModelChoice, RoutePath};
use crate::routing::classifier::Decision;
use crate::state::AppState;
use crate::telemetry::RequestTrace;
use crate::wire::TokenUsage;

/// An embeddings request as its surface hands it to the engine.
pub struct EmbedRequest<'a> {
    /// The parsed request.
    pub request: &'a EmbeddingsRequest<'a>,
    /// The client's bytes.
    pub body: &'a Bytes,
    /// The key that authenticated it.
    pub key: Arc<KeyIdentity>,
    /// Its id.
    pub request_id: RequestId,
    /// Its trace.
    pub trace: RequestTrace,
}

/// Embeddings, settled.
pub struct Embeddings {
    /// How they were routed.
    pub route: Route,
    /// The answer for the client: the upstream's list with the billed usage and its cost.
    pub body: Bytes,
    /// The usage billed.
    pub usage: TokenUsage,
    /// Its charge, as journaled.
    pub charge: NanoCredits,
}

/// Embeds the request's inputs on the first deployment of the embeddings route that answers.
pub async fn embed(state: &AppState, call: EmbedRequest<'_>) -> Result<Embeddings, ApiError> {
    let started = Instant::now();
    writable(state)?;
    let request = call.request;
    let model = request.model.as_str();
    match state.catalog.resolve(model) {
        Some(ModelChoice::Path(RoutePath::Embeddings)) if state.routes.serves_embeddings() => {}
        Some(_) if state.routes.serves_embeddings() => {
            return Err(ApiError::invalid(
                format!("'{model}' is a chat model; embeddings need 'lumina-embeddings'."),
                Some("model"),
            ));
        }
        _ => return Err(ApiError::ModelNotFound(model.to_string())),
    }
    let routing = state.routes.routing();
    let prefer = call.key.prefer.unwrap_or(routing.policy.prefer);
    let plan = Plan {
        api: InboundApi::Embeddings,
        requested_model: model,
        decision: Decision::fixed(RoutePath::Embeddings, "embeddings", prefer),
        stream: false,
        prompt_estimate: request.quick_estimate(),
        max_tokens: Some(0),
        n: 1,
        panel: None,
    };
    let origin = Origin {
        key: &call.key,
        request_id: &call.request_id,
        trace: &call.trace,
        body: call.body,
    };
    let Admitted {
        meta,
        policy_version,
        deployments,
        limits,
        allowance,
        settlement,
    } = admit_plan(state, origin, plan, started, &routing).await?;
    let mut settlement = settlement.without_content();
    let mut attempts = Attempts::new(&meta, &state.log);
    let tried = attempts
        .run(
            &deployments,
            |n| settlement.attempt_started(n),
            |d, traceparent| {
                d.provider.embed(EmbedCall {
                    request,
                    upstream_model: &d.upstream_model,
                    traceparent,
                })
            },
        )
        .await;
    let (attempt, embedded) = whole(state, tried, &attempts, &mut settlement).await?;
    let billed = bill_with(embedded.usage, allowance, || async {
        let body = call.body.clone();
        tokio::task::spawn_blocking(move || {
            let prompt_tokens = EmbeddingsRequest::parse(&body)
                .map(|r| r.count_tokens())
                .unwrap_or(0);
            TokenUsage {
                prompt_tokens,
                ..TokenUsage::default()
            }
        })
        .await
        .unwrap_or_default()
    })
    .await;
    let charge = settlement
        .answered(Outcome::Completed, &billed, attempts.count(), None, &[])
        .await?;
    Ok(Embeddings {
        route: Route {
            meta: meta.clone(),
            deployment: attempt.deployment,
            attempts: attempts.count(),
            limits,
            policy_version,
        },
        body: embeddings::render(&embedded.body, billed.usage, &charge.to_string()),
        usage: billed.usage,
        charge,
    })
}
