//! The operator dashboard at `/dashboard`: pages rendered by the gateway itself (minijinja
//! templates compiled into the binary, charts as server-rendered SVG, no script), signed in
//! with an admin key (every account) or a customer key (its own account only). Sessions are
//! signed cookies (`HttpOnly`, `SameSite=Strict`, path `/dashboard`) checked against the keys
//! on every request; every form carries the session's CSRF token and a form without it is
//! refused. Admin actions call the same admin service as the admin API, with the same role
//! checks, so they record the same events naming the same admin key. Each page's data is one
//! indexed read of the views the projector maintains.

pub mod session;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::header::{
    CACHE_CONTROL, CONTENT_DISPOSITION, CONTENT_SECURITY_POLICY, CONTENT_TYPE, COOKIE, LOCATION,
    SET_COOKIE,
};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use lumina_ledger::SpendScope;
use lumina_schemas::NanoCredits;
use minijinja::{Environment, context};
use serde::Serialize;

use crate::admin::{BudgetRequest, KeyRequest};
use crate::api::error::ApiError;
use crate::api::extract::RawBody;
use crate::api::requests::{filter_from, load, request_page, trace};
use crate::auth::{AdminAction, AdminIdentity, KeyIdentity};
use crate::dashboard::session::{COOKIE as SESSION_COOKIE, LOGIN_COOKIE, Principal, Session};
use crate::routing::policy::{DEFAULT_POLICY_JSON, PolicyDocument, diff_lines};
use crate::state::AppState;
use lumina_projector::policies::PolicyRow;
use lumina_projector::requests::{ALL_ACCOUNTS, HOUR};
use lumina_projector::views::PathPoint;

/// The templates, compiled once.
fn templates() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        for (name, source) in [
            ("layout.html", include_str!("templates/layout.html")),
            ("login.html", include_str!("templates/login.html")),
            ("overview.html", include_str!("templates/overview.html")),
            ("requests.html", include_str!("templates/requests.html")),
            ("request.html", include_str!("templates/request.html")),
            ("usage.html", include_str!("templates/usage.html")),
            ("accounts.html", include_str!("templates/accounts.html")),
            ("account.html", include_str!("templates/account.html")),
            ("statement.html", include_str!("templates/statement.html")),
            ("providers.html", include_str!("templates/providers.html")),
            ("policies.html", include_str!("templates/policies.html")),
            ("events.html", include_str!("templates/events.html")),
            ("error.html", include_str!("templates/error.html")),
        ] {
            if let Err(e) = env.add_template(name, source) {
                tracing::error!(template = name, error = %e, "dashboard template does not compile");
            }
        }
        env
    })
}

/// The dashboard's routes, under `/dashboard`.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/dashboard", get(overview))
        .route("/dashboard/login", get(login_form).post(login))
        .route("/dashboard/logout", post(logout))
        .route("/dashboard/requests", get(requests))
        .route("/dashboard/requests/{id}", get(request))
        .route("/dashboard/usage", get(usage))
        .route("/dashboard/usage.csv", get(usage_csv))
        .route("/dashboard/accounts", get(accounts).post(create_account))
        .route("/dashboard/accounts/{id}", get(account))
        .route("/dashboard/accounts/{id}/statement", get(statement))
        .route("/dashboard/accounts/{id}/statement.csv", get(statement_csv))
        .route("/dashboard/accounts/{id}/credits", post(grant_credits))
        .route("/dashboard/accounts/{id}/keys", post(create_key))
        .route("/dashboard/keys/{id}/revoke", post(revoke_key))
        .route("/dashboard/keys/{id}/limits", post(change_limits))
        .route("/dashboard/accounts/{id}/budgets", post(set_budget))
        .route("/dashboard/events", get(events))
        .route("/dashboard/providers", get(providers))
        .route("/dashboard/policies", get(policies).post(publish_policy))
        .route(
            "/dashboard/policies/{version}/activate",
            post(activate_policy),
        )
}

/// What every dashboard answer carries: its type, never cached, a content security policy
/// that allows nothing but the page itself (no script at all).
fn page_headers(response: &mut Response) {
    let h = response.headers_mut();
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
}

/// A page answered instead of what was asked (a refusal, an error), boxed: it is large.
type Page = Box<Response>;

/// A rendered page.
fn html(status: StatusCode, name: &str, ctx: minijinja::Value) -> Response {
    let body = templates().get_template(name).and_then(|t| t.render(ctx));
    let mut response = match body {
        Ok(body) => (status, body).into_response(),
        Err(e) => {
            tracing::error!(template = name, error = %e, "dashboard page did not render");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page could not be rendered",
            )
                .into_response()
        }
    };
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    page_headers(&mut response);
    response
}

/// A serializable value for a template.
fn ser<T: Serialize>(value: &T) -> minijinja::Value {
    minijinja::Value::from(minijinja::value::Serde(value))
}

fn redirect(to: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        response.headers_mut().insert(LOCATION, v);
    }
    page_headers(&mut response);
    response
}

/// A cookie of the dashboard's: `HttpOnly`, `SameSite=Strict`, path `/dashboard`; `max_age`
/// 0 removes it.
fn cookie(name: &str, value: &str, max_age_s: i64) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/dashboard; HttpOnly; SameSite=Strict; Max-Age={max_age_s}"
    ))
    .ok()
}

/// The value of cookie `name` in `headers`.
fn read_cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Who is looking, as the keys are now.
#[derive(Clone)]
pub enum Viewer {
    /// An admin key.
    Admin(Arc<AdminIdentity>),
    /// A customer key: its own account only.
    Customer(Arc<KeyIdentity>),
}

/// A signed-in request: who, and the session's CSRF token.
pub struct Signed {
    viewer: Viewer,
    csrf: String,
}

impl Signed {
    /// The account a customer is confined to; `None` for an admin.
    fn own_account(&self) -> Option<String> {
        match &self.viewer {
            Viewer::Admin(_) => None,
            Viewer::Customer(k) => Some(k.account_id.to_string()),
        }
    }

    fn is_admin(&self) -> bool {
        matches!(self.viewer, Viewer::Admin(_))
    }

    /// What every page's layout needs.
    fn frame(&self, active: &str) -> minijinja::Value {
        let (who, role) = match &self.viewer {
            Viewer::Admin(a) => (a.id.clone(), a.role.as_str().to_string()),
            Viewer::Customer(k) => (
                format!("{} ({})", k.key_id.as_str(), k.account_id.as_str()),
                "customer".to_string(),
            ),
        };
        context! { who, role, admin => self.is_admin(), csrf => self.csrf.clone(), active }
    }

    /// The admin key, when its role allows `method` on the admin API's `path` (what the page
    /// does); else the page that says why.
    fn admin_for(&self, method: Method, path: &str) -> Result<Arc<AdminIdentity>, Page> {
        match &self.viewer {
            Viewer::Admin(a) if a.role.allows(AdminAction::of(&method, path)) => Ok(a.clone()),
            Viewer::Admin(a) => Err(Box::new(error_page(
                self,
                StatusCode::FORBIDDEN,
                &format!("The {} role may not do this.", a.role.as_str()),
            ))),
            Viewer::Customer(_) => Err(Box::new(error_page(
                self,
                StatusCode::FORBIDDEN,
                "This page is for administrators: sign in with an admin key.",
            ))),
        }
    }
}

fn error_page(signed: &Signed, status: StatusCode, message: &str) -> Response {
    html(
        status,
        "error.html",
        context! { frame => signed.frame(""), message, status => status.as_u16() },
    )
}

/// An [`ApiError`] as a page.
fn api_error_page(signed: &Signed, e: ApiError) -> Response {
    let status = e.status();
    error_page(signed, status, &e.to_string())
}

impl FromRequestParts<AppState> for Signed {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let now = lumina_schemas::now_micros();
        let session = read_cookie(&parts.headers, SESSION_COOKIE)
            .and_then(|c| Session::verify(state.keys.secret(), c, now));
        let viewer = session.as_ref().and_then(|s| match &s.principal {
            Principal::Admin(id) => state.keys.active_admin(id).map(Viewer::Admin),
            Principal::Customer { key_id, account_id } => state
                .keys
                .active_key(key_id)
                .filter(|k| k.account_id.as_str() == account_id)
                .map(Viewer::Customer),
        });
        match (session, viewer) {
            (Some(session), Some(viewer)) => Ok(Signed {
                csrf: session.csrf(state.keys.secret()),
                viewer,
            }),
            _ => Err(redirect("/dashboard/login")),
        }
    }
}

/// An urlencoded form, with the session's CSRF token checked.
struct Form(HashMap<String, String>);

impl Form {
    /// The form of `body`, if it carries `csrf`; else the refusal.
    fn checked(signed: &Signed, body: &[u8]) -> Result<Form, Page> {
        let fields: HashMap<String, String> = form_urlencoded::parse(body).into_owned().collect();
        let presented = fields.get("csrf").map_or("", String::as_str);
        if !session::csrf_matches(&signed.csrf, presented) {
            return Err(Box::new(error_page(
                signed,
                StatusCode::FORBIDDEN,
                "This form is missing its CSRF token (or carries another session's). Reload the page and try again.",
            )));
        }
        Ok(Form(fields))
    }

    fn get(&self, name: &str) -> &str {
        self.0.get(name).map_or("", |v| v.trim())
    }
}

/// An admin form: the admin key when its role allows `method` on the admin API's `path`, and
/// the form when it carries the session's CSRF token; else the page that says why.
fn admin_form(
    signed: &Signed,
    method: Method,
    path: &str,
    body: &RawBody,
) -> Result<(Arc<AdminIdentity>, Form), Page> {
    let admin = signed.admin_for(method, path)?;
    Ok((admin, Form::checked(signed, &body.0)?))
}

async fn login_form(headers: HeaderMap) -> Response {
    // The sign-in form's own CSRF token, kept in a cookie until the form comes back.
    let token = read_cookie(&headers, LOGIN_COOKIE)
        .filter(|t| t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit()))
        .map_or_else(|| hex::encode(rand::random::<[u8; 16]>()), str::to_string);
    let mut response = html(
        StatusCode::OK,
        "login.html",
        context! { csrf => token.clone(), error => None::<String> },
    );
    if let Some(c) = cookie(LOGIN_COOKIE, &token, 3600) {
        response.headers_mut().append(SET_COOKIE, c);
    }
    response
}

async fn login(State(state): State<AppState>, headers: HeaderMap, body: RawBody) -> Response {
    let fields: HashMap<String, String> = form_urlencoded::parse(&body.0).into_owned().collect();
    let expected = read_cookie(&headers, LOGIN_COOKIE).unwrap_or("");
    let presented = fields.get("csrf").map_or("", String::as_str);
    let refuse = |status: StatusCode, message: &str| {
        html(
            status,
            "login.html",
            context! { csrf => expected.to_string(), error => message },
        )
    };
    if !session::csrf_matches(expected, presented) {
        return refuse(
            StatusCode::FORBIDDEN,
            "The sign-in form is missing its CSRF token. Reload the page and try again.",
        );
    }
    let key = fields.get("key").map_or("", |k| k.trim());
    let principal = if let Ok(admin) = state.keys.authenticate_admin(key, &state.admin_key) {
        Principal::Admin(admin.id.clone())
    } else if let Ok(k) = state
        .keys
        .authenticate_or_load(key, &state.read_model)
        .await
    {
        Principal::Customer {
            key_id: k.key_id.to_string(),
            account_id: k.account_id.to_string(),
        }
    } else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "That key is not an active admin or API key.",
        );
    };
    let Some(session) = Session::new(principal, lumina_schemas::now_micros()) else {
        return refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            "No session could be made.",
        );
    };
    let mut response = redirect("/dashboard");
    let h = response.headers_mut();
    if let Some(c) = cookie(
        SESSION_COOKIE,
        &session.cookie(state.keys.secret()),
        session::LIFETIME_US / 1_000_000,
    ) {
        h.append(SET_COOKIE, c);
    }
    if let Some(c) = cookie(LOGIN_COOKIE, "", 0) {
        h.append(SET_COOKIE, c);
    }
    response
}

async fn logout(signed: Signed, body: RawBody) -> Response {
    if let Err(refused) = Form::checked(&signed, &body.0) {
        return *refused;
    }
    let mut response = redirect("/dashboard/login");
    if let Some(c) = cookie(SESSION_COOKIE, "", 0) {
        response.headers_mut().append(SET_COOKIE, c);
    }
    response
}

/// One path's line of the overview: its totals over the window.
#[derive(Serialize, Default)]
struct PathLine {
    path: String,
    /// Its colour in the charts.
    color: &'static str,
    requests: i64,
    failed: i64,
    /// Charged, exact (credits).
    cost: String,
    latency_p50: Option<f64>,
    latency_p99: Option<f64>,
    ttft_p50: Option<f64>,
    ttft_p99: Option<f64>,
    /// Bar width, % of the busiest path.
    width: f64,
}

/// One hour × path row of the overview's table.
#[derive(Serialize)]
struct HourLine {
    hour: String,
    path: String,
    requests: i64,
    failed: i64,
    cost: String,
    latency_p50: Option<f64>,
    latency_p99: Option<f64>,
    ttft_p50: Option<f64>,
    ttft_p99: Option<f64>,
}

/// A server-rendered line chart: one polyline per path and measure, split where hours have no
/// value.
#[derive(Serialize)]
struct Chart {
    id: &'static str,
    title: &'static str,
    /// The value at the top of the chart.
    top: String,
    lines: Vec<ChartLine>,
}

#[derive(Serialize)]
struct ChartLine {
    path: String,
    color: &'static str,
    dashed: bool,
    /// `x,y` points of each unbroken run.
    segments: Vec<String>,
}

/// Chart area, in SVG units.
const CHART_W: f64 = 600.0;
const CHART_H: f64 = 100.0;

fn path_color(path: &str) -> &'static str {
    match path {
        "fast" => "#3b82f6",
        "balanced" => "#16a34a",
        "reasoning" => "#ea580c",
        "fusion" => "#9333ea",
        _ => "#6b7280",
    }
}

/// The hours a chart spans and the points in them.
#[derive(Clone, Copy)]
struct Window<'a> {
    points: &'a [PathPoint],
    paths: &'a [String],
    /// Unix seconds of the first hour.
    from: i64,
    hours: i64,
}

/// What a chart line plots: a point's value, `None` where it has none.
type Measure = fn(&PathPoint) -> Option<f64>;

/// A chart of `measures` (dashed, value of a point) over `hours` hours from `from`, one line
/// per path and measure; an hour without traffic is 0 when `idle_is_zero` (counts), else a gap.
fn chart(
    w: &Window<'_>,
    id: &'static str,
    title: &'static str,
    idle_is_zero: bool,
    measures: &[(bool, Measure)],
) -> Chart {
    let Window {
        points,
        paths,
        from,
        hours,
    } = *w;
    let top = points
        .iter()
        .flat_map(|p| measures.iter().filter_map(|(_, m)| m(p)))
        .fold(0.0f64, f64::max);
    let scale = if top > 0.0 { CHART_H / top } else { 0.0 };
    let step = CHART_W / (hours.max(2) - 1) as f64;
    let mut lines = Vec::new();
    for path in paths {
        for &(dashed, measure) in measures {
            let mut segments = Vec::new();
            let mut run: Vec<(f64, f64)> = Vec::new();
            for h in 0..hours {
                let at = from + h * HOUR;
                let value = match points.iter().find(|p| p.hour == at && &p.path == path) {
                    Some(p) => measure(p),
                    None if idle_is_zero => Some(0.0),
                    None => None,
                };
                match value {
                    Some(v) => run.push((h as f64 * step, CHART_H - v * scale)),
                    None if !run.is_empty() => segments.push(polyline(&std::mem::take(&mut run))),
                    None => {}
                }
            }
            if !run.is_empty() {
                segments.push(polyline(&run));
            }
            lines.push(ChartLine {
                path: path.clone(),
                color: path_color(path),
                dashed,
                segments,
            });
        }
    }
    Chart {
        id,
        title,
        top: format!("{}", (top * 1000.0).round() / 1000.0),
        lines,
    }
}

/// A count as a chart value.
fn counted(n: i64) -> Option<f64> {
    Some(n as f64)
}

/// SVG `points` of a run; a lone point becomes a short dash, so it shows.
fn polyline(run: &[(f64, f64)]) -> String {
    let dash;
    let run = match run {
        [(x, y)] => {
            dash = [(x - 2.0, *y), (x + 2.0, *y)];
            &dash[..]
        }
        _ => run,
    };
    run.iter()
        .map(|(x, y)| format!("{x:.1},{y:.1}"))
        .collect::<Vec<_>>()
        .join(" ")
}

async fn overview(State(state): State<AppState>, signed: Signed, uri: Uri) -> Response {
    let q = query_of(&uri);
    let hours: i64 = match q.get("hours").map(|h| h.parse::<i64>()) {
        None => 24,
        Some(Ok(h)) if (1..=720).contains(&h) => h,
        Some(_) => {
            return error_page(
                &signed,
                StatusCode::BAD_REQUEST,
                "'hours' must be a whole number from 1 to 720.",
            );
        }
    };
    let now = lumina_schemas::now_micros() / 1_000_000;
    let to = now.div_euclid(HOUR) * HOUR + HOUR;
    let from = to - hours * HOUR;
    let account = signed
        .own_account()
        .unwrap_or_else(|| ALL_ACCOUNTS.to_string());
    let series = match state.read_model.path_series(&account, from, to).await {
        Ok(s) => s,
        Err(e) => return api_error_page(&signed, unavailable(e)),
    };
    let busiest = series
        .totals
        .iter()
        .map(|t| t.requests)
        .max()
        .unwrap_or(0)
        .max(1);
    let lines: Vec<PathLine> = series
        .totals
        .iter()
        .map(|t| PathLine {
            path: t.path.clone(),
            color: path_color(&t.path),
            requests: t.requests,
            failed: t.failed,
            cost: NanoCredits(t.charge_nano).to_string(),
            latency_p50: t.latency_ms.p50,
            latency_p99: t.latency_ms.p99,
            ttft_p50: t.ttft_ms.p50,
            ttft_p99: t.ttft_ms.p99,
            width: (t.requests as f64 / busiest as f64 * 100.0).round(),
        })
        .collect();
    let paths: Vec<String> = series.totals.iter().map(|t| t.path.clone()).collect();
    let w = Window {
        points: &series.points,
        paths: &paths,
        from,
        hours,
    };
    let charts = [
        chart(
            &w,
            "chart-requests",
            "Requests per hour",
            true,
            &[(false, |p| counted(p.requests))],
        ),
        chart(
            &w,
            "chart-errors",
            "Errors per hour",
            true,
            &[(false, |p| counted(p.failed))],
        ),
        chart(
            &w,
            "chart-latency",
            "Latency p50 and p99 (dashed), ms",
            false,
            &[(false, |p| p.latency_ms.p50), (true, |p| p.latency_ms.p99)],
        ),
        chart(
            &w,
            "chart-ttft",
            "Time to first token p50 and p99 (dashed), ms",
            false,
            &[(false, |p| p.ttft_ms.p50), (true, |p| p.ttft_ms.p99)],
        ),
    ];
    let table: Vec<HourLine> = series
        .points
        .iter()
        .rev()
        .map(|p| HourLine {
            hour: chrono::DateTime::from_timestamp(p.hour, 0)
                .map(|t| t.format("%Y-%m-%d %H:00").to_string())
                .unwrap_or_default(),
            path: p.path.clone(),
            requests: p.requests,
            failed: p.failed,
            cost: NanoCredits(p.charge_nano).to_string(),
            latency_p50: p.latency_ms.p50,
            latency_p99: p.latency_ms.p99,
            ttft_p50: p.ttft_ms.p50,
            ttft_p99: p.ttft_ms.p99,
        })
        .collect();
    html(
        StatusCode::OK,
        "overview.html",
        context! {
            frame => signed.frame("overview"),
            lines => ser(&lines),
            charts => ser(&charts),
            hours_table => ser(&table),
            hours => hours,
            scope => signed.own_account(),
        },
    )
}

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    ApiError::Unavailable(format!("The views are unavailable: {e}"))
}

async fn requests(State(state): State<AppState>, signed: Signed, uri: Uri) -> Response {
    let (filter, limit) = match filter_from(&uri, signed.own_account()) {
        Ok(f) => f,
        Err(e) => return api_error_page(&signed, e),
    };
    let shown = context! {
        path => filter.path.clone(), status => filter.status.clone(),
        account_id => filter.account_id.clone(), api_key_id => filter.api_key_id.clone(),
    };
    match request_page(&state, filter, limit).await {
        Ok(page) => html(
            StatusCode::OK,
            "requests.html",
            context! { frame => signed.frame("requests"), page => ser(&page), filter => shown },
        ),
        Err(e) => api_error_page(&signed, e),
    }
}

/// One attempt on the trace's timeline.
#[derive(Serialize)]
struct Bar {
    attempt: i64,
    deployment: String,
    /// Its part in a Fusion panel: `panel`, `judge` or `synthesizer`.
    role: Option<String>,
    outcome: String,
    error_class: Option<String>,
    fell_back: bool,
    duration_ms: f64,
    /// Offset and width, % of the request's span.
    x: f64,
    w: f64,
}

async fn request(
    State(state): State<AppState>,
    signed: Signed,
    Path(id): Path<String>,
) -> Response {
    let account = signed.own_account();
    let (row, attempts) = match load(&state, &id, account.as_deref()).await {
        Ok(found) => found,
        Err(e) => return api_error_page(&signed, e),
    };
    let start = attempts
        .iter()
        .map(|a| a.started_at)
        .min()
        .or(row.routed_at)
        .unwrap_or(0);
    let end = attempts
        .iter()
        .map(|a| a.started_at.saturating_add(a.duration_us))
        .max()
        .unwrap_or(start)
        .max(start + 1);
    let span = (end - start) as f64;
    let bars: Vec<Bar> = attempts
        .iter()
        .map(|a| Bar {
            attempt: a.attempt,
            deployment: a.deployment.clone(),
            role: a.role.clone(),
            outcome: a.outcome.clone(),
            error_class: a.error_class.clone(),
            fell_back: a.fell_back,
            duration_ms: a.duration_us as f64 / 1000.0,
            x: ((a.started_at - start) as f64 / span * 100.0).clamp(0.0, 100.0),
            w: (a.duration_us as f64 / span * 100.0).clamp(0.5, 100.0),
        })
        .collect();
    let of_role = |role: &'static str| bars.iter().filter(move |b| b.role.as_deref() == Some(role));
    let fusion = bars.iter().any(|b| b.role.is_some()).then(|| {
        context! {
            members => of_role("panel").count(),
            answered => of_role("panel").filter(|b| b.outcome == "ok").count(),
            judged => of_role("judge").next().is_some(),
            synthesized => of_role("synthesizer").any(|b| b.outcome == "ok"),
        }
    });
    let trace = trace(row, attempts);
    html(
        StatusCode::OK,
        "request.html",
        context! {
            frame => signed.frame("requests"), trace => ser(&trace), bars => ser(&bars), fusion,
        },
    )
}

/// One line of the usage table: a day, key, project, path and provider.
#[derive(Serialize, Default, Clone)]
struct UsageLine {
    day: String,
    project_id: String,
    api_key_id: String,
    path: String,
    provider: String,
    requests: i64,
    input_tokens: i64,
    output_tokens: i64,
    cached_tokens: i64,
    reasoning_tokens: i64,
    credits_nano: i64,
    credits: String,
}

/// The usage of the account a request may see, by day, project, key, path and provider, over
/// `days` days up to now; the account, and the error page when there is none to show.
async fn usage_lines(
    state: &AppState,
    signed: &Signed,
    uri: &Uri,
) -> Result<(String, i64, Vec<UsageLine>), Page> {
    let q = query_of(uri);
    let account = match signed.own_account() {
        Some(own) => own,
        None => match q.get("account_id").filter(|a| !a.is_empty()) {
            Some(a) => a.clone(),
            None => {
                return Err(Box::new(error_page(
                    signed,
                    StatusCode::BAD_REQUEST,
                    "Choose an account (open it from Accounts, then Usage).",
                )));
            }
        },
    };
    let days: i64 = match q.get("days").map(|d| d.parse::<i64>()) {
        None => 7,
        Some(Ok(d)) if (1..=366).contains(&d) => d,
        Some(_) => {
            return Err(Box::new(error_page(
                signed,
                StatusCode::BAD_REQUEST,
                "'days' must be a whole number from 1 to 366.",
            )));
        }
    };
    let now = lumina_schemas::now_micros() / 1_000_000;
    let start = (now / 86_400 - (days - 1)) * 86_400;
    let rows = state
        .read_model
        .usage(&account, start, now + 60)
        .await
        .map_err(|e| Box::new(api_error_page(signed, unavailable(e))))?;
    let mut lines: Vec<UsageLine> = Vec::new();
    for r in rows {
        let day = chrono::DateTime::from_timestamp(r.minute, 0)
            .map(|t| t.format("%Y-%m-%d").to_string())
            .unwrap_or_default();
        let project_id = r.project_id.clone();
        let api_key_id = r.api_key_id.clone();
        let provider = r.provider.clone();
        let at = lines.iter().position(|l| {
            l.day == day
                && l.project_id == project_id
                && l.api_key_id == api_key_id
                && l.path == r.path
                && l.provider == provider
        });
        let line = match at {
            Some(i) => &mut lines[i],
            None => {
                lines.push(UsageLine {
                    day,
                    project_id,
                    api_key_id,
                    path: r.path.clone(),
                    provider,
                    ..UsageLine::default()
                });
                let last = lines.len() - 1;
                &mut lines[last]
            }
        };
        line.requests += r.requests;
        line.input_tokens += r.input_tokens;
        line.output_tokens += r.output_tokens;
        line.cached_tokens += r.cached_tokens;
        line.reasoning_tokens += r.reasoning_tokens;
        line.credits_nano = line.credits_nano.saturating_add(r.credits_nano);
    }
    for l in &mut lines {
        l.credits = NanoCredits(l.credits_nano).to_string();
    }
    Ok((account, days, lines))
}

/// A day's total, for the chart.
#[derive(Serialize)]
struct DayBar {
    day: String,
    credits: String,
    requests: i64,
    /// % of the busiest day.
    h: f64,
}

async fn usage(State(state): State<AppState>, signed: Signed, uri: Uri) -> Response {
    let (account, days, lines) = match usage_lines(&state, &signed, &uri).await {
        Ok(u) => u,
        Err(page) => return *page,
    };
    let mut per_day: Vec<(String, i64, i64)> = Vec::new();
    for l in &lines {
        match per_day.iter_mut().find(|d| d.0 == l.day) {
            Some(d) => {
                d.1 += l.requests;
                d.2 = d.2.saturating_add(l.credits_nano);
            }
            None => per_day.push((l.day.clone(), l.requests, l.credits_nano)),
        }
    }
    let busiest = per_day.iter().map(|d| d.1).max().unwrap_or(0).max(1);
    let bars: Vec<DayBar> = per_day
        .into_iter()
        .map(|(day, requests, credits)| DayBar {
            day,
            credits: NanoCredits(credits).to_string(),
            requests,
            h: (requests as f64 / busiest as f64 * 100.0).round(),
        })
        .collect();
    let total = NanoCredits(lines.iter().map(|l| l.credits_nano).sum()).to_string();
    html(
        StatusCode::OK,
        "usage.html",
        context! { frame => signed.frame("usage"), account, days, lines => ser(&lines), bars => ser(&bars), total },
    )
}

/// A CSV field, quoted when it needs to be (and never read as a formula by a spreadsheet).
fn csv_field(text: &str) -> String {
    let guarded = if text.starts_with(['=', '+', '-', '@']) {
        format!("'{text}")
    } else {
        text.to_string()
    };
    if guarded.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", guarded.replace('"', "\"\""))
    } else {
        guarded
    }
}

async fn usage_csv(State(state): State<AppState>, signed: Signed, uri: Uri) -> Response {
    let (account, days, lines) = match usage_lines(&state, &signed, &uri).await {
        Ok(u) => u,
        Err(page) => return *page,
    };
    let mut out = String::from(
        "day,project_id,api_key_id,path,provider,requests,input_tokens,output_tokens,cached_tokens,reasoning_tokens,credits\n",
    );
    for l in &lines {
        let fields = [
            csv_field(&l.day),
            csv_field(&l.project_id),
            csv_field(&l.api_key_id),
            csv_field(&l.path),
            csv_field(&l.provider),
            l.requests.to_string(),
            l.input_tokens.to_string(),
            l.output_tokens.to_string(),
            l.cached_tokens.to_string(),
            l.reasoning_tokens.to_string(),
            l.credits.clone(),
        ];
        out.push_str(&fields.join(","));
        out.push('\n');
    }
    csv_download(out, &format!("usage-{account}-{days}d.csv"))
}

/// A CSV answer the browser saves as `name`.
fn csv_download(body: String, name: &str) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    let h = response.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        h.insert(CONTENT_DISPOSITION, v);
    }
    page_headers(&mut response);
    response
}

async fn accounts(State(state): State<AppState>, signed: Signed) -> Response {
    if let Err(page) = signed.admin_for(Method::GET, "/admin/accounts/_") {
        return *page;
    }
    match state.read_model.accounts(200).await {
        Ok(accounts) => html(
            StatusCode::OK,
            "accounts.html",
            context! { frame => signed.frame("accounts"), accounts => ser(&accounts) },
        ),
        Err(e) => api_error_page(&signed, unavailable(e)),
    }
}

/// Credits typed into a form, checked as the admin API checks them.
fn form_credits(text: &str, param: &str) -> Result<NanoCredits, ApiError> {
    if text.is_empty() {
        return Ok(NanoCredits::ZERO);
    }
    let raw = serde_json::value::to_raw_value(text)
        .map_err(|_| ApiError::invalid(format!("'{param}' is not a number"), Some(param)))?;
    crate::api::admin::parse_credits(&raw, param)
}

async fn create_account(State(state): State<AppState>, signed: Signed, body: RawBody) -> Response {
    let (admin, form) = match admin_form(&signed, Method::POST, "/admin/accounts", &body) {
        Ok(signed_form) => signed_form,
        Err(page) => return *page,
    };
    let credits = match form_credits(form.get("credits"), "credits") {
        Ok(c) => c,
        Err(e) => return api_error_page(&signed, e),
    };
    match state
        .admin
        .acting_as(&admin.id)
        .open_account(form.get("name"), credits, &admin.id)
        .await
    {
        Ok(account) => redirect(&format!("/dashboard/accounts/{}", account.id)),
        Err(e) => api_error_page(&signed, e.into()),
    }
}

async fn account_page(
    state: &AppState,
    signed: &Signed,
    id: &str,
    new_key: Option<(String, String)>,
) -> Response {
    let (account, balance, keys, budgets) = match tokio::try_join!(
        state.admin.account(id),
        state.admin.balance(id),
        state.admin.keys(Some(id)),
        state.admin.budgets_on(SpendScope::Account, id),
    ) {
        Ok(found) => found,
        Err(e) => return api_error_page(signed, e.into()),
    };
    let balance = context! {
        available => NanoCredits(balance.available_nano).to_string(),
        held => NanoCredits(balance.held_nano).to_string(),
        spent => NanoCredits(balance.spent_nano).to_string(),
        granted => NanoCredits(balance.granted_nano).to_string(),
    };
    let status = if new_key.is_some() {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    html(
        status,
        "account.html",
        context! {
            frame => signed.frame("accounts"), account => ser(&account), balance, keys => ser(&keys),
            budgets => ser(&budgets.iter().map(|b| context! {
                id => b.id.clone(), scope => b.scope.clone(), scope_id => b.scope_id.clone(),
                limit => NanoCredits(b.limit_nano).to_string(),
                soft_limit => b.soft_limit_nano.map(|n| NanoCredits(n).to_string()),
                period => b.period.clone(), timezone => b.timezone.clone(),
            }).collect::<Vec<_>>()),
            new_key => new_key.map(|(id, secret)| context! { id, secret }),
        },
    )
}

async fn account(
    State(state): State<AppState>,
    signed: Signed,
    Path(id): Path<String>,
) -> Response {
    if let Err(page) = signed.admin_for(Method::GET, "/admin/accounts/_") {
        return *page;
    }
    account_page(&state, &signed, &id, None).await
}

/// Journal entries per page of the statement page.
const STATEMENT_PAGE: i64 = 50;

/// A query's parameters by name.
fn query_of(uri: &Uri) -> HashMap<String, String> {
    uri.query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

/// The query of a statement page or download, for a viewer whose role may read statements.
fn statement_query(signed: &Signed, uri: &Uri) -> Result<HashMap<String, String>, Page> {
    signed.admin_for(Method::GET, "/admin/ledger/statements")?;
    Ok(query_of(uri))
}

/// `days` of a statement query: 1 to 366, 31 when absent.
fn statement_days(q: &HashMap<String, String>) -> Result<i64, ApiError> {
    match q.get("days").map(|d| d.parse::<i64>()) {
        None => Ok(31),
        Some(Ok(d)) if (1..=366).contains(&d) => Ok(d),
        Some(_) => Err(ApiError::invalid(
            "'days' must be a whole number from 1 to 366",
            Some("days"),
        )),
    }
}

/// The statement page of an account: its balance at the end of each day of the window
/// (`ledger_daily`), and its journal newest first, a page at a time along the account's index
/// (`?before=ENTRY_ID`), each entry with its effect on the balance.
async fn statement(
    State(state): State<AppState>,
    signed: Signed,
    Path(id): Path<String>,
    uri: Uri,
) -> Response {
    let q = match statement_query(&signed, &uri) {
        Ok(q) => q,
        Err(page) => return *page,
    };
    let days = match statement_days(&q) {
        Ok(d) => d,
        Err(e) => return api_error_page(&signed, e),
    };
    let before = match q.get("before").map(|b| b.parse::<i64>()) {
        None => i64::MAX,
        Some(Ok(b)) if b > 0 => b,
        Some(_) => {
            return api_error_page(
                &signed,
                ApiError::invalid("'before' must be an entry id", Some("before")),
            );
        }
    };
    let account = match state.admin.account(&id).await {
        Ok(a) => a,
        Err(e) => return api_error_page(&signed, e.into()),
    };
    let now = lumina_schemas::now_micros();
    let first_day = lumina_ledger::store::day_of(now - (days - 1) * 86_400_000_000);
    let today = lumina_ledger::store::day_of(now);
    let ledger_unavailable =
        |e: sqlx::Error| ApiError::Unavailable(format!("ledger unavailable: {e}"));
    let (daily, entries) = match tokio::try_join!(
        state.ledger.daily(&id, &first_day, &today),
        state.ledger.recent_entries(&id, before, STATEMENT_PAGE),
    ) {
        Ok(found) => found,
        Err(e) => return api_error_page(&signed, ledger_unavailable(e)),
    };
    let credits = |n: i64| NanoCredits(n).to_string();
    let mut previous: Option<lumina_ledger::Balance> = None;
    let daily_rows: Vec<minijinja::Value> = daily
        .iter()
        .map(|d| {
            let b = &d.balance;
            let moved = previous.map(|p| {
                context! {
                    spent => credits(b.spent_nano - p.spent_nano),
                    granted => credits(b.granted_nano - p.granted_nano),
                }
            });
            previous = Some(*b);
            context! {
                day => d.day.clone(), available => credits(b.available_nano),
                held => credits(b.held_nano), spent => credits(b.spent_nano),
                granted => credits(b.granted_nano), moved,
            }
        })
        .collect();
    let entry_rows: Vec<minijinja::Value> = entries
        .iter()
        .map(|e| {
            let d = e.delta(&id);
            context! {
                id => e.id,
                at => chrono::DateTime::from_timestamp_micros(e.occurred_at)
                    .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                    .unwrap_or_default(),
                kind => e.kind.clone(), request_id => e.request_id.clone(),
                available => credits(d.available_nano), held => credits(d.held_nano),
                spent => credits(d.spent_nano), granted => credits(d.granted_nano),
            }
        })
        .collect();
    let older = (entries.len() as i64 == STATEMENT_PAGE)
        .then(|| entries.last().map(|e| e.id))
        .flatten();
    html(
        StatusCode::OK,
        "statement.html",
        context! {
            frame => signed.frame("accounts"), account => ser(&account), days,
            first_day, today, daily => daily_rows, entries => entry_rows, older,
        },
    )
}

/// The statement of `?from=YYYY-MM-DD&to=YYYY-MM-DD` (UTC days, inclusive; the statement
/// window by default) as the admin API's CSV, downloaded.
async fn statement_csv(
    State(state): State<AppState>,
    signed: Signed,
    Path(id): Path<String>,
    uri: Uri,
) -> Response {
    let q = match statement_query(&signed, &uri) {
        Ok(q) => q,
        Err(page) => return *page,
    };
    let now = lumina_schemas::now_micros();
    let day = |name: &str, default: i64| -> Result<i64, ApiError> {
        match q.get(name).filter(|v| !v.is_empty()) {
            None => Ok(default),
            Some(v) => chrono::NaiveDate::parse_from_str(v, "%Y-%m-%d")
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .map(|t| t.and_utc().timestamp_micros())
                .ok_or_else(|| {
                    ApiError::invalid(format!("'{name}' must be a day, YYYY-MM-DD"), Some(name))
                }),
        }
    };
    let window = match statement_days(&q) {
        Ok(d) => d,
        Err(e) => return api_error_page(&signed, e),
    };
    let today = now.div_euclid(86_400_000_000) * 86_400_000_000;
    let (from, to) = match (
        day("from", today - (window - 1) * 86_400_000_000),
        day("to", today),
    ) {
        (Ok(f), Ok(t)) if t >= f => (f, t + 86_400_000_000),
        (Ok(_), Ok(_)) => {
            return api_error_page(
                &signed,
                ApiError::invalid("'to' must not be before 'from'", Some("to")),
            );
        }
        (Err(e), _) | (_, Err(e)) => return api_error_page(&signed, e),
    };
    if let Err(e) = state.admin.account(&id).await {
        return api_error_page(&signed, e.into());
    }
    let st = match state.ledger.statement(&id, from, to).await {
        Ok(st) => st,
        Err(e) => {
            return api_error_page(
                &signed,
                ApiError::Unavailable(format!("ledger unavailable: {e}")),
            );
        }
    };
    let name = format!(
        "statement-{id}-{}-{}.csv",
        lumina_ledger::store::day_of(from),
        lumina_ledger::store::day_of(to - 1)
    );
    csv_download(crate::api::ledger::statement_csv(&st), &name)
}

async fn grant_credits(
    State(state): State<AppState>,
    signed: Signed,
    Path(id): Path<String>,
    body: RawBody,
) -> Response {
    let (admin, form) = match admin_form(
        &signed,
        Method::POST,
        &format!("/admin/accounts/{id}/credits"),
        &body,
    ) {
        Ok(signed_form) => signed_form,
        Err(page) => return *page,
    };
    let amount = match form_credits(form.get("amount"), "amount") {
        Ok(c) => c,
        Err(e) => return api_error_page(&signed, e),
    };
    let reason = Some(form.get("reason").to_string()).filter(|r| !r.is_empty());
    match state
        .admin
        .acting_as(&admin.id)
        .grant_credits(&id, amount, reason, &admin.id)
        .await
    {
        Ok(_) => redirect(&format!("/dashboard/accounts/{id}")),
        Err(e) => api_error_page(&signed, e.into()),
    }
}

async fn create_key(
    State(state): State<AppState>,
    signed: Signed,
    Path(id): Path<String>,
    body: RawBody,
) -> Response {
    let (admin, form) = match admin_form(&signed, Method::POST, "/admin/keys", &body) {
        Ok(signed_form) => signed_form,
        Err(page) => return *page,
    };
    let (rpm, tpm) = match (form_count(&form, "rpm"), form_count(&form, "tpm")) {
        (Ok(r), Ok(t)) => (r, t),
        (Err(e), _) | (_, Err(e)) => return api_error_page(&signed, e),
    };
    let request = KeyRequest {
        account_id: id.clone(),
        name: form.get("name").to_string(),
        rpm,
        tpm,
        store_content: form.get("store_content") == "on",
        ..KeyRequest::default()
    };
    match state.admin.acting_as(&admin.id).create_key(request).await {
        // The key is shown once, on this answer only (never cached: no-store).
        Ok((row, secret)) => account_page(&state, &signed, &id, Some((row.id, secret))).await,
        Err(e) => api_error_page(&signed, e.into()),
    }
}

async fn revoke_key(
    State(state): State<AppState>,
    signed: Signed,
    Path(id): Path<String>,
    body: RawBody,
) -> Response {
    let (admin, _) = match admin_form(&signed, Method::DELETE, &format!("/admin/keys/{id}"), &body)
    {
        Ok(signed_form) => signed_form,
        Err(page) => return *page,
    };
    match state.admin.acting_as(&admin.id).revoke_key(&id).await {
        Ok(row) => redirect(&format!("/dashboard/accounts/{}", row.account_id)),
        Err(e) => api_error_page(&signed, e.into()),
    }
}

/// A positive whole number typed into a form field, or nothing.
fn form_count(form: &Form, name: &'static str) -> Result<Option<i64>, ApiError> {
    match form.get(name) {
        "" => Ok(None),
        v => v
            .parse::<i64>()
            .ok()
            .filter(|n| *n > 0)
            .map(Some)
            .ok_or_else(|| {
                ApiError::invalid(
                    format!("'{name}' must be a positive whole number"),
                    Some(name),
                )
            }),
    }
}

async fn change_limits(
    State(state): State<AppState>,
    signed: Signed,
    Path(id): Path<String>,
    body: RawBody,
) -> Response {
    let (admin, form) = match admin_form(
        &signed,
        Method::POST,
        &format!("/admin/keys/{id}/limits"),
        &body,
    ) {
        Ok(signed_form) => signed_form,
        Err(page) => return *page,
    };
    let (rpm, tpm) = match (form_count(&form, "rpm"), form_count(&form, "tpm")) {
        (Ok(r), Ok(t)) => (r, t),
        (Err(e), _) | (_, Err(e)) => return api_error_page(&signed, e),
    };
    match state
        .admin
        .acting_as(&admin.id)
        .change_limits(&id, rpm, tpm)
        .await
    {
        Ok(row) => redirect(&format!("/dashboard/accounts/{}", row.account_id)),
        Err(e) => api_error_page(&signed, e.into()),
    }
}

async fn set_budget(
    State(state): State<AppState>,
    signed: Signed,
    Path(id): Path<String>,
    body: RawBody,
) -> Response {
    let (admin, form) = match admin_form(
        &signed,
        Method::POST,
        &format!("/admin/accounts/{id}/budgets"),
        &body,
    ) {
        Ok(signed_form) => signed_form,
        Err(page) => return *page,
    };
    let limit = match form_credits(form.get("limit"), "limit") {
        Ok(l) => l,
        Err(e) => return api_error_page(&signed, e),
    };
    let soft_limit = match form.get("soft_limit") {
        "" => None,
        text => match form_credits(text, "soft_limit") {
            Ok(l) => Some(l),
            Err(e) => return api_error_page(&signed, e),
        },
    };
    let request = BudgetRequest {
        limit,
        period: form.get("period").to_string(),
        timezone: Some(form.get("timezone").to_string()).filter(|t| !t.is_empty()),
        soft_limit,
    };
    match state
        .admin
        .acting_as(&admin.id)
        .set_budget(SpendScope::Account, &id, None, request)
        .await
    {
        Ok(_) => redirect(&format!("/dashboard/accounts/{id}")),
        Err(e) => api_error_page(&signed, e.into()),
    }
}

/// Events the tail shows, newest first.
const TAIL: u64 = 50;

async fn events(State(state): State<AppState>, signed: Signed) -> Response {
    if let Err(page) = signed.admin_for(Method::GET, "/admin/requests") {
        return *page;
    }
    let log = state.log.clone();
    let read = tokio::task::spawn_blocking(move || {
        let reader = log.reader()?;
        let end = reader.end_position_blocking()?;
        reader.read_after_blocking(end.saturating_sub(TAIL), TAIL as usize)
    })
    .await;
    let entries = match read {
        Ok(Ok(entries)) => entries,
        Ok(Err(e)) => return api_error_page(&signed, unavailable(e)),
        Err(e) => return api_error_page(&signed, unavailable(e)),
    };
    let rows: Vec<minijinja::Value> = entries
        .iter()
        .rev()
        .map(|entry| {
            let (request_id, payload) = match lumina_schemas::decode(&entry.bytes) {
                Ok(decoded) => {
                    let json = serde_json::to_value(&decoded.event).unwrap_or_default();
                    let payload = json["payload"].to_string();
                    let shown: String = payload.chars().take(240).collect();
                    (
                        json["request_id"].as_str().map(str::to_string),
                        if shown.len() < payload.len() {
                            format!("{shown}…")
                        } else {
                            shown
                        },
                    )
                }
                Err(e) => (None, format!("(undecodable: {e})")),
            };
            let at = chrono::DateTime::from_timestamp_micros(entry.appended_at)
                .map(|t| t.format("%H:%M:%S%.3f").to_string())
                .unwrap_or_default();
            context! {
                position => entry.position, event_type => entry.event_type.clone(),
                account_id => entry.account_id.clone(), request_id, payload, at,
            }
        })
        .collect();
    html(
        StatusCode::OK,
        "events.html",
        context! { frame => signed.frame("events"), rows },
    )
}

/// A deployment as the providers page shows it.
#[derive(Serialize)]
struct DeploymentLine {
    id: String,
    provider: String,
    kind: &'static str,
    breaker: &'static str,
    requests: i64,
    error_rate: f64,
    timeout_rate: f64,
    latency_p50: Option<f64>,
    latency_p99: Option<f64>,
}

async fn providers(State(state): State<AppState>, signed: Signed) -> Response {
    if let Err(page) = signed.admin_for(Method::GET, "/admin/routes/stats") {
        return *page;
    }
    let stats = match state.read_model.route_stats().await {
        Ok(s) => s,
        Err(e) => return api_error_page(&signed, unavailable(e)),
    };
    let lines: Vec<DeploymentLine> = state
        .routes
        .every_deployment()
        .into_iter()
        .map(|d| {
            let mine: Vec<_> = stats.iter().filter(|s| s.deployment == d.id).collect();
            let attempts: i64 = mine.iter().map(|s| s.attempts).sum();
            let weighted = |f: fn(&lumina_projector::views::RouteStatsView) -> f64| {
                if attempts == 0 {
                    0.0
                } else {
                    mine.iter().map(|s| f(s) * s.attempts as f64).sum::<f64>() / attempts as f64
                }
            };
            let busiest = mine.iter().max_by_key(|s| s.requests);
            DeploymentLine {
                id: d.id.clone(),
                provider: d.provider_name.clone(),
                kind: d.kind.as_str(),
                breaker: d.breaker.state().as_str(),
                requests: mine.iter().map(|s| s.requests).sum(),
                error_rate: (weighted(|s| s.error_rate) * 1000.0).round() / 10.0,
                timeout_rate: (weighted(|s| s.timeout_rate) * 1000.0).round() / 10.0,
                latency_p50: busiest.and_then(|s| s.latency_ms.p50),
                latency_p99: busiest.and_then(|s| s.latency_ms.p99),
            }
        })
        .collect();
    html(
        StatusCode::OK,
        "providers.html",
        context! { frame => signed.frame("providers"), lines => ser(&lines) },
    )
}

/// A published policy's document, or the shipped one's (`None`: not found or unreadable).
fn document_of(rows: &[PolicyRow], version: i64) -> Option<PolicyDocument> {
    match rows.iter().find(|p| p.version == version) {
        Some(row) => serde_json::from_str(&row.snapshot_json).ok(),
        None => serde_json::from_str(DEFAULT_POLICY_JSON)
            .ok()
            .filter(|d: &PolicyDocument| d.version == version),
    }
}

async fn policies(State(state): State<AppState>, signed: Signed, uri: Uri) -> Response {
    if let Err(page) = signed.admin_for(Method::GET, "/admin/policies") {
        return *page;
    }
    let rows = match state.admin.policies().await {
        Ok(rows) => rows,
        Err(e) => return api_error_page(&signed, e.into()),
    };
    let running = state.routes.policy_version();
    // `?diff=V`: what V changes against the policy in force.
    let diff = uri
        .query()
        .and_then(|q| form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "diff"))
        .and_then(|(_, v)| v.parse::<i64>().ok())
        .map(|version| {
            let lines = match (document_of(&rows, running), document_of(&rows, version)) {
                (Some(a), Some(b)) => diff_lines(&a, &b),
                _ => vec![format!("v{version} is not a published policy")],
            };
            context! { version, lines }
        });
    let shown: Vec<minijinja::Value> = rows
        .iter()
        .map(|p| {
            let published = chrono::DateTime::from_timestamp_micros(p.published_at)
                .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
                .unwrap_or_default();
            context! { version => p.version, reason => p.reason.clone(), active => p.active, published }
        })
        .collect();
    html(
        StatusCode::OK,
        "policies.html",
        context! { frame => signed.frame("policies"), rows => shown, running, diff },
    )
}

async fn publish_policy(State(state): State<AppState>, signed: Signed, body: RawBody) -> Response {
    let (admin, form) = match admin_form(&signed, Method::POST, "/admin/policies", &body) {
        Ok(signed_form) => signed_form,
        Err(page) => return *page,
    };
    let document: serde_json::Value = match serde_json::from_str(form.get("policy")) {
        Ok(d) => d,
        Err(e) => {
            return api_error_page(
                &signed,
                ApiError::invalid(format!("not JSON: {e}"), Some("policy")),
            );
        }
    };
    let reason = match form.get("reason") {
        "" => "published from the dashboard",
        r => r,
    };
    match crate::api::policies::publish_document(
        &state,
        &state.admin.acting_as(&admin.id),
        reason,
        document,
    )
    .await
    {
        Ok(_) => redirect("/dashboard/policies"),
        Err(e) => api_error_page(&signed, e),
    }
}

async fn activate_policy(
    State(state): State<AppState>,
    signed: Signed,
    Path(version): Path<i64>,
    body: RawBody,
) -> Response {
    let path = format!("/admin/policies/{version}/activate");
    let (admin, _) = match admin_form(&signed, Method::POST, &path, &body) {
        Ok(signed_form) => signed_form,
        Err(page) => return *page,
    };
    match crate::api::policies::activate_version(
        &state,
        &state.admin.acting_as(&admin.id),
        version,
        "activated from the dashboard",
    )
    .await
    {
        Ok(_) => redirect("/dashboard/policies"),
        Err(e) => api_error_page(&signed, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_compiles() {
        for name in [
            "layout.html",
            "login.html",
            "overview.html",
            "requests.html",
            "request.html",
            "usage.html",
            "accounts.html",
            "account.html",
            "providers.html",
            "policies.html",
            "events.html",
            "error.html",
        ] {
            assert!(templates().get_template(name).is_ok(), "{name}");
        }
    }

    #[tokio::test]
    async fn a_page_escapes_what_it_shows() {
        use http_body_util::BodyExt;
        let page = html(
            StatusCode::OK,
            "login.html",
            context! { csrf => "c", error => "<script>alert(1)</script>" },
        );
        assert_eq!(page.status(), StatusCode::OK);
        assert_eq!(
            page.headers()[CACHE_CONTROL],
            HeaderValue::from_static("no-store")
        );
        assert!(
            page.headers()[CONTENT_SECURITY_POLICY]
                .to_str()
                .unwrap_or_default()
                .contains("default-src 'none'")
        );
        let body = page.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&body);
        assert!(text.contains("&lt;script&gt;alert(1)"), "{text}");
        assert!(!text.contains("<script>"), "{text}");
    }

    #[test]
    fn every_page_renders_with_data() {
        let frame =
            context! { who => "adm_1", role => "owner", admin => true, csrf => "c", active => "" };
        let event = context! { position => 1, event_type => "RequestSettled", account_id => "acct_1", request_id => "req_1", payload => "{}", at => "00:00:00.000" };
        for (name, ctx) in [
            (
                "events.html",
                context! { frame => frame.clone(), rows => vec![event] },
            ),
            (
                "policies.html",
                context! { frame => frame.clone(), rows => Vec::<minijinja::Value>::new(), running => 2 },
            ),
            (
                "error.html",
                context! { frame => frame.clone(), message => "m", status => 403 },
            ),
        ] {
            let rendered = templates().get_template(name).and_then(|t| t.render(ctx));
            assert!(rendered.is_ok(), "{name}: {rendered:?}");
        }
    }

    #[test]
    fn csv_fields_are_quoted_and_never_formulas() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("=HYPERLINK(1)"), "'=HYPERLINK(1)");
    }
}
