//! The chunk store on disk: one file per chunk, named by its hash, written
//! crash-safely and verified on every read.
//!
//! Layout: `root/ab/abcdef...` (two-hex-digit shard directory, then the full
//! 64-digit hash), each file holding the chunk's encoded form (see
//! [`crate::encoding`]). Temporary files live in `root/tmp/` and are removed
//! when the store is opened.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::chunk::ChunkHash;
use crate::encoding::{decode_verified, encode};
use crate::error::{Error, Result};

/// Name of the directory holding in-progress writes.
const TMP_DIR: &str = "tmp";

/// A content-addressed chunk store rooted at one directory. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ChunkStore {
    root: PathBuf,
}

/// One chunk as [`ChunkStore::list`] finds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoredChunk {
    /// Its hash.
    pub hash: ChunkHash,
    /// Size of its stored (encoded) form.
    pub stored_bytes: u64,
    /// When it was stored.
    pub written: std::time::SystemTime,
}

/// What a put did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PutOutcome {
    /// Size of the chunk's stored (encoded) file.
    pub stored_bytes: u64,
    /// False when the chunk was already present and nothing was written.
    pub newly_stored: bool,
}

impl ChunkStore {
    /// Opens the store at `root`, creating it if missing, and removes
    /// leftovers of interrupted writes from `root/tmp/`.
    pub fn open(root: &Path) -> Result<Self> {
        fs::create_dir_all(root).map_err(Error::io("creating chunk store", root))?;
        let tmp = root.join(TMP_DIR);
        match fs::remove_dir_all(&tmp) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(Error::io("cleaning temporary directory", &tmp)(error)),
        }
        fs::create_dir(&tmp).map_err(Error::io("creating temporary directory", &tmp))?;
        Ok(ChunkStore {
            root: root.to_path_buf(),
        })
    }

    /// The directory the store lives in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the chunk named `hash` is (or would be) stored.
    pub fn path_of(&self, hash: &ChunkHash) -> PathBuf {
        let hex = hash.to_hex();
        self.root.join(&hex[..2]).join(hex)
    }

    /// Whether the chunk's file exists (its contents are checked on read).
    pub fn contains(&self, hash: &ChunkHash) -> bool {
        self.path_of(hash).is_file()
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
        self.write(hash, &encode(data))
    }

    /// Stores an already encoded chunk (as received over the wire) after
    /// decoding and verifying it: bad bytes are never stored.
    pub fn put_encoded(&self, hash: &ChunkHash, encoded: &[u8]) -> Result<PutOutcome> {
        decode_verified(hash, encoded)?;
        if let Some(outcome) = self.already_stored(hash) {
            return Ok(outcome);
        }
        self.write(hash, encoded)
    }

    /// Stores many already encoded chunks, each decoded and verified first
    /// (one bad chunk refuses the whole batch, and nothing of it is stored),
    /// with one round of syncs for the batch instead of two per chunk: every
    /// new chunk is written to a temporary file, the data is made durable,
    /// the files are renamed into place, and the renames are made durable.
    /// When this returns, every chunk of the batch is stored for good (one
    /// found already present may have been renamed by a concurrent batch not
    /// yet synced, so a sync runs then too); a crash before leaves each chunk
    /// either absent or complete. Outcomes are in the order given. Temporary
    /// files are closed once written, so a batch of many small chunks holds
    /// no more than one file descriptor at a time.
    pub fn put_encoded_batch(&self, chunks: &[(ChunkHash, &[u8])]) -> Result<Vec<PutOutcome>> {
        verify_on_every_core(chunks)?;
        let tmp_dir = self.root.join(TMP_DIR);
        let batch_error = |path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::WriteBatch { path, source }
        };
        // Opened before anything is written, so that a write error of this
        // batch's data is reported to this descriptor whoever syncs first.
        let durability = Durability::begin(&self.root).map_err(batch_error(&self.root))?;
        let mut outcomes = Vec::with_capacity(chunks.len());
        let mut pending: Vec<(PathBuf, tempfile::TempPath)> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (hash, encoded) in chunks {
            if let Some(outcome) = self.already_stored(hash) {
                outcomes.push(outcome);
                continue;
            }
            let newly_stored = seen.insert(*hash);
            outcomes.push(PutOutcome {
                stored_bytes: encoded.len() as u64,
                newly_stored,
            });
            if !newly_stored {
                continue;
            }
            let write_error = |path: &Path| write_error(hash, path);
            let mut temp = tempfile::Builder::new()
                .prefix(&hash.to_hex())
                .tempfile_in(&tmp_dir)
                .map_err(write_error(&tmp_dir))?;
            temp.write_all(encoded).map_err(write_error(temp.path()))?;
            durability
                .file_written(temp.as_file())
                .map_err(write_error(temp.path()))?;
            pending.push((self.path_of(hash), temp.into_temp_path()));
        }
        if pending.is_empty() {
            if !chunks.is_empty() {
                durability.sync().map_err(batch_error(&self.root))?;
            }
            return Ok(outcomes);
        }
        // The data first: no file may be renamed into place before its bytes are durable.
        durability.sync().map_err(batch_error(&tmp_dir))?;
        let mut shards = std::collections::BTreeSet::new();
        let mut new_shard = false;
        for (final_path, temp) in pending {
            let shard = final_path
                .parent()
                .expect("chunk paths have a shard directory")
                .to_path_buf();
            if !shard.is_dir() {
                fs::create_dir_all(&shard).map_err(batch_error(&shard))?;
                new_shard = true;
            }
            temp.persist(&final_path)
                .map_err(|error| batch_error(&final_path)(error.error))?;
            shards.insert(shard);
        }
        // Then the renames (and any new shard directory).
        if new_shard {
            shards.insert(self.root.clone());
        }
        durability
            .sync_dirs(&shards)
            .map_err(batch_error(&self.root))?;
        Ok(outcomes)
    }

    /// Reads, decodes and verifies a chunk. [`Error::NotFound`] when absent,
    /// [`Error::Corrupt`] when the stored bytes are damaged.
    pub fn get(&self, hash: &ChunkHash) -> Result<Vec<u8>> {
        let encoded = self.read(hash)?;
        decode_verified(hash, &encoded)
    }

    /// Reads a chunk's stored (encoded) form, verifies it, and returns the
    /// encoded bytes, ready to ship over the wire.
    pub fn get_encoded(&self, hash: &ChunkHash) -> Result<Vec<u8>> {
        let encoded = self.read(hash)?;
        decode_verified(hash, &encoded)?;
        Ok(encoded)
    }

    /// Removes a chunk; removing a missing chunk is not an error.
    pub fn remove(&self, hash: &ChunkHash) -> Result<()> {
        let path = self.path_of(hash);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(Error::RemoveChunk {
                hash: *hash,
                path,
                source,
            }),
        }
    }

    /// Every chunk stored, with its stored size and when it was written
    /// (for a cache's eviction), in no particular order. Files that are not
    /// chunks (a name that is not a hash of its shard) are left out.
    pub fn list(&self) -> Result<Vec<StoredChunk>> {
        let mut out = Vec::new();
        let shards =
            fs::read_dir(&self.root).map_err(Error::io("listing chunk store", &self.root))?;
        for shard in shards {
            let shard = shard.map_err(Error::io("listing chunk store", &self.root))?;
            let name = shard.file_name();
            let Some(prefix) = name.to_str().filter(|name| name.len() == 2) else {
                continue;
            };
            if !shard.path().is_dir() {
                continue;
            }
            let files = fs::read_dir(shard.path())
                .map_err(Error::io("listing chunk store", &shard.path()))?;
            for file in files {
                let file = file.map_err(Error::io("listing chunk store", &shard.path()))?;
                let Some(hash) = file
                    .file_name()
                    .to_str()
                    .filter(|name| name.starts_with(prefix))
                    .and_then(|name| ChunkHash::from_hex(name).ok())
                else {
                    continue;
                };
                // Gone since the listing (a concurrent removal): skipped.
                let Ok(metadata) = file.metadata() else {
                    continue;
                };
                out.push(StoredChunk {
                    hash,
                    stored_bytes: metadata.len(),
                    written: metadata.modified().unwrap_or(std::time::UNIX_EPOCH),
                });
            }
        }
        Ok(out)
    }

    fn already_stored(&self, hash: &ChunkHash) -> Option<PutOutcome> {
        let metadata = fs::metadata(self.path_of(hash)).ok()?;
        metadata.is_file().then_some(PutOutcome {
            stored_bytes: metadata.len(),
            newly_stored: false,
        })
    }

    fn read(&self, hash: &ChunkHash) -> Result<Vec<u8>> {
        let path = self.path_of(hash);
        fs::read(&path).map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                Error::NotFound { hash: *hash }
            } else {
                Error::ReadChunk {
                    hash: *hash,
                    path,
                    source,
                }
            }
        })
    }

    /// Writes crash-safely: temporary file in `root/tmp`, write, fsync,
    /// rename into place, fsync the shard directory (and the root when the
    /// shard directory is new). A crash leaves either no chunk file or a
    /// complete one.
    fn write(&self, hash: &ChunkHash, encoded: &[u8]) -> Result<PutOutcome> {
        let final_path = self.path_of(hash);
        let shard = final_path
            .parent()
            .expect("chunk paths have a shard directory")
            .to_path_buf();
        let write_error = |path: &Path| write_error(hash, path);

        let new_shard = !shard.is_dir();
        if new_shard {
            fs::create_dir_all(&shard).map_err(write_error(&shard))?;
        }

        let tmp_dir = self.root.join(TMP_DIR);
        let mut temp = tempfile::Builder::new()
            .prefix(&hash.to_hex())
            .tempfile_in(&tmp_dir)
            .map_err(write_error(&tmp_dir))?;
        temp.write_all(encoded)
            .and_then(|()| temp.as_file().sync_all())
            .map_err(write_error(temp.path()))?;
        temp.persist(&final_path)
            .map_err(|error| write_error(&final_path)(error.error))?;

        sync_dir(&shard).map_err(write_error(&shard))?;
        if new_shard {
            sync_dir(&self.root).map_err(write_error(&self.root))?;
        }
        Ok(PutOutcome {
            stored_bytes: encoded.len() as u64,
            newly_stored: true,
        })
    }
}

/// Below this many encoded bytes a batch is verified on the calling thread:
/// starting threads would cost more than it saves.
const PARALLEL_FROM: usize = 512 * 1024;

/// Decodes and verifies every chunk of a batch, split over the machine's
/// cores; the error is the first in the batch's order.
fn verify_on_every_core(chunks: &[(ChunkHash, &[u8])]) -> Result<()> {
    let verify = |part: &[(ChunkHash, &[u8])]| {
        part.iter()
            .try_for_each(|(hash, encoded)| decode_verified(hash, encoded).map(drop))
    };
    let bytes: usize = chunks.iter().map(|(_, encoded)| encoded.len()).sum();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores < 2 || chunks.len() < 2 || bytes < PARALLEL_FROM {
        return verify(chunks);
    }
    let per_thread = chunks.len().div_ceil(cores.min(chunks.len()));
    std::thread::scope(|scope| {
        let mut parts = chunks.chunks(per_thread);
        let first = parts.next().unwrap_or_default();
        // A part whose thread cannot be started is verified here, in turn.
        let others: Vec<_> = parts
            .map(|part| {
                std::thread::Builder::new()
                    .spawn_scoped(scope, move || verify(part))
                    .map_err(|_| part)
            })
            .collect();
        // The calling thread takes the first part.
        let mut result = verify(first);
        for other in others {
            let other = match other {
                Ok(thread) => thread.join().expect("a verification thread panicked"),
                Err(part) => verify(part),
            };
            result = result.and(other);
        }
        result
    })
}

/// The error of writing chunk `hash` at `path`.
fn write_error(hash: &ChunkHash, path: &Path) -> impl FnOnce(io::Error) -> Error {
    let (hash, path) = (*hash, path.to_path_buf());
    move |source| Error::WriteChunk { hash, path, source }
}

/// Makes a directory's entries (renames, creations) durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// How a batch makes its writes durable. On Linux, one `syncfs` of the
/// store's file system for all the batch's files and another for all its
/// renames, each a single journal commit, through a descriptor opened before
/// the batch wrote anything (so a writeback error of its data is reported to
/// it even if another process synced first; kernels since 5.8). Elsewhere,
/// each file is synced as it is written and each directory after the renames.
struct Durability {
    #[cfg(target_os = "linux")]
    root: File,
}

impl Durability {
    fn begin(root: &Path) -> io::Result<Durability> {
        #[cfg(target_os = "linux")]
        {
            Ok(Durability {
                root: File::open(root)?,
            })
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = root;
            Ok(Durability {})
        }
    }

    /// Called once a temporary file is written, before it is closed.
    fn file_written(&self, file: &File) -> io::Result<()> {
        #[cfg(target_os = "linux")]
        {
            let _ = file;
            Ok(())
        }
        #[cfg(not(target_os = "linux"))]
        {
            file.sync_all()
        }
    }

    /// Makes everything written so far durable.
    fn sync(&self) -> io::Result<()> {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            // SAFETY: syncfs only reads the descriptor, which `self.root` keeps open.
            if unsafe { libc::syncfs(self.root.as_raw_fd()) } == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        }
        #[cfg(not(target_os = "linux"))]
        {
            Ok(())
        }
    }

    /// Makes the entries of `dirs` durable.
    fn sync_dirs(&self, dirs: &std::collections::BTreeSet<PathBuf>) -> io::Result<()> {
        #[cfg(target_os = "linux")]
        {
            let _ = dirs;
            self.sync()
        }
        #[cfg(not(target_os = "linux"))]
        {
            dirs.iter().try_for_each(|dir| sync_dir(dir))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoding::encode;
    use rand::{RngCore, SeedableRng};

    fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
        let mut data = vec![0u8; len];
        rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut data);
        data
    }

    #[test]
    fn put_then_get() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(&dir.path().join("store")).unwrap();
        for data in [random_bytes(1, 70_000), b"abc".repeat(10_000)] {
            let hash = ChunkHash::of(&data);
            assert!(!store.contains(&hash));
            let first = store.put(&hash, &data).unwrap();
            assert!(first.newly_stored);
            assert_eq!(
                first.stored_bytes,
                fs::metadata(store.path_of(&hash)).unwrap().len()
            );
            assert!(store.contains(&hash));
            let second = store.put(&hash, &data).unwrap();
            assert_eq!(
                second,
                PutOutcome {
                    stored_bytes: first.stored_bytes,
                    newly_stored: false
                }
            );
            assert_eq!(store.get(&hash).unwrap(), data);
            assert_eq!(store.get_encoded(&hash).unwrap(), encode(&data));
        }
    }

    #[test]
    fn layout_is_sharded_by_hash_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        let hash = ChunkHash::of(b"layout");
        let hex = hash.to_hex();
        assert_eq!(store.path_of(&hash), dir.path().join(&hex[..2]).join(&hex));
        store.put(&hash, b"layout").unwrap();
        assert!(dir.path().join(&hex[..2]).join(&hex).is_file());
    }

    #[test]
    fn put_of_wrong_hash_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        let hash = ChunkHash::of(b"right");
        assert!(matches!(
            store.put(&hash, b"wrong"),
            Err(Error::Corrupt { .. })
        ));
        assert!(!store.contains(&hash));
        assert!(matches!(
            store.put_encoded(&hash, &encode(b"wrong")),
            Err(Error::Corrupt { .. })
        ));
        assert!(!store.contains(&hash));
    }

    #[test]
    fn put_encoded_stores_bytes_as_given() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        let data = b"wire form ".repeat(500);
        let hash = ChunkHash::of(&data);
        let encoded = encode(&data);
        let outcome = store.put_encoded(&hash, &encoded).unwrap();
        assert!(outcome.newly_stored);
        assert_eq!(outcome.stored_bytes, encoded.len() as u64);
        assert_eq!(fs::read(store.path_of(&hash)).unwrap(), encoded);
        assert_eq!(store.get(&hash).unwrap(), data);
        assert!(!store.put_encoded(&hash, &encoded).unwrap().newly_stored);
    }

    #[test]
    fn batch_put_stores_all_or_refuses_all() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        let datas: Vec<Vec<u8>> = (0..20)
            .map(|i| random_bytes(100 + i, 5_000 + i as usize))
            .collect();
        let encoded: Vec<(ChunkHash, Vec<u8>)> = datas
            .iter()
            .map(|data| (ChunkHash::of(data), encode(data)))
            .collect();
        store.put(&encoded[0].0, &datas[0]).unwrap();
        // A repeat inside the batch is stored once.
        let mut batch: Vec<(ChunkHash, &[u8])> = encoded
            .iter()
            .map(|(hash, bytes)| (*hash, bytes.as_slice()))
            .collect();
        batch.push(batch[1]);
        let outcomes = store.put_encoded_batch(&batch).unwrap();
        assert_eq!(outcomes.len(), 21);
        assert!(!outcomes[0].newly_stored, "already stored before the batch");
        assert!(outcomes[1..20].iter().all(|outcome| outcome.newly_stored));
        assert!(!outcomes[20].newly_stored, "the repeat");
        for (i, (data, (hash, bytes))) in datas.iter().zip(&encoded).enumerate() {
            assert_eq!(&store.get(hash).unwrap(), data);
            assert_eq!(outcomes[i].stored_bytes, bytes.len() as u64);
        }
        assert_eq!(fs::read_dir(dir.path().join(TMP_DIR)).unwrap().count(), 0);

        // One corrupt chunk: nothing of that batch is stored.
        let fresh = random_bytes(999, 4_000);
        let fresh_hash = ChunkHash::of(&fresh);
        let fresh_encoded = encode(&fresh);
        let bad_hash = ChunkHash::of(b"claimed");
        let bad = encode(b"actual");
        let refused = store.put_encoded_batch(&[(fresh_hash, &fresh_encoded), (bad_hash, &bad)]);
        assert!(matches!(refused, Err(Error::Corrupt { .. })));
        assert!(!store.contains(&fresh_hash));
        assert!(!store.contains(&bad_hash));
    }

    /// Issue 13: receivers verified a batch on one core. A batch large
    /// enough to be split is still refused whole for one bad chunk, and
    /// the error names the first bad chunk in the batch's order.
    #[test]
    fn a_large_batch_is_verified_on_every_core_and_refused_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        let datas: Vec<Vec<u8>> = (0..40).map(|i| random_bytes(500 + i, 64 * 1024)).collect();
        let mut encoded: Vec<(ChunkHash, Vec<u8>)> = datas
            .iter()
            .map(|data| (ChunkHash::of(data), encode(data)))
            .collect();
        let total: usize = encoded.iter().map(|(_, bytes)| bytes.len()).sum();
        assert!(total >= PARALLEL_FROM);
        for bad in [3, 37] {
            encoded[bad].1[100] ^= 1;
        }
        let batch: Vec<(ChunkHash, &[u8])> = encoded
            .iter()
            .map(|(hash, bytes)| (*hash, bytes.as_slice()))
            .collect();
        match store.put_encoded_batch(&batch) {
            Err(Error::Corrupt { hash, .. }) => assert_eq!(hash, encoded[3].0),
            other => panic!("expected the first bad chunk, got {other:?}"),
        }
        assert!(encoded.iter().all(|(hash, _)| !store.contains(hash)));
        for bad in [3, 37] {
            encoded[bad].1[100] ^= 1;
        }
        let batch: Vec<(ChunkHash, &[u8])> = encoded
            .iter()
            .map(|(hash, bytes)| (*hash, bytes.as_slice()))
            .collect();
        let outcomes = store.put_encoded_batch(&batch).unwrap();
        assert!(outcomes.iter().all(|outcome| outcome.newly_stored));
        for (data, (hash, _)) in datas.iter().zip(&encoded) {
            assert_eq!(&store.get(hash).unwrap(), data);
        }
    }

    #[test]
    fn corruption_on_disk_is_detected_on_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        let data = random_bytes(2, 10_000);
        let hash = ChunkHash::of(&data);
        store.put(&hash, &data).unwrap();
        let path = store.path_of(&hash);
        let mut bytes = fs::read(&path).unwrap();
        bytes[5000] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert!(matches!(store.get(&hash), Err(Error::Corrupt { .. })));
        assert!(matches!(
            store.get_encoded(&hash),
            Err(Error::Corrupt { .. })
        ));
        // A truncated file too.
        fs::write(&path, &bytes[..100]).unwrap();
        assert!(matches!(store.get(&hash), Err(Error::Corrupt { .. })));
    }

    #[test]
    fn missing_chunk_is_not_found_and_remove_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        let hash = ChunkHash::of(b"gone");
        assert!(matches!(store.get(&hash), Err(Error::NotFound { .. })));
        assert!(matches!(
            store.get_encoded(&hash),
            Err(Error::NotFound { .. })
        ));
        store.remove(&hash).unwrap();
        store.put(&hash, b"gone").unwrap();
        store.remove(&hash).unwrap();
        assert!(!store.contains(&hash));
        assert!(matches!(store.get(&hash), Err(Error::NotFound { .. })));
    }

    #[test]
    fn open_cleans_temporary_files_and_keeps_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        let hash = ChunkHash::of(b"keep");
        store.put(&hash, b"keep").unwrap();
        // Leftovers of a crash in the middle of a write.
        fs::write(dir.path().join(TMP_DIR).join("abc.partial"), b"half").unwrap();
        fs::create_dir(dir.path().join(TMP_DIR).join("odd")).unwrap();

        let reopened = ChunkStore::open(dir.path()).unwrap();
        assert_eq!(fs::read_dir(dir.path().join(TMP_DIR)).unwrap().count(), 0);
        assert_eq!(reopened.get(&hash).unwrap(), b"keep");
        // Writes leave nothing behind in tmp.
        reopened.put(&ChunkHash::of(b"more"), b"more").unwrap();
        assert_eq!(fs::read_dir(dir.path().join(TMP_DIR)).unwrap().count(), 0);
    }

    #[test]
    fn list_finds_every_chunk_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        let mut hashes: Vec<ChunkHash> = (0..5u8)
            .map(|i| {
                let data = vec![i; 1000 + i as usize];
                let hash = ChunkHash::of(&data);
                store.put(&hash, &data).unwrap();
                hash
            })
            .collect();
        fs::write(dir.path().join("stray"), b"x").unwrap();
        let shard = store.path_of(&hashes[0]).parent().unwrap().to_path_buf();
        fs::write(shard.join("not-a-hash"), b"x").unwrap();
        let mut listed: Vec<StoredChunk> = store.list().unwrap();
        listed.sort_by_key(|chunk| chunk.hash.to_hex());
        hashes.sort_by_key(|hash| hash.to_hex());
        assert_eq!(
            listed.iter().map(|chunk| chunk.hash).collect::<Vec<_>>(),
            hashes
        );
        for chunk in &listed {
            assert_eq!(
                chunk.stored_bytes,
                fs::metadata(store.path_of(&chunk.hash)).unwrap().len()
            );
        }
    }

    #[test]
    fn clones_share_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        let clone = store.clone();
        let hash = ChunkHash::of(b"shared");
        store.put(&hash, b"shared").unwrap();
        assert_eq!(clone.get(&hash).unwrap(), b"shared");
        assert_eq!(clone.root(), dir.path());
    }
}
