//! The expiry worker: records when jobs expire.

use super::worker;
use crate::service::jobs::record_expiries;
use crate::state::AppState;
use cascade_protocol::worker::Step;
use std::time::Duration;

/// How often expiries are looked for.
const EVERY: Duration = Duration::from_millis(500);

/// Records `job_expired` once for every job whose expiry passed, and
/// withdraws it from every agent's policy, every [`EVERY`].
pub async fn expiry_worker(state: AppState) {
    worker(&state, "recording job expiry")
        .run(|| async { record_expiries(&state).await.map(|()| Step::After(EVERY)) })
        .await
}
