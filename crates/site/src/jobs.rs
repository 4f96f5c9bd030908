//! Jobs: "run this command from this package on this collection" — creating
//! them (with their distribute phase), offering them to agents through their
//! policy, canceling them, recording their expiry, and the job status view.
//!
//! **Architecture Invariant:** expiry and cancellation are status messages
//! of the site (`job_expired`, `job_canceled`); the job status folds them as
//! flags beside each workstation's last reported state, never in its place
//! (Q152229).

use crate::agents::{agent_by_name, all_agents, membership};
use crate::api::ApiJson;
use crate::auth::Principal;
use crate::db::{self, WriteTx};
use crate::error::{Error, Result};
use crate::{distribution, now_ms, status, AppState};
use axum::extract::{Path, State};
use axum::Json;
use cascade_domain::run::{reachability, Reachability, RunFold};
use cascade_protocol::*;
use sqlx::Row;
use std::collections::BTreeMap;
use std::time::Duration;

/// Deadline of a job's download and run when none is given, so that no
/// workstation can stay "running" forever.
pub const DEFAULT_TIMEOUT_MS: u64 = 60 * 60 * 1000;

/// Longest command line accepted.
const MAX_COMMAND_LEN: usize = 8192;

const JOB_COLUMNS: &str = "j.id, p.name, j.version, c.name, j.command, j.offer_at_ms, j.expires_at_ms, j.optional,
     j.retries, j.retry_delay_ms, j.timeout_ms, j.success_codes, j.created_at_ms, j.canceled_at_ms, j.collection_id";
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
    sqlx::query("UPDATE agents SET revision = revision + 1")
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
    let collection_id: i64 = sqlx::query_scalar("SELECT id FROM collections WHERE name = ?")
        .bind(&request.collection)
        .fetch_optional(&mut *tx.tx)
        .await?
        .ok_or(Error::NotFound {
            what: "collection",
            name: request.collection.clone(),
        })?;
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO jobs (package_id, version, collection_id, command, offer_at_ms, expires_at_ms, optional,
                           retries, retry_delay_ms, timeout_ms, success_codes, created_at_ms)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
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
    .fetch_one(&mut *tx.tx)
    .await?;
    bump_agents(&mut tx).await?;
    tx.commit().await?;
    state.notify_agents_changed();

    // The distribute phase: every DP of the site that lacks the package gets it.
    let dps: Vec<String> = db::all_dps(state.db.pool())
        .await?
        .into_iter()
        .map(|dp| dp.name)
        .collect();
    if !dps.is_empty() {
        distribution::distribute(
            &state,
            &package.name,
            &DistributeRequest {
                dps,
                all_dps: false,
            },
        )
        .await?;
    }
    tracing::info!(job = id, package = %package.name, version, collection = %request.collection, "job created");
    let (info, _) = job_by_id(state.db.pool(), id as u64).await?;
    Ok(Json(info))
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
    let jobs = rows
        .into_iter()
        .map(|row| job_from_row(row, now).map(|(info, _)| info))
        .collect::<Result<_>>()?;
    Ok(Json(jobs))
}

/// `POST /api/v1/jobs/{id}/cancel`.
pub async fn cancel(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<u64>,
) -> Result<Json<JobInfo>> {
    principal.require_admin()?;
    let mut tx = state.db.write().await?;
    let (info, _) = job_by_id(&mut *tx.tx, id).await?;
    if info.canceled_at_ms.is_none() {
        sqlx::query("UPDATE jobs SET canceled_at_ms = ? WHERE id = ?")
            .bind(now_ms())
            .bind(id as i64)
            .execute(&mut *tx.tx)
            .await?;
        status::record_site_message(
            &state,
            &mut tx,
            StatusBody::JobCanceled {
                job: id,
                package: info.offer.package.clone(),
            },
            None,
        )
        .await?;
        bump_agents(&mut tx).await?;
    }
    tx.commit().await?;
    state.notify_agents_changed();
    let (info, _) = job_by_id(state.db.pool(), id).await?;
    Ok(Json(info))
}

/// The jobs offered to an agent now: neither canceled nor expired, and its
/// collection holds the agent.
pub async fn offers_for(state: &AppState, agent: &str) -> Result<Vec<JobOffer>> {
    let now = now_ms();
    let rows = sqlx::query(&format!(
        "SELECT {JOB_COLUMNS} FROM {JOB_FROM}
         WHERE j.canceled_at_ms IS NULL AND (j.expires_at_ms IS NULL OR j.expires_at_ms > ?) ORDER BY j.id"
    ))
    .bind(now)
    .fetch_all(state.db.pool())
    .await?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let agent = agent_by_name(state.db.pool(), agent)
        .await?
        .ok_or_else(|| Error::Internal(format!("agent {agent} vanished")))?;
    let mut offers = Vec::new();
    for row in rows {
        let (info, collection_id) = job_from_row(row, now)?;
        if membership(state.db.pool(), collection_id)
            .await?
            .contains(state.code.as_str(), &agent)
        {
            offers.push(info.offer);
        }
    }
    Ok(offers)
}

/// Whether `job` is offered to the agent named `agent` (for refusing
/// reports about jobs that do not concern it).
pub async fn targets(state: &AppState, job: u64, agent: &str) -> Result<bool> {
    let Ok((_, collection_id)) = job_by_id(state.db.pool(), job).await else {
        return Ok(false);
    };
    let Some(row) = agent_by_name(state.db.pool(), agent).await? else {
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
            tracing::warn!(error = %err, "recording job expiry failed; will retry");
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
            None,
        )
        .await?;
    }
    bump_agents(&mut tx).await?;
    tx.commit().await?;
    state.notify_agents_changed();
    tracing::info!(jobs = due.len(), "jobs expired");
    Ok(())
}

/// `GET /api/v1/jobs/{id}/status`: folded from the job's status messages.
pub async fn job_status(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<u64>,
) -> Result<Json<JobStatus>> {
    principal.require_admin()?;
    let pool = state.db.pool();
    let (job, collection_id) = job_by_id(pool, id).await?;
    let members = membership(pool, collection_id).await?;
    let agents = all_agents(pool).await?;
    let mut folds: BTreeMap<String, RunFold> = agents
        .iter()
        .filter(|agent| members.contains(state.code.as_str(), agent))
        .map(|agent| (agent.name.clone(), RunFold::default()))
        .collect();
    let poll_interval = crate::agents::read_settings(pool)
        .await?
        .agent_poll_interval_ms as i64;
    let now = now_ms();
    let silent_since = |name: &str| {
        let last_seen = agents.iter().find(|agent| agent.name == name)?.last_seen_ms;
        match reachability(last_seen, poll_interval, now) {
            Reachability::UnreachableSince(since) => Some(since),
            _ => None,
        }
    };
    let rows =
        sqlx::query("SELECT at_ms, agent, body FROM status_messages WHERE job = ? ORDER BY id")
            .bind(id as i64)
            .fetch_all(pool)
            .await?;
    let mut site_events = Vec::new();
    for row in rows {
        let at: i64 = row.get(0);
        let agent: Option<String> = row.get(1);
        let body: String = row.get(2);
        let message = status::parse_stored(&body)?;
        let Some(event) = message.body.run_event() else {
            continue;
        };
        match agent {
            Some(agent) => folds.entry(agent).or_default().apply(at, &event),
            None => site_events.push((at, event)),
        }
    }
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    let workstations = folds
        .into_iter()
        .map(|(agent, mut fold)| {
            for (at, event) in &site_events {
                fold.apply(*at, event);
            }
            let view = fold.view();
            *counts.entry(view.state.name().to_owned()).or_default() += 1;
            WorkstationStatus {
                unreachable_since_ms: silent_since(&agent),
                agent,
                state: view.state.name().to_owned(),
                since_ms: view.since,
                attempts: view.attempts,
                exit_code: view.exit_code,
                reason: view.reason,
                output_tail: view.output_tail,
                expired_at_ms: view.expired_at,
                canceled_at_ms: view.canceled_at,
            }
        })
        .collect();
    let distribution = status::distribution_rows(&state, &job.offer.package)
        .await?
        .2;
    Ok(Json(JobStatus {
        job,
        counts,
        workstations,
        distribution,
    }))
}
