//! The DP's content server: what it holds, signed manifests, and files with
//! HTTP Range support, assembled from verified chunks.

use crate::db;
use crate::error::{Error, Result};
use crate::Dp;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use cascade_content::{ChunkRef, EntryKind, Manifest};
use cascade_protocol::{DpCounters, DpHeldPackage, DpSelfInfo, SignedManifestWire};
use std::sync::Arc;

/// The content server's routes; every one takes a content ticket of the
/// site ([`Ticket`]).
pub fn router(dp: Dp) -> Router {
    Router::new()
        .route("/v1/info", get(info))
        .route("/v1/packages/{name}/manifest", get(manifest))
        .route("/v1/packages/{name}/files/{*path}", get(file))
        .route("/v1/chunks/{hash}", get(chunk))
        .with_state(dp)
}

/// A request that carries a valid content ticket of the DP's site
/// (`Authorization: Bearer TICKET`); any other is answered 401.
pub struct Ticket;

impl FromRequestParts<Dp> for Ticket {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, dp: &Dp) -> Result<Ticket> {
        let authorization = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok());
        dp.check_ticket(authorization)?;
        Ok(Ticket)
    }
}

async fn info(State(dp): State<Dp>, _: Ticket) -> Result<Json<DpSelfInfo>> {
    let packages = db::all_held(&dp.db)
        .await?
        .into_iter()
        .map(|held| DpHeldPackage {
            package: held.name,
            version: held.version,
        })
        .collect();
    Ok(Json(DpSelfInfo {
        name: dp.config.enrollment.name.clone(),
        site: dp.config.enrollment.site_code.clone(),
        packages,
        counters: DpCounters {
            bytes_received: db::counter(&dp.db, "bytes_received").await?,
            chunks_received: db::counter(&dp.db, "chunks_received").await?,
            bytes_served: db::counter(&dp.db, "bytes_served").await?,
            chunks_repaired: db::counter(&dp.db, "chunks_repaired").await?,
            chunks_collected: db::counter(&dp.db, "chunks_collected").await?,
            bytes_collected: db::counter(&dp.db, "bytes_collected").await?,
            chunks_scrubbed: db::counter(&dp.db, "chunks_scrubbed").await?,
        },
    }))
}

async fn held(dp: &Dp, name: &str) -> Result<db::Held> {
    db::held(&dp.db, name)
        .await?
        .ok_or_else(|| Error::NotFound(format!("this dp does not hold package {name:?}")))
}

async fn manifest(
    State(dp): State<Dp>,
    _: Ticket,
    Path(name): Path<String>,
) -> Result<Json<SignedManifestWire>> {
    let held = held(&dp, &name).await?;
    let signed = held.signed()?;
    Ok(Json(SignedManifestWire::from_signed(&signed)))
}

/// The verified manifest of the held version of `name`, from the cache when
/// the held version has not changed since it was verified.
async fn held_manifest_cached(dp: &Dp, name: &str) -> Result<(u64, Arc<Manifest>)> {
    let version = db::held_version(&dp.db, name)
        .await?
        .ok_or_else(|| Error::NotFound(format!("this dp does not hold package {name:?}")))?;
    if let Some((cached, manifest)) = dp.manifests.lock().expect("manifest cache").get(name) {
        if *cached == version {
            return Ok((version, manifest.clone()));
        }
    }
    let held = held(dp, name).await?;
    let verifier = dp.clone();
    let manifest = tokio::task::spawn_blocking(move || held.verified(&verifier.site_key))
        .await
        .map_err(|err| Error::Unavailable(format!("verification task failed: {err}")))??;
    let manifest = Arc::new(manifest);
    dp.manifests
        .lock()
        .expect("manifest cache")
        .insert(name.to_owned(), (manifest.version, manifest.clone()));
    Ok((manifest.version, manifest))
}

/// `GET /v1/chunks/{hash}`: a chunk's encoded form (see
/// `cascade_content::encode`), verified on the way out, for agents that
/// fetch only the chunks they lack.
async fn chunk(State(dp): State<Dp>, _: Ticket, Path(hash): Path<String>) -> Result<Response> {
    let hash = cascade_content::ChunkHash::from_hex(&hash)
        .map_err(|err| Error::BadRequest(format!("{hash:?} is not a chunk hash: {err}")))?;
    let store = dp.store.clone();
    let encoded = tokio::task::spawn_blocking(move || store.get_encoded(&hash))
        .await
        .map_err(|err| Error::Unavailable(format!("read task failed: {err}")))?;
    match encoded {
        Ok(encoded) => {
            let served = encoded.len() as u64;
            let db = dp.db.clone();
            tokio::spawn(async move {
                let _ = db::add_counters(&db, &[("bytes_served", served)]).await;
            });
            Response::builder()
                .header(header::CONTENT_TYPE, "application/octet-stream")
                .body(Body::from(encoded))
                .map_err(|err| Error::BadRequest(err.to_string()))
        }
        Err(cascade_content::Error::NotFound { .. }) => Err(Error::NotFound(format!(
            "this dp does not hold chunk {hash}"
        ))),
        Err(err) => {
            // Which package needs repair is not known from a hash: verify them all.
            for held in db::all_held(&dp.db).await? {
                dp.request_repair(&held.name);
            }
            Err(Error::Unavailable(format!(
                "chunk {hash} is being repaired on this dp ({err})"
            )))
        }
    }
}

/// Parses a single `bytes=` range against a file of `size` bytes (with
/// `http-range-header`); returns the half-open interval. A malformed header
/// or several ranges are a bad request; a range outside the file is not
/// satisfiable (416). A suffix longer than the file is the whole file
/// (RFC 9110 §14.1.2).
fn parse_range(value: &str, size: u64) -> Result<(u64, u64)> {
    use http_range_header::StartPosition;
    let unsatisfiable = || {
        Error::RangeNotSatisfiable(format!(
            "range {value:?} does not fit a file of {size} bytes"
        ))
    };
    let mut parsed = http_range_header::parse_range_header(value)
        .map_err(|err| Error::BadRequest(format!("malformed range {value:?}: {err}")))?;
    if parsed.ranges.len() != 1 {
        return Err(Error::BadRequest(
            "multiple ranges are not supported".into(),
        ));
    }
    if let StartPosition::FromLast(suffix) = &mut parsed.ranges[0].start {
        *suffix = (*suffix).min(size);
    }
    let range = parsed
        .validate(size)
        .map_err(|_| unsatisfiable())?
        .remove(0);
    let (start, end) = (*range.start(), range.end().saturating_add(1));
    if start >= size || start >= end {
        return Err(unsatisfiable());
    }
    Ok((start, end))
}

async fn file(
    State(dp): State<Dp>,
    _: Ticket,
    Path((name, path)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response> {
    let (version, manifest) = held_manifest_cached(&dp, &name).await?;
    let entry = manifest.file(&path).ok_or_else(|| {
        Error::NotFound(format!("package {name} v{version} has no file {path:?}",))
    })?;
    let EntryKind::File { size, chunks, .. } = &entry.kind else {
        return Err(Error::NotFound(format!(
            "{path:?} in package {name} is not a regular file"
        )));
    };
    let size = *size;
    let range = match headers.get(header::RANGE) {
        Some(value) => {
            let text = value
                .to_str()
                .map_err(|_| Error::BadRequest("range header is not text".into()))?;
            Some(parse_range(text, size)?)
        }
        None => None,
    };
    let (start, end) = range.unwrap_or((0, size));
    check_first_chunk(&dp, &name, chunks, start).await?;
    let body = stream_range(dp.clone(), name.clone(), chunks.clone(), start, end);
    let mut response = Response::builder()
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CONTENT_LENGTH, end - start)
        .header(header::CONTENT_TYPE, "application/octet-stream");
    response = if range.is_some() {
        response.status(StatusCode::PARTIAL_CONTENT).header(
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{size}", end - 1),
        )
    } else {
        response.status(StatusCode::OK)
    };
    response
        .body(body)
        .map_err(|err| Error::BadRequest(err.to_string()))
}

/// Verifies the chunk holding byte `start` before any header is sent, so
/// that a corrupt chunk found there is answered with a 503 (the client tries
/// another DP) rather than with a body cut short.
async fn check_first_chunk(dp: &Dp, package: &str, chunks: &[ChunkRef], start: u64) -> Result<()> {
    let mut offset = 0u64;
    let Some(first) = chunks.iter().find(|chunk| {
        offset += chunk.size as u64;
        offset > start
    }) else {
        return Ok(());
    };
    let hash = first.hash;
    let store = dp.store.clone();
    let checked = tokio::task::spawn_blocking(move || store.get(&hash).map(drop))
        .await
        .map_err(|err| Error::Unavailable(format!("verification task failed: {err}")))?;
    if let Err(err) = checked {
        tracing::error!(%package, chunk = %hash, error = %cascade_protocol::chain(&err), "chunk failed verification while serving; repairing");
        dp.request_repair(package);
        return Err(Error::Unavailable(format!(
            "package {package} is being repaired on this dp ({err}); retry shortly or use another dp"
        )));
    }
    Ok(())
}

/// Streams bytes [start, end) of a file from its chunks, verifying each. On
/// a chunk that fails verification the package is queued for repair and the
/// response is cut short, so the client never receives bad bytes as good.
fn stream_range(dp: Dp, package: String, chunks: Vec<ChunkRef>, start: u64, end: u64) -> Body {
    let (sender, receiver) =
        tokio::sync::mpsc::channel::<std::result::Result<Bytes, std::io::Error>>(4);
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let mut offset = 0u64;
        let mut served = 0u64;
        for chunk in &chunks {
            let chunk_end = offset + chunk.size as u64;
            if chunk_end <= start {
                offset = chunk_end;
                continue;
            }
            if offset >= end {
                break;
            }
            let data = match dp.store.get(&chunk.hash) {
                Ok(data) => data,
                Err(err) => {
                    tracing::error!(%package, chunk = %chunk.hash, error = %cascade_protocol::chain(&err), "chunk failed verification while serving; repairing");
                    // The sync worker re-verifies the package, removes what
                    // is corrupt, reports it and fetches it again.
                    dp.request_repair(&package);
                    let _ = sender.blocking_send(Err(std::io::Error::other(err.to_string())));
                    return;
                }
            };
            let from = start.saturating_sub(offset) as usize;
            let to = (end.min(chunk_end) - offset) as usize;
            served += (to - from) as u64;
            if sender
                .blocking_send(Ok(Bytes::copy_from_slice(&data[from..to])))
                .is_err()
            {
                break;
            }
            offset = chunk_end;
        }
        let db = dp.db.clone();
        runtime.spawn(async move {
            let _ = db::add_counters(&db, &[("bytes_served", served)]).await;
        });
    });
    Body::from_stream(futures_util::stream::unfold(
        receiver,
        |mut receiver| async move { receiver.recv().await.map(|item| (item, receiver)) },
    ))
}

#[cfg(test)]
mod tests {
    use super::parse_range;
    use crate::error::Error;

    #[test]
    fn ranges_follow_rfc_9110() {
        assert_eq!(parse_range("bytes=0-99", 1000).unwrap(), (0, 100));
        assert_eq!(parse_range("bytes=900-", 1000).unwrap(), (900, 1000));
        assert_eq!(parse_range("bytes=-100", 1000).unwrap(), (900, 1000));
        assert_eq!(parse_range("bytes=990-2000", 1000).unwrap(), (990, 1000));
        assert!(parse_range("bytes=1000-", 1000).is_err());
        assert!(parse_range("bytes=5-1", 1000).is_err());
        assert!(parse_range("items=0-1", 1000).is_err());
        assert!(parse_range("bytes=0-1,5-6", 1000).is_err());
        assert!(parse_range("bytes=x-1", 1000).is_err());
        // A suffix longer than the file is the whole file.
        assert_eq!(parse_range("bytes=-2000", 1000).unwrap(), (0, 1000));
        // Which answer: outside the file is 416, a malformed header 400.
        for outside in ["bytes=1000-", "bytes=1500-1600", "bytes=0-0"] {
            let size = if outside == "bytes=0-0" { 0 } else { 1000 };
            assert!(
                matches!(
                    parse_range(outside, size),
                    Err(Error::RangeNotSatisfiable(_))
                ),
                "{outside}"
            );
        }
        for malformed in ["bytes=x-1", "items=0-1", "bytes=0-1,5-6", "bytes=-"] {
            assert!(
                matches!(parse_range(malformed, 1000), Err(Error::BadRequest(_))),
                "{malformed}"
            );
        }
    }
}
