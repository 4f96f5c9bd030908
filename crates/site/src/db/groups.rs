//! DP groups and the packages distributed to them.

use crate::error::{Error, Result};
use cascade_store::WriteTx;
use sqlx::Sqlite;

fn members_of(json: &str) -> Result<Vec<String>> {
    serde_json::from_str(json).map_err(Error::json("stored dp group does not parse"))
}

/// The names of this site's DPs in the group; an unknown group has none.
pub async fn local_members_of(pool: &sqlx::SqlitePool, group: &str) -> Result<Vec<String>> {
    let row: Option<(String, String)> = sqlx::query_as(
        "SELECT g.dps, s.code FROM dp_groups g, site s WHERE g.name = ? AND s.id = 1",
    )
    .bind(group)
    .fetch_optional(pool)
    .await?;
    match row {
        Some((json, own)) => local(&own, &json),
        None => Ok(Vec::new()),
    }
}

fn local(own: &str, json: &str) -> Result<Vec<String>> {
    Ok(local_of(own, &members_of(json)?))
}

/// The names of the DPs of site `own` among `members` (`SITE/DP`).
pub fn local_of(own: &str, members: &[String]) -> Vec<String> {
    members
        .iter()
        .filter_map(|member| {
            let (site, dp) = member.split_once('/')?;
            (site == own).then(|| dp.to_owned())
        })
        .collect()
}

/// A stored group: (id, members as `SITE/DP`, created at).
pub async fn group_by_name<'e, E>(
    executor: E,
    name: &str,
) -> Result<Option<(i64, Vec<String>, i64)>>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    let row: Option<(i64, String, i64)> =
        sqlx::query_as("SELECT id, dps, created_at_ms FROM dp_groups WHERE name = ?")
            .bind(name)
            .fetch_optional(executor)
            .await?;
    row.map(|(id, dps, created_at_ms)| Ok((id, members_of(&dps)?, created_at_ms)))
        .transpose()
}

/// Every group: (name, members, created at), by name.
pub async fn all_groups<'e, E>(executor: E) -> Result<Vec<(String, Vec<String>, i64)>>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    let rows: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT name, dps, created_at_ms FROM dp_groups ORDER BY name")
            .fetch_all(executor)
            .await?;
    rows.into_iter()
        .map(|(name, dps, created_at_ms)| Ok((name, members_of(&dps)?, created_at_ms)))
        .collect()
}

/// Every group in the order they were created: (name, members).
pub async fn groups_in_order<'e, E>(executor: E) -> Result<Vec<(String, Vec<String>)>>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    let rows: Vec<(String, String)> = sqlx::query_as("SELECT name, dps FROM dp_groups ORDER BY id")
        .fetch_all(executor)
        .await?;
    rows.into_iter()
        .map(|(name, dps)| Ok((name, members_of(&dps)?)))
        .collect()
}

/// Stores a group (replacing the members of one of the same name).
pub async fn upsert_group(
    tx: &mut WriteTx<'_>,
    name: &str,
    dps: &[String],
    now_ms: i64,
) -> Result<()> {
    let json = serde_json::to_string(dps).map_err(Error::json("encoding a dp group"))?;
    sqlx::query(
        "INSERT INTO dp_groups (name, dps, created_at_ms) VALUES (?, ?, ?)
         ON CONFLICT (name) DO UPDATE SET dps = excluded.dps",
    )
    .bind(name)
    .bind(json)
    .bind(now_ms)
    .execute(&mut *tx.tx)
    .await?;
    Ok(())
}

/// The members of every group the package is distributed to.
pub async fn groups_of_package<'e, E>(executor: E, package_id: i64) -> Result<Vec<Vec<String>>>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    let rows: Vec<String> = sqlx::query_scalar(
        "SELECT g.dps FROM group_distributions d JOIN dp_groups g ON g.id = d.group_id
         WHERE d.package_id = ?",
    )
    .bind(package_id)
    .fetch_all(executor)
    .await?;
    rows.iter().map(|json| members_of(json)).collect()
}

/// Every distribution to a group: (package id, package name, the group's
/// members).
pub async fn group_distributions<'e, E>(executor: E) -> Result<Vec<(i64, String, Vec<String>)>>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    let rows: Vec<(i64, String, String)> = sqlx::query_as(
        "SELECT p.id, p.name, g.dps FROM group_distributions d
         JOIN packages p ON p.id = d.package_id JOIN dp_groups g ON g.id = d.group_id",
    )
    .fetch_all(executor)
    .await?;
    rows.into_iter()
        .map(|(id, name, dps)| Ok((id, name, members_of(&dps)?)))
        .collect()
}

/// Every distribution to a group in the order they were made: (package,
/// group).
pub async fn group_distribution_names<'e, E>(executor: E) -> Result<Vec<(String, String)>>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    Ok(sqlx::query_as(
        "SELECT p.name, g.name FROM group_distributions d
         JOIN packages p ON p.id = d.package_id JOIN dp_groups g ON g.id = d.group_id
         ORDER BY d.created_at_ms",
    )
    .fetch_all(executor)
    .await?)
}

/// Records that the package goes to the group (once).
pub async fn insert_group_distribution(
    tx: &mut WriteTx<'_>,
    package_id: i64,
    group_id: i64,
    now_ms: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT OR IGNORE INTO group_distributions (package_id, group_id, created_at_ms) VALUES (?, ?, ?)",
    )
    .bind(package_id)
    .bind(group_id)
    .bind(now_ms)
    .execute(&mut *tx.tx)
    .await?;
    Ok(())
}
