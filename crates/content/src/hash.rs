//! Chunk names: the BLAKE3 hash of a chunk's bytes, as 64 lowercase hex
//! digits. The bottom of the crate: it imports nothing of it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A string that should be a chunk hash (64 lowercase hex digits) is not.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid chunk hash {input:?}: {reason}")]
pub struct InvalidHash {
    /// The offending text (truncated to 100 characters).
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// BLAKE3 hash of a chunk's uncompressed bytes; its name everywhere.
///
/// Displayed, parsed and serialised as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkHash(pub [u8; 32]);

impl ChunkHash {
    /// The name of `data`: its BLAKE3 hash.
    pub fn of(data: &[u8]) -> Self {
        ChunkHash(*blake3::hash(data).as_bytes())
    }

    /// The 64 lowercase hex digits of this hash.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses exactly 64 lowercase hex digits.
    pub fn from_hex(s: &str) -> Result<Self, InvalidHash> {
        let invalid = |reason| InvalidHash {
            input: s.chars().take(100).collect(),
            reason,
        };
        if s.len() != 64 {
            return Err(invalid("expected 64 hex digits"));
        }
        if !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(invalid("expected lowercase hex digits only"));
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(s, &mut bytes).map_err(|_| invalid("not hex"))?;
        Ok(ChunkHash(bytes))
    }
}

impl fmt::Display for ChunkHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ChunkHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkHash({})", self.to_hex())
    }
}

impl FromStr for ChunkHash {
    type Err = InvalidHash;

    fn from_str(s: &str) -> Result<Self, InvalidHash> {
        ChunkHash::from_hex(s)
    }
}

impl Serialize for ChunkHash {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for ChunkHash {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct HexVisitor;

        impl serde::de::Visitor<'_> for HexVisitor {
            type Value = ChunkHash;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a chunk hash as 64 lowercase hex digits")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ChunkHash, E> {
                ChunkHash::from_hex(v).map_err(E::custom)
            }
        }

        deserializer.deserialize_str(HexVisitor)
    }
}
