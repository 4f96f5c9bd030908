//! Collection routes.

use super::extract::ApiJson;
use crate::error::Result;
use crate::service::auth::Principal;
use crate::service::collections;
use crate::state::AppState;
use axum::extract::{Path, State};
use axum::Json;
use cascade_protocol::{CollectionInfo, CollectionRequest, WindowSpec};

/// `POST /api/v1/collections`.
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(request): ApiJson<CollectionRequest>,
) -> Result<Json<CollectionInfo>> {
    principal.require_admin()?;
    Ok(Json(collections::create(&state, &request).await?))
}

/// `GET /api/v1/collections`.
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<Vec<CollectionInfo>>> {
    principal.require_admin()?;
    Ok(Json(collections::list(&state).await?))
}

/// `GET /api/v1/collections/{name}`.
pub async fn show(
    State(state): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
) -> Result<Json<CollectionInfo>> {
    principal.require_admin()?;
    Ok(Json(collections::show(&state, &name).await?))
}

/// `POST /api/v1/collections/{name}/windows`: adds a maintenance window.
pub async fn add_window(
    State(state): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
    ApiJson(window): ApiJson<WindowSpec>,
) -> Result<Json<CollectionInfo>> {
    principal.require_admin()?;
    Ok(Json(collections::add_window(&state, &name, &window).await?))
}

/// `DELETE /api/v1/collections/{name}/windows`: removes them all.
pub async fn clear_windows(
    State(state): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
) -> Result<Json<CollectionInfo>> {
    principal.require_admin()?;
    Ok(Json(collections::clear_windows(&state, &name).await?))
}

/// `POST /api/v1/collections/{name}/edit`: a new definition.
pub async fn edit(
    State(state): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
    ApiJson(mut request): ApiJson<CollectionRequest>,
) -> Result<Json<CollectionInfo>> {
    principal.require_admin()?;
    request.name = name;
    Ok(Json(collections::edit(&state, &request).await?))
}
