//! Content-defined chunking (FastCDC 2020) and chunk names (BLAKE3 hashes).

use std::io::{self, Read};

use fastcdc::v2020::StreamCDC;

use crate::error::{Error, Result};
pub use crate::hash::ChunkHash;

/// Smallest chunk the chunker cuts (except a stream's last chunk).
pub const MIN_CHUNK_SIZE: u32 = 16 * 1024;
/// Chunk size the chunker aims for on average.
pub const AVG_CHUNK_SIZE: u32 = 64 * 1024;
/// Largest chunk the chunker cuts, and the largest chunk accepted anywhere.
pub const MAX_CHUNK_SIZE: u32 = 256 * 1024;

/// One content-defined chunk of a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// The chunk's name: BLAKE3 of `data`.
    pub hash: ChunkHash,
    /// Where the chunk starts in the stream.
    pub offset: u64,
    /// The chunk's bytes.
    pub data: Vec<u8>,
}

/// Splits a reader into content-defined chunks (FastCDC 2020, sizes above).
/// Stable: the same bytes always give the same cut points.
///
/// Every chunk is between [`MIN_CHUNK_SIZE`] and [`MAX_CHUNK_SIZE`] bytes,
/// except the last, which may be shorter. An empty reader gives no chunks.
/// After a read error the iterator yields that error and then ends.
pub fn chunks<R: Read>(reader: R) -> impl Iterator<Item = Result<Chunk>> {
    chunk_stream(reader).map(|item| item.map_err(|source| Error::Chunking { source }))
}

/// The chunker with plain IO errors, so callers that know what they are
/// reading (a file path) can attach their own context.
pub(crate) fn chunk_stream<R: Read>(reader: R) -> impl Iterator<Item = io::Result<Chunk>> {
    Chunker {
        inner: StreamCDC::new(reader, MIN_CHUNK_SIZE, AVG_CHUNK_SIZE, MAX_CHUNK_SIZE),
        finished: false,
    }
}

/// Wraps [`StreamCDC`], naming each chunk and stopping after the first error.
struct Chunker<R: Read> {
    inner: StreamCDC<R>,
    finished: bool,
}

impl<R: Read> Iterator for Chunker<R> {
    type Item = io::Result<Chunk>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.finished {
            return None;
        }
        match self.inner.next() {
            None => {
                self.finished = true;
                None
            }
            Some(Err(error)) => {
                self.finished = true;
                Some(Err(io::Error::from(error)))
            }
            Some(Ok(piece)) => Some(Ok(Chunk {
                hash: ChunkHash::of(&piece.data),
                offset: piece.offset,
                data: piece.data,
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{Rng, RngCore, SeedableRng};

    fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
        let mut data = vec![0u8; len];
        rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut data);
        data
    }

    /// Low-entropy data: runs of a few symbols, compressible but not uniform.
    fn patterned_bytes(seed: u64, len: usize) -> Vec<u8> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut data = Vec::with_capacity(len);
        while data.len() < len {
            let symbol: u8 = rng.gen_range(b'a'..=b'e');
            let run = rng.gen_range(1..64usize).min(len - data.len());
            data.extend(std::iter::repeat_n(symbol, run));
        }
        data
    }

    fn chunk_all(data: &[u8]) -> Vec<Chunk> {
        chunks(data).collect::<Result<Vec<_>>>().unwrap()
    }

    fn cut_points(chunks: &[Chunk]) -> Vec<u64> {
        chunks.iter().map(|c| c.offset).collect()
    }

    #[test]
    fn hash_hex_round_trip_and_display() {
        let hash = ChunkHash::of(b"hello");
        let hex = hash.to_hex();
        assert_eq!(hex.len(), 64);
        assert_eq!(hex, blake3::hash(b"hello").to_hex().as_str());
        assert_eq!(hash.to_string(), hex);
        assert_eq!(ChunkHash::from_hex(&hex).unwrap(), hash);
        assert_eq!(hex.parse::<ChunkHash>().unwrap(), hash);
        assert!(format!("{hash:?}").contains(&hex));
    }

    #[test]
    fn hash_from_hex_refuses_bad_input() {
        let hex = ChunkHash::of(b"x").to_hex();
        assert!(ChunkHash::from_hex(&hex[1..]).is_err());
        assert!(ChunkHash::from_hex(&format!("{hex}0")).is_err());
        assert!(ChunkHash::from_hex(&hex.to_uppercase()).is_err());
        assert!(ChunkHash::from_hex(&"g".repeat(64)).is_err());
        assert!(ChunkHash::from_hex("").is_err());
    }

    #[test]
    fn hash_serde_is_a_hex_string() {
        let hash = ChunkHash::of(b"serde");
        let json = serde_json::to_string(&hash).unwrap();
        assert_eq!(json, format!("\"{}\"", hash.to_hex()));
        assert_eq!(serde_json::from_str::<ChunkHash>(&json).unwrap(), hash);
        assert!(serde_json::from_str::<ChunkHash>("\"abc\"").is_err());
        assert!(serde_json::from_str::<ChunkHash>("42").is_err());
    }

    #[test]
    fn empty_input_gives_no_chunks() {
        assert!(chunk_all(&[]).is_empty());
    }

    #[test]
    fn small_input_is_one_chunk() {
        let data = random_bytes(1, 1000);
        let chunks = chunk_all(&data);
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks[0].data, data);
        assert_eq!(chunks[0].offset, 0);
        assert_eq!(chunks[0].hash, ChunkHash::of(&data));
    }

    #[test]
    fn uniform_input_is_cut_at_max_size() {
        let data = vec![0u8; 3 * MAX_CHUNK_SIZE as usize + 5];
        let sizes: Vec<usize> = chunk_all(&data).iter().map(|c| c.data.len()).collect();
        let max = MAX_CHUNK_SIZE as usize;
        assert_eq!(sizes, vec![max, max, max, 5]);
    }

    #[test]
    fn read_error_is_reported_once() {
        struct Failing;
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("disk on fire"))
            }
        }
        let results: Vec<_> = chunks(Failing).collect();
        assert_eq!(results.len(), 1);
        assert!(matches!(results[0], Err(Error::Chunking { .. })));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        #[test]
        fn chunks_reassemble_and_respect_bounds(
            seed in any::<u64>(),
            len in 0usize..1_500_000,
            patterned in any::<bool>(),
        ) {
            let data = if patterned { patterned_bytes(seed, len) } else { random_bytes(seed, len) };
            let chunks = chunk_all(&data);
            let mut reassembled = Vec::with_capacity(len);
            for (index, chunk) in chunks.iter().enumerate() {
                prop_assert_eq!(chunk.offset, reassembled.len() as u64);
                prop_assert_eq!(chunk.hash, ChunkHash::of(&chunk.data));
                prop_assert!(!chunk.data.is_empty());
                prop_assert!(chunk.data.len() <= MAX_CHUNK_SIZE as usize);
                if index + 1 < chunks.len() {
                    prop_assert!(chunk.data.len() >= MIN_CHUNK_SIZE as usize);
                }
                reassembled.extend_from_slice(&chunk.data);
            }
            prop_assert!(reassembled == data);
        }

        #[test]
        fn same_input_gives_same_cuts(seed in any::<u64>(), len in 0usize..1_000_000) {
            let data = random_bytes(seed, len);
            let first = chunk_all(&data);
            // Feed the same bytes through a reader that returns them in small,
            // irregular pieces: the cuts must not depend on read sizes.
            struct Dribble<'a> { data: &'a [u8], step: usize }
            impl Read for Dribble<'_> {
                fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                    self.step = self.step % 7919 + 1;
                    let n = self.step.min(buf.len()).min(self.data.len());
                    buf[..n].copy_from_slice(&self.data[..n]);
                    self.data = &self.data[n..];
                    Ok(n)
                }
            }
            let second: Vec<Chunk> = chunks(Dribble { data: &data, step: seed as usize % 1000 })
                .collect::<Result<_>>()
                .unwrap();
            prop_assert_eq!(cut_points(&first), cut_points(&second));
            prop_assert!(first == second);
        }

        #[test]
        fn insertion_at_front_keeps_later_chunks(
            seed in any::<u64>(),
            inserted_len in 1usize..5000,
        ) {
            let original = random_bytes(seed, 2 * 1024 * 1024);
            let mut modified = random_bytes(seed ^ 0x5eed, inserted_len);
            modified.extend_from_slice(&original);

            let before: Vec<ChunkHash> = chunk_all(&original).iter().map(|c| c.hash).collect();
            let after: std::collections::HashSet<ChunkHash> =
                chunk_all(&modified).iter().map(|c| c.hash).collect();
            let kept = before.iter().filter(|hash| after.contains(hash)).count();
            // Only the chunks near the insertion may change: the cut points
            // resynchronise within a few chunks (usually one or two; the
            // minimum chunk size can carry the shift a little further).
            prop_assert!(before.len() >= 10);
            prop_assert!(kept + 6 >= before.len(), "kept {} of {}", kept, before.len());
            // And the tail is byte-for-byte the same chunks.
            prop_assert!(after.contains(before.last().unwrap()));
        }
    }
}
