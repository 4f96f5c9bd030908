//! Rows 5–7: many simulated agents against one site server (the load
//! generator `cascade-loadgen`, speaking the agent protocol over HTTP), the
//! status messages one site ingests per second, and a real idle agent's
//! footprint.

use crate::fleet::{self, Fleet, Site};
use crate::report::{secs, Row};
use crate::{say, Plan};
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// p99 poll latency an agent count must hold to count as sustained.
const P99_TARGET_MS: f64 = 50.0;
/// The agents' poll interval.
const INTERVAL_MS: u64 = 60_000;

struct Loadgen {
    bin: PathBuf,
    site: String,
    /// The site's certificate fingerprint, which the simulated agents pin.
    certificate: String,
    state: PathBuf,
    server_pid: u32,
}

impl Loadgen {
    /// Runs `cascade-loadgen SUBCOMMAND ARGS`; returns its JSON summary.
    fn run(&self, subcommand: &str, args: &[String]) -> Result<Value> {
        let out = Command::new(&self.bin)
            .arg(subcommand)
            .args(["--site", &self.site])
            .args(["--certificate", &self.certificate])
            .arg("--state")
            .arg(&self.state)
            .args(args)
            .stderr(std::process::Stdio::inherit())
            .output()
            .with_context(|| format!("running cascade-loadgen {subcommand}"))?;
        if !out.status.success() {
            bail!("cascade-loadgen {subcommand} failed: {}", out.status);
        }
        serde_json::from_slice(&out.stdout)
            .with_context(|| format!("cascade-loadgen {subcommand} printed no JSON"))
    }

    fn server(&self) -> [String; 2] {
        ["--server-pid".into(), self.server_pid.to_string()]
    }
}

fn f(value: &Value) -> f64 {
    value.as_f64().unwrap_or(f64::NAN)
}

/// Rows 5, 6 and 7 (those `wanted`).
pub async fn rows(fleet: &Fleet, plan: &Plan, wanted: &dyn Fn(&str) -> bool) -> Result<Vec<Row>> {
    let site = fleet.site("CEN", None)?;
    let mut rows = Vec::new();
    if wanted("5") || wanted("6") {
        if let Err(err) = agent_rows(fleet, &site, plan, wanted, &mut rows) {
            if wanted("5") && !rows.iter().any(|row| row.number == "5") {
                rows.push(crate::failed(
                    "5",
                    "simulated agents one site server sustains",
                    err,
                ));
            } else {
                rows.push(crate::failed(
                    "6",
                    "status messages ingested per second",
                    err,
                ));
            }
        }
    }
    if wanted("7") {
        let row = row_idle(fleet, &site, plan).await;
        rows.push(row.unwrap_or_else(|err| crate::failed("7", "idle agent", err)));
    }
    Ok(rows)
}

/// Rows 5 and 6 (those `wanted`), pushed onto `rows` as they are measured.
fn agent_rows(
    fleet: &Fleet,
    site: &Site,
    plan: &Plan,
    wanted: &dyn Fn(&str) -> bool,
    rows: &mut Vec<Row>,
) -> Result<()> {
    {
        let loadgen = Loadgen {
            bin: fleet::sibling("cascade-loadgen")?,
            site: site.url.clone(),
            certificate: site
                .client
                .pin()
                .context("the site's admin token pins no certificate")?
                .to_string(),
            state: fleet.root.join("agents.jsonl"),
            server_pid: site.process.pid(),
        };
        let most = *plan.agent_steps.iter().max().context("no agent steps")?;
        say(&format!("rows 5–6: enrolling {most} simulated agents"));
        let enrolled = loadgen.run(
            "enroll",
            &[
                "--join-token".into(),
                site.join_token.clone(),
                "--agents".into(),
                most.to_string(),
                "--prefix".into(),
                "sim".into(),
            ],
        )?;
        let job = bench_job(fleet, site)?;
        if wanted("5") {
            rows.push(row_agents(&loadgen, plan, &job, &enrolled)?);
        }
        if wanted("6") {
            rows.push(row_ingest_status(&loadgen, plan, &job, most)?);
        }
    }
    Ok(())
}

/// A small package and a job that targets every simulated agent, so that
/// their status reports are about a job they really have.
fn bench_job(fleet: &Fleet, site: &Site) -> Result<(u64, String)> {
    let source = fleet.root.join("tiny");
    std::fs::create_dir_all(&source)?;
    std::fs::write(source.join("install.sh"), "true\n")?;
    site.run(
        fleet,
        &[
            "package",
            "create",
            "tiny",
            "--source",
            fleet::path_str(&source)?,
        ],
    )?;
    site.run(
        fleet,
        &["collection", "create", "load", "--rule", "tag.bench = load"],
    )?;
    let out: Value = serde_json::from_slice(&site.run(
        fleet,
        &[
            "-o",
            "json",
            "job",
            "create",
            "--package",
            "tiny",
            "--collection",
            "load",
            "--command",
            "true",
        ],
    )?)?;
    let id = out["id"].as_u64().context("job create printed no id")?;
    Ok((id, "tiny".to_owned()))
}

/// Row 5: the largest agent count whose polls hold p99 < 50 ms.
fn row_agents(
    loadgen: &Loadgen,
    plan: &Plan,
    job: &(u64, String),
    enrolled: &Value,
) -> Result<Row> {
    let (sign_us, verify_us) = signature_cost();
    let mut details = vec![
        format!(
            "Enrolling the simulated agents (each its own credential, through `POST \
             /api/v1/agents/enroll`): {} agents/s.",
            f(&enrolled["per_second"]).round()
        ),
        format!(
            "What TLS and signing cost: every poll and report crosses TLS (the simulated agents \
             pin the site's certificate, as real ones do; Cascade serves nothing over plain \
             HTTP), and every status message is signed by its agent (ed25519) and verified by \
             the site before it is stored. On this machine signing one message takes {sign_us:.1} \
             µs and verifying it {verify_us:.1} µs of one core ({:.0} verifications per second \
             per core), measured in this run.",
            1e6 / verify_us
        ),
        format!(
            "Each step: every agent polls its policy (`GET /api/v1/agent/policy`, wait 0) once \
             per 60 s ± 10% and then posts a status report about the job that targets it; \
             latency is timed from when the agent meant to poll. Figures are taken over {} s \
             after {} s of warm-up.",
            plan.step_seconds, plan.warmup_seconds
        ),
    ];
    let mut sustained: Option<Value> = None;
    let mut first_miss: Option<Value> = None;
    for &agents in &plan.agent_steps {
        say(&format!("row 5: {agents} agents polling every 60 s ± 10%"));
        let mut args = vec![
            "--agents".into(),
            agents.to_string(),
            "--job".into(),
            job.0.to_string(),
            "--package".into(),
            job.1.clone(),
            "--interval-ms".into(),
            INTERVAL_MS.to_string(),
            "--jitter".into(),
            "0.1".into(),
            "--duration-s".into(),
            plan.step_seconds.to_string(),
            "--warmup-s".into(),
            plan.warmup_seconds.to_string(),
        ];
        args.extend(loadgen.server());
        let step = loadgen.run("poll", &args)?;
        details.push(format!(
            "{agents} agents: {:.0} polls/s and {:.0} status messages/s; poll p50 {:.1} ms, p99 \
             {:.1} ms, max {:.1} ms (request alone: p99 {:.1} ms); status report p50 {:.1} ms, \
             p99 {:.1} ms; {} errors; server {:.0}% of a core, {:.0} MiB resident; load \
             generator {:.0}% of a core.",
            f(&step["polls_per_s"]),
            f(&step["status_per_s"]),
            f(&step["poll_ms"]["p50"]),
            f(&step["poll_ms"]["p99"]),
            f(&step["poll_ms"]["max"]),
            f(&step["poll_request_ms"]["p99"]),
            f(&step["status_ms"]["p50"]),
            f(&step["status_ms"]["p99"]),
            step["errors"],
            f(&step["server_cpu_pct"]),
            f(&step["server_rss_mib"]),
            f(&step["loadgen_cpu_pct"]),
        ));
        let held = f(&step["poll_ms"]["p99"]) < P99_TARGET_MS && step["errors"].as_u64() == Some(0);
        if held {
            sustained = Some(step);
        } else {
            first_miss = Some(step);
            break;
        }
    }
    // The real agent holds its poll open: the cost of that, measured with as
    // many held polls as this machine's file descriptor limit allows.
    let hold_agents = (*plan.agent_steps.iter().min().unwrap_or(&1000)).min(8000);
    say(&format!(
        "row 5: {hold_agents} agents holding their poll open"
    ));
    let mut args = vec![
        "--agents".into(),
        hold_agents.to_string(),
        "--wait-ms".into(),
        if plan.quick { "2000" } else { "20000" }.into(),
        "--duration-s".into(),
        if plan.quick { "4" } else { "45" }.into(),
    ];
    args.extend(loadgen.server());
    match loadgen.run("hold", &args) {
        Ok(hold) => details.push(format!(
            "Held polls, as the real agent holds them ({hold_agents} agents, a socket each, \
             {} ms wait): the server's memory grew from {:.0} MiB to {:.0} MiB with {} polls \
             held, {:.1} KiB per held poll ({:.1} GiB for 150,000); polls returned {:.1} ms \
             (p50) and {:.1} ms (p99) after their wait; {} errors. The figure includes each \
             connection's TLS state (the last run over plain HTTP, before TLS, measured 81 KiB \
             per held poll). This machine allows 20,000 \
             open files per process, so 150,000 held polls cannot be tried here.",
            hold["wait_ms"],
            f(&hold["server_rss_before_mib"]),
            f(&hold["server_rss_held_mib"]),
            hold["held_at_sample"],
            f(&hold["per_held_poll_kib"]),
            f(&hold["per_held_poll_kib"]) * 150_000.0 / 1024.0 / 1024.0,
            f(&hold["lateness_ms"]["p50"]),
            f(&hold["lateness_ms"]["p99"]),
            hold["errors"],
        )),
        Err(err) => details.push(format!("Held polls: not measured ({err:#}).")),
    }
    let best = sustained
        .as_ref()
        .map_or(0, |step| step["agents"].as_u64().unwrap_or(0));
    let tried_beyond = first_miss.is_some();
    let largest = *plan.agent_steps.iter().max().unwrap_or(&0);
    Ok(Row {
        number: "5",
        measure: "simulated agents one site server sustains (60 s poll ± 10%, status reports, p99 poll < 50 ms)".into(),
        cascade: if best == 0 {
            format!("fewer than {}", plan.agent_steps[0])
        } else if !tried_beyond && best == largest {
            format!("≥ {best} (the most tried)")
        } else {
            format!("{best}")
        },
        peer: "—".into(),
        ratio: sustained.as_ref().map_or("—".into(), |step| {
            format!("p99 {:.1} ms at {best}", f(&step["poll_ms"]["p99"]))
        }),
        target: "≥ 150,000".into(),
        met: Some(best >= 150_000),
        details,
    })
}

/// Microseconds one status signature takes to make and to verify, on one
/// core (the work every agent and the site do per message).
fn signature_cost() -> (f64, f64) {
    use cascade_protocol::status_signing::{verify_status, StatusSigner};
    const ROUNDS: u32 = 2_000;
    let key = cascade_content::SigningKey::from_bytes(&[7u8; 32]);
    let public = key.verifying_key();
    let signer = StatusSigner::new("CEN/agent/sim-000000".into(), key);
    let mut message = cascade_protocol::StatusMessage {
        seq: 1,
        at_ms: 0,
        body: cascade_protocol::StatusBody::JobDownloading {
            job: 1,
            package: "big".into(),
            bytes_done: 1,
            bytes_total: 2,
        },
        signature: None,
    };
    let started = Instant::now();
    for seq in 1..=ROUNDS {
        message.seq = seq as u64;
        signer.sign(&mut message);
    }
    let sign = started.elapsed().as_secs_f64() * 1e6 / ROUNDS as f64;
    let started = Instant::now();
    for _ in 0..ROUNDS {
        verify_status("CEN/agent/sim-000000", &message, &public).expect("own signature");
    }
    let verify = started.elapsed().as_secs_f64() * 1e6 / ROUNDS as f64;
    (sign, verify)
}

/// Row 6: status messages stored durably per second.
fn row_ingest_status(
    loadgen: &Loadgen,
    plan: &Plan,
    job: &(u64, String),
    agents: u64,
) -> Result<Row> {
    let mut details = Vec::new();
    let mut headline = 0.0f64;
    for (batch, concurrency) in [(1u64, 256u64), (10, 64), (100, 16)] {
        say(&format!(
            "row 6: batches of {batch} from {concurrency} senders"
        ));
        let mut args = vec![
            "--agents".into(),
            agents.min(20_000).to_string(),
            "--job".into(),
            job.0.to_string(),
            "--package".into(),
            job.1.clone(),
            "--batch".into(),
            batch.to_string(),
            "--concurrency".into(),
            concurrency.to_string(),
            "--duration-s".into(),
            plan.ingest_seconds.to_string(),
        ];
        args.extend(loadgen.server());
        let run = loadgen.run("ingest", &args)?;
        let per_second = f(&run["per_second"]);
        if batch == 10 {
            headline = per_second;
        }
        details.push(format!(
            "Batches of {batch} message(s) from {concurrency} concurrent agents: {per_second:.0} \
             messages/s stored; batch p50 {:.1} ms, p99 {:.1} ms; {} errors; server {:.0}% of a \
             core, {:.0} MiB resident.",
            f(&run["batch_ms"]["p50"]),
            f(&run["batch_ms"]["p99"]),
            run["errors"],
            f(&run["server_cpu_pct"]),
            f(&run["server_rss_mib"]),
        ));
    }
    details.push(
        "Every message is committed to the site's SQLite database (WAL, synchronous=FULL) before \
         its batch is acknowledged. The headline is batches of 10: an agent's outbox sends what \
         it has gathered since its last delivery."
            .into(),
    );
    Ok(Row {
        number: "6",
        measure: "status messages ingested durably per second at one site".into(),
        cascade: format!("{headline:.0} /s"),
        peer: "—".into(),
        ratio: "—".into(),
        target: "≥ 20,000 /s".into(),
        met: Some(headline >= 20_000.0),
        details,
    })
}

/// What one idle agent process used while watched.
struct Idle {
    cpu: Duration,
    rss_kib: u64,
    status: String,
}

impl Idle {
    fn field(&self, name: &str) -> String {
        self.status
            .lines()
            .find(|line| line.starts_with(name))
            .map_or(String::new(), |line| {
                line.split_whitespace()
                    .skip(1)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
    }
}

/// Row 7: real agents, idle, at their site: the workstation binary
/// `cascade-agent` (the figure) and `cascade agent run` (for comparison),
/// watched side by side.
async fn row_idle(fleet: &Fleet, site: &Site, plan: &Plan) -> Result<Row> {
    say("row 7: idle agents");
    let lean = fleet::sibling("cascade-agent")?;
    let mut agents = [
        fleet.agent(site, "idle", &lean, &[])?,
        fleet.agent(site, "idle-cli", &fleet.bin, &["agent", "run"])?,
    ];
    tokio::time::sleep(Duration::from_secs(if plan.quick { 2 } else { 10 })).await;
    let mut before = Vec::new();
    for agent in &mut agents {
        agent.check_running()?;
        before.push(fleet::cpu_time(agent.pid())?);
    }
    let window = Duration::from_secs(plan.idle_seconds);
    tokio::time::sleep(window).await;
    let mut watched = Vec::new();
    for (agent, before) in agents.iter_mut().zip(before) {
        agent.check_running()?;
        let pid = agent.pid();
        watched.push(Idle {
            cpu: fleet::cpu_time(pid)? - before,
            rss_kib: fleet::rss_kib(pid)?,
            status: std::fs::read_to_string(format!("/proc/{pid}/status"))?,
        });
    }
    let share = |idle: &Idle| idle.cpu.as_secs_f64() / window.as_secs_f64() * 100.0;
    let describe = |what: &str, idle: &Idle| {
        format!(
            "{what}, enrolled and holding its policy poll open, watched for {}: {} of CPU ({:.2}% of a core); VmRSS {}, of which anonymous {} and file-backed {} (pages of the binary and libraries); {} threads.",
            secs(window),
            secs(idle.cpu),
            share(idle),
            idle.field("VmRSS:"),
            idle.field("RssAnon:"),
            idle.field("RssFile:"),
            idle.field("Threads:"),
        )
    };
    let lean = &watched[0];
    Ok(Row {
        number: "7",
        measure: "agent resident memory and CPU when idle".into(),
        cascade: format!(
            "{:.1} MiB, {:.2}% CPU",
            lean.rss_kib as f64 / 1024.0,
            share(lean)
        ),
        peer: "—".into(),
        ratio: "—".into(),
        target: "≤ 10 MiB, ~0%".into(),
        met: Some(lean.rss_kib <= 10 * 1024 && share(lean) < 0.5),
        details: vec![
            describe("`cascade-agent` (the workstation binary)", lean),
            describe(
                "For comparison, `cascade agent run` (the all-in-one binary)",
                &watched[1],
            ),
        ],
    })
}
