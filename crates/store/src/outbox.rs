//! The durable outbox: status messages wait here, numbered, until the
//! receiver acknowledged storing them.
//!
//! A message is pushed in the same transaction as the state change it
//! reports, gets the next sequence number of its source (numbers are never
//! reused: `AUTOINCREMENT`), and is deleted only once the receiver answered
//! that it stored it: [`Outbox::ack_batch`] drops only messages of the batch
//! that was sent, up to the number acknowledged, so an answer naming a
//! larger number (a receiver that holds a forged or older message with a
//! higher number, or one that lies) never drops a message it was not sent.
//! A process killed at any moment therefore loses no message and, since the
//! receiver ignores numbers it already stored, duplicates none.
//!
//! Numbers only go up. When the receiver already holds a number with other
//! content (this database was restored from a backup and numbers its new
//! messages again from where the backup was), [`Outbox::renumber`] moves
//! the waiting messages past the receiver's highest number, in order.

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

    /// Drops the messages of `batch` (read by [`Outbox::pending`] and sent)
    /// numbered up to and including `acked`: the receiver stored them.
    /// Messages not in the batch are never dropped, whatever `acked` says
    /// (a message queued after the batch was read has a higher number than
    /// the batch's last; [`Outbox::pending`] returns every message between
    /// the batch's first and last). Returns how many were dropped.
    pub async fn ack_batch(&self, batch: &[OutboxEntry], acked: u64) -> Result<u64> {
        let (Some(first), Some(last)) = (batch.first(), batch.last()) else {
            return Ok(0);
        };
        let upto = acked.min(last.seq);
        if upto < first.seq {
            return Ok(0);
        }
        let mut tx = self.db.write().await?;
        let dropped = sqlx::query("DELETE FROM outbox WHERE seq >= ? AND seq <= ?")
            .bind(first.seq as i64)
            .bind(upto as i64)
            .execute(&mut *tx.tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(dropped)
    }

    /// Renumbers every waiting message numbered `from` or more so that they
    /// start at `next`, in the same order, and makes every message pushed
    /// later get a number after them. Numbers only go up: nothing happens
    /// when `next` is not above `from`.
    pub async fn renumber(&self, from: u64, next: u64) -> Result<()> {
        if next <= from {
            return Ok(());
        }
        let shift = next - from;
        let mut tx = self.db.write().await?;
        let top: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM outbox")
            .fetch_one(&mut *tx.tx)
            .await?;
        let top = top.unwrap_or(0) as u64;
        if top
            .checked_add(shift)
            .is_none_or(|moved| moved > i64::MAX as u64)
        {
            return Err(crate::Error::SeqExhausted { from, next });
        }
        // Through negative numbers, so that no moved row meets one not
        // moved yet under the primary key.
        sqlx::query("UPDATE outbox SET seq = -seq WHERE seq >= ?")
            .bind(from as i64)
            .execute(&mut *tx.tx)
            .await?;
        sqlx::query("UPDATE outbox SET seq = ? - seq WHERE seq < 0")
            .bind(shift as i64)
            .execute(&mut *tx.tx)
            .await?;
        // AUTOINCREMENT hands out numbers above the largest ever recorded
        // here; record the moved ones.
        sqlx::query(
            "UPDATE sqlite_sequence SET seq = MAX(seq, (SELECT COALESCE(MAX(seq), 0) FROM outbox))
             WHERE name = 'outbox'",
        )
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
        let batch = outbox.pending(10).await.unwrap();
        outbox.ack_batch(&batch, 2).await.unwrap();
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

    async fn outbox_with(count: u64) -> (tempfile::TempDir, Outbox) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("o.db"), true, &[OUTBOX_SCHEMA])
            .await
            .unwrap();
        let outbox = Outbox::new(db);
        for n in 1..=count {
            outbox.push(n as i64, &format!("m{n}")).await.unwrap();
        }
        (dir, outbox)
    }

    fn seqs(entries: &[OutboxEntry]) -> Vec<u64> {
        entries.iter().map(|entry| entry.seq).collect()
    }

    /// The bug of issue 10: an acknowledgement naming a number beyond the
    /// batch dropped messages queued after the batch was sent.
    #[tokio::test]
    async fn status_ack_never_covers_more_than_the_batch() {
        let (_dir, outbox) = outbox_with(3).await;
        let batch = outbox.pending(10).await.unwrap();
        // Queued while the batch was on its way.
        outbox.push(4, "m4").await.unwrap();
        outbox.push(5, "m5").await.unwrap();
        // The receiver answers with a number far beyond the batch.
        assert_eq!(outbox.ack_batch(&batch, 500).await.unwrap(), 3);
        assert_eq!(seqs(&outbox.pending(10).await.unwrap()), vec![4, 5]);
        // An answer below the batch drops nothing; a partial one drops the
        // batch's messages up to it.
        let batch = outbox.pending(10).await.unwrap();
        assert_eq!(outbox.ack_batch(&batch, 2).await.unwrap(), 0);
        assert_eq!(outbox.ack_batch(&batch, 4).await.unwrap(), 1);
        assert_eq!(seqs(&outbox.pending(10).await.unwrap()), vec![5]);
        // A number beyond what SQLite stores drops no more than the batch.
        let batch = outbox.pending(10).await.unwrap();
        outbox.push(6, "m6").await.unwrap();
        assert_eq!(outbox.ack_batch(&batch, u64::MAX).await.unwrap(), 1);
        assert_eq!(seqs(&outbox.pending(10).await.unwrap()), vec![6]);
    }

    #[tokio::test]
    async fn renumbering_keeps_order_and_numbers_later_messages_after() {
        let (_dir, outbox) = outbox_with(5).await;
        let batch = outbox.pending(2).await.unwrap();
        outbox.ack_batch(&batch, 2).await.unwrap();
        // The receiver holds 3 with other content and numbers up to 100.
        outbox.renumber(3, 101).await.unwrap();
        let pending = outbox.pending(10).await.unwrap();
        assert_eq!(seqs(&pending), vec![101, 102, 103]);
        assert_eq!(
            pending.iter().map(|e| e.body.as_str()).collect::<Vec<_>>(),
            vec!["m3", "m4", "m5"]
        );
        assert_eq!(outbox.push(6, "m6").await.unwrap(), 104);
        // Numbers never go down.
        outbox.renumber(101, 50).await.unwrap();
        assert_eq!(
            seqs(&outbox.pending(10).await.unwrap()),
            vec![101, 102, 103, 104]
        );
        // Nor past the largest.
        assert!(outbox.renumber(101, i64::MAX as u64).await.is_err());
        assert_eq!(
            seqs(&outbox.pending(10).await.unwrap()),
            vec![101, 102, 103, 104]
        );
    }
}
