//! `POST /v1/embeddings`, OpenAI's embeddings surface: parses the body, hands it to the
//! engine's embeddings route and answers the vectors with `usage.cost`, `x-lumina-cost` and the
//! routing headers.

use axum::Extension;
use axum::extract::State;
use axum::response::Response;
use lumina_schemas::ids::RequestId;

use crate::api::chat::answered;
use crate::api::error::ApiError;
use crate::api::extract::{CustomerKey, RawBody};
use crate::embeddings::EmbeddingsRequest;
use crate::engine::embed::{EmbedRequest, embed};
use crate::state::AppState;
use crate::telemetry::RequestTrace;

/// The handler.
pub async fn create(
    State(state): State<AppState>,
    CustomerKey(key): CustomerKey,
    Extension(request_id): Extension<RequestId>,
    Extension(trace): Extension<RequestTrace>,
    RawBody(bytes): RawBody,
) -> Result<Response, ApiError> {
    let request = EmbeddingsRequest::parse(&bytes)?;
    let embedded = embed(
        &state,
        EmbedRequest {
            request: &request,
            body: &bytes,
            key,
            request_id,
            trace,
        },
    )
    .await?;
    Ok(answered(
        embedded.body,
        &embedded.charge.to_string(),
        &embedded.route,
    ))
}
