//! `cascade-loadgen`: many simulated workstation agents in one process,
//! speaking the real agent protocol over HTTP to a running site server.
//!
//! Four subcommands, each printing one JSON object on stdout when it is done
//! (progress goes to stderr) so that the benchmark harness can parse it:
//!
//! - `enroll`: enrolls a fleet of agents with the site's join token and keeps
//!   their credentials in a state file (JSON lines), growing it on re-runs;
//! - `poll`: a fleet in steady state: every agent short-polls its policy once
//!   per interval (with jitter) and posts a status message, measuring poll
//!   and status latency, throughput, and the server's CPU and memory;
//! - `hold`: the real agent's long poll, one socket per agent held open,
//!   measuring the server's memory per held poll and how late polls return;
//! - `ingest`: status messages posted back to back in batches, measuring how
//!   many the site stores durably per second.
//!
//! Every simulated agent shares one connection pool (`Client::with_token`);
//! `poll` caps the requests in flight so that the process never opens more
//! sockets than asked, whatever the number of agents.

#[path = "../procfs.rs"]
mod procfs;

use anyhow::{bail, ensure, Context, Result};
use cascade_protocol::status_signing::StatusSigner;
use cascade_protocol::tls::Fingerprint;
use cascade_protocol::{
    AgentEnrollRequest, AgentReport, Client, StatusBatch, StatusBody, StatusMessage,
};
use clap::{Args, Parser, Subcommand};
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::fmt::Display;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{sleep_until, Instant};

/// Most held polls `hold` accepts: each is a socket here and one at the
/// server, and the machines we benchmark on allow 20,000 descriptors.
const MAX_HELD: usize = 9000;

/// The longest poll wait a site honours (it caps longer ones).
const MAX_WAIT_MS: u64 = 60_000;

/// Most messages a site accepts in one status batch.
const MAX_BATCH: usize = 10_000;

/// The package size simulated downloads report.
const BYTES_TOTAL: u64 = 1_000_000;

/// How far each successive `JobDownloading` message moves the download.
const BYTES_STEP: u64 = 10_000;

/// How many distinct error messages a report quotes.
const ERROR_SAMPLES: usize = 5;

/// How often progress goes to stderr.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

#[derive(Parser)]
#[command(
    name = "cascade-loadgen",
    about = "Simulates many Cascade agents against a running site server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Enrolls agents `{prefix}-{i:06}` and records their credentials.
    Enroll(EnrollArgs),
    /// Steady state: every agent short-polls once per interval and reports.
    Poll(PollArgs),
    /// Long polls: every agent holds its policy poll open, as real agents do.
    Hold(HoldArgs),
    /// Status ingestion throughput: batches posted back to back.
    Ingest(IngestArgs),
}

fn parse_certificate(text: &str) -> std::result::Result<Fingerprint, String> {
    Fingerprint::parse(text)
        .ok_or_else(|| format!("{text:?} is not a SHA-256 fingerprint (64 hex digits)"))
}

#[derive(Args)]
struct EnrollArgs {
    /// The site server's URL.
    #[arg(long)]
    site: String,
    /// SHA-256 fingerprint of the site's TLS certificate, pinned.
    #[arg(long, value_parser = parse_certificate)]
    certificate: Fingerprint,
    /// The site's join token.
    #[arg(long)]
    join_token: String,
    /// How many agents the fleet should have.
    #[arg(long)]
    agents: usize,
    /// Agent names are `{prefix}-{i:06}`.
    #[arg(long)]
    prefix: String,
    /// The state file (JSON lines of name and credential), appended to.
    #[arg(long)]
    state: PathBuf,
    /// Enrollments in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
}

/// Which site and which agents of the state file.
#[derive(Args)]
struct FleetArgs {
    /// The site server's URL.
    #[arg(long)]
    site: String,
    /// SHA-256 fingerprint of the site's TLS certificate, pinned.
    #[arg(long, value_parser = parse_certificate)]
    certificate: Fingerprint,
    /// The state file written by `enroll`.
    #[arg(long)]
    state: PathBuf,
    /// How many agents to simulate: the first N of the state file.
    #[arg(long)]
    agents: usize,
    /// The site server's process id, to sample its CPU time and memory.
    #[arg(long)]
    server_pid: Option<u32>,
}

/// The job the agents report progress on.
#[derive(Args)]
struct JobArgs {
    /// Id of a job whose collection contains the agents.
    #[arg(long)]
    job: u64,
    /// The job's package.
    #[arg(long)]
    package: String,
}

#[derive(Args)]
struct PollArgs {
    #[command(flatten)]
    fleet: FleetArgs,
    #[command(flatten)]
    job: JobArgs,
    /// Each agent polls once per interval.
    #[arg(long, default_value_t = 60_000)]
    interval_ms: u64,
    /// Each interval is scaled by a uniform factor in 1 ± jitter.
    #[arg(long, default_value_t = 0.1)]
    jitter: f64,
    /// Length of the measured window, after the warm-up.
    #[arg(long)]
    duration_s: f64,
    /// Seconds at the start left out of the statistics.
    #[arg(long, default_value_t = 0.0)]
    warmup_s: f64,
    /// Most requests in flight (and so sockets) at once.
    #[arg(long, default_value_t = 512)]
    connections: usize,
    /// Every K-th poll of an agent is followed by a status post (0: never).
    #[arg(long, default_value_t = 1)]
    status_every: u64,
}

#[derive(Args)]
struct HoldArgs {
    #[command(flatten)]
    fleet: FleetArgs,
    /// How long each poll asks the server to hold it.
    #[arg(long, default_value_t = 60_000)]
    wait_ms: u64,
    /// How long to run.
    #[arg(long)]
    duration_s: f64,
    /// Polls opened per second at the start (a burst of thousands of
    /// connects would overflow the server's accept backlog).
    #[arg(long, default_value_t = 2000.0)]
    open_rate: f64,
}

#[derive(Args)]
struct IngestArgs {
    #[command(flatten)]
    fleet: FleetArgs,
    #[command(flatten)]
    job: JobArgs,
    /// Messages per batch.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Workers posting at once, each for its own share of the agents.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// How long to run.
    #[arg(long)]
    duration_s: f64,
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let fd_limit = raise_fd_limit();
    // Each subcommand's report, and a reason to exit with failure after
    // printing it.
    let (report, failure) = match cli.command {
        Command::Enroll(args) => {
            let report = enroll(args).await?;
            let failure =
                (report.errors > 0).then(|| format!("{} enrollments failed", report.errors));
            (serde_json::to_string(&report)?, failure)
        }
        Command::Poll(args) => (serde_json::to_string(&poll(args, fd_limit).await?)?, None),
        Command::Hold(args) => (serde_json::to_string(&hold(args, fd_limit).await?)?, None),
        Command::Ingest(args) => (serde_json::to_string(&ingest(args, fd_limit).await?)?, None),
    };
    println!("{report}");
    match failure {
        Some(reason) => bail!(reason),
        None => Ok(()),
    }
}

// ---------------------------------------------------------------------------
// enroll
// ---------------------------------------------------------------------------

/// One line of the state file.
#[derive(Clone, Serialize, Deserialize)]
struct AgentCredential {
    name: String,
    credential: String,
}

#[derive(Serialize)]
struct EnrollReport {
    /// Agents enrolled by this run.
    enrolled: usize,
    /// Agents of the requested fleet now in the state file.
    total: usize,
    seconds: f64,
    per_second: f64,
    /// Enrolled agents the site holds for approval (they get no jobs).
    unapproved: usize,
    errors: u64,
    error_samples: Vec<String>,
}

async fn enroll(args: EnrollArgs) -> Result<EnrollReport> {
    ensure!(args.concurrency > 0, "--concurrency must be at least 1");
    let (known, valid_len) = read_state(&args.state)?;
    let known: HashSet<String> = known.into_iter().map(|agent| agent.name).collect();
    let names: Vec<String> = (0..args.agents)
        .map(|i| format!("{}-{i:06}", args.prefix))
        .filter(|name| !known.contains(name))
        .collect();
    let already = args.agents - names.len();
    eprintln!(
        "enroll: {already} of {} agents already in {}, enrolling {}",
        args.agents,
        args.state.display(),
        names.len()
    );

    // Append to the state file, first cutting off a line torn by a crash
    // mid-append so that the next line starts clean.
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.state)
        .with_context(|| format!("cannot open {}", args.state.display()))?;
    if file.metadata()?.len() != valid_len {
        file.set_len(valid_len)
            .with_context(|| format!("cannot truncate {}", args.state.display()))?;
    }
    let mut file = tokio::fs::File::from_std(file);

    let client = Client::new(&args.site, None, Some(args.certificate))
        .context("cannot build the HTTP client")?;
    let names = Arc::new(names);
    let next = Arc::new(AtomicUsize::new(0));
    let (results, mut arrivals) = tokio::sync::mpsc::channel(1024);
    let started = Instant::now();
    for _ in 0..args.concurrency.min(names.len()) {
        let (client, names, next, results) =
            (client.clone(), names.clone(), next.clone(), results.clone());
        let join_token = args.join_token.clone();
        tokio::spawn(async move {
            while let Some(name) = names.get(next.fetch_add(1, Ordering::Relaxed)) {
                let request = AgentEnrollRequest {
                    name: name.clone(),
                    join_token: join_token.clone(),
                    report: bench_report(name),
                    public_key: Some(cascade_content::public_key_hex(
                        &bench_key(name).verifying_key(),
                    )),
                };
                let result = client
                    .enroll_agent(&request)
                    .await
                    .map(|response| (name.clone(), response))
                    .map_err(|err| format!("enrolling {name}: {err}"));
                if results.send(result).await.is_err() {
                    break;
                }
            }
        });
    }
    drop(results);

    // Write credentials as they arrive, one fsync per group of arrivals: a
    // credential is shown once, so losing it would orphan the agent.
    let (mut enrolled, mut unapproved) = (0usize, 0usize);
    let mut errors = Errors::default();
    let mut batch = Vec::with_capacity(256);
    let mut last_progress = Instant::now();
    while arrivals.recv_many(&mut batch, 256).await > 0 {
        let mut lines = String::new();
        for result in batch.drain(..) {
            match result {
                Ok((name, response)) => {
                    enrolled += 1;
                    if !response.approved {
                        unapproved += 1;
                    }
                    let line = AgentCredential {
                        name,
                        credential: response.credential,
                    };
                    lines.push_str(&serde_json::to_string(&line)?);
                    lines.push('\n');
                }
                Err(message) => errors.record(message),
            }
        }
        if !lines.is_empty() {
            file.write_all(lines.as_bytes())
                .await
                .and(file.sync_data().await)
                .with_context(|| format!("cannot append to {}", args.state.display()))?;
        }
        if last_progress.elapsed() >= PROGRESS_EVERY {
            last_progress = Instant::now();
            eprintln!(
                "enroll: {enrolled}/{} in {:.1} s, {} errors",
                names.len(),
                started.elapsed().as_secs_f64(),
                errors.count
            );
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(EnrollReport {
        enrolled,
        total: already + enrolled,
        seconds: round3(seconds),
        per_second: round1(rate(enrolled as u64, seconds)),
        unapproved,
        errors: errors.count,
        error_samples: errors.samples,
    })
}

/// What a simulated workstation reports about itself.
/// The status key of simulated agent `name`: derived from its name, so
/// that the state file needs to keep only credentials (a benchmark's
/// agents guard nothing).
fn bench_key(name: &str) -> cascade_content::SigningKey {
    cascade_content::SigningKey::from_bytes(
        blake3::hash(format!("cascade-loadgen status key {name}").as_bytes()).as_bytes(),
    )
}

/// The signer of simulated agent `name` of site `site`, signing every
/// status message as a real agent's forwarder does.
fn signer(site: &str, name: &str) -> Arc<StatusSigner> {
    Arc::new(StatusSigner::new(
        format!("{site}/agent/{name}"),
        bench_key(name),
    ))
}

/// The site's code, which names the sources of its agents' messages.
async fn site_code(client: &Client) -> Result<String> {
    Ok(client
        .site_info()
        .await
        .context("cannot ask the site who it is")?
        .code)
}

fn bench_report(name: &str) -> AgentReport {
    AgentReport {
        os: std::env::consts::OS.to_owned(),
        arch: std::env::consts::ARCH.to_owned(),
        hostname: format!("{name}.bench"),
        tags: BTreeMap::from([("bench".to_owned(), "load".to_owned())]),
    }
}

/// The agents recorded in the state file (none if it does not exist), and
/// the length of its intact part: everything up to the last newline. A
/// trailing partial line, left by a crash mid-append, is ignored.
fn read_state(path: &Path) -> Result<(Vec<AgentCredential>, u64)> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(err) => return Err(err).with_context(|| format!("cannot read {}", path.display())),
    };
    let intact = text.rfind('\n').map_or(0, |at| at + 1);
    if intact < text.len() {
        eprintln!(
            "warning: ignoring a torn last line of {} ({} bytes)",
            path.display(),
            text.len() - intact
        );
    }
    let mut seen = HashSet::new();
    let mut agents = Vec::new();
    for (number, line) in text[..intact].lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let agent: AgentCredential = serde_json::from_str(line)
            .with_context(|| format!("{} line {}: not an agent", path.display(), number + 1))?;
        if seen.insert(agent.name.clone()) {
            agents.push(agent);
        }
    }
    Ok((agents, intact as u64))
}

/// The first `--agents` agents of the state file.
fn load_fleet(fleet: &FleetArgs) -> Result<Vec<AgentCredential>> {
    ensure!(fleet.agents > 0, "--agents must be at least 1");
    let (mut agents, _) = read_state(&fleet.state)?;
    ensure!(
        agents.len() >= fleet.agents,
        "{} holds {} agents but {} were asked for; run `cascade-loadgen enroll` first",
        fleet.state.display(),
        agents.len(),
        fleet.agents
    );
    agents.truncate(fleet.agents);
    Ok(agents)
}

// ---------------------------------------------------------------------------
// poll
// ---------------------------------------------------------------------------

/// What every simulated agent of `poll` shares.
struct PollShared {
    interval: Duration,
    jitter: f64,
    status_every: u64,
    job: u64,
    package: String,
    /// Events scheduled before this are warm-up, left out of the figures.
    window_start: Instant,
    /// No event is scheduled from here on.
    end: Instant,
    /// Caps requests in flight, and so the sockets opened.
    limit: Semaphore,
    stats: Mutex<PollStats>,
}

/// Latencies (µs) and counts of the measured window.
#[derive(Default)]
struct PollStats {
    /// From the moment the agent wanted to poll (queueing included).
    poll: Vec<u32>,
    /// From sending the request to the parsed answer.
    poll_request: Vec<u32>,
    status: Vec<u32>,
    status_request: Vec<u32>,
    status_stored: u64,
    status_duplicates: u64,
    /// Every poll answered so far, warm-up included (for progress).
    polls_total: u64,
    /// Errors in the measured window.
    errors: u64,
    /// Errors anywhere, warm-up included, with samples.
    all_errors: Errors,
}

impl PollStats {
    fn error(&mut self, measured: bool, what: &str, err: impl Display) {
        if measured {
            self.errors += 1;
        }
        self.all_errors.record(format!("{what}: {err}"));
    }
}

#[derive(Serialize)]
struct PollReport {
    agents: usize,
    interval_ms: u64,
    jitter: f64,
    connections: usize,
    status_every: u64,
    warmup_s: f64,
    seconds: f64,
    /// What the fleet offers if the server keeps up.
    target_polls_per_s: f64,
    polls: u64,
    polls_per_s: f64,
    poll_ms: Option<Percentiles>,
    poll_request_ms: Option<Percentiles>,
    status_posts: u64,
    status_stored: u64,
    status_duplicates: u64,
    status_per_s: f64,
    status_ms: Option<Percentiles>,
    status_request_ms: Option<Percentiles>,
    errors: u64,
    errors_total: u64,
    error_samples: Vec<String>,
    server_cpu_pct: Option<f64>,
    server_rss_mib: Option<f64>,
    server_hwm_mib: Option<f64>,
    loadgen_cpu_pct: Option<f64>,
    loadgen_rss_mib: Option<f64>,
}

async fn poll(args: PollArgs, fd_limit: u64) -> Result<PollReport> {
    ensure!(args.interval_ms > 0, "--interval-ms must be positive");
    ensure!(
        (0.0..1.0).contains(&args.jitter),
        "--jitter must be in [0, 1)"
    );
    ensure!(args.duration_s > 0.0, "--duration-s must be positive");
    ensure!(args.warmup_s >= 0.0, "--warmup-s must not be negative");
    ensure!(args.connections > 0, "--connections must be at least 1");
    check_fd_budget(args.connections, fd_limit)?;
    let watch = Watch::new(args.fleet.server_pid)?;
    let fleet = load_fleet(&args.fleet)?;
    let base = Client::new(&args.fleet.site, None, Some(args.fleet.certificate))
        .context("cannot build the HTTP client")?;
    check_job_offered(&base, &fleet[0], args.job.job).await?;

    let interval = Duration::from_millis(args.interval_ms);
    let start = Instant::now();
    let window_start = start + Duration::from_secs_f64(args.warmup_s);
    let end = window_start + Duration::from_secs_f64(args.duration_s);
    let shared = Arc::new(PollShared {
        interval,
        jitter: args.jitter,
        status_every: args.status_every,
        job: args.job.job,
        package: args.job.package.clone(),
        window_start,
        end,
        limit: Semaphore::new(args.connections),
        stats: Mutex::new(PollStats::default()),
    });
    eprintln!(
        "poll: {} agents every {} ms ± {:.0}%, {} s warm-up then {} s measured, at most {} requests in flight",
        fleet.len(),
        args.interval_ms,
        args.jitter * 100.0,
        args.warmup_s,
        args.duration_s,
        args.connections
    );

    // One task per agent, each first polling at a uniformly random moment of
    // the first interval so that the load is even from the start.
    let site = site_code(&base).await?;
    let mut agents = JoinSet::new();
    for agent in &fleet {
        let first = start + interval.mul_f64(rand::thread_rng().gen::<f64>());
        agents.spawn(simulate_agent(
            base.with_token(&agent.credential),
            signer(&site, &agent.name),
            first,
            shared.clone(),
        ));
    }
    drop(fleet);
    let progress = tokio::spawn(poll_progress(shared.clone(), args.connections));

    sleep_until(window_start).await;
    let before = watch.sample();
    sleep_until(end).await;
    let after = watch.sample();
    let memory = watch.server_memory();
    // Requests due before the end still count: wait for them to finish.
    while let Some(joined) = agents.join_next().await {
        joined.context("a simulated agent failed")?;
    }
    progress.abort();

    let own_rss = procfs::memory_kib("self").ok().map(|(rss, _)| mib(rss));
    let mut stats = std::mem::take(&mut *lock(&shared.stats));
    let seconds = args.duration_s;
    let polls = stats.poll.len() as u64;
    let status_posts = stats.status.len() as u64;
    Ok(PollReport {
        agents: args.fleet.agents,
        interval_ms: args.interval_ms,
        jitter: args.jitter,
        connections: args.connections,
        status_every: args.status_every,
        warmup_s: args.warmup_s,
        seconds,
        target_polls_per_s: round1(args.fleet.agents as f64 * 1000.0 / args.interval_ms as f64),
        polls,
        polls_per_s: round1(rate(polls, seconds)),
        poll_ms: percentiles(&mut stats.poll),
        poll_request_ms: percentiles(&mut stats.poll_request),
        status_posts,
        status_stored: stats.status_stored,
        status_duplicates: stats.status_duplicates,
        status_per_s: round1(rate(stats.status_stored, seconds)),
        status_ms: percentiles(&mut stats.status),
        status_request_ms: percentiles(&mut stats.status_request),
        errors: stats.errors,
        errors_total: stats.all_errors.count,
        error_samples: stats.all_errors.samples,
        server_cpu_pct: before.server_cpu_pct(&after),
        server_rss_mib: memory.map(|(rss, _)| mib(rss)),
        server_hwm_mib: memory.map(|(_, hwm)| mib(hwm)),
        loadgen_cpu_pct: before.own_cpu_pct(&after),
        loadgen_rss_mib: own_rss,
    })
}

/// One steady-state agent: polls, sometimes reports, sleeps a jittered
/// interval, until the end of the run.
async fn simulate_agent(
    client: Client,
    signer: Arc<StatusSigner>,
    first: Instant,
    shared: Arc<PollShared>,
) {
    let mut revision = 0;
    let mut polls = 0u64;
    // Where the site stands for this agent, asked before its first report:
    // messages continue from there without gaps.
    let mut seq_base: Option<u64> = None;
    let mut seq = 0;
    let mut due = first;
    while due < shared.end {
        sleep_until(due).await;
        let measured = due >= shared.window_start;
        // The request futures are boxed so that a sleeping task stays small:
        // 150,000 of them must fit in memory.
        let (answer, total, request) = Box::pin(timed(
            &shared.limit,
            due,
            client.agent_policy(revision, Duration::ZERO),
        ))
        .await;
        {
            let mut stats = lock(&shared.stats);
            stats.polls_total += 1;
            match answer {
                Ok(policy) if policy.approved => {
                    revision = policy.revision;
                    if measured {
                        stats.poll.push(micros(total));
                        stats.poll_request.push(micros(request));
                    }
                }
                Ok(policy) => {
                    revision = policy.revision;
                    stats.error(measured, "poll", "the agent is not approved");
                }
                Err(err) => stats.error(measured, "poll", err),
            }
        }
        polls += 1;

        if shared.status_every > 0
            && polls.is_multiple_of(shared.status_every)
            && seq_base.is_none()
        {
            match high_water(&client).await {
                Ok(base) => {
                    seq = base;
                    seq_base = Some(base);
                }
                Err(err) => lock(&shared.stats).error(measured, "status", err),
            }
        }
        if let Some(base) = seq_base.filter(|_| polls.is_multiple_of(shared.status_every.max(1))) {
            seq += 1;
            let mut message = StatusMessage {
                seq,
                at_ms: unix_ms(),
                body: downloading(shared.job, &shared.package, seq - base),
                signature: None,
            };
            signer.sign(&mut message);
            let batch = StatusBatch {
                messages: vec![message],
            };
            let (answer, total, request) = Box::pin(timed(
                &shared.limit,
                Instant::now(),
                client.post_status(&batch),
            ))
            .await;
            let mut stats = lock(&shared.stats);
            match answer {
                Ok(ack) => {
                    if measured {
                        stats.status.push(micros(total));
                        stats.status_request.push(micros(request));
                        stats.status_stored += ack.stored;
                        stats.status_duplicates += ack.duplicates;
                    }
                }
                Err(err) => stats.error(measured, "status", err),
            }
        }

        // The next poll is one jittered interval after this one was due, so
        // the offered load stays at the target while the server keeps up; a
        // server slower than that gets the next poll at once, never a burst.
        due = (due + jittered(shared.interval, shared.jitter)).max(Instant::now());
    }
}

/// Prints `poll` progress to stderr until aborted.
async fn poll_progress(shared: Arc<PollShared>, connections: usize) {
    let started = Instant::now();
    let mut last = 0;
    loop {
        tokio::time::sleep(PROGRESS_EVERY).await;
        let (polls, errors) = {
            let stats = lock(&shared.stats);
            (stats.polls_total, stats.all_errors.count)
        };
        let in_flight = connections - shared.limit.available_permits();
        eprintln!(
            "poll: {:.0} s, {polls} polls ({:.0}/s lately), {errors} errors, {in_flight} in flight",
            started.elapsed().as_secs_f64(),
            rate(polls - last, PROGRESS_EVERY.as_secs_f64())
        );
        last = polls;
    }
}

/// Runs `request` holding a permit of `limit`. Returns its result, the time
/// from `wanted` (waiting for the permit included) and the request's own
/// time.
async fn timed<T>(
    limit: &Semaphore,
    wanted: Instant,
    request: impl Future<Output = T>,
) -> (T, Duration, Duration) {
    let _permit = limit
        .acquire()
        .await
        .expect("the semaphore is never closed");
    let sent = Instant::now();
    let result = request.await;
    let done = Instant::now();
    (result, done - wanted, done - sent)
}

/// `interval` scaled by a uniform factor in `1 ± jitter`.
fn jittered(interval: Duration, jitter: f64) -> Duration {
    if jitter == 0.0 {
        return interval;
    }
    interval.mul_f64(rand::thread_rng().gen_range(1.0 - jitter..=1.0 + jitter))
}

/// A `JobDownloading` message, the `n`-th of its agent in this run.
fn downloading(job: u64, package: &str, n: u64) -> StatusBody {
    StatusBody::JobDownloading {
        job,
        package: package.to_owned(),
        bytes_done: n.saturating_mul(BYTES_STEP).min(BYTES_TOTAL),
        bytes_total: BYTES_TOTAL,
    }
}

/// The highest sequence number the site holds for the agent of `client`
/// (asked with an empty batch): this run's messages continue from it, since
/// the site refuses numbers that skip ahead.
async fn high_water(client: &Client) -> Result<u64, cascade_protocol::Error> {
    let ack = client
        .post_status(&StatusBatch {
            messages: Vec::new(),
        })
        .await?;
    Ok(ack.high_water_seq)
}

/// Polls once as `agent` and warns when the job is not in its policy: its
/// status messages would then be refused.
async fn check_job_offered(base: &Client, agent: &AgentCredential, job: u64) -> Result<()> {
    let policy = base
        .with_token(&agent.credential)
        .agent_policy(0, Duration::ZERO)
        .await
        .with_context(|| format!("{} cannot poll its policy", agent.name))?;
    ensure!(
        policy.approved,
        "{} is not approved by the site; approve the bench agents first",
        agent.name
    );
    if !policy.jobs.iter().any(|offer| offer.id == job) {
        eprintln!(
            "warning: job {job} is not offered to {}; its status messages may be refused",
            agent.name
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// hold
// ---------------------------------------------------------------------------

/// What the held polls of `hold` share.
struct HoldShared {
    wait: Duration,
    end: Instant,
    /// Polls sent and not yet answered.
    held: AtomicU64,
    stats: Mutex<HoldStats>,
}

#[derive(Default)]
struct HoldStats {
    /// How much later than the wait asked for each poll returned (µs).
    lateness: Vec<u32>,
    /// Polls answered at once because the policy changed.
    early: u64,
    /// Polls answered before their wait without a change.
    short: u64,
    errors: Errors,
}

#[derive(Serialize)]
struct HoldReport {
    agents: usize,
    wait_ms: u64,
    seconds: f64,
    /// Polls answered after their full wait.
    polls: u64,
    early_returns: u64,
    short_returns: u64,
    lateness_ms: Option<Percentiles>,
    /// Polls outstanding when the server's memory was sampled.
    held_at_sample: u64,
    server_rss_before_mib: Option<f64>,
    server_rss_held_mib: Option<f64>,
    per_held_poll_kib: Option<f64>,
    server_rss_end_mib: Option<f64>,
    server_hwm_mib: Option<f64>,
    server_cpu_pct: Option<f64>,
    loadgen_cpu_pct: Option<f64>,
    errors: u64,
    error_samples: Vec<String>,
}

async fn hold(args: HoldArgs, fd_limit: u64) -> Result<HoldReport> {
    let agents = args.fleet.agents;
    ensure!(
        agents <= MAX_HELD,
        "hold keeps one socket per agent (and the server one more per agent), so \
         {agents} agents would exhaust the file descriptor limit (20,000 here); \
         use at most {MAX_HELD}"
    );
    check_fd_budget(agents, fd_limit)?;
    ensure!(
        (1..=MAX_WAIT_MS).contains(&args.wait_ms),
        "--wait-ms must be in 1..={MAX_WAIT_MS} (the site caps waits at 60 s)"
    );
    ensure!(args.duration_s > 0.0, "--duration-s must be positive");
    ensure!(args.open_rate > 0.0, "--open-rate must be positive");
    let watch = Watch::new(args.fleet.server_pid)?;
    let fleet = load_fleet(&args.fleet)?;
    let base = Client::new(&args.fleet.site, None, Some(args.fleet.certificate))
        .context("cannot build the HTTP client")?;

    let wait = Duration::from_millis(args.wait_ms);
    let rss_before = watch.server_memory().map(|(rss, _)| rss);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(args.duration_s);
    // Sample the server's memory once every poll is open and none has come
    // back yet: a second after the last opens, or half-way through the
    // first wait if that is later.
    let opening = Duration::from_secs_f64(agents as f64 / args.open_rate);
    let sample_at = start + (opening + Duration::from_secs(1)).max(wait / 2);
    if sample_at >= start + wait || sample_at >= end {
        eprintln!(
            "warning: the first polls may return (or the run end) before all {agents} are \
             open; raise --wait-ms, --duration-s or --open-rate"
        );
    }
    let shared = Arc::new(HoldShared {
        wait,
        end,
        held: AtomicU64::new(0),
        stats: Mutex::new(HoldStats::default()),
    });
    eprintln!(
        "hold: {agents} agents each holding a {} ms poll, opened at {}/s, for {} s",
        args.wait_ms, args.open_rate, args.duration_s
    );
    let mut tasks = JoinSet::new();
    for (i, agent) in fleet.iter().enumerate() {
        let open_at = start + Duration::from_secs_f64(i as f64 / args.open_rate);
        tasks.spawn(hold_poll(
            base.with_token(&agent.credential),
            open_at,
            shared.clone(),
        ));
    }
    drop(fleet);

    let before = watch.sample();
    sleep_until(sample_at).await;
    let held_at_sample = shared.held.load(Ordering::Relaxed);
    let rss_held = watch.server_memory().map(|(rss, _)| rss);
    eprintln!("hold: {held_at_sample} polls outstanding at the memory sample");
    sleep_until(end).await;
    let after = watch.sample();
    let memory_end = watch.server_memory();
    while let Some(joined) = tasks.join_next().await {
        joined.context("a held poll failed")?;
    }

    let mut stats = std::mem::take(&mut *lock(&shared.stats));
    let per_held_poll_kib = match (rss_before, rss_held) {
        (Some(before), Some(held)) if held_at_sample > 0 => Some(round1(
            (held as f64 - before as f64) / held_at_sample as f64,
        )),
        _ => None,
    };
    Ok(HoldReport {
        agents,
        wait_ms: args.wait_ms,
        seconds: args.duration_s,
        polls: stats.lateness.len() as u64,
        early_returns: stats.early,
        short_returns: stats.short,
        lateness_ms: percentiles(&mut stats.lateness),
        held_at_sample,
        server_rss_before_mib: rss_before.map(mib),
        server_rss_held_mib: rss_held.map(mib),
        per_held_poll_kib,
        server_rss_end_mib: memory_end.map(|(rss, _)| mib(rss)),
        server_hwm_mib: memory_end.map(|(_, hwm)| mib(hwm)),
        server_cpu_pct: before.server_cpu_pct(&after),
        loadgen_cpu_pct: before.own_cpu_pct(&after),
        errors: stats.errors.count,
        error_samples: stats.errors.samples,
    })
}

/// One agent's long poll, re-opened as soon as it returns, until the end.
async fn hold_poll(client: Client, open_at: Instant, shared: Arc<HoldShared>) {
    sleep_until(open_at).await;
    let mut revision = 0;
    while Instant::now() < shared.end {
        shared.held.fetch_add(1, Ordering::Relaxed);
        let sent = Instant::now();
        let answer = tokio::select! {
            answer = Box::pin(client.agent_policy(revision, shared.wait)) => Some(answer),
            // The run is over: drop the poll, and with it its socket.
            () = sleep_until(shared.end) => None,
        };
        shared.held.fetch_sub(1, Ordering::Relaxed);
        let Some(answer) = answer else { break };
        let elapsed = sent.elapsed();
        let failed = {
            let mut stats = lock(&shared.stats);
            match answer {
                // A new revision is answered at once (the first poll, from
                // revision 0, usually is): not a held poll.
                Ok(policy) if policy.revision != revision => {
                    revision = policy.revision;
                    stats.early += 1;
                    false
                }
                Ok(_) if elapsed < shared.wait => {
                    stats.short += 1;
                    false
                }
                Ok(_) => {
                    stats.lateness.push(micros(elapsed - shared.wait));
                    false
                }
                Err(err) => {
                    stats.errors.record(format!("poll: {err}"));
                    true
                }
            }
        };
        if failed {
            // Do not hammer a server that refuses or fails: retry later.
            sleep_until((Instant::now() + Duration::from_secs(1)).min(shared.end)).await;
        }
    }
}

// ---------------------------------------------------------------------------
// ingest
// ---------------------------------------------------------------------------

/// What one `ingest` worker saw.
#[derive(Default)]
struct IngestStats {
    batch: Vec<u32>,
    stored: u64,
    duplicates: u64,
    errors: Errors,
}

#[derive(Serialize)]
struct IngestReport {
    agents: usize,
    batch: usize,
    concurrency: usize,
    seconds: f64,
    messages_stored: u64,
    duplicates: u64,
    per_second: f64,
    batches: u64,
    batch_ms: Option<Percentiles>,
    errors: u64,
    error_samples: Vec<String>,
    server_cpu_pct: Option<f64>,
    server_rss_mib: Option<f64>,
    server_hwm_mib: Option<f64>,
    loadgen_cpu_pct: Option<f64>,
}

async fn ingest(args: IngestArgs, fd_limit: u64) -> Result<IngestReport> {
    ensure!(
        (1..=MAX_BATCH).contains(&args.batch),
        "--batch must be in 1..={MAX_BATCH}"
    );
    ensure!(
        (1..=args.fleet.agents).contains(&args.concurrency),
        "--concurrency must be in 1..=--agents (each worker needs agents of its own)"
    );
    ensure!(args.duration_s > 0.0, "--duration-s must be positive");
    check_fd_budget(args.concurrency, fd_limit)?;
    let watch = Watch::new(args.fleet.server_pid)?;
    let fleet = load_fleet(&args.fleet)?;
    let base = Client::new(&args.fleet.site, None, Some(args.fleet.certificate))
        .context("cannot build the HTTP client")?;
    check_job_offered(&base, &fleet[0], args.job.job).await?;
    eprintln!(
        "ingest: {} agents, {} workers posting batches of {} for {} s",
        fleet.len(),
        args.concurrency,
        args.batch,
        args.duration_s
    );

    let stored = Arc::new(AtomicU64::new(0));
    let package: Arc<str> = Arc::from(args.job.package.as_str());
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(args.duration_s);
    let before = watch.sample();
    // Agent i belongs to worker i % C alone, so its messages go out in order.
    let site = site_code(&base).await?;
    let mut workers = JoinSet::new();
    for worker in 0..args.concurrency {
        let agents: Vec<(Client, Arc<StatusSigner>)> = fleet
            .iter()
            .skip(worker)
            .step_by(args.concurrency)
            .map(|agent| {
                (
                    base.with_token(&agent.credential),
                    signer(&site, &agent.name),
                )
            })
            .collect();
        workers.spawn(ingest_worker(
            agents,
            args.job.job,
            package.clone(),
            args.batch,
            end,
            stored.clone(),
        ));
    }
    let progress = tokio::spawn(async move {
        let mut last = 0;
        loop {
            tokio::time::sleep(PROGRESS_EVERY).await;
            let now = stored.load(Ordering::Relaxed);
            eprintln!(
                "ingest: {:.0} s, {now} stored ({:.0}/s lately)",
                start.elapsed().as_secs_f64(),
                rate(now - last, PROGRESS_EVERY.as_secs_f64())
            );
            last = now;
        }
    });

    let mut total = IngestStats::default();
    while let Some(joined) = workers.join_next().await {
        let stats = joined.context("an ingest worker failed")?;
        total.batch.extend(stats.batch);
        total.stored += stats.stored;
        total.duplicates += stats.duplicates;
        total.errors.merge(stats.errors);
    }
    progress.abort();
    // The batches in flight at the deadline finish after it: count the time
    // they took too.
    let seconds = start.elapsed().as_secs_f64();
    let after = watch.sample();
    let memory = watch.server_memory();
    Ok(IngestReport {
        agents: args.fleet.agents,
        batch: args.batch,
        concurrency: args.concurrency,
        seconds: round3(seconds),
        messages_stored: total.stored,
        duplicates: total.duplicates,
        per_second: round1(rate(total.stored, seconds)),
        batches: total.batch.len() as u64,
        batch_ms: percentiles(&mut total.batch),
        errors: total.errors.count,
        error_samples: total.errors.samples,
        server_cpu_pct: before.server_cpu_pct(&after),
        server_rss_mib: memory.map(|(rss, _)| mib(rss)),
        server_hwm_mib: memory.map(|(_, hwm)| mib(hwm)),
        loadgen_cpu_pct: before.own_cpu_pct(&after),
    })
}

/// Posts batches for its agents in turn, back to back, until `end`.
async fn ingest_worker(
    agents: Vec<(Client, Arc<StatusSigner>)>,
    job: u64,
    package: Arc<str>,
    batch: usize,
    end: Instant,
    stored: Arc<AtomicU64>,
) -> IngestStats {
    let mut stats = IngestStats::default();
    // Where the site stands for each agent: messages continue from there
    // without gaps, as an agent's outbox numbers them.
    let mut bases = Vec::with_capacity(agents.len());
    for (agent, _) in &agents {
        bases.push(high_water(agent).await.unwrap_or_else(|err| {
            stats.errors.record(format!("status: {err}"));
            0
        }));
    }
    // Messages stored so far, per agent.
    let mut sent = vec![0u64; agents.len()];
    for turn in (0..agents.len()).cycle() {
        if Instant::now() >= end {
            break;
        }
        let at_ms = unix_ms();
        let messages = (1..=batch as u64)
            .map(|i| {
                let n = sent[turn] + i;
                let mut message = StatusMessage {
                    seq: bases[turn] + n,
                    at_ms,
                    body: downloading(job, &package, n),
                    signature: None,
                };
                agents[turn].1.sign(&mut message);
                message
            })
            .collect();
        let started = Instant::now();
        match agents[turn].0.post_status(&StatusBatch { messages }).await {
            Ok(ack) => {
                sent[turn] += batch as u64;
                stats.batch.push(micros(started.elapsed()));
                stats.stored += ack.stored;
                stats.duplicates += ack.duplicates;
                stored.fetch_add(ack.stored, Ordering::Relaxed);
            }
            Err(err) => stats.errors.record(format!("status: {err}")),
        }
    }
    stats
}

// ---------------------------------------------------------------------------
// Shared helpers: statistics, errors, /proc sampling, limits.
// ---------------------------------------------------------------------------

/// Latency percentiles in milliseconds (nearest rank).
#[derive(Serialize)]
struct Percentiles {
    count: usize,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

/// Percentiles of samples in µs; none without samples.
fn percentiles(samples: &mut [u32]) -> Option<Percentiles> {
    samples.sort_unstable();
    let max = *samples.last()?;
    let at = |quantile: f64| {
        let rank = (quantile * samples.len() as f64).ceil() as usize;
        ms(samples[rank.clamp(1, samples.len()) - 1])
    };
    Some(Percentiles {
        count: samples.len(),
        p50: at(0.50),
        p90: at(0.90),
        p99: at(0.99),
        max: ms(max),
    })
}

/// Counts errors and keeps the first few distinct messages.
#[derive(Default)]
struct Errors {
    count: u64,
    samples: Vec<String>,
}

impl Errors {
    fn record(&mut self, message: String) {
        self.count += 1;
        if self.samples.len() < ERROR_SAMPLES && !self.samples.contains(&message) {
            self.samples.push(message);
        }
    }

    fn merge(&mut self, other: Errors) {
        self.count += other.count;
        for message in other.samples {
            if self.samples.len() < ERROR_SAMPLES && !self.samples.contains(&message) {
                self.samples.push(message);
            }
        }
    }
}

/// Which processes' CPU time and memory to sample.
struct Watch {
    server_pid: Option<u32>,
    ticks_per_s: f64,
}

/// CPU time (clock ticks) of the server and of this process at one moment.
struct CpuSample {
    at: std::time::Instant,
    server: Option<u64>,
    own: Option<u64>,
    ticks_per_s: f64,
}

impl Watch {
    /// Checks that the server's process can be read, if one is given.
    fn new(server_pid: Option<u32>) -> Result<Watch> {
        if let Some(pid) = server_pid {
            procfs::cpu_ticks(&pid.to_string())
                .with_context(|| format!("cannot sample the server process {pid}"))?;
        }
        Ok(Watch {
            server_pid,
            ticks_per_s: procfs::ticks_per_second() as f64,
        })
    }

    fn sample(&self) -> CpuSample {
        CpuSample {
            at: std::time::Instant::now(),
            server: self
                .server_pid
                .and_then(|pid| procfs::cpu_ticks(&pid.to_string()).ok()),
            own: procfs::cpu_ticks("self").ok(),
            ticks_per_s: self.ticks_per_s,
        }
    }

    /// The server's resident set and its peak, in KiB.
    fn server_memory(&self) -> Option<(u64, u64)> {
        let pid = self.server_pid?;
        match procfs::memory_kib(&pid.to_string()) {
            Ok(memory) => Some(memory),
            Err(err) => {
                eprintln!("warning: {err:#}");
                None
            }
        }
    }
}

impl CpuSample {
    /// The server's CPU use from this sample to `later`, in % of one core.
    fn server_cpu_pct(&self, later: &CpuSample) -> Option<f64> {
        self.pct(self.server?, later.server?, later)
    }

    /// This process's CPU use from this sample to `later`, in % of one core.
    fn own_cpu_pct(&self, later: &CpuSample) -> Option<f64> {
        self.pct(self.own?, later.own?, later)
    }

    fn pct(&self, ticks: u64, later_ticks: u64, later: &CpuSample) -> Option<f64> {
        let wall = later.at.duration_since(self.at).as_secs_f64();
        (wall > 0.0).then(|| {
            round1(later_ticks.saturating_sub(ticks) as f64 / self.ticks_per_s / wall * 100.0)
        })
    }
}

/// Raises the soft limit on open files to the hard limit and returns it.
fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit for getrlimit to fill and setrlimit
    // to read.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    limit.rlim_cur
}

/// Refuses to open `sockets` sockets when the descriptor limit is too low.
fn check_fd_budget(sockets: usize, fd_limit: u64) -> Result<()> {
    // Room for stdio, the runtime's own descriptors and /proc reads.
    const SPARE: u64 = 64;
    ensure!(
        sockets as u64 + SPARE <= fd_limit,
        "{sockets} sockets would not fit the file descriptor limit of {fd_limit}"
    );
    Ok(())
}

/// A lock that survives another thread's panic (the figures stay usable).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as i64)
}

/// A duration in µs, saturated to fit a u32 (71 minutes).
fn micros(duration: Duration) -> u32 {
    u32::try_from(duration.as_micros()).unwrap_or(u32::MAX)
}

fn ms(micros: u32) -> f64 {
    round3(f64::from(micros) / 1000.0)
}

fn mib(kib: u64) -> f64 {
    round1(kib as f64 / 1024.0)
}

fn rate(count: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

fn round1(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}
