//! The status writer: stores the batches DPs and agents deliver, many per
//! transaction.

use super::worker;
use crate::error::{Error, Result};
use crate::service::status::{store_group, GROUP_MESSAGES};
use crate::state::{AppState, Pending};
use cascade_protocol::worker::{Step, Work};
use tokio::sync::mpsc::Receiver;

/// Stores the batches DPs and agents deliver, many per transaction (group
/// commit): a batch waits for the transaction in progress, then goes in
/// with every batch that arrived meanwhile, and each is acknowledged once
/// that transaction is on disk. One commit per batch would cap a site at a
/// few thousand batches per second, whatever their size.
pub async fn status_writer(state: AppState, queue: Receiver<Pending>) {
    worker(&state, "storing status messages")
        .run(Writer {
            state: state.clone(),
            queue,
        })
        .await
}

struct Writer {
    state: AppState,
    queue: Receiver<Pending>,
}

impl Work for Writer {
    type Error = Error;

    /// One group: every batch waiting, up to [`GROUP_MESSAGES`] messages.
    /// A failed group is answered with the error (each sender delivers
    /// its batch again) before the worker backs off.
    async fn step(&mut self) -> Result<Step> {
        let Some(first) = self.queue.recv().await else {
            return Ok(Step::Done);
        };
        let mut count = first.messages.len();
        let mut group = vec![first];
        while count < GROUP_MESSAGES {
            match self.queue.try_recv() {
                Ok(next) => {
                    count += next.messages.len();
                    group.push(next);
                }
                Err(_) => break,
            }
        }
        match store_group(&self.state, &group).await {
            Ok(acks) => {
                if acks
                    .iter()
                    .any(|ack| matches!(ack, Ok(ack) if ack.stored > 0))
                {
                    self.state.notify_status_stored();
                }
                for (pending, ack) in group.into_iter().zip(acks) {
                    let _ = pending.reply.send(ack);
                }
                Ok(Step::Again)
            }
            Err(err) => {
                let message = cascade_protocol::chain(&err);
                for pending in group {
                    let _ = pending.reply.send(Err(Error::Internal(format!(
                        "storing status messages: {message}"
                    ))));
                }
                Err(err)
            }
        }
    }
}
