//! Format 1 of the chunk store, one file per chunk (`root/ab/abcdef…`, a
//! two-hex-digit shard directory then the full hash): found so that a
//! store is upgraded in place, its chunks moved into packs.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::chunk::ChunkHash;

/// Format 1 kept in-progress writes here.
pub(crate) const TMP_DIR: &str = "tmp";

/// The shard directories of a format-1 store at `root`.
pub(crate) fn shard_dirs(root: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(root)? {
        let entry = entry?;
        let name = entry.file_name();
        let is_shard = name
            .to_str()
            .is_some_and(|name| name.len() == 2 && name.bytes().all(|b| b.is_ascii_hexdigit()));
        if is_shard && entry.file_type()?.is_dir() {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

/// The chunk files of one shard directory: files named by a hash that
/// starts with the shard's name. Anything else is left where it is.
pub(crate) fn chunk_files(shard: &Path) -> io::Result<Vec<(ChunkHash, PathBuf)>> {
    let prefix = shard
        .file_name()
        .and_then(|name| name.to_str())
        .unwrap_or_default()
        .to_owned();
    let mut out = Vec::new();
    for entry in fs::read_dir(shard)? {
        let entry = entry?;
        let hash = entry
            .file_name()
            .to_str()
            .filter(|name| name.starts_with(&prefix))
            .and_then(|name| ChunkHash::from_hex(name).ok());
        if let Some(hash) = hash {
            if entry.file_type()?.is_file() {
                out.push((hash, entry.path()));
            }
        }
    }
    Ok(out)
}

/// When a file was last written, in ms since the Unix epoch (0 if unknown).
pub(crate) fn written_ms(metadata: &fs::Metadata) -> u64 {
    metadata
        .modified()
        .ok()
        .and_then(|at| at.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |at| at.as_millis() as u64)
}
