//! The run phase on the workstation: for every due offer, download the
//! package from a DP (only the chunks not already held), verify the signed
//! manifest and every chunk, materialise the files in a job directory, run
//! the command with the job's timeout, and report each step.
//!
//! **Architecture Invariant:** nothing runs that failed verification: the
//! manifest is checked against the site key pinned at enrollment and every
//! chunk against its hash before `materialize` writes a byte.

use crate::{Error, Result};
use cascade_content::{ChunkStore, Manifest, VerifyingKey};
use cascade_protocol::{Client, JobOffer, StatusBody};
use cascade_store::{now_ms, Db, Outbox};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::sync::{watch, Mutex, Notify};

/// How long to wait before looking again for content no DP holds yet.
const CONTENT_WAIT_MS: i64 = 1000;

/// Bytes of output kept for the status report.
const OUTPUT_TAIL: usize = 4096;

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
    /// The client for DPs' content servers.
    pub http: reqwest::Client,
}

/// Content sources from the latest policy: DP URLs change when DPs
/// restart, so they are taken from the policy, not from the stored offer.
#[derive(Default)]
pub struct Sources {
    /// Every DP of the site.
    site_dps: Vec<String>,
    /// Per job: the DPs it distributes to at this site.
    jobs: std::collections::HashMap<u64, Vec<String>>,
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
        }
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

impl Executor {
    /// Runs due jobs, one at a time, until `stop`.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        loop {
            match self.next_due().await {
                Ok(Some(due)) => {
                    if let Err(err) = self.attempt(due).await {
                        tracing::warn!(error = %cascade_protocol::chain(&err), "job attempt could not be recorded; will retry");
                    }
                    continue;
                }
                Ok(None) => {}
                Err(err) => {
                    tracing::warn!(error = %cascade_protocol::chain(&err), "reading due jobs failed")
                }
            }
            tokio::select! {
                _ = self.nudge.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.changed() => return,
            }
        }
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
            let expired = offer.expires_at_ms.is_some_and(|at| at <= now);
            let waiting = offer.optional && state != "requested";
            if expired || waiting || offer.offer_at_ms > now || next_at.is_some_and(|at| at > now) {
                continue;
            }
            return Ok(Some(Due {
                offer,
                attempts: attempts as u32,
            }));
        }
        Ok(None)
    }

    /// Records `body` in the outbox, and the job's new state with it.
    async fn report(
        &self,
        job: u64,
        body: StatusBody,
        state: Option<(&str, Option<i64>)>,
    ) -> Result<()> {
        let text = serde_json::to_string(&body).map_err(|err| Error::Config(err.to_string()))?;
        let mut tx = self.db.write().await?;
        Outbox::push_in(&mut tx, now_ms(), &text).await?;
        if let Some((state, next_at)) = state {
            sqlx::query("UPDATE jobs SET state = ?, next_attempt_at_ms = ? WHERE id = ?")
                .bind(state)
                .bind(next_at)
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
        sqlx::query("UPDATE jobs SET attempts = ? WHERE id = ?")
            .bind(attempt as i64)
            .bind(offer.id as i64)
            .execute(self.db.pool())
            .await
            .map_err(cascade_store::Error::from)?;
        let work = async {
            let manifest = self.download(offer).await?;
            let job_dir = self.dir.join("jobs").join(offer.id.to_string());
            let store = self.store.clone();
            let target = job_dir.clone();
            tokio::task::spawn_blocking(move || -> Result<()> {
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
            .map_err(|err| Error::Config(format!("materialize task failed: {err}")))??;
            self.report(
                offer.id,
                StatusBody::JobRunning {
                    job: offer.id,
                    package: offer.package.clone(),
                    attempt,
                },
                None,
            )
            .await?;
            let env = [
                ("CASCADE_AGENT", self.name.clone()),
                ("CASCADE_JOB", offer.id.to_string()),
                ("CASCADE_PACKAGE", offer.package.clone()),
                ("CASCADE_VERSION", offer.version.to_string()),
                ("CASCADE_ATTEMPT", attempt.to_string()),
            ];
            run_command(&offer.command, &job_dir, &env).await
        };
        let outcome = match offer.timeout_ms {
            Some(ms) => match tokio::time::timeout(Duration::from_millis(ms), work).await {
                Ok(outcome) => outcome,
                Err(_) => Ok(Outcome {
                    exit_code: None,
                    reason: Some(format!("timeout: not finished after {}", humantime_ms(ms))),
                    output_tail: String::new(),
                }),
            },
            None => work.await,
        };
        let outcome = match outcome {
            Err(Error::NotYetAvailable(why)) => {
                // Not an attempt: wait for the distribute phase.
                tracing::info!(job = offer.id, %why, "content not on a dp yet; waiting");
                sqlx::query("UPDATE jobs SET attempts = ?, next_attempt_at_ms = ? WHERE id = ?")
                    .bind(due.attempts as i64)
                    .bind(now_ms() + CONTENT_WAIT_MS)
                    .bind(offer.id as i64)
                    .execute(self.db.pool())
                    .await
                    .map_err(cascade_store::Error::from)?;
                return Ok(());
            }
            other => other,
        };
        let outcome = outcome.unwrap_or_else(|err| Outcome {
            exit_code: None,
            reason: Some(err.to_string()),
            output_tail: String::new(),
        });
        let succeeded = outcome.reason.is_none()
            && outcome
                .exit_code
                .is_some_and(|code| offer.success_codes.contains(&code));
        let package = offer.package.clone();
        if succeeded {
            let exit_code = outcome.exit_code.unwrap_or(0);
            tracing::info!(job = offer.id, attempt, exit_code, "job complete");
            return self
                .report(
                    offer.id,
                    StatusBody::JobCompleted {
                        job: offer.id,
                        package,
                        attempt,
                        exit_code,
                    },
                    Some(("done", None)),
                )
                .await;
        }
        let reason = outcome.reason.unwrap_or_else(|| {
            format!(
                "exit code {}",
                outcome.exit_code.map_or("none".into(), |c| c.to_string())
            )
        });
        if attempt <= offer.retries {
            tracing::info!(job = offer.id, attempt, %reason, "job attempt failed; retrying");
            let next_at = now_ms() + offer.retry_delay_ms as i64;
            self.report(
                offer.id,
                StatusBody::JobRetrying {
                    job: offer.id,
                    package,
                    attempt,
                    of: offer.retries + 1,
                    exit_code: outcome.exit_code,
                    reason,
                    output_tail: outcome.output_tail,
                },
                Some(("offered", Some(next_at))),
            )
            .await
        } else {
            tracing::info!(job = offer.id, attempt, %reason, "job failed");
            self.report(
                offer.id,
                StatusBody::JobFailed {
                    job: offer.id,
                    package,
                    attempt,
                    exit_code: outcome.exit_code,
                    reason,
                    output_tail: outcome.output_tail,
                },
                Some(("done", None)),
            )
            .await
        }
    }

    /// Reports that a DP's content was refused; the run goes on elsewhere.
    async fn refused(&self, offer: &JobOffer, dp: &str, reason: String) -> Result<()> {
        self.report(
            offer.id,
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
    /// trying the job's DPs in turn and the site server last.
    async fn download(&self, offer: &JobOffer) -> Result<Manifest> {
        let wire = self.client.manifest(&offer.package, offer.version).await?;
        let signed = wire.to_signed().ok_or_else(|| {
            Error::Config(format!(
                "manifest of {} v{} is malformed",
                offer.package, offer.version
            ))
        })?;
        let manifest = signed.verify(&self.site_key).map_err(|err| {
            Error::Config(format!(
                "manifest of {} v{} refused: {err}",
                offer.package, offer.version
            ))
        })?;
        if manifest.package != offer.package || manifest.version != offer.version {
            return Err(Error::Config(format!(
                "the site sent the manifest of {} v{} for {} v{}",
                manifest.package, manifest.version, offer.package, offer.version
            )));
        }
        let chunks: Vec<_> = manifest
            .unique_chunks()
            .into_iter()
            .filter(|chunk| !self.store.contains(&chunk.hash))
            .collect();
        let total: u64 = chunks.iter().map(|chunk| chunk.size as u64).sum();
        let dps = self.sources.lock().await.for_job(offer, self.client.base());
        self.report(
            offer.id,
            StatusBody::JobDownloading {
                job: offer.id,
                package: offer.package.clone(),
                bytes_done: 0,
                bytes_total: total,
            },
            None,
        )
        .await?;
        let http = &self.http;
        let mut done = 0u64;
        let mut last = std::time::Instant::now();
        for chunk in &chunks {
            let mut errors = Vec::new();
            let mut absent = 0;
            let mut stored = false;
            for dp in &dps {
                let url = format!("{dp}/v1/chunks/{}", chunk.hash);
                match fetch(http, &url).await {
                    Ok(encoded) => {
                        let store = self.store.clone();
                        let hash = chunk.hash;
                        let put =
                            tokio::task::spawn_blocking(move || store.put_encoded(&hash, &encoded))
                                .await
                                .map_err(|err| {
                                    Error::Config(format!("store task failed: {err}"))
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
                                errors.push(format!("{dp}: {err}"));
                            }
                        }
                    }
                    Err(err) => {
                        if err.starts_with("404") {
                            absent += 1;
                        } else {
                            self.refused(offer, dp, format!("chunk {}: {err}", chunk.hash))
                                .await?;
                        }
                        errors.push(format!("{dp}: {err}"))
                    }
                }
            }
            if !stored && absent == dps.len() {
                return Err(Error::NotYetAvailable(format!(
                    "neither a distribution point nor the site holds chunk {} yet",
                    chunk.hash
                )));
            }
            if !stored {
                return Err(Error::Config(format!(
                    "chunk {} could not be fetched from any dp: {}",
                    chunk.hash,
                    errors.join("; ")
                )));
            }
            done += chunk.size as u64;
            if last.elapsed() >= Duration::from_millis(500) {
                last = std::time::Instant::now();
                self.report(
                    offer.id,
                    StatusBody::JobDownloading {
                        job: offer.id,
                        package: offer.package.clone(),
                        bytes_done: done,
                        bytes_total: total,
                    },
                    None,
                )
                .await?;
            }
        }
        Ok(manifest)
    }
}

fn humantime_ms(ms: u64) -> String {
    format!("{:.1} s", ms as f64 / 1000.0)
}

/// A client for DPs' content servers.
pub fn dp_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .read_timeout(Duration::from_secs(60))
        .build()
        .unwrap_or_default()
}

async fn fetch(http: &reqwest::Client, url: &str) -> std::result::Result<Vec<u8>, String> {
    let response = http.get(url).send().await.map_err(|err| err.to_string())?;
    let status = response.status();
    let bytes = response.bytes().await.map_err(|err| err.to_string())?;
    if !status.is_success() {
        return Err(format!(
            "{status}: {}",
            String::from_utf8_lossy(&bytes).trim()
        ));
    }
    Ok(bytes.to_vec())
}

/// How a run ended.
struct Outcome {
    exit_code: Option<i32>,
    reason: Option<String>,
    output_tail: String,
}

/// Runs `sh -c command` in `dir` with `env` added, keeping the last 4 KiB
/// of its output. The process is killed if the future is dropped (timeout).
async fn run_command(command: &str, dir: &Path, env: &[(&str, String)]) -> Result<Outcome> {
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .current_dir(dir)
        .envs(env.iter().map(|(key, value)| (*key, value.as_str())))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(crate::io(format!("starting `{command}`")))?;
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let (out, err, status) = tokio::join!(tail(stdout), tail(stderr), child.wait());
    let status = status.map_err(crate::io(format!("waiting for `{command}`")))?;
    let mut output = out;
    output.extend_from_slice(&err);
    let start = output.len().saturating_sub(OUTPUT_TAIL);
    let output_tail = String::from_utf8_lossy(&output[start..]).into_owned();
    Ok(match status.code() {
        Some(code) => Outcome {
            exit_code: Some(code),
            reason: None,
            output_tail,
        },
        None => Outcome {
            exit_code: None,
            reason: Some("killed by a signal".into()),
            output_tail,
        },
    })
}

/// Reads a stream to its end, keeping its last `OUTPUT_TAIL` bytes.
async fn tail(mut reader: impl tokio::io::AsyncRead + Unpin) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buffer = [0u8; 8192];
    while let Ok(n) = reader.read(&mut buffer).await {
        if n == 0 {
            break;
        }
        kept.extend_from_slice(&buffer[..n]);
        if kept.len() > 2 * OUTPUT_TAIL {
            kept.drain(..kept.len() - OUTPUT_TAIL);
        }
    }
    let start = kept.len().saturating_sub(OUTPUT_TAIL);
    kept.split_off(start)
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
    if state == "done" {
        return Err(Error::Config(format!(
            "job {job} already ran on this workstation"
        )));
    }
    sqlx::query("UPDATE jobs SET state = 'requested' WHERE id = ?")
        .bind(job as i64)
        .execute(db.pool())
        .await
        .map_err(cascade_store::Error::from)?;
    Ok(())
}
