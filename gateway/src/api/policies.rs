//! The routing-policy admin API: publish a policy document (`POST /admin/policies`), list and
//! show the published versions, and make an earlier one active again
//! (`POST /admin/policies/{version}/activate`). A document is validated whole (its shape, and
//! that every deployment it names is one of this gateway's) before anything is recorded; once
//! recorded it is put in force here at once, and every other gateway takes it from the read
//! model within its refresh interval.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use lumina_projector::policies::PolicyRow;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::api::error::ApiError;
use crate::api::extract::{AdminKey, ApiJson, ApiQuery};
use crate::routing::policy::{Policy, PolicyDocument};
use crate::state::AppState;

/// A policy as the admin API shows it.
#[derive(Serialize)]
pub struct PolicyView {
    object: &'static str,
    version: i64,
    reason: String,
    published_at: i64,
    activated_at: Option<i64>,
    active: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    policy: Option<Box<RawValue>>,
}

fn view(row: PolicyRow, with_document: bool) -> PolicyView {
    let policy = with_document
        .then(|| RawValue::from_string(row.snapshot_json).ok())
        .flatten();
    PolicyView {
        object: "routing_policy",
        version: row.version,
        reason: row.reason,
        published_at: row.published_at.div_euclid(1_000_000),
        activated_at: row.activated_at.map(|t| t.div_euclid(1_000_000)),
        active: row.active,
        policy,
    }
}

/// `?reason=` of a publication or an activation.
#[derive(Deserialize)]
pub struct Reason {
    #[serde(default)]
    reason: Option<String>,
}

fn reason(query: &Reason, default: &str) -> Result<String, ApiError> {
    let reason = query.reason.as_deref().unwrap_or(default).trim();
    if reason.is_empty() || reason.chars().count() > 256 {
        return Err(ApiError::invalid(
            "'reason' must be 1 to 256 characters",
            Some("reason"),
        ));
    }
    Ok(reason.to_string())
}

/// Validates a document for this gateway: its shape, and the deployments it names.
fn validate(state: &AppState, doc: &PolicyDocument) -> Result<Arc<Policy>, ApiError> {
    let policy = Policy::from_document(doc)
        .map(Arc::new)
        .map_err(|e| ApiError::invalid(e.to_string(), Some("policy")))?;
    state
        .routes
        .check(policy.clone())
        .map_err(|e| ApiError::invalid(format!("invalid routing policy: {e}"), Some("policy")))?;
    Ok(policy)
}

/// `POST /admin/policies`: the body is a policy document. A refusal is counted in
/// `lumina_policy_refused_total`.
pub async fn publish(
    State(state): State<AppState>,
    admin: AdminKey,
    ApiQuery(query): ApiQuery<Reason>,
    ApiJson(document): ApiJson<serde_json::Value>,
) -> Result<(StatusCode, Json<PolicyView>), ApiError> {
    let reason = reason(&query, "published")?;
    let published = publish_document(&state, &admin.admin(&state), &reason, document).await;
    Ok((StatusCode::CREATED, Json(view(published?, false))))
}

/// Publishes `document` through `admin` (validated whole first; a refusal is counted in
/// `lumina_policy_refused_total`) and puts it in force here when it is the active one.
pub(crate) async fn publish_document(
    state: &AppState,
    admin: &crate::admin::Admin,
    reason: &str,
    document: serde_json::Value,
) -> Result<PolicyRow, ApiError> {
    let published = publish_checked(state, admin, reason, document).await;
    if published.is_err() {
        metrics::counter!("lumina_policy_refused_total", "source" => "admin").increment(1);
    }
    published
}

async fn publish_checked(
    state: &AppState,
    admin: &crate::admin::Admin,
    reason: &str,
    document: serde_json::Value,
) -> Result<PolicyRow, ApiError> {
    let doc: PolicyDocument = serde_json::from_value(document)
        .map_err(|e| ApiError::invalid(format!("not a routing policy: {e}"), Some("policy")))?;
    let shipped = crate::routing::policy::default_policy().version;
    if doc.version <= shipped {
        return Err(ApiError::invalid(
            format!(
                "'version' must be higher than the shipped policy's ({shipped}); got {}",
                doc.version
            ),
            Some("version"),
        ));
    }
    let policy = validate(state, &doc)?;
    let snapshot = doc
        .to_json()
        .map_err(|e| ApiError::Internal(format!("cannot render the policy: {e}")))?;
    let row = admin.publish_policy(doc.version, snapshot, reason).await?;
    install_if_active(state, &row, policy);
    Ok(row)
}

/// `POST /admin/policies/{version}/activate`.
pub async fn activate(
    State(state): State<AppState>,
    admin: AdminKey,
    Path(version): Path<i64>,
    ApiQuery(query): ApiQuery<Reason>,
) -> Result<Json<PolicyView>, ApiError> {
    let reason = reason(&query, "rollback")?;
    let row = activate_version(&state, &admin.admin(&state), version, &reason).await?;
    Ok(Json(view(row, false)))
}

/// Makes the published `version` the active policy again through `admin` (validated for this
/// gateway first) and puts it in force here.
pub(crate) async fn activate_version(
    state: &AppState,
    admin: &crate::admin::Admin,
    version: i64,
    reason: &str,
) -> Result<PolicyRow, ApiError> {
    let row = state.admin.policy(version).await?;
    let doc: PolicyDocument = serde_json::from_str(&row.snapshot_json)
        .map_err(|e| ApiError::invalid(format!("not a routing policy: {e}"), Some("version")))?;
    let policy = validate(state, &doc)?;
    let row = admin.activate_policy(version, reason).await?;
    install_if_active(state, &row, policy);
    Ok(row)
}

/// Puts `policy` in force here when the read model says it is the active one (another
/// activation may have come in between).
fn install_if_active(state: &AppState, row: &PolicyRow, policy: Arc<Policy>) {
    if row.active
        && let Err(e) = state.routes.install(policy)
    {
        tracing::error!(error = %e, version = row.version, "cannot put the policy in force");
    }
}

/// `GET /admin/policies`.
pub async fn list(
    State(state): State<AppState>,
    _admin: AdminKey,
) -> Result<Json<serde_json::Value>, ApiError> {
    let rows = state.admin.policies().await?;
    let data: Vec<PolicyView> = rows.into_iter().map(|r| view(r, false)).collect();
    Ok(Json(serde_json::json!({
        "object": "list",
        "data": data,
        "in_force": state.routes.policy_version(),
    })))
}

/// `GET /admin/policies/{version}` (`active` for the one in force).
pub async fn show(
    State(state): State<AppState>,
    _admin: AdminKey,
    Path(version): Path<String>,
) -> Result<Json<PolicyView>, ApiError> {
    let version = if version == "active" {
        state.routes.policy_version()
    } else {
        version.parse().map_err(|_| {
            ApiError::invalid(
                format!("'{version}' is not a policy version"),
                Some("version"),
            )
        })?
    };
    match state.admin.policy(version).await {
        Ok(row) => Ok(Json(view(row, true))),
        // The shipped policy is in force until one is published.
        Err(crate::admin::AdminError::NotFound { .. })
            if version == crate::routing::policy::default_policy().version =>
        {
            Ok(Json(PolicyView {
                object: "routing_policy",
                version,
                reason: "shipped".into(),
                published_at: 0,
                activated_at: None,
                active: state.routes.policy_version() == version,
                policy: RawValue::from_string(
                    crate::routing::policy::DEFAULT_POLICY_JSON.to_string(),
                )
                .ok(),
            }))
        }
        Err(e) => Err(e.into()),
    }
}
