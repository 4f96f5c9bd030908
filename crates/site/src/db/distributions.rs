//! The distribution queue: which version each DP must hold.

use crate::error::Result;
use cascade_store::WriteTx;
use sqlx::{Row, Sqlite};

/// One entry of the distribution queue.
#[derive(Clone, Debug)]
pub struct DistributionRow {
    pub package: String,
    pub dp: String,
    pub version: i64,
    pub refresh: i64,
    /// The version's content is still on its way to this site (its
    /// manifest is here, not every chunk yet).
    pub arriving: bool,
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
        "SELECT p.name, d.name, q.version, q.refresh, COALESCE(v.complete, 1) = 0
         FROM distributions q
         JOIN packages p ON p.id = q.package_id JOIN dps d ON d.id = q.dp_id
         LEFT JOIN package_versions v ON v.package_id = q.package_id AND v.version = q.version
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
        arriving: row.get(4),
    }
}

/// Sets the (package, DP) entry and bumps the DP's revision, which ends its
/// long poll.
pub async fn set_distribution(
    tx: &mut WriteTx<'_>,
    package_id: i64,
    dp_id: i64,
    version: i64,
    refresh: i64,
    now_ms: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO distributions (package_id, dp_id, version, refresh, updated_at_ms)
         VALUES (?, ?, ?, ?, ?)
         ON CONFLICT (package_id, dp_id) DO UPDATE
         SET version = excluded.version, refresh = excluded.refresh, updated_at_ms = excluded.updated_at_ms",
    )
    .bind(package_id)
    .bind(dp_id)
    .bind(version)
    .bind(refresh)
    .bind(now_ms)
    .execute(&mut *tx.tx)
    .await?;
    sqlx::query("UPDATE dps SET revision = revision + 1 WHERE id = ?")
        .bind(dp_id)
        .execute(&mut *tx.tx)
        .await?;
    Ok(())
}

/// Bumps the revision of every DP with an entry for the package at
/// `version`, so that their long polls answer what changed about it (its
/// content completed here).
pub async fn bump_dps_at_version(
    tx: &mut WriteTx<'_>,
    package_id: i64,
    version: i64,
) -> Result<()> {
    sqlx::query(
        "UPDATE dps SET revision = revision + 1
         WHERE id IN (SELECT dp_id FROM distributions WHERE package_id = ? AND version = ?)",
    )
    .bind(package_id)
    .bind(version)
    .execute(&mut *tx.tx)
    .await?;
    Ok(())
}

/// Queues a DP for a package of which no version is here yet (version 0:
/// no assignment the DP sees).
pub async fn insert_waiting_entry(
    tx: &mut WriteTx<'_>,
    package_id: i64,
    dp_id: i64,
    now_ms: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO distributions (package_id, dp_id, version, refresh, updated_at_ms)
         VALUES (?, ?, 0, 0, ?)",
    )
    .bind(package_id)
    .bind(dp_id)
    .bind(now_ms)
    .execute(&mut *tx.tx)
    .await?;
    Ok(())
}

/// Bumps the refresh generation of an entry, leaving the DP's revision.
pub async fn bump_refresh(tx: &mut WriteTx<'_>, package_id: i64, dp_id: i64) -> Result<()> {
    sqlx::query(
        "UPDATE distributions SET refresh = refresh + 1 WHERE package_id = ? AND dp_id = ?",
    )
    .bind(package_id)
    .bind(dp_id)
    .execute(&mut *tx.tx)
    .await?;
    Ok(())
}

/// One entry: (version, refresh).
pub async fn entry<'e, E>(executor: E, package_id: i64, dp_id: i64) -> Result<Option<(i64, i64)>>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    Ok(sqlx::query_as(
        "SELECT version, refresh FROM distributions WHERE package_id = ? AND dp_id = ?",
    )
    .bind(package_id)
    .bind(dp_id)
    .fetch_optional(executor)
    .await?)
}

/// The entries of a package on this site's DPs, by DP name: DP id, DP
/// name, version (0 while the content is still on its way here), refresh
/// generation.
pub async fn entries_of_package<'e, E>(
    executor: E,
    package_id: i64,
) -> Result<Vec<(i64, String, i64, i64)>>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    Ok(sqlx::query_as(
        "SELECT d.id, d.name, q.version, q.refresh FROM distributions q JOIN dps d ON d.id = q.dp_id
         WHERE q.package_id = ? ORDER BY d.name",
    )
    .bind(package_id)
    .fetch_all(executor)
    .await?)
}
