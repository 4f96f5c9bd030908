//! The durable queues of the hierarchy: the outbox of instructions each
//! child fetches, and the inbox of instructions received from the parent.

use crate::error::Result;
use cascade_store::WriteTx;
use sqlx::Sqlite;

/// Queues one instruction (`body`, its JSON) for `child`.
pub async fn outbox_insert(
    tx: &mut WriteTx<'_>,
    child: &str,
    kind: &str,
    package: Option<&str>,
    body: &str,
    now_ms: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO site_outbox (child, kind, package, body, created_at_ms) VALUES (?, ?, ?, ?, ?)",
    )
    .bind(child)
    .bind(kind)
    .bind(package)
    .bind(body)
    .bind(now_ms)
    .execute(&mut *tx.tx)
    .await?;
    Ok(())
}

/// Drops `child`'s instructions numbered up to `acked`.
pub async fn outbox_ack(tx: &mut WriteTx<'_>, child: &str, acked: i64) -> Result<()> {
    sqlx::query("DELETE FROM site_outbox WHERE child = ? AND seq <= ?")
        .bind(child)
        .bind(acked)
        .execute(&mut *tx.tx)
        .await?;
    Ok(())
}

/// Drops everything queued for `child`.
pub async fn outbox_clear(tx: &mut WriteTx<'_>, child: &str) -> Result<()> {
    sqlx::query("DELETE FROM site_outbox WHERE child = ?")
        .bind(child)
        .execute(&mut *tx.tx)
        .await?;
    Ok(())
}

/// `child`'s instructions after `after`, in order, at most `limit`:
/// (seq, created at, body).
pub async fn outbox_after<'e, E>(
    executor: E,
    child: &str,
    after: i64,
    limit: i64,
) -> Result<Vec<(i64, i64, String)>>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    Ok(sqlx::query_as(
        "SELECT seq, created_at_ms, body FROM site_outbox WHERE child = ? AND seq > ?
         ORDER BY seq LIMIT ?",
    )
    .bind(child)
    .bind(after)
    .bind(limit)
    .fetch_all(executor)
    .await?)
}

/// Per child with anything queued: (child, count, oldest created at), by
/// child.
pub async fn outbox_waiting<'e, E>(executor: E) -> Result<Vec<(String, i64, i64)>>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    Ok(sqlx::query_as(
        "SELECT child, COUNT(*), MIN(created_at_ms) FROM site_outbox GROUP BY child ORDER BY child",
    )
    .fetch_all(executor)
    .await?)
}

/// Stores an instruction received from the parent (once per number).
pub async fn inbox_insert(
    tx: &mut WriteTx<'_>,
    seq: i64,
    kind: &str,
    package: Option<&str>,
    body: &str,
    now_ms: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT OR IGNORE INTO site_inbox (seq, kind, package, body, received_at_ms)
         VALUES (?, ?, ?, ?, ?)",
    )
    .bind(seq)
    .bind(kind)
    .bind(package)
    .bind(body)
    .bind(now_ms)
    .execute(&mut *tx.tx)
    .await?;
    Ok(())
}

/// The oldest instruction of the inbox: (seq, body).
pub async fn inbox_first<'e, E>(executor: E) -> Result<Option<(i64, String)>>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    Ok(
        sqlx::query_as("SELECT seq, body FROM site_inbox ORDER BY seq LIMIT 1")
            .fetch_optional(executor)
            .await?,
    )
}

/// Removes an instruction from the inbox (applied or refused).
pub async fn inbox_remove(tx: &mut WriteTx<'_>, seq: i64) -> Result<()> {
    sqlx::query("DELETE FROM site_inbox WHERE seq = ?")
        .bind(seq)
        .execute(&mut *tx.tx)
        .await?;
    Ok(())
}

/// Records a failed attempt at applying an instruction.
pub async fn inbox_failed(tx: &mut WriteTx<'_>, seq: i64, error: &str) -> Result<()> {
    sqlx::query("UPDATE site_inbox SET attempts = attempts + 1, last_error = ? WHERE seq = ?")
        .bind(error)
        .bind(seq)
        .execute(&mut *tx.tx)
        .await?;
    Ok(())
}

/// An instruction of the inbox as `site queues` shows it.
pub struct InboxRow {
    pub seq: i64,
    pub body: String,
    pub received_at_ms: i64,
    pub attempts: i64,
    pub last_error: Option<String>,
}

/// The whole inbox, in order.
pub async fn inbox_all<'e, E>(executor: E) -> Result<Vec<InboxRow>>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    let rows: Vec<(i64, String, i64, i64, Option<String>)> = sqlx::query_as(
        "SELECT seq, body, received_at_ms, attempts, last_error FROM site_inbox ORDER BY seq",
    )
    .fetch_all(executor)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(seq, body, received_at_ms, attempts, last_error)| InboxRow {
                seq,
                body,
                received_at_ms,
                attempts,
                last_error,
            },
        )
        .collect())
}
