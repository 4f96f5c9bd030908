//! Damaged content at a site (issue 13): a chunk whose stored bytes no
//! longer match their name, found by the scrub (every stored chunk verified
//! once per `site run --scrub-pass`), while serving it (its record checksum
//! fails), or reported by a receiver (a DP or a child site that got bytes
//! from this site that do not match the name).
//!
//! The damaged chunk is removed (checked again as it is removed), so that
//! it is never served again and an upload or a fetch can bring it back. At a child site every complete
//! version using it becomes incomplete again: the content worker fetches the
//! chunk from the parent, and the DPs holding those versions are told the
//! content is arriving (they wait for it rather than fail). The central site
//! has no copy above it: it says which versions lack the chunk, and a
//! `package update` of the tree (which uploads what the library lacks, or
//! has the site read it again) puts it back.

use crate::db;
use crate::error::{Error, Result};
use crate::state::AppState;
use cascade_content::{ChunkHash, Manifest, Scrubber};
use cascade_protocol::worker::Step;
use std::collections::HashSet;
use std::time::Duration;

/// Removes the damaged chunks (each checked again as it is removed: a good
/// copy stored meanwhile stays) and makes the versions lacking them come
/// back where they can. Returns how many chunks were removed.
pub async fn repair(state: &AppState, damaged: Vec<ChunkHash>) -> Result<usize> {
    if damaged.is_empty() {
        return Ok(0);
    }
    let store = state.store.clone();
    let removed = tokio::task::spawn_blocking(move || -> Result<usize> {
        let mut removed = 0;
        for hash in damaged.iter().collect::<HashSet<_>>() {
            removed += usize::from(store.remove_if_damaged(hash)?);
        }
        Ok(removed)
    })
    .await
    .map_err(Error::task("removing damaged chunks failed"))??;
    if removed > 0 {
        restore_versions(state).await?;
    }
    Ok(removed)
}

/// Every complete version that lacks a chunk (removed as damaged, here or
/// by a repair a crash cut short) becomes incomplete again at a child site,
/// where the content worker fetches what it lacks and the DPs holding it
/// are told its content is arriving; the central site, which has no copy
/// above it, says which versions lack chunks. Run after each repair and at
/// the start of every scrub pass.
pub async fn restore_versions(state: &AppState) -> Result<()> {
    let store = state.store.clone();
    let manifests = db::complete_manifests(state.db.pool()).await?;
    let lacking = tokio::task::spawn_blocking(move || {
        manifests
            .into_iter()
            .filter_map(|(package_id, name, version, bytes)| {
                // Stored after its signature verified; one that no longer
                // parses names no chunk we can judge.
                let manifest = serde_json::from_slice::<Manifest>(&bytes).ok()?;
                let missing = manifest
                    .unique_chunks()
                    .iter()
                    .filter(|chunk| !store.contains(&chunk.hash))
                    .count();
                (missing > 0).then_some((package_id, name, version, missing))
            })
            .collect::<Vec<_>>()
    })
    .await
    .map_err(Error::task("checking complete versions failed"))?;
    if lacking.is_empty() {
        return Ok(());
    }
    if state.parent.is_none() {
        for (_, name, version, missing) in &lacking {
            tracing::error!(package = %name, version, chunks = missing, "chunks of this version were damaged on disk and removed; the central site holds no other copy: `cascade package update` of its tree puts them back");
        }
        return Ok(());
    }
    let mut tx = state.db.write().await?;
    for (package_id, name, version, missing) in &lacking {
        db::mark_version_incomplete(&mut tx, *package_id, *version).await?;
        db::bump_dps_at_version(&mut tx, *package_id, *version).await?;
        tracing::warn!(package = %name, version, chunks = missing, "chunks of this version were damaged on disk and removed; fetching them again from the parent");
    }
    tx.commit().await?;
    state.notify_everything();
    state.notify_content_needs_changed();
    Ok(())
}

/// Most chunks one damage report may name: a receiver reports the one chunk
/// that failed, so a few allow for a batch with several.
pub const MAX_REPORTED: usize = 16;

/// Verifies the chunks a receiver says this site sent it damaged, and
/// repairs those that are. Returns how many were damaged here (the others
/// were damaged on the way, or the receiver is wrong). At most
/// [`MAX_REPORTED`] chunks a report, and [`crate::state::DAMAGE_CHECKS`]
/// reports checked at once (another is refused as busy, to try later).
pub async fn check_reported(state: &AppState, hashes: Vec<ChunkHash>) -> Result<usize> {
    if hashes.len() > MAX_REPORTED {
        return Err(Error::TooLarge(format!(
            "{} chunks in one damage report; at most {MAX_REPORTED}",
            hashes.len()
        )));
    }
    let Ok(_permit) = state.damage_checks.try_acquire() else {
        return Err(Error::Unavailable {
            code: "busy",
            message: "other damage reports are being checked; report again shortly".into(),
        });
    };
    repair(state, hashes).await
}

/// The site's scrub: a share of the stored chunks verified at each step,
/// the whole store once per pass.
pub struct ScrubWork {
    state: AppState,
    pass: Duration,
    /// The pass in progress, lent to the blocking thread during a step (a
    /// new pass starts if a step's thread failed).
    scrubber: Option<Scrubber>,
}

impl ScrubWork {
    /// The scrub of `state`'s library, a pass every `pass`.
    pub fn new(state: &AppState, pass: Duration) -> ScrubWork {
        ScrubWork {
            state: state.clone(),
            pass,
            scrubber: None,
        }
    }

    /// One step: verify the next share, repair what is damaged, and wait.
    /// A pass begins by making sure every complete version has all its
    /// chunks (a repair cut short by a crash is finished there).
    pub async fn step(&mut self) -> Result<Step> {
        let mut scrubber = self
            .scrubber
            .take()
            .unwrap_or_else(|| Scrubber::new(self.pass));
        if scrubber.pass_begins() {
            if let Err(err) = restore_versions(&self.state).await {
                self.scrubber = Some(scrubber);
                return Err(err);
            }
        }
        let wait = scrubber.wait();
        let store = self.state.store.clone();
        let (scrubber, scrubbed) = tokio::task::spawn_blocking(move || {
            let scrubbed = scrubber.step(&store);
            (scrubber, scrubbed)
        })
        .await
        .map_err(Error::task("scrub task failed"))?;
        self.scrubber = Some(scrubber);
        let scrubbed = scrubbed?;
        for (hash, err) in &scrubbed.unreadable {
            tracing::warn!(chunk = %hash, error = %cascade_protocol::chain(err), "a stored chunk could not be read to verify it");
        }
        if !scrubbed.damaged.is_empty() {
            tracing::warn!(
                chunks = scrubbed.damaged.len(),
                "stored chunks failed verification"
            );
            repair(&self.state, scrubbed.damaged).await?;
        }
        Ok(Step::After(wait))
    }
}
