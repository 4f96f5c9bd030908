//! Credentials, stored as BLAKE3 hashes; the tokens themselves never are.

use crate::error::Result;
use cascade_store::WriteTx;
use sqlx::{Row, Sqlite};

/// Stores a credential's hash for `principal` in `role`, inside `tx`.
pub async fn insert_credential(
    tx: &mut WriteTx<'_>,
    token_hash: &[u8],
    role: &str,
    principal: &str,
    now_ms: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO credentials (token_hash, role, principal, created_at_ms) VALUES (?, ?, ?, ?)",
    )
    .bind(token_hash)
    .bind(role)
    .bind(principal)
    .bind(now_ms)
    .execute(&mut *tx.tx)
    .await?;
    Ok(())
}

/// The role and principal name of a credential, by its hash.
pub async fn credential<'e, E>(executor: E, token_hash: &[u8]) -> Result<Option<(String, String)>>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    let row = sqlx::query("SELECT role, principal FROM credentials WHERE token_hash = ?")
        .bind(token_hash)
        .fetch_optional(executor)
        .await?;
    Ok(row.map(|row| (row.get(0), row.get(1))))
}

/// Whether any credential of `role` exists.
pub async fn role_exists<'e, E>(executor: E, role: &str) -> Result<bool>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM credentials WHERE role = ? LIMIT 1")
        .bind(role)
        .fetch_optional(executor)
        .await?;
    Ok(found.is_some())
}

/// Revokes every credential of `role` held by `principal` but the one
/// whose hash is `keep`.
pub async fn delete_credentials_but(
    tx: &mut WriteTx<'_>,
    role: &str,
    principal: &str,
    keep: &[u8],
) -> Result<()> {
    sqlx::query("DELETE FROM credentials WHERE role = ? AND principal = ? AND token_hash != ?")
        .bind(role)
        .bind(principal)
        .bind(keep)
        .execute(&mut *tx.tx)
        .await?;
    Ok(())
}

/// Revokes every credential of `role` held by `principal`.
pub async fn delete_credentials(tx: &mut WriteTx<'_>, role: &str, principal: &str) -> Result<()> {
    sqlx::query("DELETE FROM credentials WHERE role = ? AND principal = ?")
        .bind(role)
        .bind(principal)
        .execute(&mut *tx.tx)
        .await?;
    Ok(())
}

/// A secret of the site by name.
pub async fn secret<'e, E>(executor: E, name: &str) -> Result<Option<String>>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    Ok(
        sqlx::query_scalar("SELECT value FROM secrets WHERE name = ?")
            .bind(name)
            .fetch_optional(executor)
            .await?,
    )
}

/// Stores a secret of the site, unless one of that name is stored.
pub async fn insert_secret(tx: &mut WriteTx<'_>, name: &str, value: &str) -> Result<()> {
    sqlx::query("INSERT OR IGNORE INTO secrets (name, value) VALUES (?, ?)")
        .bind(name)
        .bind(value)
        .execute(&mut *tx.tx)
        .await?;
    Ok(())
}
