//! `POST /v1/embeddings`, OpenAI's embeddings surface: parses the body, hands it to the
//! engine's embeddings route and answers the vectors with `usage.cost`, `x-lumina-cost` and the
//! routing headers.

use axum::Extension;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use lumina_schemas::ids::RequestId;

use crate::api::chat::{answered, trace_id};
use crate::api::error::ApiError;
use crate::api::extract::{CustomerKey, RawBody};
use crate::embeddings::EmbeddingsRequest;
use crate::engine::embed::{EmbedRequest, embed};
use crate::state::AppState;

/// The handler.
pub async fn create(
    State(state): State<AppState>,
    CustomerKey(key): CustomerKey,
    Extension(request_id): Extension<RequestId>,
    headers: HeaderMap,
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
            trace_id: trace_id(&headers),
        },
    )
    .await?;
    Ok(answered(
        embedded.body,
        &embedded.charge.to_string(),
        &embedded.route,
    ))
}
