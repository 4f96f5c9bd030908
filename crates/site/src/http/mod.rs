//! The HTTP layer: the router, the extractors, the one mapping of errors to
//! answers, and thin handlers per resource. A handler checks who is calling
//! ([`Principal`](crate::service::auth::Principal)), calls one service, and
//! wraps its answer; it decides nothing else. Nothing below this module
//! knows about HTTP.

mod agents;
mod collections;
mod content;
mod dps;
mod error;
mod extract;
mod jobs;
mod packages;
mod sites;
mod status;
#[cfg(test)]
mod tests;

use crate::error::{Error, Result};
use crate::state::AppState;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post, put};
use axum::Router;
use cascade_protocol::{MAX_CONTROL_BODY, MAX_MANIFEST_BODY};

/// Largest relayed status batch a child site may post.
pub const MAX_RELAY_BODY: usize = 16 * 1024 * 1024;

/// The whole API.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/v1/site", get(sites::site_info))
        .route("/api/v1/content/missing", post(content::missing))
        .route("/api/v1/content/ticket", post(content::ticket))
        .route(
            "/api/v1/content/chunks",
            post(content::upload).layer(DefaultBodyLimit::disable()),
        )
        .route("/api/v1/content/fetch", post(content::fetch))
        .route("/api/v1/content/damaged", post(content::damaged))
        .route(
            "/api/v1/packages",
            get(packages::list)
                .post(packages::new_version)
                .layer(DefaultBodyLimit::max(MAX_MANIFEST_BODY)),
        )
        .route("/api/v1/ingest/local", post(packages::ingest_local))
        .route("/api/v1/packages/{name}", get(packages::show))
        .route(
            "/api/v1/packages/{name}/versions/{version}/manifest",
            get(packages::manifest),
        )
        .route(
            "/api/v1/packages/{name}/distribute",
            post(packages::distribute),
        )
        .route("/api/v1/packages/{name}/refresh", post(packages::refresh))
        .route("/api/v1/packages/{name}/status", get(packages::status))
        .route("/api/v1/packages/{name}/messages", get(packages::messages))
        .route("/api/v1/dps", get(dps::list))
        .route("/api/v1/dps/enroll", post(dps::enroll))
        .route("/api/v1/dps/{name}/approve", post(dps::approve))
        .route("/api/v1/dp/hello", post(dps::hello))
        .route("/api/v1/dp/assignments", get(dps::assignments))
        .route("/api/v1/status", post(status::ingest))
        .route(
            "/api/v1/settings",
            get(agents::get_settings).put(agents::put_settings),
        )
        .route("/api/v1/agents", get(agents::list))
        .route("/api/v1/agents/enroll", post(agents::enroll))
        .route("/api/v1/agents/{name}/approve", post(agents::approve))
        .route("/api/v1/agent/hello", post(agents::hello))
        .route("/api/v1/agent/policy", get(agents::policy))
        .route(
            "/api/v1/collections",
            get(collections::list).post(collections::create),
        )
        .route("/api/v1/collections/{name}", get(collections::show))
        .route("/api/v1/collections/{name}/edit", post(collections::edit))
        .route(
            "/api/v1/collections/{name}/windows",
            post(collections::add_window).delete(collections::clear_windows),
        )
        .route("/api/v1/jobs", get(jobs::list).post(jobs::create))
        .route("/api/v1/jobs/{id}/cancel", post(jobs::cancel))
        .route("/api/v1/jobs/{id}/edit", post(jobs::edit))
        .route("/api/v1/jobs/{id}/status", get(jobs::status))
        .route("/api/v1/sites", get(sites::list))
        .route("/api/v1/sites/enroll", post(sites::enroll))
        .route("/api/v1/sites/register", post(sites::register))
        .route("/api/v1/sites/{code}/link", put(sites::set_link))
        .route("/api/v1/site/instructions", get(sites::instructions))
        .route("/api/v1/site/wants", put(sites::put_wants))
        .route(
            "/api/v1/site/status",
            post(status::ingest_relayed).layer(DefaultBodyLimit::max(MAX_RELAY_BODY)),
        )
        .route("/api/v1/site/queues", get(sites::queues))
        .route(
            "/api/v1/dp-groups",
            get(dps::list_groups).post(dps::create_group),
        )
        .route("/v1/chunks/{hash}", get(content::serve_chunk))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_CONTROL_BODY))
        .with_state(state)
}

/// Serves the API on `listener` within `limits` until `shutdown` resolves
/// (requests in progress are finished).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    limits: cascade_protocol::serve::Limits,
    tls: cascade_protocol::tls::Acceptor,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    cascade_protocol::serve::serve(listener, router(state), limits, tls, shutdown)
        .await
        .map_err(Error::io("serving HTTP"))
}

async fn not_found(uri: axum::http::Uri) -> Error {
    Error::NoRoute(format!("no such API route: {}", uri.path()))
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> Error {
    Error::MethodNotAllowed(format!("{method} is not allowed on {}", uri.path()))
}
