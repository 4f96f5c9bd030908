//! Storage: the embedded database every Cascade process keeps (site server,
//! DP, and later agents), its migrations, one-writer-at-a-time transactions,
//! and the durable outbox through which status messages leave a process.
//!
//! SQLite through sqlx, in WAL mode with `synchronous = FULL`: a transaction
//! that returned is on disk. sqlx also speaks PostgreSQL, which is where a
//! large site's database will go.

mod outbox;

pub use outbox::{Outbox, OutboxEntry, OUTBOX_SCHEMA};
pub use sqlx;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool, Transaction};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Writes `bytes` to `path` so that a crash leaves either the old file or
/// the new one, never a torn one: a temp file beside it, fsync, rename, fsync
/// of the directory. `mode` is the new file's permission bits.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let dir = path
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut temp = tempfile::NamedTempFile::new_in(dir)?;
    temp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))?;
    temp.write_all(bytes)?;
    temp.as_file().sync_all()?;
    temp.persist(path).map_err(|err| err.error)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Milliseconds since the Unix epoch, now: the timestamps every Cascade
/// process stores and sends.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A data directory being created: everything is written into a hidden
/// sibling first and renamed into place by [`NewDir::commit`], so a crash or
/// error half-way leaves no directory that claims to be initialised.
pub struct NewDir {
    temp: tempfile::TempDir,
    target: PathBuf,
}

impl NewDir {
    /// Prepares to create `target`, which must not exist or be empty.
    pub fn prepare(target: &Path) -> std::io::Result<NewDir> {
        if let Ok(mut entries) = std::fs::read_dir(target) {
            if entries.next().is_some() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    format!(
                        "{} already exists and is not empty; refusing to overwrite it",
                        target.display()
                    ),
                ));
            }
        }
        let parent = target
            .parent()
            .filter(|dir| !dir.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent)?;
        let temp = tempfile::Builder::new()
            .prefix(".cascade-init-")
            .tempdir_in(parent)?;
        Ok(NewDir {
            temp,
            target: target.to_owned(),
        })
    }

    /// Where to write the directory's contents until commit.
    pub fn path(&self) -> &Path {
        self.temp.path()
    }

    /// Moves the finished directory into place.
    pub fn commit(self) -> std::io::Result<()> {
        if self.target.exists() {
            // Only an empty directory gets here (checked in `prepare`);
            // rename cannot replace it on every platform, so remove it.
            std::fs::remove_dir(&self.target)?;
        }
        let temp = self.temp.keep();
        std::fs::rename(&temp, &self.target)?;
        if let Some(parent) = self
            .target
            .parent()
            .filter(|dir| !dir.as_os_str().is_empty())
        {
            std::fs::File::open(parent)?.sync_all()?;
        }
        Ok(())
    }
}

/// What can go wrong with the database.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database could not be opened.
    #[error("opening database {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: sqlx::Error,
    },
    /// The database was written by a newer Cascade.
    #[error("database {path} has schema version {found}, newer than this cascade knows ({known}); upgrade cascade")]
    TooNew {
        path: PathBuf,
        found: i64,
        known: usize,
    },
    /// A migration failed.
    #[error("migrating database {path} to schema version {version}")]
    Migrate {
        path: PathBuf,
        version: usize,
        #[source]
        source: sqlx::Error,
    },
    /// Renumbering the outbox would pass the largest sequence number.
    #[error("renumbering the outbox from {from} to start at {next} would pass the largest sequence number, 2^63 - 1")]
    SeqExhausted { from: u64, next: u64 },
    /// A query failed.
    #[error(transparent)]
    Query(#[from] sqlx::Error),
}

/// Result with the storage [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// A process's database.
#[derive(Clone)]
pub struct Db {
    pool: SqlitePool,
    writer: Arc<tokio::sync::Mutex<()>>,
}

/// A write transaction, holding the writer lock until it ends.
pub struct WriteTx<'a> {
    /// The transaction.
    pub tx: Transaction<'static, Sqlite>,
    _guard: tokio::sync::MutexGuard<'a, ()>,
}

impl WriteTx<'_> {
    /// Commits.
    pub async fn commit(self) -> Result<()> {
        self.tx.commit().await?;
        Ok(())
    }
}

impl Db {
    /// Opens (creating it when `create`) the database at `path` and applies
    /// the `migrations` not yet applied. `PRAGMA user_version` records how
    /// many have run; a released migration is never edited, only appended to.
    pub async fn open(path: &Path, create: bool, migrations: &[&str]) -> Result<Db> {
        Self::open_with(path, create, migrations, 4).await
    }

    /// [`Db::open`] with at most `connections` connections (each has its own
    /// worker thread and page cache): a small process such as the agent
    /// uses few.
    pub async fn open_with(
        path: &Path,
        create: bool,
        migrations: &[&str],
        connections: u32,
    ) -> Result<Db> {
        owner_only(path, create).map_err(|source| Error::Open {
            path: path.to_owned(),
            source: sqlx::Error::Io(source),
        })?;
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(create)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true)
            // Up to 16 MiB of pages cached per connection (SQLite's default
            // is 2 MB): a site's agent table outgrows that at about 10,000
            // agents. Pages are only held once read, so a small database
            // stays small.
            .pragma("cache_size", "-16384");
        let pool = SqlitePoolOptions::new()
            .max_connections(connections.max(1))
            .connect_with(options)
            .await
            .map_err(|source| Error::Open {
                path: path.to_owned(),
                source,
            })?;
        let db = Db {
            pool,
            writer: Default::default(),
        };
        db.migrate(path, migrations).await?;
        Ok(db)
    }

    async fn migrate(&self, path: &Path, migrations: &[&str]) -> Result<()> {
        let _guard = self.writer.lock().await;
        let applied: i64 = sqlx::query_scalar("PRAGMA user_version")
            .fetch_one(&self.pool)
            .await?;
        if applied as usize > migrations.len() {
            return Err(Error::TooNew {
                path: path.to_owned(),
                found: applied,
                known: migrations.len(),
            });
        }
        for (index, sql) in migrations.iter().enumerate().skip(applied as usize) {
            let version = index + 1;
            let wrap = |source| Error::Migrate {
                path: path.to_owned(),
                version,
                source,
            };
            let mut tx = self.pool.begin().await.map_err(wrap)?;
            sqlx::raw_sql(sql).execute(&mut *tx).await.map_err(wrap)?;
            sqlx::raw_sql(&format!("PRAGMA user_version = {version}"))
                .execute(&mut *tx)
                .await
                .map_err(wrap)?;
            tx.commit().await.map_err(wrap)?;
        }
        Ok(())
    }

    /// The pool, for reads.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Starts a write transaction; writers run one at a time, so no
    /// transaction ever meets `SQLITE_BUSY`.
    pub async fn write(&self) -> Result<WriteTx<'_>> {
        let guard = self.writer.lock().await;
        let tx = self.pool.begin().await?;
        Ok(WriteTx { tx, _guard: guard })
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Makes a database readable and writable by its owner only (mode 0600):
/// it holds credentials' hashes, job commands and the site's state. A new
/// one (when `create`) is created so; an existing one, and its WAL and
/// shared-memory files (which SQLite creates with the database's mode), are
/// narrowed if they were wider.
fn owner_only(path: &Path, create: bool) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if create {
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(_) => return Ok(()),
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(err) => return Err(err),
        }
    }
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    let mut shm = path.as_os_str().to_owned();
    shm.push("-shm");
    for file in [path.as_os_str(), &wal, &shm] {
        match std::fs::metadata(file) {
            Ok(meta) if meta.permissions().mode() & 0o077 != 0 => {
                std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600))?;
            }
            Ok(_) => {}
            // Absent: SQLite says so when it opens the database.
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: &[&str] = &[
        "CREATE TABLE t (x INTEGER);",
        "ALTER TABLE t ADD COLUMN y INTEGER;",
    ];

    #[tokio::test]
    async fn migrations_apply_once_and_a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("test.db");
        let db = Db::open(&path, true, &SCHEMA[..1]).await.unwrap();
        db.close().await;
        let db = Db::open(&path, false, SCHEMA).await.unwrap();
        sqlx::query("INSERT INTO t (x, y) VALUES (1, 2)")
            .execute(db.pool())
            .await
            .unwrap();
        db.close().await;
        let err = Db::open(&path, false, &SCHEMA[..1]).await.err().unwrap();
        assert!(matches!(err, Error::TooNew { found: 2, .. }), "{err}");
    }

    /// Issue 12: `site.db` and `agent.db` (which holds job commands) were
    /// world-readable.
    #[tokio::test]
    async fn databases_are_readable_by_their_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("test.db");
        let db = Db::open(&path, true, SCHEMA).await.unwrap();
        sqlx::query("INSERT INTO t (x, y) VALUES (1, 2)")
            .execute(db.pool())
            .await
            .unwrap();
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&dir.path().join("test.db-wal")), 0o600);
        db.close().await;
        // One left wider by an older version is narrowed when opened.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let db = Db::open(&path, false, SCHEMA).await.unwrap();
        assert_eq!(mode(&path), 0o600);
        db.close().await;
    }

    #[test]
    fn a_new_dir_appears_only_on_commit_and_never_over_content() {
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("data");
        let new = NewDir::prepare(&target).unwrap();
        std::fs::write(new.path().join("file"), b"x").unwrap();
        assert!(!target.exists());
        new.commit().unwrap();
        assert_eq!(std::fs::read(target.join("file")).unwrap(), b"x");
        assert!(NewDir::prepare(&target).is_err());
        // Dropped without commit: nothing is left behind.
        let other = root.path().join("other");
        drop(NewDir::prepare(&other).unwrap());
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 1);
    }

    #[tokio::test]
    async fn a_missing_database_is_not_created_unless_asked() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Db::open(&dir.path().join("nope.db"), false, SCHEMA)
            .await
            .is_err());
    }
}
