//! The `cascade` command: runs site servers and distribution points, and
//! administers a site. Thin: parsing, output, and wiring to the library crates.

#[macro_use]
mod print;
mod ingest;
mod output;
mod quickstart;
mod when;

use anyhow::{bail, Context, Result};
use cascade_protocol::{Client, DistributeRequest, RefreshRequest, VersionIntent};
use clap::{Args, Parser, Subcommand, ValueEnum};
use output::Output;
use std::path::PathBuf;

/// Cascade: software distribution for a hierarchy of sites.
#[derive(Parser)]
#[command(name = "cascade", version, about, long_about = None)]
struct Cli {
    /// Output format of administrative commands.
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value_t = Format::Text)]
    output: Format,
    /// Format of log lines on stderr (default: CASCADE_LOG_FORMAT, else text).
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormatArg>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Format {
    Text,
    Json,
}

/// `--log-format`.
#[derive(Clone, Copy, ValueEnum)]
enum LogFormatArg {
    Text,
    Json,
}

/// What a server (site or DP) allows its clients.
#[derive(Args, Clone)]
struct ServerLimits {
    /// Most connections open at once (also bounded by the open-files
    /// limit, raised at start); one more is answered 503.
    #[arg(long, default_value_t = cascade_protocol::serve::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// Longest a client may take to send a request's headers, and to sit
    /// idle on a kept-alive connection, before it is closed.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "20s")]
    header_timeout: std::time::Duration,
    /// Longest a request may take from its headers to its answer (its body
    /// included), before the connection is closed.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10m")]
    request_timeout: std::time::Duration,
}

impl ServerLimits {
    fn limits(&self) -> cascade_protocol::serve::Limits {
        cascade_protocol::serve::Limits {
            max_connections: self.max_connections,
            header_timeout: self.header_timeout,
            request_timeout: self.request_timeout,
        }
    }
}

/// The TLS certificate a server is created with.
#[derive(Args, Clone)]
struct TlsArgs {
    /// A PEM certificate chain (leaf first) to serve with instead of the
    /// self-signed certificate made otherwise; tokens pin its fingerprint.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

impl TlsArgs {
    fn supplied(&self) -> Option<cascade_protocol::tls::Supplied> {
        Some(cascade_protocol::tls::Supplied {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
        })
    }
}

/// Where the site server is and the credential to use.
#[derive(Args, Clone)]
struct Connection {
    /// URL of the site server.
    #[arg(long, env = "CASCADE_SERVER", global = true)]
    server: Option<String>,
    /// Administrator token.
    #[arg(long, env = "CASCADE_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
}

impl Connection {
    fn client(&self) -> Result<Client> {
        let Some(server) = &self.server else {
            bail!("no site server given: pass --server URL or set CASCADE_SERVER (a site writes its URL to DIR/url)");
        };
        let Some(token) = &self.token else {
            bail!("no credential given: pass --token TOKEN or set CASCADE_TOKEN (the site's admin token is in DIR/admin.token)");
        };
        Ok(cascade_protocol::client_presenting(server, token)?)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Create and run site servers.
    #[command(subcommand)]
    Site(SiteCommand),
    /// Distribution points: enroll, run, list.
    #[command(subcommand)]
    Dp(DpCommand),
    /// Packages: create, update, distribute, status.
    #[command(subcommand)]
    Package(PackageCommand),
    /// Workstation agents: enroll, run, approve, list.
    #[command(subcommand)]
    Agent(AgentCommand),
    /// Collections of workstations, listed or by rule.
    #[command(subcommand)]
    Collection(CollectionCommand),
    /// Jobs: run a command from a package on a collection.
    #[command(subcommand)]
    Job(JobCommand),
    /// DP groups: named sets of DPs of any site of the hierarchy.
    #[command(subcommand, name = "dp-group")]
    DpGroup(DpGroupCommand),
    /// Start a three-level hierarchy of sites with DPs and agents in a
    /// temporary directory, run a job on every workstation and show the
    /// result per site.
    Quickstart(quickstart::QuickstartArgs),
}

#[derive(Subcommand)]
enum SiteCommand {
    /// Create a site's data directory: a new central site, or a child site
    /// joining its parent (--kind, --parent, --join-token).
    Init {
        /// The data directory.
        dir: PathBuf,
        /// The site code: 3 characters, uppercase letters and digits,
        /// unique in the hierarchy.
        #[arg(long)]
        code: String,
        /// Join a parent as a primary or a secondary site.
        #[arg(long, value_enum, requires = "parent")]
        kind: Option<ChildKind>,
        /// URL of the parent site server.
        #[arg(long, requires_all = ["kind", "join_token"])]
        parent: Option<String>,
        /// The parent's site join token (its DIR/site-join.token).
        #[arg(long, requires = "parent")]
        join_token: Option<String>,
        /// Hex of the central site's public key: join only if the parent
        /// answers with this key.
        #[arg(long, requires = "parent")]
        central_key: Option<String>,
        /// Bytes per second the parent may send this site (e.g. 10MiB).
        #[arg(long, requires = "parent", value_parser = parse_rate)]
        max_rate: Option<u64>,
        /// Take over the code if the parent holds it registered for a site
        /// that never connected (an earlier init that failed half-way); that
        /// site's credential is revoked.
        #[arg(long, requires = "parent")]
        replace: bool,
        #[command(flatten)]
        tls: TlsArgs,
    },
    /// This site and every site below it, with the links to its children.
    List {
        #[command(flatten)]
        connection: Connection,
    },
    /// What waits at this site and why: instructions, content, status.
    Queues {
        #[command(flatten)]
        connection: Connection,
    },
    /// Rate-limit the content this site sends to a child site.
    Link {
        /// The child site's code.
        code: String,
        /// Bytes per second (e.g. 10MiB).
        #[arg(long, value_parser = parse_rate, required_unless_present = "no_limit", conflicts_with = "no_limit")]
        max_rate: Option<u64>,
        /// Remove the limit.
        #[arg(long)]
        no_limit: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// Replace one of the site's tokens, on the site's machine (running or
    /// not): the old one stops working at once and the new one is written
    /// to its file in DIR and printed. Agents, DPs and child sites enrolled
    /// with an old join token keep their own credentials.
    RotateToken {
        /// The site's data directory.
        dir: PathBuf,
        /// Which token: admin, join (workstations), dp-join or site-join.
        #[arg(long, value_parser = ["admin", "join", "dp-join", "site-join"])]
        role: String,
    },
    /// Show the site's settings, or change them.
    Settings {
        /// Hold new agents until `cascade agent approve` (true or false).
        #[arg(long)]
        require_approval: Option<bool>,
        /// How often agents poll for policy (e.g. 60s, 5m).
        #[arg(long, value_parser = humantime::parse_duration)]
        agent_poll_interval: Option<std::time::Duration>,
        /// At the central site: how long each signed timestamp stays valid
        /// (e.g. 24h, 3days). A workstation whose site has passed on no
        /// current one for this long starts no job.
        #[arg(long, value_parser = humantime::parse_duration)]
        timestamp_validity: Option<std::time::Duration>,
        /// How many versions of each package this site keeps, newest first,
        /// beside every version an open job needs (3 unless set); the
        /// chunks only older versions use are removed.
        #[arg(long)]
        keep_versions: Option<u32>,
        #[command(flatten)]
        connection: Connection,
    },
    /// Serve the site's API until SIGTERM or Ctrl-C.
    Run {
        /// The data directory.
        dir: PathBuf,
        /// Address to listen on; port 0 picks a free port (the URL is
        /// printed and written to DIR/url).
        #[arg(long, default_value = "127.0.0.1:7400")]
        listen: String,
        /// Let `cascade package create`/`update` run on this machine have
        /// the site read directories under DIR itself (no upload, chunks
        /// hashed once); none by default. Never the site's own directory.
        #[arg(long, value_name = "DIR")]
        local_ingest_root: Option<PathBuf>,
        /// How long a chunk that no kept version uses stays before it is
        /// removed (protects uploads in progress).
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        chunk_grace: std::time::Duration,
        /// How long one pass of verifying every stored chunk takes, paced
        /// evenly (continuous content validation; a damaged chunk is
        /// removed and, at a child site, fetched again from the parent).
        #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
        scrub_pass: std::time::Duration,
        #[command(flatten)]
        limits: ServerLimits,
    },
}

/// The kind of a site joining a parent.
#[derive(Clone, Copy, ValueEnum)]
enum ChildKind {
    Primary,
    Secondary,
}

/// Parses a size such as `512MiB`, `10KB` or `0`.
fn parse_size(text: &str) -> std::result::Result<u64, String> {
    text.parse::<bytesize::ByteSize>()
        .map(|size| size.as_u64())
        .map_err(|err| format!("{text:?} is not a size such as 512MiB or 10KB: {err}"))
}

/// Parses a rate such as `10MiB`, `500KB` or `1048576` (bytes per second).
fn parse_rate(text: &str) -> std::result::Result<u64, String> {
    let size: bytesize::ByteSize = text
        .trim_end_matches("/s")
        .parse()
        .map_err(|err| format!("{text:?} is not a rate such as 10MiB or 500KB: {err}"))?;
    match size.as_u64() {
        0 => Err("a rate limit must be more than 0 bytes per second".into()),
        bytes => Ok(bytes),
    }
}

#[derive(Subcommand)]
enum DpGroupCommand {
    /// Create a DP group from DPs of any site (central site only).
    Create {
        /// Group name.
        name: String,
        /// A DP as SITE/DP, e.g. P01/dp1 (repeatable).
        #[arg(long = "dp", required = true)]
        dps: Vec<String>,
        /// Accept DPs not enrolled yet (they receive the group's packages
        /// when they enroll under these names).
        #[arg(long)]
        allow_unknown: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// List DP groups.
    List {
        #[command(flatten)]
        connection: Connection,
    },
}

#[derive(Subcommand)]
enum AgentCommand {
    /// Enroll this workstation with its site and create the agent's directory.
    Init {
        /// The agent's data directory.
        dir: PathBuf,
        /// URL of the site server.
        #[arg(long)]
        site: String,
        /// The site's join token.
        #[arg(long)]
        join_token: String,
        /// The workstation's name, unique in its site.
        #[arg(long)]
        name: String,
        /// A tag collections can select on, key=value (repeatable).
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Most bytes of downloaded chunks kept for later jobs once their
        /// own jobs are over (e.g. 512MiB; default 1GiB). Chunks an open job
        /// needs are kept whatever this says.
        #[arg(long, value_parser = parse_size)]
        cache_size: Option<u64>,
        /// Where the agent reads the identity of the current boot, which
        /// tells it the workstation restarted (a job whose command asked
        /// for a reboot completes after one). Default:
        /// /proc/sys/kernel/random/boot_id.
        #[arg(long)]
        boot_id_file: Option<PathBuf>,
    },
    /// Run the agent until SIGTERM or Ctrl-C.
    Run {
        /// The agent's data directory.
        dir: PathBuf,
    },
    /// List the job offers this workstation holds (read locally).
    Offers {
        /// The agent's data directory.
        dir: PathBuf,
    },
    /// Run an optional offer now (the running agent picks it up).
    RunOffer {
        /// The agent's data directory.
        dir: PathBuf,
        /// Job id.
        job: u64,
    },
    /// Approve an agent waiting for approval.
    Approve {
        /// The agent's name.
        name: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// List the site's agents with their attributes and reachability.
    List {
        #[command(flatten)]
        connection: Connection,
    },
}

/// `job create`'s arguments (boxed: they are most of `JobCommand`).
#[derive(clap::Args)]
struct JobCreate {
    /// Package name.
    #[arg(long)]
    package: String,
    /// Pinned package version (default: the newest).
    #[arg(long)]
    version: Option<u64>,
    /// Target collection.
    #[arg(long)]
    collection: String,
    /// The command line, run by `sh -c` in the package's directory (for
    /// a removal job, default: the version's uninstall command).
    #[arg(long, required_unless_present = "remove")]
    command: Option<String>,
    /// When the job may run (default: now): 2026-12-02T17:00:00Z,
    /// "2026-12-02 17:00 +01:00", "2026-12-02 17:00" (local time),
    /// "in 2h", "+2h" or now.
    #[arg(long, value_parser = when::parse_time)]
    offer_at: Option<std::time::SystemTime>,
    /// When the offer is withdrawn for good, in the forms of --offer-at.
    #[arg(long, value_parser = when::parse_time, conflicts_with = "expires_in")]
    expires_at: Option<std::time::SystemTime>,
    /// Expiry relative to the offer time (e.g. 2d, 90m).
    #[arg(long, value_parser = humantime::parse_duration)]
    expires_in: Option<std::time::Duration>,
    /// Offer only: runs when requested on the workstation.
    #[arg(long)]
    optional: bool,
    /// Further attempts after a failure.
    #[arg(long, default_value_t = 0)]
    retries: u32,
    /// Wait between attempts (e.g. 30s).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    retry_delay: std::time::Duration,
    /// Longest a download and run may take (e.g. 10m; default 1h).
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<std::time::Duration>,
    /// Exit codes that mean success, comma-separated (default: 0).
    #[arg(long, value_delimiter = ',')]
    success_codes: Vec<i32>,
    /// Distribute to this DP group's DPs (default: the DPs of each site
    /// whose workstations the job targets).
    #[arg(long)]
    dp_group: Option<String>,
    /// Whether the job runs on a workstation where the same program
    /// (this package version and command line) already ran, by any
    /// job: always; never; if-failed (unless its last run there
    /// succeeded; the default); if-succeeded (unless its last run
    /// there failed). Decided by the agent from its own history; a
    /// job not run shows as skipped. An optional job, run when
    /// requested, runs regardless.
    #[arg(long, value_parser = parse_rerun, value_name = "RULE")]
    rerun: Option<cascade_domain::run::RerunRule>,
    /// A removal job: --command uninstalls the package (e.g. 'sh
    /// uninstall.sh' from the package itself); once it succeeded the
    /// agent deletes the package's job directories and the chunks no open
    /// job needs, and forgets that the package's programs ran here (a
    /// later install job runs whatever its rerun rule).
    #[arg(long)]
    remove: bool,
    /// Start outside the collection's maintenance windows too (a
    /// mandatory job otherwise starts only inside one with room for its
    /// timeout).
    #[arg(long)]
    any_time: bool,
    /// A command run after the command succeeded, in the package's
    /// directory with the same environment and CASCADE_CHECK=1 (e.g.
    /// 'test -x /opt/tool/bin/tool'): the job completes on a
    /// workstation only if it exits 0; otherwise the attempt failed
    /// (and is retried as --retries allows). Runs after the reboot the
    /// command asked for, if it did (--reboot-codes).
    #[arg(long, value_name = "COMMAND")]
    check: Option<String>,
    /// Exit codes of the command that mean "succeeded, and needs a
    /// reboot", comma-separated (0 to 255, e.g. 100). The workstation shows
    /// reboot_pending until it restarted (the agent does not restart
    /// it); then the check runs and the job completes.
    #[arg(long, value_delimiter = ',')]
    reboot_codes: Vec<i32>,
    #[command(flatten)]
    connection: Connection,
}

#[derive(Subcommand)]
enum JobCommand {
    /// Create a job; the package goes to the site's DPs that lack it.
    Create(Box<JobCreate>),
    /// List jobs.
    List {
        #[command(flatten)]
        connection: Connection,
    },
    /// Change an open job's offer time or expiry. The central site signs
    /// the job again and the change flows down like any instruction;
    /// workstations holding the offer take it from their next policy. A
    /// canceled or expired job cannot be changed.
    Edit {
        /// Job id.
        id: u64,
        /// When the job may run, in the forms of `job create --offer-at`.
        #[arg(long, value_parser = when::parse_time)]
        offer_at: Option<std::time::SystemTime>,
        /// When the offer is withdrawn for good, in the same forms.
        #[arg(long, value_parser = when::parse_time, conflicts_with_all = ["expires_in", "no_expiry"])]
        expires_at: Option<std::time::SystemTime>,
        /// Expiry relative to the (new) offer time (e.g. 2d, 90m).
        #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "no_expiry")]
        expires_in: Option<std::time::Duration>,
        /// The job no longer expires.
        #[arg(long)]
        no_expiry: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// Cancel a job: withdrawn everywhere, never runs afterwards.
    Cancel {
        /// Job id.
        id: u64,
        #[command(flatten)]
        connection: Connection,
    },
    /// Per-workstation and per-DP status of a job, derived from status messages.
    Status {
        /// Job id.
        id: u64,
        /// Refresh live with a progress bar until the job is finished,
        /// expired or canceled.
        #[arg(long)]
        watch: bool,
        /// Show one workstation in detail, with its output tail.
        #[arg(long)]
        machine: Option<String>,
        #[command(flatten)]
        connection: Connection,
    },
}

/// Who a collection holds, as `collection create` and `edit` take it.
#[derive(clap::Args)]
struct CollectionDefinition {
    /// Workstations by name, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        required_unless_present = "rule",
        conflicts_with = "rule"
    )]
    machines: Vec<String>,
    /// A rule such as `tag.role = kiosk and os = linux`.
    #[arg(long)]
    rule: Option<String>,
    /// Accept listed workstations not enrolled yet (pre-staging); they
    /// are shown as not enrolled until they are.
    #[arg(long, conflicts_with = "rule")]
    allow_unknown: bool,
}

impl CollectionDefinition {
    fn request(self, name: String) -> cascade_protocol::CollectionRequest {
        cascade_protocol::CollectionRequest {
            name,
            machines: self.machines,
            rule: self.rule,
            allow_unknown: self.allow_unknown,
        }
    }
}

#[derive(Subcommand)]
enum CollectionCommand {
    /// Create a collection from names or a rule over agent attributes.
    Create {
        /// Collection name.
        name: String,
        #[command(flatten)]
        definition: CollectionDefinition,
        #[command(flatten)]
        connection: Connection,
    },
    /// Change a collection's definition at the central site: its listed
    /// workstations or its rule. The change flows down to every site, and
    /// the open jobs for the collection follow it: a new member is offered
    /// them, one no longer in it is not (a run under way finishes).
    Edit {
        /// Collection name.
        name: String,
        #[command(flatten)]
        definition: CollectionDefinition,
        #[command(flatten)]
        connection: Connection,
    },
    /// List collections with their current members.
    List {
        #[command(flatten)]
        connection: Connection,
    },
    /// Show one collection and its current members.
    Show {
        /// Collection name.
        name: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// Add a maintenance window to a collection (or remove them all with
    /// --clear). A mandatory job made for the collection afterwards starts
    /// on a workstation only inside one of its windows with room for the
    /// job's timeout (unless the job is --any-time); with no window, at
    /// any time. Jobs carry the windows of when they were made.
    Window {
        /// Collection name.
        name: String,
        /// The first opening, a wall-clock time in --tz:
        /// 2026-12-08T22:00:00 or "2026-12-08 22:00".
        #[arg(long, required_unless_present = "clear", conflicts_with = "clear")]
        start: Option<String>,
        /// How long it stays open (e.g. 4h; at most 7 days).
        #[arg(long, value_parser = humantime::parse_duration, required_unless_present = "clear")]
        duration: Option<std::time::Duration>,
        /// Opens again every so many days: 1d (daily), 7d (weekly), 14d...
        /// (default: once).
        #[arg(long, value_parser = parse_days)]
        every: Option<u32>,
        /// The time zone of --start: an IANA name such as Europe/Paris
        /// (default: UTC).
        #[arg(long, default_value = "UTC")]
        tz: String,
        /// Remove every window of the collection.
        #[arg(long)]
        clear: bool,
        #[command(flatten)]
        connection: Connection,
    },
}

/// A whole number of days (`1d`, `7d`, `2w`), as `collection window
/// --every` takes it.
fn parse_days(text: &str) -> std::result::Result<u32, String> {
    let refuse = || format!("{text:?} is not a whole number of days (e.g. 1d, 7d, 2w)");
    let period = humantime::parse_duration(text).map_err(|_| refuse())?;
    let secs = period.as_secs();
    if secs == 0 || secs % 86_400 != 0 || period.subsec_nanos() != 0 {
        return Err(refuse());
    }
    u32::try_from(secs / 86_400).map_err(|_| refuse())
}

#[derive(Subcommand)]
enum DpCommand {
    /// Enroll a new DP with its site and create its data directory.
    Init {
        /// The DP's data directory.
        dir: PathBuf,
        /// URL of the site server.
        #[arg(long)]
        site: String,
        /// The site's join token (DIR/join.token of the site).
        #[arg(long)]
        join_token: String,
        /// The DP's name, unique in its site.
        #[arg(long)]
        name: String,
        /// Where the DP serves content (port 0 picks a free port each start).
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
        #[command(flatten)]
        tls: TlsArgs,
    },
    /// Run the DP until SIGTERM or Ctrl-C.
    Run {
        /// The DP's data directory.
        dir: PathBuf,
        /// Override the address given at init.
        #[arg(long)]
        listen: Option<String>,
        /// How long one pass of verifying every stored chunk takes, paced
        /// evenly (continuous content validation; damage found is
        /// repaired).
        #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
        scrub_pass: std::time::Duration,
        #[command(flatten)]
        limits: ServerLimits,
    },
    /// List the site's DPs.
    List {
        #[command(flatten)]
        connection: Connection,
    },
    /// Print a content ticket, to fetch from the site's DPs by hand
    /// (`curl -H "Authorization: Bearer $(cascade dp ticket)" ...`).
    Ticket {
        /// How long it holds (at most and by default 24h).
        #[arg(long, value_parser = humantime::parse_duration)]
        valid: Option<std::time::Duration>,
        #[command(flatten)]
        connection: Connection,
    },
    /// Admit a DP that enrolled: it is given packages and agents download
    /// from it, at the URL it announced or at --url.
    Approve {
        /// The DP's name.
        name: String,
        /// The URL agents download from (default: the one it announced).
        #[arg(long)]
        url: Option<String>,
        #[command(flatten)]
        connection: Connection,
    },
}

#[derive(Subcommand)]
enum PackageCommand {
    /// Create version 1 of a new package from a directory.
    Create {
        /// Package name.
        name: String,
        /// The directory to package.
        #[arg(long)]
        source: PathBuf,
        /// Keep setuid and setgid bits of files in the tree (refused
        /// without it).
        #[arg(long)]
        allow_setuid: bool,
        /// The command that uninstalls this version (e.g. 'sh
        /// uninstall.sh'), run by a removal job made without a command
        /// (`job create --remove`).
        #[arg(long, value_name = "COMMAND")]
        uninstall_command: Option<String>,
        #[command(flatten)]
        connection: Connection,
    },
    /// Add the next version of a package from a directory; DPs holding it
    /// move to the new version by themselves.
    Update {
        /// Package name.
        name: String,
        /// The directory to package.
        #[arg(long)]
        source: PathBuf,
        /// Make a new version even when the tree is the newest version's
        /// exactly (without it such an update says "unchanged" and keeps
        /// the newest version).
        #[arg(long)]
        allow_unchanged: bool,
        /// Keep setuid and setgid bits of files in the tree (refused
        /// without it).
        #[arg(long)]
        allow_setuid: bool,
        /// When the site reads the directory itself (its
        /// `--local-ingest-root`): read every file again, also those whose
        /// size, modification and change times and inode are those the
        /// previous update read them with (otherwise taken unchanged, as
        /// rsync's quick check does).
        #[arg(long)]
        read_all: bool,
        /// The command that uninstalls this version, run by a removal job
        /// made without a command (`job create --remove`).
        #[arg(long, value_name = "COMMAND")]
        uninstall_command: Option<String>,
        #[command(flatten)]
        connection: Connection,
    },
    /// List packages.
    List {
        #[command(flatten)]
        connection: Connection,
    },
    /// Show a package: versions, DPs, files.
    Show {
        /// Package name.
        name: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// Place a package on DPs.
    Distribute {
        /// Package name.
        name: String,
        /// A DP of this site to place it on (repeatable).
        #[arg(
            long = "dp",
            required_unless_present_any = ["all_dps", "dp_group"],
            conflicts_with_all = ["all_dps", "dp_group"]
        )]
        dps: Vec<String>,
        /// Every DP of the site, including DPs added later.
        #[arg(long, conflicts_with = "dp_group")]
        all_dps: bool,
        /// The DPs of a DP group, at every site (central site only).
        #[arg(long)]
        dp_group: Option<String>,
        #[command(flatten)]
        connection: Connection,
    },
    /// Re-verify a package on DPs that hold it and repair damaged content.
    Refresh {
        /// Package name.
        name: String,
        /// Only this DP (repeatable): NAME for this site's, SITE/NAME for a
        /// DP of a site below; default every DP of the hierarchy below
        /// holding it.
        #[arg(long = "dp", conflicts_with = "dp_group")]
        dps: Vec<String>,
        /// Only the DPs of this DP group, at every site.
        #[arg(long)]
        dp_group: Option<String>,
        #[command(flatten)]
        connection: Connection,
    },
    /// Every status message about a package: the history behind `status`.
    History {
        /// Package name.
        name: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// Per-DP status of a package, derived from status messages.
    Status {
        /// Package name.
        name: String,
        /// Refresh live until every DP holds the newest version.
        #[arg(long)]
        watch: bool,
        #[command(flatten)]
        connection: Connection,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let _ = LOG_FORMAT.set(cli.log_format.map(|format| match format {
        LogFormatArg::Text => cascade_protocol::logging::LogFormat::Text,
        LogFormatArg::Json => cascade_protocol::logging::LogFormat::Json,
    }));
    // The agent idles on every workstation: one thread is all it needs and
    // keeps its memory small. Servers and the CLI use every core.
    let mut builder = if matches!(cli.command, Command::Agent(AgentCommand::Run { .. })) {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            errln!("error: cannot start the async runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let out = Output {
        json: cli.output == Format::Json,
    };
    // A closed stdout unwinds to here (print.rs), dropping what the command
    // held on the way; it ends the command quietly.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        runtime.block_on(dispatch(cli.command, out))
    }));
    match result {
        Ok(Ok(code)) => code,
        Ok(Err(err)) => {
            out.error(&err);
            std::process::ExitCode::FAILURE
        }
        Err(payload) if payload.is::<print::ClosedStdout>() => std::process::ExitCode::SUCCESS,
        Err(payload) => std::panic::resume_unwind(payload),
    }
}

/// `--log-format`, kept for [`init_logging`].
static LOG_FORMAT: std::sync::OnceLock<Option<cascade_protocol::logging::LogFormat>> =
    std::sync::OnceLock::new();

/// Sets up the log (stderr; `CASCADE_LOG`, `CASCADE_LOG_FORMAT` or
/// `--log-format`) with `default` as the filter when `CASCADE_LOG` is unset.
fn init_logging(default: &str) -> Result<()> {
    let format = LOG_FORMAT.get().copied().flatten();
    Ok(cascade_protocol::logging::init(default, format)?)
}

async fn dispatch(command: Command, out: Output) -> Result<std::process::ExitCode> {
    use std::process::ExitCode;
    match command {
        Command::Site(SiteCommand::RotateToken { dir, role }) => {
            init_logging("warn")?;
            let (token, file) = cascade_site::rotate_token(&dir, &role)
                .await
                .with_context(|| format!("rotating the {role} token of {}", dir.display()))?;
            out.rotated(&role, &token, &file);
        }
        Command::Site(SiteCommand::Init {
            dir,
            code,
            kind,
            parent,
            join_token,
            central_key,
            max_rate,
            replace,
            tls,
        }) => {
            init_logging("warn")?;
            let join = match (kind, parent, join_token) {
                (Some(kind), Some(parent_url), Some(join_token)) => Some(cascade_site::Join {
                    kind: match kind {
                        ChildKind::Primary => cascade_protocol::SiteKind::Primary,
                        ChildKind::Secondary => cascade_protocol::SiteKind::Secondary,
                    },
                    parent_url,
                    join_token,
                    central_key,
                    max_rate,
                    replace,
                }),
                _ => None,
            };
            let report = cascade_site::init(&dir, &code, join.as_ref(), tls.supplied().as_ref())
                .await
                .with_context(|| format!("creating site {code} in {}", dir.display()))?;
            out.site_init(&report);
        }
        Command::Site(SiteCommand::List { connection }) => {
            init_logging("warn")?;
            out.sites(&connection.client()?.sites().await?);
        }
        Command::Site(SiteCommand::Queues { connection }) => {
            init_logging("warn")?;
            out.queues(&connection.client()?.queues().await?);
        }
        Command::Site(SiteCommand::Link {
            code,
            max_rate,
            no_limit: _,
            connection,
        }) => {
            init_logging("warn")?;
            let summary = connection
                .client()?
                .set_link(&code, &cascade_protocol::LinkRequest { max_rate })
                .await?;
            out.site(&summary);
        }
        Command::DpGroup(command) => {
            init_logging("warn")?;
            match command {
                DpGroupCommand::Create {
                    name,
                    dps,
                    allow_unknown,
                    connection,
                } => {
                    let group = connection
                        .client()?
                        .create_dp_group(&cascade_protocol::DpGroupRequest {
                            name,
                            dps,
                            allow_unknown,
                        })
                        .await?;
                    out.dp_group(&group);
                }
                DpGroupCommand::List { connection } => {
                    out.dp_groups(&connection.client()?.dp_groups().await?);
                }
            }
        }
        Command::Site(SiteCommand::Run {
            dir,
            listen,
            local_ingest_root,
            chunk_grace,
            scrub_pass,
            limits,
        }) => {
            init_logging("info")?;
            cascade_site::run(
                &dir,
                &listen,
                limits.limits(),
                cascade_site::RunOptions {
                    local_ingest_root: local_ingest_root.as_deref(),
                    chunk_grace,
                    scrub_pass,
                },
                cascade_protocol::signal::shutdown_signal(),
                |running| {
                    out.listening("site", &running.url);
                },
            )
            .await
            .with_context(|| format!("running the site in {}", dir.display()))?;
        }
        Command::Dp(DpCommand::Init {
            dir,
            site,
            join_token,
            name,
            listen,
            tls,
        }) => {
            init_logging("warn")?;
            let config = cascade_dp::init(
                &dir,
                &site,
                &join_token,
                &name,
                &listen,
                tls.supplied().as_ref(),
            )
            .await
            .with_context(|| format!("enrolling dp {name} with {site}"))?;
            out.enrolled(
                "dp",
                &dir,
                &config.enrollment,
                cascade_dp::layout::CONFIG,
                None,
            );
        }
        Command::Dp(DpCommand::Run {
            dir,
            listen,
            scrub_pass,
            limits,
        }) => {
            init_logging("info")?;
            cascade_dp::run(
                &dir,
                listen.as_deref(),
                limits.limits(),
                scrub_pass,
                cascade_protocol::signal::shutdown_signal(),
                |running| {
                    out.listening("dp", &running.url);
                },
            )
            .await
            .with_context(|| format!("running the dp in {}", dir.display()))?;
        }
        Command::Dp(DpCommand::List { connection }) => {
            init_logging("warn")?;
            let dps = connection.client()?.dps().await?;
            out.dps(&dps);
        }
        Command::Dp(DpCommand::Ticket { valid, connection }) => {
            init_logging("warn")?;
            let ticket = connection.client()?.content_ticket(valid).await?;
            out.content_ticket(&ticket);
        }
        Command::Dp(DpCommand::Approve {
            name,
            url,
            connection,
        }) => {
            init_logging("warn")?;
            let dp = connection
                .client()?
                .approve_dp(&name, url.as_deref())
                .await?;
            out.dp_approved(&dp);
        }
        Command::Site(SiteCommand::Settings {
            require_approval,
            agent_poll_interval,
            timestamp_validity,
            keep_versions,
            connection,
        }) => {
            init_logging("warn")?;
            let client = connection.client()?;
            let mut settings = client.settings().await?;
            if require_approval.is_some()
                || agent_poll_interval.is_some()
                || timestamp_validity.is_some()
                || keep_versions.is_some()
            {
                if let Some(keep) = keep_versions {
                    settings.keep_versions = keep;
                }
                if let Some(validity) = timestamp_validity {
                    settings.timestamp_validity_ms = validity.as_millis() as u64;
                }
                if let Some(require) = require_approval {
                    settings.require_approval = require;
                }
                if let Some(interval) = agent_poll_interval {
                    settings.agent_poll_interval_ms = interval.as_millis() as u64;
                }
                settings = client.put_settings(&settings).await?;
            }
            out.settings(&settings);
        }
        Command::Agent(AgentCommand::Init {
            dir,
            site,
            join_token,
            name,
            tags,
            cache_size,
            boot_id_file,
        }) => {
            init_logging("warn")?;
            let options = cascade_agent::InitOptions {
                cache_bytes: cache_size,
                boot_id_file,
            };
            let enrolled = cascade_agent::init(&dir, &site, &join_token, &name, &tags, options)
                .await
                .with_context(|| format!("enrolling agent {name} with {site}"))?;
            out.enrolled(
                "agent",
                &dir,
                &enrolled.config.enrollment,
                cascade_agent::layout::CONFIG,
                Some(enrolled.approved),
            );
        }
        Command::Agent(AgentCommand::Run { dir }) => {
            init_logging("info")?;
            cascade_agent::run(&dir, cascade_protocol::signal::shutdown_signal())
                .await
                .with_context(|| format!("running the agent in {}", dir.display()))?;
        }
        Command::Agent(AgentCommand::Offers { dir }) => {
            init_logging("warn")?;
            let offers = cascade_agent::offers(&dir)
                .await
                .with_context(|| format!("reading the offers in {}", dir.display()))?;
            out.offers(&offers);
        }
        Command::Agent(AgentCommand::RunOffer { dir, job }) => {
            init_logging("warn")?;
            cascade_agent::run_offer(&dir, job).await?;
            if !out.json {
                outln!("job {job} requested; the running agent starts it within a second");
            }
        }
        Command::Job(command) => {
            init_logging("warn")?;
            return job(command, out).await;
        }
        Command::Agent(AgentCommand::Approve { name, connection }) => {
            init_logging("warn")?;
            let agent = connection.client()?.approve_agent(&name).await?;
            out.agent(&agent);
        }
        Command::Agent(AgentCommand::List { connection }) => {
            init_logging("warn")?;
            out.agents(&connection.client()?.agents().await?);
        }
        Command::Collection(command) => {
            init_logging("warn")?;
            match command {
                CollectionCommand::Create {
                    name,
                    definition,
                    connection,
                } => {
                    let request = definition.request(name);
                    out.collection(&connection.client()?.create_collection(&request).await?);
                }
                CollectionCommand::Edit {
                    name,
                    definition,
                    connection,
                } => {
                    let request = definition.request(name);
                    out.collection(&connection.client()?.edit_collection(&request).await?);
                }
                CollectionCommand::List { connection } => {
                    out.collections(&connection.client()?.collections().await?);
                }
                CollectionCommand::Show { name, connection } => {
                    out.collection(&connection.client()?.collection(&name).await?);
                }
                CollectionCommand::Window {
                    name,
                    start,
                    duration,
                    every,
                    tz,
                    clear,
                    connection,
                } => {
                    let client = connection.client()?;
                    let info = match (start, duration) {
                        (Some(start), Some(duration)) if !clear => {
                            let window = cascade_protocol::WindowSpec {
                                start: start.trim().replacen(' ', "T", 1),
                                zone: tz,
                                duration_ms: duration.as_millis() as u64,
                                every_days: every,
                            };
                            client.add_collection_window(&name, &window).await?
                        }
                        _ => client.clear_collection_windows(&name).await?,
                    };
                    out.collection(&info);
                }
            }
        }
        Command::Package(command) => {
            init_logging("warn")?;
            return package(command, out).await;
        }
        Command::Quickstart(args) => {
            init_logging("warn")?;
            return quickstart::run(args, out).await;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn ms(time: std::time::SystemTime) -> i64 {
    time.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A rerun rule as `job create --rerun` takes it.
fn parse_rerun(text: &str) -> std::result::Result<cascade_domain::run::RerunRule, String> {
    cascade_domain::run::RerunRule::parse(text).map_err(|err| err.to_string())
}

async fn job(command: JobCommand, out: Output) -> Result<std::process::ExitCode> {
    match command {
        JobCommand::Create(create) => {
            let JobCreate {
                package,
                version,
                collection,
                command,
                offer_at,
                expires_at,
                expires_in,
                optional,
                retries,
                retry_delay,
                timeout,
                success_codes,
                dp_group,
                rerun,
                check,
                reboot_codes,
                any_time,
                remove,
                connection,
            } = *create;
            let offer_at_ms = offer_at.map(ms);
            let expires_at_ms = match (expires_at, expires_in) {
                (Some(at), _) => Some(ms(at)),
                (None, Some(after)) => Some(
                    offer_at_ms.unwrap_or_else(|| ms(std::time::SystemTime::now()))
                        + after.as_millis() as i64,
                ),
                (None, None) => None,
            };
            let info = connection
                .client()?
                .create_job(&cascade_protocol::JobRequest {
                    package,
                    version,
                    collection,
                    command: command.unwrap_or_default(),
                    offer_at_ms,
                    expires_at_ms,
                    optional,
                    retries,
                    retry_delay_ms: retry_delay.as_millis() as u64,
                    timeout_ms: timeout.map(|t| t.as_millis() as u64),
                    success_codes,
                    dp_group,
                    check,
                    reboot_codes,
                    any_time,
                    remove,
                    rerun,
                })
                .await?;
            out.job(&info);
        }
        JobCommand::List { connection } => out.jobs(&connection.client()?.jobs().await?),
        JobCommand::Edit {
            id,
            offer_at,
            expires_at,
            expires_in,
            no_expiry,
            connection,
        } => {
            if offer_at.is_none() && expires_at.is_none() && expires_in.is_none() && !no_expiry {
                anyhow::bail!(
                    "nothing to change: give --offer-at, --expires-at, --expires-in or --no-expiry"
                );
            }
            let client = connection.client()?;
            let offer_at_ms = offer_at.map(ms);
            let expires_at_ms = match (expires_at, expires_in) {
                (Some(at), _) => Some(ms(at)),
                (None, Some(after)) => {
                    // From the (new) offer time, or from now for a job
                    // offered already.
                    let offered = match offer_at_ms {
                        Some(at) => at,
                        None => client.job_status(id).await?.job.offer.offer_at_ms,
                    };
                    let from = offered.max(ms(std::time::SystemTime::now()));
                    Some(from + after.as_millis() as i64)
                }
                (None, None) => None,
            };
            let request = cascade_protocol::JobEditRequest {
                offer_at_ms,
                expires_at_ms,
                no_expiry,
            };
            out.job(&client.edit_job(id, &request).await?)
        }
        JobCommand::Cancel { id, connection } => {
            out.job(&connection.client()?.cancel_job(id).await?)
        }
        JobCommand::Status {
            id,
            watch,
            machine,
            connection,
        } => {
            let client = connection.client()?;
            let status = if watch {
                output::watch_job(
                    &client,
                    id,
                    std::time::Duration::from_secs(7 * 24 * 3600),
                    !out.json,
                )
                .await?
            } else {
                client.job_status(id).await?
            };
            match machine {
                Some(name) => out.workstation(&status, &name)?,
                None => out.job_status(&status),
            }
            if watch {
                return Ok(output::job_exit_code(&status));
            }
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

async fn ingest_version(
    connection: &Connection,
    name: &str,
    source: &std::path::Path,
    intent: VersionIntent,
    options: ingest::VersionOptions,
    out: Output,
) -> Result<()> {
    let client = connection.client()?;
    let report = ingest::ingest(&client, name, source, intent, options, !out.json).await?;
    out.ingested(&report);
    Ok(())
}

async fn package(command: PackageCommand, out: Output) -> Result<std::process::ExitCode> {
    match command {
        PackageCommand::Create {
            name,
            source,
            allow_setuid,
            uninstall_command,
            connection,
        } => {
            let options = ingest::VersionOptions {
                allow_unchanged: false,
                allow_setuid,
                read_all: false,
                uninstall_command,
            };
            ingest_version(
                &connection,
                &name,
                &source,
                VersionIntent::Create,
                options,
                out,
            )
            .await?
        }
        PackageCommand::Update {
            name,
            source,
            allow_unchanged,
            allow_setuid,
            read_all,
            uninstall_command,
            connection,
        } => {
            let options = ingest::VersionOptions {
                allow_unchanged,
                allow_setuid,
                read_all,
                uninstall_command,
            };
            ingest_version(
                &connection,
                &name,
                &source,
                VersionIntent::Update,
                options,
                out,
            )
            .await?
        }
        PackageCommand::List { connection } => {
            out.packages(&connection.client()?.packages().await?);
        }
        PackageCommand::Show { name, connection } => {
            out.package(&connection.client()?.package(&name).await?);
        }
        PackageCommand::Distribute {
            name,
            dps,
            all_dps,
            dp_group,
            connection,
        } => {
            let report = connection
                .client()?
                .distribute(
                    &name,
                    &DistributeRequest {
                        dps,
                        all_dps,
                        dp_group,
                    },
                )
                .await?;
            out.targets("distributed", &report);
        }
        PackageCommand::Refresh {
            name,
            dps,
            dp_group,
            connection,
        } => {
            let report = connection
                .client()?
                .refresh(&name, &RefreshRequest { dps, dp_group })
                .await?;
            out.targets("refresh requested", &report);
        }
        PackageCommand::History { name, connection } => {
            out.history(&connection.client()?.package_messages(&name).await?);
        }
        PackageCommand::Status {
            name,
            watch,
            connection,
        } => {
            let client = connection.client()?;
            if watch {
                let status = output::watch_package(
                    &client,
                    &name,
                    std::time::Duration::from_secs(24 * 3600),
                    !out.json,
                )
                .await?;
                out.package_status(&status);
            } else {
                out.package_status(&client.package_status(&name).await?);
            }
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}
