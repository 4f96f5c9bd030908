//! The sync worker: long-polls the site for the DP's assignments and brings
//! the content library to match them — fetching only the chunks it lacks,
//! verifying every one, re-verifying on an explicit refresh, and repairing
//! chunks found corrupt while serving.

use crate::db::{self, Held};
use crate::error::{Error, Result};
use crate::{now_ms, Dp};
use cascade_content::{ChunkHash, ChunkRef};
use cascade_domain::Version;
use cascade_protocol::worker::{Step, Work, Worker};
use cascade_protocol::{Assignment, StatusBody};
use futures_util::StreamExt;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How long one long poll waits for a change.
const POLL_WAIT: Duration = Duration::from_secs(30);
/// Chunk bytes asked for in one fetch request.
const FETCH_BATCH_BYTES: u64 = 8 * 1024 * 1024;
/// Fetch requests in flight at once.
const FETCH_PARALLEL: usize = 4;
/// Least time between two progress messages.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);

/// Runs until `stop` turns true, as a worker: while the site is
/// unreachable, or an assignment keeps failing, it backs off and keeps
/// serving what it holds.
pub async fn run(dp: Dp, url: String, stop: watch::Receiver<bool>) {
    Worker::new("syncing with the site", stop)
        .run(Sync {
            dp,
            url,
            revision: 0,
            assignments: Vec::new(),
            announced: false,
            failing: false,
            reported: HashMap::new(),
            collected: None,
        })
        .await
}

/// What the sync worker keeps between its steps.
struct Sync {
    dp: Dp,
    url: String,
    /// The revision of the assignments held.
    revision: u64,
    assignments: Vec<Assignment>,
    /// Whether the site has the DP's URL since it last answered.
    announced: bool,
    /// Whether an assignment failed in the last step.
    failing: bool,
    /// The last failure reported per package, so that a failure repeating
    /// on every retry is reported once, not once per attempt.
    reported: HashMap<String, String>,
    /// The revision of the assignments after which chunks no held version
    /// uses were last collected.
    collected: Option<u64>,
}

impl Work for Sync {
    type Error = Error;

    /// One poll and one pass over the assignments. The poll waits for a
    /// change (or a repair), except after a failed pass: the worker's
    /// backoff was the wait, and the assignments are tried again at once.
    async fn step(&mut self) -> Result<Step> {
        let dp = &self.dp;
        if !self.announced {
            match crate::hello(dp, &self.url).await {
                Ok(()) => self.announced = true,
                Err(err) => {
                    tracing::warn!(error = %cascade_protocol::chain(&err), "cannot announce to the site yet")
                }
            }
        }
        let wait = if self.failing {
            Duration::ZERO
        } else {
            POLL_WAIT
        };
        let polled = tokio::select! {
            result = dp.client.assignments(self.revision, wait) => Some(result),
            _ = dp.repair_wake.notified() => None,
        };
        match polled {
            Some(Ok(answer)) => {
                if let Some(key) = &answer.content_key {
                    dp.keep_content_key(key).await?;
                }
                self.revision = answer.revision;
                self.assignments = answer.assignments;
            }
            Some(Err(err)) => {
                // The site is unreachable: keep serving what is held, and
                // apply nothing meanwhile (every transfer would fail the
                // same way).
                self.announced = false;
                return Err(Error::Unavailable(format!(
                    "site unreachable; still serving held content: {}",
                    cascade_protocol::chain(&err)
                )));
            }
            None => {}
        }
        let mut failed = 0;
        for assignment in &self.assignments {
            match apply(dp, assignment).await {
                Ok(()) => {
                    self.reported.remove(&assignment.package);
                }
                Err(err) => {
                    failed += 1;
                    let reason = cascade_protocol::chain(&err);
                    tracing::warn!(package = %assignment.package, version = assignment.version, error = %reason, "assignment failed; will retry");
                    if self.reported.get(&assignment.package) != Some(&reason) {
                        self.reported
                            .insert(assignment.package.clone(), reason.clone());
                        let _ = dp
                            .emit(StatusBody::DpFailed {
                                package: assignment.package.clone(),
                                version: assignment.version,
                                reason,
                            })
                            .await;
                    }
                }
            }
        }
        self.failing = failed > 0;
        if self.failing {
            return Err(Error::Unavailable(format!(
                "{failed} of {} assignment(s) failed",
                self.assignments.len()
            )));
        }
        // Every assignment is in place: what no held version uses goes,
        // once per revision of the assignments, between transfers.
        if self.collected != Some(self.revision) {
            match crate::collect::collect(dp).await {
                Ok(_) => self.collected = Some(self.revision),
                Err(err) => {
                    tracing::warn!(error = %cascade_protocol::chain(&err), "collecting unused chunks failed; will retry")
                }
            }
        }
        Ok(Step::Again)
    }
}

/// Brings one assignment about: install, refresh or repair as needed.
async fn apply(dp: &Dp, assignment: &Assignment) -> Result<()> {
    let held = db::held(&dp.db, &assignment.package).await?;
    let repair = dp
        .repairs
        .lock()
        .expect("repairs lock")
        .remove(&assignment.package);
    // A refresh applies to the version held or the one being moved to: an
    // assignment that moves to a new version while a refresh is requested
    // (a refresh landing while the previous update was still on its way,
    // Q258424) installs the new version and verifies every chunk of it.
    let refresh_requested = assignment.refresh > held.as_ref().map_or(0, |held| held.refresh_done);
    let (install, refresh) = match &held {
        Some(held) if held.version == assignment.version => (false, refresh_requested),
        Some(held) => {
            // A version never goes backwards, whatever the site asks.
            let offered = Version::new(assignment.version).ok_or_else(|| {
                Error::Refused(format!("site assigned version 0 of {}", assignment.package))
            })?;
            Version::check_newer(&assignment.package, Version::new(held.version), offered)
                .map_err(|err| Error::Refused(format!("refusing the assignment: {err}")))?;
            (true, refresh_requested)
        }
        None => (true, refresh_requested),
    };
    if !install && !refresh && !repair {
        return Ok(());
    }
    let result = bring(dp, assignment, held, install, refresh, refresh || repair).await;
    if result.is_err() && repair {
        dp.request_repair(&assignment.package);
    }
    result
}

async fn bring(
    dp: &Dp,
    assignment: &Assignment,
    held: Option<Held>,
    install: bool,
    refresh: bool,
    verify_all: bool,
) -> Result<()> {
    let package = &assignment.package;
    let version = assignment.version;
    let signed = match (&held, install) {
        (Some(held), false) => held.signed()?,
        _ => {
            let wire = dp.client.manifest(package, version).await?;
            wire.to_signed().ok_or_else(|| {
                Error::Refused(format!(
                    "manifest of {package} v{version} has a malformed signature"
                ))
            })?
        }
    };
    let manifest = signed.verify(&dp.site_key).map_err(|err| {
        Error::Refused(format!("manifest of {package} v{version} refused: {err}"))
    })?;
    if manifest.package != *package || manifest.version != version {
        return Err(Error::Refused(format!(
            "site sent the manifest of {} v{} when asked for {package} v{version}",
            manifest.package, manifest.version
        )));
    }
    let chunks = manifest.unique_chunks();

    // Which chunks must cross the network: the absent ones, plus, when
    // verifying, the ones that fail verification (removed here).
    let store = dp.store.clone();
    let (missing, corrupt) = tokio::task::spawn_blocking({
        let chunks = chunks.clone();
        move || -> Result<(Vec<ChunkRef>, u64)> {
            let mut missing = Vec::new();
            let mut corrupt = 0;
            for chunk in chunks {
                let present = store.contains(&chunk.hash);
                if present && verify_all {
                    match store.get(&chunk.hash) {
                        Ok(_) => continue,
                        Err(cascade_content::Error::Corrupt { .. }) => {
                            store.remove(&chunk.hash)?;
                            corrupt += 1;
                        }
                        Err(err) => return Err(err.into()),
                    }
                } else if present {
                    continue;
                }
                missing.push(chunk);
            }
            Ok((missing, corrupt))
        }
    })
    .await
    .map_err(|err| Error::Config(format!("verification task failed: {err}")))??;
    if corrupt > 0 {
        tracing::warn!(%package, version, chunks = corrupt, "corrupt chunks found; fetching them again");
        db::add_counters(&dp.db, &[("chunks_repaired", corrupt)]).await?;
        dp.emit(StatusBody::DpCorruptionFound {
            package: package.clone(),
            version,
            chunks: corrupt,
        })
        .await?;
    }
    let bytes_needed: u64 = missing.iter().map(|chunk| chunk.size as u64).sum();
    if install {
        dp.emit(StatusBody::DpTransferStarted {
            package: package.clone(),
            version,
            bytes_total: manifest.total_size(),
            bytes_needed,
        })
        .await?;
    }
    let received = fetch(dp, package, version, &missing, bytes_needed).await?;

    let mut tx = dp.db.write().await?;
    let refresh_done = if install {
        assignment.refresh
    } else {
        held.as_ref()
            .map_or(0, |held| held.refresh_done)
            .max(assignment.refresh)
    };
    db::store_held(
        &mut tx,
        &Held {
            name: package.clone(),
            version,
            manifest: signed.bytes.clone(),
            signature: signed.signature.to_vec(),
            refresh_done,
        },
        now_ms(),
    )
    .await?;
    if install {
        dp.emit_in(
            &mut tx,
            StatusBody::DpInstalled {
                package: package.clone(),
                version,
                bytes_received: received,
            },
        )
        .await?;
    }
    // A refresh (or a repair) is reported done, also when it came with a
    // move to a new version: the site's view waits for this message.
    if refresh || !install {
        dp.emit_in(
            &mut tx,
            StatusBody::DpRefreshed {
                package: package.clone(),
                version,
                refresh: refresh_done,
                repaired: corrupt,
            },
        )
        .await?;
    }
    tx.commit().await?;
    dp.wake_forwarder();
    tracing::info!(%package, version, bytes_received = received, repaired = corrupt, "package in place");
    Ok(())
}

/// Fetches `missing` from the site, verifying and storing every chunk.
/// Returns the bytes received on the wire.
async fn fetch(
    dp: &Dp,
    package: &str,
    version: u64,
    missing: &[ChunkRef],
    bytes_needed: u64,
) -> Result<u64> {
    if missing.is_empty() {
        return Ok(0);
    }
    let batches = cascade_protocol::fetch_batches(missing, FETCH_BATCH_BYTES);
    let sizes: std::collections::HashMap<ChunkHash, u64> = missing
        .iter()
        .map(|chunk| (chunk.hash, chunk.size as u64))
        .collect();
    let mut results = futures_util::stream::iter(batches)
        .map(|batch| fetch_batch(dp, batch))
        .buffer_unordered(FETCH_PARALLEL);
    let (mut wire_total, mut bytes_done) = (0u64, 0u64);
    let mut last_progress = Instant::now();
    while let Some(result) = results.next().await {
        let (wire, hashes) = result?;
        wire_total += wire;
        bytes_done += hashes
            .iter()
            .map(|hash| sizes.get(hash).copied().unwrap_or(0))
            .sum::<u64>();
        db::add_counters(
            &dp.db,
            &[
                ("bytes_received", wire),
                ("chunks_received", hashes.len() as u64),
            ],
        )
        .await?;
        if last_progress.elapsed() >= PROGRESS_EVERY {
            last_progress = Instant::now();
            dp.emit(StatusBody::DpProgress {
                package: package.to_owned(),
                version,
                bytes_done,
                bytes_needed,
            })
            .await?;
        }
    }
    Ok(wire_total)
}

/// One fetch request: streams the frames, checking each as it arrives (a
/// chunk asked for, once: a site that sends more is cut off, so a batch
/// never holds more than was asked), then verifies and stores them off the
/// async threads.
async fn fetch_batch(dp: &Dp, batch: Vec<ChunkHash>) -> Result<(u64, Vec<ChunkHash>)> {
    let wanted: HashSet<ChunkHash> = batch.iter().copied().collect();
    let mut frames = Vec::with_capacity(batch.len());
    let mut received: HashSet<ChunkHash> = HashSet::with_capacity(batch.len());
    let base = dp.client.base().to_owned();
    let wire = dp
        .client
        .fetch_chunks(&batch, |frame| {
            if !wanted.contains(&frame.hash) || !received.insert(frame.hash) {
                return Err(cascade_protocol::Error::BadAnswer {
                    url: base.clone(),
                    reason: format!(
                        "the site sent chunk {} that was not asked for, or twice",
                        frame.hash
                    ),
                });
            }
            frames.push(frame);
            Ok(())
        })
        .await?;
    let store = dp.store.clone();
    tokio::task::spawn_blocking(move || -> Result<(u64, Vec<ChunkHash>)> {
        // Each was asked for, once (checked as it arrived).
        let got: Vec<ChunkHash> = frames.iter().map(|frame| frame.hash).collect();
        let chunks: Vec<(ChunkHash, &[u8])> = frames
            .iter()
            .map(|frame| (frame.hash, frame.encoded.as_ref()))
            .collect();
        store.put_encoded_batch(&chunks)?;
        if got.len() != wanted.len() {
            return Err(Error::Refused(format!(
                "site sent {} of the {} chunks asked for",
                got.len(),
                wanted.len()
            )));
        }
        Ok((wire, got))
    })
    .await
    .map_err(|err| Error::Config(format!("store task failed: {err}")))?
}
