//! The content worker: a child site brings in the content it needs.

use super::worker;
use crate::error::{Error, Result};
use crate::service::receive::ContentWork;
use crate::state::AppState;
use cascade_protocol::worker::{Step, Work};
use std::time::Duration;

/// The child's content worker: brings in what the site needs until
/// shutdown, woken when what it needs may have changed, retrying with the
/// workers' backoff while the parent is unreachable.
pub async fn content_worker(state: AppState) {
    let Some(work) = ContentWork::new(&state) else {
        return;
    };
    worker(&state, "bringing content in")
        .woken_by(&state.wakes.content)
        .idle(Duration::from_secs(5))
        .run(work)
        .await
}

impl Work for ContentWork {
    type Error = Error;

    async fn step(&mut self) -> Result<Step> {
        self.round_all().await
    }
}
