//! What the workers of a child site are doing right now, in memory, for
//! `cascade site queues`.

use cascade_protocol::WantedVersion;
use cascade_store::now_ms;
use std::collections::BTreeMap;

/// What the workers of a child site are doing now.
#[derive(Default)]
pub struct Progress {
    pub(crate) last_contact_ms: Option<i64>,
    pub(crate) parent_error: Option<String>,
    pub(crate) content: BTreeMap<WantedVersion, String>,
}

impl Progress {
    /// The parent answered.
    pub fn parent_answered(&mut self) {
        self.last_contact_ms = Some(now_ms());
        self.parent_error = None;
    }

    /// Talking to the parent failed.
    pub fn parent_failed(&mut self, error: String) {
        self.parent_error = Some(error);
    }

    /// What is happening to the content of one version.
    pub fn content(&mut self, want: &WantedVersion, what: String) {
        self.content.insert(want.clone(), what);
    }

    /// Forgets the versions no longer needed.
    pub fn keep_content(&mut self, needs: &BTreeMap<WantedVersion, Vec<String>>) {
        self.content.retain(|want, _| needs.contains_key(want));
    }
}
