//! Package manifests: the list of files, dirs and symlinks of one package
//! version, with every file's chunks, and the rules a manifest must follow.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::chunk::{ChunkHash, MAX_CHUNK_SIZE};
use crate::error::{Error, Result};
use crate::paths::{parent, validate_path, validate_symlink_target};

/// The manifest format this library writes and reads.
pub const MANIFEST_FORMAT: u32 = 1;

/// Highest mode accepted: permission bits only (incl. setuid/setgid/sticky).
const MAX_MODE: u32 = 0o7777;

/// One version of a package: what to put where, and which chunks make up
/// each file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`MANIFEST_FORMAT`] for manifests this library accepts.
    pub format: u32,
    /// The package's name.
    pub package: String,
    /// The package version this manifest describes.
    pub version: u64,
    /// Site code of the site that created (and signed) this version.
    pub origin_site: String,
    /// When the version was created, in milliseconds since the Unix epoch.
    pub created_at_ms: i64,
    /// The tree, sorted by path (bytewise).
    pub entries: Vec<Entry>,
}

/// One path in a package tree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Relative '/'-separated path, see [`validate_path`].
    pub path: String,
    /// What is at that path.
    #[serde(flatten)]
    pub kind: EntryKind,
}

/// What a manifest entry is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EntryKind {
    /// A regular file made of `chunks`, in order.
    File {
        /// Permission bits (at most 0o7777).
        mode: u32,
        /// Total size: the sum of the chunk sizes.
        size: u64,
        /// The file's content, chunk by chunk.
        chunks: Vec<ChunkRef>,
    },
    /// A directory. Listed when empty or when its mode matters; parents of
    /// other entries exist implicitly.
    Dir {
        /// Permission bits (at most 0o7777).
        mode: u32,
    },
    /// A symbolic link with a relative target inside the tree.
    Symlink {
        /// The link target as written, relative to the link's directory.
        target: String,
    },
}

/// A reference to one chunk of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChunkRef {
    /// The chunk's name.
    pub hash: ChunkHash,
    /// Its uncompressed size, 1..=[`MAX_CHUNK_SIZE`].
    pub size: u32,
}

impl Manifest {
    /// Checks every rule: format known; every path valid (see
    /// [`validate_path`]); no duplicate paths; entries sorted by path
    /// (bytewise); file size equal to the sum of its chunk sizes; every chunk
    /// size in 1..=[`MAX_CHUNK_SIZE`]; symlink targets relative and resolving
    /// inside the tree (lexically, from the link's directory); no path under
    /// a file or a symlink; modes permission bits only (at most 0o7777).
    pub fn validate(&self) -> Result<()> {
        if self.format != MANIFEST_FORMAT {
            return Err(Error::UnsupportedFormat {
                format: self.format,
                supported: MANIFEST_FORMAT,
            });
        }
        let invalid = |path: &str, reason: String| Error::InvalidManifest {
            path: path.to_string(),
            reason,
        };

        let mut previous: Option<&str> = None;
        for entry in &self.entries {
            validate_path(&entry.path)?;
            if let Some(previous) = previous {
                if previous == entry.path {
                    return Err(invalid(&entry.path, "duplicate path".to_string()));
                }
                if previous.as_bytes() > entry.path.as_bytes() {
                    return Err(invalid(
                        &entry.path,
                        format!("entries not sorted by path: comes after {previous:?}"),
                    ));
                }
            }
            previous = Some(&entry.path);

            match &entry.kind {
                EntryKind::File { mode, size, chunks } => {
                    check_mode(&entry.path, *mode)?;
                    let mut total: u64 = 0;
                    for chunk in chunks {
                        if chunk.size == 0 || chunk.size > MAX_CHUNK_SIZE {
                            return Err(invalid(
                                &entry.path,
                                format!(
                                    "chunk {} has size {}, outside 1..={MAX_CHUNK_SIZE}",
                                    chunk.hash, chunk.size
                                ),
                            ));
                        }
                        total += u64::from(chunk.size);
                    }
                    if total != *size {
                        return Err(invalid(
                            &entry.path,
                            format!("size {size} but chunks add up to {total}"),
                        ));
                    }
                }
                EntryKind::Dir { mode } => check_mode(&entry.path, *mode)?,
                EntryKind::Symlink { .. } => {}
            }
        }

        // Paths are unique now; look at how they relate to each other.
        let kinds: HashMap<&str, &EntryKind> = self
            .entries
            .iter()
            .map(|entry| (entry.path.as_str(), &entry.kind))
            .collect();
        let is_symlink = |path: &str| matches!(kinds.get(path), Some(EntryKind::Symlink { .. }));
        for entry in &self.entries {
            let mut ancestor = parent(&entry.path);
            while let Some(dir) = ancestor {
                match kinds.get(dir) {
                    Some(EntryKind::File { .. }) => {
                        return Err(invalid(&entry.path, format!("parent {dir:?} is a file")))
                    }
                    Some(EntryKind::Symlink { .. }) => {
                        return Err(invalid(&entry.path, format!("parent {dir:?} is a symlink")))
                    }
                    _ => {}
                }
                ancestor = parent(dir);
            }
            if let EntryKind::Symlink { target } = &entry.kind {
                validate_symlink_target(&entry.path, target, &is_symlink)?;
            }
        }
        Ok(())
    }

    /// The sum of all file sizes.
    pub fn total_size(&self) -> u64 {
        self.entries
            .iter()
            .map(|entry| match entry.kind {
                EntryKind::File { size, .. } => size,
                _ => 0,
            })
            .sum()
    }

    /// The number of file entries.
    pub fn file_count(&self) -> usize {
        self.entries
            .iter()
            .filter(|entry| matches!(entry.kind, EntryKind::File { .. }))
            .count()
    }

    /// Every chunk the package needs, once each, in first-appearance order.
    pub fn unique_chunks(&self) -> Vec<ChunkRef> {
        let mut seen = HashSet::new();
        let mut unique = Vec::new();
        for entry in &self.entries {
            if let EntryKind::File { chunks, .. } = &entry.kind {
                for chunk in chunks {
                    if seen.insert(chunk.hash) {
                        unique.push(*chunk);
                    }
                }
            }
        }
        unique
    }

    /// The canonical JSON form: the bytes that get signed. Deterministic
    /// because struct fields serialise in declaration order.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a manifest always serialises to JSON")
    }

    /// Parses JSON bytes and validates the result.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let manifest: Manifest =
            serde_json::from_slice(bytes).map_err(|source| Error::ParseManifest { source })?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// The file entry at `path`, if there is one (dirs and symlinks are not
    /// files and give `None`).
    pub fn file(&self, path: &str) -> Option<&Entry> {
        self.entries
            .iter()
            .find(|entry| entry.path == path && matches!(entry.kind, EntryKind::File { .. }))
    }
}

fn check_mode(path: &str, mode: u32) -> Result<()> {
    if mode > MAX_MODE {
        return Err(Error::InvalidManifest {
            path: path.to_string(),
            reason: format!("mode {mode:#o} has bits beyond permissions (0o7777)"),
        });
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn file(path: &str, contents: &[&[u8]]) -> Entry {
        let chunks: Vec<ChunkRef> = contents
            .iter()
            .map(|data| ChunkRef {
                hash: ChunkHash::of(data),
                size: data.len() as u32,
            })
            .collect();
        Entry {
            path: path.to_string(),
            kind: EntryKind::File {
                mode: 0o644,
                size: chunks.iter().map(|c| u64::from(c.size)).sum(),
                chunks,
            },
        }
    }

    fn dir(path: &str) -> Entry {
        Entry {
            path: path.to_string(),
            kind: EntryKind::Dir { mode: 0o755 },
        }
    }

    fn symlink(path: &str, target: &str) -> Entry {
        Entry {
            path: path.to_string(),
            kind: EntryKind::Symlink {
                target: target.to_string(),
            },
        }
    }

    pub(crate) fn manifest(entries: Vec<Entry>) -> Manifest {
        Manifest {
            format: MANIFEST_FORMAT,
            package: "office".to_string(),
            version: 3,
            origin_site: "CEN".to_string(),
            created_at_ms: 1_700_000_000_000,
            entries,
        }
    }

    pub(crate) fn sample() -> Manifest {
        manifest(vec![
            file("a.txt", &[b"hello", b"world"]),
            dir("empty"),
            symlink("link", "sub/b.bin"),
            file("sub/b.bin", &[b"hello", b"bytes"]),
            symlink("sub/up", "../a.txt"),
        ])
    }

    #[test]
    fn sample_is_valid_and_summarised() {
        let m = sample();
        m.validate().unwrap();
        assert_eq!(m.total_size(), 20);
        assert_eq!(m.file_count(), 2);
        let unique: Vec<u32> = m.unique_chunks().iter().map(|c| c.size).collect();
        assert_eq!(unique, vec![5, 5, 5]);
        assert_eq!(m.unique_chunks()[0].hash, ChunkHash::of(b"hello"));
        assert_eq!(m.unique_chunks()[2].hash, ChunkHash::of(b"bytes"));
        assert!(m.file("a.txt").is_some());
        assert!(m.file("empty").is_none());
        assert!(m.file("missing").is_none());
    }

    #[test]
    fn bytes_round_trip_and_are_deterministic() {
        let m = sample();
        let bytes = m.to_bytes();
        assert_eq!(bytes, m.clone().to_bytes());
        assert_eq!(Manifest::from_bytes(&bytes).unwrap(), m);
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            text.starts_with(r#"{"format":1,"package":"office""#),
            "{text}"
        );
        assert!(
            text.contains(r#"{"path":"empty","type":"dir","mode":493}"#),
            "{text}"
        );
        assert!(
            text.contains(r#""type":"symlink","target":"sub/b.bin""#),
            "{text}"
        );
    }

    #[test]
    fn from_bytes_refuses_garbage_and_invalid() {
        assert!(matches!(
            Manifest::from_bytes(b"not json"),
            Err(Error::ParseManifest { .. })
        ));
        let mut m = sample();
        m.entries.swap(0, 1);
        assert!(Manifest::from_bytes(&m.to_bytes()).is_err());
    }

    #[test]
    fn traversal_paths_are_refused() {
        for path in [
            "../x",
            "a/../../etc/passwd",
            "/abs",
            "a//b",
            ".",
            "a/./b",
            "a\\..\\b",
        ] {
            let m = manifest(vec![file(path, &[b"x"])]);
            assert!(
                matches!(m.validate(), Err(Error::InvalidPath { .. })),
                "{path} accepted"
            );
        }
    }

    #[test]
    fn duplicates_and_disorder_are_refused() {
        let m = manifest(vec![file("a", &[b"x"]), file("a", &[b"y"])]);
        assert!(
            matches!(m.validate(), Err(Error::InvalidManifest { reason, .. }) if reason.contains("duplicate"))
        );
        let m = manifest(vec![file("b", &[b"x"]), file("a", &[b"y"])]);
        assert!(
            matches!(m.validate(), Err(Error::InvalidManifest { reason, .. }) if reason.contains("sorted"))
        );
        // Bytewise order: '.' (0x2e) sorts before '/' (0x2f).
        manifest(vec![dir("a"), file("a.b", &[b"x"]), file("a/b", &[b"y"])])
            .validate()
            .unwrap();
    }

    #[test]
    fn size_mismatch_and_bad_chunk_sizes_are_refused() {
        let mut m = manifest(vec![file("a", &[b"xyz"])]);
        if let EntryKind::File { size, .. } = &mut m.entries[0].kind {
            *size = 4;
        }
        assert!(
            matches!(m.validate(), Err(Error::InvalidManifest { reason, .. }) if reason.contains("add up"))
        );

        for bad_size in [0, MAX_CHUNK_SIZE + 1] {
            let m = manifest(vec![Entry {
                path: "a".to_string(),
                kind: EntryKind::File {
                    mode: 0o644,
                    size: u64::from(bad_size),
                    chunks: vec![ChunkRef {
                        hash: ChunkHash::of(b""),
                        size: bad_size,
                    }],
                },
            }]);
            assert!(m.validate().is_err(), "chunk size {bad_size} accepted");
        }
        // An empty file has no chunks and size 0.
        manifest(vec![file("empty", &[])]).validate().unwrap();
    }

    #[test]
    fn modes_beyond_permission_bits_are_refused() {
        let m = manifest(vec![Entry {
            path: "d".to_string(),
            kind: EntryKind::Dir { mode: 0o40755 },
        }]);
        assert!(m.validate().is_err());
        let mut m = manifest(vec![file("f", &[b"x"])]);
        if let EntryKind::File { mode, .. } = &mut m.entries[0].kind {
            *mode = 0o100644;
        }
        assert!(m.validate().is_err());
        if let EntryKind::File { mode, .. } = &mut m.entries[0].kind {
            *mode = 0o4755;
        }
        m.validate().unwrap();
    }

    #[test]
    fn unknown_format_is_refused() {
        let mut m = sample();
        m.format = 2;
        assert!(matches!(
            m.validate(),
            Err(Error::UnsupportedFormat { format: 2, .. })
        ));
    }

    #[test]
    fn paths_under_files_or_symlinks_are_refused() {
        let m = manifest(vec![file("a", &[b"x"]), file("a/b", &[b"y"])]);
        assert!(m.validate().is_err());
        let m = manifest(vec![symlink("a", "d"), dir("a/b/c"), dir("d")]);
        assert!(m.validate().is_err());
    }

    #[test]
    fn escaping_symlinks_are_refused() {
        for target in ["../x", "/etc/passwd", "sub/../../x", "up/..", ""] {
            let m = manifest(vec![symlink("link", target), symlink("up", ".")]);
            assert!(
                matches!(m.validate(), Err(Error::UnsafeSymlink { .. })),
                "{target:?} accepted"
            );
        }
        let m = manifest(vec![symlink("d/link", "../x")]);
        m.validate().unwrap();
        let m = manifest(vec![symlink("d/link", "../../x")]);
        assert!(m.validate().is_err());
    }
}
