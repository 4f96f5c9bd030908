//! What the site knows of its agents in memory only: when they last
//! polled (written down in batches), which hold a policy poll open, and
//! their rows as their last poll read them.

use crate::db::{self, AgentRow};
use crate::error::Result;
use cascade_domain::run::Contact;
use cascade_store::now_ms;
use std::sync::Arc;
use std::time::Duration;

/// When agents last polled, gathered in memory and written to the database
/// by [`seen_worker`] every [`SEEN_FLUSH`]: a poll then costs no write
/// transaction (one per poll capped a site at a few thousand agents per
/// second). The time shown may lag by that much, against reachability
/// thresholds of several poll intervals.
///
/// It also knows, in memory only, which agents hold a policy poll open
/// now and which hung theirs up (closed the connection before the answer):
/// the strongest signs the site has of an agent being there or gone. After
/// a restart of the site nothing is held; reachability then follows the
/// stored time until the agents poll again (within a second or so).
#[derive(Default)]
pub struct SeenAgents {
    /// Agent name → time of its last poll or report not yet written.
    pending: std::sync::Mutex<std::collections::HashMap<String, i64>>,
    /// Agent name → its held polls and last hang-up.
    held: std::sync::Mutex<std::collections::HashMap<String, Held>>,
}

/// The polls an agent holds open and when it last hung one up.
#[derive(Clone, Copy, Default)]
struct Held {
    polls: u32,
    hung_up_at: Option<i64>,
}

/// A policy poll being held: counted by [`SeenAgents`] until dropped. A poll
/// dropped before [`HeldPoll::answered`] was hung up by the agent.
pub struct HeldPoll {
    seen: Arc<SeenAgents>,
    name: String,
    answered: bool,
}

impl HeldPoll {
    /// The poll is being answered (not hung up).
    pub fn answered(&mut self) {
        self.answered = true;
    }
}

impl Drop for HeldPoll {
    fn drop(&mut self) {
        let now = now_ms();
        {
            let mut held = self.seen.held.lock().expect("held polls lock");
            let entry = held.entry(self.name.clone()).or_default();
            entry.polls = entry.polls.saturating_sub(1);
            if entry.polls == 0 && !self.answered {
                entry.hung_up_at = Some(now);
            }
        }
        // The end of a poll is contact too.
        let mut pending = self.seen.pending.lock().expect("seen agents lock");
        let at = pending.entry(self.name.clone()).or_insert(now);
        *at = (*at).max(now);
    }
}

/// How often polls' times are written down.
pub const SEEN_FLUSH: Duration = Duration::from_secs(2);

impl SeenAgents {
    /// Counts a policy poll of `name` as held until the guard is dropped.
    pub fn hold(seen: &Arc<SeenAgents>, name: &str) -> HeldPoll {
        let mut held = seen.held.lock().expect("held polls lock");
        let entry = held.entry(name.to_owned()).or_default();
        entry.polls += 1;
        entry.hung_up_at = None;
        HeldPoll {
            seen: seen.clone(),
            name: name.to_owned(),
            answered: false,
        }
    }

    /// What is known of the agent's contact: the later of `stored` (the
    /// database's `last_seen_ms`) and a time not yet written down, and the
    /// polls it holds. Views judge reachability from this, never from the
    /// database alone.
    pub fn contact(&self, name: &str, stored: Option<i64>) -> Contact {
        let held = self
            .held
            .lock()
            .expect("held polls lock")
            .get(name)
            .copied()
            .unwrap_or_default();
        Contact {
            last_seen: self.latest(name, stored),
            polls_held: held.polls,
            hung_up_at: held.hung_up_at,
        }
    }

    /// Notes that agent `name` was seen at `at_ms` (a report: it is back
    /// if it had hung up).
    pub fn record(&self, name: &str, at_ms: i64) {
        if let Some(held) = self.held.lock().expect("held polls lock").get_mut(name) {
            held.hung_up_at = None;
        }
        let mut pending = self.pending.lock().expect("seen agents lock");
        match pending.get_mut(name) {
            Some(at) => *at = (*at).max(at_ms),
            None => {
                pending.insert(name.to_owned(), at_ms);
            }
        }
    }

    /// When the agent was last seen: the later of `stored` (the database's
    /// `last_seen_ms`) and a time not yet written down. Views judge
    /// reachability from this, never from the database alone.
    pub fn latest(&self, name: &str, stored: Option<i64>) -> Option<i64> {
        let pending = self
            .pending
            .lock()
            .expect("seen agents lock")
            .get(name)
            .copied();
        stored.max(pending)
    }

    /// Writes what was gathered in one transaction.
    pub async fn flush(&self, db: &db::Db) -> Result<()> {
        let mut taken = Taken {
            seen: self,
            entries: std::mem::take(&mut *self.pending.lock().expect("seen agents lock")),
            written: false,
        };
        if taken.entries.is_empty() {
            return Ok(());
        }
        {
            let seen: Vec<(&String, i64)> =
                taken.entries.iter().map(|(name, at)| (name, *at)).collect();
            let mut tx = db.write().await?;
            db::record_seen(&mut tx, &seen).await?;
            tx.commit().await?;
        }
        taken.written = true;
        Ok(())
    }
}

/// Poll times taken out of [`SeenAgents`] to be written: put back unless
/// written, so that a flush that fails, or is dropped half-way (at
/// shutdown), loses none.
struct Taken<'a> {
    seen: &'a SeenAgents,
    entries: std::collections::HashMap<String, i64>,
    written: bool,
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        if self.written {
            return;
        }
        let mut pending = self.seen.pending.lock().expect("seen agents lock");
        for (name, at) in self.entries.drain() {
            let kept = pending.entry(name).or_insert(at);
            *kept = (*kept).max(at);
        }
    }
}

/// Agents' rows as their last policy poll read them, so that checking
/// whether a job targets an agent (on each of its status reports) needs no
/// query. An agent's attribute report drops its entry.
#[derive(Default)]
pub struct AgentRows {
    rows: std::sync::Mutex<std::collections::HashMap<String, Arc<AgentRow>>>,
}

impl AgentRows {
    /// Remembers `row`.
    pub fn keep(&self, row: Arc<AgentRow>) {
        let mut rows = self.rows.lock().expect("agent rows lock");
        rows.insert(row.name.clone(), row);
    }

    /// Forgets the agent named `name` (its attributes changed).
    pub fn forget(&self, name: &str) {
        self.rows.lock().expect("agent rows lock").remove(name);
    }

    /// The row last read for `name`, if any.
    pub fn get(&self, name: &str) -> Option<Arc<AgentRow>> {
        self.rows
            .lock()
            .expect("agent rows lock")
            .get(name)
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_flush_that_fails_keeps_the_poll_times_for_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let db = db::Db::open(&dir.path().join("site.db"), true, db::MIGRATIONS)
            .await
            .unwrap();
        let seen = SeenAgents::default();
        seen.record("ws1", 5);
        db.close().await;
        assert!(seen.flush(&db).await.is_err());
        assert_eq!(seen.latest("ws1", None), Some(5));
        // A later time recorded meanwhile is kept over the put-back one.
        seen.record("ws1", 9);
        assert!(seen.flush(&db).await.is_err());
        assert_eq!(seen.latest("ws1", Some(1)), Some(9));
    }
}
