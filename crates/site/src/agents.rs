//! Agents and collections: enrollment (with optional approval), the policy
//! long poll agents keep open, site settings, and collections whose
//! membership follows agents as they enroll or change.

use crate::api::ApiJson;
use crate::auth::{self, Principal};
use crate::db::WriteTx;
use crate::error::{Error, Result};
use crate::{now_ms, AppState};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::Json;
use cascade_domain::rule::{AgentAttributes, Rule};
use cascade_domain::run::{reachability, Contact, Reachability};
use cascade_domain::validate_name;
use cascade_protocol::*;
use sqlx::Row;
use std::sync::Arc;
use std::time::Duration;

/// The revision an agent's policy gets when it changes: one more than any
/// agent's, so that revisions grow across the whole site and a policy read
/// for one revision covers every change up to it (see `jobs::PolicyCache`).
pub const NEXT_REVISION: &str = "(SELECT COALESCE(MAX(revision), 0) + 1 FROM agents)";

/// Poll interval agents are told unless the administrator set another.
pub const DEFAULT_POLL_INTERVAL_MS: u64 = 60_000;
/// Most tags an agent may report, and their sizes.
const MAX_TAGS: usize = 64;
const MAX_ATTRIBUTE_LEN: usize = 256;

/// Reads the site settings.
pub async fn read_settings<'e, E>(executor: E) -> Result<SiteSettings>
where
    E: sqlx::Executor<'e, Database = sqlx::Sqlite>,
{
    let rows: Vec<(String, String)> = sqlx::query_as("SELECT key, value FROM settings")
        .fetch_all(executor)
        .await?;
    let mut settings = SiteSettings {
        require_approval: false,
        agent_poll_interval_ms: DEFAULT_POLL_INTERVAL_MS,
    };
    for (key, value) in rows {
        match key.as_str() {
            "require_approval" => settings.require_approval = value == "true",
            "agent_poll_interval_ms" => {
                settings.agent_poll_interval_ms = value.parse().unwrap_or(DEFAULT_POLL_INTERVAL_MS)
            }
            _ => {}
        }
    }
    Ok(settings)
}

/// `GET /api/v1/settings`.
pub async fn get_settings(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<SiteSettings>> {
    principal.require_admin()?;
    Ok(Json(read_settings(state.db.pool()).await?))
}

/// `PUT /api/v1/settings`.
pub async fn put_settings(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(settings): ApiJson<SiteSettings>,
) -> Result<Json<SiteSettings>> {
    principal.require_admin()?;
    if !(1_000..=86_400_000).contains(&settings.agent_poll_interval_ms) {
        return Err(Error::invalid(
            "invalid_setting",
            format!(
                "agent poll interval {} ms is outside 1 s to 24 h",
                settings.agent_poll_interval_ms
            ),
        ));
    }
    let mut tx = state.db.write().await?;
    for (key, value) in [
        ("require_approval", settings.require_approval.to_string()),
        (
            "agent_poll_interval_ms",
            settings.agent_poll_interval_ms.to_string(),
        ),
    ] {
        sqlx::query("INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value")
            .bind(key)
            .bind(value)
            .execute(&mut *tx.tx)
            .await?;
    }
    // Every agent's policy carries the poll interval.
    sqlx::query(&format!("UPDATE agents SET revision = {NEXT_REVISION}"))
        .execute(&mut *tx.tx)
        .await?;
    tx.commit().await?;
    state.notify_agents_changed();
    Ok(Json(settings))
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
    serde_json::to_string(&report.tags).map_err(|err| Error::Internal(err.to_string()))
}

/// `POST /api/v1/agents/enroll`.
pub async fn enroll(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<AgentEnrollRequest>,
) -> Result<Json<AgentEnrollResponse>> {
    validate_name("agent name", &request.name)?;
    check_report(&request.report)?;
    auth::require_join_token(&state, &request.join_token).await?;
    let credential = auth::mint_token("cas_agent");
    let mut tx = state.db.write().await?;
    let settings = read_settings(&mut *tx.tx).await?;
    let exists: Option<i64> = sqlx::query_scalar("SELECT id FROM agents WHERE name = ?")
        .bind(&request.name)
        .fetch_optional(&mut *tx.tx)
        .await?;
    if exists.is_some() {
        return Err(Error::Conflict(format!(
            "agent {} is already enrolled",
            request.name
        )));
    }
    let now = now_ms();
    let approved = !settings.require_approval;
    sqlx::query(
        "INSERT INTO agents (name, os, arch, hostname, tags, approved, enrolled_at_ms, last_seen_ms)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(&request.name)
    .bind(&request.report.os)
    .bind(&request.report.arch)
    .bind(&request.report.hostname)
    .bind(tags_json(&request.report)?)
    .bind(approved)
    .bind(now)
    // Enrolling is not contact: an agent set up but never run is `never`.
    .bind(None::<i64>)
    .execute(&mut *tx.tx)
    .await?;
    auth::store_credential(&mut tx, &credential, "agent", &request.name, now).await?;
    crate::status::record_site_message(
        &state,
        &mut tx,
        StatusBody::AgentEnrolled {
            agent: request.name.clone(),
        },
    )
    .await?;
    let retargeted = crate::jobs::agent_arrived(&state, &mut tx, &request.name).await?;
    tx.commit().await?;
    if retargeted {
        state.notify_everything();
    }
    tracing::info!(agent = %request.name, approved, "agent enrolled");
    Ok(Json(AgentEnrollResponse {
        credential,
        approved,
        site: crate::api::site_info_of(&state),
    }))
}

/// `POST /api/v1/agent/hello`: the agent reports its attributes (at start).
pub async fn hello(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(report): ApiJson<AgentReport>,
) -> Result<Json<serde_json::Value>> {
    let (agent_id, name) = principal.require_agent()?;
    check_report(&report)?;
    let mut tx = state.db.write().await?;
    sqlx::query(
        "UPDATE agents SET os = ?, arch = ?, hostname = ?, tags = ?, last_seen_ms = ? WHERE id = ?",
    )
    .bind(&report.os)
    .bind(&report.arch)
    .bind(&report.hostname)
    .bind(tags_json(&report)?)
    .bind(now_ms())
    .bind(agent_id)
    .execute(&mut *tx.tx)
    .await?;
    let retargeted = crate::jobs::agent_arrived(&state, &mut tx, name).await?;
    tx.commit().await?;
    state.agent_rows.forget(name);
    if retargeted {
        state.notify_everything();
    }
    Ok(Json(serde_json::json!({})))
}

/// Longest a policy poll may be held.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// `GET /api/v1/agent/policy`: long poll.
pub async fn policy(
    State(state): State<AppState>,
    principal: Principal,
    query: std::result::Result<Query<PolicyQuery>, QueryRejection>,
) -> Result<Json<AgentPolicy>> {
    let Query(query) =
        query.map_err(|rejection| Error::invalid("malformed_request", rejection.body_text()))?;
    let (agent_id, agent_name) = principal.require_agent()?;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(query.wait_ms).min(MAX_WAIT);
    let mut changes = state.agent_changes.subscribe();
    let mut shutdown = state.shutdown.clone();
    touch(&state, agent_name);
    // Counted as held until answered or dropped: hyper drops this future
    // when the agent closes the connection, which the guard records.
    let mut held = SeenAgents::hold(&state.seen, agent_name);
    loop {
        changes.borrow_and_update();
        let row = sqlx::query(&format!(
            "SELECT revision, {AGENT_COLUMNS} FROM agents WHERE id = ?"
        ))
        .bind(agent_id)
        .fetch_one(state.db.pool())
        .await?;
        let revision: i64 = row.get(0);
        if revision as u64 > query.after
            || tokio::time::Instant::now() >= deadline
            || *shutdown.borrow()
        {
            let agent = Arc::new(agent_from_row_at(&row, 1)?);
            state.agent_rows.keep(agent.clone());
            let shared = state.policy.get(&state, revision).await?;
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
            return Ok(Json(AgentPolicy {
                revision: revision as u64,
                approved: agent.approved,
                poll_interval_ms: shared.settings.agent_poll_interval_ms,
                jobs,
                dps: shared.dp_urls.clone(),
                canceled,
            }));
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
/// Agents' times written per statement (two parameters each).
const SEEN_ROWS: usize = 10_000;

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

    /// Writes what was gathered in one transaction (put back on failure).
    pub async fn flush(&self, state: &AppState) -> Result<()> {
        let taken = std::mem::take(&mut *self.pending.lock().expect("seen agents lock"));
        if taken.is_empty() {
            return Ok(());
        }
        let written = async {
            let seen: Vec<(&String, i64)> = taken.iter().map(|(name, at)| (name, *at)).collect();
            let mut tx = state.db.write().await?;
            // One statement per SEEN_ROWS agents: one per agent held the
            // database's single writer for a fifth of a second at 150,000
            // agents, and status reports waited behind it.
            for part in seen.chunks(SEEN_ROWS) {
                let mut update = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                    "UPDATE agents SET last_seen_ms = MAX(COALESCE(last_seen_ms, 0), seen.column2)
                     FROM (",
                );
                update.push_values(part, |mut row, (name, at_ms)| {
                    row.push_bind((*name).clone()).push_bind(*at_ms);
                });
                update.push(") AS seen WHERE agents.name = seen.column1");
                update.build().execute(&mut *tx.tx).await?;
            }
            tx.commit().await
        }
        .await;
        if let Err(err) = written {
            for (name, at_ms) in taken {
                self.record(&name, at_ms);
            }
            return Err(err.into());
        }
        Ok(())
    }
}

/// Writes agents' poll times down every [`SEEN_FLUSH`], and once more at
/// shutdown.
pub async fn seen_worker(state: AppState) {
    let mut shutdown = state.shutdown.clone();
    loop {
        let stopping = tokio::select! {
            _ = tokio::time::sleep(SEEN_FLUSH) => false,
            _ = shutdown.changed() => true,
        };
        if let Err(err) = state.seen.flush(&state).await {
            tracing::warn!(error = %cascade_protocol::chain(&err), "recording when agents were seen failed; will retry");
        }
        if stopping || *shutdown.borrow() {
            return;
        }
    }
}

/// Who belongs to a collection: a list of names or a rule.
pub enum Membership {
    /// Listed workstations.
    Listed(Vec<String>),
    /// A rule over attributes.
    Rule(Rule),
}

impl Membership {
    /// From a collection's stored definition.
    pub fn new(machines: Option<Vec<String>>, rule: Option<&str>) -> Result<Membership> {
        match (machines, rule) {
            (Some(machines), _) => Ok(Membership::Listed(machines)),
            (None, Some(rule)) => Ok(Membership::Rule(Rule::parse(rule)?)),
            (None, None) => Ok(Membership::Listed(Vec::new())),
        }
    }

    /// Whether the agent belongs now.
    pub fn contains(&self, site: &str, agent: &AgentRow) -> bool {
        match self {
            Membership::Listed(machines) => machines.contains(&agent.name),
            Membership::Rule(rule) => rule.matches(&AgentAttributes {
                name: agent.name.clone(),
                site: site.to_owned(),
                os: agent.report.os.clone(),
                arch: agent.report.arch.clone(),
                hostname: agent.report.hostname.clone(),
                tags: agent.report.tags.clone(),
            }),
        }
    }
}

/// Loads a collection's membership by id.
pub async fn membership<'e, E>(executor: E, collection_id: i64) -> Result<Membership>
where
    E: sqlx::Executor<'e, Database = sqlx::Sqlite>,
{
    let (machines, rule): (Option<String>, Option<String>) =
        sqlx::query_as("SELECT machines, rule FROM collections WHERE id = ?")
            .bind(collection_id)
            .fetch_one(executor)
            .await?;
    let machines: Option<Vec<String>> = machines
        .map(|json| serde_json::from_str(&json))
        .transpose()
        .map_err(|err| Error::Internal(format!("stored machine list does not parse: {err}")))?;
    Membership::new(machines, rule.as_deref())
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

/// A stored agent.
pub struct AgentRow {
    pub name: String,
    pub report: AgentReport,
    pub approved: bool,
    pub enrolled_at_ms: i64,
    pub last_seen_ms: Option<i64>,
}

const AGENT_COLUMNS: &str =
    "name, os, arch, hostname, tags, approved, enrolled_at_ms, last_seen_ms";

fn agent_from_row(row: sqlx::sqlite::SqliteRow) -> Result<AgentRow> {
    agent_from_row_at(&row, 0)
}

/// An agent from [`AGENT_COLUMNS`] starting at column `first`.
fn agent_from_row_at(row: &sqlx::sqlite::SqliteRow, first: usize) -> Result<AgentRow> {
    let tags: String = row.get(first + 4);
    Ok(AgentRow {
        name: row.get(first),
        report: AgentReport {
            os: row.get(first + 1),
            arch: row.get(first + 2),
            hostname: row.get(first + 3),
            tags: serde_json::from_str(&tags)
                .map_err(|err| Error::Internal(format!("stored tags do not parse: {err}")))?,
        },
        approved: row.get(first + 5),
        enrolled_at_ms: row.get(first + 6),
        last_seen_ms: row.get(first + 7),
    })
}

/// Every agent, by name.
pub async fn all_agents<'e, E>(executor: E) -> Result<Vec<AgentRow>>
where
    E: sqlx::Executor<'e, Database = sqlx::Sqlite>,
{
    sqlx::query(&format!("SELECT {AGENT_COLUMNS} FROM agents ORDER BY name"))
        .fetch_all(executor)
        .await?
        .into_iter()
        .map(agent_from_row)
        .collect()
}

/// One agent by name.
pub async fn agent_by_name<'e, E>(executor: E, name: &str) -> Result<Option<AgentRow>>
where
    E: sqlx::Executor<'e, Database = sqlx::Sqlite>,
{
    sqlx::query(&format!(
        "SELECT {AGENT_COLUMNS} FROM agents WHERE name = ?"
    ))
    .bind(name)
    .fetch_optional(executor)
    .await?
    .map(agent_from_row)
    .transpose()
}

fn agent_info(row: AgentRow, seen: &SeenAgents, poll_interval_ms: u64, now: i64) -> AgentInfo {
    let contact = seen.contact(&row.name, row.last_seen_ms);
    let last_seen_ms = contact.last_seen;
    let (reachability, unreachable_since_ms) =
        match reachability(contact, poll_interval_ms as i64, now) {
            Reachability::Reachable => ("reachable", None),
            Reachability::UnreachableSince(since) => ("unreachable", Some(since)),
            Reachability::Never => ("never", None),
        };
    AgentInfo {
        name: row.name,
        report: row.report,
        approved: row.approved,
        enrolled_at_ms: row.enrolled_at_ms,
        last_seen_ms,
        reachability: reachability.to_owned(),
        unreachable_since_ms,
    }
}

/// `GET /api/v1/agents`.
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<Vec<AgentInfo>>> {
    principal.require_admin()?;
    let settings = read_settings(state.db.pool()).await?;
    let now = now_ms();
    Ok(Json(
        all_agents(state.db.pool())
            .await?
            .into_iter()
            .map(|row| agent_info(row, &state.seen, settings.agent_poll_interval_ms, now))
            .collect(),
    ))
}

/// `POST /api/v1/agents/{name}/approve`.
pub async fn approve(
    State(state): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
) -> Result<Json<AgentInfo>> {
    principal.require_admin()?;
    let mut tx = state.db.write().await?;
    let changed = sqlx::query(&format!(
        "UPDATE agents SET approved = 1, revision = {NEXT_REVISION} WHERE name = ?"
    ))
    .bind(&name)
    .execute(&mut *tx.tx)
    .await?
    .rows_affected();
    if changed == 0 {
        return Err(Error::NotFound {
            what: "agent",
            name,
        });
    }
    let settings = read_settings(&mut *tx.tx).await?;
    let row = agent_by_name(&mut *tx.tx, &name)
        .await?
        .ok_or_else(|| Error::Internal(format!("agent {name} vanished")))?;
    tx.commit().await?;
    state.notify_agents_changed();
    tracing::info!(agent = %name, "agent approved");
    Ok(Json(agent_info(
        row,
        &state.seen,
        settings.agent_poll_interval_ms,
        now_ms(),
    )))
}

/// `POST /api/v1/collections`.
pub async fn create_collection(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(request): ApiJson<CollectionRequest>,
) -> Result<Json<CollectionInfo>> {
    principal.require_admin()?;
    state.require_central("creating collections")?;
    validate_name("collection name", &request.name)?;
    let (machines, rule) = match (&request.rule, request.machines.is_empty()) {
        (Some(_), false) => {
            return Err(Error::invalid(
                "conflicting_members",
                "give either --machines or --rule, not both",
            ))
        }
        (None, true) => {
            return Err(Error::invalid(
                "no_members",
                "give --machines a,b,c or --rule RULE",
            ));
        }
        (Some(text), true) => {
            Rule::parse(text)?;
            (None, Some(text.clone()))
        }
        (None, false) => {
            let mut unknown = Vec::new();
            for machine in &request.machines {
                validate_name("machine name", machine)?;
                if !crate::db::agent_known(state.db.pool(), machine).await? {
                    unknown.push(machine.as_str());
                }
            }
            if !unknown.is_empty() && !request.allow_unknown {
                return Err(Error::invalid(
                    "unknown_machines",
                    format!(
                        "no workstation named {} is enrolled at {} or below; check the names, or pass --allow-unknown to name workstations before they enroll",
                        unknown.join(", "),
                        state.code
                    ),
                ));
            }
            (Some(request.machines.clone()), None)
        }
    };
    let mut tx = state.db.write().await?;
    let exists: Option<i64> = sqlx::query_scalar("SELECT id FROM collections WHERE name = ?")
        .bind(&request.name)
        .fetch_optional(&mut *tx.tx)
        .await?;
    if exists.is_some() {
        return Err(Error::Conflict(format!(
            "collection {} already exists",
            request.name
        )));
    }
    apply_collection(&state, &mut tx, &request.name, machines, rule).await?;
    let info = collection_info(&state, &mut tx, &request.name).await?;
    tx.commit().await?;
    state.notify_outbox_changed();
    Ok(Json(info))
}

/// Stores a collection (replacing one of the same name: applying it twice
/// changes nothing) and passes it on to the child sites.
pub async fn apply_collection(
    state: &AppState,
    tx: &mut WriteTx<'_>,
    name: &str,
    machines: Option<Vec<String>>,
    rule: Option<String>,
) -> Result<()> {
    validate_name("collection name", name)?;
    if let Some(rule) = &rule {
        Rule::parse(rule)?;
    }
    if machines.is_some() == rule.is_some() {
        return Err(Error::invalid(
            "conflicting_members",
            format!("collection {name} needs either machines or a rule"),
        ));
    }
    let machines_json = machines
        .as_ref()
        .map(serde_json::to_string)
        .transpose()
        .map_err(|err| Error::Internal(err.to_string()))?;
    sqlx::query(
        "INSERT INTO collections (name, machines, rule, created_at_ms) VALUES (?, ?, ?, ?)
         ON CONFLICT (name) DO UPDATE SET machines = excluded.machines, rule = excluded.rule",
    )
    .bind(name)
    .bind(machines_json)
    .bind(&rule)
    .bind(now_ms())
    .execute(&mut *tx.tx)
    .await?;
    crate::send::send_down(
        state,
        tx,
        &cascade_protocol::Instruction::Collection {
            name: name.to_owned(),
            machines,
            rule,
        },
    )
    .await
}

/// A collection and its members now.
async fn collection_info(
    state: &AppState,
    tx: &mut WriteTx<'_>,
    name: &str,
) -> Result<CollectionInfo> {
    let row: Option<(Option<String>, Option<String>)> =
        sqlx::query_as("SELECT machines, rule FROM collections WHERE name = ?")
            .bind(name)
            .fetch_optional(&mut *tx.tx)
            .await?;
    let (machines, rule) = row.ok_or_else(|| Error::NotFound {
        what: "collection",
        name: name.to_owned(),
    })?;
    let agents = all_agents(&mut *tx.tx).await?;
    let machines: Option<Vec<String>> = machines
        .map(|json| serde_json::from_str(&json))
        .transpose()
        .map_err(|err| Error::Internal(format!("stored machine list does not parse: {err}")))?;
    let membership = Membership::new(machines.clone(), rule.as_deref())?;
    let members = agents
        .iter()
        .filter(|agent| membership.contains(&state.code.to_string(), agent))
        .map(|agent| agent.name.clone())
        .collect();
    let mut not_enrolled = Vec::new();
    for machine in machines.iter().flatten() {
        if !crate::db::agent_known(&mut *tx.tx, machine).await? {
            not_enrolled.push(machine.clone());
        }
    }
    Ok(CollectionInfo {
        name: name.to_owned(),
        machines,
        rule,
        members,
        not_enrolled,
    })
}

/// `GET /api/v1/collections`.
pub async fn list_collections(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<Vec<CollectionInfo>>> {
    principal.require_admin()?;
    let names: Vec<String> = sqlx::query_scalar("SELECT name FROM collections ORDER BY name")
        .fetch_all(state.db.pool())
        .await?;
    // Read in one transaction so every collection sees the same agents.
    let mut tx = state.db.write().await?;
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        out.push(collection_info(&state, &mut tx, &name).await?);
    }
    tx.commit().await?;
    Ok(Json(out))
}

/// `GET /api/v1/collections/{name}`.
pub async fn show_collection(
    State(state): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
) -> Result<Json<CollectionInfo>> {
    principal.require_admin()?;
    let mut tx = state.db.write().await?;
    let info = collection_info(&state, &mut tx, &name).await?;
    tx.commit().await?;
    Ok(Json(info))
}
