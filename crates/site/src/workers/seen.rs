//! Writes agents' poll times down in batches.

use crate::state::{AppState, SEEN_FLUSH};

/// Writes agents' poll times down every [`SEEN_FLUSH`], and once more at
/// shutdown.
pub async fn seen_worker(state: AppState) {
    let mut shutdown = state.shutdown.clone();
    loop {
        let stopping = tokio::select! {
            _ = tokio::time::sleep(SEEN_FLUSH) => false,
            _ = shutdown.changed() => true,
        };
        if let Err(err) = state.seen.flush(&state.db).await {
            tracing::warn!(error = %cascade_protocol::chain(&err), "recording when agents were seen failed; will retry");
        }
        if stopping || *shutdown.borrow() {
            return;
        }
    }
}
