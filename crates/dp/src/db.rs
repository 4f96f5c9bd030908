//! The DP's own database: what it holds, its counters, its status outbox.

use crate::error::Result;
use cascade_store::{Db, WriteTx, OUTBOX_SCHEMA};
use sqlx::Row;

/// Schema migrations of a DP database.
pub const MIGRATIONS: &[&str] = &[
    r#"
-- The package versions this DP holds, with their signed manifests.
CREATE TABLE packages (
    name TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    manifest BLOB NOT NULL,
    signature BLOB NOT NULL,
    refresh_done INTEGER NOT NULL DEFAULT 0,
    installed_at_ms INTEGER NOT NULL
);
CREATE TABLE counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"#,
    OUTBOX_SCHEMA,
    r#"
-- The site's content-ticket key (hex), given once the DP is admitted.
CREATE TABLE secrets (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"#,
];

/// A secret given by the site, by name.
pub async fn secret(db: &Db, name: &str) -> Result<Option<String>> {
    Ok(
        sqlx::query_scalar("SELECT value FROM secrets WHERE name = ?")
            .bind(name)
            .fetch_optional(db.pool())
            .await?,
    )
}

/// Stores (or replaces) a secret given by the site.
pub async fn set_secret(db: &Db, name: &str, value: &str) -> Result<()> {
    let mut tx = db.write().await?;
    sqlx::query("INSERT OR REPLACE INTO secrets (name, value) VALUES (?, ?)")
        .bind(name)
        .bind(value)
        .execute(&mut *tx.tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// A package version held by the DP.
#[derive(Clone, Debug)]
pub struct Held {
    pub name: String,
    pub version: u64,
    pub manifest: Vec<u8>,
    pub signature: Vec<u8>,
    pub refresh_done: u64,
}

impl Held {
    /// The stored manifest, verified again against the site's key (it is
    /// read from disk).
    pub fn verified(
        &self,
        key: &cascade_content::VerifyingKey,
    ) -> Result<cascade_content::Manifest> {
        Ok(self.signed()?.verify(key)?)
    }

    /// The stored signed manifest (its signature is checked by the caller).
    pub fn signed(&self) -> Result<cascade_content::SignedManifest> {
        Ok(cascade_content::SignedManifest {
            bytes: self.manifest.clone(),
            signature: self.signature.clone().try_into().map_err(|_| {
                crate::Error::Refused(format!("stored signature of {} is damaged", self.name))
            })?,
        })
    }
}

pub async fn held(db: &Db, name: &str) -> Result<Option<Held>> {
    let row = sqlx::query(
        "SELECT name, version, manifest, signature, refresh_done FROM packages WHERE name = ?",
    )
    .bind(name)
    .fetch_optional(db.pool())
    .await?;
    Ok(row.map(held_from_row))
}

/// Only the held version of a package (no manifest bytes).
pub async fn held_version(db: &Db, name: &str) -> Result<Option<u64>> {
    let version: Option<i64> = sqlx::query_scalar("SELECT version FROM packages WHERE name = ?")
        .bind(name)
        .fetch_optional(db.pool())
        .await?;
    Ok(version.map(|v| v as u64))
}

pub async fn all_held(db: &Db) -> Result<Vec<Held>> {
    let rows = sqlx::query(
        "SELECT name, version, manifest, signature, refresh_done FROM packages ORDER BY name",
    )
    .fetch_all(db.pool())
    .await?;
    Ok(rows.into_iter().map(held_from_row).collect())
}

fn held_from_row(row: sqlx::sqlite::SqliteRow) -> Held {
    Held {
        name: row.get(0),
        version: row.get::<i64, _>(1) as u64,
        manifest: row.get(2),
        signature: row.get(3),
        refresh_done: row.get::<i64, _>(4) as u64,
    }
}

pub async fn store_held(tx: &mut WriteTx<'_>, held: &Held, now_ms: i64) -> Result<()> {
    sqlx::query(
        "INSERT INTO packages (name, version, manifest, signature, refresh_done, installed_at_ms)
         VALUES (?, ?, ?, ?, ?, ?)
         ON CONFLICT (name) DO UPDATE SET version = excluded.version, manifest = excluded.manifest,
           signature = excluded.signature, refresh_done = excluded.refresh_done,
           installed_at_ms = excluded.installed_at_ms",
    )
    .bind(&held.name)
    .bind(held.version as i64)
    .bind(&held.manifest)
    .bind(&held.signature)
    .bind(held.refresh_done as i64)
    .bind(now_ms)
    .execute(&mut *tx.tx)
    .await?;
    Ok(())
}

/// Adds to named counters in one transaction.
pub async fn add_counters(db: &Db, deltas: &[(&str, u64)]) -> Result<()> {
    let mut tx = db.write().await?;
    for (name, delta) in deltas {
        sqlx::query(
            "INSERT INTO counters (name, value) VALUES (?, ?)
             ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
        )
        .bind(name)
        .bind(*delta as i64)
        .execute(&mut *tx.tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

pub async fn counter(db: &Db, name: &str) -> Result<u64> {
    let value: Option<i64> = sqlx::query_scalar("SELECT value FROM counters WHERE name = ?")
        .bind(name)
        .fetch_optional(db.pool())
        .await?;
    Ok(value.unwrap_or(0) as u64)
}
