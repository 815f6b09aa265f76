//! The one error type of the HTTP API. Each variant knows its status and OpenAI `type`/`code`;
//! [`ApiError::into_response`] renders `{"error": {"message", "type", "param", "code"}}` and is
//! the only place that body is written.

use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::admin::AdminError;
use crate::auth::AuthFailure;
use crate::metering::credit::OverBudget;
use crate::metering::limits::{
    LimitExceeded, LimitKind, LimitState, LimitStatus, format_reset, retry_after_secs,
};
use crate::providers::UpstreamClientError;
use crate::wire::InvalidRequest;

/// `x-lumina-budget`: the budget that refused a request.
static X_LUMINA_BUDGET: HeaderName = HeaderName::from_static("x-lumina-budget");
/// `x-lumina-budget-remaining`: credits left in the tightest budget once one passed its soft
/// limit.
static X_LUMINA_BUDGET_REMAINING: HeaderName = HeaderName::from_static("x-lumina-budget-remaining");

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
    /// The key's project was archived.
    #[error("This API key belongs to an archived project.")]
    ArchivedProject,
    /// The key expired.
    #[error("This API key has expired.")]
    ExpiredKey,
    /// The key may not make this request (its scopes).
    #[error("{message}")]
    OutOfScope {
        /// What the key may not do.
        message: String,
        /// `read_only_key`, `surface_not_allowed` or `model_not_allowed`.
        code: &'static str,
    },
    /// The key has `max_parallel_requests` requests in flight already.
    #[error(
        "This API key has {0} requests in flight, its max_parallel_requests; retry once one of them ends."
    )]
    TooManyParallel(u64),
    /// The admin key was revoked.
    #[error("This admin key has been revoked.")]
    AdminKeyRevoked,
    /// The admin key's role does not allow the request.
    #[error("This admin key's role ({role}) may not {method} {path}.")]
    AdminRoleForbidden {
        /// The key's role.
        role: &'static str,
        /// Request method.
        method: String,
        /// Request path.
        path: String,
    },
    /// The key is barred from Model Fusion.
    #[error(
        "This API key may not use lumina-fusion. Ask an admin to issue a key with allow_fusion, or use lumina-auto or a single path."
    )]
    FusionBarred,
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
    /// The account's available credit cannot cover the request's hold.
    #[error(
        "You exceeded your current quota: this request needs {needed} credits held and the account has {available} available. Add credits to continue."
    )]
    InsufficientQuota {
        /// Available now.
        available: lumina_schemas::NanoCredits,
        /// The hold the request needs.
        needed: lumina_schemas::NanoCredits,
    },
    /// The request's hold would take a budget past its limit (402 before any call).
    #[error(
        "This request needs {} credits held, which would take budget {} (on {} {}, per {}) past its limit of {} credits: {} used in this period. Raise or remove the budget, or wait for its next period.",
        lumina_schemas::NanoCredits(.0.needed), .0.budget_id, .0.scope.as_str(), .0.scope_id,
        .0.period, lumina_schemas::NanoCredits(.0.limit), lumina_schemas::NanoCredits(.0.used)
    )]
    BudgetExceeded(Box<OverBudget>),
    /// A Fusion request's hold is more than its `max_cost` allows (402 before any call).
    #[error(
        "This Fusion request needs {needed} credits held for its panel, judge and synthesizer, more than its max_cost of {cap}. Raise lumina.fusion.max_cost, or use a smaller panel or a lower max_tokens."
    )]
    OverCostCap {
        /// `max_cost`.
        cap: lumina_schemas::NanoCredits,
        /// The hold the request needs.
        needed: lumina_schemas::NanoCredits,
    },
    /// Too many or too large request headers.
    #[error("The request has {0}; this server accepts at most {1}.")]
    HeadersTooLarge(String, String),
    /// The model is not in the catalog.
    #[error("The model '{0}' does not exist or you do not have access to it.")]
    ModelNotFound(String),
    /// A Responses request continues a response the account does not have (400, as OpenAI).
    #[error("Previous response with id '{0}' not found.")]
    PreviousResponseNotFound(String),
    /// The body is larger than the server accepts.
    #[error("The request body is larger than the {0} bytes this server accepts.")]
    PayloadTooLarge(usize),
    /// The client did not send its body in time.
    #[error("The request body did not arrive within {0} ms.")]
    RequestTimeout(u64),
    /// A per-key limit refused the request.
    #[error("{}", .0.message)]
    RateLimited(Box<LimitExceeded>),
    /// The upstream refused the request itself; returned as the upstream said it.
    #[error("{}", .0.message)]
    Upstream(Box<UpstreamClientError>),
    /// Every attempt failed (502), timed out (504), was rate-limited (429) or found no
    /// deployment available (503).
    #[error("{message}")]
    UpstreamFailed {
        /// 429, 502, 503 or 504.
        status: u16,
        /// Each attempt's deployment and error class.
        message: String,
        /// The shortest wait an upstream asked for, sent as `Retry-After`.
        retry_after: Option<std::time::Duration>,
    },
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
            ApiError::InvalidRequest { .. } | ApiError::PreviousResponseNotFound(_) => {
                StatusCode::BAD_REQUEST
            }
            ApiError::MissingKey
            | ApiError::InvalidKey
            | ApiError::ExpiredKey
            | ApiError::AdminRequired => StatusCode::UNAUTHORIZED,
            ApiError::OutOfScope { .. } => StatusCode::FORBIDDEN,
            ApiError::TooManyParallel(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::RevokedKey
            | ApiError::ArchivedProject
            | ApiError::FusionBarred
            | ApiError::AdminKeyRevoked
            | ApiError::AdminRoleForbidden { .. } => StatusCode::FORBIDDEN,
            ApiError::NotFound { .. } | ApiError::UnknownRoute { .. } => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::HeadersTooLarge(..) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::InsufficientQuota { .. }
            | ApiError::OverCostCap { .. }
            | ApiError::BudgetExceeded(_) => StatusCode::PAYMENT_REQUIRED,
            ApiError::ModelNotFound(_) => StatusCode::NOT_FOUND,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Upstream(e) => {
                StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST)
            }
            ApiError::UpstreamFailed { status, .. } => {
                StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY)
            }
        }
    }

    /// OpenAI error `type` and `code`.
    fn kind_and_code(&self) -> (&'static str, Option<&'static str>) {
        match self {
            ApiError::InvalidRequest { .. } => ("invalid_request_error", None),
            ApiError::MissingKey => ("invalid_request_error", Some("missing_api_key")),
            ApiError::InvalidKey => ("invalid_request_error", Some("invalid_api_key")),
            ApiError::RevokedKey => ("invalid_request_error", Some("api_key_revoked")),
            ApiError::ArchivedProject => ("invalid_request_error", Some("project_archived")),
            ApiError::ExpiredKey => ("invalid_request_error", Some("api_key_expired")),
            ApiError::OutOfScope { code, .. } => ("invalid_request_error", Some(*code)),
            ApiError::TooManyParallel(_) => ("requests", Some("parallel_requests_exceeded")),
            ApiError::AdminRequired => ("invalid_request_error", Some("admin_key_required")),
            ApiError::AdminKeyRevoked => ("invalid_request_error", Some("admin_key_revoked")),
            ApiError::AdminRoleForbidden { .. } => {
                ("permission_error", Some("admin_role_forbidden"))
            }
            ApiError::FusionBarred => ("invalid_request_error", Some("fusion_not_allowed")),
            ApiError::NotFound { .. } => ("invalid_request_error", Some("not_found")),
            ApiError::UnknownRoute { .. } => ("invalid_request_error", Some("unknown_url")),
            ApiError::MethodNotAllowed { .. } => {
                ("invalid_request_error", Some("method_not_allowed"))
            }
            ApiError::Unavailable(_) => ("server_error", Some("service_unavailable")),
            ApiError::Internal(_) => ("server_error", None),
            ApiError::HeadersTooLarge(..) => ("invalid_request_error", Some("headers_too_large")),
            ApiError::InsufficientQuota { .. } => {
                ("insufficient_quota", Some("insufficient_quota"))
            }
            ApiError::OverCostCap { .. } => ("insufficient_quota", Some("fusion_max_cost")),
            ApiError::BudgetExceeded(_) => ("insufficient_quota", Some("budget_exceeded")),
            ApiError::ModelNotFound(_) => ("invalid_request_error", Some("model_not_found")),
            ApiError::PreviousResponseNotFound(_) => {
                ("invalid_request_error", Some("previous_response_not_found"))
            }
            ApiError::PayloadTooLarge(_) => ("invalid_request_error", Some("payload_too_large")),
            ApiError::RequestTimeout(_) => ("invalid_request_error", Some("request_timeout")),
            ApiError::RateLimited(e) => match e.kind {
                LimitKind::Requests => ("requests", Some("rate_limit_exceeded")),
                LimitKind::Tokens => ("tokens", Some("rate_limit_exceeded")),
            },
            ApiError::Upstream(_) => ("invalid_request_error", None),
            ApiError::UpstreamFailed { status: 429, .. } => {
                ("rate_limit_error", Some("upstream_rate_limited"))
            }
            ApiError::UpstreamFailed { .. } => ("server_error", Some("upstream_error")),
        }
    }

    fn param(&self) -> Option<&str> {
        match self {
            ApiError::InvalidRequest { param, .. } | ApiError::NotFound { param, .. } => {
                param.as_deref()
            }
            ApiError::ModelNotFound(_) | ApiError::FusionBarred => Some("model"),
            ApiError::OutOfScope {
                code: "model_not_allowed",
                ..
            } => Some("model"),
            ApiError::PreviousResponseNotFound(_) => Some("previous_response_id"),
            ApiError::OverCostCap { .. } => Some("lumina.fusion.max_cost"),
            ApiError::Upstream(e) => e.param.as_deref(),
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
        let (kind, code) = match &self {
            ApiError::Upstream(e) => (
                e.kind.as_deref().unwrap_or(kind),
                e.code.as_deref().or(code),
            ),
            _ => (kind, code),
        };
        let body = ErrorBody {
            error: ErrorDetail {
                message: self.to_string(),
                kind,
                param: self.param(),
                code,
            },
        };
        let mut response = (status, axum::Json(body)).into_response();
        if let ApiError::UpstreamFailed {
            retry_after: Some(wait),
            ..
        } = &self
            && let Ok(v) = HeaderValue::from_str(&retry_after_secs(*wait).to_string())
        {
            response.headers_mut().insert(RETRY_AFTER, v);
        }
        if let ApiError::BudgetExceeded(b) = &self
            && let Ok(v) = HeaderValue::from_str(&b.budget_id)
        {
            response.headers_mut().insert(X_LUMINA_BUDGET.clone(), v);
        }
        if let ApiError::RateLimited(e) = &self {
            let headers = response.headers_mut();
            rate_limit_headers(headers, &e.status);
            if let Ok(v) = HeaderValue::from_str(&retry_after_secs(e.retry_after).to_string()) {
                headers.insert(RETRY_AFTER, v);
            }
        }
        response
    }
}

impl From<AuthFailure> for ApiError {
    fn from(failure: AuthFailure) -> Self {
        match failure {
            AuthFailure::Missing => ApiError::MissingKey,
            AuthFailure::Unknown => ApiError::InvalidKey,
            AuthFailure::Revoked => ApiError::RevokedKey,
            AuthFailure::Archived => ApiError::ArchivedProject,
            AuthFailure::Expired => ApiError::ExpiredKey,
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

impl From<InvalidRequest> for ApiError {
    fn from(e: InvalidRequest) -> Self {
        ApiError::InvalidRequest {
            message: e.message,
            param: e.param,
        }
    }
}

fn insert_limit(headers: &mut HeaderMap, names: [&'static str; 3], state: &LimitState) {
    let values = [
        state.limit.to_string(),
        state.remaining.to_string(),
        format_reset(state.reset),
    ];
    for (name, value) in names.into_iter().zip(values) {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), v);
        }
    }
}

/// OpenAI's `x-ratelimit-*` headers for the limits a key has, and `x-lumina-budget-remaining`
/// once a budget passed its soft limit.
pub fn rate_limit_headers(headers: &mut HeaderMap, status: &LimitStatus) {
    if let Some(remaining) = status.budget_remaining
        && let Ok(v) =
            HeaderValue::from_str(&lumina_schemas::NanoCredits(remaining.max(0)).to_string())
    {
        headers.insert(X_LUMINA_BUDGET_REMAINING.clone(), v);
    }
    if let Some(r) = &status.requests {
        insert_limit(
            headers,
            [
                "x-ratelimit-limit-requests",
                "x-ratelimit-remaining-requests",
                "x-ratelimit-reset-requests",
            ],
            r,
        );
    }
    if let Some(t) = &status.tokens {
        insert_limit(
            headers,
            [
                "x-ratelimit-limit-tokens",
                "x-ratelimit-remaining-tokens",
                "x-ratelimit-reset-tokens",
            ],
            t,
        );
    }
}
