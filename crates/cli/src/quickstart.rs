//! `cascade quickstart`: a three-level hierarchy in a temporary directory —
//! central site CEN, primaries P01 and P02 under it, secondary S01 under
//! P01 — with a DP and three workstation agents at every site, each a
//! separate process; a sample package ingested at CEN and one mandatory job
//! to every workstation, with live status by site and the final per-site,
//! per-workstation and per-DP tables.

use crate::ingest;
use crate::output::{self, Output};
use anyhow::{bail, Context, Result};
use cascade_protocol::{
    CollectionRequest, JobOutcome, JobRequest, SiteKind, VersionIntent, WorkstationState,
};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

/// The hierarchy: (code, kind, parent).
const SITES: [(&str, SiteKind, Option<&str>); 4] = [
    ("CEN", SiteKind::Central, None),
    ("P01", SiteKind::Primary, Some("CEN")),
    ("P02", SiteKind::Primary, Some("CEN")),
    ("S01", SiteKind::Secondary, Some("P01")),
];

/// Workstations the quickstart starts at each site.
const AGENTS_PER_SITE: usize = 3;

/// How long the job may take before the quickstart gives up.
const JOB_TIMEOUT: Duration = Duration::from_secs(180);

/// Options of `cascade quickstart`.
#[derive(clap::Args)]
pub struct QuickstartArgs {
    /// Leave every process running and print how to use the CLI against
    /// them; stop with Ctrl-C.
    #[arg(long)]
    keep_running: bool,
    /// Use this directory instead of a temporary one (kept afterwards).
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// The child processes, stopped (SIGTERM, then SIGKILL) when dropped.
struct Children(Vec<(String, Child)>);

impl Children {
    fn spawn(&mut self, name: &str, args: &[&str], logs: &Path) -> Result<()> {
        let log = std::fs::File::create(logs.join(format!("{name}.log")))
            .with_context(|| format!("creating the log of {name}"))?;
        let child = Command::new(std::env::current_exe().context("finding the cascade binary")?)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        self.0.push((name.to_owned(), child));
        Ok(())
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            // SAFETY: kill(2) on a child we started and have not yet reaped.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for (_, child) in &mut self.0 {
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits for a process to write its URL file.
async fn wait_for_url(path: &Path, children: &mut Children) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if !text.trim().is_empty() {
                return Ok(text.trim().to_owned());
            }
        }
        for (name, child) in &mut children.0 {
            if let Ok(Some(status)) = child.try_wait() {
                bail!("{name} exited early ({status}); see its log");
            }
        }
        if Instant::now() > deadline {
            bail!("{} did not appear within 30 s", path.display());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Writes the sample package: a script, configuration, documents and one
/// larger binary.
fn write_sample(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir.join("bin"))?;
    std::fs::create_dir_all(dir.join("docs"))?;
    std::fs::write(
        dir.join("install.sh"),
        "#!/bin/sh\n# Installs the sample tool into the job's directory.\nset -e\nprefix=\"${PREFIX:-$PWD/installed}\"\nmkdir -p \"$prefix\"\ncp bin/tool tool.conf \"$prefix/\"\necho \"installed on $CASCADE_AGENT\"\n",
    )?;
    std::fs::set_permissions(
        dir.join("install.sh"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    std::fs::write(dir.join("tool.conf"), "level = 3\nserver = cascade\n")?;
    for i in 0..20 {
        std::fs::write(
            dir.join("docs").join(format!("chapter-{i:02}.txt")),
            format!(
                "Chapter {i}\n{}",
                "Cascade carries content down the tree. ".repeat(200 + i * 10)
            ),
        )?;
    }
    // 8 MiB of pseudo-random bytes (xorshift), incompressible like a real binary.
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut data = Vec::with_capacity(8 << 20);
    while data.len() < 8 << 20 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        data.extend_from_slice(&state.to_le_bytes());
    }
    std::fs::write(dir.join("bin").join("tool"), data)?;
    Ok(())
}

/// A site the quickstart started.
struct Started {
    code: &'static str,
    url: String,
    admin_token: String,
    join_token: String,
    dp_join_token: String,
    site_join_token: String,
}

/// Runs the quickstart; exit 0 when the job is complete everywhere.
pub async fn run(args: QuickstartArgs, out: Output) -> Result<ExitCode> {
    let temp;
    let root = match &args.dir {
        Some(dir) => dir.clone(),
        None => {
            temp = tempfile::Builder::new()
                .prefix("cascade-quickstart-")
                .tempdir()?;
            temp.path().to_owned()
        }
    };
    let logs = root.join("logs");
    std::fs::create_dir_all(&logs)?;
    let say = |text: &str| {
        if !out.json {
            outln!("{text}");
        }
    };
    say(&format!("quickstart in {}", root.display()));

    let mut children = Children(Vec::new());
    let mut sites: Vec<Started> = Vec::new();
    for (code, kind, parent) in SITES {
        let dir = root.join(code.to_lowercase());
        let join = match parent {
            None => None,
            Some(parent) => {
                let parent = sites
                    .iter()
                    .find(|site| site.code == parent)
                    .context("a parent starts before its children")?;
                Some(cascade_site::Join {
                    kind,
                    parent_url: parent.url.clone(),
                    join_token: parent.site_join_token.clone(),
                    central_key: None,
                    max_rate: None,
                    replace: false,
                })
            }
        };
        let report = cascade_site::init(&dir, code, join.as_ref(), None)
            .await
            .with_context(|| format!("creating site {code}"))?;
        children.spawn(
            code,
            &["site", "run", path_str(&dir)?, "--listen", "127.0.0.1:0"],
            &logs,
        )?;
        let url = wait_for_url(&dir.join(cascade_site::layout::URL), &mut children).await?;
        say(&format!(
            "site {code} ({kind}{}) listening on {url}",
            parent.map_or(String::new(), |parent| format!(" under {parent}"))
        ));
        sites.push(Started {
            code,
            url,
            admin_token: report.admin_token,
            join_token: report.join_token,
            dp_join_token: report.dp_join_token,
            site_join_token: report.site_join_token,
        });
    }

    for site in &sites {
        let dp = format!("{}-dp1", site.code.to_lowercase());
        let dir = root.join(&dp);
        cascade_dp::init(
            &dir,
            &site.url,
            &site.dp_join_token,
            "dp1",
            "127.0.0.1:0",
            None,
        )
        .await?;
        children.spawn(&dp, &["dp", "run", path_str(&dir)?], &logs)?;
        let dp_url = wait_for_url(&dir.join(cascade_dp::layout::URL), &mut children).await?;
        // Admitted by the administrator, at the URL it serves on.
        cascade_protocol::client_presenting(&site.url, &site.admin_token)?
            .approve_dp("dp1", Some(&dp_url))
            .await?;
        for i in 1..=AGENTS_PER_SITE {
            let name = format!("{}-ws{i}", site.code.to_lowercase());
            let dir = root.join(&name);
            cascade_agent::init(
                &dir,
                &site.url,
                &site.join_token,
                &name,
                &["fleet=demo".to_owned()],
                Default::default(),
            )
            .await?;
            children.spawn(&name, &["agent", "run", path_str(&dir)?], &logs)?;
        }
    }
    let workstations = sites.len() * AGENTS_PER_SITE;
    say(&format!(
        "a DP and {AGENTS_PER_SITE} agents at each site: {} DPs, {workstations} workstations",
        sites.len()
    ));

    let central = &sites[0];
    let sample = root.join("sample");
    write_sample(&sample)?;
    let client = cascade_protocol::client_presenting(&central.url, &central.admin_token)?;
    let report = ingest::ingest(
        &client,
        "sample",
        &sample,
        VersionIntent::Create,
        ingest::VersionOptions::default(),
        !out.json,
    )
    .await?;
    say(&format!(
        "ingested package sample v{} at CEN: {} files, {}",
        report.version.version,
        report.version.file_count,
        output::bytes(report.version.total_size)
    ));
    client
        .create_collection(&CollectionRequest {
            name: "all".into(),
            machines: Vec::new(),
            rule: Some("tag.fleet = demo".into()),
            allow_unknown: false,
        })
        .await?;
    let job = client
        .create_job(&JobRequest {
            package: "sample".into(),
            version: None,
            collection: "all".into(),
            command: "sh install.sh".into(),
            offer_at_ms: None,
            expires_at_ms: None,
            optional: false,
            retries: 1,
            retry_delay_ms: 2000,
            timeout_ms: Some(120_000),
            success_codes: Vec::new(),
            dp_group: None,
            check: None,
            reboot_codes: Vec::new(),
            any_time: false,
            remove: false,
            rerun: None,
        })
        .await?;
    say(&format!(
        "job {}: sh install.sh on collection all (rule: tag.fleet = demo), at every site:",
        job.offer.id
    ));
    let status = output::watch_job(&client, job.offer.id, JOB_TIMEOUT, !out.json).await?;
    out.job_status(&status);
    let complete = status
        .counts
        .get(&WorkstationState::Complete)
        .copied()
        .unwrap_or(0);
    let ok = status.outcome == JobOutcome::Complete && complete == workstations as u64;
    if !ok {
        errln!(
            "error: the job is {} after {} s ({complete} of {workstations} workstations complete); logs are in {}",
            status.outcome.as_str().replace('_', " "),
            JOB_TIMEOUT.as_secs(),
            logs.display()
        );
    }
    if args.keep_running {
        // On stderr, so that `-o json` keeps stdout to one JSON document.
        errln!();
        errln!("everything keeps running; in another shell, at the central site:");
        errln!("  export CASCADE_SERVER={}", central.url);
        errln!("  export CASCADE_TOKEN={}", central.admin_token);
        errln!("  cascade job status 1 --watch");
        errln!("  cascade site list");
        errln!("  cascade site queues");
        errln!("  cascade package status sample");
        errln!(
            "  cascade package update sample --source {}",
            sample.display()
        );
        errln!("the other sites (their own view of their subtree):");
        for site in &sites[1..] {
            errln!(
                "  {}: CASCADE_SERVER={} CASCADE_TOKEN={}",
                site.code,
                site.url,
                site.admin_token
            );
        }
        errln!("logs: {}   stop with Ctrl-C", logs.display());
        cascade_protocol::signal::shutdown_signal().await;
    }
    drop(children);
    if args.dir.is_none() && args.keep_running {
        say("stopped; the temporary directory is removed");
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn path_str(path: &Path) -> Result<&str> {
    path.to_str()
        .with_context(|| format!("{} is not valid UTF-8", path.display()))
}
