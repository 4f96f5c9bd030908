//! Agents and collections: enrollment (with optional approval), the policy
//! long poll agents keep open, site settings, and collections whose
//! membership follows agents as they enroll or change.

use crate::db::{self, AgentRow};
use crate::error::{Entity, Error, Result};
use crate::service::{auth, jobs, messages, timestamp};
use crate::state::{AppState, SeenAgents};
use cascade_domain::run::{reachability, Reachability};
use cascade_domain::validate_name;
use cascade_protocol::{
    AgentEnrollRequest, AgentEnrollResponse, AgentInfo, AgentPolicy, AgentReport, PolicyQuery,
    SiteSettings, StatusBody,
};
use cascade_store::now_ms;
use std::sync::Arc;
use std::time::Duration;

/// Most tags an agent may report, and their sizes.
const MAX_TAGS: usize = 64;
const MAX_ATTRIBUTE_LEN: usize = 256;

/// `GET /api/v1/settings`.
pub async fn get_settings(state: &AppState) -> Result<SiteSettings> {
    db::read_settings(state.db.pool()).await
}

/// `PUT /api/v1/settings`.
pub async fn put_settings(state: &AppState, settings: SiteSettings) -> Result<SiteSettings> {
    if !(1_000..=86_400_000).contains(&settings.agent_poll_interval_ms) {
        return Err(Error::invalid(
            "invalid_setting",
            format!(
                "agent poll interval {} ms is outside 1 s to 24 h",
                settings.agent_poll_interval_ms
            ),
        ));
    }
    if settings.keep_versions == 0 {
        return Err(Error::invalid(
            "invalid_setting",
            "keep versions must be at least 1: the newest version is always kept",
        ));
    }
    let validity = settings.timestamp_validity_ms;
    if !timestamp::VALIDITY_RANGE_MS.contains(&validity) {
        return Err(Error::invalid(
            "invalid_setting",
            format!("timestamp validity {validity} ms is outside 10 s to 30 days"),
        ));
    }
    let mut tx = state.db.write().await?;
    let held = db::read_settings(&mut *tx.tx).await?;
    let validity_changed = held.timestamp_validity_ms != validity;
    if validity_changed {
        state.require_central("setting the timestamp validity")?;
    }
    if state.key.is_some() && validity < 4 * settings.agent_poll_interval_ms {
        return Err(Error::invalid(
            "invalid_setting",
            format!(
                "timestamp validity {validity} ms is shorter than four agent poll intervals \
                 ({} ms each): agents would hold jobs between two polls",
                settings.agent_poll_interval_ms
            ),
        ));
    }
    db::write_settings(&mut tx, &settings).await?;
    if validity_changed {
        timestamp::sign_in(&mut tx, state, now_ms()).await?;
    }
    // Every agent's policy carries the poll interval.
    db::bump_agents(&mut tx).await?;
    tx.commit().await?;
    state.notify_agents_changed();
    // A smaller retention applies at once.
    state.notify_retention();
    Ok(settings)
}

fn check_report(report: &AgentReport) -> Result<()> {
    let too_long = |what: &str, value: &str| {
        (value.len() > MAX_ATTRIBUTE_LEN).then(|| {
            Error::invalid(
                "invalid_attributes",
                format!("{what} is longer than {MAX_ATTRIBUTE_LEN} bytes"),
            )
        })
    };
    for (what, value) in [
        ("os", &report.os),
        ("arch", &report.arch),
        ("hostname", &report.hostname),
    ] {
        if let Some(err) = too_long(what, value) {
            return Err(err);
        }
    }
    if report.tags.len() > MAX_TAGS {
        return Err(Error::invalid(
            "invalid_attributes",
            format!("{} tags; at most {MAX_TAGS}", report.tags.len()),
        ));
    }
    for (key, value) in &report.tags {
        validate_name("tag key", key)?;
        if let Some(err) = too_long("tag value", value) {
            return Err(err);
        }
    }
    Ok(())
}

fn tags_json(report: &AgentReport) -> Result<String> {
    serde_json::to_string(&report.tags).map_err(Error::json("encoding JSON"))
}

/// `POST /api/v1/agents/enroll`.
pub async fn enroll(state: &AppState, request: &AgentEnrollRequest) -> Result<AgentEnrollResponse> {
    validate_name("agent name", &request.name)?;
    check_report(&request.report)?;
    let public_key = auth::check_public_key(request.public_key.as_deref())?;
    auth::require_join_token(state, &request.join_token).await?;
    let credential = auth::mint_token("cas_agent");
    let mut tx = state.db.write().await?;
    let settings = db::read_settings(&mut *tx.tx).await?;
    if db::agent_id(&mut *tx.tx, &request.name).await?.is_some() {
        return Err(Error::Conflict(format!(
            "agent {} is already enrolled",
            request.name
        )));
    }
    let now = now_ms();
    let approved = !settings.require_approval;
    // Enrolling is not contact: an agent set up but never run is `never`.
    db::insert_agent(
        &mut tx,
        &request.name,
        &request.report,
        &tags_json(&request.report)?,
        approved,
        now,
        public_key.as_deref(),
    )
    .await?;
    auth::store_credential(&mut tx, &credential, "agent", &request.name, now).await?;
    messages::record_site_message(
        state,
        &mut tx,
        StatusBody::AgentEnrolled {
            agent: request.name.clone(),
            public_key,
        },
    )
    .await?;
    let retargeted = jobs::agent_arrived(state, &mut tx, &request.name).await?;
    tx.commit().await?;
    if retargeted {
        state.notify_everything();
    }
    tracing::info!(agent = %request.name, approved, "agent enrolled");
    Ok(AgentEnrollResponse {
        credential,
        approved,
        site: state.site_info(),
    })
}

/// `POST /api/v1/agent/hello`: the agent reports its attributes (at start).
pub async fn hello(
    state: &AppState,
    agent_id: i64,
    name: &str,
    report: &AgentReport,
) -> Result<()> {
    check_report(report)?;
    let mut tx = state.db.write().await?;
    db::update_agent_report(&mut tx, agent_id, report, &tags_json(report)?, now_ms()).await?;
    let retargeted = jobs::agent_arrived(state, &mut tx, name).await?;
    tx.commit().await?;
    state.agent_rows.forget(name);
    if retargeted {
        state.notify_everything();
    }
    Ok(())
}

/// Longest a policy poll may be held.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// `GET /api/v1/agent/policy`: long poll.
pub async fn policy(
    state: &AppState,
    agent_id: i64,
    agent_name: &str,
    query: &PolicyQuery,
) -> Result<AgentPolicy> {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(query.wait_ms).min(MAX_WAIT);
    let mut changes = state.agent_changes.subscribe();
    let mut shutdown = state.shutdown.clone();
    touch(state, agent_name);
    // Counted as held until answered or dropped: hyper drops this future
    // when the agent closes the connection, which the guard records.
    let mut held = SeenAgents::hold(&state.seen, agent_name);
    // The queries' futures are boxed: they live for a moment, while this
    // one is held for up to a minute per agent, and its size is that of
    // everything it awaits (issue 13, memory per held poll).
    loop {
        changes.borrow_and_update();
        let (revision, agent) =
            Box::pin(db::agent_with_revision(state.db.pool(), agent_id)).await?;
        if revision as u64 > query.after
            || tokio::time::Instant::now() >= deadline
            || *shutdown.borrow()
        {
            let agent = Arc::new(agent);
            state.agent_rows.keep(agent.clone());
            let shared = Box::pin(state.shared_policy(revision)).await?;
            let now = now_ms();
            let (jobs, canceled) = if agent.approved {
                (
                    shared.offers_for(state.code.as_str(), &agent, now),
                    shared.canceled_for(state.code.as_str(), &agent),
                )
            } else {
                (Vec::new(), Vec::new())
            };
            held.answered();
            return Ok(AgentPolicy {
                revision: revision as u64,
                approved: agent.approved,
                poll_interval_ms: shared.settings.agent_poll_interval_ms,
                jobs,
                dps: shared.dp_urls.clone(),
                dp_certificates: shared.dp_certificates.clone(),
                canceled,
                timestamp: shared.timestamp.clone(),
                content_ticket: agent.approved.then(|| {
                    state.content_key.issue(
                        &agent.name,
                        now_ms() + cascade_protocol::ticket::TICKET_VALIDITY_MS,
                    )
                }),
            });
        }
        tokio::select! {
            _ = changes.changed() => {}
            _ = shutdown.changed() => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

fn touch(state: &AppState, agent_name: &str) {
    state.seen.record(agent_name, now_ms());
}

fn agent_info(row: AgentRow, seen: &SeenAgents, poll_interval_ms: u64, now: i64) -> AgentInfo {
    let contact = seen.contact(&row.name, row.last_seen_ms);
    let last_seen_ms = contact.last_seen;
    let judged = reachability(contact, poll_interval_ms as i64, now);
    let unreachable_since_ms = match judged {
        Reachability::UnreachableSince(since) => Some(since),
        Reachability::Reachable | Reachability::Never => None,
    };
    AgentInfo {
        name: row.name,
        report: row.report,
        approved: row.approved,
        enrolled_at_ms: row.enrolled_at_ms,
        last_seen_ms,
        reachability: judged.into(),
        unreachable_since_ms,
    }
}

/// `GET /api/v1/agents`.
pub async fn list(state: &AppState) -> Result<Vec<AgentInfo>> {
    let settings = db::read_settings(state.db.pool()).await?;
    let now = now_ms();
    Ok(db::all_agents(state.db.pool())
        .await?
        .into_iter()
        .map(|row| agent_info(row, &state.seen, settings.agent_poll_interval_ms, now))
        .collect())
}

/// An administrator approves an agent: its policy offers it jobs from now on.
pub async fn approve(state: &AppState, name: &str) -> Result<AgentInfo> {
    let mut tx = state.db.write().await?;
    if !db::approve_agent(&mut tx, name).await? {
        return Err(Error::not_found(Entity::Agent, name));
    }
    let settings = db::read_settings(&mut *tx.tx).await?;
    let row = db::agent_by_name(&mut *tx.tx, name)
        .await?
        .ok_or_else(|| Error::Internal(format!("agent {name} vanished")))?;
    tx.commit().await?;
    state.notify_agents_changed();
    tracing::info!(agent = %name, "agent approved");
    Ok(agent_info(
        row,
        &state.seen,
        settings.agent_poll_interval_ms,
        now_ms(),
    ))
}
