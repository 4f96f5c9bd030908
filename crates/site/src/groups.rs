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

use crate::api::ApiJson;
use crate::auth::Principal;
use crate::db::{self, WriteTx};
use crate::error::{Error, Result};
use crate::{distribution, hierarchy, now_ms, send, AppState};
use axum::extract::State;
use axum::Json;
use cascade_domain::{validate_name, DpName, SiteCode};
use cascade_protocol::{DpGroupInfo, DpGroupRequest, Instruction, TargetChange, TargetReport};

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

fn members_of(json: &str) -> Result<Vec<String>> {
    serde_json::from_str(json)
        .map_err(|err| Error::Internal(format!("stored dp group does not parse: {err}")))
}

/// `POST /api/v1/dp-groups`: every member must be a DP known in the
/// hierarchy (this site's, or one whose site reported it enrolled).
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(request): ApiJson<DpGroupRequest>,
) -> Result<Json<DpGroupInfo>> {
    principal.require_admin()?;
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
        if site != state.code && !hierarchy::contains(&sites, state.code.as_str(), site.as_str()) {
            return Err(Error::NotFound {
                what: "site",
                name: site.to_string(),
            });
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
    apply_group(&state, &mut tx, &request.name, &dps).await?;
    let mut info = group_row(&mut tx, &request.name)
        .await?
        .ok_or_else(|| Error::Internal(format!("dp group {} vanished", request.name)))?
        .1;
    info.not_enrolled = unknown;
    tx.commit().await?;
    state.notify_outbox_changed();
    tracing::info!(group = %request.name, dps = dps.len(), "dp group created");
    Ok(Json(info))
}

/// `GET /api/v1/dp-groups`.
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<Vec<DpGroupInfo>>> {
    principal.require_admin()?;
    let rows: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT name, dps, created_at_ms FROM dp_groups ORDER BY name")
            .fetch_all(state.db.pool())
            .await?;
    let mut out = Vec::with_capacity(rows.len());
    for (name, dps, created_at_ms) in rows {
        let dps = members_of(&dps)?;
        out.push(DpGroupInfo {
            not_enrolled: not_enrolled(state.db.pool(), state.code.as_str(), &dps).await?,
            name,
            dps,
            created_at_ms,
        });
    }
    Ok(Json(out))
}

/// The members not known to be enrolled at their site.
async fn not_enrolled(pool: &sqlx::SqlitePool, own: &str, dps: &[String]) -> Result<Vec<String>> {
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
    let row: Option<(i64, String, i64)> =
        sqlx::query_as("SELECT id, dps, created_at_ms FROM dp_groups WHERE name = ?")
            .bind(name)
            .fetch_optional(&mut *tx.tx)
            .await?;
    row.map(|(id, dps, created_at_ms)| {
        Ok((
            id,
            DpGroupInfo {
                name: name.to_owned(),
                dps: members_of(&dps)?,
                created_at_ms,
                not_enrolled: Vec::new(),
            },
        ))
    })
    .transpose()
}

/// The group's id, or an "unknown dp group" error.
pub async fn require_group(tx: &mut WriteTx<'_>, name: &str) -> Result<i64> {
    Ok(group_row(tx, name)
        .await?
        .ok_or_else(|| Error::NotFound {
            what: "dp group",
            name: name.to_owned(),
        })?
        .0)
}

/// Stores a DP group (replacing one of the same name) and passes it on to
/// the child sites.
pub async fn apply_group(
    state: &AppState,
    tx: &mut WriteTx<'_>,
    name: &str,
    dps: &[String],
) -> Result<()> {
    validate_name("dp group name", name)?;
    for member in dps {
        parse_member(member)?;
    }
    let json = serde_json::to_string(dps).map_err(|err| Error::Internal(err.to_string()))?;
    sqlx::query(
        "INSERT INTO dp_groups (name, dps, created_at_ms) VALUES (?, ?, ?)
         ON CONFLICT (name) DO UPDATE SET dps = excluded.dps",
    )
    .bind(name)
    .bind(json)
    .bind(now_ms())
    .execute(&mut *tx.tx)
    .await?;
    send::send_down(
        state,
        tx,
        &Instruction::DpGroup {
            name: name.to_owned(),
            dps: dps.to_vec(),
        },
    )
    .await
}

/// Every member of the group, as `SITE/DP`.
pub async fn members(tx: &mut WriteTx<'_>, group: &str) -> Result<Vec<String>> {
    let id = require_group(tx, group).await?;
    let json: String = sqlx::query_scalar("SELECT dps FROM dp_groups WHERE id = ?")
        .bind(id)
        .fetch_one(&mut *tx.tx)
        .await?;
    members_of(&json)
}

/// The names of this site's DPs in the group (DPs not enrolled here yet
/// included: they receive the group's packages when they enroll).
pub async fn local_members(tx: &mut WriteTx<'_>, group: &str) -> Result<Vec<String>> {
    let id = require_group(tx, group).await?;
    let json: String = sqlx::query_scalar("SELECT dps FROM dp_groups WHERE id = ?")
        .bind(id)
        .fetch_one(&mut *tx.tx)
        .await?;
    let own: String = sqlx::query_scalar("SELECT code FROM site WHERE id = 1")
        .fetch_one(&mut *tx.tx)
        .await?;
    local(&own, &json)
}

/// [`local_members`] outside a transaction; an unknown group has none.
pub async fn local_members_of(pool: &sqlx::SqlitePool, group: &str) -> Result<Vec<String>> {
    let row: Option<(String, String)> = sqlx::query_as(
        "SELECT g.dps, s.code FROM dp_groups g, site s WHERE g.name = ? AND s.id = 1",
    )
    .bind(group)
    .fetch_optional(pool)
    .await?;
    match row {
        Some((json, own)) => local(&own, &json),
        None => Ok(Vec::new()),
    }
}

fn local(own: &str, json: &str) -> Result<Vec<String>> {
    Ok(members_of(json)?
        .into_iter()
        .filter_map(|member| {
            let (site, dp) = member.split_once('/')?;
            (site == own).then(|| dp.to_owned())
        })
        .collect())
}

/// The DPs, as (site, DP), that the package is distributed to through DP
/// groups, at this site and below, that are enrolled as far as this site
/// knows (a member named ahead of its enrollment is not waited for).
pub async fn group_targets(state: &AppState, package_id: i64) -> Result<Vec<(String, String)>> {
    let pool = state.db.pool();
    let groups: Vec<String> = sqlx::query_scalar(
        "SELECT g.dps FROM group_distributions d JOIN dp_groups g ON g.id = d.group_id
         WHERE d.package_id = ?",
    )
    .bind(package_id)
    .fetch_all(pool)
    .await?;
    let sites = db::subtree(pool).await?;
    let own = state.code.as_str();
    let mut out = Vec::new();
    for json in groups {
        for member in members_of(&json)? {
            let (site, dp) = parse_member(&member)?;
            let below = site.as_str() == own || hierarchy::contains(&sites, own, site.as_str());
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
    let rows: Vec<(i64, String, String)> = sqlx::query_as(
        "SELECT p.id, p.name, g.dps FROM group_distributions d
         JOIN packages p ON p.id = d.package_id JOIN dp_groups g ON g.id = d.group_id",
    )
    .fetch_all(&mut *tx.tx)
    .await?;
    let mut out = Vec::new();
    for (id, name, json) in rows {
        if local(state.code.as_str(), &json)?
            .iter()
            .any(|member| member == dp)
        {
            out.push((id, name));
        }
    }
    Ok(out)
}

/// Distributes `package` to the group: this site places it on its own
/// members, and passes the distribution on to the child sites.
pub async fn apply_group_distribution(
    state: &AppState,
    tx: &mut WriteTx<'_>,
    package: &str,
    group: &str,
) -> Result<Vec<TargetChange>> {
    let package = db::require_package(&mut *tx.tx, package).await?;
    let group_id = require_group(tx, group).await?;
    sqlx::query(
        "INSERT OR IGNORE INTO group_distributions (package_id, group_id, created_at_ms) VALUES (?, ?, ?)",
    )
    .bind(package.id)
    .bind(group_id)
    .bind(now_ms())
    .execute(&mut *tx.tx)
    .await?;
    let members = local_members(tx, group).await?;
    let dps: Vec<(i64, String)> = db::all_dps(&mut *tx.tx)
        .await?
        .into_iter()
        .filter(|dp| members.contains(&dp.name))
        .map(|dp| (dp.id, dp.name))
        .collect();
    let changes = distribution::place(state, tx, (package.id, &package.name), &dps).await?;
    send::send_down(
        state,
        tx,
        &Instruction::Distribute {
            package: package.name.clone(),
            dp_group: group.to_owned(),
        },
    )
    .await?;
    Ok(changes)
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
    let groups: Vec<(String, String)> =
        sqlx::query_as("SELECT name, dps FROM dp_groups ORDER BY id")
            .fetch_all(&mut *tx.tx)
            .await?;
    for (name, json) in groups {
        out.push(Instruction::DpGroup {
            name,
            dps: members_of(&json)?,
        });
    }
    let distributions: Vec<(String, String)> = sqlx::query_as(
        "SELECT p.name, g.name FROM group_distributions d
         JOIN packages p ON p.id = d.package_id JOIN dp_groups g ON g.id = d.group_id
         ORDER BY d.created_at_ms",
    )
    .fetch_all(&mut *tx.tx)
    .await?;
    for (package, dp_group) in distributions {
        out.push(Instruction::Distribute { package, dp_group });
    }
    Ok(out)
}
