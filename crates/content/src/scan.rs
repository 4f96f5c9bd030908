//! Reading a source directory for ingest: walking the tree safely and
//! chunking its files into manifest entries.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::chunk::{chunk_stream, Chunk};
use crate::error::{Error, Result};
use crate::manifest::{ChunkRef, Entry, EntryKind};
use crate::paths::{validate_path, validate_symlink_target};

/// A regular file found by [`scan`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceFile {
    /// Path relative to the scan root, '/'-separated.
    pub path: String,
    /// Where the file is on disk.
    pub full_path: PathBuf,
    /// Permission bits (at most 0o7777).
    pub mode: u32,
    /// Size when scanned.
    pub size: u64,
    /// What the file system said of it when scanned: a file whose stamp is
    /// the one a previous ingest read it with is taken to hold the same
    /// bytes (see [`chunk_tree_reusing`]).
    pub stamp: FileStamp,
}

/// A file's size, times and identity as the file system reports them
/// (`stat`): any write changes its modification and change times, and the
/// change time cannot be set back by the file's owner. On systems without
/// change times and inode numbers those are 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileStamp {
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// Status change time, nanoseconds since the Unix epoch.
    pub ctime_ns: i64,
    /// Inode number.
    pub ino: u64,
    /// Device number.
    pub dev: u64,
}

impl FileStamp {
    /// The stamp of a file's metadata (not following a symlink).
    #[cfg(unix)]
    pub fn of(metadata: &fs::Metadata) -> FileStamp {
        use std::os::unix::fs::MetadataExt;
        let ns = |secs: i64, nanos: i64| secs.saturating_mul(1_000_000_000).saturating_add(nanos);
        FileStamp {
            size: metadata.len(),
            mtime_ns: ns(metadata.mtime(), metadata.mtime_nsec()),
            ctime_ns: ns(metadata.ctime(), metadata.ctime_nsec()),
            ino: metadata.ino(),
            dev: metadata.dev(),
        }
    }

    /// The stamp of a file's metadata (not following a symlink).
    #[cfg(not(unix))]
    pub fn of(metadata: &fs::Metadata) -> FileStamp {
        let mtime_ns = metadata
            .modified()
            .ok()
            .and_then(|at| at.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |at| at.as_nanos() as i64);
        FileStamp {
            size: metadata.len(),
            mtime_ns,
            ctime_ns: 0,
            ino: 0,
            dev: 0,
        }
    }

    /// Whether a file with this stamp, read by a scan that started at
    /// `scan_started_ns`, may have been written again after it was read
    /// without its stamp changing (its times fall within the file system's
    /// time granularity of the read: "racy" in git's words). Such a stamp
    /// proves nothing; two seconds covers the coarsest file systems.
    pub fn racy(&self, scan_started_ns: i64) -> bool {
        const MARGIN_NS: i64 = 2_000_000_000;
        self.mtime_ns >= scan_started_ns - MARGIN_NS || self.ctime_ns >= scan_started_ns - MARGIN_NS
    }
}

/// One thing found by [`scan`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceEntry {
    /// A regular file.
    File(SourceFile),
    /// An empty directory (non-empty ones are implied by their contents).
    Dir {
        /// Path relative to the scan root.
        path: String,
        /// Permission bits (at most 0o7777).
        mode: u32,
    },
    /// A symbolic link whose target stays inside the tree.
    Symlink {
        /// Path relative to the scan root.
        path: String,
        /// The link's target, as written.
        target: String,
    },
}

impl SourceEntry {
    /// The entry's path relative to the scan root.
    pub fn path(&self) -> &str {
        match self {
            SourceEntry::File(file) => &file.path,
            SourceEntry::Dir { path, .. } | SourceEntry::Symlink { path, .. } => path,
        }
    }
}

/// Walks `root` (must be a directory) in sorted path order, without following
/// symlinks. Errors, naming the offending path: non-UTF-8 names, special
/// files (sockets, fifos, devices), symlinks that are absolute or resolve
/// (lexically) outside the root, paths failing [`validate_path`]. Dirs are
/// listed only when empty (non-empty dirs are implied by their files). Root
/// itself is not an entry.
pub fn scan(root: &Path) -> Result<Vec<SourceEntry>> {
    let metadata = fs::metadata(root).map_err(|source| Error::Io {
        action: "reading source directory",
        path: root.to_path_buf(),
        source,
    })?;
    if !metadata.is_dir() {
        return Err(Error::NotADirectory {
            path: root.to_path_buf(),
        });
    }
    let mut entries = Vec::new();
    walk(root, "", &mut entries)?;
    entries.sort_by(|a, b| a.path().as_bytes().cmp(b.path().as_bytes()));

    // Symlink targets are checked once the whole tree is known, because
    // passing through another symlink matters (see validate_symlink_target).
    let symlinks: HashSet<&str> = entries
        .iter()
        .filter_map(|entry| match entry {
            SourceEntry::Symlink { path, .. } => Some(path.as_str()),
            _ => None,
        })
        .collect();
    for entry in &entries {
        if let SourceEntry::Symlink { path, target } = entry {
            validate_symlink_target(path, target, &|p: &str| symlinks.contains(p))?;
        }
    }
    Ok(entries)
}

/// Lists `dir` (at `relative` under the root) into `entries`, recursively.
/// Returns whether `dir` had any entries.
fn walk(dir: &Path, relative: &str, entries: &mut Vec<SourceEntry>) -> Result<bool> {
    let mut any = false;
    for item in fs::read_dir(dir).map_err(Error::io("reading directory", dir))? {
        let item = item.map_err(Error::io("reading directory", dir))?;
        any = true;
        let full_path = item.path();
        let name = item.file_name();
        let name = name.to_str().ok_or_else(|| Error::NonUtf8Name {
            path: full_path.clone(),
        })?;
        let path = if relative.is_empty() {
            name.to_string()
        } else {
            format!("{relative}/{name}")
        };
        validate_path(&path)?;

        // symlink_metadata: never follow links.
        let metadata = fs::symlink_metadata(&full_path)
            .map_err(Error::io("reading metadata of", &full_path))?;
        let file_type = metadata.file_type();
        if file_type.is_symlink() {
            let target =
                fs::read_link(&full_path).map_err(Error::io("reading symlink", &full_path))?;
            let target = target
                .to_str()
                .ok_or_else(|| Error::NonUtf8Name {
                    path: full_path.clone(),
                })?
                .to_string();
            entries.push(SourceEntry::Symlink { path, target });
        } else if file_type.is_dir() {
            if !walk(&full_path, &path, entries)? {
                entries.push(SourceEntry::Dir {
                    path,
                    mode: permission_bits(&metadata),
                });
            }
        } else if file_type.is_file() {
            entries.push(SourceEntry::File(SourceFile {
                path,
                full_path,
                mode: permission_bits(&metadata),
                size: metadata.len(),
                stamp: FileStamp::of(&metadata),
            }));
        } else {
            return Err(Error::SpecialFile {
                path: full_path,
                kind: special_kind(&file_type),
            });
        }
    }
    Ok(any)
}

#[cfg(unix)]
fn permission_bits(metadata: &fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    metadata.permissions().mode() & 0o7777
}

#[cfg(not(unix))]
fn permission_bits(metadata: &fs::Metadata) -> u32 {
    if metadata.permissions().readonly() {
        0o555
    } else {
        0o755
    }
}

#[cfg(unix)]
fn special_kind(file_type: &fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if file_type.is_fifo() {
        "fifo"
    } else if file_type.is_socket() {
        "socket"
    } else if file_type.is_block_device() {
        "block device"
    } else if file_type.is_char_device() {
        "character device"
    } else {
        "special file"
    }
}

#[cfg(not(unix))]
fn special_kind(_file_type: &fs::FileType) -> &'static str {
    "special file"
}

/// The manifest entries of a scanned tree, every file cut into chunks on
/// the way: `on_chunk` sees each chunk in order (to store or send it), and
/// an error of its stops the cutting.
pub fn chunk_tree(
    listing: Vec<SourceEntry>,
    on_chunk: impl FnMut(&Chunk) -> Result<()>,
) -> Result<Vec<Entry>> {
    chunk_tree_reusing(listing, |_| None, on_chunk)
}

/// As [`chunk_tree`], except for the files `known` gives the chunk list of
/// (the caller knows them unchanged since they were last read, by their
/// [`FileStamp`]): those are not read, and their chunks are not passed to
/// `on_chunk`. A list whose sizes do not add up to the file's size is not
/// taken, and the file is read.
pub fn chunk_tree_reusing(
    listing: Vec<SourceEntry>,
    known: impl Fn(&SourceFile) -> Option<Vec<ChunkRef>>,
    mut on_chunk: impl FnMut(&Chunk) -> Result<()>,
) -> Result<Vec<Entry>> {
    let mut entries = Vec::with_capacity(listing.len());
    for item in listing {
        entries.push(match item {
            SourceEntry::File(file) => {
                let known = known(&file).filter(|chunks| {
                    chunks
                        .iter()
                        .map(|chunk| u64::from(chunk.size))
                        .sum::<u64>()
                        == file.size
                });
                let kind = match known {
                    Some(chunks) => EntryKind::File {
                        mode: file.mode,
                        size: file.size,
                        chunks,
                    },
                    None => chunk_file(&file, &mut on_chunk)?,
                };
                Entry {
                    path: file.path,
                    kind,
                }
            }
            SourceEntry::Dir { path, mode } => Entry {
                path,
                kind: EntryKind::Dir { mode },
            },
            SourceEntry::Symlink { path, target } => Entry {
                path,
                kind: EntryKind::Symlink { target },
            },
        });
    }
    Ok(entries)
}

/// Chunks one file and builds its entry: calls `on_chunk` for every chunk
/// (so the caller can store or upload it) and returns the
/// [`EntryKind::File`]. Error if the file changed size while being read.
pub fn chunk_file(
    file: &SourceFile,
    mut on_chunk: impl FnMut(&Chunk) -> Result<()>,
) -> Result<EntryKind> {
    let read_error = |source| Error::Io {
        action: "reading file",
        path: file.full_path.clone(),
        source,
    };
    let reader = File::open(&file.full_path).map_err(read_error)?;
    // Read at most one byte past the scanned size: enough to notice growth
    // without chasing a file that keeps growing.
    let reader = reader.take(file.size.saturating_add(1));
    let mut chunks = Vec::new();
    let mut size: u64 = 0;
    for chunk in chunk_stream(reader) {
        let chunk = chunk.map_err(read_error)?;
        size += chunk.data.len() as u64;
        if size > file.size {
            break;
        }
        on_chunk(&chunk)?;
        chunks.push(ChunkRef {
            hash: chunk.hash,
            size: chunk.data.len() as u32,
        });
    }
    if size != file.size {
        return Err(Error::FileChanged {
            path: file.full_path.clone(),
            expected: file.size,
            actual: size,
        });
    }
    Ok(EntryKind::File {
        mode: file.mode,
        size,
        chunks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("bin")).unwrap();
        fs::create_dir_all(root.join("empty")).unwrap();
        fs::create_dir_all(root.join("nested/inner")).unwrap();
        fs::write(root.join("bin/tool"), b"#!/bin/sh\necho hi\n").unwrap();
        fs::set_permissions(root.join("bin/tool"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(root.join("readme.txt"), b"read me").unwrap();
        fs::write(root.join("a.b"), b"dot").unwrap();
        symlink("bin/tool", root.join("run")).unwrap();
        symlink("../readme.txt", root.join("bin/readme")).unwrap();
        dir
    }

    #[test]
    fn scan_lists_in_sorted_order() {
        let dir = tree();
        let entries = scan(dir.path()).unwrap();
        let paths: Vec<&str> = entries.iter().map(|e| e.path()).collect();
        assert_eq!(
            paths,
            vec![
                "a.b",
                "bin/readme",
                "bin/tool",
                "empty",
                "nested/inner",
                "readme.txt",
                "run"
            ]
        );
        match &entries[2] {
            SourceEntry::File(file) => {
                assert_eq!(file.mode, 0o755);
                assert_eq!(file.size, 18);
                assert_eq!(file.full_path, dir.path().join("bin/tool"));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(&entries[3], SourceEntry::Dir { path, .. } if path == "empty"));
        assert_eq!(
            entries[6],
            SourceEntry::Symlink {
                path: "run".to_string(),
                target: "bin/tool".to_string()
            }
        );
    }

    #[test]
    fn symlinks_outside_the_root_are_refused() {
        for target in ["../outside", "/etc/passwd", "a/../../x"] {
            let dir = tempfile::tempdir().unwrap();
            symlink(target, dir.path().join("escape")).unwrap();
            match scan(dir.path()) {
                Err(Error::UnsafeSymlink { path, .. }) => assert_eq!(path, "escape"),
                other => panic!("{target}: {other:?}"),
            }
        }
    }

    #[test]
    fn fifo_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe");
        let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: `c_path` is a NUL-terminated path that outlives the call.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o644) }, 0);
        match scan(dir.path()) {
            Err(Error::SpecialFile { path, kind }) => {
                assert_eq!(path, fifo);
                assert_eq!(kind, "fifo");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn non_utf8_name_is_refused() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        let name = std::ffi::OsStr::from_bytes(b"bad\xff");
        // Some filesystems refuse such names; nothing to test there.
        if fs::write(dir.path().join(name), b"x").is_ok() {
            assert!(matches!(scan(dir.path()), Err(Error::NonUtf8Name { .. })));
        }
    }

    #[test]
    fn invalid_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("back\\slash"), b"x").unwrap();
        assert!(matches!(scan(dir.path()), Err(Error::InvalidPath { .. })));
    }

    #[test]
    fn root_must_be_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        fs::write(&file, b"x").unwrap();
        assert!(matches!(scan(&file), Err(Error::NotADirectory { .. })));
        assert!(matches!(
            scan(&dir.path().join("missing")),
            Err(Error::Io { .. })
        ));
        assert!(scan(dir.path()).unwrap().len() == 1);
    }

    #[test]
    fn chunk_file_builds_the_entry() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..600_000u32).map(|i| (i * 7 % 251) as u8).collect();
        fs::write(dir.path().join("big"), &data).unwrap();
        fs::write(dir.path().join("zero"), b"").unwrap();
        let entries = scan(dir.path()).unwrap();
        let SourceEntry::File(big) = &entries[0] else {
            panic!()
        };
        let mut seen = Vec::new();
        let kind = chunk_file(big, |chunk| {
            seen.extend_from_slice(&chunk.data);
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, data);
        let EntryKind::File { size, chunks, .. } = kind else {
            panic!()
        };
        assert_eq!(size, 600_000);
        assert!(chunks.len() >= 3);

        let SourceEntry::File(zero) = &entries[1] else {
            panic!()
        };
        let kind = chunk_file(zero, |_| panic!("no chunks expected")).unwrap();
        assert_eq!(
            kind,
            EntryKind::File {
                mode: zero.mode,
                size: 0,
                chunks: vec![]
            }
        );
    }

    #[test]
    fn chunk_file_notices_size_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        fs::write(&path, b"0123456789").unwrap();
        let entries = scan(dir.path()).unwrap();
        let SourceEntry::File(file) = &entries[0] else {
            panic!()
        };
        fs::write(&path, b"01234").unwrap();
        assert!(matches!(
            chunk_file(file, |_| Ok(())),
            Err(Error::FileChanged {
                expected: 10,
                actual: 5,
                ..
            })
        ));
        fs::write(&path, b"0123456789abc").unwrap();
        assert!(matches!(
            chunk_file(file, |_| Ok(())),
            Err(Error::FileChanged { expected: 10, .. })
        ));
    }

    #[test]
    fn chunk_file_passes_on_callback_errors() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("f"), b"data").unwrap();
        let entries = scan(dir.path()).unwrap();
        let SourceEntry::File(file) = &entries[0] else {
            panic!()
        };
        let result = chunk_file(file, |chunk| Err(Error::NotFound { hash: chunk.hash }));
        assert!(matches!(result, Err(Error::NotFound { .. })));
    }
}
