//! Status messages: stored once per (source, seq), never changed.

use crate::error::{Error, Result};
use cascade_domain::hierarchy::StatusSource;
use cascade_protocol::StatusMessage;
use cascade_store::WriteTx;
use sqlx::{Row, Sqlite, Transaction};
use std::collections::HashMap;

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
            return Err(Error::json("encoding a status message")(err));
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

/// The DPs of this site's subtree with a distribution message about
/// `package`, as (site, DP): those a package's distribution views are
/// folded for, counted without folding them.
pub async fn dps_with_distribution<'e, E>(
    executor: E,
    package: &str,
) -> Result<Vec<(String, String)>>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    Ok(sqlx::query_as(
        "SELECT DISTINCT site, dp FROM status_messages
         WHERE package = ? AND site IS NOT NULL AND dp IS NOT NULL
           AND (kind = 'distribution_targeted' OR substr(kind, 1, 3) = 'dp_')",
    )
    .bind(package)
    .fetch_all(executor)
    .await?)
}

/// Sources whose numbers one statement records (two parameters each, well
/// under SQLite's limit).
const SOURCES_PER_STATEMENT: usize = 5_000;

/// The highest number stored per source, for those of `sources` that have
/// any.
pub async fn highest_seqs(
    tx: &mut WriteTx<'_>,
    sources: &[String],
) -> Result<HashMap<String, i64>> {
    let mut highest = HashMap::with_capacity(sources.len());
    for part in sources.chunks(SOURCES_PER_STATEMENT) {
        let mut select = sqlx::QueryBuilder::<Sqlite>::new(
            "SELECT source, last_seq FROM status_sources WHERE source IN (",
        );
        let mut list = select.separated(", ");
        for source in part {
            list.push_bind(source.clone());
        }
        select.push(")");
        highest.extend(
            select
                .build_query_as::<(String, i64)>()
                .fetch_all(&mut *tx.tx)
                .await?,
        );
    }
    Ok(highest)
}

/// Records the highest number per source (never moving one back).
pub async fn record_highest_seqs(tx: &mut WriteTx<'_>, moved: &[(&String, &i64)]) -> Result<()> {
    for part in moved.chunks(SOURCES_PER_STATEMENT) {
        let mut upsert =
            sqlx::QueryBuilder::<Sqlite>::new("INSERT INTO status_sources (source, last_seq) ");
        upsert.push_values(part, |mut row, (source, seq)| {
            row.push_bind((*source).clone()).push_bind(**seq);
        });
        upsert.push(
            " ON CONFLICT (source) DO UPDATE SET last_seq = MAX(last_seq, excluded.last_seq)",
        );
        upsert.build().execute(&mut *tx.tx).await?;
    }
    Ok(())
}

/// The highest number stored for one source (0 for none).
pub async fn high_water<'e, E>(executor: E, source: &str) -> Result<i64>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    let high: Option<i64> =
        sqlx::query_scalar("SELECT last_seq FROM status_sources WHERE source = ?")
            .bind(source)
            .fetch_optional(executor)
            .await?;
    Ok(high.unwrap_or(0))
}

/// The stored bodies of one source's messages numbered `first..=last`.
pub async fn message_bodies<'e, E>(
    executor: E,
    source: &str,
    first: u64,
    last: u64,
) -> Result<Vec<(i64, String)>>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    Ok(sqlx::query_as(
        "SELECT seq, body FROM status_messages WHERE source = ? AND seq >= ? AND seq <= ?",
    )
    .bind(source)
    .bind(first as i64)
    .bind(last as i64)
    .fetch_all(executor)
    .await?)
}

/// Stored messages after row `cursor`, in the order they were stored, at
/// most `limit`: (row id, source, body).
pub async fn messages_after<'e, E>(
    executor: E,
    cursor: i64,
    limit: i64,
) -> Result<Vec<(i64, String, String)>>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    Ok(sqlx::query_as(
        "SELECT id, source, body FROM status_messages WHERE id > ? ORDER BY id LIMIT ?",
    )
    .bind(cursor)
    .bind(limit)
    .fetch_all(executor)
    .await?)
}

/// How many messages are stored after row `cursor`, and when the oldest of
/// them was received.
pub async fn messages_pending_after<'e, E>(executor: E, cursor: i64) -> Result<(i64, Option<i64>)>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    Ok(
        sqlx::query_as("SELECT COUNT(*), MIN(received_at_ms) FROM status_messages WHERE id > ?")
            .bind(cursor)
            .fetch_one(executor)
            .await?,
    )
}

/// Moves `source`'s messages numbered `from` and above `delta` numbers up,
/// body and counter with them; through negative numbers, so that no row
/// meets another's number on the way (source and number are unique).
pub async fn renumber_source(
    tx: &mut WriteTx<'_>,
    source: &str,
    from: u64,
    delta: i64,
) -> Result<()> {
    sqlx::query(
        "UPDATE status_messages SET seq = -(seq + ?1), body = json_set(body, '$.seq', seq + ?1)
         WHERE source = ?2 AND seq >= ?3",
    )
    .bind(delta)
    .bind(source)
    .bind(from as i64)
    .execute(&mut *tx.tx)
    .await?;
    sqlx::query("UPDATE status_messages SET seq = -seq WHERE source = ? AND seq < 0")
        .bind(source)
        .execute(&mut *tx.tx)
        .await?;
    sqlx::query(
        "UPDATE status_sources SET last_seq = (SELECT MAX(seq) FROM status_messages WHERE source = ?1)
         WHERE source = ?1",
    )
    .bind(source)
    .execute(&mut *tx.tx)
    .await?;
    Ok(())
}

/// The stored body of one message.
pub async fn message_body<'e, E>(executor: E, source: &str, seq: u64) -> Result<Option<String>>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    Ok(
        sqlx::query_scalar("SELECT body FROM status_messages WHERE source = ? AND seq = ?")
            .bind(source)
            .bind(seq as i64)
            .fetch_optional(executor)
            .await?,
    )
}

/// The highest number stored for `source` (0 for none).
pub async fn max_stored_seq<'e, E>(executor: E, source: &str) -> Result<i64>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    Ok(
        sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM status_messages WHERE source = ?")
            .bind(source)
            .fetch_one(executor)
            .await?,
    )
}
