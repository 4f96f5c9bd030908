//! What the agent keeps on disk (issue 13): a workstation kept a job's
//! materialised directory and every chunk it ever fetched for good (2.1 GiB
//! after one 1 GiB job). Now a job's directory is removed once the job is
//! no longer offered (withdrawn: canceled or expired at the site, or past
//! its expiry by the local clock): while it is offered its command may
//! keep files there, as the quickstart's does. A job's chunks are needed
//! until it is done here or no longer offered; past that the chunk store is
//! trimmed to a budget (`agent init --cache-size`, [`DEFAULT_CACHE_BYTES`]),
//! the chunks stored last kept first, so that the next version of a
//! package still downloads only what changed.
//!
//! **Architecture Invariant:** the cache never removes a chunk an open job
//! needs. A job's chunks are recorded (`job_chunks`) as soon as its signed
//! manifest is verified, before the first chunk is fetched, and stay
//! protected until the job is done here or no longer offered, whatever the
//! budget; [`tidy`] runs in
//! the executor between attempts, never beside a download.

use crate::{Error, Result};
use cascade_content::{ChunkHash, ChunkStore, Manifest};
use cascade_protocol::JobOffer;
use cascade_store::{now_ms, Db};
use std::collections::HashSet;
use std::path::Path;

/// The chunk cache's budget unless `agent init --cache-size` set another.
pub const DEFAULT_CACHE_BYTES: u64 = 1024 * 1024 * 1024;

/// The migration of the table [`protect`] fills.
pub const SCHEMA: &str = "CREATE TABLE job_chunks (
    job INTEGER NOT NULL,
    hash BLOB NOT NULL,
    PRIMARY KEY (job, hash)
) WITHOUT ROWID;";

/// Records the chunks of `job`'s verified manifest as needed until the job
/// is over, and marks those already held as just used (the cache keeps the
/// chunks used last, not only those stored last). Once per job: a retry
/// finds them recorded and marks nothing again (each mark is an entry in
/// the store's index).
pub async fn protect(db: &Db, store: &ChunkStore, job: u64, manifest: &Manifest) -> Result<()> {
    let recorded: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM job_chunks WHERE job = ?)")
            .bind(job as i64)
            .fetch_one(db.pool())
            .await
            .map_err(cascade_store::Error::from)?;
    if recorded {
        return Ok(());
    }
    let held: Vec<ChunkHash> = manifest
        .unique_chunks()
        .iter()
        .map(|chunk| chunk.hash)
        .collect();
    let store = store.clone();
    tokio::task::spawn_blocking(move || store.touch(&held, std::time::SystemTime::now()))
        .await
        .map_err(|err| Error::Config(format!("cache task failed: {err}")))?
        // Absent ones are fetched next; a failure only ages the chunks.
        .unwrap_or_else(|err| tracing::warn!(error = %err, "chunks were not marked as used"));
    let mut tx = db.write().await?;
    for chunk in manifest.unique_chunks() {
        sqlx::query("INSERT OR IGNORE INTO job_chunks (job, hash) VALUES (?, ?)")
            .bind(job as i64)
            .bind(&chunk.hash.0[..])
            .execute(&mut *tx.tx)
            .await
            .map_err(cascade_store::Error::from)?;
    }
    tx.commit().await?;
    Ok(())
}

/// Removes `root` and what it holds without following symbolic links or
/// leaving its file system: a directory that is another mount (one a
/// command left, a bind mount of the host's files) is refused with an
/// error and nothing in it is touched. False when `root` did not exist.
fn remove_tree(root: &Path) -> std::io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    fn below(path: &Path, device: u64) -> std::io::Result<()> {
        let metadata = std::fs::symlink_metadata(path)?;
        if !metadata.is_dir() {
            return std::fs::remove_file(path);
        }
        if metadata.dev() != device {
            return Err(std::io::Error::other(format!(
                "{} is another file system (a mount left behind?); not removed",
                path.display()
            )));
        }
        for entry in std::fs::read_dir(path)? {
            below(&entry?.path(), device)?;
        }
        std::fs::remove_dir(path)
    }
    match std::fs::symlink_metadata(root) {
        Ok(metadata) => below(root, metadata.dev()).map(|()| true),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(err) => Err(err),
    }
}

/// How many jobs are done here, and how many are no longer offered, at
/// `now`: when either changes, there is something to tidy.
pub async fn finished_jobs(db: &Db, now: i64) -> Result<(i64, i64)> {
    Ok(sqlx::query_as(
        "SELECT COALESCE(SUM(state = 'done'), 0),
                COALESCE(SUM(withdrawn_at_ms IS NOT NULL
                             OR json_extract(offer, '$.expires_at_ms') <= ?), 0)
         FROM jobs",
    )
    .bind(now)
    .fetch_one(db.pool())
    .await
    .map_err(cascade_store::Error::from)?)
}

/// What one [`tidy`] removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Tidied {
    /// Job directories removed.
    pub job_dirs: usize,
    /// Chunks removed.
    pub chunks: usize,
    /// Their stored bytes.
    pub bytes: u64,
}

/// A job as the cache sees it.
struct JobHere {
    id: i64,
    /// Its package (empty if its stored offer does not parse).
    package: String,
    /// Neither withdrawn nor past its expiry by the local clock.
    offered: bool,
    /// Done here.
    done: bool,
    /// Its check, or the reboot it waits for, is to come: it keeps its
    /// directory and chunks, offered or not.
    run_open: bool,
}

impl JobHere {
    /// Done here, or no longer offered: its chunks are cache.
    fn over(&self) -> bool {
        !self.run_open && (self.done || !self.offered)
    }
}

/// Every job the agent holds, at `now`.
async fn jobs_here(db: &Db, now: i64) -> Result<Vec<JobHere>> {
    let rows: Vec<(i64, String, String, Option<i64>)> =
        sqlx::query_as("SELECT id, offer, state, withdrawn_at_ms FROM jobs")
            .fetch_all(db.pool())
            .await
            .map_err(cascade_store::Error::from)?;
    Ok(rows
        .into_iter()
        .map(|(id, offer, state, withdrawn)| {
            let offer = serde_json::from_str::<JobOffer>(&offer).ok();
            let expired = offer
                .as_ref()
                .and_then(|offer| offer.expires_at_ms)
                .is_some_and(|at| at <= now);
            JobHere {
                id,
                package: offer.map(|offer| offer.package).unwrap_or_default(),
                offered: withdrawn.is_none() && !expired,
                done: state == "done",
                run_open: state == "rebooting" || state == "checking",
            }
        })
        .collect())
}

/// Stops protecting the chunks of jobs `ids`.
async fn release_chunks(db: &Db, ids: &[i64]) -> Result<()> {
    let mut tx = db.write().await?;
    for id in ids {
        sqlx::query("DELETE FROM job_chunks WHERE job = ?")
            .bind(id)
            .execute(&mut *tx.tx)
            .await
            .map_err(cascade_store::Error::from)?;
    }
    tx.commit().await?;
    Ok(())
}

/// The chunks some open job needs.
async fn needed_chunks(db: &Db) -> Result<HashSet<ChunkHash>> {
    let needed: Vec<Vec<u8>> = sqlx::query_scalar("SELECT DISTINCT hash FROM job_chunks")
        .fetch_all(db.pool())
        .await
        .map_err(cascade_store::Error::from)?;
    Ok(needed
        .into_iter()
        .filter_map(|bytes| <[u8; 32]>::try_from(bytes.as_slice()).ok().map(ChunkHash))
        .collect())
}

/// Removes job `id`'s directory; 1 if there was one. A failure is
/// logged and left for the next tidy.
async fn remove_job_dir(dir: &Path, id: i64) -> Result<usize> {
    let job_dir = dir.join("jobs").join(id.to_string());
    let removed =
        tokio::task::spawn_blocking(move || remove_tree(&job_dir).map_err(|err| (job_dir, err)))
            .await
            .map_err(|err| Error::Config(format!("cleanup task failed: {err}")))?;
    Ok(match removed {
        Ok(removed) => removed as usize,
        Err((job_dir, err)) => {
            tracing::warn!(dir = %job_dir.display(), error = %err, "a job's directory was not removed");
            0
        }
    })
}

/// Removes the directories of jobs no longer offered and the chunks past
/// the budget that no open job needs, oldest first.
pub async fn tidy(db: &Db, dir: &Path, store: &ChunkStore, budget: u64) -> Result<Tidied> {
    let jobs = jobs_here(db, now_ms()).await?;
    let over: Vec<&JobHere> = jobs.iter().filter(|job| job.over()).collect();
    release_chunks(db, &over.iter().map(|job| job.id).collect::<Vec<_>>()).await?;
    let mut tidied = Tidied::default();
    // A job done but still offered keeps its directory: its command may
    // keep files there.
    for job in over.iter().filter(|job| !job.offered) {
        tidied.job_dirs += remove_job_dir(dir, job.id).await?;
    }
    let needed = needed_chunks(db).await?;
    let store = store.clone();
    let (chunks, bytes) = tokio::task::spawn_blocking(move || -> Result<(usize, u64)> {
        let mut cached: Vec<_> = store
            .list()
            .map_err(|err| Error::Config(format!("listing the chunk store: {err}")))?
            .into_iter()
            .filter(|chunk| !needed.contains(&chunk.hash))
            .collect();
        // Newest first: what was stored last is kept.
        cached.sort_by_key(|chunk| std::cmp::Reverse(chunk.written));
        let mut kept = 0u64;
        let mut past_budget = Vec::new();
        for chunk in cached {
            if kept + chunk.stored_bytes <= budget {
                kept += chunk.stored_bytes;
                continue;
            }
            past_budget.push((chunk.hash, chunk.stored_bytes));
        }
        remove_chunks(&store, past_budget)
    })
    .await
    .map_err(|err| Error::Config(format!("cleanup task failed: {err}")))??;
    tidied.chunks = chunks;
    tidied.bytes = bytes;
    Ok(tidied)
}

/// After a removal job (`removal`) of `package` succeeded (and its report
/// forgot the package's runs, `history.rs`): removes the directories of
/// every job of the package that is over here (done, or no longer offered,
/// and not waiting for its check or a reboot; the removal's own included)
/// and the chunks the removal's version was made of that no open job
/// needs. Chunks of older versions held in the cache age out under its
/// budget; a stop in the middle leaves the rest to [`tidy`].
pub async fn forget_package(
    db: &Db,
    dir: &Path,
    store: &ChunkStore,
    package: &str,
    removal: u64,
) -> Result<Tidied> {
    let over: Vec<i64> = jobs_here(db, now_ms())
        .await?
        .into_iter()
        .filter(|job| job.package == package && job.over())
        .map(|job| job.id)
        .collect();
    let chunks: Vec<Vec<u8>> = sqlx::query_scalar("SELECT hash FROM job_chunks WHERE job = ?")
        .bind(removal as i64)
        .fetch_all(db.pool())
        .await
        .map_err(cascade_store::Error::from)?;
    release_chunks(db, &over).await?;
    let needed = needed_chunks(db).await?;
    let mut tidied = Tidied::default();
    for id in over {
        tidied.job_dirs += remove_job_dir(dir, id).await?;
    }
    let gone: Vec<ChunkHash> = chunks
        .into_iter()
        .filter_map(|bytes| <[u8; 32]>::try_from(bytes.as_slice()).ok().map(ChunkHash))
        .filter(|hash| !needed.contains(hash))
        .collect();
    let store = store.clone();
    let (removed, bytes) = tokio::task::spawn_blocking(move || -> Result<(usize, u64)> {
        let sizes: std::collections::HashMap<ChunkHash, u64> = store
            .list()
            .map_err(|err| Error::Config(format!("listing the chunk store: {err}")))?
            .into_iter()
            .map(|chunk| (chunk.hash, chunk.stored_bytes))
            .collect();
        let gone = gone
            .into_iter()
            .filter_map(|hash| sizes.get(&hash).map(|size| (hash, *size)));
        remove_chunks(&store, gone)
    })
    .await
    .map_err(|err| Error::Config(format!("cleanup task failed: {err}")))??;
    tidied.chunks = removed;
    tidied.bytes = bytes;
    Ok(tidied)
}

/// Removes `chunks` (hash, stored bytes) from the store, then compacts it
/// so that packs mostly removed give their disk back; returns the count
/// and bytes removed.
fn remove_chunks(
    store: &ChunkStore,
    chunks: impl IntoIterator<Item = (ChunkHash, u64)>,
) -> Result<(usize, u64)> {
    let (mut removed, mut bytes) = (0, 0);
    for (hash, size) in chunks {
        store
            .remove(&hash)
            .map_err(|err| Error::Config(format!("removing a cached chunk: {err}")))?;
        removed += 1;
        bytes += size;
    }
    if removed > 0 {
        store
            .compact()
            .map_err(|err| Error::Config(format!("compacting the chunk store: {err}")))?;
    }
    Ok((removed, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::RngCore;

    fn put(store: &ChunkStore, seed: u8, age_s: u64) -> ChunkHash {
        let mut data = vec![0u8; 10_000];
        rand::thread_rng().fill_bytes(&mut data);
        data[0] = seed;
        let hash = ChunkHash::of(&data);
        store.put(&hash, &data).unwrap();
        let written = std::time::SystemTime::now() - std::time::Duration::from_secs(age_s);
        store.touch(&[hash], written).unwrap();
        hash
    }

    /// A job's chunks are marked used once, not at every retry (each mark
    /// is an index entry: a job retried for days grew the index).
    #[tokio::test]
    async fn protect_marks_a_jobs_chunks_once() {
        use cascade_content::{ChunkRef, Entry, EntryKind, Manifest, MANIFEST_FORMAT};
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("agent.db"), true, crate::MIGRATIONS)
            .await
            .unwrap();
        let store = ChunkStore::open(&dir.path().join("chunks")).unwrap();
        let old = [put(&store, 1, 500), put(&store, 2, 500)];
        let manifest = Manifest {
            format: MANIFEST_FORMAT,
            package: "p".into(),
            version: 1,
            origin_site: "CEN".into(),
            created_at_ms: 0,
            entries: vec![Entry {
                path: "f".into(),
                kind: EntryKind::File {
                    mode: 0o644,
                    size: 20_000,
                    chunks: old.map(|hash| ChunkRef { hash, size: 10_000 }).to_vec(),
                },
            }],
        };
        let written = |store: &ChunkStore| -> Vec<std::time::SystemTime> {
            let mut times: Vec<_> = store.list().unwrap().iter().map(|c| c.written).collect();
            times.sort();
            times
        };
        let before = written(&store);
        protect(&db, &store, 7, &manifest).await.unwrap();
        let first = written(&store);
        assert!(first
            .iter()
            .zip(&before)
            .all(|(after, before)| after > before));
        // Aged again by hand: a second protect of the same job leaves them.
        store
            .touch(
                &old,
                std::time::SystemTime::now() - std::time::Duration::from_secs(900),
            )
            .unwrap();
        let aged = written(&store);
        protect(&db, &store, 7, &manifest).await.unwrap();
        assert_eq!(written(&store), aged);
        db.close().await;
    }

    /// Issue 13: a workstation kept 2.1 GiB after one 1 GiB job. Over
    /// budget, the oldest chunks no open job needs go, and the directories
    /// of jobs no longer offered; an open job's chunks stay whatever the
    /// budget, and a done job still offered keeps its directory.
    #[tokio::test]
    async fn tidy_keeps_what_open_jobs_need_and_the_newest_within_budget() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("agent.db"), true, crate::MIGRATIONS)
            .await
            .unwrap();
        let store = ChunkStore::open(&dir.path().join("chunks")).unwrap();
        let needed = [put(&store, 1, 500), put(&store, 2, 400)];
        let free: Vec<ChunkHash> = (0..4)
            .map(|i| put(&store, 10 + i, 300 - 60 * i as u64))
            .collect();
        // Job 1 is open; job 2 is done; job 3 was withdrawn.
        for (id, state, withdrawn) in [
            (1, "offered", None),
            (2, "done", None),
            (3, "offered", Some(5)),
        ] {
            sqlx::query(
                "INSERT INTO jobs (id, offer, first_seen_ms, withdrawn_at_ms, state) VALUES (?, '{}', 0, ?, ?)",
            )
            .bind(id)
            .bind(withdrawn)
            .bind(state)
            .execute(db.pool())
            .await
            .unwrap();
            std::fs::create_dir_all(dir.path().join("jobs").join(id.to_string())).unwrap();
        }
        for (job, hash) in [(1, needed[0]), (1, needed[1]), (2, free[1]), (3, free[0])] {
            sqlx::query("INSERT INTO job_chunks (job, hash) VALUES (?, ?)")
                .bind(job)
                .bind(&hash.0[..])
                .execute(db.pool())
                .await
                .unwrap();
        }
        // A link in a job's directory to a file outside: the link goes,
        // never the file.
        let outside = dir.path().join("outside.txt");
        std::fs::write(&outside, b"keep").unwrap();
        std::os::unix::fs::symlink(&outside, dir.path().join("jobs/3/link")).unwrap();
        std::os::unix::fs::symlink(dir.path(), dir.path().join("jobs/3/up")).unwrap();
        // Room for two of the free chunks (10,001 bytes stored each).
        let tidied = tidy(&db, dir.path(), &store, 25_000).await.unwrap();
        assert_eq!(
            tidied,
            Tidied {
                job_dirs: 1,
                chunks: 2,
                bytes: 20_002
            }
        );
        assert!(
            needed.iter().all(|hash| store.contains(hash)),
            "an open job's chunks went"
        );
        // Newest kept: free[3] and free[2]; the oldest two removed.
        assert!(!store.contains(&free[0]) && !store.contains(&free[1]));
        assert!(store.contains(&free[2]) && store.contains(&free[3]));
        assert!(dir.path().join("jobs/1").is_dir() && dir.path().join("jobs/2").is_dir());
        assert!(!dir.path().join("jobs/3").exists());
        assert_eq!(std::fs::read(&outside).unwrap(), b"keep");
        // Nothing more to do: idempotent.
        assert_eq!(
            tidy(&db, dir.path(), &store, 25_000).await.unwrap(),
            Tidied::default()
        );
        // With no budget, only what job 1 needs stays.
        tidy(&db, dir.path(), &store, 0).await.unwrap();
        let left: HashSet<ChunkHash> = store.list().unwrap().iter().map(|c| c.hash).collect();
        assert_eq!(left, needed.into_iter().collect());
        db.close().await;
    }
}
