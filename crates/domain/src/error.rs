//! The domain layer's error type.

/// Everything the domain rules can refuse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// A name (package, DP, site code) does not follow the naming rules.
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidName {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
    /// A collection rule that does not parse.
    #[error("invalid rule {rule:?} at character {position}: {reason}")]
    InvalidRule {
        rule: String,
        position: usize,
        reason: String,
    },
    /// A site that cannot join where it asked to, or a malformed status
    /// source.
    #[error("{0}")]
    Hierarchy(String),
    /// A value outside the few a setting takes.
    #[error("invalid {what} {value:?}: expected {expected}")]
    InvalidValue {
        what: &'static str,
        value: String,
        expected: &'static str,
    },
    /// A version that would move a package backwards (or stand still).
    #[error("version {offered} of {package} is not newer than version {current}")]
    VersionNotNewer {
        package: String,
        current: u64,
        offered: u64,
    },
}

/// Result with the domain [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
