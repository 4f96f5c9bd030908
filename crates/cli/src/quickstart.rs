//! `cascade quickstart`: a site server, two DPs and ten agents as separate
//! processes in a temporary directory, a sample package ingested and
//! distributed, a mandatory job to all ten workstations, live progress and
//! the final per-DP and per-workstation tables.

use crate::ingest;
use crate::output::{self, Output};
use anyhow::{bail, Context, Result};
use cascade_protocol::{Client, CollectionRequest, DistributeRequest, JobRequest, VersionIntent};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

/// Workstations the quickstart starts.
const AGENTS: usize = 10;

/// Options of `cascade quickstart`.
#[derive(clap::Args)]
pub struct QuickstartArgs {
    /// Leave the site and DPs running and print how to use the CLI against
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

/// Runs the quickstart; exit 0 when every DP holds the sample package.
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
            println!("{text}");
        }
    };
    say(&format!("quickstart in {}", root.display()));

    let site_dir = root.join("site");
    let site = cascade_site::init(&site_dir, "CEN", None).await?;
    let mut children = Children(Vec::new());
    children.spawn(
        "site",
        &[
            "site",
            "run",
            path_str(&site_dir)?,
            "--listen",
            "127.0.0.1:0",
        ],
        &logs,
    )?;
    let site_url = wait_for_url(&site_dir.join(cascade_site::layout::URL), &mut children).await?;
    say(&format!("site CEN listening on {site_url}"));

    for name in ["dp1", "dp2"] {
        let dir = root.join(name);
        cascade_dp::init(&dir, &site_url, &site.join_token, name, "127.0.0.1:0").await?;
        children.spawn(name, &["dp", "run", path_str(&dir)?], &logs)?;
        let url = wait_for_url(&dir.join(cascade_dp::layout::URL), &mut children).await?;
        say(&format!("dp {name} enrolled, serving on {url}"));
    }

    let sample = root.join("sample");
    write_sample(&sample)?;
    let client = Client::new(&site_url, Some(&site.admin_token))?;
    let report =
        ingest::ingest(&client, "sample", &sample, VersionIntent::Create, !out.json).await?;
    say(&format!(
        "ingested package sample v{}: {} files, {}",
        report.version.version,
        report.version.file_count,
        output::bytes(report.version.total_size)
    ));
    client
        .distribute(
            "sample",
            &DistributeRequest {
                dps: Vec::new(),
                all_dps: true,
                dp_group: None,
            },
        )
        .await?;
    say("distributing to all dps:");
    let status =
        output::watch_package(&client, "sample", Duration::from_secs(120), !out.json).await?;
    if !out.json {
        out.package_status(&status);
    }
    let distributed = output::all_installed(&status);
    if !distributed {
        eprintln!(
            "error: not every dp holds the package after 120 s; logs are in {}",
            logs.display()
        );
    }

    // Ten workstations, each its own agent process, and one mandatory job.
    for i in 1..=AGENTS {
        let name = format!("ws{i:02}");
        let dir = root.join(&name);
        let role = if i % 2 == 0 {
            "role=kiosk"
        } else {
            "role=office"
        };
        cascade_agent::init(&dir, &site_url, &site.join_token, &name, &[role.to_owned()]).await?;
        children.spawn(&name, &["agent", "run", path_str(&dir)?], &logs)?;
    }
    say(&format!("{AGENTS} agents enrolled and running"));
    client
        .create_collection(&CollectionRequest {
            name: "all".into(),
            machines: Vec::new(),
            rule: Some("site = CEN".into()),
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
        })
        .await?;
    say(&format!(
        "job {}: sh install.sh on collection all (rule: site = CEN):",
        job.offer.id
    ));
    let job_status =
        output::watch_job(&client, job.offer.id, Duration::from_secs(120), !out.json).await?;
    out.job_status(&job_status);
    let complete = job_status.counts.get("complete").copied().unwrap_or(0);
    let ran = complete == AGENTS as u64 && job_status.workstations.len() == AGENTS;
    if !ran {
        eprintln!(
            "error: {complete} of {AGENTS} workstations completed the job; logs are in {}",
            logs.display()
        );
    }
    let ok = distributed && ran;
    if args.keep_running {
        // On stderr, so that `-o json` keeps stdout to one JSON document.
        eprintln!();
        eprintln!("everything keeps running; in another shell:");
        eprintln!("  export CASCADE_SERVER={site_url}");
        eprintln!("  export CASCADE_TOKEN={}", site.admin_token);
        eprintln!("  cascade package status sample");
        eprintln!("  cascade job status 1 --watch");
        eprintln!("  cascade agent list");
        eprintln!("  cascade dp list");
        eprintln!(
            "  cascade package update sample --source {}",
            sample.display()
        );
        eprintln!("logs: {}   stop with Ctrl-C", logs.display());
        crate::shutdown_signal().await;
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
