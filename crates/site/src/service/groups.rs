//! DP groups: named sets of DPs of any site of the hierarchy (the
//! original's machine groups of distribution servers), made at the central
//! site and sent down to every site, which uses its own members. A package
//! distributed to a group goes to each member, in every later version too,
//! and to DPs that enroll later under a member's name.
//!
//! Rationale: in SMS, a job distributing to a machine group showed the
//! distribution as failed at every target site without a server in the
//! group (Q167007). Here such a site places the package on no DP, and its
//! distribution is shown as not applicable.

use crate::db::{self, WriteTx};
use crate::error::{Entity, Error, Result};
use crate::service::{distribution, send};
use crate::state::AppState;
use cascade_domain::{validate_name, DpName, SiteCode};
use cascade_protocol::{DpGroupInfo, DpGroupRequest, Instruction, TargetChange, TargetReport};
use cascade_store::now_ms;

/// Most DPs in one group.
const MAX_MEMBERS: usize = 10_000;

/// Splits `SITE/DP`.
fn parse_member(text: &str) -> Result<(SiteCode, DpName)> {
    let (site, dp) = text.split_once('/').ok_or_else(|| {
        Error::invalid(
            "invalid_name",
            format!("dp group member {text:?} is not SITE/DP (e.g. P01/dp1)"),
        )
    })?;
    Ok((SiteCode::new(site)?, DpName::new(dp)?))
}

/// `POST /api/v1/dp-groups`: every member must be a DP known in the
/// hierarchy (this site's, or one whose site reported it enrolled).
pub async fn create(state: &AppState, request: &DpGroupRequest) -> Result<DpGroupInfo> {
    state.require_central("creating dp groups")?;
    validate_name("dp group name", &request.name)?;
    if request.dps.is_empty() {
        return Err(Error::invalid(
            "no_dps",
            "a dp group needs at least one dp (--dp SITE/DP)",
        ));
    }
    if request.dps.len() > MAX_MEMBERS {
        return Err(Error::TooLarge(format!(
            "{} dps in one group; at most {MAX_MEMBERS}",
            request.dps.len()
        )));
    }
    let pool = state.db.pool();
    let sites = db::subtree(pool).await?;
    let mut dps: Vec<String> = Vec::new();
    let mut unknown = Vec::new();
    for member in &request.dps {
        let (site, dp) = parse_member(member)?;
        if site != state.code && !db::contains(&sites, state.code.as_str(), site.as_str()) {
            return Err(Error::not_found(Entity::Site, site.as_str()));
        }
        let member = format!("{site}/{dp}");
        if !db::dp_known(pool, state.code.as_str(), site.as_str(), dp.as_str()).await? {
            unknown.push(member.clone());
        }
        if !dps.contains(&member) {
            dps.push(member);
        }
    }
    if !unknown.is_empty() && !request.allow_unknown {
        return Err(Error::invalid(
            "unknown_dps",
            format!(
                "no dp {} is enrolled; check the names, or pass --allow-unknown to name dps before they enroll (they receive the group's packages when they do)",
                unknown.join(", ")
            ),
        ));
    }
    let mut tx = state.db.write().await?;
    if group_row(&mut tx, &request.name).await?.is_some() {
        return Err(Error::Conflict(format!(
            "dp group {} already exists",
            request.name
        )));
    }
    apply_group(&mut tx, &request.name, &dps).await?;
    send::send_down(
        state,
        &mut tx,
        &Instruction::DpGroup {
            name: request.name.clone(),
            dps: dps.clone(),
        },
    )
    .await?;
    let mut info = group_row(&mut tx, &request.name)
        .await?
        .ok_or_else(|| Error::Internal(format!("dp group {} vanished", request.name)))?
        .1;
    info.not_enrolled = unknown;
    tx.commit().await?;
    state.notify_outbox_changed();
    tracing::info!(group = %request.name, dps = dps.len(), "dp group created");
    Ok(info)
}

/// `GET /api/v1/dp-groups`.
pub async fn list(state: &AppState) -> Result<Vec<DpGroupInfo>> {
    let rows = db::all_groups(state.db.pool()).await?;
    let mut out = Vec::with_capacity(rows.len());
    for (name, dps, created_at_ms) in rows {
        out.push(DpGroupInfo {
            not_enrolled: not_enrolled(state.db.pool(), state.code.as_str(), &dps).await?,
            name,
            dps,
            created_at_ms,
        });
    }
    Ok(out)
}

/// The members not known to be enrolled at their site.
async fn not_enrolled(pool: &db::Pool, own: &str, dps: &[String]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for member in dps {
        let (site, dp) = parse_member(member)?;
        if !db::dp_known(pool, own, site.as_str(), dp.as_str()).await? {
            out.push(member.clone());
        }
    }
    Ok(out)
}

async fn group_row(tx: &mut WriteTx<'_>, name: &str) -> Result<Option<(i64, DpGroupInfo)>> {
    Ok(db::group_by_name(&mut *tx.tx, name)
        .await?
        .map(|(id, dps, created_at_ms)| {
            (
                id,
                DpGroupInfo {
                    name: name.to_owned(),
                    dps,
                    created_at_ms,
                    not_enrolled: Vec::new(),
                },
            )
        }))
}

/// The group's id, or an "unknown dp group" error.
pub async fn require_group(tx: &mut WriteTx<'_>, name: &str) -> Result<i64> {
    Ok(group_row(tx, name)
        .await?
        .ok_or_else(|| Error::not_found(Entity::DpGroup, name))?
        .0)
}

/// Stores a DP group (replacing one of the same name: applying it twice
/// changes nothing).
pub async fn apply_group(tx: &mut WriteTx<'_>, name: &str, dps: &[String]) -> Result<()> {
    validate_name("dp group name", name)?;
    for member in dps {
        parse_member(member)?;
    }
    db::upsert_group(tx, name, dps, now_ms()).await
}

/// Every member of the group, as `SITE/DP`.
pub async fn members(tx: &mut WriteTx<'_>, group: &str) -> Result<Vec<String>> {
    Ok(group_row(tx, group)
        .await?
        .ok_or_else(|| Error::not_found(Entity::DpGroup, group))?
        .1
        .dps)
}

/// The names of this site's DPs in the group (DPs not enrolled here yet
/// included: they receive the group's packages when they enroll).
pub async fn local_members(
    state: &AppState,
    tx: &mut WriteTx<'_>,
    group: &str,
) -> Result<Vec<String>> {
    let members = members(tx, group).await?;
    Ok(db::local_of(state.code.as_str(), &members))
}

/// The DPs, as (site, DP), that the package is distributed to through DP
/// groups, at this site and below, that are enrolled as far as this site
/// knows (a member named ahead of its enrollment is not waited for).
pub async fn group_targets(state: &AppState, package_id: i64) -> Result<Vec<(String, String)>> {
    let pool = state.db.pool();
    let groups = db::groups_of_package(pool, package_id).await?;
    let sites = db::subtree(pool).await?;
    let own = state.code.as_str();
    let mut out = Vec::new();
    for members in groups {
        for member in members {
            let (site, dp) = parse_member(&member)?;
            let below = site.as_str() == own || db::contains(&sites, own, site.as_str());
            let key = (site.to_string(), dp.to_string());
            if below
                && !out.contains(&key)
                && db::dp_known(pool, own, site.as_str(), dp.as_str()).await?
            {
                out.push(key);
            }
        }
    }
    Ok(out)
}

/// The packages distributed to a group that holds this site's DP `dp`.
pub async fn packages_for_dp(
    state: &AppState,
    tx: &mut WriteTx<'_>,
    dp: &str,
) -> Result<Vec<(i64, String)>> {
    let rows = db::group_distributions(&mut *tx.tx).await?;
    let mut out = Vec::new();
    for (id, name, members) in rows {
        if db::local_of(state.code.as_str(), &members)
            .iter()
            .any(|member| member == dp)
        {
            out.push((id, name));
        }
    }
    Ok(out)
}

/// Distributes `package` to the group: this site places it on its own
/// members (the caller passes the distribution on to the child sites).
pub async fn apply_group_distribution(
    state: &AppState,
    tx: &mut WriteTx<'_>,
    package: &str,
    group: &str,
) -> Result<Vec<TargetChange>> {
    let package = db::require_package(&mut *tx.tx, package).await?;
    let group_id = require_group(tx, group).await?;
    db::insert_group_distribution(tx, package.id, group_id, now_ms()).await?;
    let members = local_members(state, tx, group).await?;
    let dps: Vec<(i64, String)> = db::all_dps(&mut *tx.tx)
        .await?
        .into_iter()
        .filter(|dp| members.contains(&dp.name))
        .map(|dp| (dp.id, dp.name))
        .collect();
    distribution::place(state, tx, (package.id, &package.name), &dps).await
}

/// `cascade package distribute NAME --dp-group G`.
pub async fn distribute_to_group(
    state: &AppState,
    package: &str,
    group: &str,
) -> Result<TargetReport> {
    state.require_central("distributing to a dp group")?;
    let mut tx = state.db.write().await?;
    let dps = apply_group_distribution(state, &mut tx, package, group).await?;
    send::send_down(
        state,
        &mut tx,
        &Instruction::Distribute {
            package: package.to_owned(),
            dp_group: group.to_owned(),
        },
    )
    .await?;
    let sites = db::children(&mut *tx.tx, state.code.as_str()).await?;
    tx.commit().await?;
    state.notify_everything();
    Ok(TargetReport {
        package: package.to_owned(),
        dps,
        sites,
    })
}

/// The groups and their distributions, for a new child site.
pub async fn snapshot(tx: &mut WriteTx<'_>) -> Result<Vec<Instruction>> {
    let mut out = Vec::new();
    for (name, dps) in db::groups_in_order(&mut *tx.tx).await? {
        out.push(Instruction::DpGroup { name, dps });
    }
    let distributions = db::group_distribution_names(&mut *tx.tx).await?;
    for (package, dp_group) in distributions {
        out.push(Instruction::Distribute { package, dp_group });
    }
    Ok(out)
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
    for (package_id, name) in packages_for_dp(state, tx, dp_name).await? {
        if !packages.iter().any(|(id, _)| *id == package_id) {
            packages.push((package_id, name));
        }
    }
    let dp = [(dp_id, dp_name.to_owned())];
    for (package_id, name) in &packages {
        distribution::place(state, tx, (*package_id, name), &dp).await?;
    }
    Ok(packages.len())
}
