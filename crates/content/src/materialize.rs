//! Turning a manifest back into files: writing a whole tree out of the chunk
//! store, or assembling a byte range of one file (for HTTP Range serving).

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::chunk::ChunkHash;
use crate::error::{Error, Result};
use crate::manifest::{ChunkRef, EntryKind, Manifest};
use crate::paths::{parent, validate_path};
use crate::store::ChunkStore;

/// Writes the manifest's tree under `dest` (must exist) reading chunks from
/// `store`, verifying every chunk and every file's size; modes applied;
/// symlinks created; never writes outside `dest` (the manifest is validated
/// again, and existing directories on the way must be real directories, not
/// symlinks). Each file is written to a temporary name, synced, then renamed
/// into place, so a file is either absent, old, or complete.
///
/// Directory modes are applied last, deepest first, so read-only directories
/// do not get in the way of their own contents.
pub fn materialize(manifest: &Manifest, store: &ChunkStore, dest: &Path) -> Result<()> {
    manifest.validate()?;
    let dest_metadata = fs::metadata(dest).map_err(|source| Error::Io {
        action: "reading destination directory",
        path: dest.to_path_buf(),
        source,
    })?;
    if !dest_metadata.is_dir() {
        return Err(Error::NotADirectory {
            path: dest.to_path_buf(),
        });
    }

    let mut dir_modes: Vec<(PathBuf, u32)> = Vec::new();
    for entry in &manifest.entries {
        // Belt and braces: validate() checked this already, but this is the
        // line that turns names into filesystem paths.
        validate_path(&entry.path)?;
        let full_path = dest.join(&entry.path);
        match &entry.kind {
            EntryKind::Dir { mode } => {
                ensure_dir(dest, &entry.path)?;
                dir_modes.push((full_path, *mode));
            }
            EntryKind::File { mode, size, chunks } => {
                if let Some(dir) = parent(&entry.path) {
                    ensure_dir(dest, dir)?;
                }
                write_file(store, &full_path, *mode, *size, chunks)?;
            }
            EntryKind::Symlink { target } => {
                if let Some(dir) = parent(&entry.path) {
                    ensure_dir(dest, dir)?;
                }
                create_symlink(&full_path, target)?;
            }
        }
    }
    // Sorted paths put children after parents; reverse for deepest first.
    for (path, mode) in dir_modes.iter().rev() {
        set_mode(path, *mode)?;
    }
    Ok(())
}

/// Creates `dest/relative` and its parents as needed, refusing to go through
/// anything that is not a real directory (such as a symlink already there).
fn ensure_dir(dest: &Path, relative: &str) -> Result<()> {
    let mut current = dest.to_path_buf();
    for component in relative.split('/') {
        current.push(component);
        match fs::symlink_metadata(&current) {
            Ok(metadata) if metadata.is_dir() => {}
            Ok(_) => {
                return Err(Error::Io {
                    action: "creating directory",
                    path: current,
                    source: io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        "a non-directory is in the way",
                    ),
                })
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&current).map_err(|source| Error::Io {
                    action: "creating directory",
                    path: current.clone(),
                    source,
                })?;
            }
            Err(source) => {
                return Err(Error::Io {
                    action: "reading metadata of",
                    path: current,
                    source,
                })
            }
        }
    }
    Ok(())
}

/// Assembles one file from verified chunks under a temporary name next to
/// its final place, applies its mode, syncs it and renames it into place.
fn write_file(
    store: &ChunkStore,
    full_path: &Path,
    mode: u32,
    size: u64,
    chunks: &[ChunkRef],
) -> Result<()> {
    let dir = full_path.parent().expect("entries live under dest");
    let write_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io {
            action: "writing file",
            path,
            source,
        }
    };
    let mut temp = tempfile::Builder::new()
        .prefix(".cascade-")
        .tempfile_in(dir)
        .map_err(write_error(full_path))?;
    let mut written: u64 = 0;
    for chunk in chunks {
        let data = get_checked(store, chunk)?;
        temp.write_all(&data).map_err(write_error(temp.path()))?;
        written += data.len() as u64;
    }
    if written != size {
        return Err(Error::InvalidManifest {
            path: full_path.display().to_string(),
            reason: format!("size {size} but chunks gave {written} bytes"),
        });
    }
    set_file_mode(temp.as_file(), mode)
        .and_then(|()| temp.as_file().sync_all())
        .map_err(write_error(temp.path()))?;
    temp.persist(full_path)
        .map_err(|error| write_error(full_path)(error.error))?;
    Ok(())
}

/// Reads a chunk (verified by the store) and checks it has the size the
/// manifest says.
fn get_checked(store: &ChunkStore, chunk: &ChunkRef) -> Result<Vec<u8>> {
    let data = store.get(&chunk.hash)?;
    if data.len() as u64 != u64::from(chunk.size) {
        return Err(size_mismatch(&chunk.hash, chunk.size, data.len()));
    }
    Ok(data)
}

fn size_mismatch(hash: &ChunkHash, expected: u32, actual: usize) -> Error {
    Error::Corrupt {
        hash: *hash,
        reason: format!("manifest says {expected} bytes, chunk has {actual}"),
    }
}

/// Creates a symlink, replacing whatever non-directory is already there.
fn create_symlink(full_path: &Path, target: &str) -> Result<()> {
    let symlink_error = |source| Error::Io {
        action: "creating symlink",
        path: full_path.to_path_buf(),
        source,
    };
    match fs::symlink_metadata(full_path) {
        Ok(metadata) if !metadata.is_dir() => {
            fs::remove_file(full_path).map_err(symlink_error)?;
        }
        _ => {}
    }
    make_symlink(target, full_path).map_err(symlink_error)
}

#[cfg(unix)]
fn make_symlink(target: &str, link: &Path) -> io::Result<()> {
    std::os::unix::fs::symlink(target, link)
}

#[cfg(not(unix))]
fn make_symlink(_target: &str, _link: &Path) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "symlinks are only supported on Unix",
    ))
}

#[cfg(unix)]
fn set_file_mode(file: &fs::File, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_file_mode(_file: &fs::File, _mode: u32) -> io::Result<()> {
    Ok(())
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|source| Error::Io {
        action: "setting mode of",
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(not(unix))]
fn set_mode(_path: &Path, _mode: u32) -> Result<()> {
    Ok(())
}

/// Reads bytes `[start, end)` of a file made of `chunks` by assembling them
/// from the store (for HTTP Range serving). Verifies every chunk it touches,
/// including its size. [`Error::InvalidRange`] if `start > end` or `end` is
/// past the end of the file.
pub fn read_file_range(
    store: &ChunkStore,
    chunks: &[ChunkRef],
    start: u64,
    end: u64,
) -> Result<Vec<u8>> {
    let size: u64 = chunks.iter().map(|chunk| u64::from(chunk.size)).sum();
    if start > end || end > size {
        return Err(Error::InvalidRange { start, end, size });
    }
    let capacity = usize::try_from(end - start).unwrap_or(usize::MAX);
    let mut out = Vec::with_capacity(capacity);
    let mut chunk_start: u64 = 0;
    for chunk in chunks {
        if chunk_start >= end {
            break;
        }
        let chunk_end = chunk_start + u64::from(chunk.size);
        if chunk_end > start {
            let data = get_checked(store, chunk)?;
            let from = (start.max(chunk_start) - chunk_start) as usize;
            let to = (end.min(chunk_end) - chunk_start) as usize;
            out.extend_from_slice(&data[from..to]);
        }
        chunk_start = chunk_end;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{Entry, MANIFEST_FORMAT};
    use crate::scan::{chunk_file, scan, SourceEntry};
    use std::os::unix::fs::{symlink, PermissionsExt};

    /// Ingests a directory the way the site server does: scan, chunk every
    /// file into the store, build the manifest.
    fn ingest(source: &Path, store: &ChunkStore) -> Manifest {
        let mut entries = Vec::new();
        for entry in scan(source).unwrap() {
            let (path, kind) = match entry {
                SourceEntry::File(file) => {
                    let kind = chunk_file(&file, |chunk| {
                        store.put(&chunk.hash, &chunk.data).map(|_| ())
                    })
                    .unwrap();
                    (file.path, kind)
                }
                SourceEntry::Dir { path, mode } => (path, EntryKind::Dir { mode }),
                SourceEntry::Symlink { path, target } => (path, EntryKind::Symlink { target }),
            };
            entries.push(Entry { path, kind });
        }
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            package: "tools".to_string(),
            version: 1,
            origin_site: "CEN".to_string(),
            created_at_ms: 0,
            entries,
        };
        manifest.validate().unwrap();
        manifest
    }

    fn pseudo_random(len: usize, seed: u32) -> Vec<u8> {
        let mut state = seed.wrapping_mul(2_654_435_761).max(1);
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                state as u8
            })
            .collect()
    }

    fn source_tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("bin")).unwrap();
        fs::create_dir_all(root.join("data/empty")).unwrap();
        fs::create_dir_all(root.join("locked")).unwrap();
        fs::write(root.join("bin/tool"), b"#!/bin/sh\n").unwrap();
        fs::set_permissions(root.join("bin/tool"), fs::Permissions::from_mode(0o750)).unwrap();
        fs::write(root.join("data/big.bin"), pseudo_random(900_000, 1)).unwrap();
        fs::write(root.join("data/copy.bin"), pseudo_random(900_000, 1)).unwrap();
        fs::write(root.join("data/zero"), b"").unwrap();
        fs::set_permissions(root.join("data/empty"), fs::Permissions::from_mode(0o700)).unwrap();
        symlink("../bin/tool", root.join("data/tool")).unwrap();
        symlink("data", root.join("data-link")).unwrap();
        dir
    }

    fn assert_same_tree(a: &Path, b: &Path) {
        let left = scan(a).unwrap();
        let right = scan(b).unwrap();
        assert_eq!(left.len(), right.len());
        for (l, r) in left.iter().zip(&right) {
            match (l, r) {
                (SourceEntry::File(l), SourceEntry::File(r)) => {
                    assert_eq!(l.path, r.path);
                    assert_eq!(l.mode, r.mode, "{}", l.path);
                    assert_eq!(
                        fs::read(&l.full_path).unwrap(),
                        fs::read(&r.full_path).unwrap()
                    );
                }
                _ => assert_eq!(l, r),
            }
        }
    }

    #[test]
    fn scanned_tree_round_trips() {
        let source = source_tree();
        let store_dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(store_dir.path()).unwrap();
        let manifest = ingest(source.path(), &store);
        // The two identical files share their chunks.
        let chunk_count: usize = manifest
            .entries
            .iter()
            .map(|e| match &e.kind {
                EntryKind::File { chunks, .. } => chunks.len(),
                _ => 0,
            })
            .sum();
        assert!(manifest.unique_chunks().len() < chunk_count);

        let dest = tempfile::tempdir().unwrap();
        materialize(&manifest, &store, dest.path()).unwrap();
        assert_same_tree(source.path(), dest.path());
        assert_eq!(
            fs::read_link(dest.path().join("data/tool")).unwrap(),
            Path::new("../bin/tool")
        );
        let empty_mode = fs::metadata(dest.path().join("data/empty"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(empty_mode & 0o7777, 0o700);
        // No temporary files left behind.
        let names: Vec<_> = fs::read_dir(dest.path().join("data"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(
            names.iter().all(|n| !n.starts_with(".cascade-")),
            "{names:?}"
        );

        // Doing it again over the existing tree gives the same result.
        materialize(&manifest, &store, dest.path()).unwrap();
        assert_same_tree(source.path(), dest.path());
    }

    #[test]
    fn read_only_dir_modes_do_not_block_contents() {
        let store_dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(store_dir.path()).unwrap();
        store.put(&ChunkHash::of(b"inside"), b"inside").unwrap();
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            package: "p".to_string(),
            version: 1,
            origin_site: "CEN".to_string(),
            created_at_ms: 0,
            entries: vec![
                Entry {
                    path: "ro".to_string(),
                    kind: EntryKind::Dir { mode: 0o555 },
                },
                Entry {
                    path: "ro/f".to_string(),
                    kind: EntryKind::File {
                        mode: 0o444,
                        size: 6,
                        chunks: vec![ChunkRef {
                            hash: ChunkHash::of(b"inside"),
                            size: 6,
                        }],
                    },
                },
            ],
        };
        let dest = tempfile::tempdir().unwrap();
        materialize(&manifest, &store, dest.path()).unwrap();
        assert_eq!(fs::read(dest.path().join("ro/f")).unwrap(), b"inside");
        let mode = fs::metadata(dest.path().join("ro"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o555);
        // Let the temp dir clean up.
        fs::set_permissions(dest.path().join("ro"), fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn missing_or_corrupt_chunks_fail() {
        let source = source_tree();
        let store_dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(store_dir.path()).unwrap();
        let manifest = ingest(source.path(), &store);
        let victim = manifest.unique_chunks()[1].hash;

        crate::store::damage(&store, &victim);
        let dest = tempfile::tempdir().unwrap();
        assert!(matches!(
            materialize(&manifest, &store, dest.path()),
            Err(Error::Corrupt { hash, .. }) if hash == victim
        ));

        store.remove(&victim).unwrap();
        let dest = tempfile::tempdir().unwrap();
        assert!(matches!(
            materialize(&manifest, &store, dest.path()),
            Err(Error::NotFound { hash }) if hash == victim
        ));
    }

    #[test]
    fn hostile_manifests_write_nothing_outside() {
        let outer = tempfile::tempdir().unwrap();
        let dest = outer.path().join("dest");
        fs::create_dir(&dest).unwrap();
        let store = ChunkStore::open(&outer.path().join("store")).unwrap();
        store.put(&ChunkHash::of(b"evil"), b"evil").unwrap();
        let evil_file = |path: &str| Entry {
            path: path.to_string(),
            kind: EntryKind::File {
                mode: 0o644,
                size: 4,
                chunks: vec![ChunkRef {
                    hash: ChunkHash::of(b"evil"),
                    size: 4,
                }],
            },
        };
        let manifest_with = |entries| Manifest {
            format: MANIFEST_FORMAT,
            package: "p".to_string(),
            version: 1,
            origin_site: "CEN".to_string(),
            created_at_ms: 0,
            entries,
        };
        for path in [
            "../escaped",
            "a/../../escaped",
            "/tmp/escaped",
            "foo/../../etc/passwd",
        ] {
            let manifest = manifest_with(vec![evil_file(path)]);
            assert!(materialize(&manifest, &store, &dest).is_err(), "{path}");
        }
        // A symlink placed first, then a file "through" it.
        let manifest = manifest_with(vec![
            Entry {
                path: "link".to_string(),
                kind: EntryKind::Symlink {
                    target: ".".to_string(),
                },
            },
            evil_file("link/escaped"),
        ]);
        assert!(materialize(&manifest, &store, &dest).is_err());
        // A pre-existing symlink in dest pointing outside is not followed.
        symlink(outer.path(), dest.join("sneaky")).unwrap();
        let manifest = manifest_with(vec![evil_file("sneaky/escaped")]);
        assert!(materialize(&manifest, &store, &dest).is_err());

        let names: Vec<_> = fs::read_dir(outer.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(!names.contains(&"escaped".to_string()), "{names:?}");
        assert!(!outer.path().join("escaped").exists());
    }

    #[test]
    fn read_file_range_across_chunk_boundaries() {
        let store_dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(store_dir.path()).unwrap();
        let data = pseudo_random(1_000_000, 7);
        let mut refs = Vec::new();
        for chunk in crate::chunk::chunks(&data[..]) {
            let chunk = chunk.unwrap();
            store.put(&chunk.hash, &chunk.data).unwrap();
            refs.push(ChunkRef {
                hash: chunk.hash,
                size: chunk.data.len() as u32,
            });
        }
        assert!(refs.len() >= 3);
        let first_cut = u64::from(refs[0].size);
        let second_cut = first_cut + u64::from(refs[1].size);
        let len = data.len() as u64;
        for (start, end) in [
            (0, len),
            (0, 0),
            (len, len),
            (0, 1),
            (len - 1, len),
            (first_cut - 1, first_cut + 1),
            (first_cut, second_cut),
            (first_cut - 10, second_cut + 10),
            (5, len - 5),
            (first_cut, first_cut),
        ] {
            let range = read_file_range(&store, &refs, start, end).unwrap();
            assert!(
                range == data[start as usize..end as usize],
                "range {start}..{end}"
            );
        }
        for (start, end) in [(0, len + 1), (10, 5), (len + 1, len + 1)] {
            assert!(matches!(
                read_file_range(&store, &refs, start, end),
                Err(Error::InvalidRange { .. })
            ));
        }
        // A range that touches a damaged chunk fails; one that does not, works.
        crate::store::damage(&store, &refs[1].hash);
        assert!(matches!(
            read_file_range(&store, &refs, first_cut - 1, first_cut + 1),
            Err(Error::Corrupt { .. })
        ));
        assert!(read_file_range(&store, &refs, 0, first_cut).is_ok());
    }
}
