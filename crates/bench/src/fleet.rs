//! Real Cascade processes for the benchmarks: site servers, DPs and agents
//! started from the `cascade` binary beside this one, talking HTTP on
//! loopback exactly as they would across machines.

use anyhow::{bail, Context, Result};
use cascade_protocol::{Client, PackageStatus};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A binary built beside this one (`cascade`, `cascade-loadgen`).
pub fn sibling(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the bench binary")?;
    let path = exe.with_file_name(name);
    if !path.is_file() {
        bail!(
            "{} not found: build it first (`cargo build --release --bins`, or run bench/run)",
            path.display()
        );
    }
    Ok(path)
}

/// A child process, killed when dropped.
pub struct Process {
    child: Child,
    name: String,
}

impl Process {
    /// Starts `program ARGS`, logging to `log`.
    pub fn spawn(program: &Path, args: &[&str], log: &Path, name: &str) -> Result<Process> {
        let out =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new(program)
            .args(args)
            .env("CASCADE_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Process {
            child,
            name: name.to_owned(),
        })
    }

    /// The operating system's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails if the process has exited.
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited: {status}", self.name);
        }
        Ok(())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a `cascade` command that must succeed; returns its stdout.
pub fn run(mut command: Command, what: &str) -> Result<Vec<u8>> {
    let out = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

/// Waits until `path` holds a URL (a server writes it once listening).
fn wait_for_url(path: &Path) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if !text.trim().is_empty() {
                return Ok(text.trim().to_owned());
            }
        }
        if Instant::now() > deadline {
            bail!("{} never appeared", path.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Where the benchmark's processes live, and the `cascade` binary.
pub struct Fleet {
    pub bin: PathBuf,
    pub root: PathBuf,
}

/// A running site server.
pub struct Site {
    pub code: String,
    pub url: String,
    pub admin_token: String,
    pub join_token: String,
    pub dp_join_token: String,
    pub site_join_token: String,
    pub process: Process,
    pub client: Client,
}

/// A running DP.
pub struct Dp {
    pub site: String,
    pub name: String,
    /// Kept for its lifetime: the DP stops when this is dropped.
    _process: Process,
}

impl Fleet {
    /// A `cascade` command.
    pub fn cascade(&self) -> Command {
        let mut command = Command::new(&self.bin);
        command.env_remove("CASCADE_LOG");
        command
    }

    /// Creates and starts a site (`parent`: kind and parent site for a
    /// child site).
    pub fn site(&self, code: &str, parent: Option<(&str, &Site)>) -> Result<Site> {
        self.site_with(code, parent, &[])
    }

    /// As [`Fleet::site`], with more `site run` arguments.
    pub fn site_with(
        &self,
        code: &str,
        parent: Option<(&str, &Site)>,
        run_args: &[&str],
    ) -> Result<Site> {
        let dir = self.root.join(format!("site-{code}"));
        let mut init = self.cascade();
        init.args(["-o", "json", "site", "init"])
            .arg(&dir)
            .args(["--code", code]);
        if let Some((kind, parent)) = parent {
            init.args(["--kind", kind, "--parent", &parent.url])
                .args(["--join-token", &parent.site_join_token]);
        }
        let out: Value = serde_json::from_slice(&run(init, &format!("site init {code}"))?)?;
        let field = |name: &str| -> Result<String> {
            Ok(out[name]
                .as_str()
                .with_context(|| format!("site init printed no {name}"))?
                .to_owned())
        };
        let mut args = vec!["site", "run", path_str(&dir)?, "--listen", "127.0.0.1:0"];
        args.extend_from_slice(run_args);
        let process = Process::spawn(
            &self.bin,
            &args,
            &self.root.join(format!("site-{code}.log")),
            &format!("site {code}"),
        )?;
        let url = wait_for_url(&dir.join("url"))?;
        let admin_token = field("admin_token")?;
        Ok(Site {
            code: code.to_owned(),
            client: cascade_protocol::client_presenting(&url, &admin_token)?,
            url,
            admin_token,
            join_token: field("join_token")?,
            dp_join_token: field("dp_join_token")?,
            site_join_token: field("site_join_token")?,
            process,
        })
    }

    /// Enrolls and starts a DP of `site`, reaching it at `site_url` (the
    /// site's own URL, or a byte-counting proxy in front of it).
    pub fn dp(&self, site: &Site, name: &str, site_url: &str) -> Result<Dp> {
        let dir = self.root.join(format!("dp-{}-{name}", site.code));
        let mut init = self.cascade();
        init.args(["dp", "init"]).arg(&dir).args([
            "--site",
            site_url,
            "--join-token",
            &site.dp_join_token,
            "--name",
            name,
        ]);
        run(init, &format!("dp init {name}"))?;
        let process = Process::spawn(
            &self.bin,
            &["dp", "run", path_str(&dir)?],
            &self.root.join(format!("dp-{}-{name}.log", site.code)),
            &format!("DP {}/{name}", site.code),
        )?;
        let url = wait_for_url(&dir.join("url"))?;
        site.run(self, &["dp", "approve", name, "--url", &url])?;
        Ok(Dp {
            site: site.code.clone(),
            name: name.to_owned(),
            _process: process,
        })
    }

    /// Enrolls and starts an agent of `site`, run by `program` with `args`
    /// before its directory (`cascade-agent`, or `cascade agent run`).
    pub fn agent(&self, site: &Site, name: &str, program: &Path, args: &[&str]) -> Result<Process> {
        self.agent_with(site, name, &[], program, args)
    }

    /// The directory of the agent `name` of `site`.
    pub fn agent_dir(&self, site: &Site, name: &str) -> PathBuf {
        self.root.join(format!("agent-{}-{name}", site.code))
    }

    /// As [`Fleet::agent`], with more `agent init` arguments.
    pub fn agent_with(
        &self,
        site: &Site,
        name: &str,
        init_args: &[&str],
        program: &Path,
        args: &[&str],
    ) -> Result<Process> {
        let dir = self.agent_dir(site, name);
        let mut init = self.cascade();
        init.args(["agent", "init"]).arg(&dir).args([
            "--site",
            &site.url,
            "--join-token",
            &site.join_token,
            "--name",
            name,
        ]);
        init.args(init_args);
        run(init, &format!("agent init {name}"))?;
        let mut full = args.to_vec();
        full.push(path_str(&dir)?);
        Process::spawn(
            program,
            &full,
            &self.root.join(format!("agent-{}-{name}.log", site.code)),
            &format!("agent {name}"),
        )
    }
}

impl Site {
    /// A `cascade` admin command against this site.
    pub fn cmd(&self, fleet: &Fleet, args: &[&str]) -> Command {
        let mut command = fleet.cascade();
        command
            .args(args)
            .env("CASCADE_SERVER", &self.url)
            .env("CASCADE_TOKEN", &self.admin_token);
        command
    }

    /// Creates DP group `name` of `members` (`SITE/DP`), retrying for a
    /// minute: a group's members are checked against the DPs this site has
    /// heard of, and a DP below reaches it through its sites' status relay.
    pub async fn create_group(&self, fleet: &Fleet, name: &str, members: &[String]) -> Result<()> {
        let mut args = vec!["dp-group", "create", name];
        for member in members {
            args.extend(["--dp", member.as_str()]);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while let Err(err) = self.run(fleet, &args) {
            if Instant::now() > deadline {
                return Err(err);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    }

    /// Runs an admin command that must succeed.
    pub fn run(&self, fleet: &Fleet, args: &[&str]) -> Result<Vec<u8>> {
        run(self.cmd(fleet, args), &args.join(" "))
    }

    /// Waits until every DP in `dps` (as `SITE/DP`) shows `version` of
    /// `package` installed in this site's view; returns when that was seen.
    pub async fn wait_installed(
        &mut self,
        package: &str,
        dps: &[String],
        version: u64,
        timeout: Duration,
    ) -> Result<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            let status: PackageStatus = self.client.package_status(package).await?;
            let done = dps.iter().all(|wanted| {
                status.dps.iter().any(|row| {
                    format!("{}/{}", row.site, row.dp) == *wanted
                        && row.installed_version == Some(version)
                })
            });
            if done {
                return Ok(Instant::now());
            }
            self.process.check_running()?;
            if Instant::now() > deadline {
                bail!(
                    "{package} v{version} not installed on {dps:?} within {timeout:?}: {}",
                    serde_json::to_string(&status.dps)?
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Dp {
    /// The DP process's id.
    pub fn pid(&self) -> u32 {
        self._process.pid()
    }
}

/// CPU time used so far by all of `pids` together.
pub fn total_cpu(pids: &[u32]) -> Result<Duration> {
    pids.iter().map(|pid| cpu_time(*pid)).sum()
}

/// A path as UTF-8 (the bench's own directories always are).
pub fn path_str(path: &Path) -> Result<&str> {
    path.to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))
}

/// Resident memory (VmRSS) of a process, in KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    Ok(crate::procfs::memory_kib(&pid.to_string())?.0)
}

/// CPU time (user + system) a process has used so far.
pub fn cpu_time(pid: u32) -> Result<Duration> {
    let ticks = crate::procfs::cpu_ticks(&pid.to_string())?;
    Ok(Duration::from_millis(
        ticks * 1000 / crate::procfs::ticks_per_second(),
    ))
}
