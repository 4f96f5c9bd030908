//! The site server: one per site. It owns the site's database and content
//! library, serves the HTTP API to administrators and distribution points,
//! and keeps the distribution queue that tells every DP what to hold.
//!
//! Data flows down as assignments (which package version each DP must hold)
//! that DPs pull with a long poll, and as chunks they fetch; status flows up
//! as status messages the DPs post, from which every status view is derived.

mod agents;
mod api;
mod auth;
mod content;
pub mod db;
mod distribution;
mod error;
mod jobs;
mod status;

pub use error::{Error, Result};

use cascade_content::{ChunkStore, SigningKey};
use cascade_domain::SiteCode;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Files and folders of a site's data directory.
pub mod layout {
    /// The SQLite database.
    pub const DB: &str = "site.db";
    /// The ed25519 signing key (hex, mode 0600).
    pub const KEY: &str = "site.key";
    /// The content library.
    pub const CHUNKS: &str = "chunks";
    /// The URL the running server listens on, written at start.
    pub const URL: &str = "url";
    /// The administrator token (mode 0600).
    pub const ADMIN_TOKEN: &str = "admin.token";
    /// The token DPs enroll with (mode 0600).
    pub const JOIN_TOKEN: &str = "join.token";
}

pub use cascade_store::now_ms;

/// Shared state of the running server.
#[derive(Clone)]
pub struct AppState {
    db: db::Db,
    store: ChunkStore,
    key: Arc<SigningKey>,
    code: SiteCode,
    kind: String,
    /// Bumped whenever any DP's assignments change; long polls wait on it.
    changes: Arc<tokio::sync::watch::Sender<u64>>,
    /// Bumped whenever any agent's policy changes; policy polls wait on it.
    agent_changes: Arc<tokio::sync::watch::Sender<u64>>,
    /// Set when the server is shutting down, to end long polls.
    shutdown: tokio::sync::watch::Receiver<bool>,
}

impl AppState {
    fn notify_assignments_changed(&self) {
        self.changes.send_modify(|generation| *generation += 1);
    }

    fn notify_agents_changed(&self) {
        self.agent_changes
            .send_modify(|generation| *generation += 1);
    }
}

/// What `cascade site init` created and must show once.
#[derive(Debug, Clone)]
pub struct InitReport {
    /// The data directory.
    pub dir: PathBuf,
    /// The site code.
    pub code: String,
    /// The administrator token.
    pub admin_token: String,
    /// The DP join token.
    pub join_token: String,
    /// Hex of the signing key's public half.
    pub public_key: String,
}

/// Creates a site's data directory: database, signing key, tokens.
///
/// Refuses a directory that exists and is not empty, so nothing stored is
/// ever overwritten; a failure half-way leaves nothing behind.
pub async fn init(dir: &Path, code: &str) -> Result<InitReport> {
    let code = SiteCode::new(code)?;
    let new_dir = cascade_store::NewDir::prepare(dir)
        .map_err(|err| Error::Conflict(format!("cannot create site directory: {err}")))?;
    let target = dir;
    let dir = new_dir.path();
    let key = cascade_content::generate_key();
    cascade_content::write_key(&dir.join(layout::KEY), &key)?;
    ChunkStore::open(&dir.join(layout::CHUNKS))?;
    let db = db::Db::open(&dir.join(layout::DB), true, db::MIGRATIONS).await?;
    let admin_token = auth::mint_token("cas_admin");
    let join_token = auth::mint_token("cas_join");
    let now = now_ms();
    let mut tx = db.write().await?;
    sqlx::query("INSERT INTO site (id, code, kind, created_at_ms) VALUES (1, ?, 'central', ?)")
        .bind(code.as_str())
        .bind(now)
        .execute(&mut *tx.tx)
        .await?;
    for (token, role) in [(&admin_token, "admin"), (&join_token, "join")] {
        auth::store_credential(&mut tx, token, role, role, now).await?;
    }
    tx.commit().await?;
    db.close().await;
    write_secret(&dir.join(layout::ADMIN_TOKEN), &admin_token)?;
    write_secret(&dir.join(layout::JOIN_TOKEN), &join_token)?;
    new_dir.commit().map_err(Error::io(format!(
        "moving the new site into {}",
        target.display()
    )))?;
    Ok(InitReport {
        dir: target.to_owned(),
        code: code.to_string(),
        admin_token,
        join_token,
        public_key: cascade_content::public_key_hex(&key.verifying_key()),
    })
}

fn write_secret(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(Error::io(format!("creating {}", path.display())))?;
    file.write_all(format!("{text}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(Error::io(format!("writing {}", path.display())))
}

/// A running site server's address.
pub struct Running {
    /// The bound address.
    pub addr: SocketAddr,
    /// The URL clients use.
    pub url: String,
}

/// Serves the site in `dir` on `listen` until `shutdown` resolves.
///
/// `on_ready` is called once the socket is bound and `DIR/url` written.
pub async fn run(
    dir: &Path,
    listen: &str,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_ready: impl FnOnce(&Running),
) -> Result<()> {
    let db_path = dir.join(layout::DB);
    if !db_path.exists() {
        return Err(Error::invalid(
            "not_a_site",
            format!(
                "{} holds no site: run `cascade site init` first",
                dir.display()
            ),
        ));
    }
    let db = db::Db::open(&db_path, false, db::MIGRATIONS).await?;
    let (code, kind): (String, String) = sqlx::query_as("SELECT code, kind FROM site WHERE id = 1")
        .fetch_one(db.pool())
        .await?;
    let key = cascade_content::read_key(&dir.join(layout::KEY))?;
    let store = ChunkStore::open(&dir.join(layout::CHUNKS))?;
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let state = AppState {
        db: db.clone(),
        store,
        key: Arc::new(key),
        code: SiteCode::new(&code)?,
        kind,
        changes: Arc::new(tokio::sync::watch::channel(0).0),
        agent_changes: Arc::new(tokio::sync::watch::channel(0).0),
        shutdown: shutdown_rx,
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(Error::io(format!("binding {listen}")))?;
    let addr = listener
        .local_addr()
        .map_err(Error::io("reading the bound address"))?;
    let url = cascade_protocol::url_for(addr);
    cascade_store::write_atomically(&dir.join(layout::URL), format!("{url}\n").as_bytes(), 0o644)
        .map_err(Error::io(format!(
        "writing {}",
        dir.join(layout::URL).display()
    )))?;
    on_ready(&Running {
        addr,
        url: url.clone(),
    });
    tracing::info!(site = %code, %url, "site server listening");
    tokio::spawn(jobs::expiry_worker(state.clone()));
    let app = api::router(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            let _ = shutdown_tx.send(true);
            tracing::info!("shutting down");
        })
        .await
        .map_err(Error::io("serving HTTP"))?;
    db.close().await;
    Ok(())
}
