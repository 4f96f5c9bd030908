//! Job routes.

use super::extract::ApiJson;
use crate::error::Result;
use crate::service::auth::Principal;
use crate::service::jobs;
use crate::state::AppState;
use axum::extract::{Path, State};
use axum::Json;
use cascade_protocol::{JobEditRequest, JobInfo, JobRequest, JobStatus};

/// `POST /api/v1/jobs`.
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(request): ApiJson<JobRequest>,
) -> Result<Json<JobInfo>> {
    principal.require_admin()?;
    Ok(Json(jobs::create(&state, &request).await?))
}

/// `GET /api/v1/jobs`.
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<Vec<JobInfo>>> {
    principal.require_admin()?;
    Ok(Json(jobs::list(&state).await?))
}

/// `POST /api/v1/jobs/{id}/edit`.
pub async fn edit(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<u64>,
    ApiJson(request): ApiJson<JobEditRequest>,
) -> Result<Json<JobInfo>> {
    principal.require_admin()?;
    Ok(Json(jobs::edit(&state, id, &request).await?))
}

/// `POST /api/v1/jobs/{id}/cancel`.
pub async fn cancel(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<u64>,
) -> Result<Json<JobInfo>> {
    principal.require_admin()?;
    Ok(Json(jobs::cancel(&state, id).await?))
}

/// `GET /api/v1/jobs/{id}/status`: folded from the job's status messages,
/// per site of this site's subtree and per workstation.
pub async fn status(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<u64>,
) -> Result<Json<JobStatus>> {
    principal.require_admin()?;
    Ok(Json(jobs::status_of(&state, id).await?))
}
