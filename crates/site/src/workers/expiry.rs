//! The expiry worker: records when jobs expire.

use crate::service::jobs::record_expiries;
use crate::state::AppState;
use std::time::Duration;

/// The expiry worker: records `job_expired` once for every job whose expiry
/// passed, and withdraws it from every agent's policy.
pub async fn expiry_worker(state: AppState) {
    let mut shutdown = state.shutdown.clone();
    loop {
        if let Err(err) = record_expiries(&state).await {
            tracing::warn!(error = %cascade_protocol::chain(&err), "recording job expiry failed; will retry");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = shutdown.changed() => return,
        }
    }
}
