//! What every agent's policy shares, read once for many polls.

use crate::db::{self, AgentRow};
use crate::error::Result;
use cascade_protocol::{JobOffer, SignedIntent, SiteSettings};
use cascade_store::now_ms;
use std::sync::Arc;
use std::time::Duration;

/// What every agent's policy shares: the site settings, the jobs that may
/// still be offered with their collections' membership and download DPs,
/// and the DPs. Read from the database at most once per
/// [`SHARED_POLICY_TTL`] and whenever agents' policy changes
/// (`notify_agents_changed`), instead of with every poll: at 150,000 agents
/// polling every minute, 2,500 polls a second share it.
pub struct SharedPolicy {
    /// The site settings.
    pub settings: SiteSettings,
    /// Jobs neither canceled nor expired when read.
    pub(crate) jobs: Vec<SharedJob>,
    /// Jobs canceled recently enough that a run of theirs may still be in
    /// progress on a workstation (within their timeout and
    /// [`CANCEL_NOTICE_MARGIN_MS`] of the cancel): agents stop those runs.
    canceled: Vec<(SharedJob, SignedIntent)>,
    /// The URLs of the site's DPs.
    pub dp_urls: Vec<String>,
    /// Their certificates' fingerprints, by URL.
    pub dp_certificates: std::collections::BTreeMap<String, String>,
    /// The newest timestamp the central site signed that this site holds.
    pub timestamp: Option<SignedIntent>,
    /// The highest agent revision when it was read (read first): it holds
    /// every policy change up to that revision.
    revision: i64,
}

pub(crate) struct SharedJob {
    pub(crate) offer: JobOffer,
    pub(crate) membership: db::Membership,
}

/// How long past a canceled job's timeout (counted from the cancel) agents
/// are still told it was canceled: room for clock skew and an agent that
/// was briefly out of touch.
pub const CANCEL_NOTICE_MARGIN_MS: i64 = 10 * 60 * 1000;

/// Longest a [`SharedPolicy`] is reused.
pub const SHARED_POLICY_TTL: Duration = Duration::from_secs(1);

/// The cached [`SharedPolicy`], with the agent-change generation and time it
/// was read at.
#[derive(Default)]
pub struct PolicyCache {
    cached: tokio::sync::Mutex<Option<(u64, tokio::time::Instant, Arc<SharedPolicy>)>>,
}

impl PolicyCache {
    /// The shared policy, read again when older than the TTL, than the
    /// last change to agents' policy, or than `revision` (the revision of
    /// the agent it is for: a change committed but not yet announced must
    /// not be answered with the policy from before it).
    pub async fn get(
        &self,
        db: &db::Db,
        generation: u64,
        revision: i64,
    ) -> Result<Arc<SharedPolicy>> {
        let mut cached = self.cached.lock().await;
        if let Some((at_generation, at, shared)) = cached.as_ref() {
            if *at_generation == generation
                && at.elapsed() < SHARED_POLICY_TTL
                && shared.revision >= revision
            {
                return Ok(shared.clone());
            }
        }
        let read_at = tokio::time::Instant::now();
        let shared = Arc::new(read_shared_policy(db, now_ms()).await?);
        *cached = Some((generation, read_at, shared.clone()));
        Ok(shared)
    }
}

async fn read_shared_policy(db: &db::Db, now: i64) -> Result<SharedPolicy> {
    let pool = db.pool();
    // First: whatever is read next is at least as new as this revision.
    let revision = db::max_agent_revision(pool).await?;
    let settings = db::read_settings(pool).await?;
    let dps = db::all_dps(pool).await?;
    let rows = db::open_jobs(pool, now).await?;
    let mut jobs = Vec::with_capacity(rows.len());
    for (info, collection_id) in rows {
        // Where to download from: the DPs the job distributes to here.
        let members = match &info.dp_group {
            Some(group) => Some(db::local_members_of(pool, group).await?),
            None => None,
        };
        let mut offer = info.offer;
        offer.dps = dps
            .iter()
            .filter(|dp| {
                members
                    .as_ref()
                    .is_none_or(|names| names.contains(&dp.name))
            })
            .filter_map(|dp| dp.url.clone())
            .collect();
        jobs.push(SharedJob {
            offer,
            membership: db::membership(pool, collection_id).await?,
        });
    }
    let rows = db::recently_canceled_jobs(pool, now, CANCEL_NOTICE_MARGIN_MS).await?;
    let mut canceled = Vec::with_capacity(rows.len());
    // A job canceled without a signed cancellation (stored before issue 12)
    // is withdrawn from the offers but cannot stop a run.
    for (info, collection_id, cancel) in rows {
        let Some(cancel) = cancel else { continue };
        canceled.push((
            SharedJob {
                offer: info.offer,
                membership: db::membership(pool, collection_id).await?,
            },
            cancel,
        ));
    }
    Ok(SharedPolicy {
        settings,
        jobs,
        canceled,
        dp_certificates: dps
            .iter()
            .filter_map(|dp| Some((dp.url.clone()?, dp.certificate.clone()?)))
            .collect(),
        dp_urls: dps.into_iter().filter_map(|dp| dp.url).collect(),
        timestamp: db::read_timestamp(pool).await?,
        revision,
    })
}

impl SharedPolicy {
    /// The jobs offered to `agent` of site `site` at `now`.
    pub fn offers_for(&self, site: &str, agent: &AgentRow, now: i64) -> Vec<JobOffer> {
        self.jobs
            .iter()
            .filter(|job| job.offer.expires_at_ms.is_none_or(|at| at > now))
            .filter(|job| job.membership.contains(site, agent))
            .map(|job| job.offer.clone())
            .collect()
    }
}

impl SharedPolicy {
    /// The recently canceled jobs that concern `agent` of site `site`.
    pub fn canceled_for(&self, site: &str, agent: &AgentRow) -> Vec<SignedIntent> {
        self.canceled
            .iter()
            .filter(|(job, _)| job.membership.contains(site, agent))
            .map(|(_, cancel)| cancel.clone())
            .collect()
    }
}
