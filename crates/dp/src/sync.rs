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
use cascade_protocol::{Assignment, ChunkList, StatusBody};
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
        let mut superseded = false;
        for assignment in &self.assignments {
            match apply(dp, assignment).await {
                Ok(Outcome::InPlace) => {
                    self.reported.remove(&assignment.package);
                }
                Ok(Outcome::Superseded) => {
                    // The site moved the package on while its content was
                    // arriving: the next poll answers at once with the
                    // assignments as they are now.
                    tracing::info!(package = %assignment.package, version = assignment.version, "assignment changed while its content arrived");
                    superseded = true;
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
        if superseded {
            return Ok(Step::Again);
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

/// What bringing an assignment about came to.
enum Outcome {
    /// The package is held as the assignment says.
    InPlace,
    /// The site changed the assignment while its content was arriving
    /// there (a newer version, or the package taken off this DP).
    Superseded,
}

/// Brings one assignment about: install, refresh or repair as needed.
async fn apply(dp: &Dp, assignment: &Assignment) -> Result<Outcome> {
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
        return Ok(Outcome::InPlace);
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
) -> Result<Outcome> {
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
    let Some(received) = fetch(dp, assignment, &missing, bytes_needed).await? else {
        return Ok(Outcome::Superseded);
    };

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
    Ok(Outcome::InPlace)
}

/// Fetches `missing` from the site, verifying and storing every chunk.
/// Returns the bytes received on the wire, or `None` when the site changed
/// the assignment meanwhile.
///
/// While the version's content is still arriving at the site
/// ([`Assignment::arriving`]), the DP fetches in rounds: each round asks
/// for the chunks still missing, in the manifest's order (the order the
/// site brings them in), takes what the site holds and starts no request
/// after an answer that lacked some. After a round it waits a little for
/// the site to gather more ([`ARRIVING_WAIT_MIN`]); after one that brought
/// nothing, longer each time (to [`ARRIVING_WAIT_MAX`]), and it asks the
/// site whether the assignment still stands. Once the version is complete at the site a
/// chunk it lacks is an error again.
async fn fetch(
    dp: &Dp,
    assignment: &Assignment,
    missing: &[ChunkRef],
    bytes_needed: u64,
) -> Result<Option<u64>> {
    let (package, version) = (&assignment.package, assignment.version);
    let mut arriving = assignment.arriving;
    let mut remaining = missing.to_vec();
    let mut progress = Progress {
        wire: 0,
        bytes_done: 0,
        bytes_needed,
        last: Instant::now(),
    };
    let mut wait = ARRIVING_WAIT_MIN;
    while !remaining.is_empty() {
        let got = fetch_round(dp, package, version, &remaining, arriving, &mut progress).await?;
        if !got.is_empty() {
            remaining.retain(|chunk| !got.contains(&chunk.hash));
            wait = ARRIVING_WAIT_MIN;
            if !remaining.is_empty() {
                // Let the site gather more before asking again.
                tokio::time::sleep(ARRIVING_WAIT_MIN).await;
            }
            continue;
        }
        // Nothing new at the site yet (a strict round that lacks a chunk
        // has failed already).
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(ARRIVING_WAIT_MAX);
        let now = dp.client.assignments(0, Duration::ZERO).await?;
        match now.assignments.iter().find(|now| now.package == *package) {
            Some(now) if now.version == version => arriving = now.arriving,
            _ => return Ok(None),
        }
    }
    Ok(Some(progress.wire))
}

/// Wait after a round that brought chunks but not all, and first wait
/// after one that found nothing new at the site.
const ARRIVING_WAIT_MIN: Duration = Duration::from_millis(100);
/// Longest wait between two such rounds.
const ARRIVING_WAIT_MAX: Duration = Duration::from_secs(1);

/// What a transfer has done so far, for its progress messages.
struct Progress {
    wire: u64,
    bytes_done: u64,
    bytes_needed: u64,
    last: Instant,
}

/// One round of fetch requests over `missing`, four in flight. Strict
/// (`partial` false): every chunk comes or the round fails. Partial: the
/// chunks the site holds come, and no request is started after one that
/// came back short. Returns the chunks stored.
async fn fetch_round(
    dp: &Dp,
    package: &str,
    version: u64,
    missing: &[ChunkRef],
    partial: bool,
    progress: &mut Progress,
) -> Result<HashSet<ChunkHash>> {
    let batches = cascade_protocol::fetch_batches(missing, FETCH_BATCH_BYTES);
    let sizes: HashMap<ChunkHash, u64> = missing
        .iter()
        .map(|chunk| (chunk.hash, chunk.size as u64))
        .collect();
    let short = std::sync::atomic::AtomicBool::new(false);
    let short = &short;
    let mut results = futures_util::stream::iter(batches)
        .map(|batch| async move {
            if short.load(std::sync::atomic::Ordering::Relaxed) {
                return Ok((0, Vec::new()));
            }
            let asked = batch.len();
            let (wire, got) = fetch_batch(dp, batch, partial).await?;
            if got.len() < asked {
                short.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            Ok::<_, Error>((wire, got))
        })
        .buffered(FETCH_PARALLEL);
    let mut stored = HashSet::new();
    while let Some(result) = results.next().await {
        let (wire, hashes) = result?;
        if hashes.is_empty() && wire == 0 {
            continue;
        }
        progress.wire += wire;
        progress.bytes_done += hashes
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
        stored.extend(hashes);
        if progress.last.elapsed() >= PROGRESS_EVERY {
            progress.last = Instant::now();
            dp.emit(StatusBody::DpProgress {
                package: package.to_owned(),
                version,
                bytes_done: progress.bytes_done,
                bytes_needed: progress.bytes_needed,
            })
            .await?;
        }
    }
    Ok(stored)
}

/// One fetch request: streams the frames, checking each as it arrives (a
/// chunk asked for, once: a site that sends more is cut off, so a batch
/// never holds more than was asked), then verifies and stores them off the
/// async threads. Unless `partial`, a site that sends fewer than asked
/// fails the request (what it sent is stored).
async fn fetch_batch(
    dp: &Dp,
    batch: Vec<ChunkHash>,
    partial: bool,
) -> Result<(u64, Vec<ChunkHash>)> {
    let wanted: HashSet<ChunkHash> = batch.iter().copied().collect();
    let mut frames = Vec::with_capacity(batch.len());
    let mut received: HashSet<ChunkHash> = HashSet::with_capacity(batch.len());
    let base = dp.client.base().to_owned();
    let list = ChunkList {
        hashes: batch,
        partial,
    };
    let wire = dp
        .client
        .fetch_chunks(&list, |frame| {
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
        if !chunks.is_empty() {
            store.put_encoded_batch(&chunks)?;
        }
        if !partial && got.len() != wanted.len() {
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
