//! Packages: committing a version at the central site (signed, checked
//! against the uploaded content, an unchanged tree making no new version),
//! listing them, and their manifests.

use crate::db::{self, WriteTx};
use crate::error::{Entity, Error, Result};
use crate::service::{distribution, groups, send};
use crate::state::AppState;
use cascade_content::{EntryKind, Manifest, MANIFEST_FORMAT};
use cascade_domain::PackageName;
use cascade_domain::{DpName, SiteCode};
use cascade_protocol::{
    DistributeRequest, Instruction, NewVersionRequest, PackageDetail, PackageSummary,
    RefreshRequest, SignedManifestWire, TargetReport, VersionInfo, VersionIntent,
};
use cascade_store::now_ms;

fn version_info(package: &str, row: &db::VersionRow) -> VersionInfo {
    VersionInfo {
        package: package.to_owned(),
        version: row.version as u64,
        total_size: row.total_size as u64,
        file_count: row.file_count as u64,
        chunk_count: row.chunk_count as u64,
        created_at_ms: row.created_at_ms,
        complete: row.complete,
        unchanged: false,
        retired_at_ms: row.retired_at_ms,
        uninstall_command: row.uninstall_command.clone(),
    }
}

/// Refuses a tree with a setuid or setgid file: a package would otherwise
/// install a program that runs as its owner (root) on every workstation,
/// unless the administrator asked for it. (A setgid directory only passes
/// its group on to new files, and is kept.)
fn refuse_setuid(manifest: &Manifest) -> Result<()> {
    const SETUID_SETGID: u32 = 0o6000;
    let flagged = manifest.entries.iter().find_map(|entry| match entry.kind {
        EntryKind::File { mode, .. } if mode & SETUID_SETGID != 0 => Some((&entry.path, mode)),
        _ => None,
    });
    match flagged {
        Some((path, mode)) => Err(Error::invalid(
            "setuid_refused",
            format!(
                "{path} has mode {mode:04o} (setuid or setgid); pass --allow-setuid to keep such bits"
            ),
        )),
        None => Ok(()),
    }
}

/// Longest uninstall command accepted (as a job's command).
const MAX_UNINSTALL_LEN: usize = 8192;

/// Commits a new version of a package (or creates the package): the
/// manifest is validated, every chunk must be in the library, and the
/// version is signed and passed down.
pub async fn new_version(state: &AppState, request: NewVersionRequest) -> Result<VersionInfo> {
    state.require_central("creating and updating packages")?;
    let key = state.signing_key()?;
    let name = PackageName::new(&request.name)?;
    if let Some(command) = &request.uninstall_command {
        if command.trim().is_empty() || command.len() > MAX_UNINSTALL_LEN {
            return Err(Error::invalid(
                "invalid_uninstall_command",
                format!("the uninstall command must be 1 to {MAX_UNINSTALL_LEN} bytes"),
            ));
        }
    }
    // Validate the tree before anything is stored; version and origin are
    // filled in below and do not affect validity.
    let mut manifest = Manifest {
        format: MANIFEST_FORMAT,
        package: name.to_string(),
        version: 1,
        origin_site: state.code.to_string(),
        created_at_ms: now_ms(),
        entries: request.entries,
    };
    manifest
        .validate()
        .map_err(|err| Error::invalid("invalid_manifest", err.to_string()))?;
    if !request.allow_setuid {
        refuse_setuid(&manifest)?;
    }
    if manifest.file_count() == 0 {
        return Err(Error::invalid(
            "empty_package",
            format!("the tree for package {name} holds no file; a package needs at least one"),
        ));
    }
    let chunks = manifest.unique_chunks();
    let store = state.store.clone();
    let missing = tokio::task::spawn_blocking(move || {
        chunks
            .iter()
            .filter(|chunk| !store.contains(&chunk.hash))
            .map(|chunk| chunk.hash)
            .collect::<Vec<_>>()
    })
    .await
    .map_err(Error::task("checking for missing chunks"))?;
    if let Some(first) = missing.first() {
        return Err(Error::invalid(
            "missing_chunks",
            format!(
                "{} chunk(s) of {name} were not uploaded (first: {first}); upload them before committing the version",
                missing.len()
            ),
        ));
    }

    let mut tx = state.db.write().await?;
    let existing = db::package_by_name(&mut *tx.tx, name.as_str()).await?;
    let (package_id, version) = match (request.intent, existing) {
        (VersionIntent::Create, Some(_)) => {
            return Err(Error::Conflict(format!(
                "package {name} already exists; use `cascade package update` for a new version"
            )))
        }
        (VersionIntent::Update, None) => {
            return Err(Error::not_found(Entity::Package, name.as_str()))
        }
        (VersionIntent::Create, None) => {
            let id = db::insert_package(&mut tx, name.as_str(), manifest.created_at_ms).await?;
            (id, 1)
        }
        (VersionIntent::Update, Some(package)) => {
            let latest = db::latest_version(&mut *tx.tx, package.id)
                .await?
                .unwrap_or(0);
            if !request.allow_unchanged {
                // The same tree with another uninstall command is a new
                // version (it says how to remove what it installs).
                let same = unchanged(state, &mut tx, package.id, latest, &manifest)
                    .await?
                    .filter(|row| row.uninstall_command == request.uninstall_command);
                if let Some(row) = same {
                    tracing::info!(package = %name, version = latest, "update with an unchanged tree: no new version");
                    let mut info = version_info(name.as_str(), &row);
                    info.unchanged = true;
                    return Ok(info);
                }
            }
            (package.id, latest + 1)
        }
    };
    manifest.version = version as u64;
    let signed = cascade_content::sign(&manifest, &key)?;
    let mut row = db::insert_version(&mut tx, package_id, &manifest, &signed, true).await?;
    db::set_uninstall_command(
        &mut tx,
        package_id,
        version,
        request.uninstall_command.as_deref(),
    )
    .await?;
    row.uninstall_command = request.uninstall_command.clone();
    let superseded =
        distribution::supersede(state, &mut tx, package_id, name.as_str(), version).await?;
    send::send_down(
        state,
        &mut tx,
        &Instruction::PackageVersion {
            package: name.to_string(),
            version: version as u64,
            manifest: SignedManifestWire::from_signed(&signed),
        },
    )
    .await?;
    tx.commit().await?;
    state.notify_everything();
    state.notify_retention();
    tracing::info!(package = %name, version, superseded, "package version committed");
    Ok(version_info(name.as_str(), &row))
}

/// The newest version's row when its tree is exactly `manifest`'s (an
/// update that would change nothing).
async fn unchanged(
    state: &AppState,
    tx: &mut WriteTx<'_>,
    package_id: i64,
    latest: i64,
    manifest: &Manifest,
) -> Result<Option<db::VersionRow>> {
    let Some((bytes, signature)) = db::manifest(&mut *tx.tx, package_id, latest).await? else {
        return Ok(None);
    };
    let Ok(signature) = signature.try_into() else {
        return Ok(None);
    };
    let signed = cascade_content::SignedManifest { bytes, signature };
    let held = match signed.verify(&state.trust) {
        Ok(held) => held,
        Err(err) => {
            // Not a reason to refuse the update: the new version replaces
            // the damaged one as the newest.
            tracing::warn!(package = %manifest.package, version = latest, error = %err, "stored manifest does not verify");
            return Ok(None);
        }
    };
    if held.entries != manifest.entries {
        return Ok(None);
    }
    Ok(db::versions(&mut *tx.tx, package_id)
        .await?
        .into_iter()
        .find(|row| row.version == latest))
}

/// Every package with its newest version and how many DPs of this site's
/// subtree it is placed on: this site's own, and those below whose status
/// came up (issue 14: the central site counted only its own).
pub async fn list(state: &AppState) -> Result<Vec<PackageSummary>> {
    let pool = state.db.pool();
    let mut out = Vec::new();
    for package in db::all_packages(pool).await? {
        let versions = db::versions(pool, package.id).await?;
        let Some(latest) = versions.last() else {
            continue;
        };
        // Counted, not folded: the DPs a package's distribution views
        // are folded for (`status::distribution_views`).
        let own = state.code.to_string();
        let mut dps: std::collections::BTreeSet<(String, String)> =
            db::distributions_of_package(pool, package.id)
                .await?
                .into_iter()
                .map(|queued| (own.clone(), queued.dp))
                .collect();
        dps.extend(db::dps_with_distribution(pool, &package.name).await?);
        let dp_count = dps.len() as u64;
        out.push(PackageSummary {
            name: package.name.clone(),
            latest: version_info(&package.name, latest),
            dp_count,
        });
    }
    Ok(out)
}

/// A package's versions, DPs and newest tree.
pub async fn show(state: &AppState, name: &str) -> Result<PackageDetail> {
    let pool = state.db.pool();
    let package = db::require_package(pool, name).await?;
    let versions = db::versions(pool, package.id).await?;
    let latest = versions.last().map(|v| v.version).unwrap_or(0);
    let (bytes, _) = db::manifest(pool, package.id, latest)
        .await?
        .ok_or_else(|| Error::Internal(format!("package {name} has no versions")))?;
    let manifest = Manifest::from_bytes(&bytes)?;
    let dps = db::distributions_of_package(pool, package.id)
        .await?
        .into_iter()
        .map(|row| row.dp)
        .collect();
    Ok(PackageDetail {
        name: package.name.clone(),
        versions: versions
            .iter()
            .map(|v| version_info(&package.name, v))
            .collect(),
        dps,
        entries: manifest.entries,
    })
}

/// The signed manifest of one version (`version` as given in the path).
pub async fn manifest(state: &AppState, name: &str, version: &str) -> Result<SignedManifestWire> {
    let pool = state.db.pool();
    let package = db::require_package(pool, name).await?;
    let number: i64 = version.parse().map_err(|_| {
        Error::invalid(
            "malformed_request",
            format!("version {version:?} is not a number"),
        )
    })?;
    let (bytes, signature) = db::manifest(pool, package.id, number)
        .await?
        .ok_or_else(|| Error::not_found(Entity::Version, format!("{name} v{version}")))?;
    let signed = cascade_content::SignedManifest {
        bytes,
        signature: signature.try_into().map_err(|_| {
            Error::Internal(format!(
                "stored signature of {name} v{version} is not 64 bytes"
            ))
        })?,
    };
    Ok(SignedManifestWire::from_signed(&signed))
}

/// Resolves DP names, refusing unknown ones before anything changes.
async fn resolve_dps(tx: &mut WriteTx<'_>, names: &[String]) -> Result<Vec<(i64, String)>> {
    let mut out: Vec<(i64, String)> = Vec::new();
    for name in names {
        DpName::new(name)?;
        let dp = db::dp_by_name(&mut *tx.tx, name)
            .await?
            .ok_or_else(|| Error::not_found(Entity::Dp, name))?;
        if !dp.approved {
            return Err(Error::invalid(
                "dp_not_approved",
                format!("dp {name} is waiting for approval: `cascade dp approve {name}`"),
            ));
        }
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
    let dps = distribution::place(state, &mut tx, (package.id, &package.name), &dps).await?;
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
    let held = distribution::held_rows(&mut tx, package.id).await?;
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
            } else if !db::contains(&sites, own, site.as_str()) {
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
    let dps =
        distribution::apply_refresh(state, &mut tx, &package.name, members.as_deref()).await?;
    if dps.is_empty() && !reaches_below {
        return Err(Error::invalid(
            "not_distributed",
            format!("package {name} is not distributed to any of these dps; nothing to refresh"),
        ));
    }
    send::send_down(
        state,
        &mut tx,
        &Instruction::Refresh {
            package: package.name.clone(),
            dps: members,
        },
    )
    .await?;
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
