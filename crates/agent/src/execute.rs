//! The run phase on the workstation: for every due offer, download the
//! package from a DP (only the chunks not already held), verify the signed
//! manifest and every chunk, materialise the files in a job directory, run
//! the command with the job's timeout, and report each step.
//!
//! What ends a run (issue 10): sources that are unavailable (a site or DP
//! down, content not on a DP yet) are waited for with backoff until the
//! attempt's deadline (its timeout) or the job's expiry, never a failure;
//! only content proven bad from every source, or the deadline, ends the
//! download. A cancel stops the work in flight (the command's process
//! group gets SIGTERM, then SIGKILL after [`STOP_GRACE`]) and reports
//! `job_stopped`; expiry lets a running command finish within its timeout
//! but stops a download (the command never starts after expiry). An agent
//! that crashed while a command ran reports `job_interrupted` when it
//! starts again, and reruns only if the job's retries allow: the attempt
//! number is stored with the `job_running` report, before the command
//! starts.
//!
//! **Architecture Invariant:** nothing runs that failed verification: the
//! manifest is checked against the site key pinned at enrollment and every
//! chunk against its hash before `materialize` writes a byte.

use crate::{history, Error, Result};
use cascade_content::{ChunkStore, Manifest, VerifyingKey};
use cascade_domain::backoff::Backoff;
use cascade_domain::run::{PastOutcome, RerunRule};
use cascade_domain::window::{self, WindowVerdict};
use cascade_protocol::intent::JobIntent;
use cascade_protocol::intent::{Freshness, Timestamp};
use cascade_protocol::tls::Fingerprint;
use cascade_protocol::worker::{Step, Work, Worker};
use cascade_protocol::{Client, JobOffer, StatusBody, WindowSpec};
use cascade_store::{now_ms, Db, Outbox};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::sync::{watch, Mutex, Notify};
use tokio::time::Instant;

/// What the executor needs.
pub struct Executor {
    /// The workstation's name, given to commands as `CASCADE_AGENT`.
    pub name: String,
    pub dir: PathBuf,
    pub db: Db,
    pub client: Client,
    pub site_key: VerifyingKey,
    pub store: ChunkStore,
    /// Where to download from, from the latest policy.
    pub sources: Arc<Mutex<Sources>>,
    /// Wakes the status forwarder.
    pub wake: Arc<Notify>,
    /// Wakes the executor (new policy, a requested offer).
    pub nudge: Arc<Notify>,
    /// The clients for DPs' content servers, one per pinned certificate.
    pub http: DpClients,
    /// The jobs the site says were canceled (from the latest policy).
    pub canceled: watch::Receiver<Arc<HashSet<u64>>>,
    /// The newest timestamp the central site signed that the agent holds
    /// (`freshness.rs`): no job starts while it is not current.
    pub timestamp: watch::Receiver<Option<Timestamp>>,
    /// Jobs reported held, with the timestamp held then (when it was
    /// signed): each is reported once per timestamp.
    pub held: std::sync::Mutex<HashSet<(u64, Option<i64>)>>,
    /// Downloads waiting for their sources, in memory: when the attempt
    /// began (its deadline counts from there) and its backoff.
    pub waits: std::sync::Mutex<HashMap<u64, Wait>>,
    /// Sources' failures already reported per job (job, source, error):
    /// a source down for an hour is reported once, not once per retry.
    pub reported: std::sync::Mutex<HashSet<(u64, String, String)>>,
    /// The chunk cache's budget (`cache.rs`).
    pub cache_bytes: u64,
    /// The identity of the boot the agent runs in.
    pub boot: Boot,
    /// Jobs reported waiting for a maintenance window, with the opening
    /// reported: each is reported once per opening.
    pub window_reported: std::sync::Mutex<HashSet<(u64, Option<i64>)>>,
}

/// A run to resume, as stored: its offer, state, attempts, the boot its
/// command ran in, the command's exit code and output tail, and the
/// process group of a check under way.
type ResumedRow = (
    String,
    String,
    i64,
    Option<String>,
    Option<i64>,
    Option<String>,
    Option<i64>,
);

/// The identity of the current boot, read once when the agent starts: a
/// job whose command asked for a reboot (one of its reboot codes) waits
/// in state `rebooting` until an agent starts in another boot.
pub struct Boot {
    id: std::result::Result<String, String>,
}

impl Boot {
    /// Reads the boot's identity from `file` (Linux's
    /// `/proc/sys/kernel/random/boot_id`, unless the agent was told
    /// another); what went wrong, if it cannot.
    pub fn read(file: PathBuf) -> Boot {
        let id = match std::fs::read_to_string(&file) {
            Ok(text) if !text.trim().is_empty() => Ok(text.trim().to_owned()),
            Ok(_) => Err(format!("{} is empty", file.display())),
            Err(err) => Err(format!("reading {}: {err}", file.display())),
        };
        if let Err(why) = &id {
            tracing::warn!(%why, "the boot's identity is unknown: jobs asking for a reboot will fail");
        }
        Boot { id }
    }
}

/// A download waiting for its sources to come back.
pub struct Wait {
    started: Instant,
    backoff: Backoff,
}

/// Content sources from the latest policy: DP URLs change when DPs
/// restart, so they are taken from the policy, not from the stored offer.
#[derive(Default)]
pub struct Sources {
    /// Every DP of the site.
    site_dps: Vec<String>,
    /// Per job: the DPs it distributes to at this site.
    jobs: std::collections::HashMap<u64, Vec<String>>,
    /// The content ticket to present to them (and to the site).
    ticket: Option<String>,
    /// Each DP's certificate, by URL (from the policy).
    certificates: HashMap<String, Fingerprint>,
}

impl Sources {
    /// The sources a policy names.
    pub fn of(policy: &cascade_protocol::AgentPolicy) -> Sources {
        Sources {
            site_dps: policy.dps.clone(),
            jobs: policy
                .jobs
                .iter()
                .map(|offer| (offer.id, offer.dps.clone()))
                .collect(),
            ticket: policy.content_ticket.clone(),
            certificates: policy
                .dp_certificates
                .iter()
                .filter_map(|(url, hex)| Some((url.clone(), Fingerprint::parse(hex)?)))
                .collect(),
        }
    }

    /// The certificate to pin for source `url`: the site's own for the
    /// site, the policy's for a DP (none: the web's roots decide).
    fn pin(&self, url: &str, site: &Client) -> Option<Fingerprint> {
        if url == site.base() {
            return site.pin();
        }
        self.certificates.get(url).copied()
    }

    /// Where to fetch a job's chunks, in order: the DPs the job
    /// distributes to here, then the site server itself, which holds the
    /// content of every job that targets its workstations (a site without
    /// a DP in the job's DP group, or DPs still receiving it).
    fn for_job(&self, offer: &JobOffer, site: &str) -> Vec<String> {
        let mut sources = match self.jobs.get(&offer.id) {
            Some(dps) => dps.clone(),
            None if !offer.dps.is_empty() => offer.dps.clone(),
            None => self.site_dps.clone(),
        };
        sources.push(site.to_owned());
        sources
    }
}

struct Due {
    offer: JobOffer,
    attempts: u32,
}

/// Bytes of output kept for the status report.
const OUTPUT_TAIL: usize = 4096;

/// How long a command stopped on cancel (or at its timeout) has between
/// SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// How long to wait for a command's output pipes to close after it ended
/// (a process it left in the background may hold them open).
const PIPE_GRACE: Duration = Duration::from_secs(2);

/// Progress reports while downloading: at most one per this interval.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// Backoff while download sources are unavailable.
fn source_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(500), Duration::from_secs(15), 0.5)
}

/// Why a download did not deliver the manifest and every chunk.
enum Fetch {
    /// No source could serve it now (down, unreachable, not holding it
    /// yet): wait and try again.
    Unavailable(String),
    /// The content was proven bad from every source, or a local failure:
    /// the attempt fails.
    Failed(String),
}

impl From<Error> for Fetch {
    fn from(err: Error) -> Fetch {
        Fetch::Failed(err.to_string())
    }
}

/// What stopped work in flight before it ended on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Interruption {
    /// The attempt's deadline (the job's timeout) passed.
    TimedOut,
    /// The job expired (by the local clock).
    Expired,
    /// The site says the job was canceled.
    Canceled,
}

/// The job's row after a report, and what it records of the run
/// (`history.rs`).
struct NewState {
    state: &'static str,
    next_at: Option<i64>,
    attempts: u32,
    run: Option<history::Entry>,
}

/// Resolves once `job` is in the canceled set.
async fn canceled(mut canceled: watch::Receiver<Arc<HashSet<u64>>>, job: u64) {
    loop {
        if canceled.borrow_and_update().contains(&job) {
            return;
        }
        if canceled.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Resolves at `at`, or never.
async fn until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The instant of a wall-clock time in ms.
fn instant_at(at_ms: i64) -> Instant {
    let now = now_ms();
    Instant::now() + Duration::from_millis(at_ms.saturating_sub(now).max(0) as u64)
}

/// The job runner's step: the next due job, run, if any.
struct DueJobs<'a> {
    executor: &'a Executor,
    /// Whether the runs a crash interrupted are reported.
    recovered: bool,
    /// When the disk was last tidied, and whether an attempt ran since.
    tidied_at: Option<Instant>,
    attempted: bool,
    /// When the finished jobs were last counted, and how many there were.
    checked_at: Option<Instant>,
    finished: Option<(i64, i64)>,
}

/// How often an idle agent counts its finished jobs (done, withdrawn or
/// expired: one query), to tidy its disk when the count changes.
const TIDY_CHECK: Duration = Duration::from_secs(2);
/// Longest an idle agent goes without tidying its disk anyway.
const TIDY_EVERY: Duration = Duration::from_secs(3600);

impl Work for DueJobs<'_> {
    type Error = Error;

    /// First (until it succeeds) reports the runs a crash interrupted; then
    /// stops withdrawn downloads and runs the next due job. A failure is
    /// retried after the worker's backoff.
    async fn step(&mut self) -> Result<Step> {
        let executor = self.executor;
        if !self.recovered {
            executor.recover_interrupted().await?;
            executor.resume_runs().await?;
            self.recovered = true;
        }
        if let Err(err) = executor.stop_abandoned_waits().await {
            tracing::warn!(error = %cascade_protocol::chain(&err), "stopping withdrawn downloads failed");
        }
        match executor.next_due().await? {
            Some(due) => {
                executor.attempt(due).await?;
                self.attempted = true;
                Ok(Step::Again)
            }
            None => {
                // Idle, so no download is under way: tidy the disk when
                // an attempt ran or a job finished since the last time.
                let check =
                    self.attempted || self.checked_at.is_none_or(|at| at.elapsed() >= TIDY_CHECK);
                if !check {
                    return Ok(Step::Idle);
                }
                self.checked_at = Some(Instant::now());
                let Ok(finished) = crate::cache::finished_jobs(&executor.db, now_ms()).await else {
                    return Ok(Step::Idle);
                };
                let due = self.attempted
                    || self.finished != Some(finished)
                    || self.tidied_at.is_none_or(|at| at.elapsed() >= TIDY_EVERY);
                if due {
                    // A failure is logged, never in the way of due jobs.
                    match crate::cache::tidy(
                        &executor.db,
                        &executor.dir,
                        &executor.store,
                        executor.cache_bytes,
                    )
                    .await
                    {
                        Ok(tidied) if tidied != Default::default() => tracing::info!(
                            job_dirs = tidied.job_dirs,
                            chunks = tidied.chunks,
                            bytes = tidied.bytes,
                            "disk tidied"
                        ),
                        Ok(_) => {}
                        Err(err) => tracing::warn!(
                            error = %cascade_protocol::chain(&err),
                            "tidying the disk failed; will try again"
                        ),
                    }
                    self.tidied_at = Some(Instant::now());
                    self.attempted = false;
                    self.finished = Some(finished);
                }
                Ok(Step::Idle)
            }
        }
    }
}

impl Executor {
    /// Runs due jobs, one at a time, until `stop`, as a [`Worker`]: again
    /// at once after each attempt, and when none is due on a nudge or
    /// after a second. A run in progress at shutdown is let finish.
    pub async fn run(self, stop: watch::Receiver<bool>) {
        Worker::new("running due jobs", stop)
            .woken_by(&self.nudge)
            .idle(Duration::from_secs(1))
            .finish_step_at_shutdown()
            .run(DueJobs {
                executor: &self,
                recovered: false,
                tidied_at: None,
                attempted: false,
                checked_at: None,
                finished: None,
            })
            .await
    }

    /// Reports every run that was in progress when the agent stopped last
    /// (state `running`): `job_interrupted`, with a retry only if the
    /// job's policy allows one. Whatever the command left running is
    /// killed first.
    async fn recover_interrupted(&self) -> Result<()> {
        let rows: Vec<(String, i64, Option<i64>, Option<i64>)> = sqlx::query_as(
            "SELECT offer, attempts, pgid, withdrawn_at_ms FROM jobs WHERE state = 'running'",
        )
        .fetch_all(self.db.pool())
        .await
        .map_err(cascade_store::Error::from)?;
        for (text, attempts, pgid, withdrawn) in rows {
            let offer: JobOffer = serde_json::from_str(&text)
                .map_err(|err| Error::Config(format!("stored offer is damaged: {err}")))?;
            if let Some(pgid) = pgid {
                kill_leftover(pgid as i32, offer.id, &self.name);
            }
            let attempt = attempts as u32;
            let expired = offer.expires_at_ms.is_some_and(|at| at <= now_ms());
            let retrying = attempt <= offer.retries && withdrawn.is_none() && !expired;
            let reason = format!(
                "interrupted: the agent stopped while attempt {attempt} ran; how the command ended is unknown"
            );
            tracing::warn!(
                job = offer.id,
                attempt,
                retrying,
                "a run was interrupted by a crash"
            );
            let state = if retrying {
                NewState {
                    state: waiting_state(&offer),
                    next_at: Some(now_ms() + offer.retry_delay_ms as i64),
                    attempts: attempt,
                    run: Some(history::Entry::Ended { succeeded: false }),
                }
            } else {
                NewState {
                    state: "done",
                    next_at: None,
                    attempts: attempt,
                    run: Some(history::Entry::Ended { succeeded: false }),
                }
            };
            self.report(
                &offer,
                StatusBody::JobInterrupted {
                    job: offer.id,
                    package: offer.package.clone(),
                    attempt,
                    of: offer.retries + 1,
                    retrying,
                    reason,
                },
                Some(state),
            )
            .await?;
        }
        Ok(())
    }

    /// Downloads waiting for their sources whose job was withdrawn
    /// (canceled or expired) meanwhile: reported stopped, since they never
    /// come due again.
    async fn stop_abandoned_waits(&self) -> Result<()> {
        let waiting: Vec<u64> = self
            .waits
            .lock()
            .expect("waits lock")
            .keys()
            .copied()
            .collect();
        for job in waiting {
            let row: Option<(String, i64, Option<i64>)> =
                sqlx::query_as("SELECT offer, attempts, withdrawn_at_ms FROM jobs WHERE id = ?")
                    .bind(job as i64)
                    .fetch_optional(self.db.pool())
                    .await
                    .map_err(cascade_store::Error::from)?;
            let Some((text, attempts, withdrawn)) = row else {
                continue;
            };
            let offer: JobOffer = serde_json::from_str(&text)
                .map_err(|err| Error::Config(format!("stored offer is damaged: {err}")))?;
            let why = if self.canceled.borrow().contains(&job) {
                Interruption::Canceled
            } else if withdrawn.is_some() || offer.expires_at_ms.is_some_and(|at| at <= now_ms()) {
                Interruption::Expired
            } else {
                continue;
            };
            self.waits.lock().expect("waits lock").remove(&job);
            self.stop_before_command(&offer, attempts as u32, why)
                .await?;
        }
        Ok(())
    }

    /// Reports that the job's work stopped before its command started.
    async fn stop_before_command(
        &self,
        offer: &JobOffer,
        attempts: u32,
        why: Interruption,
    ) -> Result<()> {
        let expired = offer.expires_at_ms.is_some_and(|at| at <= now_ms());
        let reason = match why {
            Interruption::Canceled => "canceled before the command started",
            _ if expired => "expired before the command started",
            // Withdrawn by the site without a cancel: it expired there
            // first, or the workstation left the job's collection.
            _ => "withdrawn before the command started",
        };
        tracing::info!(job = offer.id, reason, "job stopped");
        self.report(
            offer,
            StatusBody::JobStopped {
                job: offer.id,
                package: offer.package.clone(),
                attempt: attempts,
                reason: reason.to_owned(),
                output_tail: String::new(),
            },
            Some(NewState {
                state: "done",
                next_at: None,
                attempts,
                run: None,
            }),
        )
        .await
    }

    async fn next_due(&self) -> Result<Option<Due>> {
        let rows: Vec<(String, String, i64, Option<i64>)> = sqlx::query_as(
            "SELECT offer, state, attempts, next_attempt_at_ms FROM jobs
             WHERE withdrawn_at_ms IS NULL AND state IN ('offered', 'requested') ORDER BY id",
        )
        .fetch_all(self.db.pool())
        .await
        .map_err(cascade_store::Error::from)?;
        let now = now_ms();
        for (text, state, attempts, next_at) in rows {
            let offer: JobOffer = serde_json::from_str(&text)
                .map_err(|err| Error::Config(format!("stored offer is damaged: {err}")))?;
            // Verified again before it runs: agent.db is not trusted either.
            let intent = match cascade_protocol::intent::verify_offer(&offer, &self.site_key) {
                Ok(intent) => intent,
                Err(err) => {
                    self.refuse_stored(&offer, attempts as u32, err).await?;
                    continue;
                }
            };
            let expired = offer.expires_at_ms.is_some_and(|at| at <= now);
            let waiting = offer.optional && state != "requested";
            if expired || waiting || offer.offer_at_ms > now || next_at.is_some_and(|at| at > now) {
                continue;
            }
            // Due; but nothing starts on instructions not known current.
            if self.hold(&offer, now).await? {
                continue;
            }
            // First due: does the same program's history here rule it
            // out? A job the workstation requested runs regardless.
            if attempts == 0 && !offer.optional {
                let rule = intent.rerun;
                if let Some((previous_job, previous)) =
                    history::rules_out(&self.db, &offer, rule).await?
                {
                    self.skip(&offer, rule, previous_job, previous).await?;
                    continue;
                }
            }
            // A mandatory job starts only inside a maintenance window
            // with room for its timeout.
            if !offer.optional && self.outside_window(&offer, &intent, now).await? {
                continue;
            }
            return Ok(Some(Due {
                offer,
                attempts: attempts as u32,
            }));
        }
        Ok(None)
    }

    /// Reports a stored offer refused (it no longer verifies: agent.db was
    /// altered) and marks its job done.
    async fn refuse_stored(
        &self,
        offer: &JobOffer,
        attempts: u32,
        err: cascade_protocol::intent::IntentError,
    ) -> Result<()> {
        let reason = format!("the stored offer was refused: {err}");
        tracing::warn!(job = offer.id, %reason, "job refused");
        self.report(
            offer,
            StatusBody::JobRefused {
                job: offer.id,
                package: offer.package.clone(),
                reason,
            },
            Some(NewState {
                state: "done",
                next_at: None,
                attempts,
                run: None,
            }),
        )
        .await
    }

    /// Reports `offer` skipped: the same program ended as `previous` here
    /// in job `previous_job`, and `rule` says not again.
    async fn skip(
        &self,
        offer: &JobOffer,
        rule: RerunRule,
        previous_job: u64,
        previous: PastOutcome,
    ) -> Result<()> {
        tracing::info!(job = offer.id, %rule, previous_job, ?previous, "job not run again (rerun rule)");
        self.report(
            offer,
            StatusBody::JobSkipped {
                job: offer.id,
                package: offer.package.clone(),
                rule,
                previous_job,
                previous_succeeded: previous == PastOutcome::Succeeded,
            },
            Some(NewState {
                state: "done",
                next_at: None,
                attempts: 0,
                run: None,
            }),
        )
        .await
    }

    /// Whether `offer` must wait for a maintenance window at `now` (its
    /// signed windows, unless it may run at any time); reports when the
    /// next one with room for its timeout opens, once per opening time.
    async fn outside_window(&self, offer: &JobOffer, intent: &JobIntent, now: i64) -> Result<bool> {
        if intent.any_time || intent.windows.is_empty() {
            return Ok(false);
        }
        let windows: std::result::Result<Vec<_>, String> =
            intent.windows.iter().map(WindowSpec::resolve).collect();
        let timeout = intent.timeout_ms.unwrap_or(0) as i64;
        let (verdict, reason) = match windows {
            Ok(windows) => (window::may_start(&windows, now, timeout), None),
            Err(why) => {
                tracing::warn!(job = offer.id, %why, "a maintenance window cannot be read here; the job waits");
                (
                    WindowVerdict::Never,
                    Some(format!("a maintenance window cannot be read here: {why}")),
                )
            }
        };
        let opens_at = match verdict {
            WindowVerdict::Open => return Ok(false),
            WindowVerdict::OpensAt(at) => Some(at),
            WindowVerdict::Never => None,
        };
        let first = self
            .window_reported
            .lock()
            .expect("window lock")
            .insert((offer.id, opens_at));
        if first {
            tracing::info!(
                job = offer.id,
                ?opens_at,
                "job waits for a maintenance window"
            );
            let body = StatusBody::JobWaitingForWindow {
                job: offer.id,
                package: offer.package.clone(),
                opens_at_ms: opens_at,
                reason,
            };
            self.report(offer, body, None).await?;
        }
        Ok(true)
    }

    /// Whether `offer` must wait for a current timestamp at `now`; reports
    /// it held once per timestamp held.
    async fn hold(&self, offer: &JobOffer, now: i64) -> Result<bool> {
        let timestamp = self.timestamp.borrow().clone();
        let Some(reason) = Freshness::judge(timestamp.as_ref(), now).hold_reason() else {
            return Ok(false);
        };
        let first = self
            .held
            .lock()
            .expect("held lock")
            .insert((offer.id, timestamp.map(|held| held.issued_at_ms)));
        if first {
            tracing::warn!(job = offer.id, %reason, "job held");
            let body = StatusBody::JobHeld {
                job: offer.id,
                package: offer.package.clone(),
                reason,
            };
            self.report(offer, body, None).await?;
        }
        Ok(true)
    }

    /// Records `body` in the outbox, and the job's new state with it.
    async fn report(
        &self,
        offer: &JobOffer,
        body: StatusBody,
        state: Option<NewState>,
    ) -> Result<()> {
        let job = offer.id;
        if !matches!(body, StatusBody::JobWaitingForWindow { .. }) {
            // Another state is shown now: a wait for the same opening is
            // reported again.
            self.window_reported
                .lock()
                .expect("window lock")
                .retain(|(waiting, _)| *waiting != job);
        }
        let text = serde_json::to_string(&body).map_err(|err| Error::Config(err.to_string()))?;
        let mut tx = self.db.write().await?;
        let now = now_ms();
        Outbox::push_in(&mut tx, now, &text).await?;
        if let Some(state) = state {
            if let Some(entry) = state.run {
                history::record(&mut tx, offer, entry, now).await?;
            }
            sqlx::query(
                "UPDATE jobs SET state = ?, next_attempt_at_ms = ?, attempts = ?, pgid = NULL
                 WHERE id = ?",
            )
            .bind(state.state)
            .bind(state.next_at)
            .bind(state.attempts as i64)
            .bind(job as i64)
            .execute(&mut *tx.tx)
            .await
            .map_err(cascade_store::Error::from)?;
        }
        tx.commit().await?;
        self.wake.notify_one();
        Ok(())
    }

    async fn attempt(&self, due: Due) -> Result<()> {
        let offer = &due.offer;
        let attempt = due.attempts + 1;
        // The deadline counts from the attempt's start, across waits for
        // the sources.
        let started = self
            .waits
            .lock()
            .expect("waits lock")
            .get(&offer.id)
            .map_or_else(Instant::now, |wait| wait.started);
        let deadline = offer
            .timeout_ms
            .map(|ms| started + Duration::from_millis(ms));
        let expiry = offer.expires_at_ms.map(instant_at);
        let downloaded = tokio::select! {
            downloaded = self.download(offer) => Ok(downloaded),
            _ = until(deadline) => Err(Interruption::TimedOut),
            _ = until(expiry) => Err(Interruption::Expired),
            _ = canceled(self.canceled.clone(), offer.id) => Err(Interruption::Canceled),
        };
        let manifest = match downloaded {
            Ok(Ok(manifest)) => {
                self.waits.lock().expect("waits lock").remove(&offer.id);
                manifest
            }
            Ok(Err(Fetch::Unavailable(why))) => {
                // Not a failed attempt: wait for the sources, with backoff.
                let delay = {
                    let mut waits = self.waits.lock().expect("waits lock");
                    let wait = waits.entry(offer.id).or_insert_with(|| Wait {
                        started,
                        backoff: source_backoff(),
                    });
                    wait.backoff.next_delay(rand::random::<f64>())
                };
                tracing::info!(job = offer.id, %why, retry_in_ms = delay.as_millis() as u64, "content sources unavailable; waiting");
                sqlx::query("UPDATE jobs SET next_attempt_at_ms = ? WHERE id = ?")
                    .bind(now_ms() + delay.as_millis() as i64)
                    .bind(offer.id as i64)
                    .execute(self.db.pool())
                    .await
                    .map_err(cascade_store::Error::from)?;
                return Ok(());
            }
            Ok(Err(Fetch::Failed(reason))) => {
                self.waits.lock().expect("waits lock").remove(&offer.id);
                return self
                    .finish(offer, attempt, Outcome::failed(reason, String::new()))
                    .await;
            }
            Err(Interruption::TimedOut) => {
                self.waits.lock().expect("waits lock").remove(&offer.id);
                let ms = offer.timeout_ms.unwrap_or_default();
                let reason = format!(
                    "timeout: the content could not be fetched within {}",
                    humantime_ms(ms)
                );
                return self
                    .finish(offer, attempt, Outcome::failed(reason, String::new()))
                    .await;
            }
            Err(why) => {
                self.waits.lock().expect("waits lock").remove(&offer.id);
                return self.stop_before_command(offer, due.attempts, why).await;
            }
        };
        let job_dir = self.dir.join("jobs").join(offer.id.to_string());
        let store = self.store.clone();
        let target = job_dir.clone();
        let materialized = tokio::task::spawn_blocking(move || -> Result<()> {
            if target.exists() {
                std::fs::remove_dir_all(&target)
                    .map_err(crate::io(format!("clearing {}", target.display())))?;
            }
            std::fs::create_dir_all(&target)
                .map_err(crate::io(format!("creating {}", target.display())))?;
            cascade_content::materialize(&manifest, &store, &target)
                .map_err(|err| Error::Config(format!("writing the package: {err}")))
        })
        .await
        .map_err(|err| Error::Config(format!("materialize task failed: {err}")))
        .and_then(|result| result);
        if let Err(err) = materialized {
            return self
                .finish(
                    offer,
                    attempt,
                    Outcome::failed(err.to_string(), String::new()),
                )
                .await;
        }
        // Never start the command after a cancel or after expiry.
        if self.canceled.borrow().contains(&offer.id) {
            return self
                .stop_before_command(offer, due.attempts, Interruption::Canceled)
                .await;
        }
        if offer.expires_at_ms.is_some_and(|at| at <= now_ms()) {
            return self
                .stop_before_command(offer, due.attempts, Interruption::Expired)
                .await;
        }
        // Nor on a timestamp that expired during the download: held, and
        // started once a current one arrives.
        if self.hold(offer, now_ms()).await? {
            return Ok(());
        }
        // The attempt number is stored with the report, before the command
        // starts: a crash from here on is an interrupted attempt.
        self.report(
            offer,
            StatusBody::JobRunning {
                job: offer.id,
                package: offer.package.clone(),
                attempt,
            },
            Some(NewState {
                state: "running",
                next_at: None,
                attempts: attempt,
                run: Some(history::Entry::Started),
            }),
        )
        .await?;
        let env = self.job_env(offer, attempt);
        let outcome = self
            .run_command(offer, &offer.command, &job_dir, &env, deadline)
            .await?;
        self.after_command(offer, attempt, outcome, &job_dir, deadline)
            .await
    }

    /// The environment of a job's command (and of its check).
    fn job_env(&self, offer: &JobOffer, attempt: u32) -> Vec<(&'static str, String)> {
        vec![
            ("CASCADE_AGENT", self.name.clone()),
            ("CASCADE_JOB", offer.id.to_string()),
            ("CASCADE_PACKAGE", offer.package.clone()),
            ("CASCADE_VERSION", offer.version.to_string()),
            ("CASCADE_ATTEMPT", attempt.to_string()),
        ]
    }

    /// Runs `command` for `offer` in `dir` until it ends, the deadline
    /// passes (a failure: timeout) or the job is canceled (stopped); its
    /// process group is recorded first, for a restarted agent to stop.
    async fn run_command(
        &self,
        offer: &JobOffer,
        command: &str,
        dir: &Path,
        env: &[(&str, String)],
        deadline: Option<Instant>,
    ) -> Result<Outcome> {
        let outcome = match spawn_command(command, dir, env) {
            Ok(running) => {
                if let Some(pgid) = running.pgid {
                    sqlx::query("UPDATE jobs SET pgid = ? WHERE id = ?")
                        .bind(pgid as i64)
                        .bind(offer.id as i64)
                        .execute(self.db.pool())
                        .await
                        .map_err(cascade_store::Error::from)?;
                }
                let stop = async {
                    tokio::select! {
                        _ = until(deadline) => Interruption::TimedOut,
                        _ = canceled(self.canceled.clone(), offer.id) => Interruption::Canceled,
                    }
                };
                running.wait(stop).await
            }
            Err(err) => Outcome::failed(err.to_string(), String::new()),
        };
        Ok(match outcome.stopped {
            Some(Interruption::TimedOut) => Outcome::failed(
                format!(
                    "timeout: not finished after {}",
                    humantime_ms(offer.timeout_ms.unwrap_or_default())
                ),
                outcome.output_tail,
            ),
            _ => outcome,
        })
    }

    /// What follows a command that ended: one of the job's reboot codes
    /// waits for the workstation to restart; a success code runs the
    /// job's check, if it has one; then the attempt is finished.
    async fn after_command(
        &self,
        offer: &JobOffer,
        attempt: u32,
        outcome: Outcome,
        job_dir: &Path,
        deadline: Option<Instant>,
    ) -> Result<()> {
        let code = match (&outcome.reason, outcome.stopped, outcome.exit_code) {
            (None, None, Some(code)) => code,
            _ => return self.finish(offer, attempt, outcome).await,
        };
        if offer.reboot_codes.contains(&code) {
            return self
                .await_reboot(offer, attempt, code, outcome.output_tail)
                .await;
        }
        if !offer.success_codes.contains(&code) {
            return self.finish(offer, attempt, outcome).await;
        }
        let outcome = self
            .check(offer, attempt, outcome, job_dir, deadline)
            .await?;
        self.finish(offer, attempt, outcome).await
    }

    /// Runs the job's check command, if it has one, after its command
    /// succeeded with `outcome`: the outcome stays a success only if the
    /// check exits 0. The check's output follows the command's in the
    /// tail.
    async fn check(
        &self,
        offer: &JobOffer,
        attempt: u32,
        outcome: Outcome,
        job_dir: &Path,
        deadline: Option<Instant>,
    ) -> Result<Outcome> {
        let Some(check) = &offer.check else {
            return Ok(outcome);
        };
        tracing::info!(
            job = offer.id,
            attempt,
            "the command succeeded; running the check"
        );
        // The command's result is kept, and the state is `checking`: an
        // agent stopped during the check runs the check again when it
        // starts (`resume_runs`), never the command.
        sqlx::query("UPDATE jobs SET exit_code = ?, output_tail = ? WHERE id = ?")
            .bind(outcome.exit_code)
            .bind(&outcome.output_tail)
            .bind(offer.id as i64)
            .execute(self.db.pool())
            .await
            .map_err(cascade_store::Error::from)?;
        self.report(
            offer,
            StatusBody::JobChecking {
                job: offer.id,
                package: offer.package.clone(),
                attempt,
            },
            Some(NewState {
                state: "checking",
                next_at: None,
                attempts: attempt,
                run: None,
            }),
        )
        .await?;
        let mut env = self.job_env(offer, attempt);
        env.push(("CASCADE_CHECK", "1".to_owned()));
        let checked = self
            .run_command(offer, check, job_dir, &env, deadline)
            .await?;
        let output_tail = joined_tail(&outcome.output_tail, &checked.output_tail);
        if checked.stopped == Some(Interruption::Canceled) {
            return Ok(Outcome {
                output_tail,
                ..checked
            });
        }
        let failure = match (checked.reason, checked.exit_code) {
            (None, Some(0)) => None,
            (Some(reason), _) => Some(reason),
            (None, code) => Some(format!(
                "exit code {}",
                code.map_or("none".into(), |c| c.to_string())
            )),
        };
        Ok(Outcome {
            exit_code: outcome.exit_code,
            reason: failure.map(|why| format!("the check `{check}` failed: {why}")),
            output_tail,
            stopped: None,
        })
    }

    /// The command of attempt `attempt` ended with reboot code `code`:
    /// records the boot it ran in, reports `job_reboot_pending`, and leaves
    /// the job in state `rebooting` until an agent starts in another boot
    /// ([`Executor::resume_runs`]).
    async fn await_reboot(
        &self,
        offer: &JobOffer,
        attempt: u32,
        code: i32,
        output_tail: String,
    ) -> Result<()> {
        let boot = match &self.boot.id {
            Ok(boot) => boot.clone(),
            Err(why) => {
                let reason = format!(
                    "exit code {code} asks for a reboot, but the agent cannot tell when the \
                     workstation restarts: {why}"
                );
                return self
                    .finish(offer, attempt, Outcome::failed(reason, output_tail))
                    .await;
            }
        };
        tracing::info!(
            job = offer.id,
            attempt,
            exit_code = code,
            "the command asks for a reboot"
        );
        // Before the report: a crash in between leaves the row `running`,
        // an interrupted attempt, as any crash after the command ended.
        sqlx::query("UPDATE jobs SET boot_id = ?, exit_code = ?, output_tail = ? WHERE id = ?")
            .bind(&boot)
            .bind(code)
            .bind(&output_tail)
            .bind(offer.id as i64)
            .execute(self.db.pool())
            .await
            .map_err(cascade_store::Error::from)?;
        self.report(
            offer,
            StatusBody::JobRebootPending {
                job: offer.id,
                package: offer.package.clone(),
                attempt,
                exit_code: code,
                output_tail,
            },
            Some(NewState {
                state: "rebooting",
                next_at: None,
                attempts: attempt,
                // The command succeeded, a reboot to come: so it counts
                // for rerun rules until the check says otherwise.
                run: Some(history::Entry::Ended { succeeded: true }),
            }),
        )
        .await
    }

    /// Finishes the runs whose command had ended when the agent last
    /// stopped: a check the stop cut short (state `checking`) runs again,
    /// after whatever it left running is killed, and never the command; a
    /// job waiting for a reboot (state `rebooting`) has its check run once
    /// the agent runs in another boot than the command's, and waits on in
    /// the same boot. If this boot's identity cannot be read, such a job
    /// fails, saying why, rather than wait forever.
    async fn resume_runs(&self) -> Result<()> {
        let rows: Vec<ResumedRow> = sqlx::query_as(
            "SELECT offer, state, attempts, boot_id, exit_code, output_tail, pgid FROM jobs
             WHERE state IN ('rebooting', 'checking')",
        )
        .fetch_all(self.db.pool())
        .await
        .map_err(cascade_store::Error::from)?;
        for (text, state, attempts, boot, exit_code, output_tail, pgid) in rows {
            let offer: JobOffer = serde_json::from_str(&text)
                .map_err(|err| Error::Config(format!("stored offer is damaged: {err}")))?;
            let attempt = attempts as u32;
            let outcome = Outcome {
                exit_code: exit_code.map(|code| code as i32),
                reason: None,
                output_tail: output_tail.unwrap_or_default(),
                stopped: None,
            };
            if state == "checking" {
                if let Some(pgid) = pgid {
                    kill_leftover(pgid as i32, offer.id, &self.name);
                }
                tracing::warn!(
                    job = offer.id,
                    attempt,
                    "the check was cut short by a stop; running it again"
                );
            } else {
                match &self.boot.id {
                    Ok(now_booted) if boot.as_deref() == Some(now_booted.as_str()) => continue,
                    Ok(_) => {
                        tracing::info!(
                            job = offer.id,
                            attempt,
                            "the workstation restarted since the command asked for it"
                        );
                    }
                    Err(why) => {
                        let reason = format!(
                            "the command asked for a reboot, but the agent cannot tell whether \
                             the workstation restarted: {why}"
                        );
                        let failed = Outcome::failed(reason, outcome.output_tail);
                        self.finish(&offer, attempt, failed).await?;
                        continue;
                    }
                }
            }
            // Verified again before its check runs: agent.db is not
            // trusted either.
            if let Err(err) = cascade_protocol::intent::verify_offer(&offer, &self.site_key) {
                self.refuse_stored(&offer, attempt, err).await?;
                continue;
            }
            let job_dir = self.dir.join("jobs").join(offer.id.to_string());
            std::fs::create_dir_all(&job_dir)
                .map_err(crate::io(format!("creating {}", job_dir.display())))?;
            let deadline = offer
                .timeout_ms
                .map(|ms| Instant::now() + Duration::from_millis(ms));
            let outcome = self
                .check(&offer, attempt, outcome, &job_dir, deadline)
                .await?;
            self.finish(&offer, attempt, outcome).await?;
        }
        Ok(())
    }

    /// Reports how attempt `attempt` ended: completed, stopped (canceled),
    /// retrying or failed; the job's state goes with the report.
    async fn finish(&self, offer: &JobOffer, attempt: u32, outcome: Outcome) -> Result<()> {
        let package = offer.package.clone();
        if outcome.stopped == Some(Interruption::Canceled) {
            tracing::info!(
                job = offer.id,
                attempt,
                "job canceled; the command was stopped"
            );
            return self
                .report(
                    offer,
                    StatusBody::JobStopped {
                        job: offer.id,
                        package,
                        attempt,
                        reason: format!(
                            "canceled: the command was stopped (SIGTERM, SIGKILL after {} s)",
                            STOP_GRACE.as_secs()
                        ),
                        output_tail: outcome.output_tail,
                    },
                    Some(NewState {
                        state: "done",
                        next_at: None,
                        attempts: attempt,
                        run: Some(history::Entry::Ended { succeeded: false }),
                    }),
                )
                .await;
        }
        // A reboot code reaches here once the workstation restarted.
        let succeeded = outcome.reason.is_none()
            && outcome.exit_code.is_some_and(|code| {
                offer.success_codes.contains(&code) || offer.reboot_codes.contains(&code)
            });
        if succeeded {
            let exit_code = outcome.exit_code.unwrap_or(0);
            tracing::info!(job = offer.id, attempt, exit_code, "job complete");
            self.report(
                offer,
                StatusBody::JobCompleted {
                    job: offer.id,
                    package,
                    attempt,
                    exit_code,
                    output_tail: outcome.output_tail,
                },
                Some(NewState {
                    state: "done",
                    next_at: None,
                    attempts: attempt,
                    // A removal forgets the package's runs with its report.
                    run: Some(if offer.remove {
                        history::Entry::Removed
                    } else {
                        history::Entry::Ended { succeeded: true }
                    }),
                }),
            )
            .await?;
            if offer.remove {
                // The package is gone from the workstation: so is what the
                // agent held of it. A failure here is tidied later.
                match crate::cache::forget_package(
                    &self.db,
                    &self.dir,
                    &self.store,
                    &offer.package,
                    offer.id,
                )
                .await
                {
                    Ok(tidied) => {
                        tracing::info!(job = offer.id, package = %offer.package, ?tidied, "package removed")
                    }
                    Err(err) => {
                        tracing::warn!(job = offer.id, error = %err, "the package's content was not all removed")
                    }
                }
            }
            return Ok(());
        }
        let reason = outcome.reason.unwrap_or_else(|| {
            format!(
                "exit code {}",
                outcome.exit_code.map_or("none".into(), |c| c.to_string())
            )
        });
        // A retry only while the job may still run here.
        let withdrawn: Option<i64> =
            sqlx::query_scalar("SELECT withdrawn_at_ms FROM jobs WHERE id = ?")
                .bind(offer.id as i64)
                .fetch_optional(self.db.pool())
                .await
                .map_err(cascade_store::Error::from)?
                .flatten();
        let expired = offer.expires_at_ms.is_some_and(|at| at <= now_ms());
        if attempt <= offer.retries && withdrawn.is_none() && !expired {
            tracing::info!(job = offer.id, attempt, %reason, "job attempt failed; retrying");
            let next_at = now_ms() + offer.retry_delay_ms as i64;
            self.report(
                offer,
                StatusBody::JobRetrying {
                    job: offer.id,
                    package,
                    attempt,
                    of: offer.retries + 1,
                    exit_code: outcome.exit_code,
                    reason,
                    output_tail: outcome.output_tail,
                },
                Some(NewState {
                    state: waiting_state(offer),
                    next_at: Some(next_at),
                    attempts: attempt,
                    run: Some(history::Entry::Ended { succeeded: false }),
                }),
            )
            .await
        } else {
            tracing::info!(job = offer.id, attempt, %reason, "job failed");
            self.report(
                offer,
                StatusBody::JobFailed {
                    job: offer.id,
                    package,
                    attempt,
                    exit_code: outcome.exit_code,
                    reason,
                    output_tail: outcome.output_tail,
                },
                Some(NewState {
                    state: "done",
                    next_at: None,
                    attempts: attempt,
                    run: Some(history::Entry::Ended { succeeded: false }),
                }),
            )
            .await
        }
    }

    /// Reports that a DP's content was refused; the run goes on elsewhere.
    async fn refused(&self, offer: &JobOffer, dp: &str, reason: String) -> Result<()> {
        self.report(
            offer,
            StatusBody::JobContentRefused {
                job: offer.id,
                package: offer.package.clone(),
                dp: dp.to_owned(),
                reason,
            },
            None,
        )
        .await
    }

    /// Fetches and verifies the manifest, then every chunk not yet held,
    /// trying the job's DPs in turn and the site server last. A source
    /// that is down or does not hold a chunk yet makes the download
    /// [`Fetch::Unavailable`]; only a chunk every source served bad bytes
    /// for (or a manifest that fails verification) fails it.
    async fn download(&self, offer: &JobOffer) -> std::result::Result<Manifest, Fetch> {
        let wire = self
            .client
            .manifest(&offer.package, offer.version)
            .await
            .map_err(|err| Fetch::Unavailable(format!("manifest: {err}")))?;
        let signed = wire.to_signed().ok_or_else(|| {
            Fetch::Failed(format!(
                "manifest of {} v{} is malformed",
                offer.package, offer.version
            ))
        })?;
        let manifest = signed.verify(&self.site_key).map_err(|err| {
            Fetch::Failed(format!(
                "manifest of {} v{} refused: {err}",
                offer.package, offer.version
            ))
        })?;
        if manifest.package != offer.package || manifest.version != offer.version {
            return Err(Fetch::Failed(format!(
                "the site sent the manifest of {} v{} for {} v{}",
                manifest.package, manifest.version, offer.package, offer.version
            )));
        }
        // Needed until the job is over: the cache keeps them.
        crate::cache::protect(&self.db, &self.store, offer.id, &manifest).await?;
        let unique = manifest.unique_chunks();
        let total: u64 = unique.iter().map(|chunk| chunk.size as u64).sum();
        let chunks: Vec<_> = unique
            .into_iter()
            .filter(|chunk| !self.store.contains(&chunk.hash))
            .collect();
        let mut done = total - chunks.iter().map(|chunk| chunk.size as u64).sum::<u64>();
        let (mut dps, ticket, pins) = {
            let sources = self.sources.lock().await;
            let dps = sources.for_job(offer, self.client.base());
            let pins: HashMap<String, Option<Fingerprint>> = dps
                .iter()
                .map(|dp| (dp.clone(), sources.pin(dp, &self.client)))
                .collect();
            (dps, sources.ticket.clone(), pins)
        };
        let progress = |bytes_done| StatusBody::JobDownloading {
            job: offer.id,
            package: offer.package.clone(),
            bytes_done,
            bytes_total: total,
        };
        self.report(offer, progress(done), None).await?;
        let mut last = std::time::Instant::now();
        for chunk in &chunks {
            let mut unavailable = Vec::new();
            let mut bad = Vec::new();
            let mut stored = false;
            // A source that failed this chunk (slow, wrong, or without it)
            // goes behind the others for the rest of the download: one
            // trickling DP costs one chunk's deadline, not every chunk's.
            let mut failed: Vec<String> = Vec::new();
            for dp in &dps {
                let url = format!("{dp}/v1/chunks/{}", chunk.hash);
                let http = self.http.pinning(pins.get(dp).copied().flatten());
                match fetch(&http, &url, chunk.size, ticket.as_deref()).await {
                    Ok(encoded) => {
                        let store = self.store.clone();
                        let hash = chunk.hash;
                        let put =
                            tokio::task::spawn_blocking(move || store.put_encoded(&hash, &encoded))
                                .await
                                .map_err(|err| {
                                    Fetch::Failed(format!("store task failed: {err}"))
                                })?;
                        match put {
                            Ok(_) => {
                                stored = true;
                                break;
                            }
                            Err(err) => {
                                tracing::warn!(%dp, chunk = %chunk.hash, error = %cascade_protocol::chain(&err), "content from this dp refused");
                                self.refused(offer, dp, format!("chunk {}: {err}", chunk.hash))
                                    .await?;
                                bad.push(format!("{dp}: {err}"));
                                failed.push(dp.clone());
                            }
                        }
                    }
                    Err(Fetched::Unavailable(err)) => {
                        // A chunk not there yet is the distribute phase, not
                        // the DP's failure; anything else is reported once.
                        if !err.starts_with("404") {
                            let first = self.reported.lock().expect("reported lock").insert((
                                offer.id,
                                dp.clone(),
                                err.clone(),
                            ));
                            if first {
                                self.refused(offer, dp, format!("chunk {}: {err}", chunk.hash))
                                    .await?;
                            }
                        }
                        unavailable.push(format!("{dp}: {err}"));
                        failed.push(dp.clone());
                    }
                    Err(Fetched::Refused(err)) => {
                        self.refused(offer, dp, format!("chunk {}: {err}", chunk.hash))
                            .await?;
                        bad.push(format!("{dp}: {err}"));
                        failed.push(dp.clone());
                    }
                }
            }
            if !failed.is_empty() {
                dps.retain(|dp| !failed.contains(dp));
                dps.extend(failed);
            }
            if !stored {
                return Err(if unavailable.is_empty() {
                    Fetch::Failed(format!(
                        "chunk {} is bad from every source: {}",
                        chunk.hash,
                        bad.join("; ")
                    ))
                } else {
                    Fetch::Unavailable(format!(
                        "chunk {} not available now: {}",
                        chunk.hash,
                        unavailable.join("; ")
                    ))
                });
            }
            done += chunk.size as u64;
            if last.elapsed() >= PROGRESS_EVERY {
                last = std::time::Instant::now();
                self.report(offer, progress(done), None).await?;
            }
        }
        if !chunks.is_empty() {
            self.report(offer, progress(done), None).await?;
        }
        Ok(manifest)
    }
}

/// Where a job waits for its next attempt: an optional job stays requested.
fn waiting_state(offer: &JobOffer) -> &'static str {
    if offer.optional {
        "requested"
    } else {
        "offered"
    }
}

fn humantime_ms(ms: u64) -> String {
    format!("{:.1} s", ms as f64 / 1000.0)
}

/// Clients for content sources, one per pinned certificate (each with its
/// own connection pool), made as sources appear; at most
/// [`MAX_DP_CLIENTS`], so a site naming a new certificate in every policy
/// cannot make the agent hold pools without end.
#[derive(Default)]
pub struct DpClients {
    clients: std::sync::Mutex<HashMap<Option<Fingerprint>, reqwest::Client>>,
}

/// Most content-source clients kept; past it they are all dropped and made
/// again as needed.
const MAX_DP_CLIENTS: usize = 64;

impl DpClients {
    /// The client that accepts only the certificate `pin` names.
    pub fn pinning(&self, pin: Option<Fingerprint>) -> reqwest::Client {
        let mut clients = self.clients.lock().expect("dp clients lock");
        if clients.len() >= MAX_DP_CLIENTS && !clients.contains_key(&pin) {
            clients.clear();
        }
        clients.entry(pin).or_insert_with(|| dp_client(pin)).clone()
    }
}

/// A client for DPs' content servers, pinning `pin`.
pub fn dp_client(pin: Option<Fingerprint>) -> reqwest::Client {
    cascade_protocol::tls::client_builder(pin)
        .connect_timeout(Duration::from_secs(5))
        .read_timeout(Duration::from_secs(60))
        .pool_idle_timeout(cascade_protocol::client::POOL_IDLE)
        .build()
        .unwrap_or_default()
}

/// Why a source did not serve a chunk.
enum Fetched {
    /// Down, unreachable, overloaded, repairing, or not holding it (yet).
    Unavailable(String),
    /// It refused in a way that will not change by waiting (a 4xx other
    /// than 404).
    Refused(String),
}

/// Most bytes of an error answer read from a DP.
const MAX_ERROR_BODY: usize = 4096;

/// The slowest a DP may serve a chunk: below it the fetch gives up and
/// the next source is tried (a DP trickling bytes must not hold a job).
const MIN_CHUNK_RATE: u64 = 16 * 1024;

/// Time every chunk fetch gets, beyond its size at [`MIN_CHUNK_RATE`].
const CHUNK_DEADLINE_BASE: Duration = Duration::from_secs(10);

/// How long fetching a chunk of `size` bytes may take in all.
fn chunk_deadline(size: u32) -> Duration {
    CHUNK_DEADLINE_BASE + Duration::from_millis(size as u64 * 1000 / MIN_CHUNK_RATE)
}

/// Fetches the encoded form of a chunk of `size` bytes from `url`, reading
/// at most its longest encoding (an endless body is cut there) within
/// [`chunk_deadline`].
async fn fetch(
    http: &reqwest::Client,
    url: &str,
    size: u32,
    ticket: Option<&str>,
) -> std::result::Result<Vec<u8>, Fetched> {
    let deadline = chunk_deadline(size);
    tokio::time::timeout(deadline, fetch_bounded(http, url, size, ticket))
        .await
        .unwrap_or_else(|_| {
            Err(Fetched::Unavailable(format!(
                "did not serve the chunk within {} s",
                deadline.as_secs()
            )))
        })
}

async fn fetch_bounded(
    http: &reqwest::Client,
    url: &str,
    size: u32,
    ticket: Option<&str>,
) -> std::result::Result<Vec<u8>, Fetched> {
    let mut request = http.get(url);
    if let Some(ticket) = ticket {
        request = request.bearer_auth(ticket);
    }
    let mut response = request
        .send()
        .await
        .map_err(|err| Fetched::Unavailable(err.to_string()))?;
    let status = response.status();
    let limit = if status.is_success() {
        cascade_content::max_encoded_len(size)
    } else {
        MAX_ERROR_BODY
    };
    let mut bytes = Vec::new();
    while let Some(piece) = response
        .chunk()
        .await
        .map_err(|err| Fetched::Unavailable(err.to_string()))?
    {
        if bytes.len() + piece.len() > limit {
            if !status.is_success() {
                bytes.extend_from_slice(&piece[..limit - bytes.len()]);
                break;
            }
            return Err(Fetched::Refused(format!(
                "sent more than the {limit} bytes a chunk of {size} bytes can take"
            )));
        }
        bytes.extend_from_slice(&piece);
    }
    if !status.is_success() {
        let message = format!("{status}: {}", String::from_utf8_lossy(&bytes).trim());
        return Err(
            // 401: no content ticket yet (a download resumed at start,
            // before the first policy answer) or an expired one; the next
            // policy brings a fresh one, so it is retried, not a failure.
            if status.is_server_error()
                || status == reqwest::StatusCode::NOT_FOUND
                || status == reqwest::StatusCode::TOO_MANY_REQUESTS
                || status == reqwest::StatusCode::UNAUTHORIZED
            {
                Fetched::Unavailable(message)
            } else {
                Fetched::Refused(message)
            },
        );
    }
    Ok(bytes)
}

/// How a run ended.
struct Outcome {
    exit_code: Option<i32>,
    reason: Option<String>,
    output_tail: String,
    /// Set when the agent stopped the command.
    stopped: Option<Interruption>,
}

impl Outcome {
    fn failed(reason: String, output_tail: String) -> Outcome {
        Outcome {
            exit_code: None,
            reason: Some(reason),
            output_tail,
            stopped: None,
        }
    }
}

/// The output tails of a command and of its check as one tail: the
/// check's after a marker line, the command's cut from the front so that
/// the whole stays within [`OUTPUT_TAIL`].
fn joined_tail(command: &str, check: &str) -> String {
    let joined = format!("{command}\n--- check ---\n{check}");
    let mut start = joined.len().saturating_sub(OUTPUT_TAIL);
    while !joined.is_char_boundary(start) {
        start += 1;
    }
    joined[start..].to_owned()
}

/// A command started by [`spawn_command`].
struct RunningCommand {
    child: tokio::process::Child,
    /// Its process group (the shell's pid): everything it starts.
    pgid: Option<i32>,
    output: Arc<std::sync::Mutex<Vec<u8>>>,
    readers: Vec<tokio::task::JoinHandle<()>>,
    command: String,
}

/// Starts `sh -c command` in `dir` with `env` added, in a process group of
/// its own (so that stopping it stops everything it started), its stdout
/// and stderr gathered into one tail of the last 4 KiB.
fn spawn_command(command: &str, dir: &Path, env: &[(&str, String)]) -> Result<RunningCommand> {
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .current_dir(dir)
        .envs(env.iter().map(|(key, value)| (*key, value.as_str())))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(crate::io(format!("starting `{command}`")))?;
    let output = Arc::new(std::sync::Mutex::new(Vec::new()));
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let readers = vec![
        tokio::spawn(tail(stdout, output.clone())),
        tokio::spawn(tail(stderr, output.clone())),
    ];
    Ok(RunningCommand {
        pgid: child.id().map(|id| id as i32),
        child,
        output,
        readers,
        command: command.to_owned(),
    })
}

impl RunningCommand {
    /// Waits for the command to end, or stops it when `stop` resolves
    /// first (SIGTERM to its group, SIGKILL after [`STOP_GRACE`]); either
    /// way with its output tail.
    async fn wait(mut self, stop: impl std::future::Future<Output = Interruption>) -> Outcome {
        let (status, stopped) = tokio::select! {
            status = self.child.wait() => (status, None),
            why = stop => {
                tracing::info!(command = %self.command, ?why, "stopping the command");
                signal_group(self.pgid, libc::SIGTERM);
                let status = match tokio::time::timeout(STOP_GRACE, self.child.wait()).await {
                    Ok(status) => status,
                    Err(_) => {
                        signal_group(self.pgid, libc::SIGKILL);
                        self.child.wait().await
                    }
                };
                (status, Some(why))
            }
        };
        if stopped.is_some() {
            // Whatever the shell left behind in its group goes too.
            signal_group(self.pgid, libc::SIGKILL);
        }
        for reader in self.readers {
            let _ = tokio::time::timeout(PIPE_GRACE, reader).await;
        }
        let output = self.output.lock().expect("output lock").clone();
        let start = output.len().saturating_sub(OUTPUT_TAIL);
        let output_tail = String::from_utf8_lossy(&output[start..]).into_owned();
        let status = match status {
            Ok(status) => status,
            Err(err) => {
                return Outcome::failed(
                    format!("waiting for `{}`: {err}", self.command),
                    output_tail,
                )
            }
        };
        match (status.code(), stopped) {
            (Some(code), None) => Outcome {
                exit_code: Some(code),
                reason: None,
                output_tail,
                stopped: None,
            },
            (None, None) => Outcome {
                exit_code: None,
                reason: Some("killed by a signal".into()),
                output_tail,
                stopped: None,
            },
            (code, Some(why)) => Outcome {
                exit_code: code,
                reason: Some(format!("{why:?}")),
                output_tail,
                stopped: Some(why),
            },
        }
    }
}

/// Sends `signal` to process group `pgid`.
fn signal_group(pgid: Option<i32>, signal: i32) {
    if let Some(pgid) = pgid.filter(|pgid| *pgid > 1) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe {
            libc::kill(-pgid, signal);
        }
    }
}

/// Kills what an interrupted run left behind: the process group `pgid`,
/// but only if its leader is still the job's command (its environment
/// names this agent and job), never a process that reused the number.
fn kill_leftover(pgid: i32, job: u64, agent: &str) {
    let Ok(environ) = std::fs::read(format!("/proc/{pgid}/environ")) else {
        return;
    };
    let has = |entry: String| {
        environ
            .split(|b| *b == 0)
            .any(|var| var == entry.as_bytes())
    };
    if has(format!("CASCADE_JOB={job}")) && has(format!("CASCADE_AGENT={agent}")) {
        tracing::warn!(job, pgid, "killing what the interrupted run left running");
        signal_group(Some(pgid), libc::SIGKILL);
    }
}

/// Reads a stream to its end into `kept`, keeping its last `OUTPUT_TAIL`
/// bytes (stdout and stderr share it, in arrival order).
async fn tail(mut reader: impl tokio::io::AsyncRead + Unpin, kept: Arc<std::sync::Mutex<Vec<u8>>>) {
    let mut buffer = [0u8; 8192];
    while let Ok(n) = reader.read(&mut buffer).await {
        if n == 0 {
            break;
        }
        let mut kept = kept.lock().expect("output lock");
        kept.extend_from_slice(&buffer[..n]);
        if kept.len() > 2 * OUTPUT_TAIL {
            let excess = kept.len() - OUTPUT_TAIL;
            kept.drain(..excess);
        }
    }
}

/// Marks an optional offer as requested; the running agent picks it up.
pub async fn request(db: &Db, job: u64) -> Result<()> {
    let row: Option<(String, String, Option<i64>)> =
        sqlx::query_as("SELECT offer, state, withdrawn_at_ms FROM jobs WHERE id = ?")
            .bind(job as i64)
            .fetch_optional(db.pool())
            .await
            .map_err(cascade_store::Error::from)?;
    let Some((text, state, withdrawn)) = row else {
        return Err(Error::Config(format!(
            "this workstation holds no offer of job {job}"
        )));
    };
    let offer: JobOffer = serde_json::from_str(&text)
        .map_err(|err| Error::Config(format!("stored offer is damaged: {err}")))?;
    if withdrawn.is_some() || offer.expires_at_ms.is_some_and(|at| at <= now_ms()) {
        return Err(Error::Config(format!(
            "job {job} was withdrawn (expired or canceled)"
        )));
    }
    match state.as_str() {
        "offered" | "requested" => {}
        "done" => {
            return Err(Error::Config(format!(
                "job {job} already ran on this workstation"
            )))
        }
        "running" | "checking" => {
            return Err(Error::Config(format!(
                "job {job} is running on this workstation"
            )))
        }
        "rebooting" => {
            return Err(Error::Config(format!(
                "job {job} ran and waits for this workstation to restart"
            )))
        }
        other => {
            return Err(Error::Config(format!(
                "job {job} is {other} on this workstation"
            )))
        }
    }
    sqlx::query("UPDATE jobs SET state = 'requested' WHERE id = ?")
        .bind(job as i64)
        .execute(db.pool())
        .await
        .map_err(cascade_store::Error::from)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A DP that answers every request with `head` and then sends bytes
    /// without end; its chunk URL and a client pinning it.
    async fn endless_dp(head: &'static str) -> (String, reqwest::Client) {
        let (url, pin) = cascade_protocol::testing::endless_server(head).await;
        (format!("{url}/v1/chunks/x"), dp_client(Some(pin)))
    }

    /// Issue 12: a rogue DP sending an endless body for a chunk took an
    /// agent from 14 MB to 1.27 GB resident.
    #[tokio::test]
    async fn an_endless_chunk_body_is_cut_at_the_chunk_size() {
        let (url, http) = endless_dp("HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n").await;
        match fetch(&http, &url, 1000, None).await {
            Err(Fetched::Refused(reason)) => {
                assert!(reason.contains("more than the 1001 bytes"), "{reason}")
            }
            Err(Fetched::Unavailable(reason)) => panic!("unavailable: {reason}"),
            Ok(bytes) => panic!("accepted {} bytes", bytes.len()),
        }
        // An error answer without end is read up to a few KiB.
        let (url, http) = endless_dp("HTTP/1.1 500 Oops\r\nconnection: close\r\n\r\n").await;
        match fetch(&http, &url, 1000, None).await {
            Err(Fetched::Unavailable(reason)) => assert!(reason.len() < 2 * MAX_ERROR_BODY),
            Err(Fetched::Refused(reason)) => panic!("refused: {reason}"),
            Ok(bytes) => panic!("accepted {} bytes", bytes.len()),
        }
    }

    /// A hostile site naming a new DP certificate in every policy must not
    /// make the agent keep a connection pool for each.
    #[test]
    fn content_source_clients_are_bounded() {
        let clients = DpClients::default();
        for i in 0..(3 * MAX_DP_CLIENTS as u32) {
            clients.pinning(Some(Fingerprint::of(&i.to_le_bytes())));
            assert!(clients.clients.lock().unwrap().len() <= MAX_DP_CLIENTS);
        }
        // One in use stays while there is room.
        let pin = Some(Fingerprint::of(b"kept"));
        clients.pinning(pin);
        clients.pinning(pin);
        assert!(clients.clients.lock().unwrap().contains_key(&pin));
    }

    #[test]
    fn a_chunk_fetch_has_a_deadline_by_its_size() {
        assert_eq!(chunk_deadline(0), CHUNK_DEADLINE_BASE);
        // The largest chunk at the slowest rate: 16 s beyond the base.
        assert_eq!(
            chunk_deadline(cascade_content::MAX_CHUNK_SIZE),
            CHUNK_DEADLINE_BASE + Duration::from_secs(16)
        );
    }
}
