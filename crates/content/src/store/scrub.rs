//! Continuous content validation: every stored chunk verified against its
//! name once per pass, a share of them at each step, so that the work is
//! spread evenly over the pass. Senders check only a record's stored
//! checksum; the scrub is what finds damage nobody has asked for yet.

use super::ChunkStore;
use crate::chunk::ChunkHash;
use crate::error::{Error, Result};
use std::time::Duration;

/// A whole pass of a store this often, unless its server says otherwise
/// (`site run` and `dp run --scrub-pass`).
pub const DEFAULT_SCRUB_PASS: Duration = Duration::from_secs(7 * 24 * 3600);

/// Shortest wait between two steps, however short the pass.
const MIN_STEP_WAIT: Duration = Duration::from_secs(1);
/// Longest wait between two steps, however long the pass.
const MAX_STEP_WAIT: Duration = Duration::from_secs(600);

/// A scrub in progress: the chunks of this pass not verified yet.
#[derive(Debug)]
pub struct Scrubber {
    pass: Duration,
    /// The chunks stored when the pass began and not verified yet (a
    /// chunk stored since was verified when stored).
    todo: Vec<ChunkHash>,
    /// How many to verify per step in this pass.
    per_step: usize,
}

/// What one step of a scrub found.
#[derive(Debug, Default)]
pub struct Scrubbed {
    /// Chunks verified.
    pub verified: u64,
    /// Those whose stored bytes no longer match their name.
    pub damaged: Vec<ChunkHash>,
    /// Those that could not be read, and why (for the caller to log; tried
    /// again next pass).
    pub unreadable: Vec<(ChunkHash, Error)>,
}

impl Scrubber {
    /// A scrub that verifies the whole store once per `pass`.
    pub fn new(pass: Duration) -> Scrubber {
        Scrubber {
            pass,
            todo: Vec::new(),
            per_step: 0,
        }
    }

    /// How long to wait between two steps: a thousandth of the pass, from
    /// a second to ten minutes.
    pub fn wait(&self) -> Duration {
        (self.pass / 1000).clamp(MIN_STEP_WAIT, MAX_STEP_WAIT)
    }

    /// Whether the next step begins a pass (the store is listed then).
    pub fn pass_begins(&self) -> bool {
        self.todo.is_empty()
    }

    /// Verifies the next share of the pass (listing the store when a pass
    /// begins). A chunk removed since the listing is skipped; one that
    /// cannot be read (an IO error) is returned in
    /// [`Scrubbed::unreadable`], without stopping the pass.
    pub fn step(&mut self, store: &ChunkStore) -> Result<Scrubbed> {
        if self.todo.is_empty() {
            self.todo = store.list()?.into_iter().map(|chunk| chunk.hash).collect();
            let steps = (self.pass.as_millis() / self.wait().as_millis()).max(1) as usize;
            self.per_step = self.todo.len().div_ceil(steps).max(1);
        }
        let take = self.per_step.min(self.todo.len());
        let batch = self.todo.split_off(self.todo.len() - take);
        let mut scrubbed = Scrubbed::default();
        for hash in batch {
            match store.get(&hash) {
                Ok(_) => {}
                Err(Error::Corrupt { .. }) => scrubbed.damaged.push(hash),
                Err(Error::NotFound { .. }) => continue,
                Err(err) => {
                    scrubbed.unreadable.push((hash, err));
                    continue;
                }
            }
            scrubbed.verified += 1;
        }
        Ok(scrubbed)
    }
}
