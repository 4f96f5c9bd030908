//! The agent that runs on every managed workstation. It enrolls with its
//! site once (its own credential; the site may hold it for approval),
//! reports the workstation's attributes, and keeps a long poll open for its
//! policy, reconnecting at the site's poll interval with jitter so that a
//! fleet of agents does not poll in step.
//!
//! The run phase (jobs: download from a DP, verify, run, report) builds on
//! this loop.

mod cache;
mod execute;
mod freshness;
mod history;

use cascade_content::VerifyingKey;
use cascade_protocol::worker::{Step, Work, Worker};
use cascade_protocol::{
    intent, AgentEnrollRequest, AgentReport, Client, Enrollment, JobOffer, SignedIntent,
    StatusBody, Timestamp,
};
use cascade_store::{Db, NewDir, Outbox, OUTBOX_SCHEMA};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Files of an agent's data directory.
pub mod layout {
    /// Configuration and credential (mode 0600).
    pub const CONFIG: &str = "agent.json";
    /// The agent's durable store.
    pub const DB: &str = "agent.db";
    /// Chunks downloaded for jobs, kept so that a later version fetches only
    /// what changed.
    pub const CHUNKS: &str = "chunks";
    /// One directory per job, where its package is materialised and run.
    pub const JOBS: &str = "jobs";
}

/// Schema of the agent's store.
const MIGRATIONS: &[&str] = &[
    OUTBOX_SCHEMA,
    "CREATE TABLE state (key TEXT PRIMARY KEY, value TEXT NOT NULL);",
    // Jobs this agent was offered: the offer as received, and when it was
    // withdrawn (canceled or expired at the site).
    "CREATE TABLE jobs (
        id INTEGER PRIMARY KEY,
        offer TEXT NOT NULL,
        first_seen_ms INTEGER NOT NULL,
        withdrawn_at_ms INTEGER
    );",
    // Run bookkeeping: offered → requested (optional jobs) → done (complete
    // or failed for good: never run again), attempts so far, next retry.
    "ALTER TABLE jobs ADD COLUMN state TEXT NOT NULL DEFAULT 'offered';
     ALTER TABLE jobs ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE jobs ADD COLUMN next_attempt_at_ms INTEGER;",
    // Issue 10: state `running` (with `attempts` stored with the
    // `job_running` report) marks an attempt whose command was started; the
    // command's process group, to stop what a crash left behind.
    "ALTER TABLE jobs ADD COLUMN pgid INTEGER;",
    // Issue 13: the chunks each open job needs, kept whatever the cache's
    // budget (`cache.rs`).
    cache::SCHEMA,
    // Issue 14: what ran here, by program, for rerun rules.
    history::SCHEMA,
    // Issue 14: a job whose command asked for a reboot waits in state
    // `rebooting` for the boot to change: the boot it ran in, and its
    // command's exit code and output tail, for the report that ends it.
    "ALTER TABLE jobs ADD COLUMN boot_id TEXT;
     ALTER TABLE jobs ADD COLUMN exit_code INTEGER;
     ALTER TABLE jobs ADD COLUMN output_tail TEXT;",
];

/// Everything an agent can fail at.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Talking to the site failed.
    #[error(transparent)]
    Site(#[from] cascade_protocol::Error),
    /// The agent's store failed.
    #[error("agent store")]
    Db(#[from] cascade_store::Error),
    /// The agent is not set up as asked.
    #[error("{0}")]
    Config(String),
    /// A file operation failed.
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

/// Result with the agent [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

/// What `cascade agent init` stores.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Config {
    /// Name, site, credential, pinned site key.
    #[serde(flatten)]
    pub enrollment: Enrollment,
    /// Administrator-given tags.
    pub tags: BTreeMap<String, String>,
    /// The chunk cache's budget in bytes (`agent init --cache-size`);
    /// [`cache::DEFAULT_CACHE_BYTES`] when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_bytes: Option<u64>,
    /// Where the agent reads the identity of the current boot (`agent init
    /// --boot-id-file`); [`DEFAULT_BOOT_ID_FILE`] when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id_file: Option<std::path::PathBuf>,
}

/// Linux's identity of the current boot: a new one at every restart. A
/// job whose command asked for a reboot completes once it changed.
pub const DEFAULT_BOOT_ID_FILE: &str = "/proc/sys/kernel/random/boot_id";

/// What `init` may be told besides the enrollment.
#[derive(Clone, Debug, Default)]
pub struct InitOptions {
    /// The chunk cache's budget in bytes.
    pub cache_bytes: Option<u64>,
    /// Where the identity of the current boot is read.
    pub boot_id_file: Option<std::path::PathBuf>,
}

/// Parses `key=value` tags.
pub fn parse_tags(tags: &[String]) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for tag in tags {
        let (key, value) = tag
            .split_once('=')
            .ok_or_else(|| Error::Config(format!("tag {tag:?} is not key=value")))?;
        cascade_domain::validate_name("tag key", key)
            .map_err(|err| Error::Config(err.to_string()))?;
        if out.insert(key.to_owned(), value.to_owned()).is_some() {
            return Err(Error::Config(format!("tag {key} given twice")));
        }
    }
    Ok(out)
}

/// The workstation's attributes as reported to the site.
pub fn report(tags: &BTreeMap<String, String>) -> AgentReport {
    AgentReport {
        os: std::env::consts::OS.to_owned(),
        arch: std::env::consts::ARCH.to_owned(),
        hostname: hostname(),
        tags: tags.clone(),
    }
}

/// A workstation's attributes as a collection rule sees them (name and
/// site left empty).
fn attributes(report: &AgentReport) -> cascade_domain::rule::AgentAttributes {
    cascade_domain::rule::AgentAttributes {
        name: String::new(),
        site: String::new(),
        os: report.os.clone(),
        arch: report.arch.clone(),
        hostname: report.hostname.clone(),
        tags: report.tags.clone(),
    }
}

fn hostname() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}

/// What `init` did.
pub struct Enrolled {
    /// The configuration written.
    pub config: Config,
    /// False while the site waits for `cascade agent approve`.
    pub approved: bool,
}

/// Enrolls a new agent and creates its data directory (which must not exist
/// or be empty; nothing is left behind on failure).
pub async fn init(
    dir: &Path,
    site_url: &str,
    join_token: &str,
    name: &str,
    tags: &[String],
    options: InitOptions,
) -> Result<Enrolled> {
    cascade_domain::validate_name("agent name", name)
        .map_err(|err| Error::Config(err.to_string()))?;
    let tags = parse_tags(tags)?;
    let new_dir = NewDir::prepare(dir)
        .map_err(|err| Error::Config(format!("cannot create agent directory: {err}")))?;
    let db = Db::open(&new_dir.path().join(layout::DB), true, MIGRATIONS).await?;
    db.close().await;
    let client = cascade_protocol::client_for_token(site_url, join_token)?;
    let status_key = Enrollment::new_status_key();
    let enrolled = client
        .enroll_agent(&AgentEnrollRequest {
            name: name.to_owned(),
            join_token: join_token.trim().to_owned(),
            report: report(&tags),
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
        tags,
        cache_bytes: options.cache_bytes,
        boot_id_file: options.boot_id_file,
    };
    let text =
        serde_json::to_string_pretty(&config).map_err(|err| Error::Config(err.to_string()))?;
    let config_path = new_dir.path().join(layout::CONFIG);
    cascade_store::write_atomically(&config_path, text.as_bytes(), 0o600)
        .map_err(io("writing agent.json"))?;
    new_dir
        .commit()
        .map_err(io(format!("moving the new agent into {}", dir.display())))?;
    Ok(Enrolled {
        config,
        approved: enrolled.approved,
    })
}

/// Records the jobs of a policy. Each offer must carry the central site's
/// signed intent, verified against the key pinned at enrollment and matching
/// it in every field (`intent::verify_offer`); one that does not is refused
/// and reported as `job_refused` (once per reason, in `refused`), and
/// nothing of it is stored or run. When a valid offer of that job is held
/// already, an altered or older copy is refused with a warning only: a site
/// must not turn a run's reported state into `refused`. New offers are
/// stored and reported as `job_offered` in the same transaction; a newer
/// revision of a held job's intent replaces the held offer; stored offers
/// missing from the policy are withdrawn. Returns whether anything was
/// reported.
async fn apply_policy(
    db: &Db,
    jobs: &[JobOffer],
    key: &VerifyingKey,
    me: &cascade_domain::rule::AgentAttributes,
    refused: &mut HashSet<(u64, String)>,
) -> Result<bool> {
    let now = cascade_store::now_ms();
    let mut tx = db.write().await?;
    let mut reported = false;
    let mut refusals = Vec::new();
    for offer in jobs {
        let held: Option<String> = sqlx::query_scalar("SELECT offer FROM jobs WHERE id = ?")
            .bind(offer.id as i64)
            .fetch_optional(&mut *tx.tx)
            .await
            .map_err(cascade_store::Error::from)?;
        // The held offer, and its intent if it still verifies.
        let stored = held.is_some();
        let held: Option<JobOffer> = held.and_then(|text| serde_json::from_str(&text).ok());
        let held_intent = held
            .as_ref()
            .and_then(|held| intent::verify_offer(held, key).ok());
        let held_revision = held_intent.as_ref().map_or(0, |held| held.revision);
        let signed = intent::verify_offer(offer, key);
        let newer = signed
            .as_ref()
            .is_ok_and(|signed| signed.revision > held_revision);
        let verified = signed.and_then(|intent| intent.check_target(me).map(|()| intent));
        let intent = match verified {
            Ok(intent) => intent,
            // A newer revision the central site signed that no longer
            // targets this workstation (its collection changed): the held
            // one must not run, so the job is withdrawn here.
            Err(intent::IntentError::NotTargeted(_)) if held_intent.is_some() && newer => {
                let text =
                    serde_json::to_string(offer).map_err(|err| Error::Config(err.to_string()))?;
                sqlx::query(
                    "UPDATE jobs SET offer = ?, withdrawn_at_ms = COALESCE(withdrawn_at_ms, ?)
                     WHERE id = ?",
                )
                .bind(text)
                .bind(now)
                .bind(offer.id as i64)
                .execute(&mut *tx.tx)
                .await
                .map_err(cascade_store::Error::from)?;
                tracing::info!(
                    job = offer.id,
                    "job no longer targets this workstation; withdrawn"
                );
                continue;
            }
            // A valid offer of the job is held: the altered copy changes
            // nothing here, and is not reported as the run's state (it
            // would hide what the run did).
            Err(err) if held_intent.is_some() => {
                tracing::warn!(job = offer.id, error = %err, "ignored an altered copy of a job already held");
                continue;
            }
            Err(err) => {
                refusals.push((offer, err));
                continue;
            }
        };
        let text = serde_json::to_string(offer).map_err(|err| Error::Config(err.to_string()))?;
        if stored {
            if held.as_ref().and_then(|held| held.intent.as_ref()) == offer.intent.as_ref() {
                continue;
            }
            if intent.revision <= held_revision {
                // Refused, and not reported as the run's state: the held
                // offer stays what the run follows.
                let err = intent::IntentError::Older {
                    held: held_revision,
                    got: intent.revision,
                };
                tracing::warn!(job = offer.id, error = %err, "ignored an older intent of a job already held");
                continue;
            }
            // A job withdrawn here and offered again under a newer
            // revision (its expiry moved, its collection took this
            // workstation back) is open again, unless it ran.
            sqlx::query(
                "UPDATE jobs SET offer = ?,
                        withdrawn_at_ms = CASE WHEN state = 'done' THEN withdrawn_at_ms END
                 WHERE id = ?",
            )
            .bind(text)
            .bind(offer.id as i64)
            .execute(&mut *tx.tx)
            .await
            .map_err(cascade_store::Error::from)?;
            tracing::info!(
                job = offer.id,
                revision = intent.revision,
                "job revised by the central site"
            );
            continue;
        }
        sqlx::query("INSERT INTO jobs (id, offer, first_seen_ms) VALUES (?, ?, ?)")
            .bind(offer.id as i64)
            .bind(text)
            .bind(now)
            .execute(&mut *tx.tx)
            .await
            .map_err(cascade_store::Error::from)?;
        let body = StatusBody::JobOffered {
            job: offer.id,
            package: offer.package.clone(),
        };
        let body = serde_json::to_string(&body).map_err(|err| Error::Config(err.to_string()))?;
        Outbox::push_in(&mut tx, now, &body).await?;
        reported = true;
        tracing::info!(job = offer.id, package = %offer.package, optional = offer.optional, "job offered");
    }
    for (offer, err) in refusals {
        let reason = format!("the offer was refused: {err}");
        tracing::warn!(job = offer.id, package = %offer.package, %reason, "job refused");
        if !refused.insert((offer.id, reason.clone())) {
            continue;
        }
        let body = StatusBody::JobRefused {
            job: offer.id,
            package: offer.package.clone(),
            reason,
        };
        let body = serde_json::to_string(&body).map_err(|err| Error::Config(err.to_string()))?;
        Outbox::push_in(&mut tx, now, &body).await?;
        reported = true;
    }
    let offered: Vec<i64> = jobs.iter().map(|offer| offer.id as i64).collect();
    let active: Vec<i64> = sqlx::query_scalar("SELECT id FROM jobs WHERE withdrawn_at_ms IS NULL")
        .fetch_all(&mut *tx.tx)
        .await
        .map_err(cascade_store::Error::from)?;
    for id in active.into_iter().filter(|id| !offered.contains(id)) {
        sqlx::query("UPDATE jobs SET withdrawn_at_ms = ? WHERE id = ?")
            .bind(now)
            .bind(id)
            .execute(&mut *tx.tx)
            .await
            .map_err(cascade_store::Error::from)?;
        tracing::info!(job = id, "job withdrawn");
    }
    tx.commit().await?;
    Ok(reported)
}

/// The jobs whose cancellation the central site signed, among those a
/// policy lists (one that does not verify is ignored, with a warning).
fn verified_cancels(canceled: &[SignedIntent], key: &VerifyingKey) -> HashSet<u64> {
    canceled
        .iter()
        .filter_map(|signed| match signed.verify_cancel(key) {
            Ok(cancel) => Some(cancel.job),
            Err(err) => {
                tracing::warn!(error = %err, "a cancellation in the policy was ignored");
                None
            }
        })
        .collect()
}

/// The jobs canceled: `signed` (the policy's signed cancellations) and
/// those the newest timestamp held names.
fn canceled_by(mut signed: HashSet<u64>, timestamp: Option<&Timestamp>) -> HashSet<u64> {
    signed.extend(
        timestamp
            .iter()
            .flat_map(|held| held.canceled.iter().copied()),
    );
    signed
}

/// The offers this workstation holds now (read from the agent's store,
/// without the site): not withdrawn and not past their expiry by the local
/// clock, which the agent enforces even while it cannot reach its site.
pub async fn offers(dir: &Path) -> Result<Vec<JobOffer>> {
    let db = Db::open(&dir.join(layout::DB), false, MIGRATIONS).await?;
    let rows: Vec<String> =
        sqlx::query_scalar("SELECT offer FROM jobs WHERE withdrawn_at_ms IS NULL ORDER BY id")
            .fetch_all(db.pool())
            .await
            .map_err(cascade_store::Error::from)?;
    db.close().await;
    let now = cascade_store::now_ms();
    rows.iter()
        .map(|text| {
            serde_json::from_str::<JobOffer>(text)
                .map_err(|err| Error::Config(format!("stored offer is damaged: {err}")))
        })
        .filter(|offer| {
            offer
                .as_ref()
                .map_or(true, |offer| offer.expires_at_ms.is_none_or(|at| at > now))
        })
        .collect()
}

/// `cascade agent run-offer`: asks the running agent to run an optional
/// offer it holds.
pub async fn run_offer(dir: &Path, job: u64) -> Result<()> {
    let db = Db::open(&dir.join(layout::DB), false, MIGRATIONS).await?;
    let result = execute::request(&db, job).await;
    db.close().await;
    result
}

/// Database connections the running agent keeps: few, to stay small.
const AGENT_CONNECTIONS: u32 = 2;

/// The policy poll's state between its steps.
struct Poll<'a> {
    config: &'a Config,
    client: &'a Client,
    db: &'a Db,
    sources: &'a tokio::sync::Mutex<execute::Sources>,
    canceled: &'a tokio::sync::watch::Sender<Arc<HashSet<u64>>>,
    /// The newest timestamp held, for the executor.
    timestamp: &'a tokio::sync::watch::Sender<Option<Timestamp>>,
    /// Wakes the forwarder (offers were reported).
    wake: &'a tokio::sync::Notify,
    /// Wakes the executor (the offers may have changed).
    nudge: &'a tokio::sync::Notify,
    /// The policy revision held.
    revision: u64,
    /// How long a poll is held, as the site says.
    interval: Duration,
    /// Whether the site has the attributes since it last answered.
    announced: bool,
    approved: Option<bool>,
    /// The central site's key, pinned at enrollment.
    key: &'a VerifyingKey,
    /// Refusals reported, so that each is reported once.
    refused: HashSet<(u64, String)>,
}

impl Work for Poll<'_> {
    type Error = cascade_protocol::Error;

    /// One policy poll, held open for about one poll interval (set by the
    /// site) with ±10% jitter, and what it answered recorded. While the
    /// site is unreachable, the worker's jittered backoff spaces the polls.
    async fn step(&mut self) -> std::result::Result<Step, cascade_protocol::Error> {
        if !self.announced {
            match self.client.agent_hello(&report(&self.config.tags)).await {
                Ok(()) => self.announced = true,
                Err(err) => {
                    tracing::warn!(error = %cascade_protocol::chain(&err), "cannot report to the site yet")
                }
            }
        }
        let jitter = rand::random::<f64>() * 0.2 - 0.1;
        let wait = self.interval.mul_f64(1.0 + jitter);
        let policy = match self.client.agent_policy(self.revision, wait).await {
            Ok(policy) => policy,
            Err(err) => {
                self.announced = false;
                return Err(err);
            }
        };
        self.revision = policy.revision;
        self.interval = Duration::from_millis(policy.poll_interval_ms.max(1000));
        *self.sources.lock().await = execute::Sources::of(&policy);
        if let Some(offered) = &policy.timestamp {
            let held = self.timestamp.borrow().clone();
            match freshness::accept(self.db, self.key, offered, held.clone()).await {
                Ok(now_held) if now_held != held => {
                    self.timestamp.send_replace(now_held);
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(error = %cascade_protocol::chain(&err), "recording the timestamp failed")
                }
            }
        }
        // The policy's signed cancellations, and those the newest
        // timestamp names (which a site cannot withhold).
        let canceled = canceled_by(
            verified_cancels(&policy.canceled, self.key),
            self.timestamp.borrow().as_ref(),
        );
        if **self.canceled.borrow() != canceled {
            self.canceled.send_replace(Arc::new(canceled));
        }
        let me = cascade_domain::rule::AgentAttributes {
            name: self.config.enrollment.name.clone(),
            site: self.config.enrollment.site_code.clone(),
            ..attributes(&report(&self.config.tags))
        };
        match apply_policy(self.db, &policy.jobs, self.key, &me, &mut self.refused).await {
            Ok(true) => {
                self.wake.notify_one();
                self.nudge.notify_one();
            }
            Ok(false) => self.nudge.notify_one(),
            Err(err) => {
                // Ask again at once rather than wait for the next change.
                self.revision = 0;
                tracing::warn!(error = %cascade_protocol::chain(&err), "recording the policy failed; will retry");
            }
        }
        if self.approved != Some(policy.approved) {
            self.approved = Some(policy.approved);
            if policy.approved {
                tracing::info!("approved by the site");
            } else {
                tracing::info!(
                    "waiting for approval: `cascade agent approve {}`",
                    self.config.enrollment.name
                );
            }
        }
        Ok(Step::Again)
    }
}

/// Runs the agent in `dir` until `shutdown` resolves.
pub async fn run(dir: &Path, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
    let config: Config =
        cascade_protocol::read_config(&dir.join(layout::CONFIG), "cascade agent init")
            .map_err(Error::Config)?;
    let enrollment = &config.enrollment;
    let db = Db::open_with(&dir.join(layout::DB), false, MIGRATIONS, AGENT_CONNECTIONS).await?;
    let client = enrollment.client()?;
    tracing::info!(agent = %enrollment.name, site = %enrollment.site_url, "agent running");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let wake = Arc::new(tokio::sync::Notify::new());
    let signer = enrollment
        .status_signer(format!(
            "{}/agent/{}",
            enrollment.site_code, enrollment.name
        ))
        .map_err(Error::Config)?;
    let forwarder = tokio::spawn(cascade_protocol::forward::forward_status(
        Outbox::new(db.clone()),
        client.clone(),
        signer,
        wake.clone(),
        stop_rx.clone(),
    ));
    let key = cascade_content::public_key_from_hex(&enrollment.site_public_key)
        .map_err(|err| Error::Config(format!("agent.json holds a bad site key: {err}")))?;
    let sources = Arc::new(tokio::sync::Mutex::new(execute::Sources::default()));
    let store = cascade_content::ChunkStore::open(&dir.join(layout::CHUNKS))
        .map_err(|err| Error::Config(format!("opening the chunk store: {err}")))?;
    if !store.opened().is_clean() {
        tracing::warn!(report = %store.opened(), "the chunk store needed care when opened");
    }
    let timestamp = freshness::load(&db, &key).await?;
    let (canceled_tx, canceled_rx) =
        tokio::sync::watch::channel(Arc::new(canceled_by(HashSet::new(), timestamp.as_ref())));
    let (timestamp_tx, timestamp_rx) = tokio::sync::watch::channel(timestamp);
    let nudge = Arc::new(tokio::sync::Notify::new());
    let executor = execute::Executor {
        name: enrollment.name.clone(),
        dir: dir.to_owned(),
        db: db.clone(),
        client: client.clone(),
        site_key: key,
        store: store.clone(),
        sources: sources.clone(),
        wake: wake.clone(),
        nudge: nudge.clone(),
        http: Default::default(),
        canceled: canceled_rx,
        timestamp: timestamp_rx,
        held: Default::default(),
        waits: Default::default(),
        reported: Default::default(),
        cache_bytes: config.cache_bytes.unwrap_or(cache::DEFAULT_CACHE_BYTES),
        boot: execute::Boot::read(
            config
                .boot_id_file
                .clone()
                .unwrap_or_else(|| DEFAULT_BOOT_ID_FILE.into()),
        ),
        window_reported: Default::default(),
    };
    let executor = tokio::spawn(executor.run(stop_rx));
    // The poll ends when `shutdown` resolves; the executor and the
    // forwarder after it.
    let (poll_stop_tx, poll_stop) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = poll_stop_tx.send(true);
    });
    Worker::new("polling the site for the policy", poll_stop)
        .run(Poll {
            config: &config,
            client: &client,
            db: &db,
            sources: &sources,
            canceled: &canceled_tx,
            timestamp: &timestamp_tx,
            wake: &wake,
            nudge: &nudge,
            revision: 0,
            interval: Duration::from_secs(60),
            announced: false,
            approved: None,
            key: &key,
            refused: HashSet::new(),
        })
        .await;
    let _ = stop_tx.send(true);
    let _ = executor.await;
    let _ = forwarder.await;
    db.close().await;
    Ok(())
}
