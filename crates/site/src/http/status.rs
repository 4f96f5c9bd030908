//! Status routes: DPs and agents deliver their messages, child sites relay
//! their subtree's.

use super::extract::ApiJson;
use crate::error::Result;
use crate::service::auth::Principal;
use crate::service::{ingest, relay};
use crate::state::AppState;
use axum::extract::State;
use axum::Json;
use cascade_protocol::{RelayAck, RelayBatch, StatusAck, StatusBatch};

/// `POST /api/v1/status`: a DP or an agent delivers its messages.
pub async fn ingest(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(batch): ApiJson<StatusBatch>,
) -> Result<Json<StatusAck>> {
    Ok(Json(ingest::ingest(&state, &principal, batch).await?))
}

/// `POST /api/v1/site/status`: a child relays messages of its subtree.
pub async fn ingest_relayed(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(batch): ApiJson<RelayBatch>,
) -> Result<Json<RelayAck>> {
    let child = principal.require_site()?;
    Ok(Json(relay::ingest_relayed(&state, child, &batch).await?))
}
