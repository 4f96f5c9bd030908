//! The site server's error type and the one place that maps errors to HTTP.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use cascade_protocol::{ErrorBody, ErrorDetail};

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
    NotFound { what: &'static str, name: String },
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
    /// Anything else that is the server's fault.
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

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Error::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Error::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Error::NotFound { what, .. } => (
                StatusCode::NOT_FOUND,
                match *what {
                    "package" => "unknown_package",
                    "dp" => "unknown_dp",
                    "version" => "unknown_version",
                    "agent" => "unknown_agent",
                    "collection" => "unknown_collection",
                    "job" => "unknown_job",
                    "site" => "unknown_site",
                    "dp group" => "unknown_dp_group",
                    _ => "not_found",
                },
            ),
            Error::NoRoute(_) => (StatusCode::NOT_FOUND, "no_such_route"),
            Error::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Error::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            Error::Invalid { code, .. } => (StatusCode::BAD_REQUEST, code),
            Error::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            Error::Unavailable { code, .. } => (StatusCode::SERVICE_UNAVAILABLE, code),
            Error::Content(_) | Error::Db(_) | Error::Io { .. } | Error::Internal(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
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
            cascade_domain::Error::VersionNotNewer { .. } => Error::Conflict(err.to_string()),
            cascade_domain::Error::Hierarchy(_) => Error::invalid("invalid_site", err.to_string()),
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if status.is_server_error() {
            tracing::error!(error = %cascade_protocol::chain(&self), "request failed");
        } else if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
            tracing::warn!(error = %cascade_protocol::chain(&self), status = status.as_u16(), "request refused");
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: code.to_owned(),
                message: cascade_protocol::chain(&self),
            },
        };
        (status, axum::Json(body)).into_response()
    }
}

/// Result with the site [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
