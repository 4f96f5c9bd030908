//! Continuous content validation at a DP (issue 13). A sender no longer
//! decodes and hashes every chunk it sends (it checks the record's stored
//! checksum); instead every stored chunk is verified against its name on
//! a schedule, a whole pass of the store every `dp run --scrub-pass`
//! ([`DEFAULT_PASS`] unless given), paced evenly over the pass
//! ([`cascade_content::Scrubber`]). A chunk that does not verify queues the
//! packages using it for repair (the sync worker removes and fetches it
//! again).

use crate::db;
use crate::error::{Error, Result};
use crate::Dp;
use cascade_content::Scrubber;
use cascade_protocol::worker::{Step, Work, Worker};
use std::time::Duration;
use tokio::sync::watch;

/// A whole pass of the store this often unless `dp run --scrub-pass` says.
pub const DEFAULT_PASS: Duration = cascade_content::DEFAULT_SCRUB_PASS;

/// Runs until `stop` turns true.
pub(crate) async fn run(dp: Dp, pass: Duration, stop: watch::Receiver<bool>) {
    Worker::new("verifying stored content", stop)
        .run(Scrub {
            dp,
            pass,
            scrubber: None,
        })
        .await
}

struct Scrub {
    dp: Dp,
    pass: Duration,
    /// The pass in progress, lent to the blocking thread during a step
    /// (a new pass starts if a step's thread failed).
    scrubber: Option<Scrubber>,
}

impl Work for Scrub {
    type Error = Error;

    async fn step(&mut self) -> Result<Step> {
        let mut scrubber = self
            .scrubber
            .take()
            .unwrap_or_else(|| Scrubber::new(self.pass));
        let wait = scrubber.wait();
        let store = self.dp.store.clone();
        let (scrubber, scrubbed) = tokio::task::spawn_blocking(move || {
            let scrubbed = scrubber.step(&store);
            (scrubber, scrubbed)
        })
        .await
        .map_err(|err| Error::Config(format!("scrub task failed: {err}")))?;
        self.scrubber = Some(scrubber);
        let scrubbed = scrubbed?;
        for (hash, err) in &scrubbed.unreadable {
            tracing::warn!(chunk = %hash, error = %cascade_protocol::chain(err), "a stored chunk could not be read to verify it");
        }
        db::add_counters(&self.dp.db, &[("chunks_scrubbed", scrubbed.verified)]).await?;
        if !scrubbed.damaged.is_empty() {
            tracing::warn!(
                chunks = scrubbed.damaged.len(),
                "stored chunks failed verification; repairing"
            );
            self.dp.repair_packages_using(&scrubbed.damaged).await?;
        }
        Ok(Step::After(wait))
    }
}
