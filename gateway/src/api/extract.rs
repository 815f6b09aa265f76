//! Extractors that turn requests into typed values or OpenAI-shaped errors: bodies (one size
//! and time policy for every route), JSON bodies and query strings (a bad field names itself in
//! `param`), customer keys and the admin key.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::HeaderMap;
use axum::http::header::{AUTHORIZATION, CONTENT_LENGTH};
use axum::http::request::Parts;
use bytes::Bytes;
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;
use serde_json::error::Category;

use crate::api::error::ApiError;
use crate::auth::{AdminAction, AdminIdentity, AdminRefusal, KeyIdentity};
use crate::config::ServerConfig;
use crate::json_keys::{self, KeyCheck};
use crate::state::AppState;
use crate::wire::duplicate_member;

/// A request body read under the one body policy of every route: at most
/// `server.max_body_bytes` (413 beyond, refused up front when `content-length` says so) and
/// within `server.body_timeout_ms` from the first read to the last byte (408 beyond).
pub struct RawBody(pub Bytes);

impl FromRequest<AppState> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let (parts, body) = req.into_parts();
        read_body(&state.server, &parts.headers, body)
            .await
            .map(RawBody)
    }
}

/// Reads `body` whole under the size and time limits of `server`.
pub async fn read_body(
    server: &ServerConfig,
    headers: &HeaderMap,
    body: Body,
) -> Result<Bytes, ApiError> {
    let limit = server.max_body_bytes;
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::PayloadTooLarge(limit));
    }
    let limited = http_body_util::Limited::new(body, limit);
    let timeout = Duration::from_millis(server.body_timeout_ms);
    match tokio::time::timeout(timeout, limited.collect()).await {
        Err(_) => Err(ApiError::RequestTimeout(server.body_timeout_ms)),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e))
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(ApiError::PayloadTooLarge(limit))
        }
        Ok(Err(e)) => Err(ApiError::invalid(
            format!("Could not read the request body: {e}"),
            None,
        )),
    }
}

/// A JSON body parsed into `T`, read under the body policy of [`RawBody`]; any problem is a
/// 400 naming the offending field.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let RawBody(bytes) = RawBody::from_request(req, state).await?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Parses a JSON object, mapping serde's complaint to the field it is about. A member named
/// twice in any object is refused, naming it.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first.is_some_and(|&b| b != b'{') {
        return Err(ApiError::invalid(
            "The request body must be a JSON object.",
            None,
        ));
    }
    if let KeyCheck::Duplicate(d) = json_keys::check(bytes) {
        return Err(ApiError::from(duplicate_member(d)));
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

/// The bearer token of a request (or its `x-api-key`), or "" when there is none.
fn bearer(parts: &Parts) -> &str {
    parts
        .headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .or_else(|| {
            // Anthropic's SDKs and Claude Code send the key as `x-api-key`.
            parts.headers.get("x-api-key").and_then(|v| v.to_str().ok())
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
            .authenticate_or_load(bearer(parts), &state.read_model)
            .await
            .map(CustomerKey)
            .map_err(ApiError::from)
    }
}

/// A request authenticated with an admin key whose role allows what the request does
/// ([`AdminAction::of`] its method and path).
pub struct AdminKey(pub Arc<AdminIdentity>);

impl AdminKey {
    /// The admin service acting for this key: the events it records name it.
    pub fn admin(&self, state: &AppState) -> crate::admin::Admin {
        state.admin.acting_as(&self.0.id)
    }
}

impl FromRequestParts<AppState> for AdminKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let identity = state
            .keys
            .authenticate_admin(bearer(parts), &state.admin_key)
            .map_err(|refusal| match refusal {
                AdminRefusal::Unknown => ApiError::AdminRequired,
                AdminRefusal::Revoked => ApiError::AdminKeyRevoked,
            })?;
        let action = AdminAction::of(&parts.method, parts.uri.path());
        if !identity.role.allows(action) {
            return Err(ApiError::AdminRoleForbidden {
                role: identity.role.as_str(),
                method: parts.method.to_string(),
                path: parts.uri.path().to_string(),
            });
        }
        Ok(AdminKey(identity))
    }
}
