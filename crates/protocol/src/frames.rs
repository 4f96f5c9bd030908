//! The chunk frame codec: how chunks travel in bulk.
//!
//! A frame is the 32-byte chunk hash, a big-endian `u32` length, then that
//! many bytes of the chunk's encoded form (see `cascade_content::encode`).
//! Frames are simply concatenated; the receiver verifies every chunk against
//! its hash before storing it, so the codec itself trusts nothing.

use crate::error::FrameError;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use cascade_content::{ChunkHash, MAX_CHUNK_SIZE};

/// Bytes before a frame's payload.
pub const FRAME_HEADER: usize = 36;

/// Largest payload a frame may carry: a chunk's encoded form never exceeds
/// the largest chunk plus its tag byte and a little compression overhead.
pub const MAX_FRAME_PAYLOAD: u32 = MAX_CHUNK_SIZE + 4096;

/// Appends one frame to `out`; `fill` appends its payload and returns the
/// payload's length (a store reading a chunk straight into the sender's
/// buffer, with no buffer of its own). On an error of `fill`, `out` is as
/// it was.
pub fn put_frame_with<E>(
    out: &mut Vec<u8>,
    hash: &ChunkHash,
    fill: impl FnOnce(&mut Vec<u8>) -> Result<usize, E>,
) -> Result<(), E> {
    let start = out.len();
    out.extend_from_slice(&hash.0);
    out.extend_from_slice(&[0; 4]);
    match fill(out) {
        Ok(len) => {
            debug_assert_eq!(out.len(), start + FRAME_HEADER + len);
            out[start + 32..start + FRAME_HEADER].copy_from_slice(&(len as u32).to_be_bytes());
            Ok(())
        }
        Err(err) => {
            out.truncate(start);
            Err(err)
        }
    }
}

/// Appends one frame to `out`.
pub fn put_frame(out: &mut BytesMut, hash: &ChunkHash, encoded: &[u8]) {
    out.reserve(FRAME_HEADER + encoded.len());
    out.put_slice(&hash.0);
    out.put_u32(encoded.len() as u32);
    out.put_slice(encoded);
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The chunk the sender claims this is.
    pub hash: ChunkHash,
    /// The chunk's encoded form, not yet verified.
    pub encoded: Bytes,
}

/// Incremental decoder: feed it bytes as they arrive, take frames out.
#[derive(Default)]
pub struct FrameDecoder {
    buffer: BytesMut,
}

impl FrameDecoder {
    /// Adds received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// Takes the next complete frame, if one has arrived.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.buffer.len() < FRAME_HEADER {
            return Ok(None);
        }
        let len = u32::from_be_bytes(self.buffer[32..36].try_into().expect("4 bytes"));
        if len > MAX_FRAME_PAYLOAD {
            return Err(FrameError::TooLarge(len));
        }
        if self.buffer.len() < FRAME_HEADER + len as usize {
            return Ok(None);
        }
        let mut hash = [0u8; 32];
        hash.copy_from_slice(&self.buffer[..32]);
        self.buffer.advance(FRAME_HEADER);
        let encoded = self.buffer.split_to(len as usize).freeze();
        Ok(Some(Frame {
            hash: ChunkHash(hash),
            encoded,
        }))
    }

    /// Checks that the stream ended on a frame boundary.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.buffer.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Truncated)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_in_arbitrary_pieces() {
        let chunks: Vec<Vec<u8>> = vec![b"hello".to_vec(), vec![7u8; 70_000], Vec::new()];
        let mut wire = BytesMut::new();
        for chunk in &chunks {
            put_frame(&mut wire, &ChunkHash::of(chunk), chunk);
        }
        for piece in [1usize, 7, 36, 1000, wire.len()] {
            let mut decoder = FrameDecoder::default();
            let mut out = Vec::new();
            for part in wire.chunks(piece) {
                decoder.push(part);
                while let Some(frame) = decoder.next_frame().unwrap() {
                    out.push(frame);
                }
            }
            decoder.finish().unwrap();
            assert_eq!(out.len(), chunks.len());
            for (frame, chunk) in out.iter().zip(&chunks) {
                assert_eq!(frame.hash, ChunkHash::of(chunk));
                assert_eq!(&frame.encoded[..], &chunk[..]);
            }
        }
    }

    #[test]
    fn a_frame_filled_in_place_is_the_same_frame() {
        let chunk = vec![9u8; 5000];
        let hash = ChunkHash::of(&chunk);
        let mut expected = BytesMut::new();
        put_frame(&mut expected, &hash, &chunk);
        let mut out = b"before".to_vec();
        put_frame_with::<()>(&mut out, &hash, |out| {
            out.extend_from_slice(&chunk);
            Ok(chunk.len())
        })
        .unwrap();
        assert_eq!(&out[6..], &expected[..]);
        assert_eq!(
            put_frame_with(&mut out, &hash, |_| Err("unreadable")),
            Err("unreadable")
        );
        assert_eq!(
            &out[6..],
            &expected[..],
            "a failed fill leaves nothing behind"
        );
    }

    #[test]
    fn oversize_and_truncated_frames_are_refused() {
        let mut wire = BytesMut::new();
        wire.put_slice(&[0u8; 32]);
        wire.put_u32(MAX_FRAME_PAYLOAD + 1);
        let mut decoder = FrameDecoder::default();
        decoder.push(&wire);
        assert!(matches!(decoder.next_frame(), Err(FrameError::TooLarge(_))));

        let mut decoder = FrameDecoder::default();
        decoder.push(&[1, 2, 3]);
        assert_eq!(decoder.next_frame(), Ok(None));
        assert_eq!(decoder.finish(), Err(FrameError::Truncated));
    }
}
