//! The local ingest's record of the files it read (its quick check).

use crate::error::Result;
use cascade_content::FileStamp;
use cascade_store::WriteTx;
use sqlx::{Row, Sqlite};
use std::collections::HashMap;

/// What the previous local ingest of a package read.
#[derive(Clone, Debug)]
pub struct ScanRecord {
    /// The version it made (or found unchanged).
    pub version: i64,
    /// The directory it read, as resolved.
    pub root: String,
    /// When its scan started (nanoseconds since the Unix epoch).
    pub started_at_ns: i64,
    /// Every file it read or took unchanged, by relative path.
    pub files: HashMap<String, FileStamp>,
}

/// The record of the package's previous local ingest, if any.
pub async fn scan_record<'e, E>(executor: E, package_id: i64) -> Result<Option<ScanRecord>>
where
    E: sqlx::Executor<'e, Database = Sqlite> + Copy,
{
    let Some(row) = sqlx::query(
        "SELECT version, root, started_at_ns FROM local_ingest_scans WHERE package_id = ?",
    )
    .bind(package_id)
    .fetch_optional(executor)
    .await?
    else {
        return Ok(None);
    };
    let files = sqlx::query(
        "SELECT path, size, mtime_ns, ctime_ns, ino, dev FROM local_ingest_files WHERE package_id = ?",
    )
    .bind(package_id)
    .fetch_all(executor)
    .await?
    .into_iter()
    .map(|file| {
        let stamp = FileStamp {
            size: file.get::<i64, _>(1) as u64,
            mtime_ns: file.get(2),
            ctime_ns: file.get(3),
            ino: file.get::<i64, _>(4) as u64,
            dev: file.get::<i64, _>(5) as u64,
        };
        (file.get(0), stamp)
    })
    .collect();
    Ok(Some(ScanRecord {
        version: row.get(0),
        root: row.get(1),
        started_at_ns: row.get(2),
        files,
    }))
}

/// Replaces the package's record with what an ingest just read.
pub async fn replace_scan_record(
    tx: &mut WriteTx<'_>,
    package_id: i64,
    record: &ScanRecord,
) -> Result<()> {
    sqlx::query("DELETE FROM local_ingest_files WHERE package_id = ?")
        .bind(package_id)
        .execute(&mut *tx.tx)
        .await?;
    sqlx::query(
        "INSERT INTO local_ingest_scans (package_id, version, root, started_at_ns) VALUES (?, ?, ?, ?)
         ON CONFLICT (package_id) DO UPDATE
         SET version = excluded.version, root = excluded.root, started_at_ns = excluded.started_at_ns",
    )
    .bind(package_id)
    .bind(record.version)
    .bind(&record.root)
    .bind(record.started_at_ns)
    .execute(&mut *tx.tx)
    .await?;
    for (path, stamp) in &record.files {
        sqlx::query(
            "INSERT INTO local_ingest_files (package_id, path, size, mtime_ns, ctime_ns, ino, dev)
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(package_id)
        .bind(path)
        .bind(stamp.size as i64)
        .bind(stamp.mtime_ns)
        .bind(stamp.ctime_ns)
        .bind(stamp.ino as i64)
        .bind(stamp.dev as i64)
        .execute(&mut *tx.tx)
        .await?;
    }
    Ok(())
}
