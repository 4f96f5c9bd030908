//! Tests of the chunk store: packs, crashes, compaction, the upgrade from format 1.

use super::*;
use crate::encoding::encode;
use rand::{RngCore, SeedableRng};

fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut data);
    data
}

fn put_random(store: &ChunkStore, seed: u64, len: usize) -> (ChunkHash, Vec<u8>) {
    let data = random_bytes(seed, len);
    let hash = ChunkHash::of(&data);
    store.put(&hash, &data).unwrap();
    (hash, data)
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
        assert_eq!(first.stored_bytes, store.location(&hash).unwrap().len);
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

/// Issue 13: one file per chunk (16,000 files per GiB, each created and
/// synced). Chunks now go into a few pack files, and a new store says
/// which format it is.
#[test]
fn chunks_go_into_packs_not_files_of_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(dir.path())
        .unwrap()
        .with_pack_target(200_000);
    let chunks: Vec<(ChunkHash, Vec<u8>)> =
        (0..30).map(|i| put_random(&store, i, 20_000)).collect();
    let usage = store.usage();
    assert_eq!(usage.chunks, 30);
    assert_eq!(usage.live_bytes, 30 * 20_001);
    assert!((2..=4).contains(&usage.packs), "{usage:?}");
    let files = fs::read_dir(dir.path().join(PACKS_DIR)).unwrap().count() as u64;
    assert_eq!(files, 2 * usage.packs);
    assert_eq!(
        fs::read_to_string(dir.path().join(FORMAT_FILE)).unwrap(),
        "cascade chunk store\nformat 2\n"
    );
    drop(store);
    let reopened = ChunkStore::open(dir.path()).unwrap();
    assert_eq!(reopened.opened(), OpenReport::default());
    for (hash, data) in &chunks {
        assert_eq!(&reopened.get(hash).unwrap(), data);
    }
}

/// The local ingest path: chunks hashed by the caller are encoded (on
/// every core for a large batch) and stored, each once.
#[test]
fn hashed_chunks_are_encoded_and_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(dir.path()).unwrap();
    let datas: Vec<Vec<u8>> = (0..30)
        .map(|i| {
            let mut data = random_bytes(700 + i, 40_000);
            if i % 2 == 0 {
                data[1000..].fill(3);
            }
            data
        })
        .collect();
    // One of them is stored already.
    let first_hash = ChunkHash::of(&datas[1]);
    store.put(&first_hash, &datas[1]).unwrap();
    let mut batch: Vec<(ChunkHash, &[u8])> = datas
        .iter()
        .map(|data| (ChunkHash::of(data), data.as_slice()))
        .collect();
    batch.push(batch[3]);
    let outcomes = store.put_hashed_batch(&batch).unwrap();
    assert_eq!(outcomes.len(), 31);
    assert!(!outcomes[30].newly_stored, "the repeat");
    for (i, data) in datas.iter().enumerate() {
        let hash = ChunkHash::of(data);
        assert_eq!(&store.get(&hash).unwrap(), data);
        assert_eq!(outcomes[i].stored_bytes, encode(data).len() as u64);
        assert_eq!(outcomes[i].newly_stored, hash != first_hash, "{i}");
    }
    // Compressible ones were compressed.
    assert!(outcomes[0].stored_bytes < 10_000);
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
    let at = store.location(&hash).unwrap();
    let pack_bytes = fs::read(&at.pack).unwrap();
    assert_eq!(
        &pack_bytes[at.offset as usize..(at.offset + at.len) as usize],
        encoded.as_slice()
    );
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
    let before = store.usage().live_bytes;
    let outcomes = store.put_encoded_batch(&batch).unwrap();
    assert_eq!(outcomes.len(), 21);
    assert!(!outcomes[0].newly_stored, "already stored before the batch");
    assert!(outcomes[1..20].iter().all(|outcome| outcome.newly_stored));
    assert!(!outcomes[20].newly_stored, "the repeat");
    let added: u64 = outcomes[1..20].iter().map(|o| o.stored_bytes).sum();
    assert_eq!(store.usage().live_bytes, before + added);
    for (i, (data, (hash, bytes))) in datas.iter().zip(&encoded).enumerate() {
        assert_eq!(&store.get(hash).unwrap(), data);
        assert_eq!(outcomes[i].stored_bytes, bytes.len() as u64);
    }

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

/// Damage on disk is caught by the record checksum when the bytes are
/// read to be sent, and by the BLAKE3 name when they are decoded.
#[test]
fn corruption_on_disk_is_detected_on_read() {
    let dir = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(dir.path()).unwrap();
    let (hash, _) = put_random(&store, 2, 10_000);
    let (other, other_data) = put_random(&store, 3, 10_000);
    damage(&store, &hash);
    assert!(matches!(store.get(&hash), Err(Error::Corrupt { .. })));
    match store.get_encoded(&hash) {
        Err(Error::Corrupt { reason, .. }) => assert!(reason.contains("checksum"), "{reason}"),
        other => panic!("expected corrupt, got {other:?}"),
    }
    assert_eq!(
        store.get(&other).unwrap(),
        other_data,
        "its neighbour is intact"
    );
    // A pack cut short too.
    let at = store.location(&other).unwrap();
    File::options()
        .write(true)
        .open(&at.pack)
        .unwrap()
        .set_len(at.offset + 10)
        .unwrap();
    assert!(matches!(store.get(&other), Err(Error::Corrupt { .. })));
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
    store.remove(&hash).unwrap();
    assert!(!store.contains(&hash));
    assert!(matches!(store.get(&hash), Err(Error::NotFound { .. })));
    // The removal is remembered, and a chunk stored again after it is there.
    let back = ChunkHash::of(b"back");
    store.put(&back, b"back").unwrap();
    store.remove(&back).unwrap();
    store.put(&back, b"back").unwrap();
    drop(store);
    let reopened = ChunkStore::open(dir.path()).unwrap();
    assert!(!reopened.contains(&hash));
    assert_eq!(reopened.get(&back).unwrap(), b"back");
}

#[test]
fn a_second_process_cannot_open_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(dir.path()).unwrap();
    assert!(matches!(
        ChunkStore::open(dir.path()),
        Err(Error::StoreLocked { .. })
    ));
    drop(store);
    ChunkStore::open(dir.path()).unwrap();
}

#[test]
fn an_unknown_format_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    drop(ChunkStore::open(dir.path()).unwrap());
    let format = dir.path().join(FORMAT_FILE);
    fs::write(&format, "cascade chunk store\nformat 3\n").unwrap();
    let err = ChunkStore::open(dir.path()).unwrap_err();
    assert!(matches!(err, Error::StoreFormat { .. }), "{err}");
    assert!(err.to_string().contains("\"3\""), "{err}");
    assert_eq!(
        fs::read_to_string(&format).unwrap(),
        "cascade chunk store\nformat 3\n"
    );
}

/// Crash safety: a write the process did not finish (bytes appended to
/// the pack with no entry, half an entry in the index) is cut when the
/// store is next opened; everything synced before is there, and the
/// store goes on appending where the good data ends.
#[test]
fn a_torn_pack_tail_is_cut_at_open_and_what_was_synced_stays() {
    let dir = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(dir.path()).unwrap();
    let kept: Vec<_> = (0..5).map(|i| put_random(&store, 40 + i, 9_000)).collect();
    let at = store.location(&kept[4].0).unwrap();
    drop(store);
    let idx = at.pack.with_extension("idx");
    let idx_len = fs::metadata(&idx).unwrap().len();
    let pack_len = fs::metadata(&at.pack).unwrap().len();
    // The tail of a batch that was being written.
    let mut pack_file = File::options().append(true).open(&at.pack).unwrap();
    io::Write::write_all(&mut pack_file, &random_bytes(7, 5_000)).unwrap();
    let mut entry = Entry {
        kind: Kind::Put,
        hash: ChunkHash::of(b"never synced"),
        offset: pack_len,
        len: 5_000,
        checksum: 1,
        at_ms: 1,
    }
    .to_bytes();
    let mut idx_file = File::options().append(true).open(&idx).unwrap();
    io::Write::write_all(&mut idx_file, &entry[..40]).unwrap();
    drop((pack_file, idx_file));

    let reopened = ChunkStore::open(dir.path()).unwrap();
    assert_eq!(reopened.opened().torn_bytes_cut, 5_000 + 40);
    assert_eq!(fs::metadata(&at.pack).unwrap().len(), pack_len);
    assert_eq!(fs::metadata(&idx).unwrap().len(), idx_len);
    for (hash, data) in &kept {
        assert_eq!(&reopened.get(hash).unwrap(), data);
    }
    let (after, after_data) = put_random(&reopened, 50, 3_000);
    assert_eq!(reopened.location(&after).unwrap().offset, pack_len);
    drop(reopened);

    // An entry claiming bytes the pack does not hold is not trusted.
    let mut idx_file = File::options().append(true).open(&idx).unwrap();
    let end = fs::metadata(&at.pack).unwrap().len();
    entry = Entry {
        kind: Kind::Put,
        hash: ChunkHash::of(b"claims too much"),
        offset: end,
        len: 100,
        checksum: 1,
        at_ms: 1,
    }
    .to_bytes();
    io::Write::write_all(&mut idx_file, &entry).unwrap();
    drop(idx_file);
    let reopened = ChunkStore::open(dir.path()).unwrap();
    assert!(!reopened.contains(&ChunkHash::of(b"claims too much")));
    assert_eq!(reopened.get(&after).unwrap(), after_data);
}

/// A pack found without its index (a deletion cut short) or an index
/// without its pack (a creation cut short) is removed at open.
#[test]
fn half_created_and_half_deleted_packs_are_removed_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(dir.path()).unwrap();
    let (hash, data) = put_random(&store, 60, 5_000);
    drop(store);
    let packs = dir.path().join(PACKS_DIR);
    fs::write(pack::pack_path(&packs, 7), PACK_MAGIC).unwrap();
    fs::write(pack::idx_path(&packs, 8), IDX_MAGIC).unwrap();
    fs::write(pack::idx_path(&packs, 9), &IDX_MAGIC[..3]).unwrap();
    fs::write(pack::pack_path(&packs, 9), PACK_MAGIC).unwrap();
    let reopened = ChunkStore::open(dir.path()).unwrap();
    assert_eq!(reopened.opened().incomplete_packs_removed, 3);
    assert_eq!(fs::read_dir(&packs).unwrap().count(), 2);
    assert_eq!(reopened.get(&hash).unwrap(), data);
    // New packs do not reuse the numbers.
    let new = reopened.with_pack_target(1);
    let (next, _) = put_random(&new, 61, 100);
    assert!(new.location(&next).unwrap().pack.ends_with("00000010.pack"));
}

/// Issue 13: nothing was ever deleted. Removed chunks' bytes go back to
/// the disk when their pack is compacted; live chunks move, verified,
/// and survive a reopen; a damaged one is reported, not copied.
#[test]
fn compaction_gives_back_the_disk_of_removed_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(dir.path())
        .unwrap()
        .with_pack_target(100_000);
    let chunks: Vec<_> = (0..40)
        .map(|i| put_random(&store, 100 + i, 10_000))
        .collect();
    let before = store.usage();
    assert!(before.packs >= 4, "{before:?}");
    // Three in four removed; one of those kept damaged.
    for (hash, _) in chunks.iter().filter(|(hash, _)| hash.0[0] % 4 != 0) {
        store.remove(hash).unwrap();
    }
    let kept: Vec<_> = chunks
        .iter()
        .filter(|(hash, _)| hash.0[0] % 4 == 0)
        .collect();
    assert!(kept.len() >= 2, "the random split kept {}", kept.len());
    damage(&store, &kept[0].0);
    let report = store.compact().unwrap();
    let after = store.usage();
    assert!(report.packs_removed >= 3, "{report:?}");
    assert_eq!(report.damaged, vec![kept[0].0]);
    assert!(
        after.pack_bytes < before.pack_bytes / 2,
        "{before:?} → {after:?}"
    );
    assert_eq!(after.chunks, kept.len() as u64 - 1);
    let on_disk: u64 = fs::read_dir(dir.path().join(PACKS_DIR))
        .unwrap()
        .map(|entry| entry.unwrap().metadata().unwrap().len())
        .sum();
    assert!(on_disk < before.pack_bytes / 2, "{on_disk}");
    drop(store);
    let reopened = ChunkStore::open(dir.path()).unwrap();
    assert!(!reopened.contains(&kept[0].0));
    for (hash, data) in &kept[1..] {
        assert_eq!(&reopened.get(hash).unwrap(), data);
    }
    for (hash, _) in chunks.iter().filter(|(hash, _)| hash.0[0] % 4 != 0) {
        assert!(!reopened.contains(hash));
    }
    assert_eq!(reopened.compact().unwrap().packs_removed, 0);
}

/// Issue 13: a site upgraded in place keeps its content. A format-1 store
/// (one file per chunk) is moved into packs when opened; a damaged chunk
/// file is dropped, not moved; stray files stay; the times the chunks
/// were written are kept.
#[test]
fn a_format_1_store_is_upgraded_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let mut chunks = Vec::new();
    for i in 0..12 {
        let data = random_bytes(200 + i, 3_000 + i as usize * 100);
        let hash = ChunkHash::of(&data);
        let hex = hash.to_hex();
        let shard = dir.path().join(&hex[..2]);
        fs::create_dir_all(&shard).unwrap();
        let path = shard.join(&hex);
        fs::write(&path, encode(&data)).unwrap();
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(UNIX_EPOCH + Duration::from_secs(1_700_000_000 + i))
            .unwrap();
        chunks.push((hash, data, path));
    }
    let damaged = &chunks[5];
    let mut bytes = fs::read(&damaged.2).unwrap();
    bytes[100] ^= 1;
    fs::write(&damaged.2, bytes).unwrap();
    let stray = chunks[0].2.parent().unwrap().join("notes.txt");
    fs::write(&stray, b"keep me").unwrap();
    fs::create_dir_all(dir.path().join(legacy::TMP_DIR)).unwrap();
    fs::write(dir.path().join(legacy::TMP_DIR).join("x.partial"), b"half").unwrap();

    let store = ChunkStore::open(dir.path()).unwrap();
    let opened = store.opened();
    assert_eq!((opened.upgraded_chunks, opened.damaged_dropped), (11, 1));
    assert!(!store.contains(&damaged.0));
    let listed: HashMap<ChunkHash, StoredChunk> = store
        .list()
        .unwrap()
        .into_iter()
        .map(|c| (c.hash, c))
        .collect();
    for (i, (hash, data, path)) in chunks.iter().enumerate() {
        assert!(!path.exists(), "{} still there", path.display());
        if i == 5 {
            continue;
        }
        assert_eq!(&store.get(hash).unwrap(), data);
        assert_eq!(
            listed[hash].written,
            UNIX_EPOCH + Duration::from_secs(1_700_000_000 + i as u64)
        );
    }
    assert_eq!(fs::read(&stray).unwrap(), b"keep me");
    assert!(!dir.path().join(legacy::TMP_DIR).exists());
    assert_eq!(read_format(dir.path()).unwrap(), Some(FORMAT_VERSION));
    drop(store);
    let again = ChunkStore::open(dir.path()).unwrap();
    assert_eq!(again.opened().upgraded_chunks, 0);
    assert_eq!(again.usage().chunks, 11);
}

/// An upgrade cut short (its FORMAT file not yet written, some chunks
/// still in files) resumes at the next open, moving each chunk once.
#[test]
fn an_interrupted_upgrade_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(dir.path()).unwrap();
    let (moved, moved_data) = put_random(&store, 300, 4_000);
    drop(store);
    fs::remove_file(dir.path().join(FORMAT_FILE)).unwrap();
    let data = random_bytes(301, 4_000);
    let hash = ChunkHash::of(&data);
    let hex = hash.to_hex();
    fs::create_dir_all(dir.path().join(&hex[..2])).unwrap();
    fs::write(dir.path().join(&hex[..2]).join(&hex), encode(&data)).unwrap();
    // The one already in a pack is found there too, in its file.
    let hex = moved.to_hex();
    fs::create_dir_all(dir.path().join(&hex[..2])).unwrap();
    fs::write(dir.path().join(&hex[..2]).join(&hex), encode(&moved_data)).unwrap();
    let live_before = 4_001;

    let store = ChunkStore::open(dir.path()).unwrap();
    assert_eq!(store.opened().upgraded_chunks, 2);
    assert_eq!(store.usage().live_bytes, live_before + 4_001);
    assert_eq!(store.get(&hash).unwrap(), data);
    assert_eq!(store.get(&moved).unwrap(), moved_data);
}

#[test]
fn list_finds_every_chunk_and_touch_counts_as_use() {
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
    let mut listed: Vec<StoredChunk> = store.list().unwrap();
    listed.sort_by_key(|chunk| chunk.hash.to_hex());
    hashes.sort_by_key(|hash| hash.to_hex());
    assert_eq!(
        listed.iter().map(|chunk| chunk.hash).collect::<Vec<_>>(),
        hashes
    );
    for chunk in &listed {
        assert_eq!(chunk.stored_bytes, store.location(&chunk.hash).unwrap().len);
    }
    let at = UNIX_EPOCH + Duration::from_secs(2_000_000_000);
    store.touch(&hashes[..2], at).unwrap();
    drop(store);
    let reopened = ChunkStore::open(dir.path()).unwrap();
    let used: Vec<ChunkHash> = reopened
        .list()
        .unwrap()
        .into_iter()
        .filter(|chunk| chunk.written == at)
        .map(|chunk| chunk.hash)
        .collect();
    assert_eq!(used.len(), 2);
    assert!(used.contains(&hashes[0]) && used.contains(&hashes[1]));
}

/// A collection decides from a listing, then removes: a chunk an upload
/// relied on (touched) after the listing stays, and the removal is one
/// write of drop entries that a reopened store replays.
#[test]
fn remove_where_keeps_a_chunk_used_while_it_decided() {
    let dir = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(dir.path()).unwrap();
    let hashes: Vec<ChunkHash> = (0..4u64).map(|i| put_random(&store, i, 2000).0).collect();
    let later = UNIX_EPOCH + Duration::from_secs(2_000_000_000);
    let (removed, bytes) = store
        .remove_where(|chunk| {
            if chunk.hash == hashes[0] {
                store.touch(&[hashes[0]], later).unwrap();
            }
            true
        })
        .unwrap();
    assert_eq!(removed, 3);
    assert!(bytes >= 3 * 2000, "{bytes}");
    assert!(store.contains(&hashes[0]));
    drop(store);
    let reopened = ChunkStore::open(dir.path()).unwrap();
    let left: Vec<ChunkHash> = reopened.list().unwrap().iter().map(|c| c.hash).collect();
    assert_eq!(left, [hashes[0]]);
}

#[test]
fn locate_in_reads_the_store_while_it_is_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(dir.path()).unwrap();
    let (hash, _) = put_random(&store, 400, 2_000);
    assert_eq!(locate_in(dir.path(), &hash).unwrap(), store.location(&hash));
    assert_eq!(locate_in(dir.path(), &ChunkHash::of(b"no")).unwrap(), None);
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

/// The environment variable that makes [`crash_victim`] run.
const VICTIM_ENV: &str = "CASCADE_STORE_CRASH_VICTIM";

/// Not a test of its own: run by
/// [`a_store_killed_at_any_moment_keeps_everything_it_stored`] as a child
/// process, which it SIGKILLs. Stores, removes and compacts without end,
/// printing `P hash` once a put returned and `R hash` before a removal
/// starts.
#[test]
fn crash_victim() {
    use std::io::Write;
    let Ok(dir) = std::env::var(VICTIM_ENV) else {
        return;
    };
    let seed: u64 = std::env::var("CASCADE_STORE_CRASH_SEED")
        .unwrap()
        .parse()
        .unwrap();
    let store = ChunkStore::open(Path::new(&dir))
        .unwrap()
        .with_pack_target(256 * 1024);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut held: Vec<ChunkHash> = store.list().unwrap().iter().map(|c| c.hash).collect();
    let mut out = io::stdout().lock();
    for round in 0u64.. {
        let datas: Vec<Vec<u8>> = (0..1 + rng.next_u32() % 8)
            .map(|_| {
                let len = 1_000 + (rng.next_u32() % 40_000) as usize;
                let mut data = vec![0u8; len];
                rng.fill_bytes(&mut data);
                // Half of them compressible.
                if rng.next_u32() % 2 == 0 {
                    data[len / 4..].fill(7);
                }
                data
            })
            .collect();
        let encoded: Vec<(ChunkHash, Vec<u8>)> = datas
            .iter()
            .map(|data| (ChunkHash::of(data), encode(data)))
            .collect();
        let batch: Vec<(ChunkHash, &[u8])> = encoded
            .iter()
            .map(|(hash, bytes)| (*hash, bytes.as_slice()))
            .collect();
        store.put_encoded_batch(&batch).unwrap();
        for (hash, _) in &encoded {
            writeln!(out, "P {hash}").unwrap();
            held.push(*hash);
        }
        out.flush().unwrap();
        if round % 2 == 0 {
            for _ in 0..rng.next_u32() % 6 {
                if held.is_empty() {
                    break;
                }
                let hash = held.swap_remove(rng.next_u32() as usize % held.len());
                writeln!(out, "R {hash}").unwrap();
                out.flush().unwrap();
                store.remove(&hash).unwrap();
            }
        }
        if round % 5 == 0 {
            store.compact().unwrap();
        }
    }
}

/// Crash tests (issue 13): a process SIGKILLed at a random moment while it
/// appends batches, removes chunks and compacts packs, again and again on
/// the same store. After each kill the store opens, every chunk it lists
/// verifies, and every chunk whose put had returned is there unless its
/// removal had begun.
#[test]
fn a_store_killed_at_any_moment_keeps_everything_it_stored() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let mut stored = HashSet::new();
    let mut removing = HashSet::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(13);
    let mut report = OpenReport::default();
    for round in 0..12u64 {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "store::tests::crash_victim", "--nocapture"])
            .args(["--test-threads", "1"])
            .env(VICTIM_ENV, dir.path())
            .env("CASCADE_STORE_CRASH_SEED", round.to_string())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            io::BufReader::new(stdout)
                .lines()
                .map_while(|line| line.ok())
                .collect::<Vec<String>>()
        });
        std::thread::sleep(Duration::from_millis(150 + u64::from(rng.next_u32() % 400)));
        child.kill().unwrap();
        child.wait().unwrap();
        let lines = reader.join().unwrap();
        let mut puts = 0;
        for line in &lines {
            if let Some(hex) = line.strip_prefix("P ") {
                let hash = ChunkHash::from_hex(hex).unwrap();
                stored.insert(hash);
                removing.remove(&hash);
                puts += 1;
            } else if let Some(hex) = line.strip_prefix("R ") {
                removing.insert(ChunkHash::from_hex(hex).unwrap());
            }
        }
        assert!(puts > 0, "round {round}: the victim stored nothing");

        let store = ChunkStore::open(dir.path()).unwrap();
        let opened = store.opened();
        report.torn_bytes_cut += opened.torn_bytes_cut;
        report.incomplete_packs_removed += opened.incomplete_packs_removed;
        let listed: HashSet<ChunkHash> = store.list().unwrap().iter().map(|c| c.hash).collect();
        for hash in &listed {
            store
                .get(hash)
                .unwrap_or_else(|err| panic!("round {round}: {err}"));
        }
        for hash in stored.difference(&removing) {
            assert!(
                listed.contains(hash),
                "round {round}: {hash} was stored and is gone"
            );
        }
        // What was being removed is either there or not; from here on the
        // store's word is the truth.
        stored = listed;
        removing.clear();
    }
    // Not a guarantee, but twelve kills cut nothing only if they all fell
    // between writes.
    eprintln!("over 12 kills: {report}");
}
