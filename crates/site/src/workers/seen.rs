//! Writes agents' poll times down in batches.

use super::worker;
use crate::state::{AppState, SEEN_FLUSH};
use cascade_protocol::worker::Step;

/// Writes agents' poll times down every [`SEEN_FLUSH`], and once more at
/// shutdown.
pub async fn seen_worker(state: AppState) {
    worker(&state, "recording when agents were seen")
        .run(|| async {
            state.seen.flush(&state.db).await?;
            Ok::<_, crate::Error>(Step::After(SEEN_FLUSH))
        })
        .await;
    if let Err(err) = state.seen.flush(&state.db).await {
        tracing::warn!(error = %cascade_protocol::chain(&err), "recording when agents were seen failed");
    }
}
