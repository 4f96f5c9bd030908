//! Content routes: which chunks the library lacks, uploading chunks into it,
//! streaming chunks out to DPs and child sites, and single chunks to the
//! site's agents.

use super::extract::ApiJson;
use crate::error::{Error, Result};
use crate::service::auth::Principal;
use crate::service::content::{self, Fetcher};
use crate::service::repair;
use crate::state::AppState;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::response::Response;
use axum::Json;
use cascade_content::ChunkHash;
use cascade_protocol::frames::FrameDecoder;
use cascade_protocol::{
    ChunkList, ContentTicket, ContentTicketRequest, DamageCheck, UploadReport, MAX_UPLOAD_BODY,
};
use futures_util::StreamExt;

/// Bytes of frames verified and stored per blocking batch.
const STORE_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// `POST /api/v1/content/ticket`: a content ticket for an administrator.
pub async fn ticket(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(request): ApiJson<ContentTicketRequest>,
) -> Result<Json<ContentTicket>> {
    principal.require_admin()?;
    Ok(Json(content::admin_ticket(&state, &request)))
}

/// `POST /api/v1/content/missing`: the hashes the library does not hold.
pub async fn missing(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(list): ApiJson<ChunkList>,
) -> Result<Json<ChunkList>> {
    principal.require_admin()?;
    Ok(Json(ChunkList::of(content::missing(&state, list).await?)))
}

/// `POST /api/v1/content/chunks`: a stream of chunk frames. Every chunk is
/// verified against its hash before it is stored; a bad one ends the request
/// with an error naming it, and nothing of its 4 MiB batch is stored (the
/// batches before it stay: they are valid and content-addressed, so nothing
/// is damaged).
pub async fn upload(
    State(state): State<AppState>,
    principal: Principal,
    body: Body,
) -> Result<Json<UploadReport>> {
    principal.require_admin()?;
    state.require_central("uploading package content")?;
    let mut stream = body.into_data_stream();
    let mut decoder = FrameDecoder::default();
    let mut total = 0usize;
    let mut batch: Vec<(ChunkHash, Bytes)> = Vec::new();
    let mut batch_bytes = 0usize;
    let mut report = UploadReport {
        received: 0,
        stored: 0,
        stored_bytes: 0,
    };
    loop {
        let piece = stream.next().await;
        let done = piece.is_none();
        if let Some(piece) = piece {
            let piece = piece.map_err(|err| {
                Error::invalid("malformed_request", format!("reading upload: {err}"))
            })?;
            total += piece.len();
            if total > MAX_UPLOAD_BODY {
                return Err(Error::TooLarge(format!(
                    "upload larger than {MAX_UPLOAD_BODY} bytes; send chunks in smaller requests"
                )));
            }
            decoder.push(&piece);
            while let Some(frame) = decoder
                .next_frame()
                .map_err(|err| Error::invalid("malformed_frame", err.to_string()))?
            {
                batch_bytes += frame.encoded.len();
                batch.push((frame.hash, frame.encoded));
            }
        } else {
            decoder
                .finish()
                .map_err(|err| Error::invalid("malformed_frame", err.to_string()))?;
        }
        if batch_bytes >= STORE_BATCH_BYTES || (done && !batch.is_empty()) {
            batch_bytes = 0;
            let stored = content::store_batch(&state, std::mem::take(&mut batch)).await?;
            report.received += stored.received;
            report.stored += stored.stored;
            report.stored_bytes += stored.stored_bytes;
        }
        if done {
            return Ok(Json(report));
        }
    }
}

/// `POST /api/v1/content/fetch`: streams the asked chunks as frames, each
/// read from the library and checked on the way out. A DP or a child site
/// gets every chunk or an error naming the first one missing, or, asking
/// `partial`, the chunks held here and none of the others (this site may
/// still be bringing them in from its own parent); a child site's stream is
/// paced to its link's rate limit.
pub async fn fetch(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(list): ApiJson<ChunkList>,
) -> Result<Response> {
    let fetcher = match &principal {
        Principal::Dp { id, .. } => {
            crate::service::dps::require_admitted(&state, *id).await?;
            Fetcher::Dp
        }
        Principal::Site { code } => Fetcher::Child(code.clone()),
        other => {
            other.require_dp()?;
            Fetcher::Dp
        }
    };
    let receiver = content::fetch(&state, &fetcher, &list).await?;
    let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|item| (item, receiver))
    });
    Response::builder()
        .header("content-type", "application/octet-stream")
        .body(Body::from_stream(stream))
        .map_err(|err| Error::Internal(err.to_string()))
}

/// `POST /api/v1/content/damaged`: a DP or a child site says chunks this
/// site sent it did not match their names. Each is verified here; those
/// damaged are removed and brought back where the site can
/// (`service::repair`).
pub async fn damaged(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(list): ApiJson<ChunkList>,
) -> Result<Json<DamageCheck>> {
    match &principal {
        Principal::Dp { id, .. } => crate::service::dps::require_admitted(&state, *id).await?,
        Principal::Site { .. } => {}
        other => {
            other.require_dp()?;
        }
    }
    let mut hashes = list.hashes;
    hashes.sort_unstable_by_key(|hash| hash.0);
    hashes.dedup();
    let checked = hashes.len() as u64;
    let damaged = repair::check_reported(&state, hashes).await? as u64;
    Ok(Json(DamageCheck { checked, damaged }))
}

/// `GET /v1/chunks/{hash}`: one chunk's encoded form, verified on the way
/// out, as a DP serves it. The site is its agents' source of last resort: a
/// job whose DPs do not hold the content (none at this site, or still
/// transferring) is downloaded from here.
pub async fn serve_chunk(
    State(state): State<AppState>,
    Path(hash): Path<String>,
    headers: axum::http::HeaderMap,
) -> Result<Response> {
    let ticket = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok());
    content::check_ticket(&state, ticket)?;
    let encoded = content::chunk(&state, &hash).await?;
    Response::builder()
        .header("content-type", "application/octet-stream")
        .body(Body::from(encoded))
        .map_err(|err| Error::Internal(err.to_string()))
}
