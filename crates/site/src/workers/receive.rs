//! The receiver: a child site's long poll of its parent's instructions.

use super::worker;
use crate::service::apply::receive_once;
use crate::state::AppState;
use cascade_protocol::worker::Step;

/// The child's receiver: long-polls the parent and stores what arrives in
/// the inbox, until shutdown. While the parent is unreachable it backs off,
/// and the site serves its DPs and agents from what it holds.
pub async fn receive_worker(state: AppState) {
    let Some(parent) = state.parent.clone() else {
        return;
    };
    worker(&state, "fetching instructions from the parent")
        .run(|| async {
            // The poll itself waits for something new.
            receive_once(&state, &parent).await.map(|()| Step::Again)
        })
        .await
}
