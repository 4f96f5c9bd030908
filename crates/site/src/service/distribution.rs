//! The distribution queue: which version of which package every DP must hold.
//!
//! One entry per (package, DP). Distributing creates entries; a new package
//! version supersedes every entry of the package in place; a refresh bumps an
//! entry's refresh generation. Every change bumps the DP's revision, which ends
//! its long poll, and records a `distribution_targeted` status message in the
//! same transaction, so the status views see exactly what the queue says.
//!
//! At a child site the content of a version arrives after its manifest.
//! DPs are moved to a version as soon as its manifest is here (cut-through):
//! their assignment says the content is still `arriving`, and they fetch
//! each chunk as soon as the site has stored it rather than after the whole
//! version. An entry for a package of which no version is here yet has
//! version 0: it is not an assignment (the DP does not see it) but it makes
//! the site fetch the content, and the first version to arrive supersedes
//! it like any other.

use crate::db::{self, WriteTx};
use crate::error::Result;
use crate::service::messages;
use crate::state::AppState;
use cascade_protocol::{StatusBody, TargetChange};
use cascade_store::now_ms;

/// Sets the (package, DP) entry to `version` with `refresh`, bumps the DP's
/// revision and records the status message.
async fn target(
    state: &AppState,
    tx: &mut WriteTx<'_>,
    package: (i64, &str),
    dp: (i64, &str),
    version: i64,
    refresh: i64,
) -> Result<()> {
    db::set_distribution(tx, package.0, dp.0, version, refresh, now_ms()).await?;
    messages::record_site_message(
        state,
        tx,
        StatusBody::DistributionTargeted {
            package: package.1.to_owned(),
            dp: dp.1.to_owned(),
            version: version as u64,
            refresh: refresh as u64,
        },
    )
    .await
}

/// Moves every DP that holds (or is to hold) the package to `version`.
/// Returns how many entries were superseded.
pub async fn supersede(
    state: &AppState,
    tx: &mut WriteTx<'_>,
    package_id: i64,
    package: &str,
    version: i64,
) -> Result<usize> {
    let rows = db::entries_of_package(&mut *tx.tx, package_id).await?;
    let mut count = 0;
    for (dp_id, dp_name, current, refresh) in rows {
        if current < version {
            target(
                state,
                tx,
                (package_id, package),
                (dp_id, &dp_name),
                version,
                refresh,
            )
            .await?;
            count += 1;
        }
    }
    Ok(count)
}

/// Places `package` on `dps` at its newest version held here (its content
/// possibly still arriving), or, when no version is here yet, queues them
/// for the first one that arrives. A DP already at that version is left alone (nothing new is
/// sent to it). Returns one line per DP.
pub async fn place(
    state: &AppState,
    tx: &mut WriteTx<'_>,
    package: (i64, &str),
    dps: &[(i64, String)],
) -> Result<Vec<TargetChange>> {
    let version = db::latest_version(&mut *tx.tx, package.0).await?;
    let mut changes = Vec::with_capacity(dps.len());
    for (dp_id, dp_name) in dps {
        let current = db::entry(&mut *tx.tx, package.0, *dp_id).await?;
        let changed = match (current, version) {
            (Some((held, _)), Some(version)) if held >= version => false,
            (Some((_, refresh)), Some(version)) => {
                target(state, tx, package, (*dp_id, dp_name), version, refresh).await?;
                true
            }
            (None, Some(version)) => {
                target(state, tx, package, (*dp_id, dp_name), version, 0).await?;
                true
            }
            (Some(_), None) => false,
            (None, None) => {
                db::insert_waiting_entry(tx, package.0, *dp_id, now_ms()).await?;
                true
            }
        };
        changes.push(TargetChange {
            dp: dp_name.clone(),
            version: version.unwrap_or(0) as u64,
            changed,
        });
    }
    Ok(changes)
}

/// The entries of a package on this site's DPs: DP id, DP name, version
/// (0 while the content is still on its way here), refresh generation.
pub async fn held_rows(
    tx: &mut WriteTx<'_>,
    package_id: i64,
) -> Result<Vec<(i64, String, i64, i64)>> {
    db::entries_of_package(&mut *tx.tx, package_id).await
}

/// Refreshes this site's DPs among `members` (`SITE/DP`; `None`: every DP
/// here holding the package), inside `tx` (the caller passes the refresh
/// on to the child sites). A refresh applies to the version a DP holds or is moving
/// to: an entry still waiting for its content here keeps the new
/// generation, and the DP verifies what it installs (Q258424). A member
/// that does not hold the package here is left alone.
pub async fn apply_refresh(
    state: &AppState,
    tx: &mut WriteTx<'_>,
    package: &str,
    members: Option<&[String]>,
) -> Result<Vec<TargetChange>> {
    let Some(row) = db::package_by_name(&mut *tx.tx, package).await? else {
        // A package this site never heard of has nothing to refresh here;
        // the sites below may still hold it.
        return Ok(Vec::new());
    };
    let own = format!("{}/", state.code);
    let mut changes = Vec::new();
    for (dp_id, dp_name, version, refresh) in held_rows(tx, row.id).await? {
        let chosen = members.is_none_or(|members| {
            members
                .iter()
                .any(|member| member.strip_prefix(&own) == Some(dp_name.as_str()))
        });
        if !chosen {
            continue;
        }
        if version == 0 {
            db::bump_refresh(tx, row.id, dp_id).await?;
        } else {
            target(
                state,
                tx,
                (row.id, package),
                (dp_id, &dp_name),
                version,
                refresh + 1,
            )
            .await?;
        }
        changes.push(TargetChange {
            dp: dp_name,
            version: version as u64,
            changed: true,
        });
    }
    Ok(changes)
}
