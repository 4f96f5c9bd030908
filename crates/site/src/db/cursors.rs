//! Durable positions of the hierarchy's queues.

use crate::error::Result;
use sqlx::{Sqlite, Transaction};

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
