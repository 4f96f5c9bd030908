//! The state every layer of the running server is handed: the database,
//! the content library, the keys, the link to the parent, and the in-memory
//! caches and signals that let long polls and workers wake each other.

use crate::db;
use crate::error::{Error, Result};
use cascade_content::{ChunkStore, SigningKey, VerifyingKey};
use cascade_domain::hierarchy::SiteKind;
use cascade_domain::SiteCode;
use std::sync::Arc;

mod local_ingest;
mod parent;
mod policy;
mod progress;
mod seen;
mod status_queue;

pub use local_ingest::LocalIngest;
pub use parent::{upstream, Links, Parent, ParentConfig};
pub use policy::{PolicyCache, SharedPolicy};
pub use progress::Progress;
pub use seen::{AgentRows, SeenAgents, SEEN_FLUSH};
pub use status_queue::{Pending, QUEUE};

/// Shared state of the running server.
#[derive(Clone)]
pub struct AppState {
    pub(crate) db: db::Db,
    pub(crate) store: ChunkStore,
    /// The key that signs manifests: held by the central site only.
    pub(crate) key: Option<Arc<SigningKey>>,
    /// The central site's public key, which every manifest must verify against.
    pub(crate) trust: VerifyingKey,
    /// The key of the content tickets this site hands its agents and
    /// checks on its chunk route; its admitted DPs hold it too.
    pub(crate) content_key: cascade_protocol::ticket::ContentKey,
    pub(crate) code: SiteCode,
    pub(crate) kind: SiteKind,
    /// The central site's code (this site's own at the central site).
    pub(crate) central: SiteCode,
    /// The link to the parent, at a child site.
    pub(crate) parent: Option<Arc<Parent>>,
    /// Bumped whenever any DP's assignments change; long polls wait on it.
    pub(crate) changes: Arc<tokio::sync::watch::Sender<u64>>,
    /// Bumped whenever any agent's policy changes; policy polls wait on it.
    pub(crate) agent_changes: Arc<tokio::sync::watch::Sender<u64>>,
    /// Bumped whenever instructions are queued for a child site.
    pub(crate) outbox_changes: Arc<tokio::sync::watch::Sender<u64>>,
    /// Wakes the workers of a child site.
    pub(crate) wakes: Arc<Wakes>,
    /// Per child site: rate limit pacing and bytes sent.
    pub(crate) links: Arc<Links>,
    /// What the hierarchy workers are doing, for `cascade site queues`.
    pub(crate) progress: Arc<std::sync::Mutex<Progress>>,
    /// Set when the server is shutting down, to end long polls.
    pub(crate) shutdown: tokio::sync::watch::Receiver<bool>,
    /// Agents' poll times not yet written down.
    pub(crate) seen: Arc<SeenAgents>,
    /// Agents' rows as their last poll read them.
    pub(crate) agent_rows: Arc<AgentRows>,
    /// What every agent's policy shares, read once for many polls.
    pub(crate) policy: Arc<PolicyCache>,
    /// Agents' credentials already checked: token hash → (id, name). Agents
    /// and their credentials are never removed, so an entry stays true.
    pub(crate) agent_credentials: Arc<std::sync::Mutex<AgentCredentials>>,
    /// Status batches waiting for the status writer (group commit).
    pub(crate) status_queue: tokio::sync::mpsc::Sender<Pending>,
    /// Where the site may read packages from on its own machine (`site run
    /// --local-ingest-root`); none by default.
    pub(crate) local_ingest: Option<Arc<LocalIngest>>,
    /// Receivers' damage reports being checked at once
    /// ([`DAMAGE_CHECKS`]): each reads and verifies chunks, so a peer
    /// sending many cannot keep the disk and the cores busy.
    pub(crate) damage_checks: Arc<tokio::sync::Semaphore>,
}

/// Most damage reports checked at once.
pub(crate) const DAMAGE_CHECKS: usize = 2;

/// Agents' credentials already checked: token hash → (agent id, name).
pub(crate) type AgentCredentials = std::collections::HashMap<Vec<u8>, (i64, String)>;

/// Wake-ups of the workers that talk to the parent.
#[derive(Default)]
pub(crate) struct Wakes {
    /// Instructions arrived in the inbox.
    pub(crate) inbox: tokio::sync::Notify,
    /// The content this site needs may have changed.
    pub(crate) content: tokio::sync::Notify,
    /// Status messages were stored.
    pub(crate) relay: tokio::sync::Notify,
    /// A version may have stopped being needed (a new version, a job
    /// canceled or expired, a smaller retention).
    pub(crate) retention: tokio::sync::Notify,
}

impl AppState {
    pub(crate) fn notify_assignments_changed(&self) {
        self.changes.send_modify(|generation| *generation += 1);
    }

    pub(crate) fn notify_agents_changed(&self) {
        self.agent_changes
            .send_modify(|generation| *generation += 1);
    }

    pub(crate) fn notify_outbox_changed(&self) {
        self.outbox_changes
            .send_modify(|generation| *generation += 1);
    }

    /// After a transaction stored status messages: relay them up at once.
    pub(crate) fn notify_status_stored(&self) {
        self.wakes.relay.notify_one();
    }

    /// After a transaction that may change what content this site needs.
    pub(crate) fn notify_content_needs_changed(&self) {
        self.wakes.content.notify_one();
    }

    /// After any transaction that applied an instruction or created
    /// something that flows down: wakes everyone who may care.
    pub(crate) fn notify_everything(&self) {
        self.notify_assignments_changed();
        self.notify_agents_changed();
        self.notify_outbox_changed();
        self.notify_status_stored();
        self.notify_content_needs_changed();
    }

    /// A version may have stopped being needed (a new or completed version,
    /// a cancellation, a smaller retention): the retention worker looks.
    /// Not part of [`AppState::notify_everything`]: what a workstation or a
    /// DP does never makes the site walk its library.
    pub(crate) fn notify_retention(&self) {
        self.wakes.retention.notify_one();
    }

    /// Who this site is, as it answers `GET /api/v1/site`.
    pub(crate) fn site_info(&self) -> cascade_protocol::SiteInfo {
        cascade_protocol::SiteInfo {
            code: self.code.to_string(),
            kind: self.kind,
            public_key: cascade_content::public_key_hex(&self.trust),
            server_version: env!("CARGO_PKG_VERSION").to_owned(),
            parent: self.parent.as_ref().map(|parent| parent.code().to_owned()),
            central: Some(self.central.to_string()),
        }
    }

    /// The shared policy agents' polls answer from (see [`PolicyCache`]).
    pub(crate) async fn shared_policy(&self, revision: i64) -> Result<Arc<SharedPolicy>> {
        let generation = *self.agent_changes.borrow();
        self.policy.get(&self.db, generation, revision).await
    }

    /// Refuses what only the central site may do.
    pub(crate) fn require_central(&self, what: &str) -> Result<()> {
        if self.kind == SiteKind::Central {
            return Ok(());
        }
        Err(Error::invalid(
            "not_central",
            format!(
                "{what} happens at the central site {}; {} is a {} site",
                self.central, self.code, self.kind
            ),
        ))
    }

    /// The central site's signing key (only the central site holds one).
    pub(crate) fn signing_key(&self) -> Result<Arc<SigningKey>> {
        self.key
            .clone()
            .ok_or_else(|| Error::Internal("the central site holds no signing key".into()))
    }
}
