//! Distribution points: enrollment with the join token, their URL, and the
//! long poll of their assignments.

use crate::db;
use crate::error::{Entity, Error, Result};
use crate::service::{auth, groups, messages};
use crate::state::AppState;
use cascade_domain::DpName;
use cascade_protocol::{
    Assignment, Assignments, AssignmentsQuery, DpApproval, DpHello, DpInfo, EnrollRequest,
    EnrollResponse, StatusBody,
};
use cascade_store::now_ms;
use std::time::Duration;

/// Longest a long poll may be held.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// Every DP of this site, with how many packages it is assigned.
pub async fn list(state: &AppState) -> Result<Vec<DpInfo>> {
    let pool = state.db.pool();
    let mut out = Vec::new();
    for dp in db::enrolled_dps(pool).await? {
        let packages = db::distributions_of_dp(pool, dp.id).await?.len() as u64;
        out.push(DpInfo {
            name: dp.name,
            url: dp.url,
            announced_url: dp.announced_url,
            approved: dp.approved,
            enrolled_at_ms: dp.enrolled_at_ms,
            last_seen_ms: dp.last_seen_ms,
            packages,
            certificate: dp.certificate,
        });
    }
    Ok(out)
}

/// A new DP presents the DP join token: it gets a credential and waits
/// for an administrator to admit it ([`approve`]); until then it is given
/// nothing and no agent downloads from it.
pub async fn enroll(state: &AppState, request: &EnrollRequest) -> Result<EnrollResponse> {
    let name = DpName::new(&request.name)?;
    let public_key = auth::check_public_key(request.public_key.as_deref())?;
    auth::require_dp_join_token(state, &request.join_token).await?;
    let credential = auth::mint_token("cas_dp");
    let mut tx = state.db.write().await?;
    if db::dp_by_name(&mut *tx.tx, name.as_str()).await?.is_some() {
        return Err(Error::Conflict(format!("dp {name} is already enrolled")));
    }
    let now = now_ms();
    db::insert_dp(&mut tx, name.as_str(), now, public_key.as_deref()).await?;
    auth::store_credential(&mut tx, &credential, "dp", name.as_str(), now).await?;
    tx.commit().await?;
    tracing::info!(dp = %name, "dp enrolled; waiting for approval: `cascade dp approve {name}`");
    Ok(EnrollResponse {
        credential,
        site: state.site_info(),
    })
}

/// An administrator admits a DP at `url`, or at the URL it announced: it
/// is recorded (`dp_enrolled`, relayed up, so DP groups can name it), given
/// every package placed on all DPs or on its groups, and offered to agents.
/// Approving it again moves it to a new URL.
pub async fn approve(state: &AppState, name: &str, approval: &DpApproval) -> Result<DpInfo> {
    let name = DpName::new(name)?;
    let mut tx = state.db.write().await?;
    let dp = db::dp_by_name(&mut *tx.tx, name.as_str())
        .await?
        .ok_or_else(|| Error::not_found(Entity::Dp, name.as_str()))?;
    let url = match (&approval.url, &dp.announced_url) {
        (Some(url), _) | (None, Some(url)) => url.clone(),
        (None, None) => {
            return Err(Error::invalid(
                "no_dp_url",
                format!("dp {name} has not announced its URL yet; start it, or give --url"),
            ))
        }
    };
    check_url(&url)?;
    let now = now_ms();
    db::approve_dp(&mut tx, dp.id, &url, now).await?;
    if !dp.approved {
        let public_key = db::sender_key(&mut *tx.tx, db::SenderTable::Dps, dp.id).await?;
        messages::record_site_message(
            state,
            &mut tx,
            StatusBody::DpEnrolled {
                dp: name.to_string(),
                public_key,
            },
        )
        .await?;
        let placed = groups::place_on_new_dp(state, &mut tx, dp.id, name.as_str()).await?;
        tracing::info!(dp = %name, %url, packages = placed, "dp approved");
    } else {
        tracing::info!(dp = %name, %url, "dp moved to a new URL");
    }
    db::bump_agents(&mut tx).await?;
    tx.commit().await?;
    state.notify_everything();
    let packages = db::distributions_of_dp(state.db.pool(), dp.id).await?.len() as u64;
    Ok(DpInfo {
        name: dp.name,
        url: Some(url),
        announced_url: dp.announced_url,
        approved: true,
        enrolled_at_ms: dp.enrolled_at_ms,
        last_seen_ms: dp.last_seen_ms,
        packages,
        certificate: dp.certificate,
    })
}

/// Refuses a DP that is not admitted yet: it may fetch no content.
pub async fn require_admitted(state: &AppState, dp_id: i64) -> Result<()> {
    let dp = db::dp_by_id(state.db.pool(), dp_id).await?;
    if !dp.approved {
        return Err(Error::Forbidden(format!(
            "dp {} is waiting for approval (`cascade dp approve {}`) and may fetch no content",
            dp.name, dp.name
        )));
    }
    Ok(())
}

fn check_url(url: &str) -> Result<()> {
    if !url.starts_with("https://") || url.len() > 2048 {
        return Err(Error::invalid(
            "invalid_url",
            format!("{url:?} is not an https:// URL (DPs serve HTTPS only)"),
        ));
    }
    Ok(())
}

/// A DP says where agents reach it.
pub async fn hello(state: &AppState, dp_id: i64, hello: &DpHello) -> Result<()> {
    check_url(&hello.url)?;
    let mut tx = state.db.write().await?;
    let dp = db::dp_by_id(&mut *tx.tx, dp_id).await?;
    if dp.approved && dp.url.as_deref() != Some(hello.url.as_str()) {
        tracing::warn!(
            dp = %dp.name,
            announced = %hello.url,
            admitted = dp.url.as_deref().unwrap_or_default(),
            "the dp announces another URL than the one admitted; agents keep the admitted one (`cascade dp approve {} --url URL` moves it)",
            dp.name
        );
    }
    let certificate = match &hello.certificate {
        Some(text) => Some(
            cascade_protocol::tls::Fingerprint::parse(text)
                .ok_or_else(|| {
                    Error::invalid(
                        "invalid_certificate",
                        format!("{text:?} is not a certificate fingerprint (64 hex digits)"),
                    )
                })?
                .to_string(),
        ),
        None => None,
    };
    let changed = certificate.is_some() && certificate != dp.certificate;
    if changed && dp.approved {
        tracing::warn!(
            dp = %dp.name,
            was = dp.certificate.as_deref().unwrap_or("none"),
            now = certificate.as_deref().unwrap_or_default(),
            "the dp serves with a new TLS certificate; agents pin the new one"
        );
    }
    db::set_dp_url(&mut tx, dp_id, &hello.url, certificate.as_deref(), now_ms()).await?;
    if changed && dp.approved {
        db::bump_agents(&mut tx).await?;
    }
    tx.commit().await?;
    if changed && dp.approved {
        state.notify_everything();
    }
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
                // Only an admitted DP serves agents, so only it needs to
                // check their tickets.
                content_key: dp.approved.then(|| state.content_key.to_hex()),
                revision: dp.revision as u64,
                assignments: rows
                    .into_iter()
                    .map(|row| Assignment {
                        package: row.package,
                        version: row.version as u64,
                        refresh: row.refresh as u64,
                        arriving: row.arriving,
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
