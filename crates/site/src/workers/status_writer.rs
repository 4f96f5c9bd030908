//! The status writer: stores the batches DPs and agents deliver, many per
//! transaction.

use crate::error::Error;
use crate::service::status::{store_group, GROUP_MESSAGES};
use crate::state::{AppState, Pending};

/// Stores the batches DPs and agents deliver, many per transaction (group
/// commit): a batch waits for the transaction in progress, then goes in
/// with every batch that arrived meanwhile, and each is acknowledged once
/// that transaction is on disk. One commit per batch would cap a site at a
/// few thousand batches per second, whatever their size.
pub async fn status_writer(state: AppState, mut queue: tokio::sync::mpsc::Receiver<Pending>) {
    let mut shutdown = state.shutdown.clone();
    loop {
        let first = tokio::select! {
            first = queue.recv() => first,
            _ = shutdown.changed() => None,
        };
        let Some(first) = first else { return };
        let mut count = first.messages.len();
        let mut group = vec![first];
        while count < GROUP_MESSAGES {
            match queue.try_recv() {
                Ok(next) => {
                    count += next.messages.len();
                    group.push(next);
                }
                Err(_) => break,
            }
        }
        match store_group(&state, &group).await {
            Ok(acks) => {
                if acks
                    .iter()
                    .any(|ack| matches!(ack, Ok(ack) if ack.stored > 0))
                {
                    state.notify_status_stored();
                }
                for (pending, ack) in group.into_iter().zip(acks) {
                    let _ = pending.reply.send(ack);
                }
            }
            Err(err) => {
                tracing::warn!(error = %cascade_protocol::chain(&err), batches = group.len(), "storing status messages failed");
                let message = err.to_string();
                for pending in group {
                    let _ = pending.reply.send(Err(Error::Internal(format!(
                        "storing status messages: {message}"
                    ))));
                }
            }
        }
    }
}
