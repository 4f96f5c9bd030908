//! The site's background workers, one file each, every one running the one
//! worker loop of the product (`cascade_protocol::worker`): a step at once
//! again while it finds work, after a wake-up or an idle interval when it
//! finds none, after the jittered backoff — not cut short by wake-ups —
//! when it fails. Workers call services; nothing here decides.

pub mod apply;
pub mod content;
pub mod expiry;
pub mod receive;
pub mod relay;
pub mod retention;
pub mod scrub;
pub mod seen;
pub mod status_writer;
pub mod timestamp;

use crate::state::AppState;
use cascade_protocol::worker::Worker;

/// A worker named `name` that ends when the site shuts down.
fn worker<'a>(state: &AppState, name: &'static str) -> Worker<'a> {
    Worker::new(name, state.shutdown.clone())
}
