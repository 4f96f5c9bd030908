//! Package routes: versions, manifests, distribution, status.

use super::extract::ApiJson;
use crate::error::Result;
use crate::service::auth::Principal;
use crate::service::{local_ingest, packages, status};
use crate::state::AppState;
use axum::extract::{Path, State};
use axum::Json;
use cascade_protocol::{
    DistributeRequest, LocalIngestReport, LocalIngestRequest, NewVersionRequest, PackageDetail,
    PackageStatus, PackageSummary, RefreshRequest, SignedManifestWire, StatusRecord, TargetReport,
    VersionInfo,
};

/// `POST /api/v1/packages`.
pub async fn new_version(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(request): ApiJson<NewVersionRequest>,
) -> Result<Json<VersionInfo>> {
    principal.require_admin()?;
    Ok(Json(packages::new_version(&state, request).await?))
}

/// `POST /api/v1/ingest/local`.
pub async fn ingest_local(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(request): ApiJson<LocalIngestRequest>,
) -> Result<Json<LocalIngestReport>> {
    principal.require_admin()?;
    Ok(Json(local_ingest::ingest(&state, request).await?))
}

/// `GET /api/v1/packages`.
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<Vec<PackageSummary>>> {
    principal.require_admin()?;
    Ok(Json(packages::list(&state).await?))
}

/// `GET /api/v1/packages/{name}`.
pub async fn show(
    State(state): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
) -> Result<Json<PackageDetail>> {
    principal.require_admin()?;
    Ok(Json(packages::show(&state, &name).await?))
}

/// `GET /api/v1/packages/{name}/versions/{version}/manifest`: for anyone
/// with a credential (DPs, agents and child sites verify it themselves).
pub async fn manifest(
    State(state): State<AppState>,
    _principal: Principal,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<SignedManifestWire>> {
    Ok(Json(packages::manifest(&state, &name, &version).await?))
}

/// `POST /api/v1/packages/{name}/distribute`.
pub async fn distribute(
    State(state): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
    ApiJson(request): ApiJson<DistributeRequest>,
) -> Result<Json<TargetReport>> {
    principal.require_admin()?;
    Ok(Json(packages::distribute(&state, &name, &request).await?))
}

/// `POST /api/v1/packages/{name}/refresh`.
pub async fn refresh(
    State(state): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
    ApiJson(request): ApiJson<RefreshRequest>,
) -> Result<Json<TargetReport>> {
    principal.require_admin()?;
    Ok(Json(packages::refresh(&state, &name, &request).await?))
}

/// `GET /api/v1/packages/{name}/status`.
pub async fn status(
    State(state): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
) -> Result<Json<PackageStatus>> {
    principal.require_admin()?;
    Ok(Json(status::package_status(&state, &name).await?))
}

/// `GET /api/v1/packages/{name}/messages`.
pub async fn messages(
    State(state): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
) -> Result<Json<Vec<StatusRecord>>> {
    principal.require_admin()?;
    Ok(Json(status::package_messages(&state, &name).await?))
}
