//! The sync worker: long-polls the site for the DP's assignments and brings
//! the content library to match them — fetching only the chunks it lacks,
//! verifying every one, re-verifying on an explicit refresh, and repairing
//! chunks found corrupt while serving.

use crate::db::{self, Held};
use crate::error::{Error, Result};
use crate::{now_ms, Dp};
use cascade_content::{ChunkHash, ChunkRef, SignedManifest};
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
            transfers: HashMap::new(),
            arriving_wait: None,
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
    /// Versions being installed whose content is still arriving at the
    /// site, by package: carried from step to step.
    transfers: HashMap<String, Transfer>,
    /// While a version is arriving at the site: how long the next poll
    /// waits for a change before the DP asks for chunks again.
    arriving_wait: Option<Duration>,
}

/// A version being installed while its content arrives at the site.
struct Transfer {
    version: u64,
    /// Its manifest, verified.
    signed: SignedManifest,
    /// Corrupt chunks found (and removed) when it started, for a refresh.
    corrupt: u64,
    /// What the transfer has done so far, for its progress messages.
    progress: Progress,
}

impl Work for Sync {
    type Error = Error;

    /// One poll and one pass over the assignments. The poll waits for a
    /// change (or a repair), except after a failed pass (the worker's
    /// backoff was the wait, and the assignments are tried again at once)
    /// and while a version's content is still arriving at the site (a
    /// short wait, [`ARRIVING_WAIT_MIN`] growing to [`ARRIVING_WAIT_MAX`]
    /// while nothing new arrives, then the DP asks for chunks again).
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
        let wait = match (self.failing, self.arriving_wait) {
            (true, _) => Duration::ZERO,
            (false, Some(wait)) => wait,
            (false, None) => POLL_WAIT,
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
        // A transfer whose assignment changed is given up.
        let assignments = &self.assignments;
        self.transfers.retain(|package, transfer| {
            assignments
                .iter()
                .any(|now| now.package == *package && now.version == transfer.version)
        });
        let (mut failed, mut waiting, mut arrived) = (0, false, false);
        for assignment in &self.assignments {
            match apply(dp, assignment, &mut self.transfers).await {
                Ok(Outcome::InPlace) => {
                    self.reported.remove(&assignment.package);
                }
                Ok(Outcome::Waiting { progressed }) => {
                    self.reported.remove(&assignment.package);
                    waiting = true;
                    arrived |= progressed;
                }
                Err(err) => {
                    failed += 1;
                    self.transfers.remove(&assignment.package);
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
        self.arriving_wait = waiting.then(|| match (arrived, self.arriving_wait) {
            (false, Some(wait)) => (wait * 2).min(ARRIVING_WAIT_MAX),
            _ => ARRIVING_WAIT_MIN,
        });
        self.failing = failed > 0;
        if self.failing {
            return Err(Error::Unavailable(format!(
                "{failed} of {} assignment(s) failed",
                self.assignments.len()
            )));
        }
        if waiting {
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
    /// The version's content is still arriving at the site: the chunks it
    /// held were fetched (`progressed` if there were any), the rest come
    /// in a later step.
    Waiting { progressed: bool },
}

/// Brings one assignment about: install, refresh or repair as needed.
async fn apply(
    dp: &Dp,
    assignment: &Assignment,
    transfers: &mut HashMap<String, Transfer>,
) -> Result<Outcome> {
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
    let result = bring(
        dp,
        assignment,
        held,
        install,
        refresh,
        refresh || repair,
        transfers,
    )
    .await;
    // A repair not done (failed, or waiting for content) is asked again.
    if repair && !matches!(result, Ok(Outcome::InPlace)) {
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
    transfers: &mut HashMap<String, Transfer>,
) -> Result<Outcome> {
    let package = &assignment.package;
    let version = assignment.version;
    let mut transfer = match transfers.remove(package) {
        Some(transfer) if transfer.version == version => transfer,
        _ => start(dp, assignment, held.as_ref(), install, verify_all).await?,
    };
    let manifest = transfer.signed.verify(&dp.site_key).map_err(|err| {
        Error::Refused(format!("manifest of {package} v{version} refused: {err}"))
    })?;
    let store = dp.store.clone();
    let chunks = manifest.unique_chunks();
    let missing = tokio::task::spawn_blocking(move || {
        chunks
            .into_iter()
            .filter(|chunk| !store.contains(&chunk.hash))
            .collect::<Vec<ChunkRef>>()
    })
    .await
    .map_err(|err| Error::Config(format!("store task failed: {err}")))?;
    let arrived = fetch(dp, assignment, &missing, &mut transfer.progress).await?;
    if arrived.len() < missing.len() {
        // Still arriving at the site: the rest in a later step.
        let progressed = !arrived.is_empty();
        transfers.insert(package.clone(), transfer);
        return Ok(Outcome::Waiting { progressed });
    }

    let mut tx = dp.db.write().await?;
    let refresh_done = if install {
        assignment.refresh
    } else {
        held.as_ref()
            .map_or(0, |held| held.refresh_done)
            .max(assignment.refresh)
    };
    let signed = &transfer.signed;
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
    let received = transfer.progress.wire;
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
                repaired: transfer.corrupt,
            },
        )
        .await?;
    }
    tx.commit().await?;
    dp.wake_forwarder();
    tracing::info!(%package, version, bytes_received = received, repaired = transfer.corrupt, "package in place");
    Ok(Outcome::InPlace)
}

/// Starts bringing an assignment about: fetches and verifies the manifest
/// (or takes the held one, for a refresh or a repair), removes the stored
/// chunks that fail verification when `verify_all`, and reports the
/// transfer started.
async fn start(
    dp: &Dp,
    assignment: &Assignment,
    held: Option<&Held>,
    install: bool,
    verify_all: bool,
) -> Result<Transfer> {
    let package = &assignment.package;
    let version = assignment.version;
    let signed = match (held, install) {
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
    let (bytes_needed, corrupt) = tokio::task::spawn_blocking({
        let chunks = chunks.clone();
        move || -> Result<(u64, u64)> {
            let mut bytes_needed = 0;
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
                bytes_needed += chunk.size as u64;
            }
            Ok((bytes_needed, corrupt))
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
    if install {
        dp.emit(StatusBody::DpTransferStarted {
            package: package.clone(),
            version,
            bytes_total: manifest.total_size(),
            bytes_needed,
        })
        .await?;
    }
    Ok(Transfer {
        version,
        signed,
        corrupt,
        progress: Progress {
            wire: 0,
            bytes_done: 0,
            bytes_needed,
            last: Instant::now(),
        },
    })
}

/// Fetches `missing` from the site, verifying and storing every chunk;
/// returns the chunks stored.
///
/// While the version's content is still arriving at the site
/// ([`Assignment::arriving`]), the DP fetches what the site holds
/// (`partial`) in rounds: each round asks for the chunks still missing, in
/// the manifest's order (the order the site brings them in), one request
/// first and four at a time once that one came back whole, and starts no
/// request after an answer that lacked some. Rounds follow each other
/// ([`ARRIVING_WAIT_MIN`] apart, to let the site gather more) while they
/// bring chunks, for at most [`ROUNDS_FOR`]; then the step ends, so that
/// the other assignments are not held up, and a later step goes on. Once
/// the version is complete at the site, a chunk it lacks is an error.
async fn fetch(
    dp: &Dp,
    assignment: &Assignment,
    missing: &[ChunkRef],
    progress: &mut Progress,
) -> Result<HashSet<ChunkHash>> {
    let (package, version) = (&assignment.package, assignment.version);
    let partial = assignment.arriving;
    let mut stored = HashSet::new();
    let mut remaining = missing.to_vec();
    let started = Instant::now();
    while !remaining.is_empty() {
        let got = fetch_round(dp, package, version, &remaining, partial, progress).await?;
        if got.is_empty() {
            break;
        }
        remaining.retain(|chunk| !got.contains(&chunk.hash));
        stored.extend(got);
        if remaining.is_empty() || started.elapsed() >= ROUNDS_FOR {
            break;
        }
        // Let the site gather more before asking again.
        tokio::time::sleep(ARRIVING_WAIT_MIN).await;
    }
    Ok(stored)
}

/// Wait between two rounds that brought chunks, and first wait of the poll
/// after a step that found nothing new at the site.
const ARRIVING_WAIT_MIN: Duration = Duration::from_millis(100);
/// Longest wait of the poll between two steps that found nothing new.
const ARRIVING_WAIT_MAX: Duration = Duration::from_secs(2);
/// Longest a step keeps fetching rounds of one arriving version.
const ROUNDS_FOR: Duration = Duration::from_secs(5);

/// What a transfer has done so far, for its progress messages.
struct Progress {
    wire: u64,
    bytes_done: u64,
    bytes_needed: u64,
    last: Instant,
}

/// One round of fetch requests over `missing`. Strict (`partial` false):
/// every chunk comes or the round fails, four requests at a time. Partial:
/// the chunks the site holds come; the first request goes alone, the rest
/// four at a time only if it came back whole, and none is started after
/// one that came back short. Returns the chunks stored.
async fn fetch_round(
    dp: &Dp,
    package: &str,
    version: u64,
    missing: &[ChunkRef],
    partial: bool,
    progress: &mut Progress,
) -> Result<HashSet<ChunkHash>> {
    let mut batches = cascade_protocol::fetch_batches(missing, FETCH_BATCH_BYTES);
    let sizes: HashMap<ChunkHash, u64> = missing
        .iter()
        .map(|chunk| (chunk.hash, chunk.size as u64))
        .collect();
    let mut stored = HashSet::new();
    if partial && !batches.is_empty() {
        let first = batches.remove(0);
        let asked = first.len();
        let (wire, got) = fetch_batch(dp, first, true).await?;
        let whole = got.len() == asked;
        record(dp, package, version, progress, &sizes, wire, &got).await?;
        stored.extend(got);
        if !whole {
            return Ok(stored);
        }
    }
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
    while let Some(result) = results.next().await {
        let (wire, got) = result?;
        if got.is_empty() && wire == 0 {
            continue;
        }
        record(dp, package, version, progress, &sizes, wire, &got).await?;
        stored.extend(got);
    }
    Ok(stored)
}

/// Counts what a request brought, and reports progress at most every
/// [`PROGRESS_EVERY`].
async fn record(
    dp: &Dp,
    package: &str,
    version: u64,
    progress: &mut Progress,
    sizes: &HashMap<ChunkHash, u64>,
    wire: u64,
    got: &[ChunkHash],
) -> Result<()> {
    progress.wire += wire;
    progress.bytes_done += got
        .iter()
        .map(|hash| sizes.get(hash).copied().unwrap_or(0))
        .sum::<u64>();
    db::add_counters(
        &dp.db,
        &[
            ("bytes_received", wire),
            ("chunks_received", got.len() as u64),
        ],
    )
    .await?;
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
    Ok(())
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
    let stored = tokio::task::spawn_blocking(move || -> Result<(u64, Vec<ChunkHash>)> {
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
    .map_err(|err| Error::Config(format!("store task failed: {err}")))?;
    if let Err(Error::Content(cascade_content::Error::Corrupt { hash, .. })) = &stored {
        report_damaged(dp, *hash).await;
    }
    stored
}

/// Tells the site a chunk it sent does not match its name, so that it
/// checks its own copy (and repairs it if that is damaged); the batch is
/// refused and fetched again either way.
async fn report_damaged(dp: &Dp, hash: ChunkHash) {
    match dp.client.report_damaged(&[hash]).await {
        Ok(check) if check.damaged > 0 => {
            tracing::warn!(chunk = %hash, "the site's copy of a chunk it sent was damaged; it is repairing it")
        }
        Ok(_) => {
            tracing::warn!(chunk = %hash, "a chunk arrived damaged although the site's copy verifies")
        }
        Err(err) => {
            tracing::warn!(chunk = %hash, error = %cascade_protocol::chain(&err), "telling the site about a damaged chunk failed")
        }
    }
}
