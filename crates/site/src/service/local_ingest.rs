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

use crate::db;
use crate::error::{Error, Result};
use crate::service::packages;
use crate::state::AppState;
use cascade_content::{
    chunk_tree_reusing, scan, ChunkHash, ChunkRef, ChunkStore, Entry, EntryKind, FileStamp,
    Manifest, SourceFile,
};
use cascade_protocol::{LocalIngestReport, LocalIngestRequest, NewVersionRequest};
use std::collections::HashMap;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// Chunk bytes stored per batch (one sync of the pack for each).
const BATCH_BYTES: usize = 16 * 1024 * 1024;

/// `POST /api/v1/ingest/local`: reads the directory and commits it as a
/// new version, as [`packages::new_version`] does for an upload.
///
/// The quick check: a file whose size, modification and change times,
/// inode and device are those the package's previous local ingest read it
/// with, from the same directory, for the package's newest version, is not
/// read again; its chunk list is that version's (when every chunk of it is
/// still stored). A stamp whose times fall within two seconds of that
/// previous scan's start proves nothing (the file may have been written
/// again within the file system's time granularity) and the file is read.
/// `read_all` reads every file.
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
    let root = dir.to_string_lossy().into_owned();
    let known = if request.read_all {
        Known::default()
    } else {
        known_files(state, &request.name, &root).await?
    };
    let started_at_ns = now_ns();
    let store = state.store.clone();
    let read = tokio::task::spawn_blocking(move || read_tree(&store, &dir, &known))
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
            name: request.name.clone(),
            intent: request.intent,
            entries: read.entries,
            allow_unchanged: request.allow_unchanged,
            allow_setuid: request.allow_setuid,
            uninstall_command: request.uninstall_command.clone(),
        },
    )
    .await?;
    let record = db::ScanRecord {
        version: version.version as i64,
        root,
        started_at_ns,
        files: read.stamps,
    };
    if let Err(err) = remember(state, &request.name, &record).await {
        // The version is committed; the next ingest reads every file.
        tracing::warn!(package = %request.name, error = %cascade_protocol::chain(&err), "recording the files read failed");
    }
    Ok(LocalIngestReport {
        version,
        chunks_reused: read.chunks_reused,
        chunks_stored: read.chunks_stored,
        bytes_stored: read.bytes_stored,
        files_unchanged: read.files_unchanged,
    })
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |now| now.as_nanos() as i64)
}

/// The files the package's previous local ingest read for its newest
/// version from `root`, with their chunk lists there, and when that scan
/// started. Empty when there is no such ingest.
#[derive(Default)]
struct Known {
    started_at_ns: i64,
    files: HashMap<String, (FileStamp, Vec<ChunkRef>)>,
}

impl Known {
    /// The chunk list of `file`, when its stamp says it is unchanged and
    /// every chunk is still stored.
    fn chunks_of(&self, store: &ChunkStore, file: &SourceFile) -> Option<Vec<ChunkRef>> {
        let (stamp, chunks) = self.files.get(&file.path)?;
        if *stamp != file.stamp || stamp.racy(self.started_at_ns) {
            return None;
        }
        chunks
            .iter()
            .all(|chunk| store.contains(&chunk.hash))
            .then(|| chunks.clone())
    }
}

async fn known_files(state: &AppState, package: &str, root: &str) -> Result<Known> {
    let pool = state.db.pool();
    let Some(row) = db::package_by_name(pool, package).await? else {
        return Ok(Known::default());
    };
    let Some(record) = db::scan_record(pool, row.id).await? else {
        return Ok(Known::default());
    };
    let newest = db::latest_version(pool, row.id).await?;
    if record.root != root || Some(record.version) != newest {
        return Ok(Known::default());
    }
    let Some((bytes, _)) = db::manifest(pool, row.id, record.version).await? else {
        return Ok(Known::default());
    };
    // Stored after its signature verified; one that no longer parses
    // gives no shortcut, and every file is read.
    let Ok(manifest) = serde_json::from_slice::<Manifest>(&bytes) else {
        return Ok(Known::default());
    };
    let mut files = HashMap::new();
    for entry in manifest.entries {
        if let EntryKind::File { chunks, .. } = entry.kind {
            if let Some(stamp) = record.files.get(&entry.path) {
                files.insert(entry.path, (*stamp, chunks));
            }
        }
    }
    Ok(Known {
        started_at_ns: record.started_at_ns,
        files,
    })
}

/// Records what an ingest read, for the next one's quick check.
async fn remember(state: &AppState, package: &str, record: &db::ScanRecord) -> Result<()> {
    let mut tx = state.db.write().await?;
    let Some(row) = db::package_by_name(&mut *tx.tx, package).await? else {
        return Ok(());
    };
    db::replace_scan_record(&mut tx, row.id, record).await?;
    tx.commit().await?;
    Ok(())
}

/// What reading a tree did.
struct Read {
    entries: Vec<Entry>,
    /// Every file's stamp, by path.
    stamps: HashMap<String, FileStamp>,
    chunks_reused: u64,
    chunks_stored: u64,
    bytes_stored: u64,
    files_unchanged: u64,
}

/// Scans `dir` and stores its chunks in batches, except for the files
/// `known` holds unchanged (not read). Reading and cutting (this thread)
/// overlaps with encoding and storing earlier batches (two threads, each
/// encoding on every core, one appending while the other encodes), two
/// batches at most waiting.
fn read_tree(store: &ChunkStore, dir: &Path, known: &Known) -> cascade_content::Result<Read> {
    let listing = scan(dir)?;
    let stamps: HashMap<String, FileStamp> = listing
        .iter()
        .filter_map(|entry| match entry {
            cascade_content::SourceEntry::File(file) => Some((file.path.clone(), file.stamp)),
            _ => None,
        })
        .collect();
    let files_unchanged = std::cell::Cell::new(0u64);
    // The chunks of the files taken unchanged: the version relies on them.
    let unchanged = std::cell::RefCell::new(Vec::<ChunkHash>::new());
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
            let reuse = |file: &SourceFile| {
                let chunks = known.chunks_of(store, file)?;
                files_unchanged.set(files_unchanged.get() + 1);
                unchanged
                    .borrow_mut()
                    .extend(chunks.iter().map(|chunk| chunk.hash));
                Some(chunks)
            };
            let entries = chunk_tree_reusing(listing, reuse, |chunk| {
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
        let entries = cut?;
        // Used, so that the retention's grace keeps them until the version
        // is committed, as the chunks found already stored are.
        let unchanged = unchanged.into_inner();
        store.touch(&unchanged, std::time::SystemTime::now())?;
        Ok(Read {
            entries,
            stamps,
            chunks_reused: reused + unchanged.len() as u64,
            chunks_stored: stored,
            bytes_stored: bytes,
            files_unchanged: files_unchanged.get(),
        })
    })
}
