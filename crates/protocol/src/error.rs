//! Errors of the protocol layer: transport, the peer's refusals, decoding.

use std::fmt;

/// What can go wrong talking to a Cascade server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request never got an answer (connection refused, reset, timeout).
    #[error("cannot reach {url}: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The server answered with an error.
    #[error("{url} refused: {message} ({status}, {code})")]
    Refused {
        url: String,
        status: u16,
        code: String,
        message: String,
    },
    /// The answer could not be read.
    #[error("bad answer from {url}: {reason}")]
    BadAnswer { url: String, reason: String },
    /// A chunk frame stream was malformed.
    #[error("malformed chunk frame: {0}")]
    Frame(FrameError),
}

impl Error {
    /// The HTTP status of a refusal, if this is one.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The stable error code of a refusal, if this is one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Refused { code, .. } => Some(code),
            _ => None,
        }
    }

    /// True when retrying later may succeed: the server was unreachable or
    /// answered with a 5xx.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Unreachable { .. } | Error::BadAnswer { .. } | Error::Frame(_) => true,
            Error::Refused { status, .. } => *status >= 500,
        }
    }
}

/// A malformed chunk frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// A frame announced more bytes than any chunk can have.
    TooLarge(u32),
    /// The stream ended inside a frame.
    Truncated,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::TooLarge(len) => write!(f, "frame of {len} bytes exceeds the chunk limit"),
            FrameError::Truncated => f.write_str("stream ended inside a frame"),
        }
    }
}

/// Result with the protocol [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
