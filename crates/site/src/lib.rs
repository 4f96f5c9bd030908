//! The site server: one per site. It owns the site's database and content
//! library, serves the HTTP API to administrators, distribution points,
//! agents and child sites, and keeps the distribution queue that tells every
//! DP what to hold.
//!
//! Data flows down as instructions a child site pulls from its parent (and
//! the content it needs), as assignments (which package version each DP must
//! hold) that DPs pull with a long poll, and as chunks they fetch; status
//! flows up as status messages DPs and agents post to their site and every
//! site relays to its parent, from which every status view is derived.

pub mod db;
mod error;
mod http;
mod service;
mod state;
#[cfg(test)]
mod testing;
mod workers;

pub use error::{Entity, Error, Result};
pub use service::hierarchy::Join;

use state::AppState;

use cascade_content::ChunkStore;
use cascade_domain::hierarchy::SiteKind;
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
    /// The token DPs and agents enroll with (mode 0600).
    pub const JOIN_TOKEN: &str = "join.token";
    /// The token child sites join with (mode 0600).
    pub const SITE_JOIN_TOKEN: &str = "site-join.token";
    /// The join token of DPs (mode 0600).
    pub const DP_JOIN_TOKEN: &str = "dp-join.token";
    /// A child site's credential towards its parent (mode 0600).
    pub const PARENT: &str = "parent.json";
}

pub use cascade_store::now_ms;

/// What `cascade site init` created and must show once.
#[derive(Debug, Clone)]
pub struct InitReport {
    /// The data directory.
    pub dir: PathBuf,
    /// The site code.
    pub code: String,
    /// The administrator token.
    pub admin_token: String,
    /// The join token of workstations' agents.
    pub join_token: String,
    /// The join token of DPs.
    pub dp_join_token: String,
    /// The join token of child sites.
    pub site_join_token: String,
    /// Hex of the key every manifest must be signed with (the central
    /// site's).
    pub public_key: String,
    /// The SHA-256 fingerprint of the site's TLS certificate (every token
    /// above pins it).
    pub certificate: String,
    /// What the site is in the hierarchy.
    pub kind: SiteKind,
    /// The parent's code, for a child site.
    pub parent: Option<String>,
}

/// Creates a site's data directory: database, TLS identity (`tls`, or a
/// self-signed certificate), tokens, and either the signing key (a
/// central site) or, for a child site joining with `join`, its credential
/// towards the parent.
///
/// Refuses a directory that exists and is not empty, so nothing stored is
/// ever overwritten; a failure half-way leaves nothing behind.
pub async fn init(
    dir: &Path,
    code: &str,
    join: Option<&Join>,
    tls: Option<&cascade_protocol::tls::Supplied>,
) -> Result<InitReport> {
    let code = SiteCode::new(code)?;
    let kind = match join {
        Some(join) => join.kind,
        None => SiteKind::Central,
    };
    if kind != SiteKind::Central && join.is_none() {
        return Err(Error::invalid(
            "missing_parent",
            "a child site needs --parent",
        ));
    }
    let new_dir = cascade_store::NewDir::prepare(dir)
        .map_err(|err| Error::Conflict(format!("cannot create site directory: {err}")))?;
    let target = dir;
    let dir = new_dir.path();
    ChunkStore::open(&dir.join(layout::CHUNKS))?;
    let certificate = cascade_protocol::tls::make(dir, tls)?;
    let db = db::Db::open(&dir.join(layout::DB), true, db::MIGRATIONS).await?;
    let (public_key, parent_code, central_code) = match join {
        None => {
            let key = cascade_content::generate_key();
            cascade_content::write_key(&dir.join(layout::KEY), &key)?;
            (
                cascade_content::public_key_hex(&key.verifying_key()),
                None,
                None,
            )
        }
        Some(join) => {
            let config = service::hierarchy::join(&code, kind, join).await?;
            let text =
                serde_json::to_string_pretty(&config).map_err(Error::json("encoding JSON"))?;
            cascade_store::write_atomically(&dir.join(layout::PARENT), text.as_bytes(), 0o600)
                .map_err(Error::io("writing parent.json"))?;
            (
                config.enrollment.site_public_key.clone(),
                Some(config.enrollment.site_code.clone()),
                Some(config.central_code.clone()),
            )
        }
    };
    // Every token pins the central key and the site's certificate: whoever
    // uses one checks the answer against them.
    let mint = |prefix| {
        cascade_protocol::pinning_token(
            &service::auth::mint_token(prefix),
            &public_key,
            &certificate,
        )
    };
    let admin_token = mint("cas_admin");
    let join_token = mint("cas_join");
    let site_join_token = mint("cas_sitejoin");
    let dp_join_token = mint("cas_dpjoin");
    let now = now_ms();
    let mut tx = db.write().await?;
    db::insert_own_site(
        &mut tx,
        &db::OwnSite {
            code: code.to_string(),
            kind: kind.name().to_owned(),
            created_at_ms: now,
            parent_code: parent_code.clone(),
            central_code,
        },
    )
    .await?;
    if let Some(parent) = &parent_code {
        // Relayed when the site first runs: the hierarchy learns that it
        // is connected.
        let seq = db::next_seq(&mut tx.tx, code.as_str()).await?;
        let message = cascade_protocol::StatusMessage {
            signature: None,
            seq: seq as u64,
            at_ms: now,
            body: cascade_protocol::StatusBody::SiteJoined {
                parent: parent.clone(),
            },
        };
        let source = cascade_domain::hierarchy::StatusSource::site(code.clone());
        db::insert_message(&mut tx.tx, &source, &message, now).await?;
    }
    for (token, role) in [
        (&admin_token, "admin"),
        (&join_token, "join"),
        (&site_join_token, "site_join"),
        (&dp_join_token, "dp_join"),
    ] {
        service::auth::store_credential(&mut tx, token, role, role, now).await?;
    }
    tx.commit().await?;
    db.close().await;
    write_secret(&dir.join(layout::ADMIN_TOKEN), &admin_token)?;
    write_secret(&dir.join(layout::JOIN_TOKEN), &join_token)?;
    write_secret(&dir.join(layout::SITE_JOIN_TOKEN), &site_join_token)?;
    write_secret(&dir.join(layout::DP_JOIN_TOKEN), &dp_join_token)?;
    new_dir.commit().map_err(Error::io(format!(
        "moving the new site into {}",
        target.display()
    )))?;
    Ok(InitReport {
        dir: target.to_owned(),
        code: code.to_string(),
        admin_token,
        join_token,
        dp_join_token,
        site_join_token,
        public_key,
        certificate: certificate.to_string(),
        kind,
        parent: parent_code,
    })
}

/// Replaces the site's token of `role` (`admin`, `join`, `site-join` or
/// `dp-join`) in its data directory `dir`, running or not: a new token is
/// minted (pinning the central key and the site's certificate), every
/// credential of the old one is revoked in the same transaction, and the
/// token file is replaced atomically. Agents, DPs and child sites enrolled
/// with the old join token keep their own credentials. Returns the new
/// token and its file.
pub async fn rotate_token(dir: &Path, role: &str) -> Result<(String, PathBuf)> {
    let wanted = role.replace('-', "_");
    let Some((role, prefix, file)) = TOKENS.into_iter().find(|(name, ..)| *name == wanted) else {
        return Err(Error::invalid(
            "invalid_role",
            format!("{role:?} is not a token of a site: admin, join, site-join or dp-join"),
        ));
    };
    let db_path = dir.join(layout::DB);
    if !db_path.exists() {
        return Err(Error::invalid(
            "not_a_site",
            format!("{} holds no site", dir.display()),
        ));
    }
    let db = db::Db::open(&db_path, false, db::MIGRATIONS).await?;
    let own = db::own_site(db.pool()).await?;
    let trust = if SiteKind::parse(&own.kind)? == SiteKind::Central {
        cascade_content::read_key(&dir.join(layout::KEY))?.verifying_key()
    } else {
        let parent = state::Parent::read(&dir.join(layout::PARENT))?;
        cascade_content::public_key_from_hex(&parent.config.enrollment.site_public_key)?
    };
    let certificate = cascade_protocol::tls::Identity::load(dir)?.fingerprint();
    let token = cascade_protocol::pinning_token(
        &service::auth::mint_token(prefix),
        &cascade_content::public_key_hex(&trust),
        &certificate,
    );
    // The new token is valid and in its file before the old one is
    // revoked: a crash in between leaves both valid, never neither.
    let mut tx = db.write().await?;
    service::auth::store_credential(&mut tx, &token, role, role, now_ms()).await?;
    tx.commit().await?;
    let path = dir.join(file);
    cascade_store::write_atomically(&path, format!("{token}\n").as_bytes(), 0o600)
        .map_err(Error::io(format!("writing {}", path.display())))?;
    let mut tx = db.write().await?;
    service::auth::revoke_all_but(&mut tx, role, role, &token).await?;
    tx.commit().await?;
    db.close().await;
    tracing::info!(role, path = %path.display(), "token rotated; the old one is revoked");
    Ok((token, path))
}

/// Every token the site hands out, with the prefix of a new one and the
/// file it is written to.
const TOKENS: [(&str, &str, &str); 4] = [
    ("admin", "cas_admin", layout::ADMIN_TOKEN),
    ("join", "cas_join", layout::JOIN_TOKEN),
    ("site_join", "cas_sitejoin", layout::SITE_JOIN_TOKEN),
    ("dp_join", "cas_dpjoin", layout::DP_JOIN_TOKEN),
];

/// Makes sure `DIR/FILE` holds a token of `role` that pins the central key
/// and the site's current certificate: a site created before child sites
/// (or DPs) had a join token of their own, or before it spoke TLS, or
/// whose certificate an administrator replaced, gets a new one (the old
/// one stays a valid credential; it only pins nothing current).
async fn ensure_token(
    db: &db::Db,
    dir: &Path,
    (role, prefix, file): (&str, &str, &str),
    central_key: &str,
    certificate: &cascade_protocol::tls::Fingerprint,
) -> Result<()> {
    let path = dir.join(file);
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    let pins = cascade_protocol::TokenPins::of(&current);
    if db::role_exists(db.pool(), role).await?
        && pins.certificate.as_ref() == Some(certificate)
        && pins
            .central_key
            .is_some_and(|key| key.eq_ignore_ascii_case(central_key))
    {
        return Ok(());
    }
    let token = cascade_protocol::pinning_token(
        &service::auth::mint_token(prefix),
        central_key,
        certificate,
    );
    let _ = std::fs::remove_file(&path);
    write_secret(&path, &token)?;
    let mut tx = db.write().await?;
    service::auth::store_credential(&mut tx, &token, role, role, now_ms()).await?;
    tx.commit().await?;
    tracing::info!(path = %path.display(), role, "wrote a token pinning the site's certificate");
    Ok(())
}

/// The site's content-ticket key, created the first time.
async fn content_key(db: &db::Db) -> Result<cascade_protocol::ticket::ContentKey> {
    use cascade_protocol::ticket::ContentKey;
    if db::secret(db.pool(), "content_key").await?.is_none() {
        let mut tx = db.write().await?;
        db::insert_secret(&mut tx, "content_key", &ContentKey::generate().to_hex()).await?;
        tx.commit().await?;
    }
    let stored = db::secret(db.pool(), "content_key")
        .await?
        .unwrap_or_default();
    ContentKey::from_hex(&stored)
        .ok_or_else(|| Error::Internal("the stored content key is damaged".into()))
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

/// A site's data directory opened for serving: the state handed to every
/// layer, and the ends of its channels that `run` keeps.
struct Opened {
    state: AppState,
    /// The status writer's end of the status queue.
    status_pending: tokio::sync::mpsc::Receiver<state::Pending>,
    /// Ends long polls and workers when sent `true`.
    shutdown_tx: tokio::sync::watch::Sender<bool>,
    /// The certificate and key it serves with.
    tls: cascade_protocol::tls::Identity,
}

/// Opens the site in `dir`: its database (migrated), keys, link to the
/// parent and content library.
async fn open(dir: &Path) -> Result<Opened> {
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
    let own = db::own_site(db.pool()).await?;
    let (code, kind, central) = (
        SiteCode::new(&own.code)?,
        SiteKind::parse(&own.kind)?,
        own.central_code,
    );
    let (key, trust, parent) = if kind == SiteKind::Central {
        let key = cascade_content::read_key(&dir.join(layout::KEY))?;
        let trust = key.verifying_key();
        (Some(Arc::new(key)), trust, None)
    } else {
        let parent = state::Parent::read(&dir.join(layout::PARENT))?;
        let trust =
            cascade_content::public_key_from_hex(&parent.config.enrollment.site_public_key)?;
        (None, trust, Some(Arc::new(parent)))
    };
    let store = ChunkStore::open(&dir.join(layout::CHUNKS))?;
    if !store.opened().is_clean() {
        tracing::warn!(report = %store.opened(), "the chunk store needed care when opened");
    }
    let trust_hex = cascade_content::public_key_hex(&trust);
    // A site from before TLS makes its certificate at its first start.
    if !cascade_protocol::tls::Identity::exists(dir) {
        let made = cascade_protocol::tls::make(dir, None)?;
        tracing::info!(certificate = %made, "made the site's TLS certificate");
    }
    let tls = cascade_protocol::tls::Identity::load(dir)?;
    let certificate = tls.fingerprint();
    for token in TOKENS {
        ensure_token(&db, dir, token, &trust_hex, &certificate).await?;
    }
    let content_key = content_key(&db).await?;
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let (status_queue, status_pending) = tokio::sync::mpsc::channel(state::QUEUE);
    let state = AppState {
        db: db.clone(),
        store,
        key,
        trust,
        content_key,
        central: match central {
            Some(central) => SiteCode::new(&central)?,
            None => code.clone(),
        },
        code: code.clone(),
        kind,
        parent,
        changes: Arc::new(tokio::sync::watch::channel(0).0),
        agent_changes: Arc::new(tokio::sync::watch::channel(0).0),
        outbox_changes: Arc::new(tokio::sync::watch::channel(0).0),
        wakes: Default::default(),
        links: Default::default(),
        progress: Default::default(),
        shutdown: shutdown_rx,
        seen: Default::default(),
        policy: Default::default(),
        agent_rows: Default::default(),
        agent_credentials: Default::default(),
        status_queue,
        local_ingest: None,
        damage_checks: Arc::new(tokio::sync::Semaphore::new(state::DAMAGE_CHECKS)),
    };
    Ok(Opened {
        state,
        status_pending,
        shutdown_tx,
        tls,
    })
}

/// A running site server's address.
pub struct Running {
    /// The bound address.
    pub addr: SocketAddr,
    /// The URL clients use.
    pub url: String,
}

/// How `site run` runs the site, beyond its address and limits.
#[derive(Clone, Copy, Debug)]
pub struct RunOptions<'a> {
    /// Where the site may read packages on its own machine
    /// (`--local-ingest-root`); nowhere by default.
    pub local_ingest_root: Option<&'a Path>,
    /// How long a chunk no kept version uses stays (`--chunk-grace`).
    pub chunk_grace: std::time::Duration,
    /// How long one pass of verifying every stored chunk takes
    /// (`--scrub-pass`).
    pub scrub_pass: std::time::Duration,
}

impl Default for RunOptions<'_> {
    fn default() -> Self {
        RunOptions {
            local_ingest_root: None,
            chunk_grace: service::retention::DEFAULT_CHUNK_GRACE,
            scrub_pass: cascade_content::DEFAULT_SCRUB_PASS,
        }
    }
}

/// Serves the site in `dir` on `listen` until `shutdown` resolves.
///
/// `on_ready` is called once the socket is bound and `DIR/url` written.
pub async fn run(
    dir: &Path,
    listen: &str,
    limits: cascade_protocol::serve::Limits,
    options: RunOptions<'_>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_ready: impl FnOnce(&Running),
) -> Result<()> {
    let Opened {
        mut state,
        status_pending,
        shutdown_tx,
        tls,
    } = open(dir).await?;
    if let Some(root) = options.local_ingest_root {
        let local = state::LocalIngest::new(root, dir).map_err(|source| Error::Io {
            context: format!("the local ingest root {}", root.display()),
            source,
        })?;
        state.local_ingest = Some(Arc::new(local));
    }
    let acceptor = tls.acceptor()?;
    let db = state.db.clone();
    let (code, kind) = (state.code.clone(), state.kind);
    // The first timestamp exists before anyone can ask for it.
    if state.key.is_some() {
        service::timestamp::sign_if_due(&state).await?;
    }
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
    tracing::info!(site = %code, kind = %kind, %url, "site server listening");
    let mut running = vec![
        tokio::spawn(workers::expiry::expiry_worker(state.clone())),
        tokio::spawn(workers::retention::retention_worker(
            state.clone(),
            options.chunk_grace,
        )),
        tokio::spawn(workers::seen::seen_worker(state.clone())),
        tokio::spawn(workers::scrub::scrub_worker(
            state.clone(),
            options.scrub_pass,
        )),
        tokio::spawn(workers::status_writer::status_writer(
            state.clone(),
            status_pending,
        )),
    ];
    if state.key.is_some() {
        running.push(tokio::spawn(workers::timestamp::timestamp_worker(
            state.clone(),
        )));
    }
    if state.parent.is_some() {
        running.push(tokio::spawn(workers::receive::receive_worker(
            state.clone(),
        )));
        running.push(tokio::spawn(workers::apply::apply_worker(state.clone())));
        running.push(tokio::spawn(workers::content::content_worker(
            state.clone(),
        )));
        running.push(tokio::spawn(workers::relay::relay_worker(state.clone())));
    }
    let seen = state.seen.clone();
    let last_flush = state.clone();
    http::serve(listener, state, limits, acceptor, async move {
        shutdown.await;
        let _ = shutdown_tx.send(true);
        tracing::info!("shutting down");
    })
    .await?;
    // The workers end on the shutdown signal; give them a moment to finish
    // the transaction they are in.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        for worker in running {
            let _ = worker.await;
        }
    })
    .await;
    // Polls answered while shutting down, after the seen worker's last write.
    if let Err(err) = seen.flush(&last_flush.db).await {
        tracing::warn!(error = %cascade_protocol::chain(&err), "recording when agents were last seen failed");
    }
    db.close().await;
    Ok(())
}
