//! Request and response bodies of the site server's API.

use crate::states::{
    DpState, InstructionState, JobOutcome, JobState, Reachability, SiteDistribution, SiteKind,
    WorkstationState,
};
use cascade_content::{ChunkHash, Entry};
use serde::{Deserialize, Serialize};

/// The body of every error answer: `{"error": {"code": ..., "message": ...}}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// A refusal: a stable machine-readable code and a message for people.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable code, e.g. `unknown_package`, `invalid_name`, `unauthorized`.
    pub code: String,
    /// What was wrong, naming the offending input.
    pub message: String,
}

/// `GET /api/v1/site`: who this site is. Public.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SiteInfo {
    /// The site code.
    pub code: String,
    /// `central`, `primary` or `secondary`.
    #[serde(with = "crate::states::site_kind")]
    pub kind: SiteKind,
    /// Hex of the ed25519 key that signs manifests: the central site's key,
    /// the same at every site of a hierarchy.
    pub public_key: String,
    /// The Cascade version the server runs.
    pub server_version: String,
    /// The parent site's code (none for the central site).
    #[serde(default)]
    pub parent: Option<String>,
    /// The central site's code.
    #[serde(default)]
    pub central: Option<String>,
}

/// A list of chunk hashes (`POST /api/v1/content/missing`, `/content/fetch`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChunkList {
    /// The chunks.
    pub hashes: Vec<ChunkHash>,
    /// `/content/fetch` for a child site or a DP: send the chunks held and
    /// skip the others (the site may still be bringing them in) instead of
    /// refusing the request.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub partial: bool,
}

impl ChunkList {
    /// A list of hashes.
    pub fn of(hashes: Vec<ChunkHash>) -> ChunkList {
        ChunkList {
            hashes,
            partial: false,
        }
    }
}

/// `POST /api/v1/content/damaged`: what the site found of the chunks a
/// receiver (a DP or a child site) says it sent damaged.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DamageCheck {
    /// Chunks listed.
    pub checked: u64,
    /// Those whose stored bytes here do not match their name: removed, and
    /// brought back where the site can (from its parent).
    pub damaged: u64,
}

/// `POST /api/v1/content/chunks`: what an upload stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UploadReport {
    /// Chunks received in the request.
    pub received: u64,
    /// Chunks that were new to the library.
    pub stored: u64,
    /// Bytes written to disk for the new chunks.
    pub stored_bytes: u64,
}

/// Whether a package version starts a new package or updates one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VersionIntent {
    /// Version 1 of a package that must not exist yet.
    Create,
    /// The next version of a package that must exist.
    Update,
}

/// `POST /api/v1/packages`: commit a new version from uploaded chunks.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NewVersionRequest {
    /// Package name.
    pub name: String,
    /// Create or update.
    pub intent: VersionIntent,
    /// The tree, sorted by path; every chunk must already be in the library.
    pub entries: Vec<Entry>,
    /// For an update: make a new version even when the tree is the newest
    /// version's exactly (otherwise the answer is that version, `unchanged`).
    #[serde(default)]
    pub allow_unchanged: bool,
    /// Keep setuid and setgid bits in the tree (refused otherwise: a
    /// package would install a program that runs as its owner).
    #[serde(default)]
    pub allow_setuid: bool,
    /// The command that uninstalls this version (run by a removal job
    /// made without a command of its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uninstall_command: Option<String>,
}

/// `POST /api/v1/ingest/local`: the site reads a directory of its own
/// machine (under its `site run --local-ingest-root`) as a new version.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LocalIngestRequest {
    /// Package name.
    pub name: String,
    /// Create or update.
    pub intent: VersionIntent,
    /// The directory, an absolute path on the site's machine.
    pub path: String,
    /// As in [`NewVersionRequest`].
    #[serde(default)]
    pub allow_unchanged: bool,
    /// As in [`NewVersionRequest`].
    #[serde(default)]
    pub allow_setuid: bool,
    /// Read every file, also those whose size, times and inode are the
    /// ones the package's previous local ingest read them with (which are
    /// otherwise taken unchanged, as rsync's quick check does).
    #[serde(default)]
    pub read_all: bool,
    /// As in [`NewVersionRequest`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uninstall_command: Option<String>,
}

/// What a local ingest did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LocalIngestReport {
    /// The committed version.
    pub version: VersionInfo,
    /// Chunks the site held already.
    pub chunks_reused: u64,
    /// Chunks stored.
    pub chunks_stored: u64,
    /// Their stored (encoded) bytes.
    pub bytes_stored: u64,
    /// Files not read again: unchanged (size, times, inode) since the
    /// package's previous local ingest read them for its newest version.
    #[serde(default)]
    pub files_unchanged: u64,
}

/// A stored package version.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VersionInfo {
    /// Package name.
    pub package: String,
    /// Version number.
    pub version: u64,
    /// Sum of file sizes.
    pub total_size: u64,
    /// Number of files.
    pub file_count: u64,
    /// Number of distinct chunks.
    pub chunk_count: u64,
    /// When the version was committed.
    pub created_at_ms: i64,
    /// Whether the site holds every chunk of it (a child site receives
    /// content only where it is needed).
    #[serde(default = "yes")]
    pub complete: bool,
    /// True when an update was asked for a tree identical to the newest
    /// version's: no version was made, and this is the newest one.
    #[serde(default)]
    pub unchanged: bool,
    /// When this site's retention stopped keeping the version (`site
    /// settings --keep-versions`): its chunks are gone, no job can use it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_at_ms: Option<i64>,
    /// The command that uninstalls it, kept at the central site (a
    /// removal job made without a command runs it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uninstall_command: Option<String>,
}

fn yes() -> bool {
    true
}

/// One line of `GET /api/v1/packages`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PackageSummary {
    /// Package name.
    #[serde(rename = "package", alias = "name")]
    pub name: String,
    /// The newest version.
    pub latest: VersionInfo,
    /// DPs of the site's subtree the package is distributed to.
    pub dp_count: u64,
}

/// `GET /api/v1/packages/{name}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PackageDetail {
    /// Package name.
    #[serde(rename = "package", alias = "name")]
    pub name: String,
    /// Every version, oldest first.
    pub versions: Vec<VersionInfo>,
    /// DPs the package is distributed to.
    pub dps: Vec<String>,
    /// The newest version's tree.
    pub entries: Vec<Entry>,
}

/// A signed manifest as it travels: the exact signed JSON text and the hex
/// ed25519 signature over its bytes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SignedManifestWire {
    /// The manifest JSON, byte for byte as signed.
    pub manifest: String,
    /// Hex of the 64-byte signature.
    pub signature: String,
}

impl SignedManifestWire {
    /// Wraps a signed manifest for the wire.
    pub fn from_signed(signed: &cascade_content::SignedManifest) -> Self {
        SignedManifestWire {
            manifest: String::from_utf8_lossy(&signed.bytes).into_owned(),
            signature: hex::encode(signed.signature),
        }
    }

    /// Unwraps it; the signature is not checked here.
    pub fn to_signed(&self) -> Option<cascade_content::SignedManifest> {
        let signature = hex::decode(&self.signature).ok()?;
        Some(cascade_content::SignedManifest {
            bytes: self.manifest.as_bytes().to_vec(),
            signature: signature.try_into().ok()?,
        })
    }
}

/// `POST /api/v1/packages/{name}/distribute`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DistributeRequest {
    /// DPs by name.
    #[serde(default)]
    pub dps: Vec<String>,
    /// Every DP of the site, now and added later.
    #[serde(default)]
    pub all_dps: bool,
    /// The DPs of a DP group, at every site of the hierarchy (central site only).
    #[serde(default)]
    pub dp_group: Option<String>,
}

/// `POST /api/v1/packages/{name}/refresh`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RefreshRequest {
    /// DPs by name: `NAME` for this site's, `SITE/NAME` for a DP of a site
    /// below. With neither these nor `dp_group`: every DP of this site and
    /// of every site below that holds the package.
    #[serde(default)]
    pub dps: Vec<String>,
    /// The DPs of a DP group, at every site.
    #[serde(default)]
    pub dp_group: Option<String>,
}

/// What a distribute or refresh call did to one DP.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TargetChange {
    /// The DP.
    pub dp: String,
    /// The version it must now hold.
    pub version: u64,
    /// False when the DP was already targeted at this version (nothing new
    /// is sent to it).
    pub changed: bool,
}

/// Answer to distribute and refresh.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TargetReport {
    /// Package name.
    pub package: String,
    /// One line per DP of this site named or implied.
    pub dps: Vec<TargetChange>,
    /// The child sites the distribution was sent on to (a DP group spans
    /// sites; each places the package on its own DPs of the group).
    #[serde(default)]
    pub sites: Vec<String>,
}

/// `GET /api/v1/packages/{name}/status`: one line per DP, derived from status
/// messages.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PackageStatus {
    /// Package name.
    pub package: String,
    /// The newest version.
    pub latest_version: u64,
    /// Per DP.
    pub dps: Vec<DpPackageStatus>,
}

/// One DP's line in a package status.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DpPackageStatus {
    /// The DP's site.
    #[serde(default)]
    pub site: String,
    /// The DP.
    pub dp: String,
    /// The version it must hold.
    pub target_version: Option<u64>,
    /// The newest version it reported holding.
    pub installed_version: Option<u64>,
    /// `pending`, `transferring`, `installed`, `failed`, `refresh-pending`,
    /// `repairing`.
    pub state: DpState,
    /// Bytes transferred so far, while transferring.
    pub bytes_done: Option<u64>,
    /// Bytes to transfer, while transferring.
    pub bytes_total: Option<u64>,
    /// Why, when failed.
    pub reason: Option<String>,
    /// When the state began.
    pub since_ms: i64,
}

/// `POST /api/v1/dps/enroll`: a new DP presents the join token.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EnrollRequest {
    /// The DP's name, unique in the site.
    pub name: String,
    /// The site's join token.
    pub join_token: String,
    /// Hex of the DP's own public key, which signs its status messages.
    #[serde(default)]
    pub public_key: Option<String>,
}

/// The site's answer to an enrollment.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EnrollResponse {
    /// The DP's own credential, shown once.
    pub credential: String,
    /// The site.
    pub site: SiteInfo,
}

/// `POST /api/v1/dp/hello`: a DP announces where it serves content.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DpHello {
    /// Base URL of the DP's content server.
    pub url: String,
    /// SHA-256 fingerprint (hex) of the TLS certificate it serves with,
    /// which the site hands its agents to pin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
}

/// `GET /api/v1/dps`: one line per DP.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DpInfo {
    /// Name.
    #[serde(rename = "dp", alias = "name")]
    pub name: String,
    /// Where agents download from it: the URL an administrator admitted
    /// (`dp approve`); none until it is approved.
    pub url: Option<String>,
    /// Where it says it serves content, as it last announced.
    #[serde(default)]
    pub announced_url: Option<String>,
    /// Whether an administrator admitted it; until then it is given no
    /// package and no agent downloads from it.
    #[serde(default)]
    pub approved: bool,
    /// When it enrolled.
    pub enrolled_at_ms: i64,
    /// When it last talked to the site.
    pub last_seen_ms: Option<i64>,
    /// Packages distributed to it.
    pub packages: u64,
    /// SHA-256 fingerprint of the TLS certificate it serves with, as it
    /// announced (agents pin it); compare with its `tls/cert.pem` before
    /// approving.
    #[serde(default)]
    pub certificate: Option<String>,
}

/// `POST /api/v1/dps/{name}/approve`: admit a DP, at the URL it announced
/// or at `url`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DpApproval {
    /// Where agents download from it; the URL it announced when absent.
    #[serde(default)]
    pub url: Option<String>,
}

/// `GET /api/v1/dp/assignments?after=R&wait_ms=W`: what a DP must hold.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Assignments {
    /// Changes whenever the set changes; pass it back as `after`.
    pub revision: u64,
    /// Every package the DP must hold, at which version.
    pub assignments: Vec<Assignment>,
    /// Hex of the site's content-ticket key ([`crate::ticket`]), once the DP
    /// is admitted: the DP serves only requests with a ticket it verifies.
    #[serde(default)]
    pub content_key: Option<String>,
}

/// `POST /api/v1/content/ticket`: a content ticket for an administrator
/// (to fetch from the site's DPs by hand).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ContentTicket {
    /// Present it as `Authorization: Bearer TICKET`.
    pub ticket: String,
    /// When it stops being accepted.
    pub expires_at_ms: i64,
}

/// What `POST /api/v1/content/ticket` asks for.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ContentTicketRequest {
    /// How long it holds (default and most: 24 hours).
    #[serde(default)]
    pub valid_ms: Option<u64>,
}

/// One package a DP must hold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// Package name.
    pub package: String,
    /// The version to hold.
    pub version: u64,
    /// Explicit refresh requests so far; a higher number than the DP last
    /// handled means: re-verify every chunk and repair.
    pub refresh: u64,
    /// The site is still receiving this version's content from its parent
    /// (cut-through): the DP fetches what the site holds already
    /// (`partial`) and waits for the rest, instead of waiting for the whole
    /// version to reach the site first. False once the version is complete
    /// there, when a chunk the site lacks is an error again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub arriving: bool,
}

/// Query of the assignments long poll.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AssignmentsQuery {
    /// The revision the DP already has; the call waits while it is current.
    #[serde(default)]
    pub after: u64,
    /// How long to wait for a change, at most 60 s.
    #[serde(default)]
    pub wait_ms: u64,
}

/// A status message as it travels: the source's sequence number, when the
/// source recorded it, and what happened. The source itself is the
/// authenticated sender.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusMessage {
    /// Per-source sequence number, from 1, without gaps.
    pub seq: u64,
    /// When the source recorded it (ms since the Unix epoch).
    pub at_ms: i64,
    /// What happened.
    #[serde(flatten)]
    pub body: StatusBody,
    /// Hex ed25519 signature of the DP or agent that sent it
    /// ([`crate::status_signing`]); none from a site, or from a sender
    /// enrolled before issue 12.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

/// What a status message reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StatusBody {
    /// Site: `dp` must hold `version` of `package`.
    DistributionTargeted {
        package: String,
        dp: String,
        version: u64,
        refresh: u64,
    },
    /// DP: started bringing a version in.
    DpTransferStarted {
        package: String,
        version: u64,
        bytes_total: u64,
        bytes_needed: u64,
    },
    /// DP: transfer progress.
    DpProgress {
        package: String,
        version: u64,
        bytes_done: u64,
        bytes_needed: u64,
    },
    /// DP: the version is stored and verified.
    DpInstalled {
        package: String,
        version: u64,
        bytes_received: u64,
    },
    /// DP: an attempt failed; it retries.
    DpFailed {
        package: String,
        version: u64,
        reason: String,
    },
    /// DP: stored chunks failed verification and are fetched again.
    DpCorruptionFound {
        package: String,
        version: u64,
        chunks: u64,
    },
    /// DP: an explicit refresh finished.
    DpRefreshed {
        package: String,
        version: u64,
        refresh: u64,
        repaired: u64,
    },
    /// Site: the job expired; its offers are withdrawn everywhere.
    JobExpired { job: u64, package: String },
    /// Site: an administrator canceled the job.
    JobCanceled { job: u64, package: String },
    /// Agent: it received the job's offer.
    JobOffered { job: u64, package: String },
    /// Agent: downloading the package.
    JobDownloading {
        job: u64,
        package: String,
        bytes_done: u64,
        bytes_total: u64,
    },
    /// Agent: a DP's content was refused (it failed verification, or the DP
    /// could not serve it); the agent goes on with another DP.
    JobContentRefused {
        job: u64,
        package: String,
        dp: String,
        reason: String,
    },
    /// Agent: it refused the job's offer (unsigned, altered, older than the
    /// one it holds), and runs nothing for it.
    JobRefused {
        job: u64,
        package: String,
        reason: String,
    },
    /// Agent: a job is due but held, not started: the newest timestamp the
    /// central site signed has expired (its site is frozen or cut off), or
    /// none arrived yet ([`crate::intent::Freshness`]). Reported once per
    /// timestamp held; the job starts when a current one arrives.
    JobHeld {
        job: u64,
        package: String,
        reason: String,
    },
    /// Agent: the job did not run, because the same program (package
    /// version and command) ran here before, in job `previous_job`, and
    /// the job's rerun rule `rule` says not again. Nothing more happens
    /// for the job on this workstation.
    JobSkipped {
        job: u64,
        package: String,
        #[serde(with = "crate::states::rerun_rule")]
        rule: cascade_domain::run::RerunRule,
        previous_job: u64,
        /// Whether that run succeeded.
        previous_succeeded: bool,
    },
    /// Agent: a mandatory job is due but no maintenance window of its
    /// collection is open with room for its timeout; the next such window
    /// opens at `opens_at_ms` (absent: none is long enough). Reported once
    /// per opening time.
    JobWaitingForWindow {
        job: u64,
        package: String,
        #[serde(default)]
        opens_at_ms: Option<i64>,
        /// Why no window will do, when it is not that none is long enough
        /// (a window the agent cannot read).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// Agent: the command of attempt `attempt` succeeded, and the job's
    /// check command runs.
    JobChecking {
        job: u64,
        package: String,
        attempt: u32,
    },
    /// Agent: the command of attempt `attempt` ended with one of the job's
    /// reboot codes; the check runs, and the job completes, once the
    /// workstation has restarted.
    JobRebootPending {
        job: u64,
        package: String,
        attempt: u32,
        exit_code: i32,
        output_tail: String,
    },
    /// Agent: attempt `attempt` started.
    JobRunning {
        job: u64,
        package: String,
        attempt: u32,
    },
    /// Agent: the command succeeded.
    JobCompleted {
        job: u64,
        package: String,
        attempt: u32,
        exit_code: i32,
        /// The last 4 KiB of the command's output (absent from agents
        /// older than issue 10).
        #[serde(default)]
        output_tail: String,
    },
    /// Agent, when it starts again after a crash: attempt `attempt` (of
    /// `of` allowed) was running when the agent stopped; the attempt
    /// counts, and another follows only if `retrying`.
    JobInterrupted {
        job: u64,
        package: String,
        attempt: u32,
        of: u32,
        retrying: bool,
        reason: String,
    },
    /// Agent: it stopped the job's work in flight, because the job was
    /// canceled (a running command is terminated: SIGTERM to its process
    /// group, SIGKILL after a grace period) or expired before the command
    /// started. Nothing more happens for the job on this workstation.
    JobStopped {
        job: u64,
        package: String,
        attempt: u32,
        reason: String,
        output_tail: String,
    },
    /// Site: a DP was admitted at the site (`dp approve`; DP groups name
    /// DPs of any site).
    DpEnrolled {
        dp: String,
        /// The DP's public key, which signs its status messages.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        public_key: Option<String>,
    },
    /// Site: a workstation's agent enrolled at the site (collections name
    /// workstations of any site).
    AgentEnrolled {
        agent: String,
        /// The agent's public key, which signs its status messages.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        public_key: Option<String>,
    },
    /// Site: the site joined the hierarchy under `parent`; recorded when it
    /// is created and relayed once it first runs, so its arrival at the
    /// central site means the site is connected.
    SiteJoined { parent: String },
    /// Site: a job's instruction arrived (or, at the site it was created
    /// at, was created): the site's workstations it targets and the site's
    /// DPs it distributes to (none: distribution is not applicable here).
    /// Reported again, with the new workstation, when one that enrolled
    /// later is the first of the site the job targets.
    JobArrived {
        job: u64,
        package: String,
        version: u64,
        targets: Vec<String>,
        dps: Vec<String>,
    },
    /// Site: started bringing a package version's content in from its parent.
    ContentStarted {
        package: String,
        version: u64,
        bytes_total: u64,
        bytes_needed: u64,
    },
    /// Site: content transfer progress.
    ContentProgress {
        package: String,
        version: u64,
        bytes_done: u64,
        bytes_needed: u64,
    },
    /// Site: every chunk of the version is in the site's library, verified.
    ContentComplete {
        package: String,
        version: u64,
        bytes_received: u64,
    },
    /// Site: bringing the content in failed; it retries.
    ContentFailed {
        package: String,
        version: u64,
        reason: String,
    },
    /// Site: an instruction from the parent was refused (a manifest not
    /// signed by the central site, an older version, an unknown name).
    InstructionRefused {
        instruction: String,
        package: Option<String>,
        version: Option<u64>,
        #[serde(default)]
        job: Option<u64>,
        reason: String,
    },
    /// Agent: the job failed for good.
    JobFailed {
        job: u64,
        package: String,
        attempt: u32,
        exit_code: Option<i32>,
        reason: String,
        output_tail: String,
    },
    /// Agent: an attempt failed; another follows.
    JobRetrying {
        job: u64,
        package: String,
        attempt: u32,
        of: u32,
        exit_code: Option<i32>,
        reason: String,
        output_tail: String,
    },
}

impl StatusBody {
    /// The package the message is about, if any.
    pub fn package(&self) -> Option<&str> {
        match self {
            StatusBody::DistributionTargeted { package, .. }
            | StatusBody::DpTransferStarted { package, .. }
            | StatusBody::DpProgress { package, .. }
            | StatusBody::DpInstalled { package, .. }
            | StatusBody::DpFailed { package, .. }
            | StatusBody::DpCorruptionFound { package, .. }
            | StatusBody::DpRefreshed { package, .. }
            | StatusBody::JobArrived { package, .. }
            | StatusBody::ContentStarted { package, .. }
            | StatusBody::ContentProgress { package, .. }
            | StatusBody::ContentComplete { package, .. }
            | StatusBody::ContentFailed { package, .. }
            | StatusBody::JobExpired { package, .. }
            | StatusBody::JobCanceled { package, .. }
            | StatusBody::JobOffered { package, .. }
            | StatusBody::JobDownloading { package, .. }
            | StatusBody::JobContentRefused { package, .. }
            | StatusBody::JobRefused { package, .. }
            | StatusBody::JobHeld { package, .. }
            | StatusBody::JobSkipped { package, .. }
            | StatusBody::JobChecking { package, .. }
            | StatusBody::JobWaitingForWindow { package, .. }
            | StatusBody::JobRebootPending { package, .. }
            | StatusBody::JobRunning { package, .. }
            | StatusBody::JobCompleted { package, .. }
            | StatusBody::JobInterrupted { package, .. }
            | StatusBody::JobStopped { package, .. }
            | StatusBody::JobFailed { package, .. }
            | StatusBody::JobRetrying { package, .. } => Some(package),
            StatusBody::InstructionRefused { package, .. } => package.as_deref(),
            StatusBody::DpEnrolled { .. }
            | StatusBody::AgentEnrolled { .. }
            | StatusBody::SiteJoined { .. } => None,
        }
    }

    /// The DP a message is about, for the site's messages about one DP.
    pub fn dp(&self) -> Option<&str> {
        match self {
            StatusBody::DistributionTargeted { dp, .. } | StatusBody::DpEnrolled { dp, .. } => {
                Some(dp)
            }
            _ => None,
        }
    }

    /// The stable name of the message kind.
    pub fn kind(&self) -> &'static str {
        match self {
            StatusBody::DistributionTargeted { .. } => "distribution_targeted",
            StatusBody::DpTransferStarted { .. } => "dp_transfer_started",
            StatusBody::DpProgress { .. } => "dp_progress",
            StatusBody::DpInstalled { .. } => "dp_installed",
            StatusBody::DpFailed { .. } => "dp_failed",
            StatusBody::DpCorruptionFound { .. } => "dp_corruption_found",
            StatusBody::DpRefreshed { .. } => "dp_refreshed",
            StatusBody::DpEnrolled { .. } => "dp_enrolled",
            StatusBody::AgentEnrolled { .. } => "agent_enrolled",
            StatusBody::SiteJoined { .. } => "site_joined",
            StatusBody::JobArrived { .. } => "job_arrived",
            StatusBody::ContentStarted { .. } => "content_started",
            StatusBody::ContentProgress { .. } => "content_progress",
            StatusBody::ContentComplete { .. } => "content_complete",
            StatusBody::ContentFailed { .. } => "content_failed",
            StatusBody::InstructionRefused { .. } => "instruction_refused",
            StatusBody::JobExpired { .. } => "job_expired",
            StatusBody::JobCanceled { .. } => "job_canceled",
            StatusBody::JobOffered { .. } => "job_offered",
            StatusBody::JobDownloading { .. } => "job_downloading",
            StatusBody::JobContentRefused { .. } => "job_content_refused",
            StatusBody::JobRefused { .. } => "job_refused",
            StatusBody::JobHeld { .. } => "job_held",
            StatusBody::JobSkipped { .. } => "job_skipped",
            StatusBody::JobChecking { .. } => "job_checking",
            StatusBody::JobWaitingForWindow { .. } => "job_waiting_for_window",
            StatusBody::JobRebootPending { .. } => "job_reboot_pending",
            StatusBody::JobRunning { .. } => "job_running",
            StatusBody::JobCompleted { .. } => "job_completed",
            StatusBody::JobInterrupted { .. } => "job_interrupted",
            StatusBody::JobStopped { .. } => "job_stopped",
            StatusBody::JobFailed { .. } => "job_failed",
            StatusBody::JobRetrying { .. } => "job_retrying",
        }
    }

    /// True for the messages a DP may send about itself.
    pub fn is_from_dp(&self) -> bool {
        self.dp_subject().is_some()
    }

    /// For the messages a DP may send about itself: the package version
    /// it is about.
    pub fn dp_subject(&self) -> Option<(&str, u64)> {
        match self {
            StatusBody::DpTransferStarted {
                package, version, ..
            }
            | StatusBody::DpProgress {
                package, version, ..
            }
            | StatusBody::DpInstalled {
                package, version, ..
            }
            | StatusBody::DpFailed {
                package, version, ..
            }
            | StatusBody::DpCorruptionFound {
                package, version, ..
            }
            | StatusBody::DpRefreshed {
                package, version, ..
            } => Some((package, *version)),
            _ => None,
        }
    }

    /// The job an agent's message is about, if it is one an agent may send.
    pub fn agent_job(&self) -> Option<u64> {
        match self {
            StatusBody::JobOffered { job, .. }
            | StatusBody::JobDownloading { job, .. }
            | StatusBody::JobContentRefused { job, .. }
            | StatusBody::JobRefused { job, .. }
            | StatusBody::JobHeld { job, .. }
            | StatusBody::JobSkipped { job, .. }
            | StatusBody::JobChecking { job, .. }
            | StatusBody::JobWaitingForWindow { job, .. }
            | StatusBody::JobRebootPending { job, .. }
            | StatusBody::JobRunning { job, .. }
            | StatusBody::JobCompleted { job, .. }
            | StatusBody::JobInterrupted { job, .. }
            | StatusBody::JobStopped { job, .. }
            | StatusBody::JobFailed { job, .. }
            | StatusBody::JobRetrying { job, .. } => Some(*job),
            _ => None,
        }
    }

    /// The job a message is about, if any.
    pub fn job(&self) -> Option<u64> {
        match self {
            StatusBody::JobExpired { job, .. }
            | StatusBody::JobCanceled { job, .. }
            | StatusBody::JobArrived { job, .. }
            | StatusBody::JobOffered { job, .. }
            | StatusBody::JobDownloading { job, .. }
            | StatusBody::JobContentRefused { job, .. }
            | StatusBody::JobRefused { job, .. }
            | StatusBody::JobHeld { job, .. }
            | StatusBody::JobSkipped { job, .. }
            | StatusBody::JobChecking { job, .. }
            | StatusBody::JobWaitingForWindow { job, .. }
            | StatusBody::JobRebootPending { job, .. }
            | StatusBody::JobRunning { job, .. }
            | StatusBody::JobCompleted { job, .. }
            | StatusBody::JobInterrupted { job, .. }
            | StatusBody::JobStopped { job, .. }
            | StatusBody::JobFailed { job, .. }
            | StatusBody::JobRetrying { job, .. } => Some(*job),
            StatusBody::InstructionRefused { job, .. } => *job,
            _ => None,
        }
    }

    /// The run event this message carries, if it is about a job.
    pub fn run_event(&self) -> Option<cascade_domain::run::RunEvent> {
        use cascade_domain::run::RunEvent;
        Some(match self {
            StatusBody::JobExpired { .. } => RunEvent::Expired,
            StatusBody::JobCanceled { .. } => RunEvent::Canceled,
            StatusBody::JobOffered { .. } => RunEvent::Offered,
            StatusBody::JobDownloading {
                bytes_done,
                bytes_total,
                ..
            } => RunEvent::Downloading {
                bytes_done: *bytes_done,
                bytes_total: *bytes_total,
            },
            StatusBody::JobRefused { reason, .. } => RunEvent::Refused {
                reason: reason.clone(),
            },
            StatusBody::JobHeld { reason, .. } => RunEvent::Held {
                reason: reason.clone(),
            },
            StatusBody::JobSkipped {
                rule,
                previous_job,
                previous_succeeded,
                ..
            } => RunEvent::Skipped {
                rule: *rule,
                previous_job: *previous_job,
                previous: if *previous_succeeded {
                    cascade_domain::run::PastOutcome::Succeeded
                } else {
                    cascade_domain::run::PastOutcome::Failed
                },
            },
            StatusBody::JobRunning { attempt, .. } => RunEvent::Running { attempt: *attempt },
            StatusBody::JobChecking { attempt, .. } => RunEvent::Checking { attempt: *attempt },
            StatusBody::JobWaitingForWindow {
                opens_at_ms,
                reason,
                ..
            } => RunEvent::WaitingForWindow {
                opens_at: *opens_at_ms,
                reason: reason.clone(),
            },
            StatusBody::JobRebootPending {
                attempt,
                exit_code,
                output_tail,
                ..
            } => RunEvent::RebootPending {
                attempt: *attempt,
                exit_code: *exit_code,
                output_tail: output_tail.clone(),
            },
            StatusBody::JobCompleted {
                attempt,
                exit_code,
                output_tail,
                ..
            } => RunEvent::Completed {
                attempt: *attempt,
                exit_code: *exit_code,
                output_tail: output_tail.clone(),
            },
            StatusBody::JobInterrupted {
                attempt,
                of,
                retrying,
                reason,
                ..
            } => RunEvent::Interrupted {
                attempt: *attempt,
                of: *of,
                retrying: *retrying,
                reason: reason.clone(),
            },
            StatusBody::JobStopped {
                attempt,
                reason,
                output_tail,
                ..
            } => RunEvent::Stopped {
                attempt: *attempt,
                reason: reason.clone(),
                output_tail: output_tail.clone(),
            },
            StatusBody::JobFailed {
                attempt,
                exit_code,
                reason,
                output_tail,
                ..
            } => RunEvent::Failed {
                attempt: *attempt,
                exit_code: *exit_code,
                reason: reason.clone(),
                output_tail: output_tail.clone(),
            },
            StatusBody::JobRetrying {
                attempt,
                of,
                exit_code,
                reason,
                output_tail,
                ..
            } => RunEvent::Retrying {
                attempt: *attempt,
                of: *of,
                exit_code: *exit_code,
                reason: reason.clone(),
                output_tail: output_tail.clone(),
            },
            _ => return None,
        })
    }

    /// The distribution event this message carries, if its version is valid.
    pub fn distribution_event(&self) -> Option<cascade_domain::status::DistributionEvent> {
        use cascade_domain::status::DistributionEvent as E;
        use cascade_domain::Version;
        let v = Version::new;
        Some(match self {
            StatusBody::DistributionTargeted {
                version, refresh, ..
            } => E::Targeted {
                version: v(*version)?,
                refresh: *refresh,
            },
            StatusBody::DpTransferStarted {
                version,
                bytes_total,
                bytes_needed,
                ..
            } => E::TransferStarted {
                version: v(*version)?,
                bytes_total: *bytes_total,
                bytes_needed: *bytes_needed,
            },
            StatusBody::DpProgress {
                version,
                bytes_done,
                bytes_needed,
                ..
            } => E::Progress {
                version: v(*version)?,
                bytes_done: *bytes_done,
                bytes_needed: *bytes_needed,
            },
            StatusBody::DpInstalled {
                version,
                bytes_received,
                ..
            } => E::Installed {
                version: v(*version)?,
                bytes_received: *bytes_received,
            },
            StatusBody::DpFailed {
                version, reason, ..
            } => E::Failed {
                version: v(*version)?,
                reason: reason.clone(),
            },
            StatusBody::DpCorruptionFound {
                version, chunks, ..
            } => E::CorruptionFound {
                version: v(*version)?,
                chunks: *chunks,
            },
            StatusBody::DpRefreshed {
                version,
                refresh,
                repaired,
                ..
            } => E::Refreshed {
                version: v(*version)?,
                refresh: *refresh,
                repaired: *repaired,
            },
            _ => return None,
        })
    }
}

/// One stored status message, as listed by
/// `GET /api/v1/packages/{name}/messages`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatusRecord {
    /// Who reported it (`CEN`, `CEN/dp/dp1`).
    pub source: String,
    /// The source's sequence number.
    pub seq: u64,
    /// When the source recorded it.
    pub at_ms: i64,
    /// When this site stored it.
    pub received_at_ms: i64,
    /// What happened.
    #[serde(flatten)]
    pub body: StatusBody,
    /// The sender's signature, as stored ([`StatusMessage::signature`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

/// `POST /api/v1/status`: a batch of one source's messages, in order.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatusBatch {
    /// The messages.
    pub messages: Vec<StatusMessage>,
}

/// The receiver's answer: the batch's messages up to `acked_seq` are
/// durably stored and may be dropped from the sender's outbox.
///
/// **Architecture Invariant:** an acknowledgement never covers more than
/// what was delivered: `acked_seq` is the number of a message of this
/// batch (0 when none of it is acknowledged), never a number only the
/// receiver knows. A sender drops only the messages of the batch it sent
/// up to `acked_seq`, whatever the receiver answers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusAck {
    /// The last message of the batch stored here with every message of the
    /// batch before it; 0 when none is.
    pub acked_seq: u64,
    /// Messages newly stored by this call.
    pub stored: u64,
    /// Messages already stored before (resent after a lost answer).
    pub duplicates: u64,
    /// The highest sequence number the receiver holds for this source. An
    /// empty batch asks for it alone.
    #[serde(default)]
    pub high_water_seq: u64,
    /// Set when a message of the batch carries a number the receiver
    /// already holds with other content (a sender restored from a backup
    /// numbers its new messages again from where the backup was): the
    /// first such number. Nothing from it on was stored; the sender
    /// renumbers that message and every later one past `high_water_seq`
    /// and sends them again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renumber_from: Option<u64>,
}

/// `GET /v1/info` on a DP: what it holds and its transfer counters.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DpSelfInfo {
    /// The DP's name.
    #[serde(rename = "dp", alias = "name")]
    pub name: String,
    /// Its site.
    pub site: String,
    /// What it holds.
    pub packages: Vec<DpHeldPackage>,
    /// Transfer counters, kept across restarts.
    pub counters: DpCounters,
}

/// A package held by a DP.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DpHeldPackage {
    /// Package name.
    pub package: String,
    /// Installed version.
    pub version: u64,
}

/// Transfer counters of a DP.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DpCounters {
    /// Chunk bytes received from the site (as sent, compressed or not).
    pub bytes_received: u64,
    /// Chunks received from the site.
    pub chunks_received: u64,
    /// Bytes of file content served to clients.
    pub bytes_served: u64,
    /// Stored chunks found corrupt and repaired.
    pub chunks_repaired: u64,
    /// Chunks removed because no held version uses them any more.
    #[serde(default)]
    pub chunks_collected: u64,
    /// Their stored bytes.
    #[serde(default)]
    pub bytes_collected: u64,
    /// Stored chunks verified by the scheduled scrub (`dp run --scrub-pass`).
    #[serde(default)]
    pub chunks_scrubbed: u64,
}

/// What an agent reports about its workstation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentReport {
    /// Operating system (`linux`, `windows`, `macos`).
    pub os: String,
    /// CPU architecture (`x86_64`, `aarch64`).
    pub arch: String,
    /// Host name.
    pub hostname: String,
    /// Administrator-given tags (`--tag key=value`).
    #[serde(default)]
    pub tags: std::collections::BTreeMap<String, String>,
}

/// `POST /api/v1/agents/enroll`: a new agent presents the join token.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AgentEnrollRequest {
    /// The workstation's name, unique in the site.
    pub name: String,
    /// The site's join token.
    pub join_token: String,
    /// The workstation's attributes.
    pub report: AgentReport,
    /// Hex of the agent's own public key, which signs its status messages.
    #[serde(default)]
    pub public_key: Option<String>,
}

/// The site's answer to an agent's enrollment.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AgentEnrollResponse {
    /// The agent's own credential, shown once.
    pub credential: String,
    /// False while the site requires approval and nobody approved it yet.
    pub approved: bool,
    /// The site.
    pub site: SiteInfo,
}

/// `GET /api/v1/agents`: one line per agent.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AgentInfo {
    /// Name.
    #[serde(rename = "agent", alias = "name")]
    pub name: String,
    /// Its attributes, as last reported.
    pub report: AgentReport,
    /// Whether it may receive policy.
    pub approved: bool,
    /// When it enrolled.
    pub enrolled_at_ms: i64,
    /// When it last polled.
    pub last_seen_ms: Option<i64>,
    /// `reachable` (holding a poll open, or polled within the poll interval
    /// and a grace), `unreachable` (silent longer, or hung up its poll
    /// more than the grace ago) or `never` (enrolled, never polled).
    pub reachability: Reachability,
    /// Since when it is silent, when unreachable.
    pub unreachable_since_ms: Option<i64>,
}

/// `GET /api/v1/agent/policy?after=R&wait_ms=W`: what an agent must do.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AgentPolicy {
    /// Changes whenever the policy changes; pass it back as `after`.
    pub revision: u64,
    /// Whether the agent is approved; an unapproved agent gets nothing else.
    pub approved: bool,
    /// How often to poll, in milliseconds (the agent adds jitter).
    pub poll_interval_ms: u64,
    /// The jobs offered to this agent now; a job missing here is withdrawn.
    #[serde(default)]
    pub jobs: Vec<JobOffer>,
    /// Content URLs of the site's DPs, to download from.
    #[serde(default)]
    pub dps: Vec<String>,
    /// The TLS certificate fingerprint of each DP, by content URL: an
    /// agent accepts a DP's connection only with the certificate named
    /// here (the policy itself came over the site's pinned connection).
    #[serde(default)]
    pub dp_certificates: std::collections::BTreeMap<String, String>,
    /// Jobs offered to this agent that were canceled recently (for as long
    /// as a run of theirs may last): an agent running one stops it. A job
    /// withdrawn without being listed here expired, and a run in progress
    /// finishes within its timeout.
    /// Each is the central site's signed cancellation; an agent acts only
    /// on one whose signature verifies.
    #[serde(default)]
    pub canceled: Vec<crate::signed::SignedIntent>,
    /// The content ticket to present to the site's DPs and the site's
    /// chunk route ([`crate::ticket`]); none until approved.
    #[serde(default)]
    pub content_ticket: Option<String>,
    /// The newest timestamp the central site signed that the site holds
    /// ([`crate::intent::Timestamp`]): an agent starts no job while the
    /// newest one it holds has expired.
    #[serde(default)]
    pub timestamp: Option<crate::signed::SignedIntent>,
}

/// One job offered to an agent, as its policy carries it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobOffer {
    /// Job id.
    pub id: u64,
    /// Package name.
    pub package: String,
    /// Package version.
    pub version: u64,
    /// The command line, run by `sh -c` in the package's directory.
    pub command: String,
    /// When the job may run.
    pub offer_at_ms: i64,
    /// After this the job never runs.
    pub expires_at_ms: Option<i64>,
    /// Runs only when requested on the workstation.
    pub optional: bool,
    /// Further attempts after a failure.
    pub retries: u32,
    /// Wait between attempts.
    pub retry_delay_ms: u64,
    /// Longest a download or a run may take.
    pub timeout_ms: Option<u64>,
    /// Exit codes that mean success.
    pub success_codes: Vec<i32>,
    /// A removal: the command uninstalls the package; once it succeeded
    /// the agent deletes what it holds of the package.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub remove: bool,
    /// The maintenance windows of its collection when it was made: a
    /// mandatory job starts only inside one with room for its timeout
    /// (none: any time).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub windows: Vec<WindowSpec>,
    /// Starts outside the maintenance windows too.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub any_time: bool,
    /// Run after the command succeeded (after the reboot it asked for, if
    /// it did), in the package's directory: the job completes only if it
    /// exits 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<String>,
    /// Exit codes that mean "succeeded, and needs a reboot": the check runs, and the job completes, after the workstation
    /// restarted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reboot_codes: Vec<i32>,
    /// Whether it runs a program (this package version and command) that
    /// already ran on the workstation: `always`, `never`, `if-failed`,
    /// `if-succeeded`.
    #[serde(
        default = "crate::states::rerun_rule::before_rules",
        with = "crate::states::rerun_rule"
    )]
    pub rerun: cascade_domain::run::RerunRule,
    /// Content URLs to download from, in order: the DPs the job distributes
    /// to at the agent's site. Empty: the site's DPs from the policy; the
    /// agent's own site server comes last either way.
    #[serde(default)]
    pub dps: Vec<String>,
    /// The job's intent as the central site signed it; an agent runs the
    /// job only if every field above (but `dps`) matches it
    /// ([`crate::intent::verify_offer`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intent: Option<crate::signed::SignedIntent>,
}

/// `POST /api/v1/jobs`: run a command from a package on a collection.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobRequest {
    /// Package name.
    pub package: String,
    /// Pinned version; the newest when absent.
    #[serde(default)]
    pub version: Option<u64>,
    /// Target collection.
    pub collection: String,
    /// The command line (for a removal job, absent: the version's
    /// uninstall command).
    #[serde(default)]
    pub command: String,
    /// When the job may run (now when absent).
    #[serde(default)]
    pub offer_at_ms: Option<i64>,
    /// When the offer is withdrawn for good.
    #[serde(default)]
    pub expires_at_ms: Option<i64>,
    /// Runs only when requested on the workstation.
    #[serde(default)]
    pub optional: bool,
    /// Further attempts after a failure.
    #[serde(default)]
    pub retries: u32,
    /// Wait between attempts.
    #[serde(default)]
    pub retry_delay_ms: u64,
    /// Longest a download or a run may take.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Exit codes that mean success (default: 0).
    #[serde(default)]
    pub success_codes: Vec<i32>,
    /// A removal job: the command uninstalls the package; once it
    /// succeeded the agent deletes what it holds of the package.
    #[serde(default)]
    pub remove: bool,
    /// Starts outside its collection's maintenance windows too.
    #[serde(default)]
    pub any_time: bool,
    /// Run after the command succeeded (and after the reboot it asked
    /// for): the job completes only if it exits 0.
    #[serde(default)]
    pub check: Option<String>,
    /// Exit codes that mean "succeeded, and needs a reboot".
    #[serde(default)]
    pub reboot_codes: Vec<i32>,
    /// Whether it runs a program that already ran on a workstation
    /// (`always`, `never`, `if-failed`, `if-succeeded`; default
    /// `if-failed`).
    #[serde(
        default,
        with = "crate::states::rerun_rule::optional",
        skip_serializing_if = "Option::is_none"
    )]
    pub rerun: Option<cascade_domain::run::RerunRule>,
    /// Distribute to this DP group's DPs instead of each target site's DPs.
    #[serde(default)]
    pub dp_group: Option<String>,
}

/// `POST /api/v1/jobs/{id}/edit`: new times for an open job (what is
/// absent stays).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct JobEditRequest {
    /// When the job may run.
    #[serde(default)]
    pub offer_at_ms: Option<i64>,
    /// When the offer is withdrawn for good.
    #[serde(default)]
    pub expires_at_ms: Option<i64>,
    /// The job no longer expires.
    #[serde(default)]
    pub no_expiry: bool,
}

/// A stored job.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobInfo {
    /// What agents receive.
    #[serde(flatten)]
    pub offer: JobOffer,
    /// Target collection.
    pub collection: String,
    /// When it was created.
    pub created_at_ms: i64,
    /// When it was canceled.
    pub canceled_at_ms: Option<i64>,
    /// `scheduled` (before its offer time), `active`, `expired` or `canceled`.
    pub state: JobState,
    /// The DP group it distributes to; none: each target site's DPs.
    #[serde(default)]
    pub dp_group: Option<String>,
    /// The job's outcome as its status shows it (`in_progress`, `complete`,
    /// `failed`, `canceled`, `expired`), in `job list` and `job status`;
    /// absent where it was not computed (the answer to `job create`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<JobOutcome>,
}

/// One workstation's row in a job's status.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkstationStatus {
    /// The workstation's site.
    #[serde(default)]
    pub site: String,
    /// The agent.
    pub agent: String,
    /// Its last reported state: none, offered, downloading, running,
    /// complete, failed, retrying, interrupted (the agent crashed while the
    /// command ran and no retry is left), stopped (the agent stopped the
    /// work on cancel, or at expiry before the command started).
    pub state: WorkstationState,
    /// When that state was reported.
    pub since_ms: i64,
    /// Attempts started.
    pub attempts: u32,
    /// Exit code of the last finished attempt.
    pub exit_code: Option<i32>,
    /// Why the last attempt failed.
    pub reason: Option<String>,
    /// Output tail of the last finished attempt, whatever its end.
    pub output_tail: Option<String>,
    /// While downloading: bytes of the package held so far.
    #[serde(default)]
    pub bytes_done: Option<u64>,
    /// While downloading: bytes of the package in all.
    #[serde(default)]
    pub bytes_total: Option<u64>,
    /// When the job expired, shown beside the state.
    pub expired_at_ms: Option<i64>,
    /// When the job was canceled, shown beside the state.
    pub canceled_at_ms: Option<i64>,
    /// Since when the agent is silent (several poll intervals without a
    /// poll), shown beside the state; absent while it is heard from.
    #[serde(default)]
    pub unreachable_since_ms: Option<i64>,
    /// While `waiting_for_window`: when the next maintenance window with
    /// room for the job's timeout opens (absent: none is long enough).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_opens_at_ms: Option<i64>,
}

/// `GET /api/v1/jobs/{id}/status`, derived from status messages.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JobStatus {
    /// The job.
    pub job: JobInfo,
    /// Workstations per state.
    pub counts: std::collections::BTreeMap<WorkstationState, u64>,
    /// One row per targeted workstation.
    pub workstations: Vec<WorkstationStatus>,
    /// The distribute phase: the package on the DPs the job distributes to.
    pub distribution: Vec<DpPackageStatus>,
    /// One row per site of this site's subtree.
    #[serde(default)]
    pub sites: Vec<SiteJobStatus>,
    /// `complete` once every site has the instruction, no distribution is
    /// pending or failing and every targeted workstation completed;
    /// `failed` once every workstation finished and one failed;
    /// `canceled` or `expired` once a job canceled or expired before it
    /// completed has nothing left running; `in_progress` otherwise (and
    /// when an answer lacks it).
    #[serde(default = "in_progress")]
    pub outcome: JobOutcome,
}

/// One site's line in a job's status.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SiteJobStatus {
    /// The site.
    pub site: String,
    /// `pending` until the site reports the instruction, then `arrived`;
    /// `refused` when the site refused it (with the reason), `not_connected`
    /// for a site that joined but never connected since.
    pub instruction: InstructionState,
    /// Why the site refused the instruction.
    #[serde(default)]
    pub reason: Option<String>,
    /// When it arrived.
    pub arrived_at_ms: Option<i64>,
    /// Workstations of the site the job targets.
    pub targets: u64,
    /// `not_applicable`, `pending`, `in_progress`, `complete` or `failed`.
    pub distribution: SiteDistribution,
    /// The DPs the job distributes to at this site.
    pub dps: Vec<DpPackageStatus>,
    /// Workstations of the site per state.
    pub runs: std::collections::BTreeMap<WorkstationState, u64>,
}

fn in_progress() -> JobOutcome {
    JobOutcome::InProgress
}

/// Query of the policy long poll.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PolicyQuery {
    /// The revision the agent already has.
    #[serde(default)]
    pub after: u64,
    /// How long to wait for a change, at most 60 s.
    #[serde(default)]
    pub wait_ms: u64,
}

/// `POST /api/v1/collections`: a named set of workstations, listed or by rule.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CollectionRequest {
    /// Name.
    pub name: String,
    /// Workstations by name (exclusive with `rule`).
    #[serde(default)]
    pub machines: Vec<String>,
    /// A rule over agent attributes (exclusive with `machines`).
    #[serde(default)]
    pub rule: Option<String>,
    /// Accept listed workstations that are not enrolled yet (pre-staging);
    /// without it an unknown name is refused.
    #[serde(default)]
    pub allow_unknown: bool,
}

/// A collection with its current members.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CollectionInfo {
    /// Name.
    #[serde(rename = "collection", alias = "name")]
    pub name: String,
    /// Listed workstations, for a listed collection.
    pub machines: Option<Vec<String>>,
    /// The rule, for a rule collection.
    pub rule: Option<String>,
    /// Enrolled agents that belong now.
    pub members: Vec<String>,
    /// Listed workstations not enrolled at this site or below (yet).
    #[serde(default)]
    pub not_enrolled: Vec<String>,
    /// Its maintenance windows (the central site's; none: any time).
    #[serde(default)]
    pub windows: Vec<WindowSpec>,
}

/// A maintenance window, as a collection holds it and a job's signed
/// intent carries it (`cascade_domain::window`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowSpec {
    /// The first opening, as a wall-clock time in `zone`
    /// (`2026-12-08T22:00:00`).
    pub start: String,
    /// An IANA time zone (`Europe/Paris`) or `UTC`.
    pub zone: String,
    /// How long it stays open, in milliseconds.
    pub duration_ms: u64,
    /// Opens again every this many days (7: weekly); absent: once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every_days: Option<u32>,
}

/// Longest maintenance window: a week.
pub const MAX_WINDOW_MS: u64 = 7 * 24 * 3_600_000;

impl WindowSpec {
    /// The window with its zone resolved, or what is wrong with it.
    pub fn resolve(&self) -> Result<cascade_domain::window::Window, String> {
        let start: jiff::civil::DateTime = self.start.parse().map_err(|err| {
            format!(
                "window start {:?} is not a date and time such as 2026-12-08T22:00:00: {err}",
                self.start
            )
        })?;
        let zone = jiff::tz::TimeZone::get(&self.zone)
            .map_err(|err| format!("time zone {:?} is not known here: {err}", self.zone))?;
        if self.duration_ms == 0 || self.duration_ms > MAX_WINDOW_MS {
            return Err("a window lasts more than 0 and at most 7 days".into());
        }
        if self.every_days == Some(0) || self.every_days.is_some_and(|days| days > 366) {
            return Err("a window repeats every 1 to 366 days".into());
        }
        Ok(cascade_domain::window::Window {
            start,
            zone,
            duration_ms: self.duration_ms as i64,
            every_days: self.every_days,
        })
    }
}

/// `GET`/`PUT /api/v1/settings`: site settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SiteSettings {
    /// New agents wait for `cascade agent approve` before receiving policy.
    pub require_approval: bool,
    /// How often agents poll, in milliseconds.
    pub agent_poll_interval_ms: u64,
    /// How long a timestamp the central site signs stays valid, in
    /// milliseconds ([`crate::intent::Timestamp`]); it signs a new one every
    /// quarter of that. Only the central site's setting matters: a
    /// workstation whose site has not passed on a current one for this long
    /// starts no job.
    #[serde(default = "default_timestamp_validity_ms")]
    pub timestamp_validity_ms: u64,
    /// How many versions of each package the site keeps, newest first (at
    /// least 1), beside every version an open job needs: the chunks of the
    /// others are removed. Each site applies its own.
    #[serde(default = "default_keep_versions")]
    pub keep_versions: u32,
}

/// Versions of a package a site keeps unless `site settings
/// --keep-versions` says otherwise.
pub const DEFAULT_KEEP_VERSIONS: u32 = 3;

fn default_keep_versions() -> u32 {
    DEFAULT_KEEP_VERSIONS
}

/// One day, as TUF's timestamp role defaults to.
pub const DEFAULT_TIMESTAMP_VALIDITY_MS: u64 = 24 * 3_600_000;

fn default_timestamp_validity_ms() -> u64 {
    DEFAULT_TIMESTAMP_VALIDITY_MS
}
