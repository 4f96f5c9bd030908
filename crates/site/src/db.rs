//! The site database: its schema and every query.
//!
//! Multi-statement writes go through [`Db::write`], which serializes writers.

use crate::error::{Error, Result};
use cascade_domain::hierarchy::StatusSource;
use cascade_protocol::StatusMessage;
pub use cascade_store::{Db, WriteTx};
use sqlx::{Row, Sqlite, Transaction};

/// Schema migrations, applied in order; `PRAGMA user_version` records how
/// many have run. Never edit a released migration: add one.
pub const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE site (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    code TEXT NOT NULL,
    kind TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
);
-- Credentials are stored as BLAKE3 hashes; the tokens themselves never are.
CREATE TABLE credentials (
    token_hash BLOB PRIMARY KEY,
    role TEXT NOT NULL CHECK (role IN ('admin', 'join', 'dp')),
    principal TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
);
CREATE TABLE packages (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    all_dps INTEGER NOT NULL DEFAULT 0,
    created_at_ms INTEGER NOT NULL
);
CREATE TABLE package_versions (
    package_id INTEGER NOT NULL REFERENCES packages(id),
    version INTEGER NOT NULL CHECK (version > 0),
    manifest BLOB NOT NULL,
    signature BLOB NOT NULL,
    total_size INTEGER NOT NULL,
    file_count INTEGER NOT NULL,
    chunk_count INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL,
    PRIMARY KEY (package_id, version)
);
CREATE TABLE dps (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    url TEXT,
    enrolled_at_ms INTEGER NOT NULL,
    last_seen_ms INTEGER,
    revision INTEGER NOT NULL DEFAULT 0
);
-- The distribution queue: one entry per (package, DP) saying which version
-- the DP must hold. A newer version supersedes the entry in place, so there
-- is never a stale entry for an older version left to process.
CREATE TABLE distributions (
    package_id INTEGER NOT NULL REFERENCES packages(id),
    dp_id INTEGER NOT NULL REFERENCES dps(id),
    version INTEGER NOT NULL,
    refresh INTEGER NOT NULL DEFAULT 0,
    updated_at_ms INTEGER NOT NULL,
    PRIMARY KEY (package_id, dp_id)
);
-- Status messages, immutable, one row per (source, seq).
CREATE TABLE status_messages (
    id INTEGER PRIMARY KEY,
    source TEXT NOT NULL,
    seq INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    received_at_ms INTEGER NOT NULL,
    kind TEXT NOT NULL,
    package TEXT,
    dp TEXT,
    body TEXT NOT NULL,
    UNIQUE (source, seq)
);
CREATE INDEX status_messages_by_package ON status_messages (package, id);
-- Per source: the highest sequence number stored (for acks), and for the
-- site's own messages the last number handed out.
CREATE TABLE status_sources (
    source TEXT PRIMARY KEY,
    last_seq INTEGER NOT NULL
);
"#,
    r#"
-- Agents: one per managed workstation.
CREATE TABLE credentials_v2 (
    token_hash BLOB PRIMARY KEY,
    role TEXT NOT NULL CHECK (role IN ('admin', 'join', 'dp', 'agent')),
    principal TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
);
INSERT INTO credentials_v2 SELECT token_hash, role, principal, created_at_ms FROM credentials;
DROP TABLE credentials;
ALTER TABLE credentials_v2 RENAME TO credentials;
CREATE TABLE agents (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    os TEXT NOT NULL,
    arch TEXT NOT NULL,
    hostname TEXT NOT NULL,
    tags TEXT NOT NULL,
    approved INTEGER NOT NULL,
    enrolled_at_ms INTEGER NOT NULL,
    last_seen_ms INTEGER,
    revision INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
-- A collection is either a list of workstation names or a rule.
CREATE TABLE collections (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    machines TEXT,
    rule TEXT,
    created_at_ms INTEGER NOT NULL,
    CHECK ((machines IS NULL) <> (rule IS NULL))
);
"#,
    r#"
-- Jobs: run a command from a package version on a collection.
CREATE TABLE jobs (
    id INTEGER PRIMARY KEY,
    package_id INTEGER NOT NULL REFERENCES packages(id),
    version INTEGER NOT NULL,
    collection_id INTEGER NOT NULL REFERENCES collections(id),
    command TEXT NOT NULL,
    offer_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER,
    optional INTEGER NOT NULL,
    retries INTEGER NOT NULL,
    retry_delay_ms INTEGER NOT NULL,
    timeout_ms INTEGER,
    success_codes TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    canceled_at_ms INTEGER,
    -- Bookkeeping of the expiry worker: the job_expired message is recorded.
    expiry_recorded INTEGER NOT NULL DEFAULT 0
);
ALTER TABLE status_messages ADD COLUMN job INTEGER;
ALTER TABLE status_messages ADD COLUMN agent TEXT;
CREATE INDEX status_messages_by_job ON status_messages (job, id);
"#,
    r#"
-- The hierarchy. The parent and central codes are NULL at a central site.
ALTER TABLE site ADD COLUMN parent_code TEXT;
ALTER TABLE site ADD COLUMN central_code TEXT;
CREATE TABLE credentials_v3 (
    token_hash BLOB PRIMARY KEY,
    role TEXT NOT NULL CHECK (role IN ('admin', 'join', 'dp', 'agent', 'site', 'site_join')),
    principal TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
);
INSERT INTO credentials_v3 SELECT token_hash, role, principal, created_at_ms FROM credentials;
DROP TABLE credentials;
ALTER TABLE credentials_v3 RENAME TO credentials;
-- Every site below this one. Direct children (parent = this site) also
-- carry their link: when last seen and the rate limit of content sent.
CREATE TABLE sites (
    code TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    parent TEXT NOT NULL,
    registered_at_ms INTEGER NOT NULL,
    last_seen_ms INTEGER,
    max_rate INTEGER
);
-- A child site holds a version's manifest at once and its content only
-- once every chunk is in its library (complete = 1).
ALTER TABLE package_versions ADD COLUMN complete INTEGER NOT NULL DEFAULT 1;
-- The site a message's source belongs to.
ALTER TABLE status_messages ADD COLUMN site TEXT;
UPDATE status_messages SET site = (SELECT code FROM site WHERE id = 1);
-- Instructions waiting for a child site to fetch them (the durable outbox
-- of the send phase), in order per child.
CREATE TABLE site_outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    child TEXT NOT NULL,
    kind TEXT NOT NULL,
    package TEXT,
    body TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
);
CREATE INDEX site_outbox_by_child ON site_outbox (child, seq);
-- Instructions received from the parent, applied in order and removed once
-- applied (or refused, which is reported as a status message).
CREATE TABLE site_inbox (
    seq INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    package TEXT,
    body TEXT NOT NULL,
    received_at_ms INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
-- Package versions whose content a child site (or a site below it) needs.
CREATE TABLE child_wants (
    child TEXT NOT NULL,
    package TEXT NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (child, package, version)
);
-- DP groups: DPs named SITE/DP, as a JSON list.
CREATE TABLE dp_groups (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    dps TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
);
-- Packages placed on the DPs of a group, in every later version too.
CREATE TABLE group_distributions (
    package_id INTEGER NOT NULL REFERENCES packages(id),
    group_id INTEGER NOT NULL REFERENCES dp_groups(id),
    created_at_ms INTEGER NOT NULL,
    PRIMARY KEY (package_id, group_id)
);
ALTER TABLE jobs ADD COLUMN dp_group TEXT;
-- Workstations of this site the job targeted when it arrived.
ALTER TABLE jobs ADD COLUMN local_targets INTEGER NOT NULL DEFAULT 0;
-- Durable positions: the last instruction received from the parent, the
-- last status message relayed to it.
CREATE TABLE cursors (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"#,
    r#"
-- Which DPs and workstations are enrolled at sites below, for the checks of
-- DP group members and listed collection members (db::dp_known,
-- db::agent_known). Partial indexes: only enrollment messages are indexed,
-- so storing the stream of other messages costs nothing more.
CREATE INDEX status_messages_dp_enrolled ON status_messages (site, dp)
    WHERE kind = 'dp_enrolled';
CREATE INDEX status_messages_agent_enrolled ON status_messages (json_extract(body, '$.agent'))
    WHERE kind = 'agent_enrolled';
"#,
];

/// A stored package.
#[derive(Clone, Debug)]
pub struct PackageRow {
    pub id: i64,
    pub name: String,
    pub all_dps: bool,
}

/// A stored DP.
#[derive(Clone, Debug)]
pub struct DpRow {
    pub id: i64,
    pub name: String,
    pub url: Option<String>,
    pub enrolled_at_ms: i64,
    pub last_seen_ms: Option<i64>,
    pub revision: i64,
}

/// A stored package version, without its manifest.
#[derive(Clone, Debug)]
pub struct VersionRow {
    pub version: i64,
    pub total_size: i64,
    pub file_count: i64,
    pub chunk_count: i64,
    pub created_at_ms: i64,
    pub complete: bool,
}

pub async fn package_by_name<'e, E>(executor: E, name: &str) -> Result<Option<PackageRow>>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    let row = sqlx::query("SELECT id, name, all_dps FROM packages WHERE name = ?")
        .bind(name)
        .fetch_optional(executor)
        .await?;
    Ok(row.map(|row| PackageRow {
        id: row.get(0),
        name: row.get(1),
        all_dps: row.get::<i64, _>(2) != 0,
    }))
}

/// The package, or a "unknown package" error.
pub async fn require_package<'e, E>(executor: E, name: &str) -> Result<PackageRow>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    package_by_name(executor, name)
        .await?
        .ok_or(Error::NotFound {
            what: "package",
            name: name.to_owned(),
        })
}

pub async fn all_packages<'e, E>(executor: E) -> Result<Vec<PackageRow>>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    let rows = sqlx::query("SELECT id, name, all_dps FROM packages ORDER BY name")
        .fetch_all(executor)
        .await?;
    Ok(rows
        .into_iter()
        .map(|row| PackageRow {
            id: row.get(0),
            name: row.get(1),
            all_dps: row.get::<i64, _>(2) != 0,
        })
        .collect())
}

pub async fn latest_version<'e, E>(executor: E, package_id: i64) -> Result<Option<i64>>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    Ok(
        sqlx::query_scalar("SELECT MAX(version) FROM package_versions WHERE package_id = ?")
            .bind(package_id)
            .fetch_one(executor)
            .await?,
    )
}

/// The newest version whose content this site holds completely.
pub async fn latest_complete_version<'e, E>(executor: E, package_id: i64) -> Result<Option<i64>>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    Ok(sqlx::query_scalar(
        "SELECT MAX(version) FROM package_versions WHERE package_id = ? AND complete = 1",
    )
    .bind(package_id)
    .fetch_one(executor)
    .await?)
}

pub async fn versions<'e, E>(executor: E, package_id: i64) -> Result<Vec<VersionRow>>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    let rows = sqlx::query(
        "SELECT version, total_size, file_count, chunk_count, created_at_ms, complete
         FROM package_versions WHERE package_id = ? ORDER BY version",
    )
    .bind(package_id)
    .fetch_all(executor)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| VersionRow {
            version: row.get(0),
            total_size: row.get(1),
            file_count: row.get(2),
            chunk_count: row.get(3),
            created_at_ms: row.get(4),
            complete: row.get(5),
        })
        .collect())
}

/// The signed manifest of one version: (manifest bytes, signature).
pub async fn manifest<'e, E>(
    executor: E,
    package_id: i64,
    version: i64,
) -> Result<Option<(Vec<u8>, Vec<u8>)>>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    let row = sqlx::query(
        "SELECT manifest, signature FROM package_versions WHERE package_id = ? AND version = ?",
    )
    .bind(package_id)
    .bind(version)
    .fetch_optional(executor)
    .await?;
    Ok(row.map(|row| (row.get(0), row.get(1))))
}

fn dp_from_row(row: sqlx::sqlite::SqliteRow) -> DpRow {
    DpRow {
        id: row.get(0),
        name: row.get(1),
        url: row.get(2),
        enrolled_at_ms: row.get(3),
        last_seen_ms: row.get(4),
        revision: row.get(5),
    }
}

const DP_COLUMNS: &str = "id, name, url, enrolled_at_ms, last_seen_ms, revision";

pub async fn all_dps<'e, E>(executor: E) -> Result<Vec<DpRow>>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    let rows = sqlx::query(&format!("SELECT {DP_COLUMNS} FROM dps ORDER BY name"))
        .fetch_all(executor)
        .await?;
    Ok(rows.into_iter().map(dp_from_row).collect())
}

pub async fn dp_by_name<'e, E>(executor: E, name: &str) -> Result<Option<DpRow>>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    let row = sqlx::query(&format!("SELECT {DP_COLUMNS} FROM dps WHERE name = ?"))
        .bind(name)
        .fetch_optional(executor)
        .await?;
    Ok(row.map(dp_from_row))
}

pub async fn dp_by_id<'e, E>(executor: E, id: i64) -> Result<DpRow>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    let row = sqlx::query(&format!("SELECT {DP_COLUMNS} FROM dps WHERE id = ?"))
        .bind(id)
        .fetch_one(executor)
        .await?;
    Ok(dp_from_row(row))
}

/// One entry of the distribution queue.
#[derive(Clone, Debug)]
pub struct DistributionRow {
    pub package: String,
    pub dp: String,
    pub version: i64,
    pub refresh: i64,
}

/// The assignments of one DP, by package name: its queue entries, without
/// those still waiting for the content to reach this site (version 0).
pub async fn distributions_of_dp<'e, E>(executor: E, dp_id: i64) -> Result<Vec<DistributionRow>>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    distributions_where(
        executor,
        "q.dp_id = ? AND q.version > 0 ORDER BY p.name",
        dp_id,
    )
    .await
}

/// The queue entries of one package, by DP name.
pub async fn distributions_of_package<'e, E>(
    executor: E,
    package_id: i64,
) -> Result<Vec<DistributionRow>>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    distributions_where(executor, "q.package_id = ? ORDER BY d.name", package_id).await
}

async fn distributions_where<'e, E>(
    executor: E,
    condition: &str,
    id: i64,
) -> Result<Vec<DistributionRow>>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    let rows = sqlx::query(&format!(
        "SELECT p.name, d.name, q.version, q.refresh FROM distributions q
         JOIN packages p ON p.id = q.package_id JOIN dps d ON d.id = q.dp_id
         WHERE {condition}"
    ))
    .bind(id)
    .fetch_all(executor)
    .await?;
    Ok(rows.into_iter().map(distribution_from_row).collect())
}

fn distribution_from_row(row: sqlx::sqlite::SqliteRow) -> DistributionRow {
    DistributionRow {
        package: row.get(0),
        dp: row.get(1),
        version: row.get(2),
        refresh: row.get(3),
    }
}

/// Hands out the next sequence number of `source` (the site's own messages).
pub async fn next_seq(tx: &mut Transaction<'static, Sqlite>, source: &str) -> Result<i64> {
    let seq: i64 = sqlx::query_scalar(
        "INSERT INTO status_sources (source, last_seq) VALUES (?, 1)
         ON CONFLICT (source) DO UPDATE SET last_seq = last_seq + 1
         RETURNING last_seq",
    )
    .bind(source)
    .fetch_one(&mut **tx)
    .await?;
    Ok(seq)
}

/// Stores a status message from `source` unless (source, seq) is already
/// stored; returns whether it was new. Every message any site stores, its
/// own, its DPs' and agents', and those relayed from below, goes through
/// here, so the columns the views select on are filled the same way.
pub async fn insert_message(
    tx: &mut Transaction<'static, Sqlite>,
    source: &StatusSource,
    message: &StatusMessage,
    received_at_ms: i64,
) -> Result<bool> {
    Ok(insert_messages(tx, &[(source, message, received_at_ms)]).await?[0])
}

/// Rows per `INSERT` of [`insert_messages`] (11 parameters each, well under
/// SQLite's limit on parameters).
const INSERT_ROWS: usize = 500;

/// [`insert_message`] for many messages with one statement per
/// [`INSERT_ROWS`]: whether each was new, in order (a message given twice is
/// new the first time only).
pub async fn insert_messages(
    tx: &mut Transaction<'static, Sqlite>,
    messages: &[(&StatusSource, &StatusMessage, i64)],
) -> Result<Vec<bool>> {
    let mut new = Vec::with_capacity(messages.len());
    for part in messages.chunks(INSERT_ROWS) {
        let mut query = sqlx::QueryBuilder::<Sqlite>::new(
            "INSERT OR IGNORE INTO status_messages
             (source, seq, at_ms, received_at_ms, kind, package, dp, job, agent, site, body) ",
        );
        let mut failed = None;
        query.push_values(part, |mut row, (source, message, received_at_ms)| {
            let body = match serde_json::to_string(message) {
                Ok(body) => body,
                Err(err) => {
                    failed = Some(err);
                    String::new()
                }
            };
            row.push_bind(source.to_string())
                .push_bind(message.seq as i64)
                .push_bind(message.at_ms)
                .push_bind(*received_at_ms)
                .push_bind(message.body.kind())
                .push_bind(message.body.package().map(str::to_owned))
                .push_bind(source.dp().or(message.body.dp()).map(str::to_owned))
                .push_bind(message.body.job().map(|job| job as i64))
                .push_bind(source.agent().map(str::to_owned))
                .push_bind(source.site.as_str().to_owned())
                .push_bind(body);
        });
        if let Some(err) = failed {
            return Err(Error::Internal(err.to_string()));
        }
        query.push(" RETURNING source, seq");
        let inserted: Vec<(String, i64)> = query.build_query_as().fetch_all(&mut **tx).await?;
        let mut inserted: std::collections::HashSet<(String, i64)> = inserted.into_iter().collect();
        for (source, message, _) in part {
            new.push(inserted.remove(&(source.to_string(), message.seq as i64)));
        }
    }
    Ok(new)
}

/// A stored status message.
pub struct MessageRow {
    pub source: String,
    pub seq: i64,
    pub at_ms: i64,
    pub received_at_ms: i64,
    pub site: Option<String>,
    pub dp: Option<String>,
    pub body: String,
}

/// Status messages about a package, in arrival order.
pub async fn messages_of_package<'e, E>(executor: E, package: &str) -> Result<Vec<MessageRow>>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    let rows = sqlx::query(
        "SELECT source, seq, at_ms, received_at_ms, site, dp, body FROM status_messages
         WHERE package = ? ORDER BY id",
    )
    .bind(package)
    .fetch_all(executor)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| MessageRow {
            source: row.get(0),
            seq: row.get(1),
            at_ms: row.get(2),
            received_at_ms: row.get(3),
            site: row.get(4),
            dp: row.get(5),
            body: row.get(6),
        })
        .collect())
}

/// A durable position (`instructions`: the last instruction received from
/// the parent; `relayed`: the last status message delivered to it).
pub async fn cursor<'e, E>(executor: E, name: &str) -> Result<i64>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    let value: Option<i64> = sqlx::query_scalar("SELECT value FROM cursors WHERE name = ?")
        .bind(name)
        .fetch_optional(executor)
        .await?;
    Ok(value.unwrap_or(0))
}

/// Moves a durable position forward (never back).
pub async fn advance_cursor(
    tx: &mut Transaction<'static, Sqlite>,
    name: &str,
    value: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO cursors (name, value) VALUES (?, ?)
         ON CONFLICT (name) DO UPDATE SET value = MAX(value, excluded.value)",
    )
    .bind(name)
    .bind(value)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// One site below this one.
#[derive(Clone, Debug)]
pub struct SiteRow {
    pub code: String,
    pub kind: String,
    pub parent: String,
    pub registered_at_ms: i64,
    pub last_seen_ms: Option<i64>,
    pub max_rate: Option<i64>,
}

const SITE_COLUMNS: &str = "code, kind, parent, registered_at_ms, last_seen_ms, max_rate";

fn site_from_row(row: sqlx::sqlite::SqliteRow) -> SiteRow {
    SiteRow {
        code: row.get(0),
        kind: row.get(1),
        parent: row.get(2),
        registered_at_ms: row.get(3),
        last_seen_ms: row.get(4),
        max_rate: row.get(5),
    }
}

/// Every site below this one, by code.
pub async fn subtree<'e, E>(executor: E) -> Result<Vec<SiteRow>>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    let rows = sqlx::query(&format!("SELECT {SITE_COLUMNS} FROM sites ORDER BY code"))
        .fetch_all(executor)
        .await?;
    Ok(rows.into_iter().map(site_from_row).collect())
}

/// One site below this one, by code.
pub async fn site_by_code<'e, E>(executor: E, code: &str) -> Result<Option<SiteRow>>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    let row = sqlx::query(&format!("SELECT {SITE_COLUMNS} FROM sites WHERE code = ?"))
        .bind(code)
        .fetch_optional(executor)
        .await?;
    Ok(row.map(site_from_row))
}

/// The codes of this site's direct children.
pub async fn children<'e, E>(executor: E, own: &str) -> Result<Vec<String>>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    Ok(
        sqlx::query_scalar("SELECT code FROM sites WHERE parent = ? ORDER BY code")
            .bind(own)
            .fetch_all(executor)
            .await?,
    )
}

/// Whether a DP named `dp` is enrolled at `site`, as this site knows: its
/// own DPs from its table, those of sites below from their `dp_enrolled`
/// messages.
pub async fn dp_known<'e, E>(executor: E, own: &str, site: &str, dp: &str) -> Result<bool>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    if site == own {
        return Ok(dp_by_name(executor, dp).await?.is_some());
    }
    Ok(sqlx::query_scalar::<_, i64>(
        "SELECT 1 FROM status_messages WHERE site = ? AND kind = 'dp_enrolled' AND dp = ? LIMIT 1",
    )
    .bind(site)
    .bind(dp)
    .fetch_optional(executor)
    .await?
    .is_some())
}

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
