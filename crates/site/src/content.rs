//! Content routes: which chunks the library lacks, uploading chunks into it,
//! streaming chunks out to DPs and child sites, and single chunks to the
//! site's agents.

use crate::api::ApiJson;
use crate::auth::Principal;
use crate::error::{Error, Result};
use crate::AppState;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::response::Response;
use axum::Json;
use cascade_content::ChunkHash;
use cascade_protocol::frames::{put_frame, FrameDecoder};
use cascade_protocol::{ChunkList, UploadReport, MAX_HASHES_PER_REQUEST, MAX_UPLOAD_BODY};
use futures_util::StreamExt;

fn check_list(list: &ChunkList) -> Result<()> {
    if list.hashes.len() > MAX_HASHES_PER_REQUEST {
        return Err(Error::TooLarge(format!(
            "{} chunk hashes in one request; at most {MAX_HASHES_PER_REQUEST}",
            list.hashes.len()
        )));
    }
    Ok(())
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| Error::Internal(format!("blocking task failed: {err}")))?
}

/// `POST /api/v1/content/missing`: the hashes the library does not hold.
pub async fn missing(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(list): ApiJson<ChunkList>,
) -> Result<Json<ChunkList>> {
    principal.require_admin()?;
    state.require_central("uploading package content")?;
    check_list(&list)?;
    let store = state.store.clone();
    let hashes = blocking(move || {
        Ok(list
            .hashes
            .into_iter()
            .filter(|hash| !store.contains(hash))
            .collect())
    })
    .await?;
    Ok(Json(ChunkList::of(hashes)))
}

/// Bytes of frames verified and stored per blocking batch.
const STORE_BATCH_BYTES: usize = 4 * 1024 * 1024;

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
            let store = state.store.clone();
            let work = std::mem::take(&mut batch);
            batch_bytes = 0;
            let (received, stored, stored_bytes) = blocking(move || {
                let chunks: Vec<(ChunkHash, &[u8])> = work
                    .iter()
                    .map(|(hash, encoded)| (*hash, encoded.as_ref()))
                    .collect();
                let outcomes = store.put_encoded_batch(&chunks).map_err(|err| match err {
                    cascade_content::Error::Corrupt { hash, .. } => Error::invalid(
                        "corrupt_chunk",
                        format!("chunk {hash} does not match its content: {err}"),
                    ),
                    other => Error::from(other),
                })?;
                let (mut stored, mut stored_bytes) = (0u64, 0u64);
                for outcome in outcomes.iter().filter(|outcome| outcome.newly_stored) {
                    stored += 1;
                    stored_bytes += outcome.stored_bytes;
                }
                Ok((work.len() as u64, stored, stored_bytes))
            })
            .await?;
            report.received += received;
            report.stored += stored;
            report.stored_bytes += stored_bytes;
        }
        if done {
            return Ok(Json(report));
        }
    }
}

/// Bytes of frames sent per body piece to a DP.
const SEND_PIECE_BYTES: usize = 1024 * 1024;
/// Bytes of frames sent per body piece to a child site: small, so that the
/// rate limit paces smoothly and a transfer cut short loses little.
const CHILD_PIECE_BYTES: usize = 128 * 1024;

/// `POST /api/v1/content/fetch`: streams the asked chunks as frames, each
/// read from the library and verified on the way out. A DP gets every chunk
/// or an error naming the first one missing; a child site asking `partial`
/// gets the chunks held here and none of the others (this site may still be
/// bringing them in from its own parent), paced to its link's rate limit.
pub async fn fetch(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(list): ApiJson<ChunkList>,
) -> Result<Response> {
    let child = match &principal {
        Principal::Dp { .. } => None,
        Principal::Site { code } => Some(code.clone()),
        other => {
            other.require_dp()?;
            None
        }
    };
    check_list(&list)?;
    let store = state.store.clone();
    let hashes = list.hashes.clone();
    let partial = list.partial && child.is_some();
    let held: Vec<ChunkHash> = blocking(move || {
        let mut held = Vec::with_capacity(hashes.len());
        for hash in hashes {
            if store.contains(&hash) {
                held.push(hash);
            } else if !partial {
                return Err(Error::invalid(
                    "unknown_chunk",
                    format!("chunk {hash} is not in this site's library"),
                ));
            }
        }
        Ok(held)
    })
    .await?;
    let (piece_bytes, pacing) = match &child {
        Some(code) => {
            crate::hierarchy::touch(&state, code).await?;
            let rate: Option<i64> = sqlx::query_scalar("SELECT max_rate FROM sites WHERE code = ?")
                .bind(code)
                .fetch_one(state.db.pool())
                .await?;
            (
                CHILD_PIECE_BYTES,
                Some((
                    code.clone(),
                    rate.map(|rate| rate as u64),
                    state.links.clone(),
                )),
            )
        }
        None => (SEND_PIECE_BYTES, None),
    };
    let (sender, receiver) =
        tokio::sync::mpsc::channel::<std::result::Result<Bytes, std::io::Error>>(2);
    let store = state.store.clone();
    tokio::task::spawn_blocking(move || {
        let send = |piece: Bytes| {
            if let Some((child, rate, links)) = &pacing {
                std::thread::sleep(links.reserve(child, piece.len() as u64, *rate));
            }
            sender.blocking_send(Ok(piece)).is_ok()
        };
        let mut piece = bytes::BytesMut::new();
        for hash in &held {
            match store.get_encoded(hash) {
                Ok(encoded) => put_frame(&mut piece, hash, &encoded),
                Err(err) => {
                    tracing::error!(chunk = %hash, error = %cascade_protocol::chain(&err), "chunk in the library failed verification");
                    let _ = sender.blocking_send(Err(std::io::Error::other(err.to_string())));
                    return;
                }
            }
            if piece.len() >= piece_bytes && !send(piece.split().freeze()) {
                return;
            }
        }
        if !piece.is_empty() {
            send(piece.freeze());
        }
    });
    let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|item| (item, receiver))
    });
    Response::builder()
        .header("content-type", "application/octet-stream")
        .body(Body::from_stream(stream))
        .map_err(|err| Error::Internal(err.to_string()))
}

/// `GET /v1/chunks/{hash}`: one chunk's encoded form, verified on the way
/// out, as a DP serves it. The site is its agents' source of last resort: a
/// job whose DPs do not hold the content (none at this site, or still
/// transferring) is downloaded from here.
pub async fn serve_chunk(
    State(state): State<AppState>,
    axum::extract::Path(hash): axum::extract::Path<String>,
) -> Result<Response> {
    let hash = ChunkHash::from_hex(&hash).map_err(|err| {
        Error::invalid(
            "malformed_request",
            format!("{hash:?} is not a chunk hash: {err}"),
        )
    })?;
    let store = state.store.clone();
    let encoded = blocking(move || match store.get_encoded(&hash) {
        Ok(encoded) => Ok(Some(encoded)),
        Err(cascade_content::Error::NotFound { .. }) => Ok(None),
        Err(err) => Err(err.into()),
    })
    .await?
    .ok_or_else(|| Error::NotFound {
        what: "chunk",
        name: hash.to_string(),
    })?;
    Response::builder()
        .header("content-type", "application/octet-stream")
        .body(Body::from(encoded))
        .map_err(|err| Error::Internal(err.to_string()))
}
