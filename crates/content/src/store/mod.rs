//! The chunk store on disk: chunks appended to pack files, indexed,
//! written crash-safely and verified once, when stored.
//!
//! Layout (format 2, [`FORMAT_VERSION`]):
//!
//! ```text
//! root/FORMAT                 "cascade chunk store" and the format version
//! root/lock                   locked by the process that has the store open
//! root/packs/00000001.pack    encoded chunks back to back (see `pack`)
//! root/packs/00000001.idx     what the pack holds, appended as it happens
//! ```
//!
//! A batch of chunks is appended to the current pack (a new one is started
//! past [`DEFAULT_PACK_TARGET`]), the pack is synced, then the batch's index
//! entries are appended and synced, and only then is the batch visible to
//! readers: the index never points at bytes that were not synced, and a
//! crash leaves at worst a torn tail, cut when the store is next opened.
//! Index entries of every pack are read into memory at open (72 bytes on
//! disk per chunk).
//!
//! Reading: [`ChunkStore::get`] decodes and checks the BLAKE3 name;
//! [`ChunkStore::get_encoded`], the bytes a sender ships, checks only the
//! stored checksum of the record (damage on disk is noticed before the
//! bytes are served), since every chunk was verified when it was stored
//! and every receiver verifies again what it stores.
//!
//! Removing a chunk records a drop; its bytes stay in the pack until
//! [`ChunkStore::compact`] copies the live chunks of a pack that is mostly
//! dead into the current pack (checking each, so that compaction is also a
//! scrub) and deletes the old pack, index first.
//!
//! A format-1 store (one file per chunk) is upgraded in place when opened:
//! its chunks are verified, moved into packs batch by batch, and their
//! files removed once the batch is synced; an interrupted upgrade resumes.

mod legacy;
mod pack;
mod scrub;

pub use scrub::{Scrubbed, Scrubber, DEFAULT_SCRUB_PASS};

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::chunk::ChunkHash;
use crate::encoding::{decode_verified, encode};
use crate::error::{Error, Result};
use pack::{Entry, Kind, ENTRY_LEN, HEADER_LEN, IDX_MAGIC, PACK_MAGIC};

/// The store format this build writes and reads (format 1 is upgraded).
pub const FORMAT_VERSION: u32 = 2;
/// A pack is closed and a new one started once it holds this many bytes.
pub const DEFAULT_PACK_TARGET: u64 = 32 * 1024 * 1024;

const FORMAT_FILE: &str = "FORMAT";
const LOCK_FILE: &str = "lock";
const PACKS_DIR: &str = "packs";
/// Upgrading from format 1 moves this many bytes per synced batch.
const UPGRADE_BATCH: usize = 8 * 1024 * 1024;
/// At most this many pack files are kept open for reading.
const MAX_OPEN_READERS: usize = 256;

/// A content-addressed chunk store rooted at one directory. Cheap to clone;
/// clones share the open store. One process at a time has a store open.
#[derive(Clone)]
pub struct ChunkStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ChunkStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkStore")
            .field("root", &self.inner.root)
            .finish_non_exhaustive()
    }
}

/// One chunk as [`ChunkStore::list`] finds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoredChunk {
    /// Its hash.
    pub hash: ChunkHash,
    /// Size of its stored (encoded) form.
    pub stored_bytes: u64,
    /// When it was stored, or used last ([`ChunkStore::touch`]).
    pub written: SystemTime,
}

/// What a put did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PutOutcome {
    /// Size of the chunk's stored (encoded) form.
    pub stored_bytes: u64,
    /// False when the chunk was already present and nothing was written.
    pub newly_stored: bool,
}

/// Where a chunk's stored bytes are: for diagnostics, and for tests that
/// damage them as a failing disk would.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkLocation {
    /// The pack file.
    pub pack: PathBuf,
    /// Where its bytes start in the pack.
    pub offset: u64,
    /// How many bytes.
    pub len: u64,
}

/// What opening the store found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Chunks moved from a format-1 store into packs.
    pub upgraded_chunks: u64,
    /// Format-1 chunk files that did not verify and were removed.
    pub damaged_dropped: u64,
    /// Bytes past the last synced entry of a pack or index (a write the
    /// process did not finish), cut.
    pub torn_bytes_cut: u64,
    /// Packs whose index or pack file was missing (a pack being created or
    /// deleted), removed.
    pub incomplete_packs_removed: u64,
}

impl OpenReport {
    /// True when opening found nothing to upgrade, cut or remove.
    pub fn is_clean(&self) -> bool {
        *self == OpenReport::default()
    }
}

impl std::fmt::Display for OpenReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} chunks upgraded from format 1, {} damaged ones dropped, {} torn bytes cut, {} incomplete packs removed",
            self.upgraded_chunks,
            self.damaged_dropped,
            self.torn_bytes_cut,
            self.incomplete_packs_removed
        )
    }
}

/// How the store's disk is used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreUsage {
    /// Chunks stored.
    pub chunks: u64,
    /// Their stored bytes.
    pub live_bytes: u64,
    /// Bytes of all packs (live, dropped and not yet compacted, headers).
    pub pack_bytes: u64,
    /// Pack files.
    pub packs: u64,
}

/// What one [`ChunkStore::compact`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompactReport {
    /// Packs deleted.
    pub packs_removed: u64,
    /// Live chunks copied out of them.
    pub chunks_moved: u64,
    /// Bytes of disk given back.
    pub bytes_freed: u64,
    /// Chunks found damaged on the way and dropped (to be fetched again).
    pub damaged: Vec<ChunkHash>,
}

struct Inner {
    root: PathBuf,
    packs: PathBuf,
    /// Held locked for as long as the store is open.
    _lock: File,
    index: RwLock<Index>,
    /// Appends to the current pack; taken before `index` when both are.
    writer: Mutex<Writer>,
    readers: Mutex<HashMap<u32, Arc<File>>>,
    pack_target: AtomicU64,
    opened: Mutex<OpenReport>,
}

/// Where a chunk is, and when it was stored or last used.
#[derive(Clone, Copy, Debug)]
struct Loc {
    pack: u32,
    offset: u64,
    len: u32,
    checksum: u64,
    at_ms: u64,
}

/// Bytes of records in a pack, and how many of them are live.
#[derive(Clone, Copy, Debug, Default)]
struct PackUse {
    bytes: u64,
    live: u64,
}

#[derive(Default)]
struct Index {
    chunks: HashMap<ChunkHash, Loc>,
    packs: BTreeMap<u32, PackUse>,
}

impl Index {
    fn insert(&mut self, hash: ChunkHash, loc: Loc) {
        if let Some(old) = self.chunks.insert(hash, loc) {
            self.unuse(old);
        }
        self.packs.entry(loc.pack).or_default().live += u64::from(loc.len);
    }

    fn remove(&mut self, hash: &ChunkHash) -> Option<Loc> {
        let old = self.chunks.remove(hash)?;
        self.unuse(old);
        Some(old)
    }

    fn unuse(&mut self, loc: Loc) {
        if let Some(pack) = self.packs.get_mut(&loc.pack) {
            pack.live = pack.live.saturating_sub(u64::from(loc.len));
        }
    }

    /// Replays one index's entries, in order.
    fn replay(&mut self, pack: u32, entries: &[Entry]) {
        for entry in entries {
            match entry.kind {
                Kind::Put => self.insert(
                    entry.hash,
                    Loc {
                        pack,
                        offset: entry.offset,
                        len: entry.len,
                        checksum: entry.checksum,
                        at_ms: entry.at_ms,
                    },
                ),
                Kind::Drop => {
                    self.remove(&entry.hash);
                }
                Kind::Used => {
                    if let Some(loc) = self.chunks.get_mut(&entry.hash) {
                        loc.at_ms = loc.at_ms.max(entry.at_ms);
                    }
                }
            }
        }
    }
}

/// The pack being appended to, if one is open.
struct Writer {
    next_id: u32,
    current: Option<Current>,
}

struct Current {
    id: u32,
    pack: File,
    idx: File,
    pack_len: u64,
    idx_len: u64,
}

/// A chunk about to be appended: verified already.
#[derive(Clone, Copy)]
struct Record<'a> {
    hash: ChunkHash,
    encoded: &'a [u8],
    at_ms: u64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |at| at.as_millis() as u64)
}

impl ChunkStore {
    /// Opens the store at `root`, creating it if missing: locks it (an
    /// error if another process has it open), refuses a format this build
    /// does not know, cuts torn pack tails, removes half-created or
    /// half-deleted packs, and upgrades a format-1 store in place.
    pub fn open(root: &Path) -> Result<Self> {
        fs::create_dir_all(root).map_err(Error::io("creating chunk store", root))?;
        let lock_path = root.join(LOCK_FILE);
        let lock_file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(Error::io("opening the lock of", &lock_path))?;
        match lock_file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(Error::StoreLocked {
                    path: root.to_path_buf(),
                })
            }
            Err(fs::TryLockError::Error(source)) => {
                return Err(Error::io("locking", &lock_path)(source))
            }
        }
        let format = read_format(root)?;
        let packs = root.join(PACKS_DIR);
        fs::create_dir_all(&packs).map_err(Error::io("creating pack directory", &packs))?;
        let mut report = OpenReport::default();
        let (index, writer) = load(&packs, &mut report)?;
        let store = ChunkStore {
            inner: Arc::new(Inner {
                root: root.to_path_buf(),
                packs,
                _lock: lock_file,
                index: RwLock::new(index),
                writer: Mutex::new(writer),
                readers: Mutex::new(HashMap::new()),
                pack_target: AtomicU64::new(DEFAULT_PACK_TARGET),
                opened: Mutex::new(report),
            }),
        };
        if format.is_none() {
            store.upgrade_from_format_1()?;
            write_format(root)?;
        }
        Ok(store)
    }

    /// Starts new packs past `bytes` instead of [`DEFAULT_PACK_TARGET`]
    /// (tests that need many packs).
    pub fn with_pack_target(self, bytes: u64) -> Self {
        self.inner
            .pack_target
            .store(bytes.max(1), Ordering::Relaxed);
        self
    }

    /// The directory the store lives in.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// What opening the store found and did.
    pub fn opened(&self) -> OpenReport {
        lock(&self.inner.opened).clone()
    }

    /// Whether the chunk is stored.
    pub fn contains(&self, hash: &ChunkHash) -> bool {
        self.index().chunks.contains_key(hash)
    }

    /// Where the chunk's stored bytes are, if it is stored.
    pub fn location(&self, hash: &ChunkHash) -> Option<ChunkLocation> {
        let loc = self.index().chunks.get(hash).copied()?;
        Some(ChunkLocation {
            pack: pack::pack_path(&self.inner.packs, loc.pack),
            offset: loc.offset,
            len: u64::from(loc.len),
        })
    }

    /// Stores `data` under `hash`, which must be its BLAKE3 hash (else
    /// [`Error::Corrupt`]). A no-op when the chunk is already present.
    pub fn put(&self, hash: &ChunkHash, data: &[u8]) -> Result<PutOutcome> {
        let actual = ChunkHash::of(data);
        if actual != *hash {
            return Err(Error::Corrupt {
                hash: *hash,
                reason: format!("data to store hashes to {actual}"),
            });
        }
        if let Some(outcome) = self.already_stored(hash) {
            return Ok(outcome);
        }
        let encoded = encode(data);
        let at_ms = now_ms();
        let outcomes = self.store_verified(&[Record {
            hash: *hash,
            encoded: &encoded,
            at_ms,
        }])?;
        Ok(outcomes[0])
    }

    /// Stores an already encoded chunk (as received over the wire) after
    /// decoding and verifying it: bad bytes are never stored.
    pub fn put_encoded(&self, hash: &ChunkHash, encoded: &[u8]) -> Result<PutOutcome> {
        Ok(self.put_encoded_batch(&[(*hash, encoded)])?[0])
    }

    /// Stores many already encoded chunks, each decoded and verified first
    /// on every core (one bad chunk refuses the whole batch, and nothing of
    /// it is stored), appended to the current pack with one sync of the
    /// pack and one of its index for the whole batch. When this returns,
    /// every chunk of the batch is stored for good; a crash before leaves
    /// none of the batch visible. Outcomes are in the order given.
    pub fn put_encoded_batch(&self, chunks: &[(ChunkHash, &[u8])]) -> Result<Vec<PutOutcome>> {
        verify_on_every_core(chunks)?;
        let at_ms = now_ms();
        let records: Vec<Record<'_>> = chunks
            .iter()
            .map(|(hash, encoded)| Record {
                hash: *hash,
                encoded,
                at_ms,
            })
            .collect();
        self.store_verified(&records)
    }

    /// Stores chunks this process has just cut and hashed itself (as
    /// [`crate::chunk_file`] does), encoding them on every core; nothing is
    /// hashed again, so the caller answers for each hash being its data's.
    /// The local ingest path (the site reading a directory of its own
    /// machine) stores through this; whatever arrives from another process
    /// goes through [`ChunkStore::put_encoded_batch`]. Outcomes are in the
    /// order given.
    pub fn put_hashed_batch(&self, chunks: &[(ChunkHash, &[u8])]) -> Result<Vec<PutOutcome>> {
        let fresh: Vec<(ChunkHash, &[u8])> = {
            let index = self.index();
            let mut seen = HashSet::new();
            chunks
                .iter()
                .filter(|(hash, _)| !index.chunks.contains_key(hash) && seen.insert(*hash))
                .copied()
                .collect()
        };
        let encoded = on_every_core(&fresh, |(_, data)| data.len(), |(_, data)| encode(data));
        let at_ms = now_ms();
        let records: Vec<Record<'_>> = fresh
            .iter()
            .zip(&encoded)
            .map(|((hash, _), encoded)| Record {
                hash: *hash,
                encoded,
                at_ms,
            })
            .collect();
        let mut stored: HashMap<ChunkHash, PutOutcome> = fresh
            .iter()
            .map(|(hash, _)| *hash)
            .zip(self.store_verified(&records)?)
            .collect();
        Ok(chunks
            .iter()
            .map(|(hash, _)| {
                stored.remove(hash).unwrap_or_else(|| {
                    self.already_stored(hash).unwrap_or(PutOutcome {
                        stored_bytes: 0,
                        newly_stored: false,
                    })
                })
            })
            .collect())
    }

    /// Reads, decodes and verifies a chunk against its name.
    /// [`Error::NotFound`] when absent, [`Error::Corrupt`] when the stored
    /// bytes are damaged.
    pub fn get(&self, hash: &ChunkHash) -> Result<Vec<u8>> {
        let encoded = self.get_encoded(hash)?;
        decode_verified(hash, &encoded)
    }

    /// A chunk's stored (encoded) form, ready to ship over the wire, read
    /// with one read and checked against the checksum kept when it was
    /// stored (verified then): [`Error::Corrupt`] when the disk damaged it.
    /// The receiver verifies the chunk against its name.
    pub fn get_encoded(&self, hash: &ChunkHash) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.get_encoded_into(hash, &mut out)?;
        Ok(out)
    }

    /// As [`ChunkStore::get_encoded`], read straight onto the end of `out`
    /// (a sender's buffer of frames, reused from chunk to chunk: no buffer
    /// of its own, no copy); returns its length. On an error `out` is as
    /// it was.
    pub fn get_encoded_into(&self, hash: &ChunkHash, out: &mut Vec<u8>) -> Result<usize> {
        let start = out.len();
        let result = self.read_encoded(hash, out, start);
        if result.is_err() {
            out.truncate(start);
        }
        result
    }

    fn read_encoded(&self, hash: &ChunkHash, out: &mut Vec<u8>, start: usize) -> Result<usize> {
        // A chunk moved by a compaction between the look-up and the open
        // is looked up again.
        for _ in 0..2 {
            let loc = self
                .index()
                .chunks
                .get(hash)
                .copied()
                .ok_or(Error::NotFound { hash: *hash })?;
            let path = pack::pack_path(&self.inner.packs, loc.pack);
            let read_error = |source| Error::ReadChunk {
                hash: *hash,
                path: path.clone(),
                source,
            };
            let file = match self.reader(loc.pack) {
                Ok(file) => file,
                Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
                Err(error) => return Err(read_error(error)),
            };
            out.resize(start + loc.len as usize, 0);
            let bytes = &mut out[start..];
            match pack::read_into(&file, loc.offset, bytes) {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => {
                    return Err(Error::Corrupt {
                        hash: *hash,
                        reason: format!("its pack {} was cut short", path.display()),
                    })
                }
                Err(error) => return Err(read_error(error)),
            };
            if pack::record_checksum(bytes) != loc.checksum {
                return Err(Error::Corrupt {
                    hash: *hash,
                    reason: format!(
                        "its bytes in {} no longer match their checksum (disk damage?)",
                        path.display()
                    ),
                });
            }
            return Ok(bytes.len());
        }
        Err(Error::NotFound { hash: *hash })
    }

    /// Removes a chunk (its bytes go at the next [`ChunkStore::compact`]);
    /// removing a missing chunk is not an error.
    pub fn remove(&self, hash: &ChunkHash) -> Result<()> {
        self.remove_all(&[(*hash, None)]).map(|_| ())
    }

    /// Removes chunks with one write of their drop entries: each one
    /// stored, and, when it comes with a time, still last used then (a
    /// chunk used again since a caller decided to remove it stays).
    /// Returns the bytes of each chunk removed.
    fn remove_all(&self, doomed: &[(ChunkHash, Option<u64>)]) -> Result<Vec<u64>> {
        let mut writer = lock(&self.inner.writer);
        self.drop_entries(&mut writer, doomed)
    }

    /// Removes a chunk whose stored bytes no longer match its name, checked
    /// again under the writer lock: a good copy stored since whoever found
    /// the damage decided to remove it stays. Returns whether it was
    /// removed.
    pub fn remove_if_damaged(&self, hash: &ChunkHash) -> Result<bool> {
        let mut writer = lock(&self.inner.writer);
        match self.get(hash) {
            Err(Error::Corrupt { .. }) => {}
            Ok(_) | Err(Error::NotFound { .. }) => return Ok(false),
            Err(error) => return Err(error),
        }
        Ok(!self.drop_entries(&mut writer, &[(*hash, None)])?.is_empty())
    }

    /// The drops of [`ChunkStore::remove_all`], the writer lock held.
    fn drop_entries(
        &self,
        writer: &mut Writer,
        doomed: &[(ChunkHash, Option<u64>)],
    ) -> Result<Vec<u64>> {
        let at_ms = now_ms();
        let mut removed = Vec::new();
        let entries: Vec<Entry> = {
            let mut index = self.index_mut();
            let mut entries = Vec::new();
            for (hash, used_at) in doomed {
                let Some(loc) = index.chunks.get(hash) else {
                    continue;
                };
                if used_at.is_some_and(|used_at| used_at != loc.at_ms) {
                    continue;
                }
                if let Some(loc) = index.remove(hash) {
                    removed.push(u64::from(loc.len));
                    entries.push(Entry {
                        kind: Kind::Drop,
                        hash: *hash,
                        offset: 0,
                        len: 0,
                        checksum: 0,
                        at_ms,
                    });
                }
            }
            entries
        };
        if entries.is_empty() {
            return Ok(removed);
        }
        // Not synced: a drop lost in a crash brings back a chunk whose
        // bytes are still there, to be removed again.
        self.append_entries(writer, &entries)?;
        Ok(removed)
    }

    /// Marks chunks as used at `at` (those not stored are skipped): a
    /// cache keeps what was used last.
    pub fn touch(&self, hashes: &[ChunkHash], at: SystemTime) -> Result<()> {
        let at_ms = at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |at| at.as_millis() as u64);
        let mut writer = lock(&self.inner.writer);
        let mut entries = Vec::new();
        {
            let mut index = self.index_mut();
            for hash in hashes {
                if let Some(loc) = index.chunks.get_mut(hash) {
                    loc.at_ms = at_ms;
                    entries.push(Entry {
                        kind: Kind::Used,
                        hash: *hash,
                        offset: 0,
                        len: 0,
                        checksum: 0,
                        at_ms,
                    });
                }
            }
        }
        if entries.is_empty() {
            return Ok(());
        }
        // Not synced: a use lost in a crash only ages the chunk.
        self.append_entries(&mut writer, &entries)
    }

    /// Every chunk stored, with its stored size and when it was stored or
    /// last used (for a cache's eviction), in no particular order.
    pub fn list(&self) -> Result<Vec<StoredChunk>> {
        Ok(self
            .index()
            .chunks
            .iter()
            .map(|(hash, loc)| StoredChunk {
                hash: *hash,
                stored_bytes: u64::from(loc.len),
                written: UNIX_EPOCH + Duration::from_millis(loc.at_ms),
            })
            .collect())
    }

    /// Removes every chunk `doomed` says to (it sees each stored chunk
    /// once), with one write of their drop entries, except those used
    /// again ([`ChunkStore::touch`]) while it was deciding; returns how many were removed and their stored bytes.
    /// Their disk comes back at the next [`ChunkStore::compact`].
    pub fn remove_where(&self, mut doomed: impl FnMut(&StoredChunk) -> bool) -> Result<(u64, u64)> {
        let mut chosen = Vec::new();
        for chunk in self.list()? {
            if doomed(&chunk) {
                let used_at = chunk
                    .written
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |at| at.as_millis() as u64);
                chosen.push((chunk.hash, Some(used_at)));
            }
        }
        let removed = self.remove_all(&chosen)?;
        Ok((removed.len() as u64, removed.iter().sum()))
    }

    /// How the store's disk is used.
    pub fn usage(&self) -> StoreUsage {
        let index = self.index();
        StoreUsage {
            chunks: index.chunks.len() as u64,
            live_bytes: index.chunks.values().map(|loc| u64::from(loc.len)).sum(),
            pack_bytes: index
                .packs
                .values()
                .map(|pack| pack.bytes + 2 * HEADER_LEN)
                .sum(),
            packs: index.packs.len() as u64,
        }
    }

    /// Gives back the disk of removed chunks: every pack that is at least
    /// half dead (the current one too, which is then closed) has its live chunks copied into the
    /// current pack (each decoded and verified; a damaged one is dropped
    /// and reported, to be fetched again) and is deleted once the copies
    /// are synced, index first. A crash at any point leaves every chunk
    /// either where it was or where it was copied, or both.
    pub fn compact(&self) -> Result<CompactReport> {
        let mut report = CompactReport::default();
        loop {
            let mut writer = lock(&self.inner.writer);
            let current = writer.current.as_ref().map(|current| current.id);
            let candidate = self
                .index()
                .packs
                .iter()
                .find(|(id, pack)| {
                    pack.live * 2 <= pack.bytes && (Some(**id) != current || pack.bytes > 0)
                })
                .map(|(id, _)| *id);
            let Some(id) = candidate else {
                return Ok(report);
            };
            if Some(id) == current {
                // Mostly dead itself: closed, and the next write starts another.
                writer.current = None;
            }
            self.compact_pack(&mut writer, id, &mut report)?;
        }
    }

    fn compact_pack(&self, writer: &mut Writer, id: u32, report: &mut CompactReport) -> Result<()> {
        let live: Vec<(ChunkHash, Loc)> = self
            .index()
            .chunks
            .iter()
            .filter(|(_, loc)| loc.pack == id)
            .map(|(hash, loc)| (*hash, *loc))
            .collect();
        let mut copies: Vec<(ChunkHash, Vec<u8>, u64)> = Vec::with_capacity(live.len());
        for (hash, loc) in &live {
            match self.get(hash) {
                Ok(_) => {}
                Err(Error::Corrupt { .. }) => {
                    report.damaged.push(*hash);
                    continue;
                }
                Err(error) => return Err(error),
            }
            let encoded = self.get_encoded(hash)?;
            copies.push((*hash, encoded, loc.at_ms));
        }
        let records: Vec<Record<'_>> = copies
            .iter()
            .map(|(hash, encoded, at_ms)| Record {
                hash: *hash,
                encoded,
                at_ms: *at_ms,
            })
            .collect();
        if !records.is_empty() {
            self.append_records(writer, &records)?;
        }
        for hash in &report.damaged {
            self.index_mut().remove(hash);
        }
        let freed = {
            let mut index = self.index_mut();
            index
                .packs
                .remove(&id)
                .map_or(0, |pack| pack.bytes + 2 * HEADER_LEN)
        };
        lock(&self.inner.readers).remove(&id);
        let idx = pack::idx_path(&self.inner.packs, id);
        let pack_file = pack::pack_path(&self.inner.packs, id);
        fs::remove_file(&idx).map_err(Error::io("removing pack index", &idx))?;
        fs::remove_file(&pack_file).map_err(Error::io("removing pack", &pack_file))?;
        sync_dir(&self.inner.packs).map_err(Error::io("syncing", &self.inner.packs))?;
        report.packs_removed += 1;
        report.chunks_moved += records.len() as u64;
        report.bytes_freed += freed;
        Ok(())
    }

    fn index(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.inner
            .index
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn index_mut(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.inner
            .index
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn already_stored(&self, hash: &ChunkHash) -> Option<PutOutcome> {
        self.index().chunks.get(hash).map(|loc| PutOutcome {
            stored_bytes: u64::from(loc.len),
            newly_stored: false,
        })
    }

    /// Stores records already verified: those not present yet (once each)
    /// are appended; outcomes in the order given.
    fn store_verified(&self, records: &[Record<'_>]) -> Result<Vec<PutOutcome>> {
        let mut writer = lock(&self.inner.writer);
        let mut outcomes = Vec::with_capacity(records.len());
        let mut new = Vec::new();
        {
            let index = self.index();
            let mut seen = HashSet::new();
            for record in records {
                if let Some(loc) = index.chunks.get(&record.hash) {
                    outcomes.push(PutOutcome {
                        stored_bytes: u64::from(loc.len),
                        newly_stored: false,
                    });
                    continue;
                }
                let newly_stored = seen.insert(record.hash);
                outcomes.push(PutOutcome {
                    stored_bytes: record.encoded.len() as u64,
                    newly_stored,
                });
                if newly_stored {
                    new.push(*record);
                }
            }
        }
        if !new.is_empty() {
            self.append_records(&mut writer, &new)?;
        }
        Ok(outcomes)
    }

    /// Appends records to the current pack, syncs it, appends their index
    /// entries, syncs them, and only then makes them visible. On an error
    /// the current pack is given up (a new one is started next time): what
    /// it holds past its last synced entry is cut at the next open.
    fn append_records(&self, writer: &mut Writer, records: &[Record<'_>]) -> Result<()> {
        let result = self.try_append_records(writer, records);
        if result.is_err() {
            writer.current = None;
        }
        result
    }

    fn try_append_records(&self, writer: &mut Writer, records: &[Record<'_>]) -> Result<()> {
        let target = self.inner.pack_target.load(Ordering::Relaxed);
        let current = self.current(writer, target)?;
        let pack_path = pack::pack_path(&self.inner.packs, current.id);
        let batch_error = |path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::WriteBatch { path, source }
        };
        let mut offset = current.pack_len;
        let mut entries = Vec::with_capacity(records.len() * ENTRY_LEN);
        let mut locs = Vec::with_capacity(records.len());
        // Records are gathered into writes of about a MiB.
        let mut buffer: Vec<u8> = Vec::with_capacity(1024 * 1024 + 64 * 1024);
        let mut buffer_at = offset;
        for record in records {
            let len = u32::try_from(record.encoded.len()).map_err(|_| Error::Corrupt {
                hash: record.hash,
                reason: "too large to store".into(),
            })?;
            let loc = Loc {
                pack: current.id,
                offset,
                len,
                checksum: pack::record_checksum(record.encoded),
                at_ms: record.at_ms,
            };
            entries.extend_from_slice(
                &Entry {
                    kind: Kind::Put,
                    hash: record.hash,
                    offset,
                    len,
                    checksum: loc.checksum,
                    at_ms: record.at_ms,
                }
                .to_bytes(),
            );
            locs.push((record.hash, loc));
            buffer.extend_from_slice(record.encoded);
            offset += u64::from(len);
            if buffer.len() >= 1024 * 1024 {
                pack::write_at(&current.pack, &buffer, buffer_at)
                    .map_err(batch_error(&pack_path))?;
                buffer_at = offset;
                buffer.clear();
            }
        }
        if !buffer.is_empty() {
            pack::write_at(&current.pack, &buffer, buffer_at).map_err(batch_error(&pack_path))?;
        }
        // The data first: no entry may point at bytes that are not durable.
        current.pack.sync_data().map_err(batch_error(&pack_path))?;
        let idx_path = pack::idx_path(&self.inner.packs, current.id);
        pack::write_at(&current.idx, &entries, current.idx_len).map_err(batch_error(&idx_path))?;
        current.idx.sync_data().map_err(batch_error(&idx_path))?;
        let added = offset - current.pack_len;
        current.pack_len = offset;
        current.idx_len += entries.len() as u64;
        let id = current.id;
        let mut index = self.index_mut();
        index.packs.entry(id).or_default().bytes += added;
        for (hash, loc) in locs {
            index.insert(hash, loc);
        }
        Ok(())
    }

    /// Appends entries that need no sync of their own (drops, uses): any
    /// later batch's sync makes them durable with it.
    fn append_entries(&self, writer: &mut Writer, entries: &[Entry]) -> Result<()> {
        let result = (|| {
            // Entries alone never start a new pack.
            let current = self.current(writer, u64::MAX)?;
            let bytes: Vec<u8> = entries.iter().flat_map(|entry| entry.to_bytes()).collect();
            let idx_path = pack::idx_path(&self.inner.packs, current.id);
            pack::write_at(&current.idx, &bytes, current.idx_len).map_err(|source| {
                Error::WriteBatch {
                    path: idx_path,
                    source,
                }
            })?;
            current.idx_len += bytes.len() as u64;
            Ok(())
        })();
        if result.is_err() {
            writer.current = None;
        }
        result
    }

    /// The pack being appended to, started anew when there is none or the
    /// current one holds `target` bytes.
    fn current<'w>(&self, writer: &'w mut Writer, target: u64) -> Result<&'w mut Current> {
        let full = writer
            .current
            .as_ref()
            .is_some_and(|current| current.pack_len >= target);
        if full || writer.current.is_none() {
            let id = writer.next_id;
            let started = start_pack(&self.inner.packs, id)?;
            writer.next_id += 1;
            writer.current = Some(started);
            self.index_mut().packs.entry(id).or_default();
        }
        Ok(writer
            .current
            .as_mut()
            .expect("a current pack was just ensured"))
    }

    fn reader(&self, id: u32) -> io::Result<Arc<File>> {
        if let Some(file) = lock(&self.inner.readers).get(&id) {
            return Ok(file.clone());
        }
        let file = Arc::new(File::open(pack::pack_path(&self.inner.packs, id))?);
        let mut readers = lock(&self.inner.readers);
        if readers.len() >= MAX_OPEN_READERS {
            readers.clear();
        }
        readers.insert(id, file.clone());
        Ok(file)
    }

    /// Moves the chunks of a format-1 store at the root into packs, batch
    /// by batch, each chunk verified; a chunk's file is removed once its
    /// batch is synced, so the disk holds at most one batch twice. A chunk
    /// that does not verify is removed and counted.
    fn upgrade_from_format_1(&self) -> Result<()> {
        let root = self.inner.root.clone();
        let listing = |error| Error::io("upgrading the chunk store at", &root)(error);
        let mut batch: Vec<(ChunkHash, Vec<u8>, u64, PathBuf)> = Vec::new();
        let mut batch_bytes = 0;
        let (mut upgraded, mut damaged) = (0, 0);
        let shards = legacy::shard_dirs(&root).map_err(listing)?;
        for shard in &shards {
            for (hash, path) in legacy::chunk_files(shard).map_err(listing)? {
                let (bytes, metadata) = match fs::read(&path).and_then(|bytes| {
                    let metadata = fs::metadata(&path)?;
                    Ok((bytes, metadata))
                }) {
                    Ok(read) => read,
                    Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
                    Err(error) => return Err(Error::io("reading", &path)(error)),
                };
                if decode_verified(&hash, &bytes).is_err() {
                    fs::remove_file(&path).map_err(Error::io("removing", &path))?;
                    damaged += 1;
                    continue;
                }
                batch_bytes += bytes.len();
                batch.push((hash, bytes, legacy::written_ms(&metadata), path));
                if batch_bytes >= UPGRADE_BATCH {
                    upgraded += self.upgrade_batch(&mut batch)?;
                    batch_bytes = 0;
                }
            }
        }
        upgraded += self.upgrade_batch(&mut batch)?;
        for shard in &shards {
            // One holding something that is not a chunk stays.
            let _ = fs::remove_dir(shard);
        }
        let tmp = root.join(legacy::TMP_DIR);
        match fs::remove_dir_all(&tmp) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => {
                return Err(Error::io("removing", &tmp)(error))
            }
            _ => {}
        }
        let mut opened = lock(&self.inner.opened);
        opened.upgraded_chunks += upgraded;
        opened.damaged_dropped += damaged;
        Ok(())
    }

    fn upgrade_batch(&self, batch: &mut Vec<(ChunkHash, Vec<u8>, u64, PathBuf)>) -> Result<u64> {
        let records: Vec<Record<'_>> = batch
            .iter()
            .map(|(hash, encoded, at_ms, _)| Record {
                hash: *hash,
                encoded,
                at_ms: *at_ms,
            })
            .collect();
        self.store_verified(&records)?;
        for (_, _, _, path) in batch.iter() {
            fs::remove_file(path).map_err(Error::io("removing", path))?;
        }
        let moved = batch.len() as u64;
        batch.clear();
        Ok(moved)
    }
}

/// Every chunk in the store at `root` and where its bytes are, read from
/// the pack indexes without opening the store (which may be open in
/// another process): for tests and diagnostics.
pub fn list_in(root: &Path) -> Result<Vec<(ChunkHash, ChunkLocation)>> {
    let packs = root.join(PACKS_DIR);
    let mut ids: Vec<u32> = match fs::read_dir(&packs) {
        Ok(entries) => entries
            .filter_map(|entry| entry.ok())
            .filter_map(|entry| pack::parse_name(entry.file_name().to_str()?))
            .filter(|(_, is_idx)| *is_idx)
            .map(|(id, _)| id)
            .collect(),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(error) => return Err(Error::io("listing", &packs)(error)),
    };
    ids.sort_unstable();
    let mut index = Index::default();
    for id in ids {
        let pack_len = fs::metadata(pack::pack_path(&packs, id)).map_or(0, |m| m.len());
        let path = pack::idx_path(&packs, id);
        match pack::read_index(&path, pack_len) {
            Ok(read) => index.replay(id, &read.entries),
            // Deleted since the listing (a compaction).
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(Error::io("reading", &path)(error)),
        }
    }
    Ok(index
        .chunks
        .iter()
        .map(|(hash, loc)| {
            let at = ChunkLocation {
                pack: pack::pack_path(&packs, loc.pack),
                offset: loc.offset,
                len: u64::from(loc.len),
            };
            (*hash, at)
        })
        .collect())
}

/// Where a chunk's bytes are in the store at `root`, as [`list_in`] finds it.
pub fn locate_in(root: &Path, hash: &ChunkHash) -> Result<Option<ChunkLocation>> {
    Ok(list_in(root)?
        .into_iter()
        .find_map(|(found, at)| (found == *hash).then_some(at)))
}

/// The format version written in the store's FORMAT file; `None` when
/// there is none (a new store, or format 1, which had no such file).
fn read_format(root: &Path) -> Result<Option<u32>> {
    let path = root.join(FORMAT_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(Error::io("reading", &path)(error)),
    };
    let found = text
        .lines()
        .find_map(|line| line.strip_prefix("format "))
        .map(str::trim)
        .unwrap_or_default()
        .to_owned();
    match found.parse::<u32>() {
        Ok(FORMAT_VERSION) if text.starts_with("cascade chunk store\n") => Ok(Some(FORMAT_VERSION)),
        _ => Err(Error::StoreFormat { path, found }),
    }
}

/// Writes the FORMAT file crash-safely (a temporary file renamed in place).
fn write_format(root: &Path) -> Result<()> {
    let path = root.join(FORMAT_FILE);
    let temp = root.join("FORMAT.new");
    let write = || -> io::Result<()> {
        let file = File::create(&temp)?;
        pack::write_at(
            &file,
            format!("cascade chunk store\nformat {FORMAT_VERSION}\n").as_bytes(),
            0,
        )?;
        file.sync_all()?;
        fs::rename(&temp, &path)?;
        sync_dir(root)
    };
    write().map_err(Error::io("writing", &path))
}

/// Reads every pack's index into memory, cutting torn tails and removing
/// packs left half created or half deleted; the last pack, if not full,
/// is reopened for appending.
fn load(packs: &Path, report: &mut OpenReport) -> Result<(Index, Writer)> {
    let mut found: BTreeMap<u32, (bool, bool)> = BTreeMap::new();
    for entry in fs::read_dir(packs).map_err(Error::io("listing", packs))? {
        let entry = entry.map_err(Error::io("listing", packs))?;
        if let Some((id, is_idx)) = entry.file_name().to_str().and_then(pack::parse_name) {
            let seen = found.entry(id).or_default();
            if is_idx {
                seen.1 = true;
            } else {
                seen.0 = true;
            }
        }
    }
    let mut index = Index::default();
    let mut last = None;
    let next_id = found.keys().next_back().map_or(1, |id| id + 1);
    let mut removed_any = false;
    for (&id, &(has_pack, has_idx)) in &found {
        let pack_path = pack::pack_path(packs, id);
        let idx_path = pack::idx_path(packs, id);
        let remove_both = |report: &mut OpenReport| -> Result<()> {
            for path in [&idx_path, &pack_path] {
                match fs::remove_file(path) {
                    Err(error) if error.kind() != io::ErrorKind::NotFound => {
                        return Err(Error::io("removing", path)(error))
                    }
                    _ => {}
                }
            }
            report.incomplete_packs_removed += 1;
            Ok(())
        };
        if !(has_pack && has_idx) {
            remove_both(report)?;
            removed_any = true;
            continue;
        }
        let pack_file = File::options()
            .read(true)
            .write(true)
            .open(&pack_path)
            .map_err(Error::io("opening", &pack_path))?;
        let pack_len = pack_file
            .metadata()
            .map_err(Error::io("reading", &pack_path))?
            .len();
        let header = pack::read_at(&pack_file, 0, HEADER_LEN.min(pack_len) as u32)
            .map_err(Error::io("reading", &pack_path))?;
        if header.as_slice() != PACK_MAGIC {
            if pack_len < HEADER_LEN && PACK_MAGIC.starts_with(&header) {
                remove_both(report)?;
                removed_any = true;
                continue;
            }
            return Err(Error::io("opening", &pack_path)(io::Error::new(
                io::ErrorKind::InvalidData,
                "not a Cascade pack (wrong header)",
            )));
        }
        let read =
            pack::read_index(&idx_path, pack_len).map_err(Error::io("reading", &idx_path))?;
        if read.valid_len == 0 {
            remove_both(report)?;
            removed_any = true;
            continue;
        }
        let idx_file = File::options()
            .read(true)
            .write(true)
            .open(&idx_path)
            .map_err(Error::io("opening", &idx_path))?;
        let idx_len = idx_file
            .metadata()
            .map_err(Error::io("reading", &idx_path))?
            .len();
        if idx_len > read.valid_len {
            idx_file
                .set_len(read.valid_len)
                .map_err(Error::io("cutting the torn tail of", &idx_path))?;
            report.torn_bytes_cut += idx_len - read.valid_len;
        }
        if pack_len > read.pack_end {
            pack_file
                .set_len(read.pack_end)
                .map_err(Error::io("cutting the torn tail of", &pack_path))?;
            report.torn_bytes_cut += pack_len - read.pack_end;
        }
        index.packs.insert(
            id,
            PackUse {
                bytes: read.pack_end - HEADER_LEN,
                live: 0,
            },
        );
        index.replay(id, &read.entries);
        last = Some(Current {
            id,
            pack: pack_file,
            idx: idx_file,
            pack_len: read.pack_end,
            idx_len: read.valid_len,
        });
    }
    if removed_any {
        sync_dir(packs).map_err(Error::io("syncing", packs))?;
    }
    let current = last.filter(|current| current.pack_len < DEFAULT_PACK_TARGET);
    Ok((index, Writer { next_id, current }))
}

/// Creates pack `id` and its index, each with its header, durably.
fn start_pack(packs: &Path, id: u32) -> Result<Current> {
    let create = |path: &Path, magic: &[u8]| -> Result<File> {
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(Error::io("creating", path))?;
        pack::write_at(&file, magic, 0)
            .and_then(|()| file.sync_data())
            .map_err(Error::io("writing", path))?;
        Ok(file)
    };
    // The index first: a pack found without one is being created or deleted.
    let idx = create(&pack::idx_path(packs, id), IDX_MAGIC)?;
    let pack = create(&pack::pack_path(packs, id), PACK_MAGIC)?;
    sync_dir(packs).map_err(Error::io("syncing", packs))?;
    Ok(Current {
        id,
        pack,
        idx,
        pack_len: HEADER_LEN,
        idx_len: HEADER_LEN,
    })
}

/// Makes a directory's entries (creations, renames, removals) durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Below this many bytes a batch is verified or encoded on the calling
/// thread: starting threads would cost more than it saves.
const PARALLEL_FROM: usize = 512 * 1024;

/// `f` of every item, in order, split over the machine's cores when the
/// items hold at least [`PARALLEL_FROM`] bytes (`bytes` of each).
fn on_every_core<T: Sync, R: Send>(
    items: &[T],
    bytes: impl Fn(&T) -> usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let total: usize = items.iter().map(bytes).sum();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores < 2 || items.len() < 2 || total < PARALLEL_FROM {
        return items.iter().map(f).collect();
    }
    let per_thread = items.len().div_ceil(cores.min(items.len()));
    let f = &f;
    std::thread::scope(|scope| {
        let mut parts = items.chunks(per_thread);
        let first = parts.next().unwrap_or_default();
        // A part whose thread cannot be started is done here, in turn.
        let others: Vec<_> = parts
            .map(|part| {
                std::thread::Builder::new()
                    .spawn_scoped(scope, move || part.iter().map(f).collect::<Vec<R>>())
                    .map_err(|_| part)
            })
            .collect();
        // The calling thread takes the first part.
        let mut out: Vec<R> = first.iter().map(f).collect();
        for other in others {
            match other {
                Ok(thread) => out.extend(thread.join().expect("a worker thread panicked")),
                Err(part) => out.extend(part.iter().map(f)),
            }
        }
        out
    })
}

/// Decodes and verifies every chunk of a batch on every core; the error is
/// the first in the batch's order.
fn verify_on_every_core(chunks: &[(ChunkHash, &[u8])]) -> Result<()> {
    on_every_core(
        chunks,
        |(_, encoded)| encoded.len(),
        |(hash, encoded)| decode_verified(hash, encoded).map(drop),
    )
    .into_iter()
    .collect()
}

/// Flips a byte in the middle of a stored chunk, as a failing disk would
/// (for tests of what notices it).
#[cfg(test)]
pub(crate) fn damage(store: &ChunkStore, hash: &ChunkHash) {
    let at = store.location(hash).expect("the chunk to damage is stored");
    let file = File::options()
        .read(true)
        .write(true)
        .open(&at.pack)
        .unwrap();
    let middle = at.offset + at.len / 2;
    let mut byte = pack::read_at(&file, middle, 1).unwrap();
    byte[0] ^= 0xff;
    pack::write_at(&file, &byte, middle).unwrap();
}

#[cfg(test)]
mod tests;
