//! `GET /v1/models` and `GET /v1/models/{id}` in OpenAI's shapes.

use axum::Json;
use axum::extract::{Path, State};
use serde::Serialize;

use crate::api::error::ApiError;
use crate::api::extract::CustomerKey;
use crate::auth::KeyIdentity;
use crate::routing::catalog::{CATALOG_CREATED, CatalogEntry, ModelChoice, RoutePath};
use crate::state::AppState;

/// One model object.
#[derive(Serialize)]
pub struct ModelObject {
    id: &'static str,
    object: &'static str,
    created: i64,
    owned_by: &'static str,
}

impl From<&CatalogEntry> for ModelObject {
    fn from(e: &CatalogEntry) -> Self {
        ModelObject {
            id: e.id,
            object: "model",
            created: CATALOG_CREATED,
            owned_by: "lumina",
        }
    }
}

/// The model list.
#[derive(Serialize)]
pub struct ModelList {
    object: &'static str,
    data: Vec<ModelObject>,
}

/// The catalog's entries `key` may use (`lumina-fusion` only when it is not barred from it).
fn offered<'a>(
    state: &'a AppState,
    key: &'a KeyIdentity,
) -> impl Iterator<Item = &'static CatalogEntry> + 'a {
    state
        .catalog
        .entries()
        .filter(move |e| !(key.fusion_barred && e.choice == ModelChoice::Path(RoutePath::Fusion)))
}

/// Lists the catalog for a customer key.
pub async fn list(State(state): State<AppState>, key: CustomerKey) -> Json<ModelList> {
    Json(ModelList {
        object: "list",
        data: offered(&state, &key.0).map(ModelObject::from).collect(),
    })
}

/// One model of the catalog.
pub async fn retrieve(
    State(state): State<AppState>,
    key: CustomerKey,
    Path(id): Path<String>,
) -> Result<Json<ModelObject>, ApiError> {
    offered(&state, &key.0)
        .find(|e| e.id == id)
        .map(|e| Json(ModelObject::from(e)))
        .ok_or_else(|| ApiError::NotFound {
            message: format!("The model '{id}' does not exist"),
            param: Some("model".into()),
        })
}
