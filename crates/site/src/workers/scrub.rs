//! The scrub: every stored chunk verified against its name once per
//! `site run --scrub-pass`, paced evenly; damage is repaired
//! (`service::repair`).

use super::worker;
use crate::error::{Error, Result};
use crate::service::repair::ScrubWork;
use crate::state::AppState;
use cascade_protocol::worker::{Step, Work};
use std::time::Duration;

/// Runs until the site shuts down.
pub async fn scrub_worker(state: AppState, pass: Duration) {
    worker(&state, "verifying stored content")
        .run(ScrubWork::new(&state, pass))
        .await
}

impl Work for ScrubWork {
    type Error = Error;

    async fn step(&mut self) -> Result<Step> {
        ScrubWork::step(self).await
    }
}
