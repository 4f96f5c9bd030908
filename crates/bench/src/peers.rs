//! The tools an administrator would script instead, run on the same data in
//! the same run: `tar | zstd`, an rsync daemon, nginx with curl.

use crate::fleet::{path_str, Process};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A free loopback port (bound, then released for the peer to take).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Runs a shell pipeline that must succeed; returns its stdout and how long it took.
pub fn shell(script: &str) -> Result<(String, Duration)> {
    let started = Instant::now();
    let out = Command::new("sh")
        .args(["-c", script])
        .output()
        .with_context(|| format!("running {script}"))?;
    let took = started.elapsed();
    if !out.status.success() {
        bail!(
            "`{script}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok((String::from_utf8_lossy(&out.stdout).into_owned(), took))
}

/// The version line a peer prints, for the results.
pub fn version(command: &str) -> String {
    shell(command)
        .map(|(out, _)| out.lines().next().unwrap_or("").trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// `tar c | zstd -1 -T0` of `tree` into `out`; returns the time and the
/// archive's size.
pub fn tar_zstd(tree: &Path, out: &Path) -> Result<(Duration, u64)> {
    let script = format!(
        "tar cf - -C '{}' . | zstd -1 -T0 -q -f -o '{}'",
        path_str(tree)?,
        path_str(out)?
    );
    let (_, took) = shell(&script)?;
    Ok((took, std::fs::metadata(out)?.len()))
}

/// An rsync daemon on loopback serving one writable module, `bench`.
pub struct RsyncDaemon {
    pub url: String,
    _process: Process,
}

impl RsyncDaemon {
    /// Starts a daemon whose module `bench` is `dest`.
    pub fn start(work: &Path, dest: &Path) -> Result<RsyncDaemon> {
        std::fs::create_dir_all(dest)?;
        let port = free_port()?;
        let config = work.join("rsyncd.conf");
        std::fs::write(
            &config,
            format!(
                "use chroot = false\npid file = {work}/rsyncd.pid\n\
                 [bench]\npath = {dest}\nread only = false\nuid = 0\ngid = 0\n",
                work = path_str(work)?,
                dest = path_str(dest)?
            ),
        )?;
        let process = Process::spawn(
            Path::new("rsync"),
            &[
                "--daemon",
                "--no-detach",
                "--address=127.0.0.1",
                &format!("--port={port}"),
                &format!("--config={}", path_str(&config)?),
            ],
            &work.join("rsyncd.log"),
            "rsync daemon",
        )?;
        wait_for_port(port)?;
        Ok(RsyncDaemon {
            url: format!("rsync://127.0.0.1:{port}/bench/"),
            _process: process,
        })
    }

    /// `rsync -a --stats SRC/ DAEMON`: returns the time and the bytes sent
    /// plus received, as rsync counts them.
    pub fn sync(&self, source: &Path) -> Result<(Duration, u64)> {
        let (out, took) = shell(&format!(
            "rsync -a --delete --stats '{}/' '{}'",
            path_str(source)?,
            self.url
        ))?;
        let number = |label: &str| -> Result<u64> {
            let line = out
                .lines()
                .find(|line| line.starts_with(label))
                .with_context(|| format!("rsync printed no {label:?}"))?;
            let digits: String = line[label.len()..]
                .chars()
                .take_while(|c| !c.is_alphabetic())
                .filter(char::is_ascii_digit)
                .collect();
            Ok(digits.parse()?)
        };
        Ok((
            took,
            number("Total bytes sent:")? + number("Total bytes received:")?,
        ))
    }
}

/// nginx on loopback serving one directory with sendfile, as a web server
/// set up to hand out packages would.
pub struct Nginx {
    pub url: String,
    /// With TLS: the certificate curl is told to trust.
    cacert: Option<PathBuf>,
    _process: Process,
}

impl Nginx {
    /// nginx serving `root`; with `tls`, over HTTPS with a certificate
    /// made as Cascade makes its own (ECDSA P-256), so that both sides of
    /// row 3 pay for the same TLS.
    pub fn start(work: &Path, root: &Path, tls: bool) -> Result<Nginx> {
        let port = free_port()?;
        let dir = work.join(if tls { "nginx-tls" } else { "nginx" });
        std::fs::create_dir_all(dir.join("tmp"))?;
        let dir_str = path_str(&dir)?;
        let (listen, cacert) = if tls {
            cascade_protocol::tls::Identity::create(&dir, &[])?;
            let cert = dir.join(cascade_protocol::tls::layout::CERT);
            let key = dir.join(cascade_protocol::tls::layout::KEY);
            (
                format!(
                    "listen 127.0.0.1:{port} ssl; ssl_certificate {}; ssl_certificate_key {};",
                    path_str(&cert)?,
                    path_str(&key)?
                ),
                Some(cert),
            )
        } else {
            (format!("listen 127.0.0.1:{port};"), None)
        };
        let config = dir.join("nginx.conf");
        std::fs::write(
            &config,
            format!(
                "worker_processes auto;\ndaemon off;\npid {dir_str}/nginx.pid;\n\
                 error_log {dir_str}/error.log;\nevents {{ worker_connections 1024; }}\n\
                 http {{\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n\
                 client_body_temp_path {dir_str}/tmp;\n  proxy_temp_path {dir_str}/tmp;\n\
                 fastcgi_temp_path {dir_str}/tmp;\n  uwsgi_temp_path {dir_str}/tmp;\n\
                 scgi_temp_path {dir_str}/tmp;\n\
                 server {{ {listen} root {root}; }}\n}}\n",
                root = path_str(root)?
            ),
        )?;
        let process = Process::spawn(
            Path::new("nginx"),
            &["-p", dir_str, "-c", path_str(&config)?],
            &work.join("nginx.log"),
            "nginx",
        )?;
        wait_for_port(port)?;
        Ok(Nginx {
            url: format!("{}://127.0.0.1:{port}", if tls { "https" } else { "http" }),
            cacert,
            _process: process,
        })
    }

    /// `curl -o OUT URL/NAME`: the time, and the bytes downloaded.
    pub fn download(&self, name: &str, out: &Path) -> Result<(Duration, u64)> {
        let cacert = match &self.cacert {
            Some(cert) => format!("--cacert '{}' ", path_str(cert)?),
            None => String::new(),
        };
        let (_, took) = shell(&format!(
            "curl -sS --fail {cacert}-o '{}' '{}/{name}'",
            path_str(out)?,
            self.url
        ))?;
        Ok((took, std::fs::metadata(out)?.len()))
    }

    /// The fastest of `runs` downloads of `name` to `out` (removed between
    /// them): one slow run on a shared machine does not make the peer
    /// look slow.
    pub fn fastest_download(&self, name: &str, out: &Path, runs: u32) -> Result<(Duration, u64)> {
        let mut best: Option<(Duration, u64)> = None;
        for _ in 0..runs.max(1) {
            let (took, len) = self.download(name, out)?;
            std::fs::remove_file(out)?;
            if best.is_none_or(|(fastest, _)| took < fastest) {
                best = Some((took, len));
            }
        }
        Ok(best.expect("at least one run"))
    }
}

fn wait_for_port(port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("nothing listens on port {port}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Where a peer keeps its output, removed after each row to save disk.
pub fn scratch(work: &Path, name: &str) -> PathBuf {
    work.join("peer").join(name)
}
