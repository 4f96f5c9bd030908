//! The retention worker: retires the versions the site no longer keeps
//! (`service::retention::retire_due`, cheap queries, every minute and on
//! every wake-up) and removes the chunks no kept version uses
//! (`collect`, which reads every kept manifest and the whole library
//! index): only when versions were retired, when a chunk left for its
//! grace is due, and hourly for chunks of uploads never committed.

use super::worker;
use crate::service::retention::{collect, retire_due};
use crate::state::AppState;
use cascade_protocol::worker::{Step, Work};
use std::time::{Duration, Instant};

/// How often retention is looked at without a wake-up.
const EVERY: Duration = Duration::from_secs(60);
/// Longest time between two collections.
const COLLECT_EVERY: Duration = Duration::from_secs(3600);

/// Runs until the site shuts down; `grace` is `site run --chunk-grace`.
pub async fn retention_worker(state: AppState, grace: Duration) {
    worker(&state, "applying retention")
        .woken_by(&state.wakes.retention)
        .idle(EVERY)
        .run(Retention {
            state: state.clone(),
            grace,
            collect_at: Instant::now(),
        })
        .await
}

struct Retention {
    state: AppState,
    grace: Duration,
    /// When the next collection is due without a retirement.
    collect_at: Instant,
}

impl Work for Retention {
    type Error = crate::Error;

    async fn step(&mut self) -> crate::Result<Step> {
        let retired = retire_due(&self.state).await?;
        if retired.is_empty() && Instant::now() < self.collect_at {
            return Ok(Step::After((self.collect_at - Instant::now()).min(EVERY)));
        }
        let collected = collect(&self.state, self.grace).await?;
        if collected.chunks > 0 || collected.compacted.packs_removed > 0 {
            tracing::info!(
                chunks = collected.chunks,
                bytes = collected.bytes,
                packs_compacted = collected.compacted.packs_removed,
                disk_freed = collected.compacted.bytes_freed,
                "removed chunks no kept version uses"
            );
        }
        if !collected.compacted.damaged.is_empty() {
            tracing::warn!(
                chunks = collected.compacted.damaged.len(),
                "stored chunks found damaged while compacting were dropped"
            );
        }
        // Again when the next chunk left for its grace is due.
        let wait = collected.next_due.map_or(COLLECT_EVERY, |due| {
            (due + Duration::from_millis(100)).min(COLLECT_EVERY)
        });
        self.collect_at = Instant::now() + wait;
        Ok(Step::After(wait.min(EVERY)))
    }
}
