//! Agents, their settings and the collections they belong to.

use crate::error::{Error, Result};
use cascade_domain::rule::AgentAttributes;
use cascade_protocol::{
    AgentReport, SignedIntent, SiteSettings, WindowSpec, DEFAULT_TIMESTAMP_VALIDITY_MS,
};
use cascade_store::WriteTx;
use sqlx::{Row, Sqlite};

/// Whether a workstation named `name` is enrolled here or at a site below:
/// in this site's agents table, or named by an `agent_enrolled` message
/// that came up (both indexed lookups).
pub async fn agent_known<'e, E>(executor: E, name: &str) -> Result<bool>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    Ok(sqlx::query_scalar::<_, i64>(
        "SELECT 1 FROM agents WHERE name = ?1
         UNION ALL SELECT 1 FROM status_messages
         WHERE kind = 'agent_enrolled' AND json_extract(body, '$.agent') = ?1
         LIMIT 1",
    )
    .bind(name)
    .fetch_optional(executor)
    .await?
    .is_some())
}

/// Whether an agent named `name` enrolled at site `site` below this one
/// (its `agent_enrolled` came up).
pub async fn agent_enrolled_below<'e, E>(executor: E, site: &str, name: &str) -> Result<bool>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    Ok(sqlx::query_scalar::<_, i64>(
        "SELECT 1 FROM status_messages
         WHERE kind = 'agent_enrolled' AND json_extract(body, '$.agent') = ? AND site = ?
         LIMIT 1",
    )
    .bind(name)
    .bind(site)
    .fetch_optional(executor)
    .await?
    .is_some())
}

/// Of the workstations `names`, those that enrolled at a site below this
/// one, with that site (by their `agent_enrolled` that came up).
pub async fn enrolled_below<'e, E>(executor: E, names: &[String]) -> Result<Vec<(String, String)>>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    let names = serde_json::to_string(names).map_err(Error::json("encoding names"))?;
    Ok(sqlx::query_as(
        "SELECT DISTINCT json_extract(body, '$.agent'), site FROM status_messages
         WHERE kind = 'agent_enrolled' AND site IS NOT NULL
           AND json_extract(body, '$.agent') IN (SELECT value FROM json_each(?))",
    )
    .bind(names)
    .fetch_all(executor)
    .await?)
}

/// The revision an agent's policy gets when it changes: one more than any
/// agent's, so that revisions grow across the whole site and a policy read
/// for one revision covers every change up to it (see `jobs::PolicyCache`).
pub const NEXT_REVISION: &str = "(SELECT COALESCE(MAX(revision), 0) + 1 FROM agents)";

/// Poll interval agents are told unless the administrator set another.
pub const DEFAULT_POLL_INTERVAL_MS: u64 = 60_000;

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
        timestamp_validity_ms: DEFAULT_TIMESTAMP_VALIDITY_MS,
        keep_versions: cascade_protocol::DEFAULT_KEEP_VERSIONS,
    };
    for (key, value) in rows {
        match key.as_str() {
            "require_approval" => settings.require_approval = value == "true",
            "agent_poll_interval_ms" => {
                settings.agent_poll_interval_ms = value.parse().unwrap_or(DEFAULT_POLL_INTERVAL_MS)
            }
            "timestamp_validity_ms" => {
                settings.timestamp_validity_ms =
                    value.parse().unwrap_or(DEFAULT_TIMESTAMP_VALIDITY_MS)
            }
            "keep_versions" => {
                settings.keep_versions = value
                    .parse()
                    .unwrap_or(cascade_protocol::DEFAULT_KEEP_VERSIONS)
            }
            _ => {}
        }
    }
    Ok(settings)
}

/// Who a collection holds, as this site evaluates it for its agents (the
/// rule itself is the domain's [`cascade_domain::rule::Membership`]).
pub struct Membership(cascade_domain::rule::Membership);

impl Membership {
    /// From a collection's stored definition.
    pub fn new(machines: Option<Vec<String>>, rule: Option<&str>) -> Result<Membership> {
        Ok(Membership(cascade_domain::rule::Membership::new(
            machines, rule,
        )?))
    }

    /// Whether the agent belongs now.
    pub fn contains(&self, site: &str, agent: &AgentRow) -> bool {
        self.0.matches(&AgentAttributes {
            name: agent.name.clone(),
            site: site.to_owned(),
            os: agent.report.os.clone(),
            arch: agent.report.arch.clone(),
            hostname: agent.report.hostname.clone(),
            tags: agent.report.tags.clone(),
        })
    }
}

/// A collection's definition by id: (listed machines, rule).
pub async fn collection_definition_by_id<'e, E>(
    executor: E,
    collection_id: i64,
) -> Result<(Option<Vec<String>>, Option<String>)>
where
    E: sqlx::Executor<'e, Database = sqlx::Sqlite>,
{
    let (machines, rule): (Option<String>, Option<String>) =
        sqlx::query_as("SELECT machines, rule FROM collections WHERE id = ?")
            .bind(collection_id)
            .fetch_one(executor)
            .await?;
    Ok((machines_of(machines)?, rule))
}

/// Loads a collection's membership by id.
pub async fn membership<'e, E>(executor: E, collection_id: i64) -> Result<Membership>
where
    E: sqlx::Executor<'e, Database = sqlx::Sqlite>,
{
    let (machines, rule) = collection_definition_by_id(executor, collection_id).await?;
    Membership::new(machines, rule.as_deref())
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
            tags: serde_json::from_str(&tags).map_err(Error::json("stored tags do not parse"))?,
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

/// Agents' times written per statement (two parameters each).
const SEEN_ROWS: usize = 10_000;

/// Records agents' poll times (never moving one back), one statement per
/// [`SEEN_ROWS`] agents: one per agent held the database's single writer
/// for a fifth of a second at 150,000 agents, and status reports waited
/// behind it.
pub async fn record_seen(tx: &mut WriteTx<'_>, seen: &[(&String, i64)]) -> Result<()> {
    for part in seen.chunks(SEEN_ROWS) {
        let mut update = sqlx::QueryBuilder::<Sqlite>::new(
            "UPDATE agents SET last_seen_ms = MAX(COALESCE(last_seen_ms, 0), seen.column2)
             FROM (",
        );
        update.push_values(part, |mut row, (name, at_ms)| {
            row.push_bind((*name).clone()).push_bind(*at_ms);
        });
        update.push(") AS seen WHERE agents.name = seen.column1");
        update.build().execute(&mut *tx.tx).await?;
    }
    Ok(())
}

/// The highest policy revision of any agent.
pub async fn max_agent_revision<'e, E>(executor: E) -> Result<i64>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    Ok(
        sqlx::query_scalar("SELECT COALESCE(MAX(revision), 0) FROM agents")
            .fetch_one(executor)
            .await?,
    )
}

/// The id of the agent named `name`.
pub async fn agent_id<'e, E>(executor: E, name: &str) -> Result<Option<i64>>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    Ok(sqlx::query_scalar("SELECT id FROM agents WHERE name = ?")
        .bind(name)
        .fetch_optional(executor)
        .await?)
}

/// Every collection as defined, in the order they were created:
/// (name, listed machines, rule).
pub async fn all_collections<'e, E>(
    executor: E,
) -> Result<Vec<(String, Option<Vec<String>>, Option<String>)>>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    let rows: Vec<(String, Option<String>, Option<String>)> =
        sqlx::query_as("SELECT name, machines, rule FROM collections ORDER BY id")
            .fetch_all(executor)
            .await?;
    rows.into_iter()
        .map(|(name, machines, rule)| Ok((name, machines_of(machines)?, rule)))
        .collect()
}

/// A stored machine list.
fn machines_of(json: Option<String>) -> Result<Option<Vec<String>>> {
    json.map(|json| serde_json::from_str(&json))
        .transpose()
        .map_err(Error::json("stored machine list does not parse"))
}

/// Writes the site settings.
pub async fn write_settings(tx: &mut WriteTx<'_>, settings: &SiteSettings) -> Result<()> {
    for (key, value) in [
        ("require_approval", settings.require_approval.to_string()),
        (
            "agent_poll_interval_ms",
            settings.agent_poll_interval_ms.to_string(),
        ),
        (
            "timestamp_validity_ms",
            settings.timestamp_validity_ms.to_string(),
        ),
        ("keep_versions", settings.keep_versions.to_string()),
    ] {
        write_setting(tx, key, &value).await?;
    }
    Ok(())
}

/// Sets one key of the settings table.
async fn write_setting(tx: &mut WriteTx<'_>, key: &str, value: &str) -> Result<()> {
    sqlx::query(
        "INSERT INTO settings (key, value) VALUES (?, ?)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )
    .bind(key)
    .bind(value)
    .execute(&mut *tx.tx)
    .await?;
    Ok(())
}

/// The newest timestamp the central site signed that this site holds (it
/// signed it, at the central site), as signed.
pub async fn read_timestamp<'e, E>(executor: E) -> Result<Option<SignedIntent>>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    let text: Option<String> =
        sqlx::query_scalar("SELECT value FROM settings WHERE key = 'timestamp'")
            .fetch_optional(executor)
            .await?;
    // One that does not parse (a damaged database) counts as none: the
    // next one replaces it.
    Ok(text.and_then(|text| match serde_json::from_str(&text) {
        Ok(signed) => Some(signed),
        Err(err) => {
            tracing::warn!(error = %err, "the stored timestamp does not parse; it counts as none");
            None
        }
    }))
}

/// Replaces the timestamp held (the caller checked it is newer).
pub async fn write_timestamp(tx: &mut WriteTx<'_>, timestamp: &SignedIntent) -> Result<()> {
    let text = serde_json::to_string(timestamp).map_err(Error::json("encoding the timestamp"))?;
    write_setting(tx, "timestamp", &text).await
}

/// Tells every agent its policy changed.
pub async fn bump_agents(tx: &mut WriteTx<'_>) -> Result<()> {
    sqlx::query(&format!("UPDATE agents SET revision = {NEXT_REVISION}"))
        .execute(&mut *tx.tx)
        .await?;
    Ok(())
}

/// Approves the agent named `name`; false when there is none.
pub async fn approve_agent(tx: &mut WriteTx<'_>, name: &str) -> Result<bool> {
    let changed = sqlx::query(&format!(
        "UPDATE agents SET approved = 1, revision = {NEXT_REVISION} WHERE name = ?"
    ))
    .bind(name)
    .execute(&mut *tx.tx)
    .await?
    .rows_affected();
    Ok(changed > 0)
}

/// Enrolls an agent (never seen yet).
pub async fn insert_agent(
    tx: &mut WriteTx<'_>,
    name: &str,
    report: &AgentReport,
    tags_json: &str,
    approved: bool,
    now_ms: i64,
    public_key: Option<&str>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO agents (name, os, arch, hostname, tags, approved, enrolled_at_ms, last_seen_ms, public_key)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(name)
    .bind(&report.os)
    .bind(&report.arch)
    .bind(&report.hostname)
    .bind(tags_json)
    .bind(approved)
    .bind(now_ms)
    .bind(None::<i64>)
    .bind(public_key)
    .execute(&mut *tx.tx)
    .await?;
    Ok(())
}

/// The public key an agent or DP of this site signs its status with
/// (`table`: `agents` or `dps`), if it gave one.
pub async fn sender_key<'e, E>(executor: E, table: SenderTable, id: i64) -> Result<Option<String>>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    let sql = match table {
        SenderTable::Agents => "SELECT public_key FROM agents WHERE id = ?",
        SenderTable::Dps => "SELECT public_key FROM dps WHERE id = ?",
    };
    Ok(sqlx::query_scalar::<_, Option<String>>(sql)
        .bind(id)
        .fetch_optional(executor)
        .await?
        .flatten())
}

/// Which kind of sender [`sender_key`] looks up.
#[derive(Clone, Copy, Debug)]
pub enum SenderTable {
    Agents,
    Dps,
}

/// The public key a DP or agent of site `site` below registered, from its
/// `dp_enrolled` / `agent_enrolled` message (`kind`, and the field naming
/// it: `dp` or `agent`).
pub async fn enrolled_key_below<'e, E>(
    executor: E,
    site: &str,
    member: SenderTable,
    name: &str,
) -> Result<Option<String>>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    let sql = match member {
        SenderTable::Agents => {
            "SELECT json_extract(body, '$.public_key') FROM status_messages
             WHERE kind = 'agent_enrolled' AND json_extract(body, '$.agent') = ? AND site = ?
             ORDER BY id DESC LIMIT 1"
        }
        SenderTable::Dps => {
            "SELECT json_extract(body, '$.public_key') FROM status_messages
             WHERE kind = 'dp_enrolled' AND dp = ? AND site = ?
             ORDER BY id DESC LIMIT 1"
        }
    };
    Ok(sqlx::query_scalar::<_, Option<String>>(sql)
        .bind(name)
        .bind(site)
        .fetch_optional(executor)
        .await?
        .flatten())
}

/// Records the attributes an agent reported, and that it was seen.
pub async fn update_agent_report(
    tx: &mut WriteTx<'_>,
    agent_id: i64,
    report: &AgentReport,
    tags_json: &str,
    now_ms: i64,
) -> Result<()> {
    sqlx::query(
        "UPDATE agents SET os = ?, arch = ?, hostname = ?, tags = ?, last_seen_ms = ? WHERE id = ?",
    )
    .bind(&report.os)
    .bind(&report.arch)
    .bind(&report.hostname)
    .bind(tags_json)
    .bind(now_ms)
    .bind(agent_id)
    .execute(&mut *tx.tx)
    .await?;
    Ok(())
}

/// An agent's policy revision and row, by id.
pub async fn agent_with_revision<'e, E>(executor: E, agent_id: i64) -> Result<(i64, AgentRow)>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    let row = sqlx::query(&format!(
        "SELECT revision, {AGENT_COLUMNS} FROM agents WHERE id = ?"
    ))
    .bind(agent_id)
    .fetch_one(executor)
    .await?;
    Ok((row.get(0), agent_from_row_at(&row, 1)?))
}

/// Stores a collection (replacing one of the same name).
pub async fn upsert_collection(
    tx: &mut WriteTx<'_>,
    name: &str,
    machines: Option<&[String]>,
    rule: Option<&str>,
    now_ms: i64,
) -> Result<()> {
    let machines_json = machines
        .map(serde_json::to_string)
        .transpose()
        .map_err(Error::json("encoding a machine list"))?;
    sqlx::query(
        "INSERT INTO collections (name, machines, rule, created_at_ms) VALUES (?, ?, ?, ?)
         ON CONFLICT (name) DO UPDATE SET machines = excluded.machines, rule = excluded.rule",
    )
    .bind(name)
    .bind(machines_json)
    .bind(rule)
    .bind(now_ms)
    .execute(&mut *tx.tx)
    .await?;
    Ok(())
}

/// A collection's definition by name: (listed machines, rule).
pub async fn collection_definition<'e, E>(
    executor: E,
    name: &str,
) -> Result<Option<(Option<Vec<String>>, Option<String>)>>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    let row: Option<(Option<String>, Option<String>)> =
        sqlx::query_as("SELECT machines, rule FROM collections WHERE name = ?")
            .bind(name)
            .fetch_optional(executor)
            .await?;
    row.map(|(machines, rule)| Ok((machines_of(machines)?, rule)))
        .transpose()
}

/// A collection's maintenance windows.
pub async fn collection_windows<'e, E>(executor: E, id: i64) -> Result<Vec<WindowSpec>>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    let text: String = sqlx::query_scalar("SELECT windows FROM collections WHERE id = ?")
        .bind(id)
        .fetch_one(executor)
        .await?;
    serde_json::from_str(&text)
        .map_err(|err| Error::Internal(format!("stored windows do not parse: {err}")))
}

/// Replaces a collection's maintenance windows.
pub async fn set_collection_windows(
    tx: &mut WriteTx<'_>,
    id: i64,
    windows: &[WindowSpec],
) -> Result<()> {
    let text = serde_json::to_string(windows).map_err(Error::json("encoding windows"))?;
    sqlx::query("UPDATE collections SET windows = ? WHERE id = ?")
        .bind(text)
        .bind(id)
        .execute(&mut *tx.tx)
        .await?;
    Ok(())
}

/// A collection's id by name.
pub async fn collection_id<'e, E>(executor: E, name: &str) -> Result<Option<i64>>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    Ok(
        sqlx::query_scalar("SELECT id FROM collections WHERE name = ?")
            .bind(name)
            .fetch_optional(executor)
            .await?,
    )
}

/// Every collection's name, in order.
pub async fn collection_names<'e, E>(executor: E) -> Result<Vec<String>>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    Ok(
        sqlx::query_scalar("SELECT name FROM collections ORDER BY name")
            .fetch_all(executor)
            .await?,
    )
}
