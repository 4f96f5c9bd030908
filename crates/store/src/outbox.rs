//! The durable outbox: status messages wait here, numbered, until the
//! receiver acknowledged storing them.
//!
//! A message is pushed in the same transaction as the state change it
//! reports, gets the next sequence number of its source (numbers are never
//! reused: `AUTOINCREMENT`), and is deleted only once the receiver answered
//! that it stored every message up to that number. A process killed at any
//! moment therefore loses no message and, since the receiver ignores numbers
//! it already stored, duplicates none.

use crate::{Db, Result, WriteTx};
use sqlx::Row;

/// The outbox table; include it in the migrations of any database that
/// sends status messages.
pub const OUTBOX_SCHEMA: &str = "
CREATE TABLE outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms INTEGER NOT NULL,
    body TEXT NOT NULL
);";

/// One waiting message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxEntry {
    /// Sequence number of the source.
    pub seq: u64,
    /// When it was recorded.
    pub at_ms: i64,
    /// The message body (JSON, opaque to this layer).
    pub body: String,
}

/// The outbox of one database.
#[derive(Clone)]
pub struct Outbox {
    db: Db,
}

impl Outbox {
    /// The outbox in `db` (whose migrations include [`OUTBOX_SCHEMA`]).
    pub fn new(db: Db) -> Outbox {
        Outbox { db }
    }

    /// Adds a message inside `tx`; returns its sequence number.
    pub async fn push_in(tx: &mut WriteTx<'_>, at_ms: i64, body: &str) -> Result<u64> {
        let seq: i64 =
            sqlx::query_scalar("INSERT INTO outbox (at_ms, body) VALUES (?, ?) RETURNING seq")
                .bind(at_ms)
                .bind(body)
                .fetch_one(&mut *tx.tx)
                .await?;
        Ok(seq as u64)
    }

    /// Adds a message in a transaction of its own.
    pub async fn push(&self, at_ms: i64, body: &str) -> Result<u64> {
        let mut tx = self.db.write().await?;
        let seq = Self::push_in(&mut tx, at_ms, body).await?;
        tx.commit().await?;
        Ok(seq)
    }

    /// The oldest `limit` waiting messages, in order.
    pub async fn pending(&self, limit: u32) -> Result<Vec<OutboxEntry>> {
        let rows = sqlx::query("SELECT seq, at_ms, body FROM outbox ORDER BY seq LIMIT ?")
            .bind(limit)
            .fetch_all(self.db.pool())
            .await?;
        Ok(rows
            .into_iter()
            .map(|row| OutboxEntry {
                seq: row.get::<i64, _>(0) as u64,
                at_ms: row.get(1),
                body: row.get(2),
            })
            .collect())
    }

    /// Drops every message up to and including `seq`: the receiver stored them.
    pub async fn ack(&self, seq: u64) -> Result<()> {
        let mut tx = self.db.write().await?;
        sqlx::query("DELETE FROM outbox WHERE seq <= ?")
            .bind(seq as i64)
            .execute(&mut *tx.tx)
            .await?;
        tx.commit().await
    }

    /// How many messages wait.
    pub async fn len(&self) -> Result<u64> {
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox")
            .fetch_one(self.db.pool())
            .await?;
        Ok(count as u64)
    }

    /// True when nothing waits.
    pub async fn is_empty(&self) -> Result<bool> {
        Ok(self.len().await? == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sequence_numbers_survive_acks_and_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.db");
        let db = Db::open(&path, true, &[OUTBOX_SCHEMA]).await.unwrap();
        let outbox = Outbox::new(db.clone());
        assert_eq!(outbox.push(1, "a").await.unwrap(), 1);
        assert_eq!(outbox.push(2, "b").await.unwrap(), 2);
        outbox.ack(2).await.unwrap();
        assert!(outbox.is_empty().await.unwrap());
        db.close().await;
        let db = Db::open(&path, false, &[OUTBOX_SCHEMA]).await.unwrap();
        let outbox = Outbox::new(db);
        // Numbers are never reused, even after everything was acknowledged.
        assert_eq!(outbox.push(3, "c").await.unwrap(), 3);
        let pending = outbox.pending(10).await.unwrap();
        assert_eq!(
            pending,
            vec![OutboxEntry {
                seq: 3,
                at_ms: 3,
                body: "c".into()
            }]
        );
    }
}
