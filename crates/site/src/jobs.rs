//! Jobs: "run this command from this package on this collection" — creating
//! them at the central site, their arrival at every site (with the distribute
//! phase to the site's DPs or to a DP group's), offering them to agents
//! through their policy, canceling them, recording their expiry, and the job
//! status view per site and per workstation.
//!
//! **Architecture Invariant:** expiry and cancellation are status messages
//! of the site (`job_expired`, `job_canceled`); the job status folds them as
//! flags beside each workstation's last reported state, never in its place
//! (Q152229).

use crate::agents::{agent_by_name, all_agents, membership, AgentRow};
use crate::api::ApiJson;
use crate::auth::Principal;
use crate::db::{self, WriteTx};
use crate::error::{Error, Result};
use crate::{distribution, now_ms, send, status, AppState};
use axum::extract::{Path, State};
use axum::Json;
use cascade_domain::hierarchy::SiteDistribution;
use cascade_domain::run::{reachability, Reachability, RunEvent, RunFold};
use cascade_domain::status::{DistributionFold, DistributionView};
use cascade_protocol::*;
use sqlx::Row;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Deadline of a job's download and run when none is given, so that no
/// workstation can stay "running" forever.
pub const DEFAULT_TIMEOUT_MS: u64 = 60 * 60 * 1000;

/// Longest command line accepted.
const MAX_COMMAND_LEN: usize = 8192;

const JOB_COLUMNS: &str = "j.id, p.name, j.version, c.name, j.command, j.offer_at_ms, j.expires_at_ms, j.optional,
     j.retries, j.retry_delay_ms, j.timeout_ms, j.success_codes, j.created_at_ms, j.canceled_at_ms, j.collection_id,
     j.dp_group";
const JOB_FROM: &str =
    "jobs j JOIN packages p ON p.id = j.package_id JOIN collections c ON c.id = j.collection_id";

fn job_from_row(row: sqlx::sqlite::SqliteRow, now: i64) -> Result<(JobInfo, i64)> {
    let codes: String = row.get(11);
    let offer = JobOffer {
        id: row.get::<i64, _>(0) as u64,
        package: row.get(1),
        version: row.get::<i64, _>(2) as u64,
        command: row.get(4),
        offer_at_ms: row.get(5),
        expires_at_ms: row.get(6),
        optional: row.get(7),
        retries: row.get::<i64, _>(8) as u32,
        retry_delay_ms: row.get::<i64, _>(9) as u64,
        timeout_ms: row.get::<Option<i64>, _>(10).map(|t| t as u64),
        success_codes: serde_json::from_str(&codes)
            .map_err(|err| Error::Internal(format!("stored success codes do not parse: {err}")))?,
        dps: Vec::new(),
    };
    let canceled_at_ms: Option<i64> = row.get(13);
    let state = if canceled_at_ms.is_some() {
        "canceled"
    } else if offer.expires_at_ms.is_some_and(|at| at <= now) {
        "expired"
    } else if offer.offer_at_ms > now {
        "scheduled"
    } else {
        "active"
    };
    Ok((
        JobInfo {
            offer,
            collection: row.get(3),
            created_at_ms: row.get(12),
            canceled_at_ms,
            state: state.to_owned(),
            dp_group: row.get(15),
            outcome: None,
        },
        row.get(14),
    ))
}

async fn job_by_id<'e, E>(executor: E, id: u64) -> Result<(JobInfo, i64)>
where
    E: sqlx::Executor<'e, Database = sqlx::Sqlite>,
{
    let row = sqlx::query(&format!(
        "SELECT {JOB_COLUMNS} FROM {JOB_FROM} WHERE j.id = ?"
    ))
    .bind(id as i64)
    .fetch_optional(executor)
    .await?
    .ok_or(Error::NotFound {
        what: "job",
        name: id.to_string(),
    })?;
    job_from_row(row, now_ms())
}

/// Tells every agent its policy changed.
async fn bump_agents(tx: &mut WriteTx<'_>) -> Result<()> {
    sqlx::query(&format!(
        "UPDATE agents SET revision = {}",
        crate::agents::NEXT_REVISION
    ))
    .execute(&mut *tx.tx)
    .await?;
    Ok(())
}

/// `POST /api/v1/jobs`.
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(request): ApiJson<JobRequest>,
) -> Result<Json<JobInfo>> {
    principal.require_admin()?;
    state.require_central("creating jobs")?;
    let now = now_ms();
    if request.command.trim().is_empty() || request.command.len() > MAX_COMMAND_LEN {
        return Err(Error::invalid(
            "invalid_command",
            format!("the command must be 1 to {MAX_COMMAND_LEN} bytes"),
        ));
    }
    let offer_at = request.offer_at_ms.unwrap_or(now);
    if let Some(expires) = request.expires_at_ms {
        if expires <= offer_at.max(now) {
            return Err(Error::invalid(
                "invalid_expiry",
                "the job would expire before it is offered; give a later --expires-at or --expires-in",
            ));
        }
    }
    if request.timeout_ms == Some(0) {
        return Err(Error::invalid(
            "invalid_timeout",
            "the timeout must be longer than 0",
        ));
    }
    if request.retries > 100 {
        return Err(Error::invalid("invalid_retries", "at most 100 retries"));
    }
    let success_codes = if request.success_codes.is_empty() {
        vec![0]
    } else {
        request.success_codes.clone()
    };
    let mut tx = state.db.write().await?;
    let package = db::require_package(&mut *tx.tx, &request.package).await?;
    let latest = db::latest_version(&mut *tx.tx, package.id)
        .await?
        .unwrap_or(0);
    let version = match request.version {
        Some(version) if version == 0 || version as i64 > latest => {
            return Err(Error::NotFound {
                what: "version",
                name: format!("{} v{version}", package.name),
            })
        }
        Some(version) => version as i64,
        None => latest,
    };
    let collection_id = collection_id(&mut tx, &request.collection).await?;
    if let Some(group) = &request.dp_group {
        crate::groups::require_group(&mut tx, group).await?;
    }
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO jobs (package_id, version, collection_id, command, offer_at_ms, expires_at_ms, optional,
                           retries, retry_delay_ms, timeout_ms, success_codes, created_at_ms, dp_group)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
    )
    .bind(package.id)
    .bind(version)
    .bind(collection_id)
    .bind(&request.command)
    .bind(offer_at)
    .bind(request.expires_at_ms)
    .bind(request.optional)
    .bind(request.retries as i64)
    .bind(request.retry_delay_ms as i64)
    .bind(request.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS) as i64)
    .bind(serde_json::to_string(&success_codes).map_err(|err| Error::Internal(err.to_string()))?)
    .bind(now)
    .bind(&request.dp_group)
    .fetch_one(&mut *tx.tx)
    .await?;
    let info = arrive(&state, &mut tx, id).await?;
    tx.commit().await?;
    state.notify_everything();
    tracing::info!(job = id, package = %package.name, version, collection = %request.collection, "job created");
    Ok(Json(info))
}

async fn collection_id(tx: &mut WriteTx<'_>, name: &str) -> Result<i64> {
    sqlx::query_scalar("SELECT id FROM collections WHERE name = ?")
        .bind(name)
        .fetch_optional(&mut *tx.tx)
        .await?
        .ok_or(Error::NotFound {
            what: "collection",
            name: name.to_owned(),
        })
}

/// A job's instruction arrived from the parent: stores it under the central
/// site's id and lets it arrive here. Applying it twice changes nothing.
pub async fn apply_job(state: &AppState, tx: &mut WriteTx<'_>, job: &JobInfo) -> Result<()> {
    let offer = &job.offer;
    let package = db::require_package(&mut *tx.tx, &offer.package).await?;
    if db::manifest(&mut *tx.tx, package.id, offer.version as i64)
        .await?
        .is_none()
    {
        // Its version was refused here (or never arrived): the job cannot
        // run at this site, and says so rather than wait forever.
        return Err(Error::NotFound {
            what: "version",
            name: format!(
                "{} v{} (job {} needs it; this site does not hold it)",
                offer.package, offer.version, offer.id
            ),
        });
    }
    let collection_id = collection_id(tx, &job.collection).await?;
    let inserted = sqlx::query(
        "INSERT OR IGNORE INTO jobs (id, package_id, version, collection_id, command, offer_at_ms, expires_at_ms,
                           optional, retries, retry_delay_ms, timeout_ms, success_codes, created_at_ms,
                           canceled_at_ms, dp_group)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(offer.id as i64)
    .bind(package.id)
    .bind(offer.version as i64)
    .bind(collection_id)
    .bind(&offer.command)
    .bind(offer.offer_at_ms)
    .bind(offer.expires_at_ms)
    .bind(offer.optional)
    .bind(offer.retries as i64)
    .bind(offer.retry_delay_ms as i64)
    .bind(offer.timeout_ms.map(|ms| ms as i64))
    .bind(serde_json::to_string(&offer.success_codes).map_err(|err| Error::Internal(err.to_string()))?)
    .bind(job.created_at_ms)
    .bind(job.canceled_at_ms)
    .bind(&job.dp_group)
    .execute(&mut *tx.tx)
    .await?
    .rows_affected();
    if inserted == 1 {
        arrive(state, tx, offer.id as i64).await?;
    }
    Ok(())
}

/// A job arrives at this site (created here, or its instruction applied):
/// it records which of the site's workstations it targets, places the
/// package on the DPs it distributes to here (none: distribution is not
/// applicable at this site, Q167007), reports `job_arrived`, offers it to
/// the agents and passes it on to the child sites.
async fn arrive(state: &AppState, tx: &mut WriteTx<'_>, id: i64) -> Result<JobInfo> {
    let (info, collection_id) = job_by_id(&mut *tx.tx, id as u64).await?;
    let members = membership(&mut *tx.tx, collection_id).await?;
    let targets: Vec<String> = all_agents(&mut *tx.tx)
        .await?
        .into_iter()
        .filter(|agent| members.contains(state.code.as_str(), agent))
        .map(|agent| agent.name)
        .collect();
    sqlx::query("UPDATE jobs SET local_targets = ? WHERE id = ?")
        .bind(targets.len() as i64)
        .bind(id)
        .execute(&mut *tx.tx)
        .await?;
    let dps = job_dps(tx, info.dp_group.as_deref(), !targets.is_empty()).await?;
    let package = db::require_package(&mut *tx.tx, &info.offer.package).await?;
    distribution::place(state, tx, (package.id, &package.name), &dps).await?;
    status::record_site_message(
        state,
        tx,
        StatusBody::JobArrived {
            job: id as u64,
            package: info.offer.package.clone(),
            version: info.offer.version,
            targets,
            dps: dps.into_iter().map(|(_, name)| name).collect(),
        },
    )
    .await?;
    bump_agents(tx).await?;
    send::send_down(state, tx, &Instruction::Job { job: info.clone() }).await?;
    Ok(info)
}

/// The jobs neither canceled nor expired, for a new child site.
pub async fn snapshot(tx: &mut WriteTx<'_>) -> Result<Vec<Instruction>> {
    let now = now_ms();
    let rows = sqlx::query(&format!(
        "SELECT {JOB_COLUMNS} FROM {JOB_FROM}
         WHERE j.canceled_at_ms IS NULL AND (j.expires_at_ms IS NULL OR j.expires_at_ms > ?) ORDER BY j.id"
    ))
    .bind(now)
    .fetch_all(&mut *tx.tx)
    .await?;
    rows.into_iter()
        .map(|row| job_from_row(row, now).map(|(job, _)| Instruction::Job { job }))
        .collect()
}

/// A workstation enrolled or reported new attributes. An active job that
/// targeted none of this site's workstations when it arrived, and now
/// targets this one, makes the site bring its content in and, without a DP
/// group, places it on the site's DPs. Returns whether anything changed.
pub async fn agent_arrived(state: &AppState, tx: &mut WriteTx<'_>, agent: &str) -> Result<bool> {
    let jobs: Vec<(i64, i64, i64, Option<String>, i64, String)> = sqlx::query_as(
        "SELECT j.id, j.version, j.collection_id, j.dp_group, p.id, p.name FROM jobs j
         JOIN packages p ON p.id = j.package_id
         WHERE j.local_targets = 0 AND j.canceled_at_ms IS NULL
           AND (j.expires_at_ms IS NULL OR j.expires_at_ms > ?)",
    )
    .bind(now_ms())
    .fetch_all(&mut *tx.tx)
    .await?;
    if jobs.is_empty() {
        return Ok(false);
    }
    let Some(row) = agent_by_name(&mut *tx.tx, agent).await? else {
        return Ok(false);
    };
    let mut changed = false;
    for (id, version, collection_id, dp_group, package_id, package) in jobs {
        if !membership(&mut *tx.tx, collection_id)
            .await?
            .contains(state.code.as_str(), &row)
        {
            continue;
        }
        sqlx::query("UPDATE jobs SET local_targets = 1 WHERE id = ?")
            .bind(id)
            .execute(&mut *tx.tx)
            .await?;
        let dps = job_dps(tx, dp_group.as_deref(), true).await?;
        if dp_group.is_none() {
            distribution::place(state, tx, (package_id, &package), &dps).await?;
        }
        // Reported again: the site's targets and DPs for the job changed.
        status::record_site_message(
            state,
            tx,
            StatusBody::JobArrived {
                job: id as u64,
                package: package.clone(),
                version: version as u64,
                targets: vec![agent.to_owned()],
                dps: dps.into_iter().map(|(_, name)| name).collect(),
            },
        )
        .await?;
        tracing::info!(job = id, %agent, "a workstation enrolled that the job targets; its content comes here");
        changed = true;
    }
    Ok(changed)
}

/// The DPs of this site a job distributes to: its DP group's here, or,
/// without a group, every DP of the site when the job targets any of its
/// workstations.
async fn job_dps(
    tx: &mut WriteTx<'_>,
    dp_group: Option<&str>,
    has_targets: bool,
) -> Result<Vec<(i64, String)>> {
    let all = db::all_dps(&mut *tx.tx).await?;
    let members = match dp_group {
        Some(group) => crate::groups::local_members(tx, group).await?,
        None if has_targets => all.iter().map(|dp| dp.name.clone()).collect(),
        None => Vec::new(),
    };
    Ok(all
        .into_iter()
        .filter(|dp| members.contains(&dp.name))
        .map(|dp| (dp.id, dp.name))
        .collect())
}

/// `GET /api/v1/jobs`.
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<Vec<JobInfo>>> {
    principal.require_admin()?;
    let now = now_ms();
    let rows = sqlx::query(&format!(
        "SELECT {JOB_COLUMNS} FROM {JOB_FROM} ORDER BY j.id"
    ))
    .fetch_all(state.db.pool())
    .await?;
    let mut jobs = Vec::with_capacity(rows.len());
    // Each package's history is folded once for all its jobs.
    let mut views = PackageViews::new();
    for row in rows {
        let (mut info, _) = job_from_row(row, now)?;
        info.outcome = status_with(&state, info.offer.id, &mut views)
            .await?
            .job
            .outcome;
        jobs.push(info);
    }
    Ok(Json(jobs))
}

/// `POST /api/v1/jobs/{id}/cancel`.
pub async fn cancel(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<u64>,
) -> Result<Json<JobInfo>> {
    principal.require_admin()?;
    state.require_central("canceling jobs")?;
    let mut tx = state.db.write().await?;
    apply_cancel(&state, &mut tx, id).await?;
    tx.commit().await?;
    state.notify_everything();
    Ok(Json(status_of(&state, id).await?.job))
}

/// Cancels a job here (once: `job_canceled` is recorded the first time) and
/// passes the cancellation on to the child sites.
pub async fn apply_cancel(state: &AppState, tx: &mut WriteTx<'_>, id: u64) -> Result<()> {
    let (info, _) = job_by_id(&mut *tx.tx, id).await?;
    if info.canceled_at_ms.is_some() {
        return Ok(());
    }
    sqlx::query("UPDATE jobs SET canceled_at_ms = ? WHERE id = ?")
        .bind(now_ms())
        .bind(id as i64)
        .execute(&mut *tx.tx)
        .await?;
    status::record_site_message(
        state,
        tx,
        StatusBody::JobCanceled {
            job: id,
            package: info.offer.package.clone(),
        },
    )
    .await?;
    bump_agents(tx).await?;
    send::send_down(
        state,
        tx,
        &Instruction::JobCanceled {
            job: id,
            package: info.offer.package,
        },
    )
    .await
}

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
    jobs: Vec<SharedJob>,
    /// Jobs canceled recently enough that a run of theirs may still be in
    /// progress on a workstation (within their timeout and
    /// [`CANCEL_NOTICE_MARGIN_MS`] of the cancel): agents stop those runs.
    canceled: Vec<SharedJob>,
    /// The URLs of the site's DPs.
    pub dp_urls: Vec<String>,
    /// The highest agent revision when it was read (read first): it holds
    /// every policy change up to that revision.
    revision: i64,
}

struct SharedJob {
    offer: JobOffer,
    membership: crate::agents::Membership,
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
    pub async fn get(&self, state: &AppState, revision: i64) -> Result<Arc<SharedPolicy>> {
        let mut cached = self.cached.lock().await;
        let generation = *state.agent_changes.borrow();
        if let Some((at_generation, at, shared)) = cached.as_ref() {
            if *at_generation == generation
                && at.elapsed() < SHARED_POLICY_TTL
                && shared.revision >= revision
            {
                return Ok(shared.clone());
            }
        }
        let read_at = tokio::time::Instant::now();
        let shared = Arc::new(read_shared_policy(state).await?);
        *cached = Some((generation, read_at, shared.clone()));
        Ok(shared)
    }
}

async fn read_shared_policy(state: &AppState) -> Result<SharedPolicy> {
    let pool = state.db.pool();
    let now = now_ms();
    // First: whatever is read next is at least as new as this revision.
    let revision: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(revision), 0) FROM agents")
        .fetch_one(pool)
        .await?;
    let settings = crate::agents::read_settings(pool).await?;
    let dps = crate::db::all_dps(pool).await?;
    let rows = sqlx::query(&format!(
        "SELECT {JOB_COLUMNS} FROM {JOB_FROM}
         WHERE j.canceled_at_ms IS NULL AND (j.expires_at_ms IS NULL OR j.expires_at_ms > ?) ORDER BY j.id"
    ))
    .bind(now)
    .fetch_all(pool)
    .await?;
    let mut jobs = Vec::with_capacity(rows.len());
    for row in rows {
        let (info, collection_id) = job_from_row(row, now)?;
        // Where to download from: the DPs the job distributes to here.
        let members = match &info.dp_group {
            Some(group) => Some(crate::groups::local_members_of(pool, group).await?),
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
            membership: membership(pool, collection_id).await?,
        });
    }
    let rows = sqlx::query(&format!(
        "SELECT {JOB_COLUMNS} FROM {JOB_FROM}
         WHERE j.canceled_at_ms IS NOT NULL
           AND j.canceled_at_ms + COALESCE(j.timeout_ms, ?) + ? > ? ORDER BY j.id"
    ))
    .bind(DEFAULT_TIMEOUT_MS as i64)
    .bind(CANCEL_NOTICE_MARGIN_MS)
    .bind(now)
    .fetch_all(pool)
    .await?;
    let mut canceled = Vec::with_capacity(rows.len());
    for row in rows {
        let (info, collection_id) = job_from_row(row, now)?;
        canceled.push(SharedJob {
            offer: info.offer,
            membership: membership(pool, collection_id).await?,
        });
    }
    Ok(SharedPolicy {
        settings,
        jobs,
        canceled,
        dp_urls: dps.into_iter().filter_map(|dp| dp.url).collect(),
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
    pub fn canceled_for(&self, site: &str, agent: &AgentRow) -> Vec<u64> {
        self.canceled
            .iter()
            .filter(|job| job.membership.contains(site, agent))
            .map(|job| job.offer.id)
            .collect()
    }
}

/// Whether `job` is offered to the agent named `agent` (for refusing
/// reports about jobs that do not concern it).
pub async fn targets(state: &AppState, job: u64, agent: &str) -> Result<bool> {
    let row = match state.agent_rows.get(agent) {
        Some(row) => row,
        None => match agent_by_name(state.db.pool(), agent).await? {
            Some(row) => Arc::new(row),
            None => return Ok(false),
        },
    };
    // A job still on offer is in the shared policy; an older one is read.
    let shared = state.policy.get(state, 0).await?;
    if let Some(known) = shared.jobs.iter().find(|known| known.offer.id == job) {
        return Ok(known.membership.contains(state.code.as_str(), &row));
    }
    let Ok((_, collection_id)) = job_by_id(state.db.pool(), job).await else {
        return Ok(false);
    };
    Ok(membership(state.db.pool(), collection_id)
        .await?
        .contains(state.code.as_str(), &row))
}

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

async fn record_expiries(state: &AppState) -> Result<()> {
    let due: Vec<(i64, String)> = sqlx::query_as(
        "SELECT j.id, p.name FROM jobs j JOIN packages p ON p.id = j.package_id
         WHERE j.expiry_recorded = 0 AND j.expires_at_ms IS NOT NULL AND j.expires_at_ms <= ?",
    )
    .bind(now_ms())
    .fetch_all(state.db.pool())
    .await?;
    if due.is_empty() {
        return Ok(());
    }
    let mut tx = state.db.write().await?;
    for (id, package) in &due {
        sqlx::query("UPDATE jobs SET expiry_recorded = 1 WHERE id = ?")
            .bind(id)
            .execute(&mut *tx.tx)
            .await?;
        status::record_site_message(
            state,
            &mut tx,
            StatusBody::JobExpired {
                job: *id as u64,
                package: package.clone(),
            },
        )
        .await?;
    }
    bump_agents(&mut tx).await?;
    tx.commit().await?;
    state.notify_agents_changed();
    state.notify_status_stored();
    state.notify_content_needs_changed();
    tracing::info!(jobs = due.len(), "jobs expired");
    Ok(())
}

/// `GET /api/v1/jobs/{id}/status`: folded from the job's status messages,
/// per site of this site's subtree and per workstation.
pub async fn job_status(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<u64>,
) -> Result<Json<JobStatus>> {
    principal.require_admin()?;
    status_of(&state, id).await.map(Json)
}

/// The distribution views of packages, by package, folded once per request.
type PackageViews = std::collections::HashMap<String, BTreeMap<(String, String), DistributionView>>;

/// The job's status, folded from its status messages (see [`job_status`]).
pub async fn status_of(state: &AppState, id: u64) -> Result<JobStatus> {
    status_with(state, id, &mut PackageViews::new()).await
}

/// [`status_of`], with the package views already folded in `views`.
async fn status_with(state: &AppState, id: u64, views: &mut PackageViews) -> Result<JobStatus> {
    let pool = state.db.pool();
    let (job, collection_id) = job_by_id(pool, id).await?;
    let own = state.code.to_string();
    let now = now_ms();

    // The job's messages, grouped by source in sequence order: a message
    // relayed late never moves a workstation's state back.
    let mut rows: Vec<JobMessageRow> = sqlx::query_as(
        "SELECT source, seq, at_ms, site, agent, body FROM status_messages WHERE job = ?",
    )
    .bind(id as i64)
    .fetch_all(pool)
    .await?;
    rows.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    let mut arrivals: BTreeMap<String, Arrival> = BTreeMap::new();
    let mut refusals: BTreeMap<String, String> = BTreeMap::new();
    let mut site_events: BTreeMap<String, Vec<(i64, RunEvent)>> = BTreeMap::new();
    let mut folds: BTreeMap<(String, String), RunFold> = BTreeMap::new();
    for (_, _, at, site, agent, body) in rows {
        let Some(site) = site else { continue };
        let message = status::parse_stored(&body)?;
        match (agent, message.body) {
            (Some(agent), body) => {
                if let Some(event) = body.run_event() {
                    folds.entry((site, agent)).or_default().apply(at, &event);
                }
            }
            (None, StatusBody::JobArrived { targets, dps, .. }) => {
                // Reported again when the site's targets change: the first
                // time is the arrival, the last one names the DPs.
                let arrival = arrivals.entry(site).or_insert(Arrival {
                    at,
                    targets: Vec::new(),
                    dps: Vec::new(),
                });
                arrival.targets.extend(targets);
                arrival.dps = dps;
            }
            (None, StatusBody::InstructionRefused { reason, .. }) => {
                refusals.entry(site).or_insert(reason);
            }
            (None, body) => {
                if let Some(event) = body.run_event() {
                    site_events.entry(site).or_default().push((at, event));
                }
            }
        }
    }
    if !views.contains_key(&job.offer.package) {
        let folded = status::distribution_views(state, &job.offer.package).await?;
        views.insert(job.offer.package.clone(), folded);
    }
    let distribution = &views[&job.offer.package];
    // A job created before this site recorded arrivals: it arrived when it
    // was created, and distributed to the DPs queued for its package.
    arrivals.entry(own.clone()).or_insert_with(|| Arrival {
        at: job.created_at_ms,
        targets: Vec::new(),
        dps: distribution
            .keys()
            .filter(|(site, _)| *site == own)
            .map(|(_, dp)| dp.clone())
            .collect(),
    });

    // This site's workstations follow the collection live; other sites'
    // are those they reported targeted, and any that reported.
    let members = membership(pool, collection_id).await?;
    let agents = all_agents(pool).await?;
    for agent in agents.iter().filter(|agent| members.contains(&own, agent)) {
        folds.entry((own.clone(), agent.name.clone())).or_default();
    }
    for (site, arrival) in &arrivals {
        for agent in &arrival.targets {
            folds.entry((site.clone(), agent.clone())).or_default();
        }
    }
    let poll_interval = crate::agents::read_settings(pool)
        .await?
        .agent_poll_interval_ms as i64;
    let silent_since = |site: &str, name: &str| {
        if site != own {
            return None;
        }
        let agent = agents.iter().find(|agent| agent.name == name)?;
        match reachability(
            state.seen.contact(name, agent.last_seen_ms),
            poll_interval,
            now,
        ) {
            Reachability::UnreachableSince(since) => Some(since),
            // Never polled: not reachable since it was enrolled.
            Reachability::Never => Some(agent.enrolled_at_ms),
            Reachability::Reachable => None,
        }
    };
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    let mut runs: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    let workstations: Vec<WorkstationStatus> = folds
        .into_iter()
        .map(|((site, agent), mut fold)| {
            for (at, event) in site_events.get(&site).into_iter().flatten() {
                fold.apply(*at, event);
            }
            let view = fold.view();
            let state_name = view.state.name().to_owned();
            let (bytes_done, bytes_total) = match view.state {
                cascade_domain::run::RunState::Downloading {
                    bytes_done,
                    bytes_total,
                } => (Some(bytes_done), Some(bytes_total)),
                _ => (None, None),
            };
            *counts.entry(state_name.clone()).or_default() += 1;
            *runs
                .entry(site.clone())
                .or_default()
                .entry(state_name.clone())
                .or_default() += 1;
            WorkstationStatus {
                unreachable_since_ms: silent_since(&site, &agent),
                site,
                agent,
                state: state_name,
                since_ms: view.since,
                attempts: view.attempts,
                exit_code: view.exit_code,
                reason: view.reason,
                output_tail: view.output_tail,
                bytes_done,
                bytes_total,
                expired_at_ms: view.expired_at,
                canceled_at_ms: view.canceled_at,
            }
        })
        .collect();

    // Per site: instruction, distribute phase, runs. A site that joined
    // after the job was created and never got it is listed only while the
    // job is active (a snapshot of active jobs goes to every new site).
    let version = cascade_domain::Version::new(job.offer.version)
        .ok_or_else(|| Error::Internal(format!("job {id} has version 0")))?;
    let active = matches!(job.state.as_str(), "active" | "scheduled");
    // Sites below that ever connected (their `site_joined` came up).
    let connected: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT site FROM status_messages WHERE kind = 'site_joined' AND site IS NOT NULL",
    )
    .fetch_all(pool)
    .await?;
    let mut site_codes = vec![(own.clone(), i64::MIN)];
    site_codes.extend(
        db::subtree(pool)
            .await?
            .into_iter()
            .map(|row| (row.code, row.registered_at_ms)),
    );
    let mut sites = Vec::new();
    let mut flat = Vec::new();
    for (site, registered_at) in site_codes {
        let arrival = arrivals.get(&site);
        if arrival.is_none() && registered_at > job.created_at_ms && !active {
            continue;
        }
        let dps: Vec<(String, DistributionView)> = arrival
            .map(|arrival| {
                arrival
                    .dps
                    .iter()
                    .map(|dp| {
                        let view = distribution
                            .get(&(site.clone(), dp.clone()))
                            .cloned()
                            .unwrap_or_else(|| DistributionFold::default().view());
                        (dp.clone(), view)
                    })
                    .collect()
            })
            .unwrap_or_default();
        let refused = refusals.get(&site);
        let instruction = match (arrival, refused) {
            (Some(_), _) => "arrived",
            (None, Some(_)) => "refused",
            (None, None) if site != own && !connected.contains(&site) => "not_connected",
            (None, None) => "pending",
        };
        let summary = match arrival {
            Some(_) => {
                let views: Vec<DistributionView> =
                    dps.iter().map(|(_, view)| view.clone()).collect();
                SiteDistribution::of(&views, version).name()
            }
            None => "pending",
        };
        let dps: Vec<DpPackageStatus> = dps
            .into_iter()
            .map(|(dp, view)| status::dp_status(site.clone(), dp, &view))
            .collect();
        flat.extend(dps.iter().cloned());
        sites.push(SiteJobStatus {
            instruction: instruction.to_owned(),
            reason: refused.filter(|_| arrival.is_none()).cloned(),
            arrived_at_ms: arrival.map(|arrival| arrival.at),
            targets: workstations.iter().filter(|ws| ws.site == site).count() as u64,
            distribution: summary.to_owned(),
            dps,
            runs: runs.remove(&site).unwrap_or_default(),
            site,
        });
    }
    let outcome = outcome(&job, &sites, &workstations, now);
    Ok(JobStatus {
        job: JobInfo {
            outcome: Some(outcome.to_owned()),
            ..job
        },
        counts,
        workstations,
        distribution: flat,
        sites,
        outcome: outcome.to_owned(),
    })
}

/// A message about a job: source, seq, at, site, agent, body.
type JobMessageRow = (String, i64, i64, Option<String>, Option<String>, String);

/// What a site reported when the job arrived there.
struct Arrival {
    at: i64,
    targets: Vec<String>,
    dps: Vec<String>,
}

/// How long after a run's deadline (its start plus the job's timeout) a
/// workstation that reported it running is still waited for; past it, a
/// canceled or expired job is final even if the workstation never reports.
const RUN_REPORT_GRACE_MS: i64 = 60_000;

/// The job as a whole: `in_progress` while a connected site has not
/// reported the instruction or a workstation has not finished; then
/// `failed` if a workstation failed or a site refused the instruction (a DP
/// still retrying changes nothing about that); else `complete` once every
/// site's distribution is complete or not applicable. A site that never
/// connected is left out.
///
/// A job canceled or expired before that is final too once no workstation
/// is still downloading or running it (one that is may finish, and its
/// report still counts, until its timeout and [`RUN_REPORT_GRACE_MS`] have
/// passed): `failed` if a workstation failed, else `canceled` or
/// `expired`. What was complete or failed before stays so: expiry never
/// rewrites history (Q152229).
fn outcome(
    job: &JobInfo,
    sites: &[SiteJobStatus],
    workstations: &[WorkstationStatus],
    now: i64,
) -> &'static str {
    let running = running_outcome(sites, workstations);
    let ended = match job.state.as_str() {
        "canceled" => "canceled",
        "expired" => "expired",
        _ => return running,
    };
    let timeout = job.offer.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS) as i64;
    let still_running = workstations.iter().any(|ws| {
        matches!(ws.state.as_str(), "downloading" | "running")
            && ws.since_ms + timeout + RUN_REPORT_GRACE_MS > now
    });
    let any_failed = workstations
        .iter()
        .any(|ws| matches!(ws.state.as_str(), "failed" | "interrupted"));
    match running {
        "failed" => "failed",
        // Ended with a failure among the runs: that stays the outcome,
        // whatever else did not run.
        "in_progress" if !still_running && any_failed => "failed",
        // Complete only if every workstation completed: a run stopped by
        // the cancel is final but not complete.
        "complete" if workstations.iter().all(|ws| ws.state == "complete") => "complete",
        "in_progress" if still_running => "in_progress",
        _ => ended,
    }
}

fn running_outcome(sites: &[SiteJobStatus], workstations: &[WorkstationStatus]) -> &'static str {
    let connected = |site: &SiteJobStatus| site.instruction != "not_connected";
    let runs_open = sites
        .iter()
        .filter(|site| connected(site))
        .any(|site| site.instruction == "pending")
        || workstations
            .iter()
            .any(|ws| !cascade_domain::run::RunState::is_final_name(&ws.state));
    let failed = workstations
        .iter()
        .any(|ws| matches!(ws.state.as_str(), "failed" | "interrupted"))
        || sites.iter().any(|site| site.instruction == "refused");
    let distributing = sites.iter().filter(|site| connected(site)).any(|site| {
        site.instruction == "arrived"
            && !matches!(site.distribution.as_str(), "not_applicable" | "complete")
    });
    match (runs_open, failed, distributing) {
        (true, _, _) => "in_progress",
        (false, true, _) => "failed",
        (false, false, true) => "in_progress",
        (false, false, false) => "complete",
    }
}
