//! The status forwarder: the worker that empties a process's outbox into its
//! site, in order, with backoff while the site is unreachable.

use crate::{Client, StatusBatch, StatusBody, StatusMessage};
use cascade_store::Outbox;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// Messages sent per request.
const BATCH: u32 = 500;
/// Longest wait between retries while the site is unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Idle re-check interval when no wake-up came.
const IDLE_CHECK: Duration = Duration::from_secs(5);

/// Forwards the outbox until `shutdown` turns true. `wake` is notified by
/// whoever pushes a message, so that messages leave within milliseconds.
pub async fn forward_status(
    outbox: Outbox,
    client: Client,
    wake: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(250);
    loop {
        if *shutdown.borrow() {
            return;
        }
        match forward_once(&outbox, &client).await {
            Ok(0) => {
                backoff = Duration::from_millis(250);
                tokio::select! {
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep(IDLE_CHECK) => {}
                    _ = shutdown.changed() => {}
                }
            }
            Ok(_) => backoff = Duration::from_millis(250),
            Err(err) => {
                tracing::warn!(error = %err, retry_in_ms = backoff.as_millis() as u64, "status forwarding failed");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Sends one batch; returns how many messages it carried.
pub async fn forward_once(outbox: &Outbox, client: &Client) -> Result<usize, String> {
    let entries = outbox.pending(BATCH).await.map_err(|err| err.to_string())?;
    if entries.is_empty() {
        return Ok(0);
    }
    let mut messages = Vec::with_capacity(entries.len());
    for entry in &entries {
        let body: StatusBody = serde_json::from_str(&entry.body)
            .map_err(|err| format!("outbox message {} does not parse: {err}", entry.seq))?;
        messages.push(StatusMessage {
            seq: entry.seq,
            at_ms: entry.at_ms,
            body,
        });
    }
    let ack = client
        .post_status(&StatusBatch { messages })
        .await
        .map_err(|err| err.to_string())?;
    outbox
        .ack(ack.acked_seq)
        .await
        .map_err(|err| err.to_string())?;
    Ok(entries.len())
}
