//! Distribution points: enrollment with the join token, their URL, and the
//! long poll of their assignments.

use crate::db;
use crate::error::{Error, Result};
use crate::service::{auth, groups, messages};
use crate::state::AppState;
use cascade_domain::DpName;
use cascade_protocol::{
    Assignment, Assignments, AssignmentsQuery, DpHello, DpInfo, EnrollRequest, EnrollResponse,
    StatusBody,
};
use cascade_store::now_ms;
use std::time::Duration;

/// Longest a long poll may be held.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// Every DP of this site, with how many packages it is assigned.
pub async fn list(state: &AppState) -> Result<Vec<DpInfo>> {
    let pool = state.db.pool();
    let mut out = Vec::new();
    for dp in db::all_dps(pool).await? {
        let packages = db::distributions_of_dp(pool, dp.id).await?.len() as u64;
        out.push(DpInfo {
            name: dp.name,
            url: dp.url,
            enrolled_at_ms: dp.enrolled_at_ms,
            last_seen_ms: dp.last_seen_ms,
            packages,
        });
    }
    Ok(out)
}

/// A new DP presents the join token: it gets a credential, is recorded
/// (`dp_enrolled`), and is given every package placed on all DPs.
pub async fn enroll(state: &AppState, request: &EnrollRequest) -> Result<EnrollResponse> {
    let name = DpName::new(&request.name)?;
    auth::require_join_token(state, &request.join_token).await?;
    let credential = auth::mint_token("cas_dp");
    let mut tx = state.db.write().await?;
    if db::dp_by_name(&mut *tx.tx, name.as_str()).await?.is_some() {
        return Err(Error::Conflict(format!("dp {name} is already enrolled")));
    }
    let now = now_ms();
    let dp_id = db::insert_dp(&mut tx, name.as_str(), now).await?;
    auth::store_credential(&mut tx, &credential, "dp", name.as_str(), now).await?;
    messages::record_site_message(
        state,
        &mut tx,
        StatusBody::DpEnrolled {
            dp: name.to_string(),
        },
    )
    .await?;
    let placed = groups::place_on_new_dp(state, &mut tx, dp_id, name.as_str()).await?;
    tx.commit().await?;
    state.notify_everything();
    tracing::info!(dp = %name, packages = placed, "dp enrolled");
    Ok(EnrollResponse {
        credential,
        site: state.site_info(),
    })
}

/// A DP says where agents reach it.
pub async fn hello(state: &AppState, dp_id: i64, hello: &DpHello) -> Result<()> {
    if !(hello.url.starts_with("http://") || hello.url.starts_with("https://"))
        || hello.url.len() > 2048
    {
        return Err(Error::invalid(
            "invalid_url",
            format!("{:?} is not an http(s) URL", hello.url),
        ));
    }
    let mut tx = state.db.write().await?;
    db::set_dp_url(&mut tx, dp_id, &hello.url, now_ms()).await?;
    tx.commit().await?;
    Ok(())
}

/// A DP's long poll: answers at once when its assignments are newer than
/// `query.after`, else when they change, the wait ends, or the site shuts
/// down.
pub async fn assignments(
    state: &AppState,
    dp_id: i64,
    query: &AssignmentsQuery,
) -> Result<Assignments> {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(query.wait_ms).min(MAX_WAIT);
    let mut changes = state.changes.subscribe();
    let mut shutdown = state.shutdown.clone();
    {
        let mut tx = state.db.write().await?;
        db::touch_dp(&mut tx, dp_id, now_ms()).await?;
        tx.commit().await?;
    }
    loop {
        changes.borrow_and_update();
        let dp = db::dp_by_id(state.db.pool(), dp_id).await?;
        if dp.revision as u64 > query.after
            || tokio::time::Instant::now() >= deadline
            || *shutdown.borrow()
        {
            let rows = db::distributions_of_dp(state.db.pool(), dp_id).await?;
            return Ok(Assignments {
                revision: dp.revision as u64,
                assignments: rows
                    .into_iter()
                    .map(|row| Assignment {
                        package: row.package,
                        version: row.version as u64,
                        refresh: row.refresh as u64,
                    })
                    .collect(),
            });
        }
        tokio::select! {
            _ = changes.changed() => {}
            _ = shutdown.changed() => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}
