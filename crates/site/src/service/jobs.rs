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

use crate::db::{self, WriteTx};
use crate::error::{Entity, Error, Result};
use crate::service::{distribution, groups, messages, send, status};
use crate::state::AppState;
use cascade_domain::hierarchy::SiteDistribution;
use cascade_domain::run::{reachability, Reachability, RunEvent, RunFold};
use cascade_domain::status::{DistributionFold, DistributionView};
use cascade_protocol::*;
use cascade_store::now_ms;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Longest command line accepted.
const MAX_COMMAND_LEN: usize = 8192;

/// Creates a job at the central site; it arrives here at once and is
/// passed down.
pub async fn create(state: &AppState, request: &JobRequest) -> Result<JobInfo> {
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
            return Err(Error::not_found(
                Entity::Version,
                format!("{} v{version}", package.name),
            ))
        }
        Some(version) => version as i64,
        None => latest,
    };
    let collection_id = collection_id(&mut tx, &request.collection).await?;
    if let Some(group) = &request.dp_group {
        groups::require_group(&mut tx, group).await?;
    }
    let id = db::insert_job(
        &mut tx,
        None,
        &db::NewJob {
            package_id: package.id,
            version,
            collection_id,
            command: &request.command,
            offer_at_ms: offer_at,
            expires_at_ms: request.expires_at_ms,
            optional: request.optional,
            retries: request.retries,
            retry_delay_ms: request.retry_delay_ms,
            timeout_ms: Some(request.timeout_ms.unwrap_or(db::DEFAULT_TIMEOUT_MS)),
            success_codes: &success_codes,
            created_at_ms: now,
            canceled_at_ms: None,
            dp_group: request.dp_group.as_deref(),
        },
    )
    .await?
    .ok_or_else(|| Error::Internal("a new job was not stored".into()))?;
    let info = arrive(state, &mut tx, id).await?;
    send::send_down(state, &mut tx, &Instruction::Job { job: info.clone() }).await?;
    tx.commit().await?;
    state.notify_everything();
    tracing::info!(job = id, package = %package.name, version, collection = %request.collection, "job created");
    Ok(info)
}

async fn collection_id(tx: &mut WriteTx<'_>, name: &str) -> Result<i64> {
    db::collection_id(&mut *tx.tx, name)
        .await?
        .ok_or_else(|| Error::not_found(Entity::Collection, name))
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
        return Err(Error::not_found(
            Entity::Version,
            format!(
                "{} v{} (job {} needs it; this site does not hold it)",
                offer.package, offer.version, offer.id
            ),
        ));
    }
    let collection_id = collection_id(tx, &job.collection).await?;
    let inserted = db::insert_job(
        tx,
        Some(offer.id as i64),
        &db::NewJob {
            package_id: package.id,
            version: offer.version as i64,
            collection_id,
            command: &offer.command,
            offer_at_ms: offer.offer_at_ms,
            expires_at_ms: offer.expires_at_ms,
            optional: offer.optional,
            retries: offer.retries,
            retry_delay_ms: offer.retry_delay_ms,
            timeout_ms: offer.timeout_ms,
            success_codes: &offer.success_codes,
            created_at_ms: job.created_at_ms,
            canceled_at_ms: job.canceled_at_ms,
            dp_group: job.dp_group.as_deref(),
        },
    )
    .await?
    .is_some();
    if inserted {
        arrive(state, tx, offer.id as i64).await?;
    }
    Ok(())
}

/// A job arrives at this site (created here, or its instruction applied):
/// it records which of the site's workstations it targets, places the
/// package on the DPs it distributes to here (none: distribution is not
/// applicable at this site, Q167007), reports `job_arrived` and offers it
/// to the agents. The caller passes it on to the child sites.
async fn arrive(state: &AppState, tx: &mut WriteTx<'_>, id: i64) -> Result<JobInfo> {
    let (info, collection_id) = db::job_by_id(&mut *tx.tx, id as u64).await?;
    let members = db::membership(&mut *tx.tx, collection_id).await?;
    let targets: Vec<String> = db::all_agents(&mut *tx.tx)
        .await?
        .into_iter()
        .filter(|agent| members.contains(state.code.as_str(), agent))
        .map(|agent| agent.name)
        .collect();
    db::set_local_targets(tx, id, targets.len() as i64).await?;
    let dps = job_dps(state, tx, info.dp_group.as_deref(), !targets.is_empty()).await?;
    let package = db::require_package(&mut *tx.tx, &info.offer.package).await?;
    distribution::place(state, tx, (package.id, &package.name), &dps).await?;
    messages::record_site_message(
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
    db::bump_agents(tx).await?;
    Ok(info)
}

/// The jobs neither canceled nor expired, for a new child site.
pub async fn snapshot(tx: &mut WriteTx<'_>) -> Result<Vec<Instruction>> {
    Ok(db::open_jobs(&mut *tx.tx, now_ms())
        .await?
        .into_iter()
        .map(|(job, _)| Instruction::Job { job })
        .collect())
}

/// A workstation enrolled or reported new attributes. An active job that
/// targeted none of this site's workstations when it arrived, and now
/// targets this one, makes the site bring its content in and, without a DP
/// group, places it on the site's DPs. Returns whether anything changed.
pub async fn agent_arrived(state: &AppState, tx: &mut WriteTx<'_>, agent: &str) -> Result<bool> {
    let jobs = db::open_jobs_without_targets(&mut *tx.tx, now_ms()).await?;
    if jobs.is_empty() {
        return Ok(false);
    }
    let Some(row) = db::agent_by_name(&mut *tx.tx, agent).await? else {
        return Ok(false);
    };
    let mut changed = false;
    for db::UntargetedJob {
        id,
        version,
        collection_id,
        dp_group,
        package_id,
        package,
    } in jobs
    {
        if !db::membership(&mut *tx.tx, collection_id)
            .await?
            .contains(state.code.as_str(), &row)
        {
            continue;
        }
        db::set_local_targets(tx, id, 1).await?;
        let dps = job_dps(state, tx, dp_group.as_deref(), true).await?;
        if dp_group.is_none() {
            distribution::place(state, tx, (package_id, &package), &dps).await?;
        }
        // Reported again: the site's targets and DPs for the job changed.
        messages::record_site_message(
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
    state: &AppState,
    tx: &mut WriteTx<'_>,
    dp_group: Option<&str>,
    has_targets: bool,
) -> Result<Vec<(i64, String)>> {
    let all = db::all_dps(&mut *tx.tx).await?;
    let members = match dp_group {
        Some(group) => groups::local_members(state, tx, group).await?,
        None if has_targets => all.iter().map(|dp| dp.name.clone()).collect(),
        None => Vec::new(),
    };
    Ok(all
        .into_iter()
        .filter(|dp| members.contains(&dp.name))
        .map(|dp| (dp.id, dp.name))
        .collect())
}

/// Every job, with its outcome.
pub async fn list(state: &AppState) -> Result<Vec<JobInfo>> {
    let now = now_ms();
    let rows = db::all_jobs(state.db.pool(), now).await?;
    let mut jobs = Vec::with_capacity(rows.len());
    // Each package's history is folded once for all its jobs.
    let mut views = PackageViews::new();
    for (mut info, _) in rows {
        info.outcome = status_with(state, info.offer.id, &mut views)
            .await?
            .job
            .outcome;
        jobs.push(info);
    }
    Ok(jobs)
}

/// Cancels a job at the central site; the cancellation is passed down.
pub async fn cancel(state: &AppState, id: u64) -> Result<JobInfo> {
    state.require_central("canceling jobs")?;
    let mut tx = state.db.write().await?;
    if let Some(package) = apply_cancel(state, &mut tx, id).await? {
        send::send_down(
            state,
            &mut tx,
            &Instruction::JobCanceled { job: id, package },
        )
        .await?;
    }
    tx.commit().await?;
    state.notify_everything();
    Ok(status_of(state, id).await?.job)
}

/// Cancels a job here (once: `job_canceled` is recorded the first time);
/// returns its package when this canceled it, `None` when it was already.
pub async fn apply_cancel(
    state: &AppState,
    tx: &mut WriteTx<'_>,
    id: u64,
) -> Result<Option<String>> {
    let (info, _) = db::job_by_id(&mut *tx.tx, id).await?;
    if info.canceled_at_ms.is_some() {
        return Ok(None);
    }
    db::set_canceled(tx, id as i64, now_ms()).await?;
    messages::record_site_message(
        state,
        tx,
        StatusBody::JobCanceled {
            job: id,
            package: info.offer.package.clone(),
        },
    )
    .await?;
    db::bump_agents(tx).await?;
    Ok(Some(info.offer.package))
}

/// Whether `job` is offered to the agent named `agent` (for refusing
/// reports about jobs that do not concern it).
pub async fn targets(state: &AppState, job: u64, agent: &str) -> Result<bool> {
    let row = match state.agent_rows.get(agent) {
        Some(row) => row,
        None => match db::agent_by_name(state.db.pool(), agent).await? {
            Some(row) => Arc::new(row),
            None => return Ok(false),
        },
    };
    // A job still on offer is in the shared policy; an older one is read.
    let shared = state.shared_policy(0).await?;
    if let Some(known) = shared.jobs.iter().find(|known| known.offer.id == job) {
        return Ok(known.membership.contains(state.code.as_str(), &row));
    }
    let Ok((_, collection_id)) = db::job_by_id(state.db.pool(), job).await else {
        return Ok(false);
    };
    Ok(db::membership(state.db.pool(), collection_id)
        .await?
        .contains(state.code.as_str(), &row))
}

/// Records `job_expired` once for every job whose expiry passed, and
/// withdraws it from every agent's policy.
pub async fn record_expiries(state: &AppState) -> Result<()> {
    let due = db::expired_unrecorded(state.db.pool(), now_ms()).await?;
    if due.is_empty() {
        return Ok(());
    }
    let mut tx = state.db.write().await?;
    for (id, package) in &due {
        db::set_expiry_recorded(&mut tx, *id).await?;
        messages::record_site_message(
            state,
            &mut tx,
            StatusBody::JobExpired {
                job: *id as u64,
                package: package.clone(),
            },
        )
        .await?;
    }
    db::bump_agents(&mut tx).await?;
    tx.commit().await?;
    state.notify_agents_changed();
    state.notify_status_stored();
    state.notify_content_needs_changed();
    tracing::info!(jobs = due.len(), "jobs expired");
    Ok(())
}

/// `GET /api/v1/jobs/{id}/status`: folded from the job's status messages,
/// per site of this site's subtree and per workstation.
/// The distribution views of packages, by package, folded once per request.
type PackageViews = std::collections::HashMap<String, BTreeMap<(String, String), DistributionView>>;

/// The job's status, folded from its status messages (see [`job_status`]).
pub async fn status_of(state: &AppState, id: u64) -> Result<JobStatus> {
    status_with(state, id, &mut PackageViews::new()).await
}

/// [`status_of`], with the package views already folded in `views`.
async fn status_with(state: &AppState, id: u64, views: &mut PackageViews) -> Result<JobStatus> {
    let pool = state.db.pool();
    let (job, collection_id) = db::job_by_id(pool, id).await?;
    let own = state.code.to_string();
    let now = now_ms();

    // The job's messages, grouped by source in sequence order: a message
    // relayed late never moves a workstation's state back.
    let mut rows = db::messages_of_job(pool, id).await?;
    rows.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    let mut arrivals: BTreeMap<String, Arrival> = BTreeMap::new();
    let mut refusals: BTreeMap<String, String> = BTreeMap::new();
    let mut site_events: BTreeMap<String, Vec<(i64, RunEvent)>> = BTreeMap::new();
    let mut folds: BTreeMap<(String, String), RunFold> = BTreeMap::new();
    for (_, _, at, site, agent, body) in rows {
        let Some(site) = site else { continue };
        let message = messages::parse_stored(&body)?;
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
    let members = db::membership(pool, collection_id).await?;
    let agents = db::all_agents(pool).await?;
    for agent in agents.iter().filter(|agent| members.contains(&own, agent)) {
        folds.entry((own.clone(), agent.name.clone())).or_default();
    }
    for (site, arrival) in &arrivals {
        for agent in &arrival.targets {
            folds.entry((site.clone(), agent.clone())).or_default();
        }
    }
    let poll_interval = db::read_settings(pool).await?.agent_poll_interval_ms as i64;
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
    let connected = db::connected_sites(pool).await?;
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
    let timeout = job.offer.timeout_ms.unwrap_or(db::DEFAULT_TIMEOUT_MS) as i64;
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
