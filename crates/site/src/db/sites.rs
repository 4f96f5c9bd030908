//! The sites below this one.

use crate::error::Result;
use cascade_domain::hierarchy::in_subtree;
use cascade_store::WriteTx;
use sqlx::{Row, Sqlite};

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

/// Records that a direct child was heard from.
pub async fn touch_site(tx: &mut WriteTx<'_>, code: &str, now_ms: i64) -> Result<()> {
    sqlx::query("UPDATE sites SET last_seen_ms = ? WHERE code = ?")
        .bind(now_ms)
        .bind(code)
        .execute(&mut *tx.tx)
        .await?;
    Ok(())
}

/// The rate limit of content sent to a site (bytes per second).
pub async fn site_max_rate<'e, E>(executor: E, code: &str) -> Result<Option<i64>>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    Ok(
        sqlx::query_scalar("SELECT max_rate FROM sites WHERE code = ?")
            .bind(code)
            .fetch_optional(executor)
            .await?
            .flatten(),
    )
}

/// Registers a direct child (or takes over a code registered for one that
/// never connected, with its new rate limit).
pub async fn upsert_child_site(
    tx: &mut WriteTx<'_>,
    code: &str,
    kind: &str,
    parent: &str,
    now_ms: i64,
    max_rate: Option<i64>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO sites (code, kind, parent, registered_at_ms, max_rate) VALUES (?, ?, ?, ?, ?)
         ON CONFLICT (code) DO UPDATE SET max_rate = excluded.max_rate",
    )
    .bind(code)
    .bind(kind)
    .bind(parent)
    .bind(now_ms)
    .bind(max_rate)
    .execute(&mut *tx.tx)
    .await?;
    Ok(())
}

/// Registers a site further below.
pub async fn insert_site(
    tx: &mut WriteTx<'_>,
    code: &str,
    kind: &str,
    parent: &str,
    now_ms: i64,
) -> Result<()> {
    sqlx::query("INSERT INTO sites (code, kind, parent, registered_at_ms) VALUES (?, ?, ?, ?)")
        .bind(code)
        .bind(kind)
        .bind(parent)
        .bind(now_ms)
        .execute(&mut *tx.tx)
        .await?;
    Ok(())
}

/// Sets the rate limit of a direct child of `own`; false when `code` is not
/// one.
pub async fn set_child_rate(
    tx: &mut WriteTx<'_>,
    code: &str,
    own: &str,
    max_rate: Option<i64>,
) -> Result<bool> {
    let changed = sqlx::query("UPDATE sites SET max_rate = ? WHERE code = ? AND parent = ?")
        .bind(max_rate)
        .bind(code)
        .bind(own)
        .execute(&mut *tx.tx)
        .await?
        .rows_affected();
    Ok(changed > 0)
}

/// This site itself, as `site init` recorded it.
pub struct OwnSite {
    pub code: String,
    pub kind: String,
    pub created_at_ms: i64,
    pub parent_code: Option<String>,
    pub central_code: Option<String>,
}

/// This site's own row.
pub async fn own_site<'e, E>(executor: E) -> Result<OwnSite>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    let (code, kind, created_at_ms, parent_code, central_code) = sqlx::query_as(
        "SELECT code, kind, created_at_ms, parent_code, central_code FROM site WHERE id = 1",
    )
    .fetch_one(executor)
    .await?;
    Ok(OwnSite {
        code,
        kind,
        created_at_ms,
        parent_code,
        central_code,
    })
}

/// Records this site itself, at `site init`.
pub async fn insert_own_site(tx: &mut WriteTx<'_>, site: &OwnSite) -> Result<()> {
    sqlx::query(
        "INSERT INTO site (id, code, kind, created_at_ms, parent_code, central_code)
         VALUES (1, ?, ?, ?, ?, ?)",
    )
    .bind(&site.code)
    .bind(&site.kind)
    .bind(site.created_at_ms)
    .bind(&site.parent_code)
    .bind(&site.central_code)
    .execute(&mut *tx.tx)
    .await?;
    Ok(())
}

/// Whether `site` is `root` or below it.
pub fn contains(sites: &[SiteRow], root: &str, site: &str) -> bool {
    in_subtree(site, root, |code| {
        sites
            .iter()
            .find(|row| row.code == code)
            .map(|row| row.parent.as_str())
    })
}
