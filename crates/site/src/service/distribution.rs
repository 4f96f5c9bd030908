//! The distribution queue: which version of which package every DP must hold.
//!
//! One entry per (package, DP). Distributing creates entries; a new package
//! version supersedes every entry of the package in place; a refresh bumps an
//! entry's refresh generation. Every change bumps the DP's revision, which ends
//! its long poll, and records a `distribution_targeted` status message in the
//! same transaction, so the status views see exactly what the queue says.
//!
//! At a child site the content of a version arrives after its manifest. An
//! entry for a package whose content is not here yet has version 0: it is
//! not an assignment (the DP does not see it) but it makes the site fetch
//! the content, and the version that completes supersedes it like any other.

use crate::db::{self, WriteTx};
use crate::error::{Entity, Error, Result};
use crate::service::{groups, hierarchy, send, status};
use crate::state::AppState;
use cascade_domain::{DpName, SiteCode};
use cascade_protocol::{
    DistributeRequest, Instruction, RefreshRequest, StatusBody, TargetChange, TargetReport,
};
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
    status::record_site_message(
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

/// Places `package` on `dps` at its newest version held here, or, when no
/// version's content is here yet, queues them for the first one that
/// completes. A DP already at that version is left alone (nothing new is
/// sent to it). Returns one line per DP.
pub async fn place(
    state: &AppState,
    tx: &mut WriteTx<'_>,
    package: (i64, &str),
    dps: &[(i64, String)],
) -> Result<Vec<TargetChange>> {
    let version = db::latest_complete_version(&mut *tx.tx, package.0).await?;
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

/// Places on a newly enrolled DP every package that targets it: those
/// distributed to all DPs and those distributed to a DP group holding it.
/// No other DP is touched (Q235157).
pub async fn place_on_new_dp(
    state: &AppState,
    tx: &mut WriteTx<'_>,
    dp_id: i64,
    dp_name: &str,
) -> Result<usize> {
    let mut packages = db::packages_on_all_dps(&mut *tx.tx).await?;
    for (package_id, name) in groups::packages_for_dp(state, tx, dp_name).await? {
        if !packages.iter().any(|(id, _)| *id == package_id) {
            packages.push((package_id, name));
        }
    }
    let dp = [(dp_id, dp_name.to_owned())];
    for (package_id, name) in &packages {
        place(state, tx, (*package_id, name), &dp).await?;
    }
    Ok(packages.len())
}

/// Resolves DP names, refusing unknown ones before anything changes.
async fn resolve_dps(tx: &mut WriteTx<'_>, names: &[String]) -> Result<Vec<(i64, String)>> {
    let mut out: Vec<(i64, String)> = Vec::new();
    for name in names {
        DpName::new(name)?;
        let dp = db::dp_by_name(&mut *tx.tx, name)
            .await?
            .ok_or_else(|| Error::not_found(Entity::Dp, name))?;
        if !out.iter().any(|(id, _)| *id == dp.id) {
            out.push((dp.id, dp.name));
        }
    }
    Ok(out)
}

/// `cascade package distribute`.
pub async fn distribute(
    state: &AppState,
    name: &str,
    request: &DistributeRequest,
) -> Result<TargetReport> {
    let targets = [
        !request.dps.is_empty(),
        request.all_dps,
        request.dp_group.is_some(),
    ];
    if targets.iter().filter(|given| **given).count() > 1 {
        return Err(Error::invalid(
            "conflicting_targets",
            "give dp names, --all-dps or --dp-group, only one of them",
        ));
    }
    if let Some(group) = &request.dp_group {
        return groups::distribute_to_group(state, name, group).await;
    }
    if request.dps.is_empty() && !request.all_dps {
        return Err(Error::invalid(
            "no_dps",
            "name at least one dp (--dp NAME), or use --all-dps or --dp-group",
        ));
    }
    let mut tx = state.db.write().await?;
    let package = db::require_package(&mut *tx.tx, name).await?;
    let dps = if request.all_dps {
        db::set_all_dps(&mut tx, package.id).await?;
        db::all_dps(&mut *tx.tx)
            .await?
            .into_iter()
            .map(|dp| (dp.id, dp.name))
            .collect()
    } else {
        resolve_dps(&mut tx, &request.dps).await?
    };
    let dps = place(state, &mut tx, (package.id, &package.name), &dps).await?;
    tx.commit().await?;
    state.notify_everything();
    Ok(TargetReport {
        package: package.name,
        dps,
        sites: Vec::new(),
    })
}

/// `cascade package refresh`: the one explicit way to re-verify DPs that
/// already hold a package. `NAME` is this site's DP, `SITE/NAME` a DP of a
/// site below, `--dp-group` a group's members wherever they are; with none
/// of them, every DP of the subtree holding the package. This site's DPs
/// are refreshed here and the refresh is passed down to the child sites,
/// each refreshing its own.
pub async fn refresh(
    state: &AppState,
    name: &str,
    request: &RefreshRequest,
) -> Result<TargetReport> {
    if !request.dps.is_empty() && request.dp_group.is_some() {
        return Err(Error::invalid(
            "conflicting_targets",
            "give dp names or --dp-group, not both",
        ));
    }
    let mut tx = state.db.write().await?;
    let package = db::require_package(&mut *tx.tx, name).await?;
    let held = held_rows(&mut tx, package.id).await?;
    let sites = db::subtree(&mut *tx.tx).await?;
    let own = state.code.as_str();
    let members: Option<Vec<String>> = if let Some(group) = &request.dp_group {
        Some(groups::members(&mut tx, group).await?)
    } else if request.dps.is_empty() {
        None
    } else {
        let mut members = Vec::new();
        for given in &request.dps {
            let (site, dp) = match given.split_once('/') {
                Some((site, dp)) => (SiteCode::new(site)?, DpName::new(dp)?),
                None => (state.code.clone(), DpName::new(given)?),
            };
            if site.as_str() == own {
                // This site knows what its DPs hold: refuse one without it.
                let known = db::dp_by_name(&mut *tx.tx, dp.as_str())
                    .await?
                    .ok_or_else(|| Error::not_found(Entity::Dp, given))?;
                if !held.iter().any(|row| row.0 == known.id) {
                    return Err(Error::invalid(
                        "not_distributed",
                        format!(
                            "dp {given} does not hold package {name}; distribute it there first"
                        ),
                    ));
                }
            } else if !hierarchy::contains(&sites, own, site.as_str()) {
                return Err(Error::not_found(
                    Entity::Site,
                    format!("{site} (of dp {given}) below {own}"),
                ));
            } else if !db::dp_known(&mut *tx.tx, own, site.as_str(), dp.as_str()).await? {
                return Err(Error::not_found(Entity::Dp, given));
            }
            let member = format!("{site}/{dp}");
            if !members.contains(&member) {
                members.push(member);
            }
        }
        Some(members)
    };
    let children = db::children(&mut *tx.tx, own).await?;
    let reaches_below = match &members {
        None => !children.is_empty(),
        Some(members) => members
            .iter()
            .any(|member| !member.starts_with(&format!("{own}/"))),
    };
    let dps = apply_refresh(state, &mut tx, &package.name, members.as_deref()).await?;
    if dps.is_empty() && !reaches_below {
        return Err(Error::invalid(
            "not_distributed",
            format!("package {name} is not distributed to any of these dps; nothing to refresh"),
        ));
    }
    tx.commit().await?;
    state.notify_assignments_changed();
    state.notify_status_stored();
    state.notify_outbox_changed();
    Ok(TargetReport {
        package: package.name,
        dps,
        sites: if reaches_below { children } else { Vec::new() },
    })
}

/// The entries of a package on this site's DPs: DP id, DP name, version
/// (0 while the content is still on its way here), refresh generation.
async fn held_rows(tx: &mut WriteTx<'_>, package_id: i64) -> Result<Vec<(i64, String, i64, i64)>> {
    db::entries_of_package(&mut *tx.tx, package_id).await
}

/// Refreshes this site's DPs among `members` (`SITE/DP`; `None`: every DP
/// here holding the package) and passes the refresh on to the child sites,
/// inside `tx`. A refresh applies to the version a DP holds or is moving
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
        send_refresh_down(state, tx, package, members).await?;
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
    send_refresh_down(state, tx, package, members).await?;
    Ok(changes)
}

async fn send_refresh_down(
    state: &AppState,
    tx: &mut WriteTx<'_>,
    package: &str,
    members: Option<&[String]>,
) -> Result<()> {
    send::send_down(
        state,
        tx,
        &Instruction::Refresh {
            package: package.to_owned(),
            dps: members.map(<[String]>::to_vec),
        },
    )
    .await
}
