//! Cascade's content library: content-defined chunking, chunk names, signed
//! manifests, the crash-safe chunk store, and reading and writing package
//! trees.
//!
//! Data flows through it in two directions. Ingest: [`scan`] a source
//! directory, [`chunk_file`] each file into the [`ChunkStore`], build a
//! [`Manifest`] and [`sign`] it. Delivery: [`SignedManifest::verify`] the
//! manifest, fetch missing chunks (shipped in their [`encode`]d form and
//! checked with [`decode_verified`] before being stored), then
//! [`materialize`] the tree or serve byte ranges with [`read_file_range`].
//!
//! **Invariant:** no bytes leave the store unverified. Every read checks the
//! chunk against its BLAKE3 name, and every path is validated before it
//! touches the filesystem.

pub mod chunk;
pub mod encoding;
mod error;
pub mod hash;
pub mod manifest;
pub mod materialize;
pub mod paths;
pub mod scan;
pub mod signing;
pub mod store;

pub use chunk::{chunks, Chunk, ChunkHash, AVG_CHUNK_SIZE, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE};
pub use encoding::{decode_verified, encode, max_encoded_len};
pub use error::{Error, Result};
pub use manifest::{ChunkRef, Entry, EntryKind, Manifest, MANIFEST_FORMAT};
pub use materialize::{materialize, read_file_range};
pub use paths::validate_path;
pub use scan::{
    chunk_file, chunk_tree, chunk_tree_reusing, scan, FileStamp, SourceEntry, SourceFile,
};
pub use signing::{
    generate_key, public_key_from_hex, public_key_hex, read_key, sign, sign_statement,
    verify_statement, write_key, SignedManifest, SigningKey, VerifyingKey,
};
pub use store::{
    list_in, locate_in, ChunkLocation, ChunkStore, CompactReport, OpenReport, PutOutcome, Scrubbed,
    Scrubber, StoreUsage, StoredChunk, DEFAULT_PACK_TARGET, DEFAULT_SCRUB_PASS, FORMAT_VERSION,
};
