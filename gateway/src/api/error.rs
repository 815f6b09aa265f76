//! The one error type of the HTTP API. Each variant knows its status and OpenAI `type`/`code`;
//! [`ApiError::into_response`] renders `{"error": {"message", "type", "param", "code"}}` and is
//! the only place that body is written.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::admin::AdminError;
use crate::auth::AuthFailure;

/// An error answered to an API client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body or query is malformed or a field is invalid.
    #[error("{message}")]
    InvalidRequest {
        /// What is wrong.
        message: String,
        /// The offending field, when one is to blame.
        param: Option<String>,
    },
    /// No API key was sent.
    #[error("You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.")]
    MissingKey,
    /// The key is not one Lumina issued.
    #[error("Incorrect API key provided.")]
    InvalidKey,
    /// The key was revoked.
    #[error("This API key has been revoked.")]
    RevokedKey,
    /// The admin key is missing or wrong.
    #[error("This endpoint requires the admin key: 'Authorization: Bearer <admin key>'.")]
    AdminRequired,
    /// An id does not exist.
    #[error("{message}")]
    NotFound {
        /// What was not found.
        message: String,
        /// The field or path parameter that named it.
        param: Option<String>,
    },
    /// No such route.
    #[error("Invalid URL ({method} {path})")]
    UnknownRoute {
        /// Request method.
        method: String,
        /// Request path.
        path: String,
    },
    /// The route exists with other methods.
    #[error("Method {method} is not allowed for {path}")]
    MethodNotAllowed {
        /// Request method.
        method: String,
        /// Request path.
        path: String,
    },
    /// A dependency cannot take the request right now (event log, read model).
    #[error("{0}")]
    Unavailable(String),
    /// A bug or an unexpected failure; details are logged, not returned.
    #[error("The server had an error while processing your request. Request id: see x-request-id.")]
    Internal(String),
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    message: String,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

impl ApiError {
    /// A 400 about `param`.
    pub fn invalid(message: impl Into<String>, param: Option<&str>) -> ApiError {
        ApiError::InvalidRequest {
            message: message.into(),
            param: param.map(str::to_string),
        }
    }

    /// HTTP status of the error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::MissingKey | ApiError::InvalidKey | ApiError::AdminRequired => {
                StatusCode::UNAUTHORIZED
            }
            ApiError::RevokedKey => StatusCode::FORBIDDEN,
            ApiError::NotFound { .. } | ApiError::UnknownRoute { .. } => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// OpenAI error `type` and `code`.
    fn kind_and_code(&self) -> (&'static str, Option<&'static str>) {
        match self {
            ApiError::InvalidRequest { .. } => ("invalid_request_error", None),
            ApiError::MissingKey => ("invalid_request_error", Some("missing_api_key")),
            ApiError::InvalidKey => ("invalid_request_error", Some("invalid_api_key")),
            ApiError::RevokedKey => ("invalid_request_error", Some("api_key_revoked")),
            ApiError::AdminRequired => ("invalid_request_error", Some("admin_key_required")),
            ApiError::NotFound { .. } => ("invalid_request_error", Some("not_found")),
            ApiError::UnknownRoute { .. } => ("invalid_request_error", Some("unknown_url")),
            ApiError::MethodNotAllowed { .. } => {
                ("invalid_request_error", Some("method_not_allowed"))
            }
            ApiError::Unavailable(_) => ("server_error", Some("service_unavailable")),
            ApiError::Internal(_) => ("server_error", None),
        }
    }

    fn param(&self) -> Option<&str> {
        match self {
            ApiError::InvalidRequest { param, .. } | ApiError::NotFound { param, .. } => {
                param.as_deref()
            }
            _ => None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let (kind, code) = self.kind_and_code();
        if let ApiError::Internal(detail) = &self {
            tracing::error!(detail = %detail, "internal error");
        }
        let body = ErrorBody {
            error: ErrorDetail {
                message: self.to_string(),
                kind,
                param: self.param(),
                code,
            },
        };
        (status, axum::Json(body)).into_response()
    }
}

impl From<AuthFailure> for ApiError {
    fn from(failure: AuthFailure) -> Self {
        match failure {
            AuthFailure::Missing => ApiError::MissingKey,
            AuthFailure::Unknown => ApiError::InvalidKey,
            AuthFailure::Revoked => ApiError::RevokedKey,
        }
    }
}

impl From<AdminError> for ApiError {
    fn from(e: AdminError) -> Self {
        match e {
            AdminError::NotFound { param, .. } => ApiError::NotFound {
                message: e.to_string(),
                param: Some(param.to_string()),
            },
            AdminError::Invalid { message, param } => ApiError::InvalidRequest {
                message,
                param: Some(param.to_string()),
            },
            AdminError::Log(_) | AdminError::NotApplied(_) => ApiError::Unavailable(e.to_string()),
            AdminError::Db(e) => ApiError::Unavailable(format!("read model unavailable: {e}")),
            AdminError::Secret(e) => ApiError::Internal(e.to_string()),
        }
    }
}
