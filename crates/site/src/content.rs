//! Content routes: which chunks the library lacks, uploading chunks into it,
//! and streaming chunks out to DPs.

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
    Ok(Json(ChunkList { hashes }))
}

/// Bytes of frames verified and stored per blocking batch.
const STORE_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// `POST /api/v1/content/chunks`: a stream of chunk frames. Every chunk is
/// verified against its hash before it is stored; a bad one ends the request
/// with an error naming it, and the chunks before it stay (they are valid and
/// content-addressed, so nothing is damaged).
pub async fn upload(
    State(state): State<AppState>,
    principal: Principal,
    body: Body,
) -> Result<Json<UploadReport>> {
    principal.require_admin()?;
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
                let (mut stored, mut stored_bytes) = (0u64, 0u64);
                for (hash, encoded) in &work {
                    let outcome = store.put_encoded(hash, encoded).map_err(|err| match err {
                        cascade_content::Error::Corrupt { .. } => Error::invalid(
                            "corrupt_chunk",
                            format!("chunk {hash} does not match its content: {err}"),
                        ),
                        other => Error::from(other),
                    })?;
                    if outcome.newly_stored {
                        stored += 1;
                        stored_bytes += outcome.stored_bytes;
                    }
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

/// Bytes of frames sent per body piece.
const SEND_PIECE_BYTES: usize = 1024 * 1024;

/// `POST /api/v1/content/fetch`: streams the asked chunks as frames, each
/// read from the library and verified on the way out.
pub async fn fetch(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(list): ApiJson<ChunkList>,
) -> Result<Response> {
    principal.require_dp()?;
    check_list(&list)?;
    let store = state.store.clone();
    let hashes = list.hashes.clone();
    let unknown =
        blocking(move || Ok(hashes.into_iter().find(|hash| !store.contains(hash)))).await?;
    if let Some(unknown) = unknown {
        return Err(Error::invalid(
            "unknown_chunk",
            format!("chunk {unknown} is not in this site's library"),
        ));
    }
    let (sender, receiver) =
        tokio::sync::mpsc::channel::<std::result::Result<Bytes, std::io::Error>>(4);
    let store = state.store.clone();
    tokio::task::spawn_blocking(move || {
        let mut piece = bytes::BytesMut::new();
        for hash in &list.hashes {
            match store.get_encoded(hash) {
                Ok(encoded) => put_frame(&mut piece, hash, &encoded),
                Err(err) => {
                    tracing::error!(chunk = %hash, error = %err, "chunk in the library failed verification");
                    let _ = sender.blocking_send(Err(std::io::Error::other(err.to_string())));
                    return;
                }
            }
            if piece.len() >= SEND_PIECE_BYTES
                && sender.blocking_send(Ok(piece.split().freeze())).is_err()
            {
                return;
            }
        }
        if !piece.is_empty() {
            let _ = sender.blocking_send(Ok(piece.freeze()));
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
