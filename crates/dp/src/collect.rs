//! Garbage collection at a DP (issue 13): nothing was ever deleted, so
//! every version a DP had held stayed on its disk. After a pass of the
//! sync worker that brought every assignment about, the chunks no held
//! version references are removed and the packs they leave mostly dead
//! are compacted.
//!
//! **Architecture Invariant:** collection runs in the sync worker, between
//! its passes, never beside a transfer of its own, and removes only what
//! no held version references; the held manifests are verified first, and
//! one that does not verify stops the collection (nothing is removed on a
//! guess). An agent that still asks for a chunk of an older version gets a
//! 404 and takes the next source.

use crate::db;
use crate::error::{Error, Result};
use crate::Dp;
use cascade_content::CompactReport;
use std::collections::HashSet;

/// What one [`collect`] removed.
#[derive(Debug, Default)]
pub(crate) struct Collected {
    /// Chunks removed.
    pub chunks: u64,
    /// Their stored bytes.
    pub bytes: u64,
    /// What the compaction after it did.
    pub compacted: CompactReport,
}

/// Removes the chunks no held version references and compacts the store.
/// A chunk found damaged while compacting is dropped, and the packages
/// that use it are repaired.
pub(crate) async fn collect(dp: &Dp) -> Result<Collected> {
    let held = db::all_held(&dp.db).await?;
    let mut manifests = Vec::with_capacity(held.len());
    for held in &held {
        manifests.push(held.verified(&dp.site_key)?);
    }
    let referenced: HashSet<_> = manifests
        .iter()
        .flat_map(|manifest| manifest.unique_chunks())
        .map(|chunk| chunk.hash)
        .collect();
    let store = dp.store.clone();
    let collected = tokio::task::spawn_blocking(move || -> Result<Collected> {
        let (chunks, bytes) = store.remove_where(|chunk| !referenced.contains(&chunk.hash))?;
        Ok(Collected {
            chunks,
            bytes,
            compacted: store.compact()?,
        })
    })
    .await
    .map_err(|err| Error::Config(format!("collection task failed: {err}")))??;
    dp.repair_packages_using(&collected.compacted.damaged)
        .await?;
    if collected.chunks > 0 || collected.compacted.packs_removed > 0 {
        db::add_counters(
            &dp.db,
            &[
                ("chunks_collected", collected.chunks),
                ("bytes_collected", collected.bytes),
                ("packs_compacted", collected.compacted.packs_removed),
            ],
        )
        .await?;
        tracing::info!(
            chunks = collected.chunks,
            bytes = collected.bytes,
            packs_compacted = collected.compacted.packs_removed,
            disk_freed = collected.compacted.bytes_freed,
            "removed chunks no held version uses"
        );
    }
    Ok(collected)
}
