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
use crate::service::{distribution, groups, messages, send, status, timestamp};
use crate::state::AppState;
use cascade_domain::job::{JobFacts, JobFold, JobState, KnownSite, SiteEvent};
use cascade_domain::run::{reachability, Reachability};
use cascade_domain::status::DistributionView;
use cascade_protocol::*;
use cascade_store::now_ms;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Longest command line accepted.
const MAX_COMMAND_LEN: usize = 8192;

/// Longest timeout a job may have: 30 days.
const MAX_TIMEOUT_MS: u64 = 30 * 24 * 3_600_000;

/// Creates a job at the central site; it arrives here at once and is
/// passed down.
pub async fn create(state: &AppState, request: &JobRequest) -> Result<JobInfo> {
    state.require_central("creating jobs")?;
    let now = now_ms();
    // A removal job may leave its command to the version's uninstall
    // command (resolved below).
    let no_command = request.command.trim().is_empty();
    if (no_command && !request.remove) || request.command.len() > MAX_COMMAND_LEN {
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
    if request.timeout_ms == Some(0) || request.timeout_ms.is_some_and(|ms| ms > MAX_TIMEOUT_MS) {
        return Err(Error::invalid(
            "invalid_timeout",
            "the timeout must be longer than 0 and at most 30 days",
        ));
    }
    if request.retries > 100 {
        return Err(Error::invalid("invalid_retries", "at most 100 retries"));
    }
    if request.success_codes.len() > 64 {
        return Err(Error::invalid(
            "invalid_success_codes",
            "at most 64 success codes",
        ));
    }
    if let Some(code) = request
        .success_codes
        .iter()
        .find(|code| !(0..=255).contains(*code))
    {
        return Err(Error::invalid(
            "invalid_success_codes",
            format!("success code {code} is not an exit status: a command exits with 0 to 255"),
        ));
    }
    let success_codes = if request.success_codes.is_empty() {
        vec![0]
    } else {
        request.success_codes.clone()
    };
    check_health_options(request, &success_codes)?;
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
    if db::version_retired(&mut *tx.tx, package.id, version).await? {
        return Err(Error::Conflict(format!(
            "version {version} of {} was retired by this site's retention (site settings \
             --keep-versions): its content is gone; use a newer version",
            package.name
        )));
    }
    let command = if no_command {
        db::uninstall_command(&mut *tx.tx, package.id, version)
            .await?
            .ok_or_else(|| {
                Error::invalid(
                    "no_uninstall_command",
                    format!(
                        "version {version} of {} carries no uninstall command: give --command, \
                         or make a version with package update --uninstall-command",
                        package.name
                    ),
                )
            })?
    } else {
        request.command.clone()
    };
    let collection_id = collection_id(&mut tx, &request.collection).await?;
    // Signed into the job: the agent enforces what it was given.
    let windows = db::collection_windows(&mut *tx.tx, collection_id).await?;
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
            command: &command,
            offer_at_ms: offer_at,
            expires_at_ms: request.expires_at_ms,
            optional: request.optional,
            retries: request.retries,
            retry_delay_ms: request.retry_delay_ms,
            timeout_ms: Some(request.timeout_ms.unwrap_or(db::DEFAULT_TIMEOUT_MS)),
            success_codes: &success_codes,
            windows: &windows,
            any_time: request.any_time,
            remove: request.remove,
            check: request.check.as_deref(),
            reboot_codes: &request.reboot_codes,
            rerun: request.rerun.unwrap_or_default(),
            created_at_ms: now,
            canceled_at_ms: None,
            dp_group: request.dp_group.as_deref(),
            intent: None,
        },
    )
    .await?
    .ok_or_else(|| Error::Internal("a new job was not stored".into()))?;
    // Signed from what was stored, so the signature covers exactly what
    // every site will hold.
    let (stored, _) = db::job_by_id(&mut *tx.tx, id as u64).await?;
    let (machines, rule) = db::collection_definition_by_id(&mut *tx.tx, collection_id).await?;
    let intent = SignedIntent::sign(
        &Intent::Job(Box::new(JobIntent::of(
            &stored,
            JobTarget { machines, rule },
            1,
            now,
        ))),
        &*state.signing_key()?,
    );
    db::set_intent(&mut tx, id, &intent).await?;
    let info = arrive(state, &mut tx, id).await?;
    send::send_down(state, &mut tx, &Instruction::Job { job: info.clone() }).await?;
    tx.commit().await?;
    state.notify_everything();
    tracing::info!(job = id, package = %package.name, version, collection = %request.collection, "job created");
    Ok(info)
}

/// Refuses a check command that is empty or too long, and reboot codes
/// that are too many or that are success codes too (an exit code must say
/// one thing).
fn check_health_options(request: &JobRequest, success_codes: &[i32]) -> Result<()> {
    if let Some(check) = &request.check {
        if check.trim().is_empty() || check.len() > MAX_COMMAND_LEN {
            return Err(Error::invalid(
                "invalid_check",
                format!("the check command must be 1 to {MAX_COMMAND_LEN} bytes"),
            ));
        }
    }
    if request.reboot_codes.len() > 64 {
        return Err(Error::invalid(
            "invalid_reboot_codes",
            "at most 64 reboot codes",
        ));
    }
    if let Some(code) = request
        .reboot_codes
        .iter()
        .find(|code| !(0..=255).contains(*code))
    {
        return Err(Error::invalid(
            "invalid_reboot_codes",
            format!("reboot code {code} is not an exit status: a command exits with 0 to 255"),
        ));
    }
    if let Some(code) = request
        .reboot_codes
        .iter()
        .find(|code| success_codes.contains(code))
    {
        return Err(Error::invalid(
            "invalid_reboot_codes",
            format!(
                "exit code {code} is both a success code and a reboot code; a reboot code already \
                 means success (with a reboot needed)"
            ),
        ));
    }
    Ok(())
}

async fn collection_id(tx: &mut WriteTx<'_>, name: &str) -> Result<i64> {
    db::collection_id(&mut *tx.tx, name)
        .await?
        .ok_or_else(|| Error::not_found(Entity::Collection, name))
}

/// Changes an open job's offer time or expiry at the central site: the
/// job is signed again under its next revision (everything else as it
/// was: command, target, windows) and passed down like any instruction;
/// every site applies the newer revision once, and agents holding the
/// offer take it from their next policy. A job canceled or expired is not
/// changed.
pub async fn edit(state: &AppState, id: u64, request: &JobEditRequest) -> Result<JobInfo> {
    state.require_central("changing jobs")?;
    let now = now_ms();
    let mut tx = state.db.write().await?;
    let (info, _) = db::job_by_id(&mut *tx.tx, id).await?;
    if matches!(
        info.state,
        cascade_protocol::JobState::Canceled | cascade_protocol::JobState::Expired
    ) {
        return Err(Error::Conflict(format!(
            "job {id} is {}: it cannot be changed; create a new job",
            info.state
        )));
    }
    if request.expires_at_ms.is_some() && request.no_expiry {
        return Err(Error::invalid(
            "invalid_expiry",
            "give either a new expiry or no expiry, not both",
        ));
    }
    let offer_at = request.offer_at_ms.unwrap_or(info.offer.offer_at_ms);
    let expires_at = match (request.expires_at_ms, request.no_expiry) {
        (_, true) => None,
        (Some(at), false) => Some(at),
        (None, false) => info.offer.expires_at_ms,
    };
    if let Some(expires) = expires_at {
        if expires <= offer_at.max(now) {
            return Err(Error::invalid(
                "invalid_expiry",
                "the job would expire before it is offered; give a later --expires-at or --expires-in",
            ));
        }
    }
    resign(state, &mut tx, &info, |intent| JobIntent {
        offer_at_ms: offer_at,
        expires_at_ms: expires_at,
        ..intent
    })
    .await?;
    tx.commit().await?;
    state.notify_everything();
    tracing::info!(job = id, offer_at, ?expires_at, "job changed");
    Ok(status_of(state, id).await?.job)
}

/// Signs job `info` again at the central site with what `change` makes of
/// its intent, under the next revision, stores it and passes it down;
/// this site's agents take it from their next answer.
async fn resign(
    state: &AppState,
    tx: &mut WriteTx<'_>,
    info: &JobInfo,
    change: impl FnOnce(JobIntent) -> JobIntent,
) -> Result<()> {
    let id = info.offer.id;
    let held = cascade_protocol::intent::verify_offer(&info.offer, &state.trust)
        .map_err(|err| Error::Internal(format!("job {id}'s stored intent: {err}")))?;
    let revision = held.revision + 1;
    let intent = JobIntent {
        revision,
        issued_at_ms: now_ms(),
        ..change(held)
    };
    let (offer_at, expires_at) = (intent.offer_at_ms, intent.expires_at_ms);
    let signed = SignedIntent::sign(&Intent::Job(Box::new(intent)), &*state.signing_key()?);
    db::set_times(tx, id as i64, offer_at, expires_at).await?;
    db::set_intent(tx, id as i64, &signed).await?;
    db::bump_agents(tx).await?;
    let (info, _) = db::job_by_id(&mut *tx.tx, id).await?;
    send::send_down(state, tx, &Instruction::Job { job: info }).await
}

/// A collection's definition changed at the central site: every open job
/// for it is signed again with the new definition as its target (under the
/// next revision), arrives here again (its workstations here follow the
/// new definition) and is passed down, where each site does the same.
/// Returns how many jobs changed.
pub async fn retarget(state: &AppState, tx: &mut WriteTx<'_>, collection_id: i64) -> Result<usize> {
    let (machines, rule) = db::collection_definition_by_id(&mut *tx.tx, collection_id).await?;
    let jobs = db::open_jobs(&mut *tx.tx, now_ms()).await?;
    let mut changed = 0;
    for (info, _) in jobs.iter().filter(|(_, id)| *id == collection_id) {
        let target = JobTarget {
            machines: machines.clone(),
            rule: rule.clone(),
        };
        arrive(state, tx, info.offer.id as i64).await?;
        resign(state, tx, info, |intent| JobIntent { target, ..intent }).await?;
        changed += 1;
    }
    Ok(changed)
}

/// A job's instruction arrived from the parent: stores it under the central
/// site's id and lets it arrive here. Applying it twice changes nothing.
pub async fn apply_job(state: &AppState, tx: &mut WriteTx<'_>, job: &JobInfo) -> Result<()> {
    let offer = &job.offer;
    // Stored only as the central site signed it: a site above that
    // altered it is refused here already, not only by the agents.
    let intent = cascade_protocol::intent::verify_job(job, &state.trust).map_err(|err| {
        Error::invalid(
            "job_refused",
            format!(
                "job {} refused: {err} (every job must be signed by the central site {})",
                offer.id, state.central
            ),
        )
    })?;
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
            windows: &offer.windows,
            any_time: offer.any_time,
            remove: offer.remove,
            check: offer.check.as_deref(),
            reboot_codes: &offer.reboot_codes,
            rerun: offer.rerun,
            created_at_ms: job.created_at_ms,
            // Not from the instruction's unsigned fields: a job is canceled
            // here only by a signed cancellation (`apply_cancel`).
            canceled_at_ms: None,
            dp_group: job.dp_group.as_deref(),
            intent: offer.intent.as_ref(),
        },
    )
    .await?
    .is_some();
    if inserted {
        arrive(state, tx, offer.id as i64).await?;
        return Ok(());
    }
    // Held already: a newer revision (new times from the central site)
    // replaces the held one; the same or an older one changes nothing.
    let (held, _) = db::job_by_id(&mut *tx.tx, offer.id).await?;
    let held_revision = cascade_protocol::intent::verify_offer(&held.offer, &state.trust)
        .map_or(0, |held| held.revision);
    if intent.revision > held_revision {
        if let Some(signed) = &offer.intent {
            db::set_times(tx, offer.id as i64, offer.offer_at_ms, offer.expires_at_ms).await?;
            db::set_intent(tx, offer.id as i64, signed).await?;
            db::bump_agents(tx).await?;
            let held_target = cascade_protocol::intent::verify_offer(&held.offer, &state.trust)
                .ok()
                .map(|held| held.target);
            if held_target.as_ref() != Some(&intent.target) {
                // Its collection changed: its workstations here follow.
                arrive(state, tx, offer.id as i64).await?;
            }
            state.notify_everything();
            tracing::info!(
                job = offer.id,
                revision = intent.revision,
                "job changed by the central site"
            );
        }
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
    let (info, _) = db::job_by_id(&mut *tx.tx, id).await?;
    let intent = SignedIntent::sign(
        &Intent::Cancel(CancelIntent {
            job: id,
            package: info.offer.package,
            issued_at_ms: now_ms(),
        }),
        &*state.signing_key()?,
    );
    if let Some(package) = apply_cancel(state, &mut tx, id, Some(&intent)).await? {
        // The timestamp names it from now on: no site can withhold it.
        timestamp::sign_in(&mut tx, state, now_ms()).await?;
        send::send_down(
            state,
            &mut tx,
            &Instruction::JobCanceled {
                job: id,
                package,
                intent: Some(intent),
            },
        )
        .await?;
    }
    tx.commit().await?;
    state.notify_everything();
    state.notify_retention();
    Ok(status_of(state, id).await?.job)
}

/// Cancels a job here (once: `job_canceled` is recorded the first time),
/// keeping the central site's signed cancellation for the agents (a
/// cancellation from the parent must carry one that verifies); returns its
/// package when this canceled it, `None` when it was already.
pub async fn apply_cancel(
    state: &AppState,
    tx: &mut WriteTx<'_>,
    id: u64,
    intent: Option<&SignedIntent>,
) -> Result<Option<String>> {
    let refused = |reason: String| {
        Error::invalid(
            "cancel_refused",
            format!(
                "the cancellation of job {id} refused: {reason} (every cancellation must be signed by the central site {})",
                state.central
            ),
        )
    };
    let cancel = intent
        .ok_or_else(|| refused("it is not signed".into()))?
        .verify_cancel(&state.trust)
        .map_err(|err| refused(err.to_string()))?;
    if cancel.job != id {
        return Err(refused(format!("it is signed for job {}", cancel.job)));
    }
    let (info, _) = db::job_by_id(&mut *tx.tx, id).await?;
    if let Some(at) = info.canceled_at_ms {
        // Canceled already; keep the signed cancellation if none is held
        // (a job canceled before cancellations were signed).
        if !db::has_cancel_intent(&mut *tx.tx, id).await? {
            db::set_canceled(tx, id as i64, at, intent).await?;
        }
        return Ok(None);
    }
    db::set_canceled(tx, id as i64, now_ms(), intent).await?;
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

/// [`status_of`], with the package views already folded in `views`: the
/// facts gathered here, folded by `cascade_domain::job`.
async fn status_with(state: &AppState, id: u64, views: &mut PackageViews) -> Result<JobStatus> {
    let pool = state.db.pool();
    let (job, collection_id) = db::job_by_id(pool, id).await?;
    let own = state.code.to_string();
    let now = now_ms();
    let version = cascade_domain::Version::new(job.offer.version)
        .ok_or_else(|| Error::Internal(format!("job {id} has version 0")))?;
    let mut fold = JobFold::new(JobFacts {
        own: own.clone(),
        created_at: job.created_at_ms,
        state: JobState::at(
            job.canceled_at_ms,
            job.offer.offer_at_ms,
            job.offer.expires_at_ms,
            now,
        ),
        version,
        timeout_ms: job.offer.timeout_ms.unwrap_or(db::DEFAULT_TIMEOUT_MS) as i64,
    });

    // The job's messages, grouped by source in sequence order: a message
    // relayed late never moves a workstation's state back.
    let mut rows = db::messages_of_job(pool, id).await?;
    rows.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    for (_, _, at, site, agent, body) in rows {
        let Some(site) = site else { continue };
        let message = messages::parse_stored(&body)?;
        match (agent, message.body) {
            (Some(agent), body) => {
                if let Some(event) = body.run_event() {
                    fold.workstation_event(&site, &agent, at, &event);
                }
            }
            (None, StatusBody::JobArrived { targets, dps, .. }) => {
                fold.site_event(&site, at, SiteEvent::Arrived { targets, dps });
            }
            (None, StatusBody::InstructionRefused { reason, .. }) => {
                fold.site_event(&site, at, SiteEvent::Refused { reason });
            }
            (None, body) => {
                if let Some(event) = body.run_event() {
                    fold.site_event(&site, at, SiteEvent::Run(event));
                }
            }
        }
    }
    if !views.contains_key(&job.offer.package) {
        let folded = status::distribution_views(state, &job.offer.package).await?;
        views.insert(job.offer.package.clone(), folded);
    }
    let distribution = &views[&job.offer.package];
    // This site's workstations follow the collection live.
    let members = db::membership(pool, collection_id).await?;
    let agents = db::all_agents(pool).await?;
    for agent in agents.iter().filter(|agent| members.contains(&own, agent)) {
        fold.target(&own, &agent.name);
    }
    // Listed workstations of the sites below are rows from the start, not
    // only once their site or they report.
    let (machines, _) = db::collection_definition_by_id(pool, collection_id).await?;
    if let Some(machines) = machines {
        for (agent, site) in db::enrolled_below(pool, &machines).await? {
            if site != own {
                fold.target(&site, &agent);
            }
        }
    }
    let poll_interval = db::read_settings(pool).await?.agent_poll_interval_ms as i64;
    let silent_since = |_: &str, name: &str| {
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
    let connected = db::connected_sites(pool).await?;
    let mut sites = vec![KnownSite {
        code: own.clone(),
        registered_at: i64::MIN,
        connected: true,
    }];
    sites.extend(db::subtree(pool).await?.into_iter().map(|row| KnownSite {
        connected: connected.contains(&row.code),
        code: row.code,
        registered_at: row.registered_at_ms,
    }));
    // A job created before this site recorded arrivals distributed to the
    // DPs queued for its package.
    let queued = distribution
        .keys()
        .filter(|(site, _)| *site == own)
        .map(|(_, dp)| dp.clone())
        .collect();
    let view = fold.view(
        &sites,
        queued,
        |site, dp| distribution.get(&(site.to_owned(), dp.to_owned())).cloned(),
        silent_since,
        now,
    );

    // Workstations per state, in all and per site.
    let mut counts: BTreeMap<WorkstationState, u64> = BTreeMap::new();
    let mut runs: BTreeMap<&str, BTreeMap<WorkstationState, u64>> = BTreeMap::new();
    for row in &view.workstations {
        let state = WorkstationState::from(&row.run.state);
        *counts.entry(state).or_default() += 1;
        *runs
            .entry(row.site.as_str())
            .or_default()
            .entry(state)
            .or_default() += 1;
    }
    let mut runs: BTreeMap<String, BTreeMap<WorkstationState, u64>> = runs
        .into_iter()
        .map(|(site, counts)| (site.to_owned(), counts))
        .collect();
    let workstations: Vec<WorkstationStatus> = view
        .workstations
        .into_iter()
        .map(|row| {
            let (bytes_done, bytes_total) = match row.run.state {
                cascade_domain::run::RunState::Downloading {
                    bytes_done,
                    bytes_total,
                } => (Some(bytes_done), Some(bytes_total)),
                _ => (None, None),
            };
            WorkstationStatus {
                state: (&row.run.state).into(),
                site: row.site,
                agent: row.agent,
                since_ms: row.run.since,
                attempts: row.run.attempts,
                exit_code: row.run.exit_code,
                reason: row.run.reason,
                output_tail: row.run.output_tail,
                bytes_done,
                bytes_total,
                expired_at_ms: row.run.expired_at,
                canceled_at_ms: row.run.canceled_at,
                unreachable_since_ms: row.unreachable_since,
                window_opens_at_ms: row.run.window_opens_at,
            }
        })
        .collect();
    let mut flat = Vec::new();
    let sites: Vec<SiteJobStatus> = view
        .sites
        .into_iter()
        .map(|row| {
            let dps: Vec<DpPackageStatus> = row
                .dps
                .into_iter()
                .map(|(dp, dp_view)| status::dp_status(row.site.clone(), dp, &dp_view))
                .collect();
            flat.extend(dps.iter().cloned());
            SiteJobStatus {
                instruction: (&row.instruction).into(),
                reason: row.reason,
                arrived_at_ms: row.arrived_at,
                targets: row.targets,
                distribution: (&row.distribution).into(),
                dps,
                runs: runs.remove(&row.site).unwrap_or_default(),
                site: row.site,
            }
        })
        .collect();
    let outcome = JobOutcome::from(view.outcome);
    Ok(JobStatus {
        job: JobInfo {
            outcome: Some(outcome),
            ..job
        },
        counts,
        workstations,
        distribution: flat,
        sites,
        outcome,
    })
}
