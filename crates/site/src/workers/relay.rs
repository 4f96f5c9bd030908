//! The relay: a child site's status messages, up to its parent.

use super::worker;
use crate::service::relay::relay_once;
use crate::state::AppState;
use cascade_protocol::worker::Step;
use std::time::Duration;

/// The child's relay: delivers stored messages to the parent until
/// shutdown, woken within milliseconds whenever messages are stored; while
/// the parent is unreachable they wait here.
pub async fn relay_worker(state: AppState) {
    let Some(parent) = state.parent.clone() else {
        return;
    };
    worker(&state, "relaying status to the parent")
        .woken_by(&state.wakes.relay)
        .idle(Duration::from_secs(1))
        .run(|| async {
            match relay_once(&state, &parent).await {
                Ok(0) => Ok(Step::Idle),
                Ok(_) => Ok(Step::Again),
                Err(err) => {
                    let mut progress = state.progress.lock().expect("progress lock");
                    progress.parent_failed(cascade_protocol::chain(&err));
                    Err(err)
                }
            }
        })
        .await
}
