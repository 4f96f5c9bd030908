//! Distribution points.

use crate::error::Result;
use cascade_store::WriteTx;
use sqlx::{Row, Sqlite};

/// A stored DP.
#[derive(Clone, Debug)]
pub struct DpRow {
    pub id: i64,
    pub name: String,
    pub url: Option<String>,
    pub enrolled_at_ms: i64,
    pub last_seen_ms: Option<i64>,
    pub revision: i64,
    /// What the DP last announced as its URL.
    pub announced_url: Option<String>,
    /// Whether an administrator admitted it.
    pub approved: bool,
    /// Fingerprint of the TLS certificate it serves with, as it announced.
    pub certificate: Option<String>,
}

fn dp_from_row(row: sqlx::sqlite::SqliteRow) -> DpRow {
    DpRow {
        id: row.get(0),
        name: row.get(1),
        url: row.get(2),
        enrolled_at_ms: row.get(3),
        last_seen_ms: row.get(4),
        revision: row.get(5),
        announced_url: row.get(6),
        approved: row.get::<Option<i64>, _>(7).is_some(),
        certificate: row.get(8),
    }
}

const DP_COLUMNS: &str =
    "id, name, url, enrolled_at_ms, last_seen_ms, revision, announced_url, approved_at_ms, certificate";

/// The admitted DPs (approved by an administrator): the only ones given
/// packages and offered to agents.
pub async fn all_dps<'e, E>(executor: E) -> Result<Vec<DpRow>>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    let rows = sqlx::query(&format!(
        "SELECT {DP_COLUMNS} FROM dps WHERE approved_at_ms IS NOT NULL ORDER BY name"
    ))
    .fetch_all(executor)
    .await?;
    Ok(rows.into_iter().map(dp_from_row).collect())
}

/// Every enrolled DP, admitted or waiting for approval.
pub async fn enrolled_dps<'e, E>(executor: E) -> Result<Vec<DpRow>>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    let rows = sqlx::query(&format!("SELECT {DP_COLUMNS} FROM dps ORDER BY name"))
        .fetch_all(executor)
        .await?;
    Ok(rows.into_iter().map(dp_from_row).collect())
}

/// Whether DP `dp_id` was given package `package` at `version` or a later
/// version (its reports on an older one may still be on their way).
pub async fn dp_assigned<'e, E>(
    executor: E,
    dp_id: i64,
    package: &str,
    version: u64,
) -> Result<bool>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    let found: Option<i64> = sqlx::query_scalar(
        "SELECT 1 FROM distributions d JOIN packages p ON p.id = d.package_id
         WHERE d.dp_id = ? AND p.name = ? AND d.version >= ?",
    )
    .bind(dp_id)
    .bind(package)
    .bind(version as i64)
    .fetch_optional(executor)
    .await?;
    Ok(found.is_some())
}

/// Admits a DP at `url`.
pub async fn approve_dp(tx: &mut WriteTx<'_>, dp_id: i64, url: &str, now_ms: i64) -> Result<()> {
    sqlx::query(
        "UPDATE dps SET url = ?, approved_at_ms = COALESCE(approved_at_ms, ?), revision = revision + 1
         WHERE id = ?",
    )
    .bind(url)
    .bind(now_ms)
    .bind(dp_id)
    .execute(&mut *tx.tx)
    .await?;
    Ok(())
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

/// Enrolls a DP; returns its id.
pub async fn insert_dp(
    tx: &mut WriteTx<'_>,
    name: &str,
    now_ms: i64,
    public_key: Option<&str>,
) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "INSERT INTO dps (name, enrolled_at_ms, public_key) VALUES (?, ?, ?) RETURNING id",
    )
    .bind(name)
    .bind(now_ms)
    .bind(public_key)
    .fetch_one(&mut *tx.tx)
    .await?)
}

/// Records the URL a DP announced, and that it was seen.
/// Records the URL a DP announces (not the one agents use: that one an
/// administrator admits).
pub async fn set_dp_url(
    tx: &mut WriteTx<'_>,
    dp_id: i64,
    url: &str,
    certificate: Option<&str>,
    now_ms: i64,
) -> Result<()> {
    sqlx::query(
        "UPDATE dps SET announced_url = ?, certificate = COALESCE(?, certificate), last_seen_ms = ? WHERE id = ?",
    )
        .bind(url)
        .bind(certificate)
        .bind(now_ms)
        .bind(dp_id)
        .execute(&mut *tx.tx)
        .await?;
    Ok(())
}

/// Records that a DP was seen.
pub async fn touch_dp(tx: &mut WriteTx<'_>, dp_id: i64, now_ms: i64) -> Result<()> {
    sqlx::query("UPDATE dps SET last_seen_ms = ? WHERE id = ?")
        .bind(now_ms)
        .bind(dp_id)
        .execute(&mut *tx.tx)
        .await?;
    Ok(())
}
