//! The DP's error type, and its mapping to HTTP for the content server.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use cascade_protocol::{ErrorBody, ErrorDetail};

/// Everything a DP can fail at.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Talking to the site failed.
    #[error(transparent)]
    Site(#[from] cascade_protocol::Error),
    /// The content library failed or found corruption.
    #[error(transparent)]
    Content(#[from] cascade_content::Error),
    /// The DP's database failed.
    #[error("dp database")]
    Db(#[from] cascade_store::Error),
    /// A file operation failed.
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The site sent something this DP refuses (bad signature, older version...).
    #[error("{0}")]
    Refused(String),
    /// The DP is not set up as asked.
    #[error("{0}")]
    Config(String),
    /// A client asked for something this DP does not hold.
    #[error("{0}")]
    NotFound(String),
    /// A client's request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// A requested range lies outside the file.
    #[error("{0}")]
    RangeNotSatisfiable(String),
    /// Content is being repaired; try again or use another DP.
    #[error("{0}")]
    Unavailable(String),
    /// A client presented no valid content ticket.
    #[error("{0}")]
    Unauthorized(String),
    /// The DP's TLS certificate or key could not be made, read or used.
    #[error("TLS identity")]
    Tls(#[from] cascade_protocol::tls::TlsError),
}

impl From<sqlx::Error> for Error {
    fn from(err: sqlx::Error) -> Error {
        Error::Db(err.into())
    }
}

impl Error {
    /// Wraps an IO error with what was being done.
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            Error::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Error::BadRequest(_) => (StatusCode::BAD_REQUEST, "malformed_request"),
            Error::RangeNotSatisfiable(_) => (StatusCode::RANGE_NOT_SATISFIABLE, "bad_range"),
            Error::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "repairing"),
            Error::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        if status.is_server_error() {
            tracing::error!(error = %cascade_protocol::chain(&self), "request failed");
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

/// Result with the DP [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
