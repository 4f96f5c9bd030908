//! The retention worker: retires the versions the site no longer keeps and
//! removes the chunks no kept version uses (`service::retention`), every
//! minute and whenever a version may have stopped being needed.

use super::worker;
use crate::service::retention::{collect, retire_due};
use crate::state::AppState;
use cascade_protocol::worker::Step;
use std::time::Duration;

/// How often retention is applied without a wake-up.
const EVERY: Duration = Duration::from_secs(60);

/// Runs until the site shuts down; `grace` is `site run --chunk-grace`.
pub async fn retention_worker(state: AppState, grace: Duration) {
    worker(&state, "applying retention")
        .woken_by(&state.wakes.retention)
        .idle(EVERY)
        .run(|| async {
            retire_due(&state).await?;
            let collected = collect(&state, grace).await?;
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
            Ok::<_, crate::Error>(match collected.next_due {
                Some(due) if due < EVERY => Step::After(due + Duration::from_millis(100)),
                _ => Step::Idle,
            })
        })
        .await
}
