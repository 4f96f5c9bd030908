//! The distribution queue: which version of which package every DP must hold.
//!
//! One entry per (package, DP). Distributing creates entries; a new package
//! version supersedes every entry of the package in place; a refresh bumps an
//! entry's refresh generation. Every change bumps the DP's revision, which ends
//! its long poll, and records a `distribution_targeted` status message in the
//! same transaction, so the status views see exactly what the queue says.

use crate::db::{self, WriteTx};
use crate::error::{Error, Result};
use crate::{now_ms, status, AppState};
use cascade_domain::DpName;
use cascade_protocol::{DistributeRequest, RefreshRequest, StatusBody, TargetChange, TargetReport};

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
    sqlx::query(
        "INSERT INTO distributions (package_id, dp_id, version, refresh, updated_at_ms)
         VALUES (?, ?, ?, ?, ?)
         ON CONFLICT (package_id, dp_id) DO UPDATE
         SET version = excluded.version, refresh = excluded.refresh, updated_at_ms = excluded.updated_at_ms",
    )
    .bind(package.0)
    .bind(dp.0)
    .bind(version)
    .bind(refresh)
    .bind(now_ms())
    .execute(&mut *tx.tx)
    .await?;
    sqlx::query("UPDATE dps SET revision = revision + 1 WHERE id = ?")
        .bind(dp.0)
        .execute(&mut *tx.tx)
        .await?;
    status::record_site_message(
        state,
        tx,
        StatusBody::DistributionTargeted {
            package: package.1.to_owned(),
            dp: dp.1.to_owned(),
            version: version as u64,
            refresh: refresh as u64,
        },
        Some(dp.1),
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
    let rows = sqlx::query_as::<_, (i64, String, i64, i64)>(
        "SELECT d.id, d.name, q.version, q.refresh FROM distributions q JOIN dps d ON d.id = q.dp_id
         WHERE q.package_id = ?",
    )
    .bind(package_id)
    .fetch_all(&mut *tx.tx)
    .await?;
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

/// Places every package distributed to all DPs on a newly enrolled DP.
pub async fn place_all_dps_packages(
    state: &AppState,
    tx: &mut WriteTx<'_>,
    dp_id: i64,
    dp_name: &str,
) -> Result<usize> {
    let packages = sqlx::query_as::<_, (i64, String, i64)>(
        "SELECT p.id, p.name, MAX(v.version) FROM packages p JOIN package_versions v ON v.package_id = p.id
         WHERE p.all_dps = 1 GROUP BY p.id",
    )
    .fetch_all(&mut *tx.tx)
    .await?;
    for (package_id, name, version) in &packages {
        target(
            state,
            tx,
            (*package_id, name),
            (dp_id, dp_name),
            *version,
            0,
        )
        .await?;
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
            .ok_or(Error::NotFound {
                what: "dp",
                name: name.clone(),
            })?;
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
    if request.dps.is_empty() && !request.all_dps {
        return Err(Error::invalid(
            "no_dps",
            "name at least one dp (--dp NAME) or use --all-dps",
        ));
    }
    if !request.dps.is_empty() && request.all_dps {
        return Err(Error::invalid(
            "conflicting_targets",
            "give either dp names or --all-dps, not both",
        ));
    }
    let mut tx = state.db.write().await?;
    let package = db::require_package(&mut *tx.tx, name).await?;
    let version = db::latest_version(&mut *tx.tx, package.id)
        .await?
        .ok_or_else(|| Error::Internal(format!("package {name} has no versions")))?;
    let dps = if request.all_dps {
        sqlx::query("UPDATE packages SET all_dps = 1 WHERE id = ?")
            .bind(package.id)
            .execute(&mut *tx.tx)
            .await?;
        db::all_dps(&mut *tx.tx)
            .await?
            .into_iter()
            .map(|dp| (dp.id, dp.name))
            .collect()
    } else {
        resolve_dps(&mut tx, &request.dps).await?
    };
    let mut report = TargetReport {
        package: package.name.clone(),
        dps: Vec::new(),
    };
    for (dp_id, dp_name) in dps {
        let current: Option<(i64, i64)> = sqlx::query_as(
            "SELECT version, refresh FROM distributions WHERE package_id = ? AND dp_id = ?",
        )
        .bind(package.id)
        .bind(dp_id)
        .fetch_optional(&mut *tx.tx)
        .await?;
        let changed = match current {
            Some((held, _)) if held >= version => false,
            Some((_, refresh)) => {
                target(
                    state,
                    &mut tx,
                    (package.id, &package.name),
                    (dp_id, &dp_name),
                    version,
                    refresh,
                )
                .await?;
                true
            }
            None => {
                target(
                    state,
                    &mut tx,
                    (package.id, &package.name),
                    (dp_id, &dp_name),
                    version,
                    0,
                )
                .await?;
                true
            }
        };
        report.dps.push(TargetChange {
            dp: dp_name,
            version: version as u64,
            changed,
        });
    }
    tx.commit().await?;
    if report.dps.iter().any(|change| change.changed) {
        state.notify_assignments_changed();
    }
    Ok(report)
}

/// `cascade package refresh`: the one explicit way to re-verify DPs that
/// already hold a package.
pub async fn refresh(
    state: &AppState,
    name: &str,
    request: &RefreshRequest,
) -> Result<TargetReport> {
    let mut tx = state.db.write().await?;
    let package = db::require_package(&mut *tx.tx, name).await?;
    let held = sqlx::query_as::<_, (i64, String, i64, i64)>(
        "SELECT d.id, d.name, q.version, q.refresh FROM distributions q JOIN dps d ON d.id = q.dp_id
         WHERE q.package_id = ? ORDER BY d.name",
    )
    .bind(package.id)
    .fetch_all(&mut *tx.tx)
    .await?;
    let chosen: Vec<(i64, String, i64, i64)> = if request.dps.is_empty() {
        held
    } else {
        let wanted = resolve_dps(&mut tx, &request.dps).await?;
        let mut chosen = Vec::new();
        for (dp_id, dp_name) in wanted {
            let entry = held.iter().find(|row| row.0 == dp_id).ok_or_else(|| {
                Error::invalid(
                    "not_distributed",
                    format!("dp {dp_name} does not hold package {name}; distribute it there first"),
                )
            })?;
            chosen.push(entry.clone());
        }
        chosen
    };
    if chosen.is_empty() {
        return Err(Error::invalid(
            "not_distributed",
            format!("package {name} is not distributed to any dp; nothing to refresh"),
        ));
    }
    let mut report = TargetReport {
        package: package.name.clone(),
        dps: Vec::new(),
    };
    for (dp_id, dp_name, version, refresh) in chosen {
        target(
            state,
            &mut tx,
            (package.id, &package.name),
            (dp_id, &dp_name),
            version,
            refresh + 1,
        )
        .await?;
        report.dps.push(TargetChange {
            dp: dp_name,
            version: version as u64,
            changed: true,
        });
    }
    tx.commit().await?;
    state.notify_assignments_changed();
    Ok(report)
}
