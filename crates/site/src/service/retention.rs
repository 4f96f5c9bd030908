//! Retention and garbage collection at a site (issue 13): nothing was ever
//! deleted, so a site's library grew with every version. Each site keeps,
//! per package, the newest `site settings --keep-versions` complete
//! versions (and any newer one still arriving), plus every version an open
//! job names (not canceled, not expired); the others are retired — their
//! manifests stay, listed as retired, and their chunks go.
//!
//! **Architecture Invariant:** a chunk is removed only when no version
//! that is not retired uses it and it was neither stored nor used for
//! `site run --chunk-grace` (an hour unless given): an upload in progress,
//! whose chunks no version names until it is committed, or one relying on
//! chunks the site answered it already holds (`missing` marks those as
//! used), keeps them. The newest complete version of a package is never
//! retired, nor one an open job names, so no offer loses its content.

use crate::db;
use crate::error::{Error, Result};
use crate::state::AppState;
use cascade_content::{ChunkHash, CompactReport, Manifest};
use cascade_store::now_ms;
use std::collections::HashSet;
use std::time::{Duration, SystemTime};

/// How long an unreferenced chunk stays unless `site run --chunk-grace`
/// says otherwise.
pub const DEFAULT_CHUNK_GRACE: Duration = Duration::from_secs(3600);

/// Retires the versions the retention no longer keeps; returns them as
/// (package, version).
pub async fn retire_due(state: &AppState) -> Result<Vec<(String, u64)>> {
    let now = now_ms();
    let mut tx = state.db.write().await?;
    let keep = db::read_settings(&mut *tx.tx).await?.keep_versions.max(1) as usize;
    let mut retired = Vec::new();
    for package in db::all_packages(&mut *tx.tx).await? {
        let (package_id, name) = (package.id, package.name);
        // Newest first: incomplete ones newer than the kept complete ones
        // are still arriving and stay; past `keep` complete ones, the rest
        // go unless an open job names them.
        let mut complete_kept = 0;
        for (version, complete) in db::unretired_versions(&mut *tx.tx, package_id).await? {
            if complete_kept < keep {
                complete_kept += complete as usize;
                continue;
            }
            if db::open_job_names(&mut *tx.tx, package_id, version, now).await? {
                continue;
            }
            db::retire_version(&mut tx, package_id, version, now).await?;
            retired.push((name.clone(), version as u64));
        }
    }
    tx.commit().await?;
    for (package, version) in &retired {
        tracing::info!(%package, version, "version retired: its chunks go once no kept version uses them");
    }
    Ok(retired)
}

/// What one [`collect`] removed.
#[derive(Debug, Default)]
pub struct Collected {
    /// Chunks removed.
    pub chunks: u64,
    /// Their stored bytes.
    pub bytes: u64,
    /// What the compaction after it did.
    pub compacted: CompactReport,
    /// When the next unreferenced chunk left for its grace is due.
    pub next_due: Option<Duration>,
}

/// Removes the chunks no version that is not retired uses, once unused
/// for `grace`, and compacts the library.
pub async fn collect(state: &AppState, grace: Duration) -> Result<Collected> {
    let manifests = db::unretired_manifests(state.db.pool()).await?;
    let mut referenced: HashSet<ChunkHash> = HashSet::new();
    for bytes in manifests {
        // Stored after its signature verified; a row that no longer parses
        // stops the collection rather than lose what it names.
        let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|err| {
            Error::Internal(format!(
                "a stored manifest does not parse ({err}); nothing collected"
            ))
        })?;
        referenced.extend(manifest.unique_chunks().iter().map(|chunk| chunk.hash));
    }
    let store = state.store.clone();
    let now = SystemTime::now();
    tokio::task::spawn_blocking(move || -> Result<Collected> {
        let mut next_due: Option<Duration> = None;
        let (chunks, bytes) = store.remove_where(|chunk| {
            if referenced.contains(&chunk.hash) {
                return false;
            }
            let unused_for = now.duration_since(chunk.written).unwrap_or_default();
            let due = grace.saturating_sub(unused_for);
            if !due.is_zero() {
                next_due = Some(next_due.map_or(due, |next| next.min(due)));
            }
            due.is_zero()
        })?;
        Ok(Collected {
            chunks,
            bytes,
            compacted: store.compact()?,
            next_due,
        })
    })
    .await
    .map_err(Error::task("collection task failed"))?
}
