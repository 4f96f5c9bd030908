//! Errors of the protocol layer: transport, the peer's refusals, decoding;
//! and [`chain`], which shows an error with its causes.
//!
//! The convention of every Cascade error type: an error's `Display` says
//! what this layer was doing and never repeats its `source`; whoever shows
//! the error shows the whole chain — `anyhow`'s `{:#}` in the binary,
//! [`chain`] in log fields and in reasons sent to a site.

use std::fmt;

/// What can go wrong talking to a Cascade server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request never got an answer (connection refused, reset, timeout).
    /// `source` is stripped of its URL (`url` names it once).
    #[error("cannot reach {url}")]
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
    /// The URL of a server is not an `http://` or `https://` URL.
    #[error("server URL {url} {problem}")]
    BadUrl { url: String, problem: String },
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
            Error::BadUrl { .. } => false,
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

/// `error` and every cause below it, `outer: inner: innermost`: the form
/// for log fields (`error = %chain(&err)`) and for reasons written into
/// status messages.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(error) = cause {
        text.push_str(": ");
        text.push_str(&error.to_string());
        cause = error.source();
    }
    text
}

/// Result with the protocol [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("binding 127.0.0.1:7400")]
    struct Outer {
        source: std::io::Error,
    }

    #[test]
    fn a_chain_shows_each_cause_once() {
        let err = Outer {
            source: std::io::Error::from(std::io::ErrorKind::AddrInUse),
        };
        assert_eq!(chain(&err), "binding 127.0.0.1:7400: address in use");
    }
}
