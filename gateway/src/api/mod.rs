//! HTTP only: routes, extractors, OpenAI wire shapes and error mapping. Handlers translate
//! between the wire and the services; they hold no logic of their own.

pub mod admin;
pub mod budgets;
pub mod chat;
pub mod embeddings;
pub mod error;
pub mod evals;
pub mod extract;
pub mod health;
pub mod keepalive;
pub mod ledger;
pub mod messages;
pub mod metrics;
pub mod models;
pub mod policies;
pub mod requests;
pub mod responses;
pub mod usage;

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue, Method, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use lumina_schemas::ids::RequestId;

use crate::api::error::ApiError;
use crate::state::AppState;
use crate::telemetry::RequestTrace;

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Gives the request its id (`x-request-id` on the response) and every response the security
/// headers no API answer should lack: never sniffed as another type, never framed, no
/// referrer; admin answers are never cached.
async fn assign_request_id(mut req: Request, next: Next) -> Response {
    let id = RequestId::generate();
    let header = HeaderValue::from_str(id.as_str()).ok();
    req.extensions_mut().insert(id);
    let admin = req.uri().path().starts_with("/admin/");
    let mut response = next.run(req).await;
    let headers = response.headers_mut();
    if let Some(header) = header {
        headers.insert(X_REQUEST_ID.clone(), header);
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if admin {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// Gives each API request (`/v1/…`, `/admin/…`) its trace: the server span when tracing,
/// named after the matched route and ended once the answer's last byte is written; else the
/// client's trace context alone.
async fn trace_request(
    axum::extract::State(state): axum::extract::State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path();
    if !(path.starts_with("/v1/") || path.starts_with("/admin/")) {
        return next.run(req).await;
    }
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or(path, MatchedPath::as_str);
    let request_id = req
        .extensions()
        .get::<RequestId>()
        .map_or("", RequestId::as_str);
    let trace = state
        .telemetry
        .request(req.method().as_str(), route, req.headers(), request_id);
    req.extensions_mut().insert(trace.clone());
    let response = next.run(req).await;
    if !trace.is_recording() {
        return response;
    }
    trace.responded(response.status().as_u16());
    response.map(|body| axum::body::Body::new(TracedBody { body, trace }))
}

/// A response body that ends its request's server span when it is done with (written or
/// abandoned).
struct TracedBody {
    body: axum::body::Body,
    trace: RequestTrace,
}

impl http_body::Body for TracedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for TracedBody {
    fn drop(&mut self) {
        self.trace.end();
    }
}

/// Total bytes of request headers accepted.
const MAX_HEADER_BYTES: usize = 64 * 1024;

async fn limit_headers(
    axum::extract::State(state): axum::extract::State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    let headers = req.headers();
    if headers.len() > state.server.max_headers {
        return ApiError::HeadersTooLarge(
            format!("{} headers", headers.len()),
            format!("{} headers", state.server.max_headers),
        )
        .into_response();
    }
    let bytes: usize = headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum();
    if bytes > MAX_HEADER_BYTES {
        return ApiError::HeadersTooLarge(
            format!("{bytes} bytes of headers"),
            format!("{MAX_HEADER_BYTES} bytes"),
        )
        .into_response();
    }
    next.run(req).await
}

async fn unknown_route(method: Method, uri: Uri) -> ApiError {
    ApiError::UnknownRoute {
        method: method.to_string(),
        path: uri.path().to_string(),
    }
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::MethodNotAllowed {
        method: method.to_string(),
        path: uri.path().to_string(),
    }
}

/// CORS for `origins` on the `/v1` API only; `None` when no origin is configured.
fn cors(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use axum::http::header;
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let allowed: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o.trim_end_matches('/')).ok())
        .collect();
    if allowed.is_empty() {
        return None;
    }
    let origin = AllowOrigin::predicate(move |origin, request| {
        request.uri.path().starts_with("/v1/") && allowed.contains(origin)
    });
    Some(
        CorsLayer::new()
            .allow_origin(origin)
            .allow_methods([Method::GET, Method::POST, Method::DELETE])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static("x-api-key"),
                HeaderName::from_static("anthropic-version"),
                HeaderName::from_static("anthropic-beta"),
            ])
            .expose_headers([
                HeaderName::from_static("x-request-id"),
                HeaderName::from_static("x-lumina-cost"),
                HeaderName::from_static("x-lumina-route"),
                HeaderName::from_static("x-lumina-budget-remaining"),
            ])
            .max_age(std::time::Duration::from_secs(600)),
    )
}

/// The gateway's routes.
pub fn router(state: AppState) -> Router {
    let cors = cors(&state.server.cors_origins);
    let router = Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics::metrics))
        .route("/v1/chat/completions", post(chat::create))
        .route("/v1/embeddings", post(embeddings::create))
        .route("/v1/messages", post(messages::create))
        .route("/v1/messages/count_tokens", post(messages::count_tokens))
        .route("/v1/responses", post(responses::create))
        .route(
            "/v1/responses/{id}",
            get(responses::retrieve).delete(responses::delete),
        )
        .route("/v1/models", get(models::list))
        .route("/v1/usage", get(usage::usage))
        .route("/v1/budgets", get(budgets::mine))
        .route("/v1/requests", get(requests::list))
        .route("/v1/requests/{id}", get(requests::get))
        .route("/v1/feedback", post(requests::feedback))
        .route("/v1/evals/results", post(evals::record))
        .route("/admin/requests", get(requests::admin_list))
        .route("/admin/requests/{id}", get(requests::admin_get))
        .route("/admin/routes/stats", get(requests::route_stats))
        .route(
            "/admin/policies",
            post(policies::publish).get(policies::list),
        )
        .route("/admin/policies/{version}", get(policies::show))
        .route(
            "/admin/policies/{version}/activate",
            post(policies::activate),
        )
        .route("/v1/models/{id}", get(models::retrieve))
        .route("/admin/accounts", post(admin::create_account))
        .route("/admin/accounts/{id}", get(admin::get_account))
        .route("/admin/accounts/{id}/credits", post(admin::grant_credits))
        .route(
            "/admin/accounts/{id}/budgets",
            post(budgets::create_on_account).get(budgets::list_of_account),
        )
        .route(
            "/admin/projects/{id}/budgets",
            post(budgets::create_on_project).get(budgets::list_on_project),
        )
        .route(
            "/admin/keys/{id}/budgets",
            post(budgets::create_on_key).get(budgets::list_on_key),
        )
        .route(
            "/admin/budgets/{id}",
            get(budgets::get_budget)
                .put(budgets::replace_budget)
                .delete(budgets::remove_budget),
        )
        .route(
            "/admin/accounts/{id}/projects",
            post(admin::create_project).get(admin::list_projects),
        )
        .route(
            "/admin/projects/{id}",
            get(admin::get_project).patch(admin::rename_project),
        )
        .route("/admin/projects/{id}/archive", post(admin::archive_project))
        .route("/admin/keys", post(admin::create_key).get(admin::list_keys))
        .route(
            "/admin/admin-keys",
            post(admin::create_admin_key).get(admin::list_admin_keys),
        )
        .route("/admin/admin-keys/{id}", delete(admin::revoke_admin_key))
        .route(
            "/admin/keys/{id}",
            get(admin::get_key).delete(admin::revoke_key),
        )
        .route("/admin/keys/{id}/limits", post(admin::change_limits))
        .route("/admin/keys/{id}/rotate", post(admin::rotate_key))
        .route("/admin/ledger/accounts/{id}/entries", get(ledger::entries))
        .route("/admin/ledger/statements", get(ledger::statement))
        .merge(crate::dashboard::routes())
        .route_layer(middleware::from_fn_with_state(state.clone(), trace_request))
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), limit_headers))
        .layer(middleware::from_fn(assign_request_id))
        .layer(middleware::from_fn(keepalive::drain_unread_body));
    match cors {
        Some(layer) => router.layer(layer).with_state(state),
        None => router.with_state(state),
    }
}
