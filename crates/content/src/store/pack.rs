//! The on-disk format of pack files and their indexes (format 2), with no
//! state of its own: what an entry is, how it is written and read back,
//! and where a damaged or torn index stops being trusted.
//!
//! A pack `NNNNNNNN.pack` is a [`PACK_MAGIC`] header followed by encoded
//! chunks back to back. Its index `NNNNNNNN.idx` is an [`IDX_MAGIC`]
//! header followed by fixed-size entries, appended in the order things
//! happened: a chunk stored at an offset ([`Kind::Put`]), a chunk dropped
//! ([`Kind::Drop`]), a chunk used again ([`Kind::Used`]). Each entry ends
//! with a checksum of itself, so a torn or zeroed tail is recognised and
//! cut; a put entry is written only once the bytes it points at are
//! synced, so the index never points at bytes that may not be there.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::chunk::ChunkHash;

/// First bytes of every pack file.
pub(crate) const PACK_MAGIC: &[u8; 16] = b"cascade pack v2\n";
/// First bytes of every pack index.
pub(crate) const IDX_MAGIC: &[u8; 16] = b"cascade idx v2\n\0";
/// Length of the header of both files.
pub(crate) const HEADER_LEN: u64 = 16;
/// Length of one index entry.
pub(crate) const ENTRY_LEN: usize = 72;

/// What an index entry records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// The chunk's encoded bytes are at `offset..offset + len` of the pack.
    Put = 1,
    /// The chunk is no longer in the store (its bytes may still be in a pack).
    Drop = 2,
    /// The chunk was used again at `at_ms` (a cache keeps what was used last).
    Used = 3,
}

/// One index entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub kind: Kind,
    pub hash: ChunkHash,
    /// Where the encoded bytes start in the pack ([`Kind::Put`] only).
    pub offset: u64,
    /// How many encoded bytes ([`Kind::Put`] only).
    pub len: u32,
    /// [`record_checksum`] of the encoded bytes ([`Kind::Put`] only).
    pub checksum: u64,
    /// When it was stored or used, in ms since the Unix epoch.
    pub at_ms: u64,
}

impl Entry {
    /// Its bytes on disk: kind, three zero bytes, len, offset, hash, at_ms,
    /// checksum (little endian), then a checksum of the first 64 bytes.
    pub fn to_bytes(self) -> [u8; ENTRY_LEN] {
        let mut out = [0u8; ENTRY_LEN];
        out[0] = self.kind as u8;
        out[4..8].copy_from_slice(&self.len.to_le_bytes());
        out[8..16].copy_from_slice(&self.offset.to_le_bytes());
        out[16..48].copy_from_slice(&self.hash.0);
        out[48..56].copy_from_slice(&self.at_ms.to_le_bytes());
        out[56..64].copy_from_slice(&self.checksum.to_le_bytes());
        let check = xxhash_rust::xxh3::xxh3_64(&out[..64]);
        out[64..].copy_from_slice(&check.to_le_bytes());
        out
    }

    /// Reads an entry back; `None` for anything that is not one written by
    /// [`Entry::to_bytes`] (torn, zeroed, damaged).
    pub fn from_bytes(bytes: &[u8]) -> Option<Entry> {
        let bytes: &[u8; ENTRY_LEN] = bytes.try_into().ok()?;
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
        if xxhash_rust::xxh3::xxh3_64(&bytes[..64]) != u64_at(64) || bytes[1..4] != [0, 0, 0] {
            return None;
        }
        let kind = match bytes[0] {
            1 => Kind::Put,
            2 => Kind::Drop,
            3 => Kind::Used,
            _ => return None,
        };
        Some(Entry {
            kind,
            hash: ChunkHash(bytes[16..48].try_into().unwrap()),
            offset: u64_at(8),
            len: u32::from_le_bytes(bytes[4..8].try_into().unwrap()),
            checksum: u64_at(56),
            at_ms: u64_at(48),
        })
    }
}

/// The checksum kept for a chunk's stored bytes: cheap enough to check on
/// every read that sends the bytes on (a receiver verifies the BLAKE3
/// name itself), so that damage on disk is noticed before it is served.
pub(crate) fn record_checksum(encoded: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(encoded)
}

/// A pack's file names in `dir`.
pub(crate) fn pack_path(dir: &Path, id: u32) -> PathBuf {
    dir.join(format!("{id:08}.pack"))
}

/// The index's file name beside the pack.
pub(crate) fn idx_path(dir: &Path, id: u32) -> PathBuf {
    dir.join(format!("{id:08}.idx"))
}

/// Which pack a file name in the packs directory belongs to, and whether
/// it is the index (`true`) or the pack.
pub(crate) fn parse_name(name: &str) -> Option<(u32, bool)> {
    let (stem, ext) = name.split_once('.')?;
    if stem.len() != 8 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let id = stem.parse().ok()?;
    match ext {
        "pack" => Some((id, false)),
        "idx" => Some((id, true)),
        _ => None,
    }
}

/// What [`read_index`] found in one index.
pub(crate) struct IndexRead {
    /// The entries to trust, in order.
    pub entries: Vec<Entry>,
    /// Bytes of the index they span (header included): what follows is
    /// torn or damaged and is cut before anything is appended.
    pub valid_len: u64,
    /// Where the pack's trusted bytes end: past the last put entry's bytes.
    pub pack_end: u64,
}

/// Reads an index whose pack is `pack_len` bytes long. Entries are trusted
/// up to the first that does not read back or that points past the pack
/// (bytes the index was never meant to claim before they were synced).
/// An index whose header is wrong is an error: not a torn write but
/// something else's file, left alone.
pub(crate) fn read_index(path: &Path, pack_len: u64) -> io::Result<IndexRead> {
    let bytes = std::fs::read(path)?;
    if bytes.len() < HEADER_LEN as usize || &bytes[..HEADER_LEN as usize] != IDX_MAGIC {
        // A header torn before its first sync is an index with no entries.
        if bytes.len() < HEADER_LEN as usize && IDX_MAGIC.starts_with(&bytes) {
            return Ok(IndexRead {
                entries: Vec::new(),
                valid_len: 0,
                pack_end: HEADER_LEN,
            });
        }
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a Cascade pack index (wrong header)",
        ));
    }
    let mut entries = Vec::with_capacity(bytes.len() / ENTRY_LEN);
    let mut pack_end = HEADER_LEN;
    let mut valid_len = HEADER_LEN;
    for raw in bytes[HEADER_LEN as usize..].chunks(ENTRY_LEN) {
        let Some(entry) = Entry::from_bytes(raw) else {
            break;
        };
        if entry.kind == Kind::Put {
            let end = entry.offset.checked_add(u64::from(entry.len));
            match end {
                Some(end) if entry.offset >= HEADER_LEN && end <= pack_len => {
                    pack_end = pack_end.max(end)
                }
                _ => break,
            }
        }
        entries.push(entry);
        valid_len += ENTRY_LEN as u64;
    }
    Ok(IndexRead {
        entries,
        valid_len,
        pack_end,
    })
}

/// Writes `bytes` at `offset` of `file`.
pub(crate) fn write_at(file: &File, bytes: &[u8], offset: u64) -> io::Result<()> {
    file.write_all_at(bytes, offset)
}

/// Reads `len` bytes at `offset` of `file`.
pub(crate) fn read_at(file: &File, offset: u64, len: u32) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len as usize];
    read_into(file, offset, &mut buf)?;
    Ok(buf)
}

/// Fills `buf` with the bytes at `offset` of `file`.
pub(crate) fn read_into(file: &File, offset: u64, buf: &mut [u8]) -> io::Result<()> {
    file.read_exact_at(buf, offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(kind: Kind) -> Entry {
        Entry {
            kind,
            hash: ChunkHash::of(b"entry"),
            offset: 16,
            len: 1234,
            checksum: record_checksum(b"x"),
            at_ms: 1_800_000_000_000,
        }
    }

    #[test]
    fn entries_read_back_and_damage_is_refused() {
        for kind in [Kind::Put, Kind::Drop, Kind::Used] {
            let bytes = entry(kind).to_bytes();
            assert_eq!(Entry::from_bytes(&bytes), Some(entry(kind)));
            for at in [0, 2, 5, 20, 50, 60, 70] {
                let mut damaged = bytes;
                damaged[at] ^= 0x10;
                assert_eq!(Entry::from_bytes(&damaged), None, "byte {at}");
            }
            assert_eq!(Entry::from_bytes(&bytes[..40]), None);
        }
        assert_eq!(Entry::from_bytes(&[0u8; ENTRY_LEN]), None);
    }

    #[test]
    fn an_index_is_trusted_up_to_its_first_bad_entry_or_a_claim_past_the_pack() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("00000001.idx");
        let mut bytes = IDX_MAGIC.to_vec();
        let mut put = entry(Kind::Put);
        bytes.extend(put.to_bytes());
        put.offset = 2000;
        put.len = 100;
        bytes.extend(put.to_bytes());
        // Torn: half an entry.
        bytes.extend(&entry(Kind::Drop).to_bytes()[..30]);
        std::fs::write(&path, &bytes).unwrap();
        let read = read_index(&path, 4096).unwrap();
        assert_eq!(read.entries.len(), 2);
        assert_eq!(read.valid_len, HEADER_LEN + 2 * ENTRY_LEN as u64);
        assert_eq!(read.pack_end, 2100);
        // The pack is shorter than the second entry claims: it is not trusted.
        let read = read_index(&path, 2050).unwrap();
        assert_eq!(read.entries.len(), 1);
        assert_eq!(read.pack_end, 16 + 1234);
        // Someone else's file is an error, a torn header an empty index.
        std::fs::write(&path, b"something else entirely").unwrap();
        assert!(read_index(&path, 4096).is_err());
        std::fs::write(&path, &IDX_MAGIC[..5]).unwrap();
        assert!(read_index(&path, 4096).unwrap().entries.is_empty());
    }

    #[test]
    fn names_parse() {
        let dir = Path::new("/s");
        assert_eq!(pack_path(dir, 7), Path::new("/s/00000007.pack"));
        assert_eq!(parse_name("00000007.pack"), Some((7, false)));
        assert_eq!(parse_name("00000007.idx"), Some((7, true)));
        assert_eq!(parse_name("7.pack"), None);
        assert_eq!(parse_name("0000000a.pack"), None);
        assert_eq!(parse_name("00000007.tmp"), None);
    }
}
