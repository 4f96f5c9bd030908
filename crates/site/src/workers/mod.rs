//! The site's background workers, each in its own file, and the loop they
//! run: one step at a time until
//! shutdown — at once again while a step finds work, after a wake-up or an
//! idle interval when it finds none, after a growing backoff when it fails.

pub mod apply;
pub mod content;
pub mod expiry;
pub mod receive;
pub mod relay;
pub mod seen;
pub mod status_writer;

use crate::error::Result;
use crate::state::AppState;
use std::time::Duration;
use tokio::sync::Notify;

/// The first wait after a failure.
const MIN_BACKOFF: Duration = Duration::from_millis(250);
/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Runs `step` until the server shuts down. `step` answers whether it did
/// some work; when it did not, the worker waits for `wake` (if any) or
/// `idle`. A failure is logged with `what` and retried after the backoff.
pub async fn run<F, Step>(
    state: &AppState,
    what: &'static str,
    wake: Option<&Notify>,
    idle: Duration,
    mut step: F,
) where
    F: FnMut() -> Step,
    Step: std::future::Future<Output = Result<bool>>,
{
    let mut shutdown = state.shutdown.clone();
    let mut backoff = MIN_BACKOFF;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let result = tokio::select! {
            result = step() => result,
            _ = shutdown.changed() => return,
        };
        // After a failure only the backoff ends the wait: a wake-up would
        // retry at once, against a parent that may still be down.
        let (wait, wake) = match result {
            Ok(true) => {
                backoff = MIN_BACKOFF;
                continue;
            }
            Ok(false) => {
                backoff = MIN_BACKOFF;
                (idle, wake)
            }
            Err(err) => {
                tracing::warn!(error = %cascade_protocol::chain(&err), retry_in_ms = backoff.as_millis() as u64, "{what} failed; will retry");
                let wait = backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                (wait, None)
            }
        };
        let woken = async {
            match wake {
                Some(wake) => wake.notified().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = woken => {}
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
    }
}
