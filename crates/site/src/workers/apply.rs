//! The applier: a child site's inbox, applied in order.

use super::worker;
use crate::service::apply::apply_next;
use crate::state::AppState;
use cascade_protocol::worker::Step;
use std::time::Duration;

/// The child's applier: applies the inbox in order until shutdown, woken
/// when instructions arrive.
pub async fn apply_worker(state: AppState) {
    worker(&state, "applying an instruction")
        .woken_by(&state.wakes.inbox)
        .idle(Duration::from_secs(5))
        .run(|| async {
            Ok::<_, crate::Error>(match apply_next(&state).await? {
                true => Step::Again,
                false => Step::Idle,
            })
        })
        .await
}
