//! `cascade site queues`: everything waiting at this site, and why —
//! instructions received and not applied yet, instructions its children
//! have not fetched, content being brought in, status not yet relayed up.
//!
//! The durable queues are read from the database; what the workers are
//! doing right now (the parent's last answer or error, each transfer's
//! state) is kept in memory in [`Progress`].

use crate::db;
use crate::error::{Error, Result};
use crate::service::{receive, timestamp};
use crate::state::AppState;
use cascade_protocol::{
    ContentItem, InboxItem, OutboxQueue, ParentLinkStatus, SiteQueues, WantedVersion,
};
use cascade_store::now_ms;

/// How long a child may be silent and still count as fetching (its long
/// poll lasts 30 s).
const CHILD_SILENCE_MS: i64 = 90_000;

/// `GET /api/v1/site/queues`.
pub async fn queues(state: &AppState) -> Result<SiteQueues> {
    let pool = state.db.pool();
    let now = now_ms();
    let (parent, content_states) = {
        let progress = state.progress.lock().expect("progress lock");
        (
            state.parent.as_ref().map(|parent| ParentLinkStatus {
                code: parent.code().to_owned(),
                url: parent.url().to_owned(),
                last_contact_ms: progress.last_contact_ms,
                error: progress.parent_error.clone(),
            }),
            progress.content.clone(),
        )
    };

    let rows = db::inbox_all(pool).await?;
    let first = rows.first().map(|row| row.seq);
    let inbox = rows
        .into_iter()
        .map(|row| {
            let db::InboxRow {
                seq,
                body,
                received_at_ms,
                attempts,
                last_error,
            } = row;
            let description = serde_json::from_str::<cascade_protocol::Instruction>(&body)
                .map(|instruction| instruction.describe())
                .unwrap_or_else(|_| format!("instruction {seq} (does not parse)"));
            let why = match (Some(seq) == first, last_error) {
                (true, Some(error)) => format!("failed {attempts} time(s), retrying: {error}"),
                (true, None) => "being applied".to_owned(),
                (false, _) => format!("waiting behind instruction {}", first.unwrap_or(seq)),
            };
            InboxItem {
                seq: seq as u64,
                description,
                received_at_ms,
                attempts: attempts as u64,
                why,
            }
        })
        .collect();

    let waiting = db::outbox_waiting(pool).await?;
    let sites = db::subtree(pool).await?;
    let outbox = waiting
        .into_iter()
        .map(|(child, pending, oldest)| {
            let last_seen = sites
                .iter()
                .find(|row| row.code == child)
                .and_then(|row| row.last_seen_ms);
            let why = match last_seen {
                None => format!("{child} has not fetched instructions yet"),
                Some(at) if now - at <= CHILD_SILENCE_MS => format!(
                    "{child} is fetching them (last contact {} s ago)",
                    (now - at) / 1000
                ),
                Some(at) => format!(
                    "{child} is unreachable: silent for {} s; it connects to this site when it can, and nothing is lost meanwhile",
                    (now - at) / 1000
                ),
            };
            OutboxQueue {
                child,
                pending: pending as u64,
                oldest_ms: Some(oldest),
                why,
            }
        })
        .collect();

    let mut content = Vec::new();
    for (want, needed_by) in receive::needs(state).await? {
        let bytes_missing = missing_bytes(state, &want).await.unwrap_or(0);
        let why = content_states
            .get(&want)
            .cloned()
            .unwrap_or_else(|| "queued".to_owned());
        content.push(ContentItem {
            package: want.package,
            version: want.version,
            needed_by,
            bytes_missing,
            why,
        });
    }

    let (status_pending, status_oldest_ms) = if state.parent.is_some() {
        let cursor = db::cursor(pool, "relayed").await?;
        let (count, oldest) = db::messages_pending_after(pool, cursor).await?;
        (count as u64, oldest)
    } else {
        (0, None)
    };

    Ok(SiteQueues {
        site: state.code.to_string(),
        parent,
        inbox,
        outbox,
        content,
        status_pending,
        status_oldest_ms,
        timestamp: timestamp::held(state).await?.map(|(_, held)| held),
    })
}

/// Chunk bytes of a version not in the library yet.
async fn missing_bytes(state: &AppState, want: &WantedVersion) -> Result<u64> {
    let package = db::require_package(state.db.pool(), &want.package).await?;
    let Some((bytes, _)) = db::manifest(state.db.pool(), package.id, want.version as i64).await?
    else {
        return Ok(0);
    };
    let manifest = cascade_content::Manifest::from_bytes(&bytes)?;
    let store = state.store.clone();
    tokio::task::spawn_blocking(move || {
        manifest
            .unique_chunks()
            .iter()
            .filter(|chunk| !store.contains(&chunk.hash))
            .map(|chunk| chunk.size as u64)
            .sum()
    })
    .await
    .map_err(Error::task("blocking task failed"))
}
