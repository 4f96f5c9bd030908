//! The stored and wire form of a chunk: a tag byte, then raw or zstd bytes.

use crate::chunk::{ChunkHash, MAX_CHUNK_SIZE};
use crate::error::{Error, Result};

/// Tag byte: the payload is the chunk's bytes as they are.
const TAG_RAW: u8 = 0;
/// Tag byte: the payload is one zstd frame of the chunk's bytes.
const TAG_ZSTD: u8 = 1;
/// zstd level used for chunks: fast, and most of the gain on text and binaries.
const ZSTD_LEVEL: i32 = 1;

/// The longest encoded form of a chunk of `size` bytes: the tag byte and
/// the raw bytes (a compressed form is kept only when smaller). A reader
/// of encoded chunks from a peer stops there.
pub fn max_encoded_len(size: u32) -> usize {
    size as usize + 1
}

/// Chunks at least this long are first tried on a sample.
const SAMPLE_FROM: usize = 32 * 1024;
/// The sample tried: this many bytes from the middle of the chunk.
const SAMPLE_LEN: usize = 8 * 1024;

/// Encoded form: one tag byte (0 = raw, 1 = zstd) followed by the payload.
/// Compress with zstd level 1; keep raw when the compressed form is not at
/// least ~3% smaller. A chunk of [`SAMPLE_FROM`] bytes or more whose middle
/// [`SAMPLE_LEN`] bytes do not compress (media, archives, encrypted data:
/// half a typical software tree) is kept raw without compressing the rest:
/// the test costs an eighth of compressing the chunk.
pub fn encode(data: &[u8]) -> Vec<u8> {
    let worth_trying = data.len() < SAMPLE_FROM || {
        let middle = (data.len() - SAMPLE_LEN) / 2;
        compress(&data[middle..middle + SAMPLE_LEN])
            .is_some_and(|sample| saves_enough(sample.len(), SAMPLE_LEN))
    };
    if worth_trying {
        if let Some(compressed) = compress(data) {
            if saves_enough(compressed.len(), data.len()) {
                let mut encoded = Vec::with_capacity(compressed.len() + 1);
                encoded.push(TAG_ZSTD);
                encoded.extend_from_slice(&compressed);
                return encoded;
            }
        }
    }
    let mut encoded = Vec::with_capacity(data.len() + 1);
    encoded.push(TAG_RAW);
    encoded.extend_from_slice(data);
    encoded
}

/// Worth it only when it saves at least 3% (compressed <= 97% of raw).
fn saves_enough(compressed: usize, raw: usize) -> bool {
    (compressed as u64) * 100 <= (raw as u64) * 97
}

/// zstd level-1 compression, with a context per thread.
fn compress(data: &[u8]) -> Option<Vec<u8>> {
    thread_local! {
        // A compression context per thread, reused: making one per chunk
        // cost about a fifth of the compression time.
        static COMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    COMPRESSOR.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.is_none() {
            *cell = zstd::bulk::Compressor::new(ZSTD_LEVEL).ok();
        }
        cell.as_mut()?.compress(data).ok()
    })
}

/// Decodes and verifies against `expected`: error [`Error::Corrupt`] if the
/// tag is unknown, decompression fails, the decoded size exceeds
/// [`MAX_CHUNK_SIZE`] (decompression is bounded, so a zip bomb costs at most
/// that much memory), or the hash differs.
pub fn decode_verified(expected: &ChunkHash, encoded: &[u8]) -> Result<Vec<u8>> {
    let corrupt = |reason: String| Error::Corrupt {
        hash: *expected,
        reason,
    };
    let max = MAX_CHUNK_SIZE as usize;
    let (&tag, payload) = encoded
        .split_first()
        .ok_or_else(|| corrupt("empty encoded chunk".to_string()))?;
    let data = match tag {
        TAG_RAW => {
            if payload.len() > max {
                return Err(corrupt(format!(
                    "raw chunk of {} bytes exceeds the {max}-byte limit",
                    payload.len()
                )));
            }
            payload.to_vec()
        }
        TAG_ZSTD => decompress(payload, max).map_err(|error| {
            corrupt(format!(
                "zstd decompression failed (or exceeds {max} bytes): {error}"
            ))
        })?,
        other => return Err(corrupt(format!("unknown encoding tag {other}"))),
    };
    let actual = ChunkHash::of(&data);
    if actual != *expected {
        return Err(corrupt(format!("content hashes to {actual}")));
    }
    Ok(data)
}

/// zstd decompression of at most `max` bytes, with a context per thread.
fn decompress(payload: &[u8], max: usize) -> std::io::Result<Vec<u8>> {
    thread_local! {
        static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
            const { std::cell::RefCell::new(None) };
    }
    DECOMPRESSOR.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.is_none() {
            *cell = Some(zstd::bulk::Decompressor::new()?);
        }
        cell.as_mut()
            .expect("set just above")
            .decompress(payload, max)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngCore, SeedableRng};

    fn random_bytes(len: usize) -> Vec<u8> {
        let mut data = vec![0u8; len];
        rand::rngs::StdRng::seed_from_u64(7).fill_bytes(&mut data);
        data
    }

    fn assert_corrupt(result: Result<Vec<u8>>) {
        match result {
            Err(Error::Corrupt { .. }) => {}
            other => panic!("expected Error::Corrupt, got {other:?}"),
        }
    }

    #[test]
    fn incompressible_data_stays_raw() {
        let data = random_bytes(64 * 1024);
        let encoded = encode(&data);
        assert_eq!(encoded[0], TAG_RAW);
        assert_eq!(&encoded[1..], &data[..]);
        let hash = ChunkHash::of(&data);
        assert_eq!(decode_verified(&hash, &encoded).unwrap(), data);
    }

    /// Issue 13: chunks that do not compress were compressed whole to find
    /// out. A large chunk whose middle does not compress stays raw, even
    /// when its edges would; one whose middle does is compressed.
    #[test]
    fn a_large_chunk_is_tried_on_a_sample_first() {
        let mut mixed = b"header text ".repeat(2_000);
        let edge = mixed.len();
        mixed.extend(random_bytes(40 * 1024));
        mixed.extend(b"trailer text ".repeat(2_000));
        let middle = (mixed.len() - SAMPLE_LEN) / 2;
        assert!(middle > edge && middle + SAMPLE_LEN < edge + 40 * 1024);
        let encoded = encode(&mixed);
        assert_eq!(encoded[0], TAG_RAW, "the random middle decides");
        assert_eq!(
            decode_verified(&ChunkHash::of(&mixed), &encoded).unwrap(),
            mixed
        );

        let text = b"lorem ipsum dolor sit amet ".repeat(4_000);
        assert!(text.len() >= SAMPLE_FROM);
        assert_eq!(encode(&text)[0], TAG_ZSTD);
        // Small chunks are compressed whole, as before.
        let small = b"abc ".repeat(1_000);
        assert!(small.len() < SAMPLE_FROM);
        assert_eq!(encode(&small)[0], TAG_ZSTD);
    }

    #[test]
    fn compressible_data_is_compressed() {
        let data: Vec<u8> = b"the quick brown fox ".repeat(4000);
        let encoded = encode(&data);
        assert_eq!(encoded[0], TAG_ZSTD);
        assert!(encoded.len() < data.len() / 10);
        let hash = ChunkHash::of(&data);
        assert_eq!(decode_verified(&hash, &encoded).unwrap(), data);
    }

    #[test]
    fn empty_and_max_size_round_trip() {
        for data in [Vec::new(), random_bytes(MAX_CHUNK_SIZE as usize)] {
            let hash = ChunkHash::of(&data);
            assert_eq!(decode_verified(&hash, &encode(&data)).unwrap(), data);
        }
    }

    #[test]
    fn flipped_bytes_are_detected() {
        for data in [random_bytes(5000), b"abcabcabc".repeat(1000)] {
            let hash = ChunkHash::of(&data);
            let encoded = encode(&data);
            for position in [1, encoded.len() / 2, encoded.len() - 1] {
                let mut damaged = encoded.clone();
                damaged[position] ^= 0x40;
                assert_corrupt(decode_verified(&hash, &damaged));
            }
            assert_corrupt(decode_verified(&hash, &encoded[..encoded.len() - 1]));
        }
    }

    #[test]
    fn wrong_hash_unknown_tag_and_empty_are_refused() {
        let data = b"some bytes".to_vec();
        let encoded = encode(&data);
        assert_corrupt(decode_verified(&ChunkHash::of(b"other"), &encoded));
        let mut bad_tag = encoded.clone();
        bad_tag[0] = 7;
        assert_corrupt(decode_verified(&ChunkHash::of(&data), &bad_tag));
        assert_corrupt(decode_verified(&ChunkHash::of(&data), &[]));
    }

    #[test]
    fn oversized_content_is_refused() {
        // A zip bomb: a tiny frame that would expand past the chunk limit.
        let big = vec![0u8; MAX_CHUNK_SIZE as usize + 1];
        let hash = ChunkHash::of(&big);
        let mut bomb = vec![TAG_ZSTD];
        bomb.extend(zstd::bulk::compress(&big, 1).unwrap());
        assert!(bomb.len() < 1000);
        assert_corrupt(decode_verified(&hash, &bomb));

        let mut raw = vec![TAG_RAW];
        raw.extend_from_slice(&big);
        assert_corrupt(decode_verified(&hash, &raw));
    }

    #[test]
    fn streamed_bomb_without_declared_size_is_refused() {
        // A frame written by the streaming encoder does not declare its
        // content size up front; the bound must still hold.
        let big = vec![0u8; 4 * MAX_CHUNK_SIZE as usize];
        let frame = zstd::stream::encode_all(&big[..], 1).unwrap();
        let mut bomb = vec![TAG_ZSTD];
        bomb.extend(frame);
        assert_corrupt(decode_verified(&ChunkHash::of(&big), &bomb));
    }
}
