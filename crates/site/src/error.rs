//! The site server's error type. Its mapping to HTTP answers is in one
//! place, `http/error.rs`; nothing here knows about HTTP.

/// The kinds of named things a site holds, for [`Error::NotFound`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entity {
    Package,
    Version,
    Dp,
    DpGroup,
    Agent,
    Collection,
    Job,
    Site,
    Chunk,
}

impl Entity {
    /// How messages name it (`unknown dp group "x"`).
    pub fn name(self) -> &'static str {
        match self {
            Entity::Package => "package",
            Entity::Version => "version",
            Entity::Dp => "dp",
            Entity::DpGroup => "dp group",
            Entity::Agent => "agent",
            Entity::Collection => "collection",
            Entity::Job => "job",
            Entity::Site => "site",
            Entity::Chunk => "chunk",
        }
    }
}

impl std::fmt::Display for Entity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Everything the site server can refuse or fail at.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No credential, or one the site does not know.
    #[error("{0}")]
    Unauthorized(String),
    /// A known credential asking for something it may not do.
    #[error("{0}")]
    Forbidden(String),
    /// A named thing that does not exist.
    #[error("unknown {what} {name:?}")]
    NotFound { what: Entity, name: String },
    /// No route has this path.
    #[error("{0}")]
    NoRoute(String),
    /// The route exists but not with this method.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// The request conflicts with what is stored.
    #[error("{0}")]
    Conflict(String),
    /// The request is malformed or invalid; `code` is stable.
    #[error("{message}")]
    Invalid { code: &'static str, message: String },
    /// The request body is larger than allowed.
    #[error("{0}")]
    TooLarge(String),
    /// Something this site needs is unreachable now (its parent); retry
    /// later. `code` is stable.
    #[error("{message}")]
    Unavailable { code: &'static str, message: String },
    /// The site's own stored content failed verification.
    #[error("content library")]
    Content(#[from] cascade_content::Error),
    /// The database failed.
    #[error("database")]
    Db(#[from] cascade_store::Error),
    /// A file operation failed.
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// JSON that this site wrote or stored failed to encode or decode.
    #[error("{context}")]
    Json {
        context: String,
        #[source]
        source: serde_json::Error,
    },
    /// The site's TLS certificate or key could not be made, read or used.
    #[error("TLS identity")]
    Tls(#[from] cascade_protocol::tls::TlsError),
    /// A blocking task of the server died.
    #[error("{context}")]
    Task {
        context: String,
        #[source]
        source: tokio::task::JoinError,
    },
    /// Anything else that is the server's fault: a stored row that breaks
    /// an invariant, a key that is not there.
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// A 400 with a stable code.
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Error {
        Error::Invalid {
            code,
            message: message.into(),
        }
    }

    /// Wraps an IO error with what was being done.
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }

    /// Wraps a JSON error with what was being encoded or decoded.
    pub fn json(context: impl Into<String>) -> impl FnOnce(serde_json::Error) -> Error {
        let context = context.into();
        move |source| Error::Json { context, source }
    }

    /// Wraps a blocking task's failure with what it was doing.
    pub fn task(context: impl Into<String>) -> impl FnOnce(tokio::task::JoinError) -> Error {
        let context = context.into();
        move |source| Error::Task { context, source }
    }

    /// A named thing that does not exist.
    pub fn not_found(what: Entity, name: impl Into<String>) -> Error {
        Error::NotFound {
            what,
            name: name.into(),
        }
    }

    /// Whether what was asked is wrong in itself, so that asking again
    /// the same way can never succeed (a malformed or refused request, a
    /// conflict with what is stored, a name that does not exist, a
    /// credential that may not do it), as opposed to a failure of this
    /// site or of a peer that a retry may get past. An instruction from
    /// the parent that fails so is refused, never retried.
    pub fn can_never_apply(&self) -> bool {
        match self {
            Error::Invalid { .. }
            | Error::Conflict(_)
            | Error::NotFound { .. }
            | Error::Forbidden(_)
            | Error::Unauthorized(_)
            | Error::TooLarge(_)
            | Error::NoRoute(_)
            | Error::MethodNotAllowed(_) => true,
            Error::Unavailable { .. }
            | Error::Content(_)
            | Error::Db(_)
            | Error::Io { .. }
            | Error::Json { .. }
            | Error::Task { .. }
            | Error::Tls(_)
            | Error::Internal(_) => false,
        }
    }
}

impl From<sqlx::Error> for Error {
    fn from(err: sqlx::Error) -> Error {
        Error::Db(err.into())
    }
}

impl From<cascade_domain::Error> for Error {
    fn from(err: cascade_domain::Error) -> Error {
        match err {
            cascade_domain::Error::InvalidName { .. } => {
                Error::invalid("invalid_name", err.to_string())
            }
            cascade_domain::Error::InvalidRule { .. } => {
                Error::invalid("invalid_rule", err.to_string())
            }
            cascade_domain::Error::InvalidValue { .. } => {
                Error::invalid("invalid_value", err.to_string())
            }
            cascade_domain::Error::VersionNotNewer { .. } => Error::Conflict(err.to_string()),
            cascade_domain::Error::Hierarchy(_) => Error::invalid("invalid_site", err.to_string()),
        }
    }
}

/// Result with the site [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
