//! Packages and their versions.

use crate::error::{Entity, Error, Result};
use cascade_content::Manifest;
use cascade_store::WriteTx;
use sqlx::{Row, Sqlite};

/// A stored package.
#[derive(Clone, Debug)]
pub struct PackageRow {
    pub id: i64,
    pub name: String,
    pub all_dps: bool,
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
    /// When the retention stopped keeping it.
    pub retired_at_ms: Option<i64>,
    /// The command that uninstalls it (central site only).
    pub uninstall_command: Option<String>,
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
            what: Entity::Package,
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

pub async fn versions<'e, E>(executor: E, package_id: i64) -> Result<Vec<VersionRow>>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    let rows = sqlx::query(
        "SELECT version, total_size, file_count, chunk_count, created_at_ms, complete, retired_at_ms,
                uninstall_command
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
            retired_at_ms: row.get(6),
            uninstall_command: row.get(7),
        })
        .collect())
}

/// A package's versions not retired, newest first: (version, complete).
pub async fn unretired_versions<'e, E>(executor: E, package_id: i64) -> Result<Vec<(i64, bool)>>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    Ok(sqlx::query_as(
        "SELECT version, complete FROM package_versions
         WHERE package_id = ? AND retired_at_ms IS NULL ORDER BY version DESC",
    )
    .bind(package_id)
    .fetch_all(executor)
    .await?)
}

/// Whether a job neither canceled nor expired at `now` names the version.
pub async fn open_job_names<'e, E>(
    executor: E,
    package_id: i64,
    version: i64,
    now: i64,
) -> Result<bool>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM jobs WHERE package_id = ? AND version = ?
           AND canceled_at_ms IS NULL AND (expires_at_ms IS NULL OR expires_at_ms > ?))",
    )
    .bind(package_id)
    .bind(version)
    .bind(now)
    .fetch_one(executor)
    .await?)
}

/// Marks a version retired at `now`.
pub async fn retire_version(
    tx: &mut WriteTx<'_>,
    package_id: i64,
    version: i64,
    now: i64,
) -> Result<()> {
    sqlx::query(
        "UPDATE package_versions SET retired_at_ms = ? WHERE package_id = ? AND version = ?",
    )
    .bind(now)
    .bind(package_id)
    .bind(version)
    .execute(&mut *tx.tx)
    .await?;
    Ok(())
}

/// The manifests of every version not retired (bytes as signed).
pub async fn unretired_manifests<'e, E>(executor: E) -> Result<Vec<Vec<u8>>>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    Ok(
        sqlx::query_scalar("SELECT manifest FROM package_versions WHERE retired_at_ms IS NULL")
            .fetch_all(executor)
            .await?,
    )
}

/// Every version held whose content is complete here and that is not
/// retired: package id, name, version and manifest bytes.
pub async fn complete_manifests<'e, E>(executor: E) -> Result<Vec<(i64, String, i64, Vec<u8>)>>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    Ok(sqlx::query_as(
        "SELECT p.id, p.name, v.version, v.manifest FROM package_versions v
         JOIN packages p ON p.id = v.package_id
         WHERE v.complete = 1 AND v.retired_at_ms IS NULL",
    )
    .fetch_all(executor)
    .await?)
}

/// Whether the retention retired a version (false for one not stored).
pub async fn version_retired<'e, E>(executor: E, package_id: i64, version: i64) -> Result<bool>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM package_versions
           WHERE package_id = ? AND version = ? AND retired_at_ms IS NOT NULL)",
    )
    .bind(package_id)
    .bind(version)
    .fetch_one(executor)
    .await?)
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

/// Stores a verified package version; `complete` when every chunk of it is
/// in the library.
pub async fn insert_version(
    tx: &mut WriteTx<'_>,
    package_id: i64,
    manifest: &Manifest,
    signed: &cascade_content::SignedManifest,
    complete: bool,
) -> Result<VersionRow> {
    let row = VersionRow {
        version: manifest.version as i64,
        total_size: manifest.total_size() as i64,
        file_count: manifest.file_count() as i64,
        chunk_count: manifest.unique_chunks().len() as i64,
        created_at_ms: manifest.created_at_ms,
        complete,
        retired_at_ms: None,
        uninstall_command: None,
    };
    sqlx::query(
        "INSERT INTO package_versions
         (package_id, version, manifest, signature, total_size, file_count, chunk_count, created_at_ms, complete)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(package_id)
    .bind(row.version)
    .bind(&signed.bytes)
    .bind(&signed.signature[..])
    .bind(row.total_size)
    .bind(row.file_count)
    .bind(row.chunk_count)
    .bind(row.created_at_ms)
    .bind(complete)
    .execute(&mut *tx.tx)
    .await?;
    Ok(row)
}

/// Sets the command that uninstalls a version.
pub async fn set_uninstall_command(
    tx: &mut WriteTx<'_>,
    package_id: i64,
    version: i64,
    command: Option<&str>,
) -> Result<()> {
    sqlx::query(
        "UPDATE package_versions SET uninstall_command = ? WHERE package_id = ? AND version = ?",
    )
    .bind(command)
    .bind(package_id)
    .bind(version)
    .execute(&mut *tx.tx)
    .await?;
    Ok(())
}

/// The command that uninstalls a version, if it has one.
pub async fn uninstall_command<'e, E>(
    executor: E,
    package_id: i64,
    version: i64,
) -> Result<Option<String>>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    Ok(sqlx::query_scalar(
        "SELECT uninstall_command FROM package_versions WHERE package_id = ? AND version = ?",
    )
    .bind(package_id)
    .bind(version)
    .fetch_optional(executor)
    .await?
    .flatten())
}

/// Creates a package (with no version yet); returns its id.
pub async fn insert_package(tx: &mut WriteTx<'_>, name: &str, created_at_ms: i64) -> Result<i64> {
    Ok(
        sqlx::query_scalar("INSERT INTO packages (name, created_at_ms) VALUES (?, ?) RETURNING id")
            .bind(name)
            .bind(created_at_ms)
            .fetch_one(&mut *tx.tx)
            .await?,
    )
}

/// Every version's signed manifest, by package name and version:
/// (package, version, manifest bytes, signature).
pub async fn all_manifests<'e, E>(executor: E) -> Result<Vec<(String, i64, Vec<u8>, Vec<u8>)>>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    Ok(sqlx::query_as(
        "SELECT p.name, v.version, v.manifest, v.signature FROM package_versions v
         JOIN packages p ON p.id = v.package_id ORDER BY p.name, v.version",
    )
    .fetch_all(executor)
    .await?)
}

/// The packages distributed to every DP: (id, name).
pub async fn packages_on_all_dps<'e, E>(executor: E) -> Result<Vec<(i64, String)>>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    Ok(
        sqlx::query_as("SELECT id, name FROM packages WHERE all_dps = 1")
            .fetch_all(executor)
            .await?,
    )
}

/// Marks a package as distributed to every DP, those enrolling later too.
pub async fn set_all_dps(tx: &mut WriteTx<'_>, package_id: i64) -> Result<()> {
    sqlx::query("UPDATE packages SET all_dps = 1 WHERE id = ?")
        .bind(package_id)
        .execute(&mut *tx.tx)
        .await?;
    Ok(())
}

/// Records that every chunk of a version is in the library.
/// A version whose content is no longer all here (a damaged chunk was
/// removed): the content worker brings in what is missing again.
pub async fn mark_version_incomplete(
    tx: &mut WriteTx<'_>,
    package_id: i64,
    version: i64,
) -> Result<()> {
    sqlx::query("UPDATE package_versions SET complete = 0 WHERE package_id = ? AND version = ?")
        .bind(package_id)
        .bind(version)
        .execute(&mut *tx.tx)
        .await?;
    Ok(())
}

pub async fn mark_version_complete(
    tx: &mut WriteTx<'_>,
    package_id: i64,
    version: i64,
) -> Result<()> {
    sqlx::query("UPDATE package_versions SET complete = 1 WHERE package_id = ? AND version = ?")
        .bind(package_id)
        .bind(version)
        .execute(&mut *tx.tx)
        .await?;
    Ok(())
}
