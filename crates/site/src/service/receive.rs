//! Content between sites: a child site brings in the content of the package
//! versions it needs, and only those, fetching from its parent the chunks
//! its library lacks.
//!
//! A site needs a version when its DPs are to hold the package (the newest
//! version), when a job targets its workstations (the job's version, which
//! its agents may download from the site itself), or when a site below it
//! needs it. It tells its parent its needs (`PUT /site/wants`), so that a
//! parent lacking the content brings it in from its own parent, and fetches
//! chunks as they become available there (`partial` fetches), so content
//! flows down several levels at once rather than one level after the other.
//! Each chunk is verified and stored as it arrives: a transfer cut short
//! (the parent gone, this process killed) resumes with the chunks missing.
//! A version that is no longer needed, because a newer one arrived, is
//! dropped between two batches, and the newer one is fetched instead
//! (Q235788).

use crate::db;
use crate::error::{Entity, Error, Result};
use crate::service::{distribution, messages};
use crate::state::{upstream, AppState, Parent};
use cascade_content::{ChunkHash, ChunkRef, Manifest, SignedManifest};
use cascade_protocol::worker::Step;
use cascade_protocol::{ChunkList, ContentWants, StatusBody, WantedVersion};
use cascade_store::now_ms;
use futures_util::StreamExt;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most versions a child may say it needs.
const MAX_WANTS: usize = 10_000;

/// A child says what it needs (`PUT /api/v1/site/wants`): its needs
/// replace what it said before.
pub async fn put_wants(state: &AppState, child: &str, wants: &ContentWants) -> Result<()> {
    if wants.wants.len() > MAX_WANTS {
        return Err(Error::TooLarge(format!(
            "{} wanted versions; at most {MAX_WANTS}",
            wants.wants.len()
        )));
    }
    let mut tx = state.db.write().await?;
    db::replace_child_wants(&mut tx, child, &wants.wants).await?;
    db::touch_site(&mut tx, child, now_ms()).await?;
    tx.commit().await?;
    state.notify_content_needs_changed();
    Ok(())
}

/// The versions whose content this site needs and does not hold yet, with
/// who needs them (`dps`, `job N`, `site S01`).
pub async fn needs(state: &AppState) -> Result<BTreeMap<WantedVersion, Vec<String>>> {
    let pool = state.db.pool();
    let wanted = db::wanted_versions(pool, now_ms()).await?;
    let incomplete: HashSet<(String, i64)> =
        db::incomplete_versions(pool).await?.into_iter().collect();
    let mut out: BTreeMap<WantedVersion, Vec<String>> = BTreeMap::new();
    for (package, version, who) in wanted {
        if incomplete.contains(&(package.clone(), version)) {
            out.entry(WantedVersion {
                package,
                version: version as u64,
            })
            .or_default()
            .push(who);
        }
    }
    Ok(out)
}

/// How soon to look again for chunks the parent did not hold yet.
const PARENT_WAIT: Duration = Duration::from_millis(300);
/// How soon to look again after a round that stored chunks but found the
/// parent still receiving others.
const ARRIVING_WAIT: Duration = Duration::from_millis(100);
/// Chunk bytes asked for in one fetch request; between two requests the
/// worker checks that the version is still the one to bring in.
const FETCH_BATCH_BYTES: u64 = 2 * 1024 * 1024;
/// Fetch requests in flight at once.
const FETCH_PARALLEL: usize = 2;
/// Encoded bytes of chunks received from the parent stored with one round
/// of syncs, at most.
const STORE_BATCH_BYTES: usize = 8 * 1024 * 1024;
/// Chunks received and waiting to be stored, at most.
const STORE_QUEUE_FRAMES: usize = 256;
/// Least time between two progress messages.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// What one round of work on a version achieved.
enum Round {
    /// Every chunk is here: the version is complete.
    Complete,
    /// Some chunks came, or none; the parent lacks the rest for now.
    Partial { stored: u64 },
    /// A newer version made this one unneeded.
    Superseded,
}

/// What the content worker of a child site keeps between its steps.
pub struct ContentWork {
    state: AppState,
    parent: Arc<Parent>,
    /// What the parent was last told this site needs.
    told: Option<ContentWants>,
    /// The versions whose transfer was reported started.
    started: HashSet<WantedVersion>,
    /// The last failure reported per version (a failure repeating on every
    /// retry is reported once).
    reported_failures: HashMap<WantedVersion, String>,
}

impl ContentWork {
    /// The content work of a child site (`None` at the central site).
    pub fn new(state: &AppState) -> Option<ContentWork> {
        Some(ContentWork {
            parent: state.parent.clone()?,
            state: state.clone(),
            told: None,
            started: HashSet::new(),
            reported_failures: HashMap::new(),
        })
    }

    /// One step: tell the parent what is needed, then a round on every
    /// version needed. Idle when nothing is needed; at once again when a
    /// version completed or was superseded; after [`ARRIVING_WAIT`] when a
    /// round stored chunks and the parent lacked others; after
    /// [`PARENT_WAIT`] when the parent had none of the missing chunks yet; a failure when a version's round
    /// failed (each reported as `content_failed`, once per reason).
    pub async fn round_all(&mut self) -> Result<Step> {
        let state = &self.state;
        // On failure, not an empty set: that would tell the parent nothing
        // is needed and drop the transfers under way.
        let needs = needs(state).await?;
        let wants = ContentWants {
            wants: needs.keys().cloned().collect(),
        };
        if self.told.as_ref() != Some(&wants) {
            match self.parent.client.put_wants(&wants).await {
                Ok(()) => self.told = Some(wants),
                Err(err) => {
                    tracing::warn!(error = %cascade_protocol::chain(&err), "cannot tell the parent what is needed yet")
                }
            }
        }
        state
            .progress
            .lock()
            .expect("progress lock")
            .keep_content(&needs);
        if needs.is_empty() {
            return Ok(Step::Idle);
        }
        let (mut progressed, mut arriving) = (false, false);
        let mut failure = None;
        for want in needs.keys() {
            match round(state, &self.parent, want, &mut self.started).await {
                Ok(Round::Complete) | Ok(Round::Superseded) => {
                    progressed = true;
                    self.reported_failures.remove(want);
                }
                Ok(Round::Partial { stored }) => {
                    arriving |= stored > 0;
                    self.reported_failures.remove(want);
                }
                Err(err) => {
                    let reason = cascade_protocol::chain(&err);
                    tracing::warn!(package = %want.package, version = want.version, error = %reason, "bringing content in failed; will retry");
                    state
                        .progress
                        .lock()
                        .expect("progress lock")
                        .content(want, format!("failed, retrying: {reason}"));
                    if self.reported_failures.get(want) != Some(&reason) {
                        self.reported_failures.insert(want.clone(), reason.clone());
                        let failed = StatusBody::ContentFailed {
                            package: want.package.clone(),
                            version: want.version,
                            reason: reason.clone(),
                        };
                        if let Err(err) = record(state, failed).await {
                            // Reported again on the next failure.
                            self.reported_failures.remove(want);
                            tracing::warn!(error = %cascade_protocol::chain(&err), "recording the failure failed");
                        }
                    }
                    failure = Some(err);
                }
            }
        }
        match failure {
            Some(err) => Err(err),
            None if progressed => Ok(Step::Again),
            // Let the parent gather more before asking again.
            None if arriving => Ok(Step::After(ARRIVING_WAIT)),
            None => Ok(Step::After(PARENT_WAIT)),
        }
    }
}

async fn record(state: &AppState, body: StatusBody) -> Result<()> {
    let mut tx = state.db.write().await?;
    messages::record_site_message(state, &mut tx, body).await?;
    tx.commit().await?;
    state.notify_status_stored();
    Ok(())
}

/// The manifest of a version held here, verified again (it is read from
/// disk) against the central key.
async fn held_manifest(state: &AppState, want: &WantedVersion) -> Result<(i64, Manifest)> {
    let package = db::require_package(state.db.pool(), &want.package).await?;
    let (bytes, signature) = db::manifest(state.db.pool(), package.id, want.version as i64)
        .await?
        .ok_or_else(|| Error::NotFound {
            what: Entity::Version,
            name: format!("{} v{}", want.package, want.version),
        })?;
    let signed = SignedManifest {
        bytes,
        signature: signature.try_into().map_err(|_| {
            Error::Internal(format!(
                "stored signature of {} v{} is damaged",
                want.package, want.version
            ))
        })?,
    };
    Ok((package.id, signed.verify(&state.trust)?))
}

/// The chunks of `manifest` not in the library.
async fn missing_chunks(state: &AppState, manifest: &Manifest) -> Result<Vec<ChunkRef>> {
    let store = state.store.clone();
    let chunks = manifest.unique_chunks();
    tokio::task::spawn_blocking(move || {
        chunks
            .into_iter()
            .filter(|chunk| !store.contains(&chunk.hash))
            .collect()
    })
    .await
    .map_err(Error::task("blocking task failed"))
}

/// One round on one version: fetch what the parent holds of the missing
/// chunks; complete the version when none is missing.
async fn round(
    state: &AppState,
    parent: &Parent,
    want: &WantedVersion,
    started: &mut HashSet<WantedVersion>,
) -> Result<Round> {
    let (package_id, manifest) = held_manifest(state, want).await?;
    let missing = missing_chunks(state, &manifest).await?;
    let bytes_needed: u64 = missing.iter().map(|chunk| chunk.size as u64).sum();
    if started.insert(want.clone()) && !missing.is_empty() {
        record(
            state,
            StatusBody::ContentStarted {
                package: want.package.clone(),
                version: want.version,
                bytes_total: manifest.total_size(),
                bytes_needed,
            },
        )
        .await?;
    }
    let mut stored = 0;
    let mut received = 0;
    if !missing.is_empty() {
        state.progress.lock().expect("progress lock").content(
            want,
            format!(
                "receiving from {}: {bytes_needed} bytes missing",
                parent.code()
            ),
        );
        let outcome = fetch(state, parent, want, &missing, bytes_needed).await?;
        let Some((got, wire)) = outcome else {
            tracing::info!(package = %want.package, version = want.version, "superseded by a newer version; dropped");
            state
                .progress
                .lock()
                .expect("progress lock")
                .content(want, "superseded by a newer version".into());
            return Ok(Round::Superseded);
        };
        stored = got;
        received = wire;
    }
    let still_missing = missing_chunks(state, &manifest).await?;
    if !still_missing.is_empty() {
        state.progress.lock().expect("progress lock").content(
            want,
            format!(
                "waiting for {} to receive {} of its chunks",
                parent.code(),
                still_missing.len()
            ),
        );
        return Ok(Round::Partial { stored });
    }
    complete(state, package_id, want, received).await?;
    started.remove(want);
    Ok(Round::Complete)
}

/// Every chunk is here: the version is complete, and the DPs queued for
/// the package move to it (those already moved to it while it arrived are
/// told it is complete).
async fn complete(
    state: &AppState,
    package_id: i64,
    want: &WantedVersion,
    bytes_received: u64,
) -> Result<()> {
    let mut tx = state.db.write().await?;
    db::mark_version_complete(&mut tx, package_id, want.version as i64).await?;
    messages::record_site_message(
        state,
        &mut tx,
        StatusBody::ContentComplete {
            package: want.package.clone(),
            version: want.version,
            bytes_received,
        },
    )
    .await?;
    let placed = distribution::supersede(
        state,
        &mut tx,
        package_id,
        &want.package,
        want.version as i64,
    )
    .await?;
    db::bump_dps_at_version(&mut tx, package_id, want.version as i64).await?;
    tx.commit().await?;
    state.notify_everything();
    // A version complete here lets an older one go.
    state.notify_retention();
    tracing::info!(package = %want.package, version = want.version, bytes_received, dps = placed, "content complete");
    Ok(())
}

/// Fetches the `missing` chunks the parent holds, in the manifest's order,
/// storing each as it arrives; no request is started after an answer that
/// lacked chunks (the parent is still receiving them). Returns the chunks
/// stored and the bytes received, or `None` when the version stopped being
/// needed meanwhile.
///
/// Requests ([`FETCH_PARALLEL`] at once) hand their frames to one storing
/// thread, which stores whatever has arrived with one round of syncs (up
/// to [`STORE_BATCH_BYTES`]): a request is not held up by the syncs of the
/// one before, and the faster the parent sends the fewer the syncs. At
/// most [`STORE_QUEUE_FRAMES`] received chunks wait to be stored, which is
/// what a crash can lose beyond the requests in flight.
async fn fetch(
    state: &AppState,
    parent: &Parent,
    want: &WantedVersion,
    missing: &[ChunkRef],
    bytes_needed: u64,
) -> Result<Option<(u64, u64)>> {
    let batches = cascade_protocol::fetch_batches(missing, FETCH_BATCH_BYTES);
    let sizes: HashMap<ChunkHash, u64> = missing
        .iter()
        .map(|chunk| (chunk.hash, chunk.size as u64))
        .collect();
    let (sender, receiver) =
        tokio::sync::mpsc::channel::<cascade_protocol::frames::Frame>(STORE_QUEUE_FRAMES);
    let store = state.store.clone();
    let writer = tokio::task::spawn_blocking(move || store_frames(&store, receiver));
    // Set by an answer that lacked chunks (the parent is still receiving
    // them, in the manifest's order): no request is started after it.
    let short = std::sync::atomic::AtomicBool::new(false);
    let (short, sizes, sender_ref) = (&short, &sizes, &sender);
    let mut results = futures_util::stream::iter(batches)
        .map(|batch| async move {
            if short.load(std::sync::atomic::Ordering::Relaxed) {
                return Ok::<_, Error>(Some((0, 0, 0)));
            }
            // Before each request: is this version still the one to
            // bring in, or did a newer one supersede it?
            if !needs(state).await?.contains_key(want) {
                return Ok(None);
            }
            let asked = batch.len() as u64;
            let got = fetch_batch(parent, batch, sizes, sender_ref.clone()).await?;
            if got.0 < asked {
                short.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            Ok(Some(got))
        })
        .buffer_unordered(FETCH_PARALLEL);
    let (mut wire, mut bytes_done) = (0u64, 0u64);
    let mut last_progress = Instant::now();
    let mut outcome = Ok(true);
    while let Some(result) = results.next().await {
        let (got_bytes, got_wire) = match result {
            Ok(Some((_, got_bytes, got_wire))) => (got_bytes, got_wire),
            Ok(None) => {
                outcome = Ok(false);
                break;
            }
            Err(err) => {
                outcome = Err(err);
                break;
            }
        };
        wire += got_wire;
        bytes_done += got_bytes;
        if last_progress.elapsed() >= PROGRESS_EVERY {
            last_progress = Instant::now();
            state.progress.lock().expect("progress lock").content(
                want,
                format!(
                    "receiving from {}: {bytes_done} of {bytes_needed} bytes",
                    parent.code()
                ),
            );
            if let Err(err) = record(
                state,
                StatusBody::ContentProgress {
                    package: want.package.clone(),
                    version: want.version,
                    bytes_done,
                    bytes_needed,
                },
            )
            .await
            {
                outcome = Err(err);
                break;
            }
        }
    }
    drop(results);
    drop(sender);
    // What arrived is stored in any case; a storing failure explains a
    // request that stopped for it.
    let stored = writer.await.map_err(Error::task("store task failed"))?;
    if let Err(Error::Content(cascade_content::Error::Corrupt { hash, .. })) = &stored {
        report_damaged(parent, *hash).await;
    }
    let stored = stored?;
    match outcome? {
        true => Ok(Some((stored, wire))),
        false => Ok(None),
    }
}

/// Tells the parent a chunk it sent does not match its name, so that it
/// checks its own copy (and repairs it if that is damaged); what was
/// received is fetched again either way.
async fn report_damaged(parent: &Parent, hash: ChunkHash) {
    match parent.client.report_damaged(&[hash]).await {
        Ok(check) if check.damaged > 0 => {
            tracing::warn!(chunk = %hash, parent = %parent.code(), "the parent's copy of a chunk it sent was damaged; it is repairing it")
        }
        Ok(_) => {
            tracing::warn!(chunk = %hash, parent = %parent.code(), "a chunk arrived damaged although the parent's copy verifies")
        }
        Err(err) => {
            tracing::warn!(chunk = %hash, error = %cascade_protocol::chain(&err), "telling the parent about a damaged chunk failed")
        }
    }
}

/// The storing thread of [`fetch`]: stores each group of the frames that
/// have arrived (up to [`STORE_BATCH_BYTES`]) with one round of syncs,
/// verifying every chunk. Returns how many it stored. On a slow link that
/// is a chunk at a time, so a crash loses no more than what was in flight;
/// children fetching `partial` see a group once it is stored.
fn store_frames(
    store: &cascade_content::ChunkStore,
    mut receiver: tokio::sync::mpsc::Receiver<cascade_protocol::frames::Frame>,
) -> Result<u64> {
    let mut stored = 0u64;
    while let Some(first) = receiver.blocking_recv() {
        let mut group_bytes = first.encoded.len();
        let mut group = vec![first];
        while group_bytes < STORE_BATCH_BYTES {
            let Ok(frame) = receiver.try_recv() else {
                break;
            };
            group_bytes += frame.encoded.len();
            group.push(frame);
        }
        let chunks: Vec<(ChunkHash, &[u8])> = group
            .iter()
            .map(|frame| (frame.hash, frame.encoded.as_ref()))
            .collect();
        store.put_encoded_batch(&chunks)?;
        stored += group.len() as u64;
    }
    Ok(stored)
}

/// One partial fetch: checks that every frame is a chunk it asked for and
/// hands it to the storing thread as it arrives. Returns (chunks received,
/// their bytes, bytes on the wire).
async fn fetch_batch(
    parent: &Parent,
    batch: Vec<ChunkHash>,
    sizes: &HashMap<ChunkHash, u64>,
    store: tokio::sync::mpsc::Sender<cascade_protocol::frames::Frame>,
) -> Result<(u64, u64, u64)> {
    let mut stream = parent
        .client
        .open_chunks(&ChunkList {
            hashes: batch.clone(),
            partial: true,
        })
        .await
        .map_err(|err| upstream(&format!("fetching chunks from {}", parent.code()), err))?;
    let mut wanted: HashSet<ChunkHash> = batch.into_iter().collect();
    let (mut received, mut bytes) = (0u64, 0u64);
    while let Some(frame) = stream
        .next_frame()
        .await
        .map_err(|err| upstream(&format!("receiving chunks from {}", parent.code()), err))?
    {
        if !wanted.remove(&frame.hash) {
            return Err(Error::invalid(
                "unexpected_chunk",
                format!(
                    "the parent sent chunk {} that was not asked for, or twice",
                    frame.hash
                ),
            ));
        }
        received += 1;
        bytes += sizes.get(&frame.hash).copied().unwrap_or(0);
        if store.send(frame).await.is_err() {
            // The storing thread stopped: its error is the one to report.
            return Err(Error::Internal("storing received chunks stopped".into()));
        }
    }
    Ok((received, bytes, stream.received()))
}
