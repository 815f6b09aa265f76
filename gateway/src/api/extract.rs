//! Extractors that turn requests into typed values or OpenAI-shaped errors: JSON bodies and
//! query strings (a bad field names itself in `param`), customer keys and the admin key.

use std::sync::Arc;

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde_json::error::Category;

use crate::api::error::ApiError;
use crate::auth::{KeyIdentity, secrets_equal};
use crate::state::AppState;

/// A JSON body parsed into `T`; any problem is a 400 naming the offending field.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            ApiError::invalid(format!("Could not read the request body: {e}"), None)
        })?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Parses a JSON object, mapping serde's complaint to the field it is about.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first.is_some_and(|&b| b != b'{') {
        return Err(ApiError::invalid(
            "The request body must be a JSON object.",
            None,
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            Category::Syntax | Category::Eof | Category::Io => ApiError::invalid(
                format!(
                    "We could not parse the JSON body of your request ({inner}). The body must be \
                     a JSON object."
                ),
                None,
            ),
            Category::Data => {
                let message = inner.to_string();
                let param = if path == "." {
                    missing_field(&message)
                } else {
                    Some(path)
                };
                let message = match &param {
                    Some(p) => format!("Invalid value for '{p}': {message}"),
                    None => format!("Invalid request body: {message}"),
                };
                ApiError::InvalidRequest { message, param }
            }
        }
    })?;
    de.end().map_err(|e| {
        ApiError::invalid(format!("Unexpected data after the JSON body ({e})"), None)
    })?;
    Ok(value)
}

/// The field named by serde's "missing field `x`" message.
fn missing_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("missing field `")?;
    rest.split('`').next().map(str::to_string)
}

/// A query string parsed into `T`; a bad parameter is a 400 naming it.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or("");
        axum::extract::Query::<T>::try_from_uri(&parts.uri)
            .map(|q| ApiQuery(q.0))
            .map_err(|e| {
                ApiError::invalid(
                    format!("Invalid query string '{query}': {}", e.body_text()),
                    None,
                )
            })
    }
}

/// The bearer token of a request, or "" when there is none.
fn bearer(parts: &Parts) -> &str {
    parts
        .headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map_or("", str::trim)
}

/// A request authenticated with a customer API key.
pub struct CustomerKey(pub Arc<KeyIdentity>);

impl FromRequestParts<AppState> for CustomerKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        state
            .keys
            .authenticate_or_load(bearer(parts), state.admin.read_model())
            .await
            .map(CustomerKey)
            .map_err(ApiError::from)
    }
}

/// A request authenticated with the admin key.
pub struct AdminKey;

impl FromRequestParts<AppState> for AdminKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(parts);
        if !token.is_empty() && secrets_equal(token, &state.admin_key) {
            Ok(AdminKey)
        } else {
            Err(ApiError::AdminRequired)
        }
    }
}
