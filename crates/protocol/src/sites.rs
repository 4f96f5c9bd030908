//! Bodies of the routes between sites of a hierarchy (a child site joining,
//! instructions flowing down, wanted content, status relayed up) and of the
//! administrator's hierarchy views (sites, queues, DP groups).

use crate::states::SiteKind;
use crate::types::{JobInfo, SignedManifestWire, SiteInfo, StatusMessage};
use serde::{Deserialize, Serialize};

/// `POST /api/v1/sites/enroll`: a new child site presents its parent's join
/// token.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SiteEnrollRequest {
    /// The new site's code, unique in the hierarchy.
    pub code: String,
    /// `primary` or `secondary`.
    #[serde(with = "crate::states::site_kind")]
    pub kind: SiteKind,
    /// The parent's join token.
    pub join_token: String,
    /// Bytes per second the parent may send the new site (none: no limit).
    #[serde(default)]
    pub max_rate: Option<u64>,
    /// Take over a code registered here that never connected (an earlier
    /// `site init` that failed half-way, or one being replaced): its
    /// credential is revoked. Without it such a code is refused.
    #[serde(default)]
    pub replace: bool,
}

/// The parent's answer to a child site's enrollment.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SiteEnrollResponse {
    /// The child's credential towards its parent, shown once.
    pub credential: String,
    /// The parent; its `public_key` is the central site's key, which signs
    /// every manifest of the hierarchy.
    pub parent: SiteInfo,
}

/// `POST /api/v1/sites/register`: a site tells its parent (and so on up to
/// the central site) that a site joined below it, so that codes stay unique
/// in the whole hierarchy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteRegistration {
    /// The new site's code.
    pub code: String,
    /// Its kind.
    #[serde(with = "crate::states::site_kind")]
    pub kind: SiteKind,
    /// Its parent's code.
    pub parent: String,
}

/// `GET /api/v1/sites`: one line per site of this site's subtree, this site
/// first.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SiteSummary {
    /// Code.
    #[serde(rename = "site", alias = "code")]
    pub code: String,
    /// `central`, `primary` or `secondary`.
    #[serde(with = "crate::states::site_kind")]
    pub kind: SiteKind,
    /// The parent's code (none for the central site).
    pub parent: Option<String>,
    /// When it joined (this site: when it was created).
    pub registered_at_ms: i64,
    /// For a direct child: when it last fetched instructions or content.
    pub last_seen_ms: Option<i64>,
    /// For a direct child: bytes per second this site sends it at most.
    pub max_rate: Option<u64>,
    /// For a direct child: content bytes sent to it since this site started.
    pub bytes_sent: u64,
    /// For a direct child: instructions it has not fetched yet.
    pub pending_instructions: u64,
}

/// `PUT /api/v1/sites/{code}/link`: the rate limit of a parent–child link,
/// set at the parent.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LinkRequest {
    /// Bytes per second, or none for no limit.
    pub max_rate: Option<u64>,
}

/// What flows down from a site to its children. Each child applies them
/// in order, idempotently, and passes them on to its own children.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
// An instruction is handled one at a time, never stored in bulk in memory:
// the size of its largest variant costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
pub enum Instruction {
    /// A package version: its signed manifest (the content is fetched
    /// separately, and only where needed).
    PackageVersion {
        /// Package name (also inside the manifest).
        package: String,
        /// Version (also inside the manifest).
        version: u64,
        /// The manifest as signed by the central site.
        manifest: SignedManifestWire,
    },
    /// A collection of workstations.
    Collection {
        name: String,
        machines: Option<Vec<String>>,
        rule: Option<String>,
    },
    /// A DP group: DPs named `SITE/DP`.
    DpGroup { name: String, dps: Vec<String> },
    /// Place a package on the DPs of a group, now and in later versions.
    Distribute { package: String, dp_group: String },
    /// A job; each site offers it to its workstations in the collection.
    Job { job: JobInfo },
    /// A job was canceled at the central site.
    JobCanceled {
        job: u64,
        package: String,
        /// The central site's signed cancellation, passed on unchanged.
        #[serde(default)]
        intent: Option<crate::intent::SignedIntent>,
    },
    /// Re-verify a package on DPs that hold it (or are moving to a version
    /// of it): the DPs named `SITE/DP`, or, when `dps` is absent, every DP
    /// of every site below that holds it. Each site bumps the refresh
    /// generation of its own DPs' entries.
    Refresh {
        package: String,
        #[serde(default)]
        dps: Option<Vec<String>>,
    },
}

impl Instruction {
    /// The stable name of the instruction kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Instruction::PackageVersion { .. } => "package_version",
            Instruction::Collection { .. } => "collection",
            Instruction::DpGroup { .. } => "dp_group",
            Instruction::Distribute { .. } => "distribute",
            Instruction::Job { .. } => "job",
            Instruction::JobCanceled { .. } => "job_canceled",
            Instruction::Refresh { .. } => "refresh",
        }
    }

    /// The package the instruction is about, if any.
    pub fn package(&self) -> Option<&str> {
        match self {
            Instruction::PackageVersion { package, .. }
            | Instruction::Distribute { package, .. }
            | Instruction::JobCanceled { package, .. }
            | Instruction::Refresh { package, .. } => Some(package),
            Instruction::Job { job } => Some(&job.offer.package),
            Instruction::Collection { .. } | Instruction::DpGroup { .. } => None,
        }
    }

    /// A short description for logs and queue listings.
    pub fn describe(&self) -> String {
        match self {
            Instruction::PackageVersion {
                package, version, ..
            } => format!("package {package} v{version}"),
            Instruction::Collection { name, .. } => format!("collection {name}"),
            Instruction::DpGroup { name, .. } => format!("dp group {name}"),
            Instruction::Distribute { package, dp_group } => {
                format!("distribute {package} to dp group {dp_group}")
            }
            Instruction::Job { job } => format!(
                "job {} ({} v{})",
                job.offer.id, job.offer.package, job.offer.version
            ),
            Instruction::JobCanceled { job, .. } => format!("cancel job {job}"),
            Instruction::Refresh { package, dps: None } => {
                format!("refresh {package} on every dp holding it")
            }
            Instruction::Refresh {
                package,
                dps: Some(dps),
            } => format!("refresh {package} on {}", dps.join(", ")),
        }
    }
}

/// One instruction with its number in the parent's outbox for this child.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InstructionEnvelope {
    /// Increasing per child; the child passes the highest it stored back as
    /// `after`, which acknowledges everything up to it (never beyond the
    /// highest number the parent sent that child).
    pub seq: u64,
    /// When the parent queued it.
    pub created_at_ms: i64,
    /// What to do.
    pub instruction: Instruction,
}

/// `GET /api/v1/site/instructions?after=S&wait_ms=W`: long poll of a child
/// site for the instructions after `S`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Instructions {
    /// In order.
    pub instructions: Vec<InstructionEnvelope>,
    /// The newest timestamp the central site signed that the parent holds
    /// ([`crate::intent::Timestamp`]), passed on unchanged: the child keeps
    /// it if it verifies and is newer than its own, and hands it to its own
    /// children and agents.
    #[serde(default)]
    pub timestamp: Option<crate::intent::SignedIntent>,
}

/// Query of the instructions long poll.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct InstructionsQuery {
    /// The highest instruction number the child stored.
    #[serde(default)]
    pub after: u64,
    /// How long to wait for an instruction, at most 60 s.
    #[serde(default)]
    pub wait_ms: u64,
    /// When the newest timestamp the child holds was signed: the parent
    /// answers at once when it holds a newer one.
    #[serde(default)]
    pub timestamp_ms: Option<i64>,
}

/// A package version whose content a site needs.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WantedVersion {
    /// Package name.
    pub package: String,
    /// Version.
    pub version: u64,
}

/// `PUT /api/v1/site/wants`: every version whose content the child (or a
/// site below it) needs and does not hold yet. Replaces the previous set.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContentWants {
    /// The versions.
    pub wants: Vec<WantedVersion>,
}

/// A status message relayed up by a child site, with its original source.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayedStatus {
    /// Who reported it (`S01`, `S01/dp/dp1`, `S01/agent/ws3`).
    pub source: String,
    /// The message, with the source's own sequence number.
    #[serde(flatten)]
    pub message: StatusMessage,
}

/// `POST /api/v1/site/status`: a batch relayed by a child site, in the
/// order it stored them.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RelayBatch {
    /// The messages.
    pub messages: Vec<RelayedStatus>,
}

/// The parent's answer: every message of the batch is durably stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RelayAck {
    /// Newly stored.
    pub stored: u64,
    /// Stored before (a resend after a lost answer).
    pub duplicates: u64,
    /// Messages not stored because the parent holds another message under
    /// the same source and number (a child restored from a backup numbers
    /// its own messages again from where the backup was); the child
    /// renumbers its own past `high_water_seq` and relays them again.
    #[serde(default)]
    pub conflicts: Vec<RelayConflict>,
}

/// One relayed message the parent holds other content for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayConflict {
    /// The message's source.
    pub source: String,
    /// Its number.
    pub seq: u64,
    /// The highest number the parent holds for the source.
    pub high_water_seq: u64,
}

/// `GET /api/v1/site/queues`: what waits at this site, and why.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SiteQueues {
    /// This site's code.
    pub site: String,
    /// The link to the parent, for a child site.
    pub parent: Option<ParentLinkStatus>,
    /// Instructions received from the parent and not applied yet.
    pub inbox: Vec<InboxItem>,
    /// Per direct child: instructions it has not fetched yet.
    pub outbox: Vec<OutboxQueue>,
    /// Package versions whose content this site is bringing in.
    pub content: Vec<ContentItem>,
    /// Status messages not yet delivered to the parent.
    pub status_pending: u64,
    /// When the oldest of them was stored here.
    pub status_oldest_ms: Option<i64>,
    /// The newest timestamp the central site signed that this site holds
    /// and passes on: past its expiry, this site's agents start no job.
    #[serde(default)]
    pub timestamp: Option<crate::intent::Timestamp>,
}

/// The state of a child site's link to its parent.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ParentLinkStatus {
    /// The parent's code.
    #[serde(rename = "site", alias = "code")]
    pub code: String,
    /// The parent's URL.
    pub url: String,
    /// When the parent last answered.
    pub last_contact_ms: Option<i64>,
    /// The last error talking to the parent, while it lasts.
    pub error: Option<String>,
}

/// An instruction waiting in the inbox.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InboxItem {
    /// Its number from the parent.
    pub seq: u64,
    /// What it is.
    pub description: String,
    /// When it arrived.
    pub received_at_ms: i64,
    /// Failed attempts to apply it.
    pub attempts: u64,
    /// Why it is still here.
    pub why: String,
}

/// Instructions waiting for one child.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OutboxQueue {
    /// The child's code.
    pub child: String,
    /// How many.
    pub pending: u64,
    /// When the oldest was queued.
    pub oldest_ms: Option<i64>,
    /// Why they wait.
    pub why: String,
}

/// A package version whose content the site needs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ContentItem {
    /// Package name.
    pub package: String,
    /// Version.
    pub version: u64,
    /// Who needs it: `dps`, `job N`, `site S01`.
    pub needed_by: Vec<String>,
    /// Chunk bytes still missing.
    pub bytes_missing: u64,
    /// What is happening to it.
    pub why: String,
}

/// `POST /api/v1/dp-groups`: a named set of DPs, possibly of many sites.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DpGroupRequest {
    /// Name.
    pub name: String,
    /// DPs as `SITE/DP`.
    pub dps: Vec<String>,
    /// Accept DPs that are not enrolled yet (they receive the group's
    /// packages when they enroll); without it an unknown DP is refused.
    #[serde(default)]
    pub allow_unknown: bool,
}

/// A DP group.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DpGroupInfo {
    /// Name.
    #[serde(rename = "dp_group", alias = "name")]
    pub name: String,
    /// DPs as `SITE/DP`.
    pub dps: Vec<String>,
    /// When it was created.
    pub created_at_ms: i64,
    /// Members not enrolled at their site (yet), as far as this site knows.
    #[serde(default)]
    pub not_enrolled: Vec<String>,
}
