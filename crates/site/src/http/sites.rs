//! Hierarchy routes: who this site is, child sites joining and
//! registering, their links, the instructions and content needs they
//! exchange, and the queues between them.

use super::extract::{ApiJson, ApiQuery};
use crate::error::Result;
use crate::service::auth::Principal;
use crate::service::{hierarchy, queues, receive, send};
use crate::state::AppState;
use axum::extract::{Path, State};
use axum::Json;
use cascade_protocol::{
    ContentWants, Instructions, InstructionsQuery, LinkRequest, SiteEnrollRequest,
    SiteEnrollResponse, SiteInfo, SiteQueues, SiteRegistration, SiteSummary,
};

/// `GET /api/v1/site`: who this site is, for anyone.
pub async fn site_info(State(state): State<AppState>) -> Json<SiteInfo> {
    Json(state.site_info())
}

/// `GET /api/v1/sites`.
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<Vec<SiteSummary>>> {
    principal.require_admin()?;
    Ok(Json(hierarchy::summaries(&state).await?))
}

/// `POST /api/v1/sites/enroll`: a new child site presents the site join
/// token.
pub async fn enroll(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<SiteEnrollRequest>,
) -> Result<Json<SiteEnrollResponse>> {
    Ok(Json(hierarchy::enroll(&state, &request).await?))
}

/// `POST /api/v1/sites/register`: a child reports a site that joined at or
/// below it.
pub async fn register(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(request): ApiJson<SiteRegistration>,
) -> Result<Json<serde_json::Value>> {
    let caller = principal.require_site()?;
    hierarchy::register(&state, caller, &request).await?;
    Ok(Json(serde_json::json!({})))
}

/// `PUT /api/v1/sites/{code}/link`: the rate limit of content sent to a
/// direct child.
pub async fn set_link(
    State(state): State<AppState>,
    principal: Principal,
    Path(code): Path<String>,
    ApiJson(request): ApiJson<LinkRequest>,
) -> Result<Json<SiteSummary>> {
    principal.require_admin()?;
    Ok(Json(hierarchy::set_link(&state, &code, &request).await?))
}

/// `GET /api/v1/site/instructions?after=S&wait_ms=W`: a child's long poll.
pub async fn instructions(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(query): ApiQuery<InstructionsQuery>,
) -> Result<Json<Instructions>> {
    let child = principal.require_site()?;
    Ok(Json(send::instructions(&state, child, &query).await?))
}

/// `PUT /api/v1/site/wants`: the child's needs replace what it said before.
pub async fn put_wants(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(wants): ApiJson<ContentWants>,
) -> Result<Json<serde_json::Value>> {
    let child = principal.require_site()?;
    receive::put_wants(&state, child, &wants).await?;
    Ok(Json(serde_json::json!({})))
}

/// `GET /api/v1/site/queues`.
pub async fn queues(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<SiteQueues>> {
    principal.require_admin()?;
    Ok(Json(queues::queues(&state).await?))
}
