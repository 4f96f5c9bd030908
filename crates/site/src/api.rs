//! The HTTP API: routes, request extraction, and the package and DP handlers.

use crate::auth::{self, Principal};
use crate::error::{Error, Result};
use crate::{
    agents, content, db, distribution, groups, hierarchy, jobs, now_ms, queues, receive, relay,
    send, status, AppState,
};
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Query, Request, State};
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use cascade_content::{Manifest, MANIFEST_FORMAT};
use cascade_domain::{DpName, PackageName};
use cascade_protocol::*;
use serde::de::DeserializeOwned;
use std::time::Duration;

/// The whole API.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/v1/site", get(site_info))
        .route("/api/v1/content/missing", post(content::missing))
        .route(
            "/api/v1/content/chunks",
            post(content::upload).layer(DefaultBodyLimit::disable()),
        )
        .route("/api/v1/content/fetch", post(content::fetch))
        .route(
            "/api/v1/packages",
            get(list_packages)
                .post(new_version)
                .layer(DefaultBodyLimit::max(MAX_MANIFEST_BODY)),
        )
        .route("/api/v1/packages/{name}", get(show_package))
        .route(
            "/api/v1/packages/{name}/versions/{version}/manifest",
            get(manifest),
        )
        .route("/api/v1/packages/{name}/distribute", post(distribute))
        .route("/api/v1/packages/{name}/refresh", post(refresh))
        .route(
            "/api/v1/packages/{name}/status",
            get(status::package_status),
        )
        .route(
            "/api/v1/packages/{name}/messages",
            get(status::package_messages),
        )
        .route("/api/v1/dps", get(list_dps))
        .route("/api/v1/dps/enroll", post(enroll))
        .route("/api/v1/dp/hello", post(dp_hello))
        .route("/api/v1/dp/assignments", get(assignments))
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
            get(agents::list_collections).post(agents::create_collection),
        )
        .route("/api/v1/collections/{name}", get(agents::show_collection))
        .route("/api/v1/jobs", get(jobs::list).post(jobs::create))
        .route("/api/v1/jobs/{id}/cancel", post(jobs::cancel))
        .route("/api/v1/jobs/{id}/status", get(jobs::job_status))
        .route("/api/v1/sites", get(hierarchy::list))
        .route("/api/v1/sites/enroll", post(hierarchy::enroll))
        .route("/api/v1/sites/register", post(hierarchy::register))
        .route("/api/v1/sites/{code}/link", put(hierarchy::set_link))
        .route("/api/v1/site/instructions", get(send::instructions))
        .route("/api/v1/site/wants", put(receive::put_wants))
        .route(
            "/api/v1/site/status",
            post(relay::ingest_relayed).layer(DefaultBodyLimit::max(relay::MAX_RELAY_BODY)),
        )
        .route("/api/v1/site/queues", get(queues::queues))
        .route("/api/v1/dp-groups", get(groups::list).post(groups::create))
        .route("/v1/chunks/{hash}", get(content::serve_chunk))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_CONTROL_BODY))
        .with_state(state)
}

/// A JSON body whose rejections are answered in Cascade's error format.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = Error;

    async fn from_request(request: Request, state: &S) -> Result<Self> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> Error {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return Error::TooLarge(format!("request body too large: {}", rejection.body_text()));
    }
    Error::invalid("malformed_request", rejection.body_text())
}

fn query_rejection(rejection: QueryRejection) -> Error {
    Error::invalid("malformed_request", rejection.body_text())
}

async fn not_found(uri: axum::http::Uri) -> Error {
    Error::NoRoute(format!("no such API route: {}", uri.path()))
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> Error {
    Error::MethodNotAllowed(format!("{method} is not allowed on {}", uri.path()))
}

async fn site_info(State(state): State<AppState>) -> Json<SiteInfo> {
    Json(site_info_of(&state))
}

pub(crate) fn site_info_of(state: &AppState) -> SiteInfo {
    SiteInfo {
        code: state.code.to_string(),
        kind: state.kind.name().to_owned(),
        public_key: cascade_content::public_key_hex(&state.trust),
        server_version: env!("CARGO_PKG_VERSION").to_owned(),
        parent: state.parent.as_ref().map(|parent| parent.code().to_owned()),
        central: Some(state.central.to_string()),
    }
}

fn version_info(package: &str, row: &db::VersionRow) -> VersionInfo {
    VersionInfo {
        package: package.to_owned(),
        version: row.version as u64,
        total_size: row.total_size as u64,
        file_count: row.file_count as u64,
        chunk_count: row.chunk_count as u64,
        created_at_ms: row.created_at_ms,
        complete: row.complete,
        unchanged: false,
    }
}

async fn new_version(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(request): ApiJson<NewVersionRequest>,
) -> Result<Json<VersionInfo>> {
    principal.require_admin()?;
    state.require_central("creating and updating packages")?;
    let key = state
        .key
        .clone()
        .ok_or_else(|| Error::Internal("the central site holds no signing key".into()))?;
    let name = PackageName::new(&request.name)?;
    // Validate the tree before anything is stored; version and origin are
    // filled in below and do not affect validity.
    let mut manifest = Manifest {
        format: MANIFEST_FORMAT,
        package: name.to_string(),
        version: 1,
        origin_site: state.code.to_string(),
        created_at_ms: now_ms(),
        entries: request.entries,
    };
    manifest
        .validate()
        .map_err(|err| Error::invalid("invalid_manifest", err.to_string()))?;
    if manifest.file_count() == 0 {
        return Err(Error::invalid(
            "empty_package",
            format!("the tree for package {name} holds no file; a package needs at least one"),
        ));
    }
    let chunks = manifest.unique_chunks();
    let store = state.store.clone();
    let missing = tokio::task::spawn_blocking(move || {
        chunks
            .iter()
            .filter(|chunk| !store.contains(&chunk.hash))
            .map(|chunk| chunk.hash)
            .collect::<Vec<_>>()
    })
    .await
    .map_err(|err| Error::Internal(err.to_string()))?;
    if let Some(first) = missing.first() {
        return Err(Error::invalid(
            "missing_chunks",
            format!(
                "{} chunk(s) of {name} were not uploaded (first: {first}); upload them before committing the version",
                missing.len()
            ),
        ));
    }

    let mut tx = state.db.write().await?;
    let existing = db::package_by_name(&mut *tx.tx, name.as_str()).await?;
    let (package_id, version) = match (request.intent, existing) {
        (VersionIntent::Create, Some(_)) => {
            return Err(Error::Conflict(format!(
                "package {name} already exists; use `cascade package update` for a new version"
            )))
        }
        (VersionIntent::Update, None) => {
            return Err(Error::NotFound {
                what: "package",
                name: name.to_string(),
            })
        }
        (VersionIntent::Create, None) => {
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO packages (name, created_at_ms) VALUES (?, ?) RETURNING id",
            )
            .bind(name.as_str())
            .bind(manifest.created_at_ms)
            .fetch_one(&mut *tx.tx)
            .await?;
            (id, 1)
        }
        (VersionIntent::Update, Some(package)) => {
            let latest = db::latest_version(&mut *tx.tx, package.id)
                .await?
                .unwrap_or(0);
            if !request.allow_unchanged {
                if let Some(row) = unchanged(&state, &mut tx, package.id, latest, &manifest).await?
                {
                    tracing::info!(package = %name, version = latest, "update with an unchanged tree: no new version");
                    let mut info = version_info(name.as_str(), &row);
                    info.unchanged = true;
                    return Ok(Json(info));
                }
            }
            (package.id, latest + 1)
        }
    };
    manifest.version = version as u64;
    let signed = cascade_content::sign(&manifest, &key)?;
    let row = insert_version(&mut tx, package_id, &manifest, &signed, true).await?;
    let superseded =
        distribution::supersede(&state, &mut tx, package_id, name.as_str(), version).await?;
    send::send_down(
        &state,
        &mut tx,
        &Instruction::PackageVersion {
            package: name.to_string(),
            version: version as u64,
            manifest: SignedManifestWire::from_signed(&signed),
        },
    )
    .await?;
    tx.commit().await?;
    state.notify_everything();
    tracing::info!(package = %name, version, superseded, "package version committed");
    Ok(Json(version_info(name.as_str(), &row)))
}

/// The newest version's row when its tree is exactly `manifest`'s (an
/// update that would change nothing).
async fn unchanged(
    state: &AppState,
    tx: &mut db::WriteTx<'_>,
    package_id: i64,
    latest: i64,
    manifest: &Manifest,
) -> Result<Option<db::VersionRow>> {
    let Some((bytes, signature)) = db::manifest(&mut *tx.tx, package_id, latest).await? else {
        return Ok(None);
    };
    let Ok(signature) = signature.try_into() else {
        return Ok(None);
    };
    let signed = cascade_content::SignedManifest { bytes, signature };
    let held = match signed.verify(&state.trust) {
        Ok(held) => held,
        Err(err) => {
            // Not a reason to refuse the update: the new version replaces
            // the damaged one as the newest.
            tracing::warn!(package = %manifest.package, version = latest, error = %err, "stored manifest does not verify");
            return Ok(None);
        }
    };
    if held.entries != manifest.entries {
        return Ok(None);
    }
    Ok(db::versions(&mut *tx.tx, package_id)
        .await?
        .into_iter()
        .find(|row| row.version == latest))
}

/// Stores a verified package version; `complete` when every chunk of it is
/// in the library.
pub(crate) async fn insert_version(
    tx: &mut db::WriteTx<'_>,
    package_id: i64,
    manifest: &Manifest,
    signed: &cascade_content::SignedManifest,
    complete: bool,
) -> Result<db::VersionRow> {
    let row = db::VersionRow {
        version: manifest.version as i64,
        total_size: manifest.total_size() as i64,
        file_count: manifest.file_count() as i64,
        chunk_count: manifest.unique_chunks().len() as i64,
        created_at_ms: manifest.created_at_ms,
        complete,
    };
    sqlx::query(
        "INSERT INTO package_versions
         (package_id, version, manifest, signature, total_size, file_count, chunk_count, created_at_ms, complete)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(package_id)
    .bind(row.version)
    .bind(&signed.bytes)
    .bind(&signed.signature[..])
    .bind(row.total_size)
    .bind(row.file_count)
    .bind(row.chunk_count)
    .bind(row.created_at_ms)
    .bind(complete)
    .execute(&mut *tx.tx)
    .await?;
    Ok(row)
}

async fn list_packages(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<Vec<PackageSummary>>> {
    principal.require_admin()?;
    let pool = state.db.pool();
    let mut out = Vec::new();
    for package in db::all_packages(pool).await? {
        let versions = db::versions(pool, package.id).await?;
        let Some(latest) = versions.last() else {
            continue;
        };
        let dp_count = db::distributions_of_package(pool, package.id).await?.len() as u64;
        out.push(PackageSummary {
            name: package.name.clone(),
            latest: version_info(&package.name, latest),
            dp_count,
        });
    }
    Ok(Json(out))
}

async fn show_package(
    State(state): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
) -> Result<Json<PackageDetail>> {
    principal.require_admin()?;
    let pool = state.db.pool();
    let package = db::require_package(pool, &name).await?;
    let versions = db::versions(pool, package.id).await?;
    let latest = versions.last().map(|v| v.version).unwrap_or(0);
    let (bytes, _) = db::manifest(pool, package.id, latest)
        .await?
        .ok_or_else(|| Error::Internal(format!("package {name} has no versions")))?;
    let manifest = Manifest::from_bytes(&bytes)?;
    let dps = db::distributions_of_package(pool, package.id)
        .await?
        .into_iter()
        .map(|row| row.dp)
        .collect();
    Ok(Json(PackageDetail {
        name: package.name.clone(),
        versions: versions
            .iter()
            .map(|v| version_info(&package.name, v))
            .collect(),
        dps,
        entries: manifest.entries,
    }))
}

async fn manifest(
    State(state): State<AppState>,
    _principal: Principal,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<SignedManifestWire>> {
    let pool = state.db.pool();
    let package = db::require_package(pool, &name).await?;
    let number: i64 = version.parse().map_err(|_| {
        Error::invalid(
            "malformed_request",
            format!("version {version:?} is not a number"),
        )
    })?;
    let (bytes, signature) = db::manifest(pool, package.id, number)
        .await?
        .ok_or_else(|| Error::NotFound {
            what: "version",
            name: format!("{name} v{version}"),
        })?;
    let signed = cascade_content::SignedManifest {
        bytes,
        signature: signature.try_into().map_err(|_| {
            Error::Internal(format!(
                "stored signature of {name} v{version} is not 64 bytes"
            ))
        })?,
    };
    Ok(Json(SignedManifestWire::from_signed(&signed)))
}

async fn distribute(
    State(state): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
    ApiJson(request): ApiJson<DistributeRequest>,
) -> Result<Json<TargetReport>> {
    principal.require_admin()?;
    let report = distribution::distribute(&state, &name, &request).await?;
    Ok(Json(report))
}

async fn refresh(
    State(state): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
    ApiJson(request): ApiJson<RefreshRequest>,
) -> Result<Json<TargetReport>> {
    principal.require_admin()?;
    let report = distribution::refresh(&state, &name, &request).await?;
    Ok(Json(report))
}

async fn list_dps(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<Vec<DpInfo>>> {
    principal.require_admin()?;
    let pool = state.db.pool();
    let mut out = Vec::new();
    for dp in db::all_dps(pool).await? {
        let packages = db::distributions_of_dp(pool, dp.id).await?.len() as u64;
        out.push(DpInfo {
            name: dp.name,
            url: dp.url,
            enrolled_at_ms: dp.enrolled_at_ms,
            last_seen_ms: dp.last_seen_ms,
            packages,
        });
    }
    Ok(Json(out))
}

async fn enroll(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<EnrollRequest>,
) -> Result<Json<EnrollResponse>> {
    let name = DpName::new(&request.name)?;
    auth::require_join_token(&state, &request.join_token).await?;
    let credential = auth::mint_token("cas_dp");
    let mut tx = state.db.write().await?;
    if db::dp_by_name(&mut *tx.tx, name.as_str()).await?.is_some() {
        return Err(Error::Conflict(format!("dp {name} is already enrolled")));
    }
    let now = now_ms();
    let dp_id: i64 =
        sqlx::query_scalar("INSERT INTO dps (name, enrolled_at_ms) VALUES (?, ?) RETURNING id")
            .bind(name.as_str())
            .bind(now)
            .fetch_one(&mut *tx.tx)
            .await?;
    auth::store_credential(&mut tx, &credential, "dp", name.as_str(), now).await?;
    status::record_site_message(
        &state,
        &mut tx,
        StatusBody::DpEnrolled {
            dp: name.to_string(),
        },
    )
    .await?;
    let placed = distribution::place_on_new_dp(&state, &mut tx, dp_id, name.as_str()).await?;
    tx.commit().await?;
    state.notify_everything();
    tracing::info!(dp = %name, packages = placed, "dp enrolled");
    Ok(Json(EnrollResponse {
        credential,
        site: site_info_of(&state),
    }))
}

async fn dp_hello(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(hello): ApiJson<DpHello>,
) -> Result<Json<serde_json::Value>> {
    let (dp_id, _) = principal.require_dp()?;
    if !(hello.url.starts_with("http://") || hello.url.starts_with("https://"))
        || hello.url.len() > 2048
    {
        return Err(Error::invalid(
            "invalid_url",
            format!("{:?} is not an http(s) URL", hello.url),
        ));
    }
    let mut tx = state.db.write().await?;
    sqlx::query("UPDATE dps SET url = ?, last_seen_ms = ? WHERE id = ?")
        .bind(&hello.url)
        .bind(now_ms())
        .bind(dp_id)
        .execute(&mut *tx.tx)
        .await?;
    tx.commit().await?;
    Ok(Json(serde_json::json!({})))
}

/// Longest a long poll may be held.
const MAX_WAIT: Duration = Duration::from_secs(60);

async fn assignments(
    State(state): State<AppState>,
    principal: Principal,
    query: std::result::Result<Query<AssignmentsQuery>, QueryRejection>,
) -> Result<Json<Assignments>> {
    let Query(query) = query.map_err(query_rejection)?;
    let (dp_id, _) = principal.require_dp()?;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(query.wait_ms).min(MAX_WAIT);
    let mut changes = state.changes.subscribe();
    let mut shutdown = state.shutdown.clone();
    {
        let mut tx = state.db.write().await?;
        sqlx::query("UPDATE dps SET last_seen_ms = ? WHERE id = ?")
            .bind(now_ms())
            .bind(dp_id)
            .execute(&mut *tx.tx)
            .await?;
        tx.commit().await?;
    }
    loop {
        changes.borrow_and_update();
        let dp = db::dp_by_id(state.db.pool(), dp_id).await?;
        if dp.revision as u64 > query.after
            || tokio::time::Instant::now() >= deadline
            || *shutdown.borrow()
        {
            let rows = db::distributions_of_dp(state.db.pool(), dp_id).await?;
            return Ok(Json(Assignments {
                revision: dp.revision as u64,
                assignments: rows
                    .into_iter()
                    .map(|row| Assignment {
                        package: row.package,
                        version: row.version as u64,
                        refresh: row.refresh as u64,
                    })
                    .collect(),
            }));
        }
        tokio::select! {
            _ = changes.changed() => {}
            _ = shutdown.changed() => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}
