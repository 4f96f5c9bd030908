//! Ingesting a source directory: scan, chunk, upload the chunks the site
//! lacks, then commit the version (the site signs it).
//!
//! Chunking runs on a blocking thread while the previous batch uploads, so
//! reading the disk and using the network overlap.

use anyhow::Result;
use bytes::BytesMut;
use cascade_content::{chunk_tree, scan, ChunkHash, Entry, SourceEntry};
use cascade_protocol::frames::put_frame;
use cascade_protocol::{Client, NewVersionRequest, VersionInfo, VersionIntent};
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::collections::HashSet;
use std::path::Path;

/// Raw chunk bytes per upload batch.
const BATCH_BYTES: usize = 16 * 1024 * 1024;

/// Batches compressed and uploaded at the same time.
const UPLOADS_IN_FLIGHT: usize = 3;

/// What uploading one batch did.
struct BatchUpload {
    reused: u64,
    uploaded: u64,
    bytes: u64,
}

/// Asks the site which of `fresh` it lacks, compresses those off the async
/// threads and uploads them in one request.
async fn upload_batch(client: &Client, fresh: Vec<(ChunkHash, Vec<u8>)>) -> Result<BatchUpload> {
    if fresh.is_empty() {
        return Ok(BatchUpload {
            reused: 0,
            uploaded: 0,
            bytes: 0,
        });
    }
    let hashes: Vec<ChunkHash> = fresh.iter().map(|(hash, _)| *hash).collect();
    let mut missing: HashSet<ChunkHash> = HashSet::new();
    for part in hashes.chunks(cascade_protocol::MAX_HASHES_PER_REQUEST) {
        missing.extend(client.missing_chunks(part).await?);
    }
    let reused = (fresh.len() - missing.len()) as u64;
    let (frames, uploaded) = tokio::task::spawn_blocking(move || {
        let mut frames = BytesMut::new();
        let mut count = 0u64;
        for (hash, data) in &fresh {
            if missing.contains(hash) {
                put_frame(&mut frames, hash, &cascade_content::encode(data));
                count += 1;
            }
        }
        (frames.freeze(), count)
    })
    .await?;
    let bytes = frames.len() as u64;
    if uploaded > 0 {
        client.upload_chunks(frames).await?;
    }
    Ok(BatchUpload {
        reused,
        uploaded,
        bytes,
    })
}

/// What an ingest did.
#[derive(Debug, Clone, Serialize)]
pub struct IngestReport {
    /// The committed version; its fields sit at the top level of the
    /// `-o json` object (`package`, `version`, `file_count`, ...).
    #[serde(flatten)]
    pub version: VersionInfo,
    /// Chunks the site already held (stored once across all versions).
    pub chunks_reused: u64,
    /// Chunks new to the site: uploaded, or stored by the site itself.
    pub chunks_uploaded: u64,
    /// Their encoded bytes (sent, or stored when the site read the tree).
    pub bytes_uploaded: u64,
    /// Files the site did not read again, unchanged since its previous
    /// local ingest of the package (0 for an upload, which reads every
    /// file).
    pub files_unchanged: u64,
    /// How the tree reached the site: `local` (the site read it from its
    /// own machine) or `upload`.
    pub ingest: IngestPath,
}

/// How a tree reached the site.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IngestPath {
    /// The site read the directory itself (`site run --local-ingest-root`).
    Local,
    /// The CLI cut it and uploaded what the site lacked.
    Upload,
}

/// Whether the site at `base` (a URL) runs on this machine.
fn on_this_machine(base: &str) -> bool {
    let host = base
        .split_once("://")
        .map_or(base, |(_, rest)| rest)
        .split(['/', '?'])
        .next()
        .unwrap_or_default();
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(host, _)| host),
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Asks a site on this machine to read `source` itself; `None` when it
/// may not (no local ingest root, or the directory is outside it), and
/// the tree is to be uploaded.
async fn try_local(
    client: &Client,
    name: &str,
    source: &Path,
    intent: VersionIntent,
    options: VersionOptions,
) -> Result<Option<IngestReport>> {
    if !on_this_machine(client.base()) {
        return Ok(None);
    }
    let Ok(path) = source.canonicalize() else {
        return Ok(None);
    };
    let Some(path) = path.to_str() else {
        return Ok(None);
    };
    let request = cascade_protocol::LocalIngestRequest {
        name: name.to_owned(),
        intent,
        path: path.to_owned(),
        allow_unchanged: options.allow_unchanged,
        allow_setuid: options.allow_setuid,
        read_all: options.read_all,
        uninstall_command: options.uninstall_command.clone(),
    };
    match client.ingest_local(&request).await {
        Ok(report) => Ok(Some(IngestReport {
            version: report.version,
            chunks_reused: report.chunks_reused,
            chunks_uploaded: report.chunks_stored,
            bytes_uploaded: report.bytes_stored,
            files_unchanged: report.files_unchanged,
            ingest: IngestPath::Local,
        })),
        Err(err)
            if matches!(
                err.code(),
                Some("local_ingest_off" | "outside_local_ingest_root")
            ) || err.status() == Some(404) =>
        {
            // A site that may not read it, or one from before local ingest.
            Ok(None)
        }
        Err(err) => Err(err.into()),
    }
}

/// What a new version may be, beyond the defaults.
#[derive(Clone, Debug, Default)]
pub struct VersionOptions {
    /// Make a version even when the tree is the newest version's exactly.
    pub allow_unchanged: bool,
    /// Keep setuid and setgid bits.
    pub allow_setuid: bool,
    /// A site reading the tree itself reads every file again.
    pub read_all: bool,
    /// The command that uninstalls the version.
    pub uninstall_command: Option<String>,
}

/// Ingests `source` as a new version of `name`.
pub async fn ingest(
    client: &Client,
    name: &str,
    source: &Path,
    intent: VersionIntent,
    options: VersionOptions,
    progress: bool,
) -> Result<IngestReport> {
    cascade_domain::PackageName::new(name)?;
    // Fail early, before reading gigabytes, if the intent cannot succeed.
    match (intent, client.package(name).await) {
        (VersionIntent::Create, Ok(_)) => {
            anyhow::bail!("package {name} already exists; use `cascade package update {name}` for a new version")
        }
        (VersionIntent::Update, Err(err)) if err.status() == Some(404) => {
            anyhow::bail!("unknown package {name:?}; use `cascade package create {name}` first")
        }
        (_, Err(err)) if err.status() != Some(404) => return Err(err.into()),
        _ => {}
    }
    if let Some(report) = try_local(client, name, source, intent, options.clone()).await? {
        return Ok(report);
    }
    let source = source.to_owned();
    let listing = tokio::task::spawn_blocking({
        let source = source.clone();
        move || scan(&source)
    })
    // The scan's error already names the directory and what it was doing.
    .await??;
    if !listing
        .iter()
        .any(|entry| matches!(entry, SourceEntry::File(_)))
    {
        anyhow::bail!(
            "source directory {} holds no file; a package needs at least one",
            source.display()
        );
    }
    let total: u64 = listing
        .iter()
        .map(|entry| match entry {
            SourceEntry::File(file) => file.size,
            _ => 0,
        })
        .sum();
    let bar = if progress {
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template(
                "{msg:12} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_message("ingesting");
        bar
    } else {
        ProgressBar::hidden()
    };

    let (sender, receiver) = tokio::sync::mpsc::channel::<Vec<(ChunkHash, Vec<u8>)>>(2);
    let producer_bar = bar.clone();
    let producer = tokio::task::spawn_blocking(move || -> Result<Vec<Entry>> {
        let mut batch = Vec::new();
        let mut batch_bytes = 0usize;
        let entries = chunk_tree(listing, |chunk| {
            batch_bytes += chunk.data.len();
            batch.push((chunk.hash, chunk.data.clone()));
            producer_bar.inc(chunk.data.len() as u64);
            if batch_bytes >= BATCH_BYTES {
                batch_bytes = 0;
                if sender.blocking_send(std::mem::take(&mut batch)).is_err() {
                    return Err(cascade_content::Error::Chunking {
                        source: std::io::Error::other("upload stopped"),
                    });
                }
            }
            Ok(())
        })?;
        if !batch.is_empty() {
            let _ = sender.blocking_send(batch);
        }
        Ok(entries)
    });

    // Batches are deduplicated in order, then up to UPLOADS_IN_FLIGHT of
    // them are compressed (each on its own thread) and uploaded at once, so
    // chunking, compressing and the site's storing overlap.
    let mut sent: HashSet<ChunkHash> = HashSet::new();
    let batches = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|batch| (batch, receiver))
    });
    let mut uploads = std::pin::pin!(batches
        .map(|batch| {
            let fresh: Vec<(ChunkHash, Vec<u8>)> = batch
                .into_iter()
                .filter(|(hash, _)| sent.insert(*hash))
                .collect();
            upload_batch(client, fresh)
        })
        .buffered(UPLOADS_IN_FLIGHT));
    let (mut reused, mut uploaded, mut bytes_uploaded) = (0u64, 0u64, 0u64);
    while let Some(done) = uploads.next().await {
        let done = done?;
        reused += done.reused;
        uploaded += done.uploaded;
        bytes_uploaded += done.bytes;
    }
    let entries = producer.await??;
    bar.set_message("committing");
    let version = client
        .new_version(&NewVersionRequest {
            name: name.to_owned(),
            intent,
            entries,
            allow_unchanged: options.allow_unchanged,
            allow_setuid: options.allow_setuid,
            uninstall_command: options.uninstall_command.clone(),
        })
        .await?;
    bar.finish_and_clear();
    Ok(IngestReport {
        version,
        chunks_reused: reused,
        chunks_uploaded: uploaded,
        bytes_uploaded,
        files_unchanged: 0,
        ingest: IngestPath::Upload,
    })
}
