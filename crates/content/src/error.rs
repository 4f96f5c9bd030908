//! The content library's error type: one enum for every refusal and failure.

use std::io;
use std::path::PathBuf;

use crate::hash::ChunkHash;

/// Everything the content library can refuse or fail at. Each variant names
/// what it was working on (a chunk hash, a path) so the message stands alone.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A string that should be a chunk hash (64 lowercase hex digits) is not.
    #[error(transparent)]
    InvalidHash(#[from] crate::hash::InvalidHash),

    /// Reading from a source being chunked failed.
    #[error("reading data to chunk")]
    Chunking {
        /// The underlying read error.
        #[source]
        source: io::Error,
    },

    /// A chunk's bytes do not match its name, or its stored form is unusable.
    #[error("chunk {hash} is corrupt: {reason}")]
    Corrupt {
        /// The name the bytes were expected to have.
        hash: ChunkHash,
        /// What was found wrong.
        reason: String,
    },

    /// A chunk asked for is not in the store.
    #[error("chunk {hash} not found in the store")]
    NotFound {
        /// The missing chunk.
        hash: ChunkHash,
    },

    /// Reading a chunk from its pack failed.
    #[error("reading chunk {hash} from {path}")]
    ReadChunk {
        /// The chunk being read.
        hash: ChunkHash,
        /// Its pack.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// Storing a batch of chunks durably failed (writing or syncing a pack).
    #[error("storing a batch of chunks in {path}")]
    WriteBatch {
        /// The file or directory being synced or written.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// The chunk store is open in another process (a second site, DP or
    /// agent started on the same directory).
    #[error("the chunk store at {path} is in use by another process")]
    StoreLocked {
        /// The store's directory.
        path: PathBuf,
    },

    /// The chunk store was written by a format this build does not read
    /// (a newer Cascade, or not a chunk store).
    #[error("{path} names chunk store format {found:?}; this build reads format 2 (and upgrades format 1)")]
    StoreFormat {
        /// The store's FORMAT file.
        path: PathBuf,
        /// What it says.
        found: String,
    },

    /// Any other filesystem operation failed; `action` says which
    /// ("creating directory", "reading file", ...).
    #[error("{action} {path}")]
    Io {
        /// What was being done, as a lowercase verb phrase.
        action: &'static str,
        /// The path it was being done to.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// A manifest path (or a scanned file's relative path) breaks the path rules.
    #[error("invalid path {path:?}: {reason}")]
    InvalidPath {
        /// The offending path.
        path: String,
        /// Which rule it breaks.
        reason: &'static str,
    },

    /// A symlink whose target is absolute or leads outside the tree.
    #[error("symlink {path:?} -> {target:?} is unsafe: {reason}")]
    UnsafeSymlink {
        /// The link's own path, relative to the tree root.
        path: String,
        /// The link's target as written.
        target: String,
        /// Why the target is refused.
        reason: &'static str,
    },

    /// A manifest with a format version this library does not understand.
    #[error("unsupported manifest format {format} (this build understands {supported})")]
    UnsupportedFormat {
        /// The format the manifest declares.
        format: u32,
        /// The format this build understands.
        supported: u32,
    },

    /// A manifest that parses but breaks a structural rule.
    #[error("invalid manifest entry {path:?}: {reason}")]
    InvalidManifest {
        /// The entry at fault.
        path: String,
        /// Which rule it breaks.
        reason: String,
    },

    /// Manifest bytes that are not the JSON of a manifest.
    #[error("parsing manifest")]
    ParseManifest {
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },

    /// A manifest's signature does not verify against the given key.
    #[error("manifest signature does not verify")]
    BadSignature,

    /// Refusing to overwrite an existing key file.
    #[error("key file {path} already exists")]
    KeyExists {
        /// The existing file.
        path: PathBuf,
    },

    /// A key file whose contents are not a hex-encoded 32-byte secret key.
    #[error("invalid key file {path}: {reason}")]
    InvalidKeyFile {
        /// The key file.
        path: PathBuf,
        /// What is wrong with its contents.
        reason: &'static str,
    },

    /// Text that should be a hex-encoded ed25519 public key is not.
    #[error("invalid public key {input:?}: {reason}")]
    InvalidPublicKey {
        /// The offending text (truncated to 100 characters).
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// The scan root is not a directory.
    #[error("source {path} is not a directory")]
    NotADirectory {
        /// The path given as root.
        path: PathBuf,
    },

    /// A file name in the source tree is not valid UTF-8.
    #[error("file name of {path:?} is not valid UTF-8")]
    NonUtf8Name {
        /// The offending path, as the OS spells it.
        path: PathBuf,
    },

    /// The source tree contains something other than files, dirs and symlinks.
    #[error("{path} is a {kind}; only regular files, directories and symlinks can be packaged")]
    SpecialFile {
        /// The offending path.
        path: PathBuf,
        /// What it is ("fifo", "socket", "device", ...).
        kind: &'static str,
    },

    /// A source file's size changed while it was being chunked.
    #[error("{path} changed while being read: expected {expected} bytes, read {actual}")]
    FileChanged {
        /// The file.
        path: PathBuf,
        /// The size seen when scanning.
        expected: u64,
        /// The number of bytes actually read.
        actual: u64,
    },

    /// A byte range outside a file, or with its end before its start.
    #[error("invalid range {start}..{end} of a {size}-byte file")]
    InvalidRange {
        /// First byte asked for.
        start: u64,
        /// One past the last byte asked for.
        end: u64,
        /// The file's size.
        size: u64,
    },
}

impl Error {
    /// Wraps an IO error with what was being done (`action`, a lowercase
    /// verb phrase) and to which path, for `map_err`.
    pub(crate) fn io(
        action: &'static str,
        path: &std::path::Path,
    ) -> impl FnOnce(io::Error) -> Error {
        let path = path.to_path_buf();
        move |source| Error::Io {
            action,
            path,
            source,
        }
    }
}

/// Result with the content library's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Cuts user-supplied text down to something reasonable to quote in a message.
pub(crate) fn quote_input(input: &str) -> String {
    input.chars().take(100).collect()
}
