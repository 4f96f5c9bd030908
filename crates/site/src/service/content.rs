//! The content library as the routes use it: which chunks it lacks,
//! storing verified chunks, and reading chunks out for DPs, child sites
//! and agents.

use crate::db;
use crate::error::{Entity, Error, Result};
use crate::service::{hierarchy, repair};
use crate::state::{AppState, Links};
use bytes::Bytes;
use cascade_content::ChunkHash;
use cascade_protocol::frames::{put_frame_with, FRAME_HEADER, MAX_FRAME_PAYLOAD};
use cascade_protocol::{ChunkList, MAX_HASHES_PER_REQUEST};
use cascade_store::now_ms;
use std::sync::Arc;

/// Refuses a list of more hashes than one request may carry.
pub fn check_list(list: &ChunkList) -> Result<()> {
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
        .map_err(Error::task("blocking task failed"))?
}

/// The hashes of `list` the library does not hold.
pub async fn missing(state: &AppState, list: ChunkList) -> Result<Vec<ChunkHash>> {
    state.require_central("uploading package content")?;
    check_list(&list)?;
    let store = state.store.clone();
    blocking(move || {
        let (held, missing): (Vec<ChunkHash>, Vec<ChunkHash>) = list
            .hashes
            .into_iter()
            .partition(|hash| store.contains(hash));
        // The upload relies on these from now on: used, so that the
        // retention's grace keeps them until the version is committed.
        store.touch(&held, std::time::SystemTime::now())?;
        Ok(missing)
    })
    .await
}

/// What one stored batch of uploaded chunks counted.
#[derive(Default)]
pub struct Stored {
    /// Chunks received.
    pub received: u64,
    /// Chunks new to the library.
    pub stored: u64,
    /// Their stored bytes.
    pub stored_bytes: u64,
}

/// Verifies every chunk of a batch against its hash and stores them; a bad
/// one refuses the whole batch (nothing of it is stored).
pub async fn store_batch(state: &AppState, work: Vec<(ChunkHash, Bytes)>) -> Result<Stored> {
    let store = state.store.clone();
    blocking(move || {
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
        let mut stored = Stored {
            received: work.len() as u64,
            ..Stored::default()
        };
        for outcome in outcomes.iter().filter(|outcome| outcome.newly_stored) {
            stored.stored += 1;
            stored.stored_bytes += outcome.stored_bytes;
        }
        Ok(stored)
    })
    .await
}

/// Who is fetching chunks: a DP of this site, or a child site (paced to
/// its link's rate limit). Either is given only what is held here when it
/// asks for a `partial` answer (content still arriving from the parent),
/// and otherwise every chunk or an error naming the first one missing.
pub enum Fetcher {
    /// A DP of this site.
    Dp,
    /// A direct child site, by code.
    Child(String),
}

/// Bytes of frames sent per body piece to a DP.
const SEND_PIECE_BYTES: usize = 1024 * 1024;
/// Bytes of frames sent per body piece to a child site: small, so that the
/// rate limit paces smoothly and a transfer cut short loses little.
const CHILD_PIECE_BYTES: usize = 128 * 1024;

/// A child's link: its code, its rate limit, and the pacer every stream to
/// it shares.
type Pacing = (String, Option<u64>, Arc<Links>);

/// One piece of a chunk stream, or the error that ends it.
pub type Piece = std::result::Result<Bytes, std::io::Error>;

/// Starts streaming the asked chunks as frames, each read from the library
/// into the piece being sent and checked against its record checksum on
/// the way out; the pieces arrive on the returned channel.
/// Which chunks are held is checked first, so that a DP asking for one the
/// library lacks gets an error rather than a stream.
pub async fn fetch(
    state: &AppState,
    fetcher: &Fetcher,
    list: &ChunkList,
) -> Result<tokio::sync::mpsc::Receiver<Piece>> {
    check_list(list)?;
    let store = state.store.clone();
    let hashes = list.hashes.clone();
    let partial = list.partial;
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
    let (piece_bytes, pacing): (usize, Option<Pacing>) = match fetcher {
        Fetcher::Child(code) => {
            if state.links.touch_due(code) {
                hierarchy::touch(state, code).await?;
            }
            let rate = db::site_max_rate(state.db.pool(), code).await?;
            (
                CHILD_PIECE_BYTES,
                Some((
                    code.clone(),
                    rate.map(|rate| rate as u64),
                    state.links.clone(),
                )),
            )
        }
        Fetcher::Dp => (SEND_PIECE_BYTES, None),
    };
    let (sender, receiver) = tokio::sync::mpsc::channel::<Piece>(2);
    let store = state.store.clone();
    let repairs = (tokio::runtime::Handle::current(), state.clone());
    tokio::task::spawn_blocking(move || {
        let send = |piece: Bytes| {
            if let Some((child, rate, links)) = &pacing {
                std::thread::sleep(links.reserve(child, piece.len() as u64, *rate));
            }
            sender.blocking_send(Ok(piece)).is_ok()
        };
        // Each chunk is read straight into the piece being filled (no
        // buffer of its own, no copy), and a full piece is handed over
        // whole.
        let capacity = piece_bytes + FRAME_HEADER + MAX_FRAME_PAYLOAD as usize;
        let mut piece: Vec<u8> = Vec::with_capacity(capacity);
        for hash in &held {
            if let Err(err) =
                put_frame_with(&mut piece, hash, |out| store.get_encoded_into(hash, out))
            {
                tracing::error!(chunk = %hash, error = %cascade_protocol::chain(&err), "chunk in the library failed verification");
                if matches!(err, cascade_content::Error::Corrupt { .. }) {
                    let (runtime, state) = (repairs.0.clone(), repairs.1.clone());
                    let damaged = vec![*hash];
                    runtime.spawn(async move { log_repair(&state, damaged).await });
                }
                let _ = sender.blocking_send(Err(std::io::Error::other(err.to_string())));
                return;
            }
            if piece.len() >= piece_bytes {
                let full = std::mem::replace(&mut piece, Vec::with_capacity(capacity));
                if !send(Bytes::from(full)) {
                    return;
                }
            }
        }
        if !piece.is_empty() {
            send(Bytes::from(piece));
        }
    });
    Ok(receiver)
}

/// Repairs chunks found damaged while serving them, logging a failure
/// (the scrub finds them again otherwise).
async fn log_repair(state: &AppState, damaged: Vec<ChunkHash>) {
    if let Err(err) = repair::repair(state, damaged).await {
        tracing::warn!(error = %cascade_protocol::chain(&err), "repairing a damaged chunk failed");
    }
}

/// One chunk's encoded form, checked on the way out (a damaged one is
/// repaired and not served).
pub async fn chunk(state: &AppState, hash: &str) -> Result<Vec<u8>> {
    let hash = ChunkHash::from_hex(hash).map_err(|err| {
        Error::invalid(
            "malformed_request",
            format!("{hash:?} is not a chunk hash: {err}"),
        )
    })?;
    let store = state.store.clone();
    let read = blocking(move || match store.get_encoded(&hash) {
        Ok(encoded) => Ok(Some(encoded)),
        Err(cascade_content::Error::NotFound { .. }) => Ok(None),
        Err(err) => Err(err.into()),
    })
    .await;
    if let Err(Error::Content(cascade_content::Error::Corrupt { .. })) = &read {
        log_repair(state, vec![hash]).await;
    }
    read?.ok_or_else(|| Error::not_found(Entity::Chunk, hash.to_string()))
}

/// Refuses a request for content without a valid content ticket of this
/// site (`ticket`: the `Authorization` header, `Bearer TICKET`).
pub fn check_ticket(state: &AppState, authorization: Option<&str>) -> Result<()> {
    use cascade_protocol::ticket::{bearer, TicketError};
    let ticket = bearer(authorization).ok_or(TicketError::Missing);
    ticket
        .and_then(|ticket| state.content_key.check(ticket, now_ms()))
        .map(|_| ())
        .map_err(|err| Error::Unauthorized(err.to_string()))
}

/// A content ticket for an administrator, valid for at most a day.
pub fn admin_ticket(
    state: &AppState,
    request: &cascade_protocol::ContentTicketRequest,
) -> cascade_protocol::ContentTicket {
    let most = cascade_protocol::ticket::TICKET_VALIDITY_MS;
    let valid = request
        .valid_ms
        .map_or(most, |ms| (ms as i64).clamp(1, most));
    let expires_at_ms = now_ms() + valid;
    cascade_protocol::ContentTicket {
        ticket: state.content_key.issue("admin", expires_at_ms),
        expires_at_ms,
    }
}
