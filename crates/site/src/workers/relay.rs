//! The relay: a child site's status messages, up to its parent.

use crate::service::relay::relay_once;
use crate::state::AppState;
use std::time::Duration;

/// The child's relay: delivers stored messages to the parent until
/// shutdown, woken within milliseconds whenever messages are stored; while
/// the parent is unreachable they wait here.
pub async fn relay_worker(state: AppState) {
    let Some(parent) = state.parent.clone() else {
        return;
    };
    super::run(
        &state,
        "relaying status to the parent",
        Some(&state.wakes.relay),
        Duration::from_secs(1),
        || {
            let (state, parent) = (state.clone(), parent.clone());
            async move {
                relay_once(&state, &parent)
                    .await
                    .map(|count| count > 0)
                    .inspect_err(|err| {
                        let mut progress = state.progress.lock().expect("progress lock");
                        progress.parent_failed(cascade_protocol::chain(&err));
                    })
            }
        },
    )
    .await
}
