//! The distribution point: a separate process that enrolls with its site
//! once, then opens every connection to the site itself (a long poll for its
//! assignments, chunk fetches, status delivery), keeps the package versions it
//! is assigned in its own content library, and serves them over HTTPS
//! (with the certificate made at init, which agents pin) with Range
//! support. It keeps serving what it holds while its site is down.

mod collect;
mod db;
mod error;
mod scrub;
mod serve;
mod sync;

pub use error::{Error, Result};

use cascade_content::{ChunkStore, VerifyingKey};
use cascade_protocol::{Client, DpHello, EnrollRequest, Enrollment, StatusBody};
use cascade_store::{Db, Outbox};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::{watch, Notify};

/// Files and folders of a DP's data directory.
pub use scrub::DEFAULT_PASS as DEFAULT_SCRUB_PASS;

pub mod layout {
    /// The DP's configuration and credential (mode 0600).
    pub const CONFIG: &str = "dp.json";
    /// The DP's database.
    pub const DB: &str = "dp.db";
    /// The content library.
    pub const CHUNKS: &str = "chunks";
    /// The URL the content server listens on, written at start.
    pub const URL: &str = "url";
}

/// What `cascade dp init` stores: who the DP is and how to reach its site.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Config {
    /// Name, site, credential, pinned site key.
    #[serde(flatten)]
    pub enrollment: Enrollment,
    /// Where to serve content unless `run --listen` says otherwise.
    pub listen: String,
}

pub use cascade_store::now_ms;

/// Enrolls a new DP with its site and creates its data directory.
///
/// Refuses a directory that exists and is not empty. Everything is prepared
/// in a hidden sibling directory and moved into place only after the site
/// accepted the enrollment, so a failure leaves nothing behind that claims
/// to be a DP.
pub async fn init(
    dir: &Path,
    site_url: &str,
    join_token: &str,
    name: &str,
    listen: &str,
    tls: Option<&cascade_protocol::tls::Supplied>,
) -> Result<Config> {
    cascade_domain::DpName::new(name).map_err(|err| Error::Config(err.to_string()))?;
    let new_dir = cascade_store::NewDir::prepare(dir)
        .map_err(|err| Error::Config(format!("cannot create dp directory: {err}")))?;
    let target = dir;
    let dir = new_dir.path();
    let db = Db::open(&dir.join(layout::DB), true, db::MIGRATIONS).await?;
    db.close().await;
    ChunkStore::open(&dir.join(layout::CHUNKS))?;
    cascade_protocol::tls::make(dir, tls)?;
    let client = cascade_protocol::client_for_token(site_url, join_token)?;
    let status_key = Enrollment::new_status_key();
    let enrolled = client
        .enroll_dp(&EnrollRequest {
            name: name.to_owned(),
            join_token: join_token.trim().to_owned(),
            public_key: Some(cascade_content::public_key_hex(&status_key.verifying_key())),
        })
        .await?;
    cascade_protocol::check_pinned_key(join_token, &enrolled.site.public_key, client.base())
        .map_err(Error::Config)?;
    let config = Config {
        enrollment: Enrollment::granted(
            name,
            &client,
            enrolled.credential,
            enrolled.site,
            Some(&status_key),
        ),
        listen: listen.to_owned(),
    };
    let text =
        serde_json::to_string_pretty(&config).map_err(|err| Error::Config(err.to_string()))?;
    write_private(&dir.join(layout::CONFIG), &text)?;
    new_dir.commit().map_err(Error::io(format!(
        "moving the new dp into {}",
        target.display()
    )))?;
    Ok(config)
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    cascade_store::write_atomically(path, text.as_bytes(), 0o600)
        .map_err(Error::io(format!("writing {}", path.display())))
}

/// Verified manifests by package name, with the version they belong to.
type ManifestCache = HashMap<String, (u64, Arc<cascade_content::Manifest>)>;

/// State shared by the DP's workers and its content server.
#[derive(Clone)]
pub(crate) struct Dp {
    config: Arc<Config>,
    db: Db,
    store: ChunkStore,
    outbox: Outbox,
    site_key: VerifyingKey,
    client: Client,
    /// Notified when a status message was pushed.
    status_wake: Arc<Notify>,
    /// Packages with chunks found corrupt while serving, awaiting repair.
    repairs: Arc<Mutex<BTreeSet<String>>>,
    /// Notified when a repair is wanted.
    repair_wake: Arc<Notify>,
    /// Verified manifests of held versions, so that serving a file does not
    /// re-read and re-verify the manifest on every request.
    manifests: Arc<Mutex<ManifestCache>>,
    /// The site's content-ticket key, once the DP is admitted: every
    /// request for content must carry a ticket it verifies.
    content_key: Arc<std::sync::RwLock<Option<cascade_protocol::ticket::ContentKey>>>,
    /// The fingerprint of the certificate it serves with, announced to
    /// the site for its agents to pin.
    certificate: cascade_protocol::tls::Fingerprint,
}

impl Dp {
    /// Refuses a request for content without a valid ticket of the site
    /// (`authorization`: the `Authorization` header, `Bearer TICKET`).
    fn check_ticket(&self, authorization: Option<&str>) -> Result<()> {
        use cascade_protocol::ticket::{bearer, TicketError};
        let key = self.content_key.read().expect("content key lock").clone();
        let Some(key) = key else {
            return Err(Error::Unauthorized(
                "this DP is not admitted by its site yet (`cascade dp approve`), so it serves nothing".into(),
            ));
        };
        bearer(authorization)
            .ok_or(TicketError::Missing)
            .and_then(|ticket| key.check(ticket, now_ms()))
            .map(|_| ())
            .map_err(|err| Error::Unauthorized(err.to_string()))
    }

    /// Keeps the content-ticket key the site gave (stored, so that the DP
    /// serves while the site is down).
    async fn keep_content_key(&self, hex: &str) -> Result<()> {
        let Some(key) = cascade_protocol::ticket::ContentKey::from_hex(hex) else {
            return Err(Error::Refused(
                "the site sent a malformed content key".into(),
            ));
        };
        if self.content_key.read().expect("content key lock").as_ref() == Some(&key) {
            return Ok(());
        }
        db::set_secret(&self.db, "content_key", hex).await?;
        *self.content_key.write().expect("content key lock") = Some(key);
        tracing::info!("admitted by the site: serving content to holders of its tickets");
        Ok(())
    }

    /// Records a status message in the outbox and wakes the forwarder.
    async fn emit(&self, body: StatusBody) -> Result<()> {
        let text = serde_json::to_string(&body).map_err(|err| Error::Config(err.to_string()))?;
        self.outbox.push(now_ms(), &text).await?;
        self.status_wake.notify_one();
        Ok(())
    }

    /// Records a status message inside `tx`; call [`Dp::wake_forwarder`] after commit.
    async fn emit_in(&self, tx: &mut cascade_store::WriteTx<'_>, body: StatusBody) -> Result<()> {
        let text = serde_json::to_string(&body).map_err(|err| Error::Config(err.to_string()))?;
        Outbox::push_in(tx, now_ms(), &text).await?;
        Ok(())
    }

    fn wake_forwarder(&self) {
        self.status_wake.notify_one();
    }

    /// Marks for repair every held package that uses one of `damaged`
    /// (chunks found failing verification by the scrub or a compaction).
    async fn repair_packages_using(&self, damaged: &[cascade_content::ChunkHash]) -> Result<()> {
        if damaged.is_empty() {
            return Ok(());
        }
        for held in db::all_held(&self.db).await? {
            let manifest = held.verified(&self.site_key)?;
            if manifest
                .unique_chunks()
                .iter()
                .any(|chunk| damaged.contains(&chunk.hash))
            {
                self.request_repair(&held.name);
            }
        }
        Ok(())
    }

    /// Marks a package for repair after a chunk failed verification.
    fn request_repair(&self, package: &str) {
        self.repairs
            .lock()
            .expect("repairs lock")
            .insert(package.to_owned());
        self.repair_wake.notify_one();
    }
}

/// What the running DP tells its caller once it listens.
pub struct Running {
    /// The content server's URL.
    pub url: String,
    /// The DP's name.
    pub name: String,
}

/// Runs the DP in `dir` until `shutdown` resolves: the content server, the
/// assignment sync and the status forwarder.
pub async fn run(
    dir: &Path,
    listen: Option<&str>,
    limits: cascade_protocol::serve::Limits,
    scrub_pass: std::time::Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_ready: impl FnOnce(&Running),
) -> Result<()> {
    let config: Config =
        cascade_protocol::read_config(&dir.join(layout::CONFIG), "cascade dp init")
            .map_err(Error::Config)?;
    let enrollment = &config.enrollment;
    let db = Db::open(&dir.join(layout::DB), false, db::MIGRATIONS).await?;
    let store = ChunkStore::open(&dir.join(layout::CHUNKS))?;
    if !store.opened().is_clean() {
        tracing::warn!(report = %store.opened(), "the chunk store needed care when opened");
    }
    let site_key = cascade_content::public_key_from_hex(&enrollment.site_public_key)?;
    let client = enrollment.client()?;
    // A DP from before TLS makes its certificate at its first start.
    if !cascade_protocol::tls::Identity::exists(dir) {
        let made = cascade_protocol::tls::make(dir, None)?;
        tracing::info!(certificate = %made, "made the dp's TLS certificate");
    }
    let tls = cascade_protocol::tls::Identity::load(dir)?;
    let acceptor = tls.acceptor()?;
    let dp = Dp {
        certificate: tls.fingerprint(),
        config: Arc::new(config.clone()),
        outbox: Outbox::new(db.clone()),
        db: db.clone(),
        store,
        site_key,
        client: client.clone(),
        status_wake: Arc::new(Notify::new()),
        repairs: Default::default(),
        repair_wake: Arc::new(Notify::new()),
        manifests: Default::default(),
        content_key: Arc::new(std::sync::RwLock::new(
            db::secret(&db, "content_key")
                .await?
                .and_then(|hex| cascade_protocol::ticket::ContentKey::from_hex(&hex)),
        )),
    };
    let listen = listen.unwrap_or(&config.listen);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(Error::io(format!("binding {listen}")))?;
    let addr = listener
        .local_addr()
        .map_err(Error::io("reading the bound address"))?;
    let url = cascade_protocol::url_for(addr);
    let url_path: PathBuf = dir.join(layout::URL);
    cascade_store::write_atomically(&url_path, format!("{url}\n").as_bytes(), 0o644)
        .map_err(Error::io(format!("writing {}", url_path.display())))?;
    on_ready(&Running {
        url: url.clone(),
        name: enrollment.name.clone(),
    });
    tracing::info!(dp = %enrollment.name, %url, site = %enrollment.site_url, "dp serving content");

    let (stop_tx, stop_rx) = watch::channel(false);
    let signer = enrollment
        .status_signer(format!("{}/dp/{}", enrollment.site_code, enrollment.name))
        .map_err(Error::Config)?;
    let forwarder = tokio::spawn(cascade_protocol::forward::forward_status(
        dp.outbox.clone(),
        client,
        signer,
        dp.status_wake.clone(),
        stop_rx.clone(),
    ));
    let syncer = tokio::spawn(sync::run(dp.clone(), url.clone(), stop_rx.clone()));
    let scrubber = tokio::spawn(scrub::run(dp.clone(), scrub_pass, stop_rx.clone()));
    let app = serve::router(dp.clone());
    let result = cascade_protocol::serve::serve(listener, app, limits, acceptor, async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    })
    .await
    .map_err(Error::io("serving HTTP"));
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        let _ = syncer.await;
        let _ = forwarder.await;
        let _ = scrubber.await;
    })
    .await;
    db.close().await;
    result
}

/// Announces the DP's content URL to its site (retried by the sync loop).
async fn hello(dp: &Dp, url: &str) -> Result<()> {
    dp.client
        .dp_hello(&DpHello {
            url: url.to_owned(),
            certificate: Some(dp.certificate.to_string()),
        })
        .await?;
    Ok(())
}
