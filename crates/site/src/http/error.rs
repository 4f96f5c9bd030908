//! The one place that maps the site's errors to HTTP answers: a status and a
//! stable code per kind, and Cascade's error body.

use crate::error::{Entity, Error};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use cascade_protocol::{ErrorBody, ErrorDetail};

/// The stable code of "no such" answers, per kind of thing.
fn unknown_code(what: Entity) -> &'static str {
    match what {
        Entity::Package => "unknown_package",
        Entity::Dp => "unknown_dp",
        Entity::Version => "unknown_version",
        Entity::Agent => "unknown_agent",
        Entity::Collection => "unknown_collection",
        Entity::Job => "unknown_job",
        Entity::Site => "unknown_site",
        Entity::DpGroup => "unknown_dp_group",
        Entity::Chunk => "not_found",
    }
}

/// The HTTP status and stable code of an error.
pub fn status_and_code(err: &Error) -> (StatusCode, &'static str) {
    match err {
        Error::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
        Error::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
        Error::NotFound { what, .. } => (StatusCode::NOT_FOUND, unknown_code(*what)),
        Error::NoRoute(_) => (StatusCode::NOT_FOUND, "no_such_route"),
        Error::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
        Error::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
        Error::Invalid { code, .. } => (StatusCode::BAD_REQUEST, code),
        Error::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
        Error::Unavailable { code, .. } => (StatusCode::SERVICE_UNAVAILABLE, code),
        Error::Content(_)
        | Error::Db(_)
        | Error::Io { .. }
        | Error::Json { .. }
        | Error::Task { .. }
        | Error::Tls(_)
        | Error::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, code) = status_and_code(&self);
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
