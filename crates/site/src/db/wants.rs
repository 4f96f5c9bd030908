//! What content this site needs: for its DPs, its jobs, its children.

use crate::error::Result;
use cascade_protocol::WantedVersion;
use cascade_store::WriteTx;
use sqlx::Sqlite;

/// Replaces what `child` said it needs.
pub async fn replace_child_wants(
    tx: &mut WriteTx<'_>,
    child: &str,
    wants: &[WantedVersion],
) -> Result<()> {
    sqlx::query("DELETE FROM child_wants WHERE child = ?")
        .bind(child)
        .execute(&mut *tx.tx)
        .await?;
    for want in wants {
        sqlx::query("INSERT OR IGNORE INTO child_wants (child, package, version) VALUES (?, ?, ?)")
            .bind(child)
            .bind(&want.package)
            .bind(want.version as i64)
            .execute(&mut *tx.tx)
            .await?;
    }
    Ok(())
}

/// Every version someone here needs, with who: the newest version of each
/// package queued for a DP (`dps`), the version of each open job that
/// targets this site's workstations (`job N`), and what children said they
/// need (`site S`). (package, version, who).
pub async fn wanted_versions(
    pool: &sqlx::SqlitePool,
    now: i64,
) -> Result<Vec<(String, i64, String)>> {
    let mut conn = pool.acquire().await?;
    // Three statements, in this order: who needs a version is listed so.
    let mut wanted: Vec<(String, i64, String)> = sqlx::query_as(
        "SELECT p.name, MAX(v.version), 'dps' FROM packages p
         JOIN package_versions v ON v.package_id = p.id
         WHERE p.id IN (SELECT package_id FROM distributions) GROUP BY p.id",
    )
    .fetch_all(&mut *conn)
    .await?;
    wanted.extend(
        sqlx::query_as::<_, (String, i64, String)>(
            "SELECT p.name, j.version, 'job ' || j.id FROM jobs j JOIN packages p ON p.id = j.package_id
             WHERE j.local_targets > 0 AND j.canceled_at_ms IS NULL
               AND (j.expires_at_ms IS NULL OR j.expires_at_ms > ?)",
        )
        .bind(now)
        .fetch_all(&mut *conn)
        .await?,
    );
    wanted.extend(
        sqlx::query_as::<_, (String, i64, String)>(
            "SELECT package, version, 'site ' || child FROM child_wants",
        )
        .fetch_all(&mut *conn)
        .await?,
    );
    Ok(wanted)
}

/// The versions whose manifest is here and content is not (yet).
pub async fn incomplete_versions<'e, E>(executor: E) -> Result<Vec<(String, i64)>>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    Ok(sqlx::query_as(
        "SELECT p.name, v.version FROM package_versions v JOIN packages p ON p.id = v.package_id
         WHERE v.complete = 0",
    )
    .fetch_all(executor)
    .await?)
}
