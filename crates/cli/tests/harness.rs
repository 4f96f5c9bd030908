//! Starting real site and DP processes from `CARGO_BIN_EXE_cascade`, running
//! CLI commands against them, and making test data.

use rand::{RngCore, SeedableRng};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_cascade");

/// A child process killed when dropped.
pub struct Process {
    child: Option<Child>,
    args: Vec<String>,
    log: PathBuf,
}

impl Process {
    /// Starts `cascade ARGS`, logging to `log`.
    pub fn spawn(args: &[&str], log: &Path) -> Process {
        let mut process = Process {
            child: None,
            args: args.iter().map(|a| a.to_string()).collect(),
            log: log.to_owned(),
        };
        process.start();
        process
    }

    pub fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(BIN)
            .args(&self.args)
            .env("CASCADE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start cascade");
        self.child = Some(child);
    }

    /// Listens on `addr` from the next start on (the value of `--listen`).
    pub fn listen_on(&mut self, addr: &str) {
        let at = self
            .args
            .iter()
            .position(|arg| arg == "--listen")
            .expect("a server process")
            + 1;
        self.args[at] = addr.to_owned();
    }

    /// Runs with these arguments too from the next start on.
    pub fn add_args(&mut self, extra: &[&str]) {
        self.args.extend(extra.iter().map(|arg| arg.to_string()));
    }

    /// Freezes the process (SIGSTOP), runs `look` while nothing it does can
    /// change, then SIGKILLs it, as a crash at that very moment would.
    pub fn freeze_look_and_kill<T>(&mut self, look: impl FnOnce() -> T) -> T {
        let pid = self.pid().expect("a running process");
        // SAFETY: kill has no memory-safety preconditions.
        unsafe {
            libc::kill(pid, libc::SIGSTOP);
        }
        let seen = look();
        self.kill();
        seen
    }

    /// The process id while it runs (to signal it, e.g. SIGSTOP).
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|child| child.id() as i32)
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait: a clean shutdown.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
            let status = child.wait().unwrap();
            assert!(
                status.success(),
                "clean shutdown failed: {status}; log {}",
                self.log.display()
            );
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The certificate each server started by this test serves with, by URL:
/// [`http`] pins it, as Cascade's own clients do.
static PINS: std::sync::Mutex<Vec<(String, cascade_protocol::tls::Fingerprint)>> =
    std::sync::Mutex::new(Vec::new());

/// Remembers that the server at `url` serves with the certificate in `dir`.
pub fn pin(url: &str, dir: &Path) {
    let fingerprint = cascade_protocol::tls::fingerprint_in(dir)
        .unwrap_or_else(|err| panic!("certificate of {}: {err}", dir.display()));
    let mut pins = PINS.lock().unwrap();
    pins.retain(|(known, _)| known != url);
    pins.push((url.to_owned(), fingerprint));
}

/// The certificate pinned for a request to `url`.
fn pin_for(url: &str) -> Option<cascade_protocol::tls::Fingerprint> {
    PINS.lock()
        .unwrap()
        .iter()
        .find(|(base, _)| url.starts_with(base.as_str()))
        .map(|(_, fingerprint)| *fingerprint)
}

/// A blocking TLS connection to the server at `url`, pinning its
/// certificate, for tests that speak HTTP/1.1 by hand (the handshake
/// happens at the first read or write).
pub fn tls_connect(
    url: &str,
) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
    let pin = pin_for(url).unwrap_or_else(|| panic!("no certificate pinned for {url}"));
    let config = std::sync::Arc::new(cascade_protocol::tls::pinned_config(pin));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let connection = rustls::ClientConnection::new(config, name).unwrap();
    let socket = std::net::TcpStream::connect(addr_of(url)).unwrap();
    rustls::StreamOwned::new(connection, socket)
}

/// A blocking TLS server side with the certificate of the server whose
/// data directory is `dir` (a compromised DP holds its own key).
pub fn tls_accept(
    dir: &Path,
    socket: std::net::TcpStream,
) -> rustls::StreamOwned<rustls::ServerConnection, std::net::TcpStream> {
    let config = cascade_protocol::tls::Identity::load(dir)
        .and_then(|identity| identity.server_config())
        .unwrap();
    rustls::StreamOwned::new(rustls::ServerConnection::new(config).unwrap(), socket)
}

/// `host:port` of a server URL.
pub fn addr_of(url: &str) -> String {
    url.trim_start_matches("https://").to_owned()
}

/// Waits until `path` holds a URL written after `since` (a restart
/// rewrites it), and pins the certificate of the server beside it.
fn wait_for_url(path: &Path, previous: Option<&str>) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            let text = text.trim().to_owned();
            if !text.is_empty() && Some(text.as_str()) != previous {
                pin(&text, path.parent().unwrap());
                return text;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running site server.
pub struct Site {
    pub code: String,
    pub dir: PathBuf,
    pub url: String,
    pub admin_token: String,
    pub join_token: String,
    pub dp_join_token: String,
    pub site_join_token: String,
    pub process: Process,
    root: PathBuf,
    /// Prefix of the directories and logs of this site's DPs and agents.
    prefix: String,
}

impl Site {
    /// A central site `CEN` in `root/site`, its DPs and agents beside it.
    pub fn start(root: &Path) -> Site {
        Site::launch(root, "CEN", "site", "", &[])
    }

    /// A central site `code`; its directories are `root/CODE-*`.
    pub fn central(root: &Path, code: &str) -> Site {
        Site::launch(
            root,
            code,
            &format!("{code}-site"),
            &format!("{code}-"),
            &[],
        )
    }

    /// A child site of `parent` (`kind`: primary or secondary), with more
    /// `site init` arguments if given (e.g. `--max-rate`).
    pub fn child(root: &Path, code: &str, kind: &str, parent: &Site, extra: &[&str]) -> Site {
        let mut args = vec![
            "--kind",
            kind,
            "--parent",
            &parent.url,
            "--join-token",
            &parent.site_join_token,
        ];
        args.extend_from_slice(extra);
        Site::launch(
            root,
            code,
            &format!("{code}-site"),
            &format!("{code}-"),
            &args,
        )
    }

    /// A central site `code` run with more `site run` arguments (limits).
    pub fn central_run_with(root: &Path, code: &str, run_args: &[&str]) -> Site {
        let mut site = Site::central(root, code);
        site.process.kill();
        let addr = addr_of(&site.url);
        std::fs::remove_file(site.dir.join("url")).unwrap();
        let mut args = vec!["site", "run", site.dir.to_str().unwrap(), "--listen", &addr];
        args.extend_from_slice(run_args);
        site.process = Process::spawn(&args, &root.join(format!("{code}-site.log")));
        site.url = wait_for_url(&site.dir.join("url"), None);
        site
    }

    fn launch(root: &Path, code: &str, dir_name: &str, prefix: &str, init_args: &[&str]) -> Site {
        let dir = root.join(dir_name);
        let out = run_ok(
            Command::new(BIN)
                .args(["-o", "json", "site", "init"])
                .arg(&dir)
                .args(["--code", code])
                .args(init_args),
        );
        let init: Value = serde_json::from_slice(&out.stdout).unwrap();
        let process = Process::spawn(
            &[
                "site",
                "run",
                dir.to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
            ],
            &root.join(format!("{dir_name}.log")),
        );
        let url = wait_for_url(&dir.join("url"), None);
        Site {
            code: code.to_owned(),
            url,
            admin_token: init["admin_token"].as_str().unwrap().to_owned(),
            join_token: init["join_token"].as_str().unwrap().to_owned(),
            dp_join_token: init["dp_join_token"].as_str().unwrap().to_owned(),
            site_join_token: init["site_join_token"].as_str().unwrap().to_owned(),
            dir,
            process,
            root: root.to_owned(),
            prefix: prefix.to_owned(),
        }
    }

    /// Starts the site again (after `process.stop()` or `kill()`) on the
    /// same address, with the same `site run` arguments, as a real site
    /// with a fixed port would come back.
    pub fn restart(&mut self) {
        self.process.kill();
        let addr = addr_of(&self.url);
        std::fs::remove_file(self.dir.join("url")).unwrap();
        self.process.listen_on(&addr);
        self.process.start();
        self.url = wait_for_url(&self.dir.join("url"), None);
    }

    /// Restarts the site with more `site run` arguments (kept from then on).
    pub fn run_with(&mut self, run_args: &[&str]) {
        self.process.kill();
        self.process.add_args(run_args);
        self.restart();
    }

    /// A job's status, as JSON.
    pub fn job(&self, id: u64) -> Value {
        self.json(&["job", "status", &id.to_string()])
    }

    /// Waits up to `timeout` until `check` holds for the job's status.
    pub fn wait_job(&self, id: u64, timeout: Duration, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.job(id);
            if check(&status) {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "job {id} at {} not as expected in time: {status:#}",
                self.code
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `dp-group create NAME --dp SITE/DP ...` for `dps`.
    pub fn create_group(&self, name: &str, dps: &[&Dp]) -> Value {
        let members: Vec<String> = dps
            .iter()
            .map(|dp| format!("{}/{}", dp.site, dp.name))
            .collect();
        let mut args = vec!["dp-group", "create", name];
        for member in &members {
            args.extend(["--dp", member.as_str()]);
        }
        // A DP of a site below is known here once its admission (its
        // `dp_enrolled`) has come up the hierarchy: wait for that, as the
        // README's reader does.
        let mut full = vec!["-o", "json"];
        full.extend_from_slice(&args);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let out = self.cmd(&full).output().unwrap();
            if out.status.success() {
                return serde_json::from_slice(&out.stdout).unwrap();
            }
            if !String::from_utf8_lossy(&out.stderr).contains("is enrolled") {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.json(&args)
    }

    /// `job create --package P --collection C --command CMD` with `extra`
    /// options; returns the job as created.
    pub fn create_job(
        &self,
        package: &str,
        collection: &str,
        command: &str,
        extra: &[&str],
    ) -> Value {
        let mut args = vec![
            "job",
            "create",
            "--package",
            package,
            "--collection",
            collection,
            "--command",
            command,
        ];
        args.extend_from_slice(extra);
        self.json(&args)
    }

    /// `site queues` as JSON.
    pub fn queues(&self) -> Value {
        self.json(&["site", "queues"])
    }

    /// A `cascade` command with this site as server and the admin token.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut command = Command::new(BIN);
        command
            .args(args)
            .env("CASCADE_SERVER", &self.url)
            .env("CASCADE_TOKEN", &self.admin_token)
            .env_remove("CASCADE_LOG");
        command
    }

    /// Runs a command that must succeed; returns its JSON output.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut full = vec!["-o", "json"];
        full.extend_from_slice(args);
        let out = run_ok(&mut self.cmd(&full));
        serde_json::from_slice(&out.stdout).unwrap_or_else(|err| {
            panic!(
                "{args:?} printed no JSON ({err}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Runs a command that must fail; returns its stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.cmd(args).output().unwrap();
        assert!(
            !out.status.success(),
            "{args:?} succeeded: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Enrolls and starts a DP, and admits it at the URL it serves on; once
    /// it answers with its site's ticket (it has the site's content key).
    pub fn add_dp(&self, name: &str) -> Dp {
        self.add_dp_with(name, &[])
    }

    /// Enrolls, starts (`dp run DIR RUN_ARGS…`) and approves a DP.
    pub fn add_dp_with(&self, name: &str, run_args: &[&str]) -> Dp {
        let dp = self.add_unapproved_dp_with(name, run_args);
        self.json(&["dp", "approve", name, "--url", &dp.url]);
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Err(err) = dp.get("/v1/info", &[]) {
            assert!(Instant::now() < deadline, "dp {name} never served: {err}");
            std::thread::sleep(Duration::from_millis(50));
        }
        dp
    }

    /// Enrolls and starts a DP, left waiting for approval.
    pub fn add_unapproved_dp(&self, name: &str) -> Dp {
        self.add_unapproved_dp_with(name, &[])
    }

    fn add_unapproved_dp_with(&self, name: &str, run_args: &[&str]) -> Dp {
        let dir = self.root.join(format!("{}{name}", self.prefix));
        run_ok(Command::new(BIN).args(["dp", "init"]).arg(&dir).args([
            "--site",
            &self.url,
            "--join-token",
            &self.dp_join_token,
            "--name",
            name,
        ]));
        let mut args = vec!["dp", "run", dir.to_str().unwrap()];
        args.extend_from_slice(run_args);
        let process = Process::spawn(&args, &self.root.join(format!("{}{name}.log", self.prefix)));
        let url = wait_for_url(&dir.join("url"), None);
        let ticket = self.json(&["dp", "ticket"])["ticket"]
            .as_str()
            .unwrap()
            .to_owned();
        Dp {
            site: self.code.clone(),
            name: name.to_owned(),
            dir,
            url,
            process,
            ticket,
        }
    }

    /// `cascade package create NAME --source DIR`; returns its JSON report.
    pub fn create_package(&self, name: &str, source: &Path) -> Value {
        self.json(&[
            "package",
            "create",
            name,
            "--source",
            source.to_str().unwrap(),
        ])
    }

    /// The package's status, as JSON.
    pub fn status(&self, package: &str) -> Value {
        self.json(&["package", "status", package])
    }

    /// Waits until every listed DP reports `version` installed.
    pub fn wait_installed(
        &self,
        package: &str,
        dps: &[&Dp],
        version: u64,
        timeout: Duration,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.status(package);
            let done = dps.iter().all(|dp| {
                status["dps"].as_array().unwrap().iter().any(|row| {
                    row["dp"] == dp.name.as_str()
                        && row["site"] == dp.site.as_str()
                        && row["state"] == "installed"
                        && row["installed_version"] == version
                        && row["target_version"] == version
                })
            });
            if done {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "not installed in time: {status:#}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every status message about a package.
    pub fn history(&self, package: &str) -> Vec<Value> {
        self.json(&["package", "history", package])
            .as_array()
            .unwrap()
            .clone()
    }
}

/// A running agent.
pub struct Agent {
    pub name: String,
    pub dir: PathBuf,
    pub process: Process,
}

impl Site {
    /// Enrolls an agent with `key=value` tags without starting it (an
    /// offline workstation); returns its directory.
    pub fn init_agent(&self, name: &str, tags: &[&str]) -> PathBuf {
        let dir = self.root.join(format!("{}agent-{name}", self.prefix));
        let mut command = Command::new(BIN);
        command.args(["agent", "init"]).arg(&dir).args([
            "--site",
            &self.url,
            "--join-token",
            &self.join_token,
            "--name",
            name,
        ]);
        for tag in tags {
            command.args(["--tag", tag]);
        }
        run_ok(&mut command);
        dir
    }

    /// Enrolls and starts an agent with `key=value` tags.
    pub fn add_agent(&self, name: &str, tags: &[&str]) -> Agent {
        let dir = self.init_agent(name, tags);
        let process = Process::spawn(
            &["agent", "run", dir.to_str().unwrap()],
            &self.root.join(format!("{}agent-{name}.log", self.prefix)),
        );
        Agent {
            name: name.to_owned(),
            dir,
            process,
        }
    }
}

/// A running DP.
pub struct Dp {
    pub site: String,
    pub name: String,
    pub dir: PathBuf,
    pub url: String,
    pub process: Process,
    /// A content ticket of its site (an administrator's), for requests
    /// to the DP.
    pub ticket: String,
}

impl Dp {
    pub fn restart(&mut self) {
        self.process.kill();
        let previous = self.url.clone();
        std::fs::remove_file(self.dir.join("url")).unwrap();
        self.process.start();
        self.url = wait_for_url(&self.dir.join("url"), Some(&previous));
    }

    /// `GET PATH` of the DP with its site's content ticket.
    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> Result<Vec<u8>, String> {
        http(
            reqwest::Method::GET,
            &format!("{}{path}", self.url),
            Some(&self.ticket),
            None,
            headers,
        )
    }

    /// `GET /v1/info`.
    pub fn info(&self) -> Value {
        let body = self.get("/v1/info", &[]).expect("dp info");
        serde_json::from_slice(&body).unwrap()
    }

    pub fn bytes_received(&self) -> u64 {
        self.info()["counters"]["bytes_received"].as_u64().unwrap()
    }

    /// Downloads one file of a package from the DP.
    pub fn file(&self, package: &str, path: &str) -> Result<Vec<u8>, String> {
        self.get(&format!("/v1/packages/{package}/files/{path}"), &[])
    }

    /// Checks every file of `source` byte for byte against the DP's copy.
    pub fn verify_against(&self, package: &str, source: &Path) {
        for (path, expected) in files_of(source) {
            let got = self
                .file(package, &path)
                .unwrap_or_else(|err| panic!("{} {path}: {err}", self.name));
            assert!(
                got == expected,
                "{}: {path} differs from the source",
                self.name
            );
        }
    }
}

/// The row of workstation `agent` in a job's status, once it has one.
pub fn workstation<'a>(status: &'a Value, agent: &str) -> Option<&'a Value> {
    status["workstations"]
        .as_array()?
        .iter()
        .find(|row| row["agent"] == agent)
}

/// The row of workstation `agent` in a job's status (which must have it).
pub fn ws_row<'a>(status: &'a Value, agent: &str) -> &'a Value {
    workstation(status, agent).unwrap_or_else(|| panic!("no row for {agent}: {status:#}"))
}

/// A blocking GET (a fresh runtime per call keeps tests synchronous).
pub fn http_get(url: &str) -> Result<Vec<u8>, String> {
    http(reqwest::Method::GET, url, None, None, &[])
}

/// Any request; returns the body of a 2xx, or "STATUS: body".
pub fn http(
    method: reqwest::Method,
    url: &str,
    token: Option<&str>,
    body: Option<Vec<u8>>,
    headers: &[(&str, &str)],
) -> Result<Vec<u8>, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = cascade_protocol::tls::client_builder(pin_for(url))
            .build()
            .unwrap();
        let mut request = client.request(method, url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body);
        }
        let response = request.send().await.map_err(|err| err.to_string())?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|err| format!("{status}: body cut short: {err}"))?;
        if status.is_success() {
            Ok(bytes.to_vec())
        } else {
            Err(format!(
                "{}: {}",
                status.as_u16(),
                String::from_utf8_lossy(&bytes)
            ))
        }
    })
}

pub fn run_ok(command: &mut Command) -> Output {
    let out = command.output().expect("run cascade");
    assert!(
        out.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Deterministic incompressible bytes.
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut data = vec![0u8; len];
    rng.fill_bytes(&mut data);
    data
}

/// Writes a source tree: `small` text and binary files in subdirectories
/// plus, if `big` > 0, one file `big.bin` of that many random bytes.
pub fn make_tree(dir: &Path, small: usize, big: usize, seed: u64) {
    for i in 0..small {
        let sub = dir.join(format!("dir{}", i % 7));
        std::fs::create_dir_all(&sub).unwrap();
        let content = if i % 3 == 0 {
            random_bytes(seed + i as u64, 1000 + i * 37)
        } else {
            format!("file {i} of seed {seed}\n")
                .repeat(20 + i)
                .into_bytes()
        };
        std::fs::write(sub.join(format!("file{i:03}.dat")), content).unwrap();
    }
    if big > 0 {
        std::fs::write(dir.join("big.bin"), random_bytes(seed ^ 0xb16, big)).unwrap();
    }
}

/// Every regular file under `root`, by relative path.
pub fn files_of(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                let rel = entry
                    .path()
                    .strip_prefix(root)
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .to_owned();
                out.push((rel, std::fs::read(entry.path()).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// How many chunks the store of a site, DP or agent at `dir` holds, read
/// from its pack indexes (the store may be open in the running process).
pub fn stored_chunks(dir: &Path) -> usize {
    cascade_content::list_in(&dir.join("chunks"))
        .map(|chunks| chunks.len())
        .unwrap_or(0)
}

/// Bytes of the chunk store of a site, DP or agent at `dir` on disk (its
/// packs and their indexes).
pub fn store_disk(dir: &Path) -> u64 {
    std::fs::read_dir(dir.join("chunks").join("packs"))
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// The chunk store of a site, DP or agent at `dir` as its files show it
/// (the store may be open in the running process).
pub struct StoreOnDisk {
    /// The chunks its indexes hold.
    pub chunks: std::collections::HashSet<cascade_content::ChunkHash>,
    /// Each pack file, with its length and the bytes of its live chunks.
    pub packs: std::collections::BTreeMap<PathBuf, (u64, u64)>,
}

impl StoreOnDisk {
    pub fn read(dir: &Path) -> StoreOnDisk {
        let root = dir.join("chunks");
        let mut packs = std::collections::BTreeMap::new();
        if let Ok(entries) = std::fs::read_dir(root.join("packs")) {
            for entry in entries.flatten() {
                let path = entry.path();
                if path.extension().is_some_and(|ext| ext == "pack") {
                    let len = entry.metadata().map_or(0, |m| m.len());
                    packs.insert(path, (len, 0));
                }
            }
        }
        let mut chunks = std::collections::HashSet::new();
        for (hash, at) in cascade_content::list_in(&root).unwrap() {
            chunks.insert(hash);
            if let Some((_, live)) = packs.get_mut(&at.pack) {
                *live += at.len;
            }
        }
        StoreOnDisk { chunks, packs }
    }

    /// Packs that are at least half dead (what compaction rewrites; an
    /// empty pack just made counts as none).
    pub fn half_dead_packs(&self) -> usize {
        self.packs
            .values()
            .filter(|(len, live)| *len > 4096 && live * 2 <= *len)
            .count()
    }
}

/// Opens the chunk store of a stopped site, DP or agent at `dir` (cutting
/// what a kill left torn, as its own restart would) and checks every chunk
/// against its name; returns how many it holds.
pub fn verify_store(dir: &Path) -> usize {
    let store = cascade_content::ChunkStore::open(&dir.join("chunks")).unwrap();
    let chunks = store.list().unwrap();
    for chunk in &chunks {
        if let Err(err) = store.get(&chunk.hash) {
            panic!("{}: a stored chunk does not verify: {err}", dir.display());
        }
    }
    chunks.len()
}

/// Flips bytes of the stored form of `data`'s first chunk on a DP's (or
/// agent's, or site's) disk, as disk damage or tampering would; the store
/// may be open in the running process.
pub fn corrupt_chunk(dir: &Path, data: &[u8]) {
    use std::os::unix::fs::FileExt;
    let first = cascade_content::chunks(data).next().unwrap().unwrap();
    let at = cascade_content::locate_in(&dir.join("chunks"), &first.hash)
        .unwrap()
        .expect("the chunk to corrupt is stored");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&at.pack)
        .unwrap();
    for offset in [at.offset + 1, at.offset + at.len / 2] {
        let mut byte = [0u8];
        file.read_exact_at(&mut byte, offset).unwrap();
        byte[0] ^= 0x55;
        file.write_all_at(&byte, offset).unwrap();
    }
}

/// Runs SQL against a site's database (stopped or running), as a damaged or rolled back
/// site, or an attacker with its disk, would leave it.
pub fn tamper(site: &Site, statements: &[(&str, Vec<String>)]) {
    use cascade_store::sqlx;
    let path = site.dir.join("site.db");
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let options = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(&path)
                .busy_timeout(Duration::from_secs(10));
            let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
            for (sql, binds) in statements {
                let mut query = sqlx::query(sql);
                for bind in binds {
                    query = query.bind(bind.clone());
                }
                query.execute(&pool).await.unwrap();
            }
            pool.close().await;
        });
}
