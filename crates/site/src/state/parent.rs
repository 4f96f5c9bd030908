//! The link to the parent, at a child site, and the pacing of the links to
//! the direct children.

use crate::error::{Error, Result};
use cascade_protocol::{Client, Enrollment};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// What a child site keeps about its parent (`parent.json`, mode 0600).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ParentConfig {
    /// Its own code as `name`, the parent's URL and code, its credential,
    /// and the central key pinned when it joined.
    #[serde(flatten)]
    pub enrollment: Enrollment,
    /// The central site's code.
    pub central_code: String,
}

/// The running link to the parent.
pub struct Parent {
    /// As stored.
    pub config: ParentConfig,
    /// A client of the parent presenting the credential.
    pub client: Client,
    /// When the newest timestamp the parent offered was signed, kept or
    /// refused: told back to the parent, so that it does not answer at
    /// once again with one this site refused.
    pub timestamp_offered: std::sync::atomic::AtomicI64,
}

impl Parent {
    /// Reads `parent.json`.
    pub fn read(path: &std::path::Path) -> Result<Parent> {
        let config: ParentConfig =
            cascade_protocol::read_config(path, "cascade site init --parent")
                .map_err(Error::Internal)?;
        let client = config
            .enrollment
            .client()
            .map_err(|err| upstream("connecting to the parent", err))?;
        Ok(Parent {
            config,
            client,
            timestamp_offered: Default::default(),
        })
    }

    /// The parent's code.
    pub fn code(&self) -> &str {
        &self.config.enrollment.site_code
    }

    /// The parent's URL.
    pub fn url(&self) -> &str {
        &self.config.enrollment.site_url
    }
}

/// Turns the parent's refusal or silence into this site's error.
pub fn upstream(context: &str, err: cascade_protocol::Error) -> Error {
    let message = format!("{context}: {}", cascade_protocol::chain(&err));
    match err.status() {
        Some(409) => Error::Conflict(message),
        Some(401) => Error::Unauthorized(message),
        Some(403) => Error::Forbidden(message),
        Some(status) if status < 500 => Error::invalid("refused_by_parent", message),
        _ => Error::Unavailable {
            code: "parent_unreachable",
            message,
        },
    }
}

/// Per direct child: the pacing of content sent to it and the bytes sent
/// since this site started.
#[derive(Default)]
pub struct Links {
    inner: std::sync::Mutex<HashMap<String, LinkPace>>,
}

struct LinkPace {
    next_free: Instant,
    bytes_sent: u64,
    /// When a content fetch last recorded the child's contact.
    touched: Option<Instant>,
}

/// Least time between two contacts of a child recorded by its content
/// fetches (each a write to the database).
const TOUCH_EVERY: Duration = Duration::from_secs(1);

impl LinkPace {
    /// The link to `child`, made fresh at `now` if there is none yet.
    fn of<'a>(
        links: &'a mut HashMap<String, LinkPace>,
        child: &str,
        now: Instant,
    ) -> &'a mut LinkPace {
        links.entry(child.to_owned()).or_insert(LinkPace {
            next_free: now,
            bytes_sent: 0,
            touched: None,
        })
    }
}

impl Links {
    /// Accounts for `bytes` about to be sent to `child` and returns how long
    /// to wait first so that the link stays under `max_rate` bytes per
    /// second. Every stream to the same child shares the one budget.
    pub fn reserve(&self, child: &str, bytes: u64, max_rate: Option<u64>) -> Duration {
        let mut links = self.inner.lock().expect("links lock");
        let now = Instant::now();
        let pace = LinkPace::of(&mut links, child, now);
        pace.bytes_sent += bytes;
        match max_rate.filter(|rate| *rate > 0) {
            None => Duration::ZERO,
            Some(rate) => {
                let start = pace.next_free.max(now);
                pace.next_free = start + Duration::from_secs_f64(bytes as f64 / rate as f64);
                start - now
            }
        }
    }

    /// Whether a content fetch of `child` is to record its contact now: the
    /// first in [`TOUCH_EVERY`] is (a child fetching many batches at once
    /// does not make a database write of each).
    pub fn touch_due(&self, child: &str) -> bool {
        let mut links = self.inner.lock().expect("links lock");
        let now = Instant::now();
        let pace = LinkPace::of(&mut links, child, now);
        if pace.touched.is_some_and(|at| now - at < TOUCH_EVERY) {
            return false;
        }
        pace.touched = Some(now);
        true
    }

    /// Content bytes sent to `child` since this site started.
    pub fn bytes_sent(&self, child: &str) -> u64 {
        let links = self.inner.lock().expect("links lock");
        links.get(child).map_or(0, |pace| pace.bytes_sent)
    }
}
