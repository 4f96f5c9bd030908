//! Continuous content validation at a DP (issue 13). A sender no longer
//! decodes and hashes every chunk it sends (it checks the record's stored
//! checksum); instead every stored chunk is verified against its name on
//! a schedule, a whole pass of the store every `dp run --scrub-pass`
//! ([`DEFAULT_PASS`] unless given), paced evenly over the pass. A chunk
//! that does not verify queues the packages using it for repair (the sync
//! worker removes and fetches it again).

use crate::db;
use crate::error::{Error, Result};
use crate::Dp;
use cascade_content::ChunkHash;
use cascade_protocol::worker::{Step, Work, Worker};
use std::time::Duration;
use tokio::sync::watch;

/// A whole pass of the store this often unless `dp run --scrub-pass` says.
pub const DEFAULT_PASS: Duration = Duration::from_secs(7 * 24 * 3600);
/// Shortest wait between two steps, however short the pass.
const MIN_STEP_WAIT: Duration = Duration::from_secs(1);
/// Longest wait between two steps, however long the pass.
const MAX_STEP_WAIT: Duration = Duration::from_secs(600);

/// Runs until `stop` turns true.
pub(crate) async fn run(dp: Dp, pass: Duration, stop: watch::Receiver<bool>) {
    Worker::new("verifying stored content", stop)
        .run(Scrub {
            dp,
            pass,
            todo: Vec::new(),
            per_step: 0,
        })
        .await
}

struct Scrub {
    dp: Dp,
    pass: Duration,
    /// The chunks of this pass not verified yet (stored ones when the pass
    /// began; a chunk stored since was verified when stored).
    todo: Vec<ChunkHash>,
    /// How many to verify per step in this pass.
    per_step: usize,
}

impl Work for Scrub {
    type Error = Error;

    async fn step(&mut self) -> Result<Step> {
        let wait = (self.pass / 1000).clamp(MIN_STEP_WAIT, MAX_STEP_WAIT);
        if self.todo.is_empty() {
            let store = self.dp.store.clone();
            self.todo = tokio::task::spawn_blocking(move || store.list())
                .await
                .map_err(|err| Error::Config(format!("scrub task failed: {err}")))??
                .into_iter()
                .map(|chunk| chunk.hash)
                .collect();
            let steps = (self.pass.as_millis() / wait.as_millis()).max(1) as usize;
            self.per_step = self.todo.len().div_ceil(steps).max(1);
            if self.todo.is_empty() {
                return Ok(Step::After(wait));
            }
        }
        let take = self.per_step.min(self.todo.len());
        let batch: Vec<ChunkHash> = self.todo.split_off(self.todo.len() - take);
        let store = self.dp.store.clone();
        let damaged = tokio::task::spawn_blocking(move || {
            batch
                .into_iter()
                .filter(|hash| {
                    matches!(store.get(hash), Err(cascade_content::Error::Corrupt { .. }))
                })
                .collect::<Vec<_>>()
        })
        .await
        .map_err(|err| Error::Config(format!("scrub task failed: {err}")))?;
        db::add_counters(&self.dp.db, &[("chunks_scrubbed", take as u64)]).await?;
        if !damaged.is_empty() {
            tracing::warn!(
                chunks = damaged.len(),
                "stored chunks failed verification; repairing"
            );
            self.dp.repair_packages_using(&damaged).await?;
        }
        Ok(Step::After(wait))
    }
}
