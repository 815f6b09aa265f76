//! `POST /v1/embeddings`, OpenAI's embeddings surface: parses the body, hands it to the
//! engine's embeddings route and answers the vectors with `usage.cost`, `x-lumina-cost` and the
//! routing headers.

use axum::Extension;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use lumina_schemas::ids::RequestId;

use crate::api::chat::{X_LUMINA_COST, routed_headers, trace_id};
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
    let mut response = (StatusCode::OK, embedded.body).into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Ok(v) = HeaderValue::from_str(&embedded.charge.to_string()) {
        headers.insert(X_LUMINA_COST.clone(), v);
    }
    routed_headers(headers, &embedded.route);
    Ok(response)
}
