//! Agent routes: enrollment, attributes, the policy long poll, approval,
//! and the site settings agents follow.

use super::extract::{ApiJson, ApiQuery};
use crate::error::Result;
use crate::service::agents;
use crate::service::auth::Principal;
use crate::state::AppState;
use axum::extract::{Path, State};
use axum::Json;
use cascade_protocol::{
    AgentEnrollRequest, AgentEnrollResponse, AgentInfo, AgentPolicy, AgentReport, PolicyQuery,
    SiteSettings,
};

/// `GET /api/v1/settings`.
pub async fn get_settings(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<SiteSettings>> {
    principal.require_admin()?;
    Ok(Json(agents::get_settings(&state).await?))
}

/// `PUT /api/v1/settings`.
pub async fn put_settings(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(settings): ApiJson<SiteSettings>,
) -> Result<Json<SiteSettings>> {
    principal.require_admin()?;
    Ok(Json(agents::put_settings(&state, settings).await?))
}

/// `POST /api/v1/agents/enroll`: with the join token, no credential.
pub async fn enroll(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<AgentEnrollRequest>,
) -> Result<Json<AgentEnrollResponse>> {
    Ok(Json(agents::enroll(&state, &request).await?))
}

/// `POST /api/v1/agent/hello`: the agent reports its attributes (at start).
pub async fn hello(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(report): ApiJson<AgentReport>,
) -> Result<Json<serde_json::Value>> {
    let (agent_id, name) = principal.require_agent()?;
    agents::hello(&state, agent_id, name, &report).await?;
    Ok(Json(serde_json::json!({})))
}

/// `GET /api/v1/agent/policy`: long poll.
pub async fn policy(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(query): ApiQuery<PolicyQuery>,
) -> Result<Json<AgentPolicy>> {
    let (agent_id, name) = principal.require_agent()?;
    Ok(Json(agents::policy(&state, agent_id, name, &query).await?))
}

/// `GET /api/v1/agents`.
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<Vec<AgentInfo>>> {
    principal.require_admin()?;
    Ok(Json(agents::list(&state).await?))
}

/// `POST /api/v1/agents/{name}/approve`.
pub async fn approve(
    State(state): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
) -> Result<Json<AgentInfo>> {
    principal.require_admin()?;
    Ok(Json(agents::approve(&state, &name).await?))
}
