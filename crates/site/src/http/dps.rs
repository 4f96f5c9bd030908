//! Distribution point routes, and DP groups.

use super::extract::{ApiJson, ApiQuery};
use crate::error::Result;
use crate::service::auth::Principal;
use crate::service::{dps, groups};
use crate::state::AppState;
use axum::extract::{Path, State};
use axum::Json;
use cascade_protocol::{
    Assignments, AssignmentsQuery, DpApproval, DpGroupInfo, DpGroupRequest, DpHello, DpInfo,
    EnrollRequest, EnrollResponse,
};

/// `GET /api/v1/dps`.
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<Vec<DpInfo>>> {
    principal.require_admin()?;
    Ok(Json(dps::list(&state).await?))
}

/// `POST /api/v1/dps/enroll`: with the join token, no credential.
pub async fn enroll(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<EnrollRequest>,
) -> Result<Json<EnrollResponse>> {
    Ok(Json(dps::enroll(&state, &request).await?))
}

/// `POST /api/v1/dps/{name}/approve`: admit a DP at a URL.
pub async fn approve(
    State(state): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
    ApiJson(approval): ApiJson<DpApproval>,
) -> Result<Json<DpInfo>> {
    principal.require_admin()?;
    Ok(Json(dps::approve(&state, &name, &approval).await?))
}

/// `POST /api/v1/dp/hello`: the DP's URL.
pub async fn hello(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(hello): ApiJson<DpHello>,
) -> Result<Json<serde_json::Value>> {
    let (dp_id, _) = principal.require_dp()?;
    dps::hello(&state, dp_id, &hello).await?;
    Ok(Json(serde_json::json!({})))
}

/// `GET /api/v1/dp/assignments?after=R&wait_ms=W`: long poll.
pub async fn assignments(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(query): ApiQuery<AssignmentsQuery>,
) -> Result<Json<Assignments>> {
    let (dp_id, _) = principal.require_dp()?;
    Ok(Json(dps::assignments(&state, dp_id, &query).await?))
}

/// `POST /api/v1/dp-groups`.
pub async fn create_group(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(request): ApiJson<DpGroupRequest>,
) -> Result<Json<DpGroupInfo>> {
    principal.require_admin()?;
    Ok(Json(groups::create(&state, &request).await?))
}

/// `GET /api/v1/dp-groups`.
pub async fn list_groups(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<Vec<DpGroupInfo>>> {
    principal.require_admin()?;
    Ok(Json(groups::list(&state).await?))
}
