//! The timestamp worker (central site only): signs a new timestamp every
//! quarter of its validity (`service::timestamp`).

use super::worker;
use crate::service::timestamp::sign_if_due;
use crate::state::AppState;
use cascade_protocol::worker::Step;

/// Keeps the central site's signed timestamp current.
pub async fn timestamp_worker(state: AppState) {
    worker(&state, "signing the timestamp")
        .run(|| async { sign_if_due(&state).await.map(Step::After) })
        .await
}
