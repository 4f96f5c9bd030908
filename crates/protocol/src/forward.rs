//! The status forwarder: the worker that empties a process's outbox into its
//! site, in order, with the workers' backoff while the site is unreachable.

use crate::status_signing::StatusSigner;
use crate::worker::{Failed, Step, Worker};
use crate::{Client, StatusAck, StatusBatch, StatusBody, StatusMessage};
use cascade_store::{Outbox, OutboxEntry};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// Messages sent per request.
const BATCH: u32 = 500;
/// Idle re-check interval when no wake-up came.
const IDLE_CHECK: Duration = Duration::from_secs(5);

/// Forwards the outbox until `shutdown` turns true, as a [`Worker`]. `wake`
/// is notified by whoever pushes a message, so that messages leave within
/// milliseconds; while the site is unreachable or refuses the batch, the
/// worker backs off.
pub async fn forward_status(
    outbox: Outbox,
    client: Client,
    signer: Option<StatusSigner>,
    wake: Arc<Notify>,
    shutdown: watch::Receiver<bool>,
) {
    Worker::new("status forwarding", shutdown)
        .woken_by(&wake)
        .idle(IDLE_CHECK)
        .run(|| async {
            match forward_signed(&outbox, &client, signer.as_ref()).await {
                Ok(0) => Ok(Step::Idle),
                Ok(_) => Ok(Step::Again),
                Err(err) => Err(Failed(err)),
            }
        })
        .await
}

/// Sends one batch; returns how many messages it carried.
///
/// Only the batch's messages up to the acknowledged number are dropped
/// from the outbox (see [`StatusAck`]): an answer naming a larger number
/// drops nothing that was not sent. When the site holds one of the
/// numbers with other content (this outbox was restored from a backup), the
/// messages from it on are renumbered past the site's highest number and
/// go out with the next batch.
pub async fn forward_once(outbox: &Outbox, client: &Client) -> Result<usize, String> {
    forward_signed(outbox, client, None).await
}

/// [`forward_once`], each message signed by `signer` when given.
pub async fn forward_signed(
    outbox: &Outbox,
    client: &Client,
    signer: Option<&StatusSigner>,
) -> Result<usize, String> {
    let entries = outbox.pending(BATCH).await.map_err(|err| err.to_string())?;
    if entries.is_empty() {
        return Ok(0);
    }
    let mut messages = Vec::with_capacity(entries.len());
    for entry in &entries {
        let body: StatusBody = serde_json::from_str(&entry.body)
            .map_err(|err| format!("outbox message {} does not parse: {err}", entry.seq))?;
        let mut message = StatusMessage {
            seq: entry.seq,
            at_ms: entry.at_ms,
            body,
            signature: None,
        };
        if let Some(signer) = signer {
            signer.sign(&mut message);
        }
        messages.push(message);
    }
    let ack = client
        .post_status(&StatusBatch { messages })
        .await
        .map_err(|err| err.to_string())?;
    apply_ack(outbox, &entries, &ack).await
}

/// What the sender does with the answer to `batch`: drops what it covers
/// and renumbers what the site holds under other content. Returns how many
/// messages the batch carried, or why the answer moved nothing forward.
async fn apply_ack(
    outbox: &Outbox,
    batch: &[OutboxEntry],
    ack: &StatusAck,
) -> Result<usize, String> {
    let dropped = outbox
        .ack_batch(batch, ack.acked_seq)
        .await
        .map_err(|err| err.to_string())?;
    if let Some(from) = ack.renumber_from {
        let in_batch = batch.iter().any(|entry| entry.seq == from);
        let next = ack.high_water_seq.saturating_add(1);
        if !in_batch || next <= from {
            return Err(format!(
                "the site asked to renumber from {from} past {}, which does not fit the batch it was sent",
                ack.high_water_seq
            ));
        }
        tracing::warn!(
            from,
            next,
            "the site holds other messages under these numbers (this outbox was restored from a backup?); renumbering the waiting messages"
        );
        outbox
            .renumber(from, next)
            .await
            .map_err(|err| err.to_string())?;
        return Ok(batch.len());
    }
    if dropped == 0 {
        // Nothing moved: sending the batch again at once would only spin.
        return Err(format!(
            "the site acknowledged {} for a batch of messages {} to {}",
            ack.acked_seq,
            batch[0].seq,
            batch[batch.len() - 1].seq
        ));
    }
    Ok(batch.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cascade_store::{Db, OUTBOX_SCHEMA};

    async fn outbox_with(count: u64) -> (tempfile::TempDir, Outbox) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("o.db"), true, &[OUTBOX_SCHEMA])
            .await
            .unwrap();
        let outbox = Outbox::new(db);
        for n in 1..=count {
            outbox.push(n as i64, "{}").await.unwrap();
        }
        (dir, outbox)
    }

    fn seqs(entries: &[OutboxEntry]) -> Vec<u64> {
        entries.iter().map(|entry| entry.seq).collect()
    }

    /// Issue 10: the site answered with the highest number it ever stored
    /// (a forged 500), and the forwarder dropped messages queued after the
    /// batch was sent.
    #[tokio::test]
    async fn status_ack_never_covers_more_than_the_batch() {
        let (_dir, outbox) = outbox_with(46).await;
        let batch = outbox.pending(BATCH).await.unwrap();
        outbox.push(47, "{}").await.unwrap();
        outbox.push(48, "{}").await.unwrap();
        let ack = StatusAck {
            acked_seq: 500,
            stored: 46,
            high_water_seq: 500,
            ..StatusAck::default()
        };
        assert_eq!(apply_ack(&outbox, &batch, &ack).await.unwrap(), 46);
        assert_eq!(seqs(&outbox.pending(BATCH).await.unwrap()), vec![47, 48]);
    }

    #[tokio::test]
    async fn an_ack_that_covers_nothing_is_an_error_not_a_loop() {
        let (_dir, outbox) = outbox_with(3).await;
        let batch = outbox.pending(BATCH).await.unwrap();
        let ack = StatusAck::default();
        assert!(apply_ack(&outbox, &batch, &ack).await.is_err());
        assert_eq!(seqs(&outbox.pending(BATCH).await.unwrap()), vec![1, 2, 3]);
    }

    /// An outbox restored from a backup numbers new messages again from
    /// where the backup was; the site holds those numbers with other
    /// content and asks for them to be renumbered past its highest.
    #[tokio::test]
    async fn a_restored_outbox_renumbers_past_the_site() {
        let (_dir, outbox) = outbox_with(5).await;
        let batch = outbox.pending(BATCH).await.unwrap();
        let ack = StatusAck {
            acked_seq: 2,
            duplicates: 2,
            high_water_seq: 40,
            renumber_from: Some(3),
            ..StatusAck::default()
        };
        assert_eq!(apply_ack(&outbox, &batch, &ack).await.unwrap(), 5);
        assert_eq!(
            seqs(&outbox.pending(BATCH).await.unwrap()),
            vec![41, 42, 43]
        );
        assert_eq!(outbox.push(6, "{}").await.unwrap(), 44);
        // A renumbering that does not fit the batch is refused.
        let batch = outbox.pending(BATCH).await.unwrap();
        let bad = StatusAck {
            high_water_seq: 10,
            renumber_from: Some(41),
            ..StatusAck::default()
        };
        assert!(apply_ack(&outbox, &batch, &bad).await.is_err());
        assert_eq!(
            seqs(&outbox.pending(BATCH).await.unwrap()),
            vec![41, 42, 43, 44]
        );
    }
}
