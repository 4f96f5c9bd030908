//! The local ingest path (issue 13): `cascade package create` run on the
//! central site's machine, against a directory of that machine, is read
//! by the site itself: scanned, cut, hashed and compressed once, straight
//! into the chunk store, without HTTP and without a second verification
//! (the site hashed every chunk itself). Uploads from elsewhere stay the
//! way in.
//!
//! Only directories under the root given to `site run --local-ingest-root`
//! (an operator's choice on the site's machine, never settable through
//! the API) are read, and never one that holds the site's own directory
//! or lies inside it: an administrator's token must not turn the site's
//! signing key into a package.

use crate::error::{Error, Result};
use crate::service::packages;
use crate::state::AppState;
use cascade_content::{chunk_tree, scan, ChunkHash, Entry};
use cascade_protocol::{LocalIngestReport, LocalIngestRequest, NewVersionRequest};
use std::path::Path;

/// Chunk bytes stored per batch (one sync of the pack for each).
const BATCH_BYTES: usize = 16 * 1024 * 1024;

/// `POST /api/v1/ingest/local`: reads the directory and commits it as a
/// new version, as [`packages::new_version`] does for an upload.
pub async fn ingest(state: &AppState, request: LocalIngestRequest) -> Result<LocalIngestReport> {
    state.require_central("creating and updating packages")?;
    let local = state.local_ingest.as_ref().ok_or_else(|| {
        Error::invalid(
            "local_ingest_off",
            "this site reads no directory of its own machine (site run --local-ingest-root)",
        )
    })?;
    cascade_domain::PackageName::new(&request.name)?;
    let dir = local.allowed(&request.path)?;
    let store = state.store.clone();
    let (entries, chunks_reused, chunks_stored, bytes_stored) =
        tokio::task::spawn_blocking(move || read_tree(&store, &dir))
            .await
            .map_err(Error::task("local ingest task failed"))?
            .map_err(|err| match err {
                // The store failing is the site's trouble, not the request's.
                cascade_content::Error::WriteBatch { .. } => Error::Content(err),
                err => Error::invalid("unreadable_source", cascade_protocol::chain(&err)),
            })?;
    let version = packages::new_version(
        state,
        NewVersionRequest {
            name: request.name,
            intent: request.intent,
            entries,
            allow_unchanged: request.allow_unchanged,
            allow_setuid: request.allow_setuid,
        },
    )
    .await?;
    Ok(LocalIngestReport {
        version,
        chunks_reused,
        chunks_stored,
        bytes_stored,
    })
}

/// Scans `dir` and stores its chunks in batches: the tree's entries and
/// how many chunks were held already, how many were stored and their
/// stored bytes. Reading and cutting (this thread) overlaps with encoding
/// and storing earlier batches (two threads, each encoding on every core,
/// one appending while the other encodes), two batches at most waiting.
fn read_tree(
    store: &cascade_content::ChunkStore,
    dir: &Path,
) -> cascade_content::Result<(Vec<Entry>, u64, u64, u64)> {
    let listing = scan(dir)?;
    let (sender, receiver) = std::sync::mpsc::sync_channel::<Vec<(ChunkHash, Vec<u8>)>>(2);
    let receiver = std::sync::Mutex::new(receiver);
    std::thread::scope(|scope| {
        // Two storing threads: one encodes its batch (on every core) while
        // the other appends and syncs the previous one.
        let receiver = &receiver;
        let store_batches = move || -> cascade_content::Result<(u64, u64, u64)> {
            let (mut reused, mut stored, mut bytes) = (0u64, 0u64, 0u64);
            loop {
                let next = receiver.lock().expect("batch receiver").recv();
                let Ok(batch) = next else {
                    return Ok((reused, stored, bytes));
                };
                let refs: Vec<(ChunkHash, &[u8])> = batch
                    .iter()
                    .map(|(hash, data)| (*hash, data.as_slice()))
                    .collect();
                let mut held = Vec::new();
                for (outcome, (hash, _)) in store.put_hashed_batch(&refs)?.into_iter().zip(&refs) {
                    if outcome.newly_stored {
                        stored += 1;
                        bytes += outcome.stored_bytes;
                    } else {
                        reused += 1;
                        held.push(*hash);
                    }
                }
                // The version relies on these: used, so that the retention's
                // grace keeps them until it is committed.
                store.touch(&held, std::time::SystemTime::now())?;
            }
        };
        let storing: Vec<_> = (0..2)
            .map(|_| {
                std::thread::Builder::new()
                    .name("local-ingest-store".into())
                    .spawn_scoped(scope, store_batches)
            })
            .collect::<std::io::Result<_>>()
            .map_err(|source| cascade_content::Error::Chunking { source })?;
        // The storing thread stopped (an error it returns below).
        let gone = || cascade_content::Error::Chunking {
            source: std::io::Error::other("storing chunks stopped"),
        };
        let cut = (|| -> cascade_content::Result<Vec<Entry>> {
            let mut batch: Vec<(ChunkHash, Vec<u8>)> = Vec::new();
            let mut batch_bytes = 0;
            let entries = chunk_tree(listing, |chunk| {
                batch_bytes += chunk.data.len();
                batch.push((chunk.hash, chunk.data.clone()));
                if batch_bytes >= BATCH_BYTES {
                    batch_bytes = 0;
                    sender
                        .send(std::mem::take(&mut batch))
                        .map_err(|_| gone())?;
                }
                Ok(())
            })?;
            if !batch.is_empty() {
                sender.send(batch).map_err(|_| gone())?;
            }
            Ok(entries)
        })();
        drop(sender);
        let (mut reused, mut stored, mut bytes) = (0, 0, 0);
        // A storing thread's error explains a cut stopped by it.
        for thread in storing {
            let (r, s, b) = thread.join().expect("a storing thread panicked")?;
            (reused, stored, bytes) = (reused + r, stored + s, bytes + b);
        }
        Ok((cut?, reused, stored, bytes))
    })
}
