//! The queue between the status routes and the status writer.

use crate::error::Result;
use cascade_domain::hierarchy::StatusSource;
use cascade_protocol::{StatusAck, StatusMessage};

/// Batches waiting for the status writer, at most.
pub const QUEUE: usize = 4096;

/// A checked batch of status messages from one DP or agent, waiting to be
/// stored.
pub struct Pending {
    pub(crate) source: StatusSource,
    pub(crate) sender_id: i64,
    pub(crate) messages: Vec<StatusMessage>,
    pub(crate) received: i64,
    pub(crate) reply: tokio::sync::oneshot::Sender<Result<StatusAck>>,
}
