//! The applier: a child site's inbox, applied in order.

use crate::service::apply::apply_next;
use crate::state::AppState;
use std::time::Duration;

/// The child's applier: applies the inbox in order until shutdown.
pub async fn apply_worker(state: AppState) {
    super::run(
        &state,
        "applying an instruction",
        Some(&state.wakes.inbox),
        Duration::from_secs(5),
        || {
            let state = state.clone();
            async move { apply_next(&state).await }
        },
    )
    .await
}
