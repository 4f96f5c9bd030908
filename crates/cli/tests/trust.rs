//! Trust on every hop (issue 12): what a compromised site, DP or network
//! in the middle can no longer make a workstation do.

use crate::harness::*;
use serde_json::Value;
use std::time::Duration;

/// Waits until job `id` has reached `site` (its `job status` answers).
fn wait_until_known(site: &Site, id: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !site
        .cmd(&["job", "status", id])
        .output()
        .unwrap()
        .status
        .success()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "job {id} never reached {}",
            site.code
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Issue 12: rewriting `jobs.command` in a site's database before its
/// agents polled made a workstation run the attacker's command as root while
/// the central site showed the legitimate one and `complete`. Now the
/// agent at a secondary site refuses the offer (whether only the command
/// column or the signed text too was rewritten), runs nothing, and the
/// central site, two levels up, shows the workstation as refused with the
/// reason and the job as failed.
#[test]
fn a_command_altered_in_a_child_sites_database_is_refused_by_the_agent() {
    let root = tempfile::tempdir().unwrap();
    let cen = Site::central(root.path(), "CEN");
    let p01 = Site::child(root.path(), "P01", "primary", &cen, &[]);
    let s01 = Site::child(root.path(), "S01", "secondary", &p01, &[]);
    let source = root.path().join("src");
    make_tree(&source, 2, 10_000, 12);
    cen.create_package("tool", &source);
    // Enrolled, but not running: the jobs reach S01 before it polls.
    let agent_dir = s01.init_agent("ws1", &[]);
    cen.json(&[
        "collection",
        "create",
        "ws1",
        "--machines",
        "ws1",
        "--allow-unknown",
    ]);
    let evil = root.path().join("evil-ran");
    let evil_command = format!("touch {}", evil.display());
    let ids: Vec<u64> = ["echo one", "echo two"]
        .iter()
        .map(|command| {
            cen.create_job("tool", "ws1", command, &[])["id"]
                .as_u64()
                .unwrap()
        })
        .collect();
    for id in &ids {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !s01
            .cmd(&["job", "status", &id.to_string()])
            .output()
            .unwrap()
            .status
            .success()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "job {id} never reached S01"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    // The first: only the command column. The second: the signed text too.
    tamper(
        &s01,
        &[
            (
                "UPDATE jobs SET command = ? WHERE id = ?",
                vec![evil_command.clone(), ids[0].to_string()],
            ),
            (
                "UPDATE jobs SET command = ?1, intent = replace(intent, 'echo two', ?1) WHERE id = ?2",
                vec![evil_command.clone(), ids[1].to_string()],
            ),
        ],
    );
    let _agent = Process::spawn(
        &["agent", "run", agent_dir.to_str().unwrap()],
        &root.path().join("S01-agent-ws1.log"),
    );
    let reasons = [
        "its command differs from what the central site signed",
        "its signature does not verify against the central site's key",
    ];
    for (id, reason) in ids.iter().zip(reasons) {
        let status = cen.wait_job(*id, Duration::from_secs(60), |status| {
            workstation(status, "ws1").is_some_and(|ws| ws["state"] == "refused")
                && status["outcome"] == "failed"
        });
        let ws = workstation(&status, "ws1").unwrap();
        assert_eq!(ws["site"], "S01", "{ws:#}");
        assert!(
            ws["reason"].as_str().unwrap().contains(reason),
            "job {id}: {ws:#}"
        );
        assert_eq!(ws["attempts"], 0, "{ws:#}");
        // The text view says it too.
        let text = cen
            .cmd(&["job", "status", &id.to_string()])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&text.stdout);
        assert!(text.contains("refused"), "{text}");
    }
    // Nothing ran, not even later.
    std::thread::sleep(Duration::from_secs(2));
    assert!(!evil.exists(), "the altered command ran");
}

/// Issue 12: 300 half-sent requests stayed open indefinitely, and 1,100
/// idle sockets locked a site out (open-files limit 1,024). Now a
/// connection that has not sent a whole request head within the header
/// timeout (idle ones too) is closed, one trickling its body is closed at
/// the request timeout, one over the connection cap is answered 503 at
/// once with the JSON error, the open-files limit is raised at start, and
/// the site answers again once they are gone.
#[test]
fn slowloris_connections_are_closed_and_the_cap_answers_503() {
    use std::io::{ErrorKind, Read, Write};
    use std::net::TcpStream;
    use std::time::Instant;
    let root = tempfile::tempdir().unwrap();
    let site = Site::central_run_with(
        root.path(),
        "CEN",
        &[
            "--max-connections",
            "41",
            "--header-timeout",
            "2s",
            "--request-timeout",
            "3s",
        ],
    );
    let addr = addr_of(&site.url);
    // Whole headers, then a body trickled without end: closed at the
    // request timeout.
    let mut trickle = tls_connect(&site.url);
    trickle
        .write_all(
            b"POST /api/v1/agents/enroll HTTP/1.1\r\nHost: cascade\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n{",
        )
        .unwrap();
    let trickled = Instant::now();
    let trickler = std::thread::spawn(move || {
        while trickle.write_all(b" ").is_ok() {
            std::thread::sleep(Duration::from_millis(200));
        }
        trickled.elapsed()
    });
    let opened = Instant::now();
    // Most trickle a request head inside TLS; some send nothing at all
    // (not even a TLS handshake).
    let mut slow: Vec<Box<dyn ReadWrite>> = (0..40)
        .map(|i| -> Box<dyn ReadWrite> {
            if i % 8 == 0 {
                return Box::new(TcpStream::connect(&addr).unwrap());
            }
            let mut stream = tls_connect(&site.url);
            stream
                .write_all(b"GET /api/v1/site HTTP/1.1\r\nHost: cascade\r\nX-Slow: ")
                .unwrap();
            Box::new(stream)
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));

    // One over the cap reads a 503 over TLS.
    let mut extra = tls_connect(&site.url);
    extra
        .sock
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    extra
        .write_all(b"GET /api/v1/site HTTP/1.1\r\nHost: cascade\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = extra.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("too_many_connections"), "{answer}");

    for stream in &mut slow {
        stream
            .socket()
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = [0u8; 1024];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => continue,
                // Closed without a TLS close_notify, or reset.
                Err(err)
                    if matches!(
                        err.kind(),
                        ErrorKind::ConnectionReset | ErrorKind::UnexpectedEof
                    ) =>
                {
                    break
                }
                Err(err) => panic!("a slow connection was not closed: {err}"),
            }
        }
    }
    let closed_after = opened.elapsed();
    assert!(
        closed_after >= Duration::from_millis(1500) && closed_after < Duration::from_secs(10),
        "closed after {closed_after:?}, the header timeout is 2 s"
    );
    let trickled_for = trickler.join().unwrap();
    assert!(
        trickled_for >= Duration::from_millis(2500) && trickled_for < Duration::from_secs(15),
        "a trickled body was cut after {trickled_for:?}, the request timeout is 3 s"
    );
    drop(slow);
    let info = http_get(&format!("{}/api/v1/site", site.url)).expect("the site answers again");
    assert!(String::from_utf8_lossy(&info).contains("\"CEN\""));

    let pid = site.process.pid().unwrap();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields[3], fields[4], "soft limit not raised: {line}");
}

/// A connection a test reads and writes by hand: plain TCP or TLS.
trait ReadWrite: std::io::Read + std::io::Write {
    fn socket(&self) -> &std::net::TcpStream;
}

impl ReadWrite for std::net::TcpStream {
    fn socket(&self) -> &std::net::TcpStream {
        self
    }
}

impl ReadWrite for rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
    fn socket(&self) -> &std::net::TcpStream {
        &self.sock
    }
}

/// Issue 12: Cascade servers speak HTTPS only. A plain-HTTP request is
/// answered with a clear 400 naming the https:// URL, and the CLI refuses
/// an http:// server URL before sending anything (the token never crosses
/// the network in clear); a client pinning another certificate refuses
/// the site.
#[test]
fn plain_http_is_refused_and_certificates_are_pinned() {
    use std::io::{Read, Write};
    let root = tempfile::tempdir().unwrap();
    let site = Site::start(root.path());
    let mut plain = std::net::TcpStream::connect(addr_of(&site.url)).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    plain
        .write_all(b"GET /api/v1/site HTTP/1.1\r\nHost: cascade\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    plain.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(
        answer.contains("plain_http_refused") && answer.contains(&format!("use {}", site.url)),
        "{answer}"
    );
    // `cascade site list` at `server` with `token`: what it printed on
    // stderr, after checking that it failed.
    let refused = |server: &str, token: &str| -> String {
        let out = std::process::Command::new(BIN)
            .args(["site", "list", "--server", server, "--token", token])
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let http_url = site.url.replace("https://", "http://");
    let err = refused(&http_url, &site.admin_token);
    assert!(
        err.contains("is plain HTTP") && err.contains(&site.url),
        "{err}"
    );
    // An admin token pins the certificate of the site that minted it:
    // another site on that address is refused.
    let other = Site::central(root.path(), "OTH");
    let err = refused(&other.url, &site.admin_token);
    assert!(err.contains("not the pinned"), "{err}");
    // A token from before TLS pins no certificate, and is refused.
    let old = site.admin_token.rsplit_once('.').unwrap().0;
    let err = refused(&site.url, old);
    assert!(err.contains("pins no TLS certificate"), "{err}");
}

/// Issue 12: setuid bits in a package were kept and materialised as is, so
/// a package could plant a root shell on every workstation. Now such a tree
/// is refused at ingest, naming the file, unless `--allow-setuid` is given;
/// and the site's database is readable by its owner only.
#[test]
fn setuid_files_are_refused_at_ingest_unless_allowed() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().unwrap();
    let site = Site::start(root.path());
    let source = root.path().join("src");
    make_tree(&source, 2, 1_000, 7);
    let tool = source.join("bin-tool");
    std::fs::write(&tool, b"#!/bin/sh\nid\n").unwrap();
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o4755)).unwrap();
    let src = source.to_str().unwrap();
    let err = site.fails(&["package", "create", "tool", "--source", src]);
    assert!(
        err.contains("bin-tool has mode 4755") && err.contains("--allow-setuid"),
        "{err}"
    );
    assert!(site
        .json(&["package", "list"])
        .as_array()
        .unwrap()
        .is_empty());
    site.json(&[
        "package",
        "create",
        "tool",
        "--source",
        src,
        "--allow-setuid",
    ]);
    let mode = std::fs::metadata(site.dir.join("site.db"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "site.db mode {mode:o}");
}

/// A DP's own credential, from its configuration file.
fn dp_credential(dp: &Dp) -> String {
    let config: Value =
        serde_json::from_slice(&std::fs::read(dp.dir.join("dp.json")).unwrap()).unwrap();
    config["credential"].as_str().unwrap().to_owned()
}

/// Issue 12: anyone holding the workstation join token could run a DP,
/// which announced any URL and could report `dp_installed` for a package it
/// was never given. Now a DP needs the DP join token, waits for an
/// administrator to admit it (at the URL it announced, or one the
/// administrator sets) before it is given anything, and may report only
/// on packages it was given.
#[test]
fn dps_are_admitted_not_self_declared() {
    use reqwest::Method;
    let root = tempfile::tempdir().unwrap();
    let site = Site::start(root.path());
    let out = std::process::Command::new(BIN)
        .args(["dp", "init"])
        .arg(root.path().join("intruder"))
        .args(["--site", &site.url, "--join-token", &site.join_token])
        .args(["--name", "intruder"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("invalid join token") && err.contains("DP join token"),
        "{err}"
    );

    let dp = site.add_unapproved_dp("dp1");
    let source = root.path().join("src");
    make_tree(&source, 3, 5_000, 9);
    site.create_package("app", &source);
    site.create_package("other", &source);
    let listed = site.json(&["dp", "list"]);
    assert_eq!(listed[0]["approved"], false, "{listed:#}");
    assert!(listed[0]["url"].is_null(), "{listed:#}");
    let err = site.fails(&["package", "distribute", "app", "--dp", "dp1"]);
    assert!(err.contains("waiting for approval"), "{err}");

    let forged = |package: &str| {
        let body = serde_json::json!({"messages": [{
            "seq": 1, "at_ms": 1, "kind": "dp_installed",
            "package": package, "version": 1, "bytes_received": 0,
        }]});
        http(
            Method::POST,
            &format!("{}/api/v1/status", site.url),
            Some(&dp_credential(&dp)),
            Some(body.to_string().into_bytes()),
            &[("content-type", "application/json")],
        )
    };
    let err = forged("app").unwrap_err();
    assert!(err.starts_with("403"), "{err}");
    // Not admitted: it serves nothing, even with a ticket of its site.
    let err = dp.get("/v1/info", &[]).unwrap_err();
    assert!(
        err.starts_with("401") && err.contains("not admitted"),
        "{err}"
    );

    // Admitted at the URL it announced (once it has announced it).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while site.json(&["dp", "list"])[0]["announced_url"] != dp.url.as_str() {
        assert!(
            std::time::Instant::now() < deadline,
            "dp1 never announced its URL"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // It announced the certificate it serves with (agents pin it), shown
    // for the administrator to compare before approving.
    let fingerprint = cascade_protocol::tls::fingerprint_in(&dp.dir).unwrap();
    assert_eq!(
        site.json(&["dp", "list"])[0]["certificate"],
        fingerprint.to_string().as_str()
    );
    let approved = site.json(&["dp", "approve", "dp1"]);
    assert_eq!(approved["url"], dp.url.as_str(), "{approved:#}");
    site.json(&["package", "distribute", "app", "--dp", "dp1"]);
    site.wait_installed("app", &[&dp], 1, Duration::from_secs(60));
    // Issue 12: content needed no credential. Now the DP's routes and the
    // site's chunk route take a content ticket of the site.
    assert!(dp.get("/v1/info", &[]).is_ok());
    let chunk = dp.get("/v1/packages/app/manifest", &[]).unwrap();
    let manifest: Value = serde_json::from_slice(&chunk).unwrap();
    let manifest: Value = serde_json::from_str(manifest["manifest"].as_str().unwrap()).unwrap();
    let hash = manifest["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|entry| entry["chunks"][0]["hash"].as_str())
        .unwrap()
        .to_owned();
    for (url, token) in [
        (format!("{}/v1/info", dp.url), None),
        (format!("{}/v1/chunks/{hash}", dp.url), None),
        (
            format!("{}/v1/chunks/{hash}", dp.url),
            Some("cct1.ws1.99999999999999.00"),
        ),
        (format!("{}/v1/chunks/{hash}", site.url), None),
        (
            format!("{}/v1/chunks/{hash}", site.url),
            Some(site.admin_token.as_str()),
        ),
    ] {
        let err = http(Method::GET, &url, token, None, &[]).unwrap_err();
        assert!(err.starts_with("401"), "{url}: {err}");
    }
    assert!(dp.get(&format!("/v1/chunks/{hash}"), &[]).is_ok());
    let ticket = dp.ticket.clone();
    assert!(http(
        Method::GET,
        &format!("{}/v1/chunks/{hash}", site.url),
        Some(&ticket),
        None,
        &[]
    )
    .is_ok());
    // Still nothing about a package it was not given.
    let err = forged("other").unwrap_err();
    assert!(err.starts_with("403"), "{err}");
    let history = site.history("other");
    assert!(
        history.iter().all(|m| m["kind"] != "dp_installed"),
        "{history:#?}"
    );
}

/// A content server that misbehaves on every request, with the key of
/// the DP in `dir` (a compromised DP): `endless` answers 200 and sends
/// zeros until the client hangs up; `trickle` promises a body and sends one
/// byte every 200 ms.
fn hostile_server(dir: &std::path::Path, endless: bool) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let dir = dir.to_owned();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(socket) = stream else { continue };
            let mut stream = tls_accept(&dir, socket);
            std::thread::spawn(move || {
                let mut head = [0u8; 4096];
                let _ = stream.read(&mut head);
                if endless {
                    let _ = stream.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n\r\n",
                    );
                    let zeros = vec![0u8; 64 * 1024];
                    while stream.write_all(&zeros).is_ok() {}
                } else {
                    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000000\r\n\r\n");
                    while stream.write_all(b"x").is_ok() {
                        std::thread::sleep(Duration::from_millis(200));
                    }
                }
            });
        }
    });
    url
}

/// Peak resident memory of a process, in KiB.
fn peak_rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Issue 12: a rogue DP sending an endless body for a chunk took an agent
/// from 14 MB to 1.27 GB resident (the whole body was buffered); one
/// trickling bytes made a job time out although a good DP held every
/// chunk. Now, with both listed before the good DP, the agent reads no more
/// than a chunk's size from the first, gives up on the second at the
/// chunk's deadline and stops asking it, and the job completes within its
/// timeout with the agent's memory bounded.
#[test]
fn a_rogue_dp_neither_exhausts_the_agent_nor_fails_the_job() {
    let root = tempfile::tempdir().unwrap();
    let site = Site::start(root.path());
    site.json(&["site", "settings", "--agent-poll-interval", "2s"]);
    // Real DPs, but admitted (the compromised case) at hostile URLs; the
    // agent tries a job's DPs in name order.
    let endless = site.add_unapproved_dp("a-endless");
    let trickle = site.add_unapproved_dp("b-trickle");
    site.json(&[
        "dp",
        "approve",
        "a-endless",
        "--url",
        &hostile_server(&endless.dir, true),
    ]);
    site.json(&[
        "dp",
        "approve",
        "b-trickle",
        "--url",
        &hostile_server(&trickle.dir, false),
    ]);
    let good = site.add_dp("c-good");
    let source = root.path().join("src");
    make_tree(&source, 12, 0, 31);
    site.create_package("app", &source);
    let agent = site.add_agent("ws1", &[]);
    site.json(&["collection", "create", "one", "--machines", "ws1"]);
    let job = site.create_job("app", "one", "ls dir0 > /dev/null", &["--timeout", "60s"]);
    let id = job["id"].as_u64().unwrap();
    let status = site.wait_job(id, Duration::from_secs(90), |status| {
        status["outcome"] != "in_progress"
    });
    assert_eq!(status["outcome"], "complete", "{status:#}");
    // Each rogue DP was tried, refused, and then left alone: the trickling
    // one cost one chunk's deadline, not one per chunk.
    let refusals = |dp: &str| -> Vec<String> {
        site.history("app")
            .iter()
            .filter(|m| {
                m["kind"] == "job_content_refused"
                    && m["dp"].as_str().is_some_and(|url| url.starts_with("http"))
                    && m.to_string().contains(dp)
            })
            .map(|m| m["reason"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    let endless_url = site.json(&["dp", "list"])[0]["url"]
        .as_str()
        .unwrap()
        .to_owned();
    let trickle_url = site.json(&["dp", "list"])[1]["url"]
        .as_str()
        .unwrap()
        .to_owned();
    let endless = refusals(&endless_url);
    assert!(
        endless.iter().any(|r| r.contains("sent more than")),
        "{endless:?}"
    );
    let trickle = refusals(&trickle_url);
    assert_eq!(trickle.len(), 1, "{trickle:?}");
    assert!(
        trickle[0].contains("did not serve the chunk within"),
        "{trickle:?}"
    );
    let peak = peak_rss_kib(agent.process.pid().unwrap());
    assert!(peak < 100 * 1024, "the agent peaked at {peak} KiB resident");
    drop(good);
}

/// Relays `message` to `parent` as the child site `child` would, with the
/// child's own credential (what a compromised child can do).
fn relay_as(child: &Site, parent: &Site, message: Value) -> Result<Vec<u8>, String> {
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(child.dir.join("parent.json")).unwrap())
            .unwrap();
    http(
        reqwest::Method::POST,
        &format!("{}/api/v1/site/status", parent.url),
        config["credential"].as_str(),
        Some(
            serde_json::json!({ "messages": [message] })
                .to_string()
                .into_bytes(),
        ),
        &[("content-type", "application/json")],
    )
}

/// Issue 12: a child site could relay `job_failed` for a workstation that
/// does not exist in its subtree and turn the job's outcome to failed. Now
/// the parent refuses a relayed message of a workstation or DP that never
/// enrolled at the site it names, and the job is untouched.
#[test]
fn a_child_cannot_relay_results_of_a_workstation_that_never_enrolled() {
    let root = tempfile::tempdir().unwrap();
    let cen = Site::central(root.path(), "CEN");
    let p01 = Site::child(root.path(), "P01", "primary", &cen, &[]);
    let source = root.path().join("src");
    make_tree(&source, 2, 1_000, 4);
    cen.create_package("app", &source);
    cen.json(&[
        "collection",
        "create",
        "ghosts",
        "--machines",
        "ghost",
        "--allow-unknown",
    ]);
    let id = cen.create_job("app", "ghosts", "true", &[])["id"]
        .as_u64()
        .unwrap();
    let relay = |source: &str, kind_fields: Value| {
        let mut message = serde_json::json!({"source": source, "seq": 1, "at_ms": 1});
        for (key, value) in kind_fields.as_object().unwrap() {
            message[key] = value.clone();
        }
        relay_as(&p01, &cen, message)
    };
    let failed = serde_json::json!({"kind": "job_failed", "job": id, "package": "app",
        "attempt": 1, "exit_code": 1, "reason": "forged", "output_tail": ""});
    let err = relay("P01/agent/ghost", failed.clone()).unwrap_err();
    assert!(
        err.starts_with("403") && err.contains("never enrolled"),
        "{err}"
    );
    let installed = serde_json::json!({"kind": "dp_installed", "package": "app",
        "version": 1, "bytes_received": 0});
    let err = relay("P01/dp/phantom", installed).unwrap_err();
    assert!(err.starts_with("403"), "{err}");
    let status = cen.job(id);
    assert_ne!(status["outcome"], "failed", "{status:#}");
    assert!(
        cen.history("app")
            .iter()
            .all(|m| m["source"] != "P01/agent/ghost"),
        "a forged message was stored"
    );
}

/// Issue 12: a compromised site in the middle could invent any result for
/// its workstations. Each agent and DP now signs its status messages with
/// its own key, registered at enrollment and relayed up with it: the
/// agent's real results reach the central site, and a `job_failed` the
/// site forges for it, unsigned or signed with another key, is refused by
/// the first honest site above, with the job untouched.
#[test]
fn a_forged_status_message_is_refused_at_the_first_honest_site_above() {
    let root = tempfile::tempdir().unwrap();
    let cen = Site::central(root.path(), "CEN");
    let p01 = Site::child(root.path(), "P01", "primary", &cen, &[]);
    let _agent = p01.add_agent("ws1", &[]);
    let source = root.path().join("src");
    make_tree(&source, 2, 1_000, 5);
    cen.create_package("app", &source);
    cen.json(&[
        "collection",
        "create",
        "ws1",
        "--machines",
        "ws1",
        "--allow-unknown",
    ]);
    let id = cen.create_job("app", "ws1", "true", &[])["id"]
        .as_u64()
        .unwrap();
    let status = cen.wait_job(id, Duration::from_secs(60), |status| {
        status["outcome"] == "complete"
    });
    assert_eq!(status["workstations"][0]["state"], "complete", "{status:#}");
    let signed = cen
        .history("app")
        .into_iter()
        .find(|m| m["source"] == "P01/agent/ws1" && m["kind"] == "job_completed")
        .expect("the agent's result at the central site");
    assert!(signed["signature"].as_str().is_some(), "{signed:#}");

    let forged = |signature: Option<&str>| {
        let mut message = serde_json::json!({"source": "P01/agent/ws1", "seq": 1000,
            "at_ms": 1, "kind": "job_failed", "job": id, "package": "app", "attempt": 2,
            "exit_code": 1, "reason": "forged", "output_tail": ""});
        if let Some(signature) = signature {
            message["signature"] = signature.into();
        }
        relay_as(&p01, &cen, message)
    };
    let err = forged(None).unwrap_err();
    assert!(
        err.starts_with("403") && err.contains("not signed"),
        "{err}"
    );
    let err = forged(Some(&"ab".repeat(64))).unwrap_err();
    assert!(
        err.starts_with("403") && err.contains("did not sign"),
        "{err}"
    );
    // A signature copied from the agent's real message does not fit another.
    let err = forged(signed["signature"].as_str()).unwrap_err();
    assert!(err.starts_with("403"), "{err}");
    let status = cen.job(id);
    assert_eq!(status["outcome"], "complete", "{status:#}");
    assert_eq!(status["workstations"][0]["state"], "complete", "{status:#}");
}

/// Issue 12, TUF's freeze attack: a site that keeps serving yesterday's
/// instructions (here: cut off from the central site, which is stopped)
/// could withhold a cancellation or a newer revision for ever. The central
/// site signs a timestamp with an expiry every quarter of its validity;
/// every site passes on the newest it holds; an agent whose newest one has
/// expired starts no job, reports it held with the reason, and starts it
/// once a current timestamp arrives.
#[test]
fn a_frozen_site_is_detected_and_its_agents_start_nothing() {
    let root = tempfile::tempdir().unwrap();
    let mut cen = Site::central(root.path(), "CEN");
    // Refused below four agent poll intervals (60 s by default).
    let refused = cen.fails(&["site", "settings", "--timestamp-validity", "12s"]);
    assert!(refused.contains("four agent poll intervals"), "{refused}");
    let settings = cen.json(&[
        "site",
        "settings",
        "--agent-poll-interval",
        "2s",
        "--timestamp-validity",
        "12s",
    ]);
    assert_eq!(settings["timestamp_validity_ms"], 12_000, "{settings:#}");
    let p01 = Site::child(root.path(), "P01", "primary", &cen, &[]);
    // Only the central site signs, so only it sets the validity.
    let refused = p01.fails(&["site", "settings", "--timestamp-validity", "1h"]);
    assert!(refused.contains("central site"), "{refused}");
    p01.json(&["site", "settings", "--agent-poll-interval", "1s"]);
    let _agent = p01.add_agent("ws1", &[]);
    let source = root.path().join("src");
    make_tree(&source, 2, 10_000, 21);
    cen.create_package("tool", &source);
    cen.json(&[
        "collection",
        "create",
        "ws1",
        "--machines",
        "ws1",
        "--allow-unknown",
    ]);

    // Current: P01 holds a timestamp signed seconds ago, passed on from
    // the central site, and the job runs.
    let queues = p01.queues();
    let expires = queues["timestamp"]["expires_at_ms"].as_i64().unwrap();
    assert!(expires > cascade_store::now_ms(), "{queues:#}");
    let first = root.path().join("first-ran");
    let id = cen.create_job("tool", "ws1", &format!("touch {}", first.display()), &[])["id"]
        .as_u64()
        .unwrap();
    cen.wait_job(id, Duration::from_secs(60), |status| {
        status["outcome"] == "complete"
    });
    assert!(first.exists());

    // A job offered in 20 s; once the agent holds it, the central site
    // goes away and P01 serves the last timestamp it has.
    let second = root.path().join("second-ran");
    let id = cen.create_job(
        "tool",
        "ws1",
        &format!("touch {}", second.display()),
        &["--offer-at", "in 20s"],
    )["id"]
        .as_u64()
        .unwrap();
    wait_until_known(&p01, &id.to_string());
    p01.wait_job(id, Duration::from_secs(30), |status| {
        workstation(status, "ws1").is_some_and(|ws| ws["state"] == "offered")
    });
    cen.process.kill();
    let status = p01.wait_job(id, Duration::from_secs(60), |status| {
        workstation(status, "ws1").is_some_and(|ws| ws["state"] == "held")
    });
    let ws = workstation(&status, "ws1").unwrap();
    let reason = ws["reason"].as_str().unwrap();
    assert!(
        reason.contains("expired") && reason.contains("frozen or cut off"),
        "{ws:#}"
    );
    assert_eq!(ws["attempts"], 0, "{ws:#}");
    assert!(!second.exists(), "a job started on an expired timestamp");
    let text = p01.cmd(&["site", "queues"]).output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("EXPIRED"), "{text}");
    let text = p01
        .cmd(&["job", "status", &id.to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("held until a current central timestamp arrives"),
        "{text}"
    );
    std::thread::sleep(Duration::from_secs(3));
    assert!(!second.exists(), "a job started on an expired timestamp");

    // The central site comes back: a current timestamp flows down, the job
    // runs, and the central site sees the hold and the completion.
    cen.restart();
    let status = cen.wait_job(id, Duration::from_secs(90), |status| {
        status["outcome"] == "complete"
    });
    assert!(second.exists(), "{status:#}");
    let held = cen
        .history("tool")
        .into_iter()
        .filter(|message| message["kind"] == "job_held")
        .count();
    assert_eq!(held, 1, "reported once, and relayed up");
}

/// Issue 12: a site still in touch with its parent could pass on current
/// timestamps while withholding a cancellation, and its workstations would
/// run a job the central site canceled. The timestamp names every job
/// canceled and not expired, so the agent stops it whatever its site says.
#[test]
fn a_cancellation_withheld_by_a_site_still_stops_the_job() {
    let root = tempfile::tempdir().unwrap();
    let cen = Site::central(root.path(), "CEN");
    let p01 = Site::child(root.path(), "P01", "primary", &cen, &[]);
    p01.json(&["site", "settings", "--agent-poll-interval", "1s"]);
    let mut agent = p01.add_agent("ws1", &[]);
    let source = root.path().join("src");
    make_tree(&source, 2, 10_000, 22);
    cen.create_package("tool", &source);
    cen.json(&[
        "collection",
        "create",
        "ws1",
        "--machines",
        "ws1",
        "--allow-unknown",
    ]);
    let ran = root.path().join("ran");
    let id = cen.create_job(
        "tool",
        "ws1",
        &format!("touch {}", ran.display()),
        &["--offer-at", "in 15s"],
    )["id"]
        .as_u64()
        .unwrap();
    let id_text = id.to_string();
    wait_until_known(&p01, &id_text);
    p01.wait_job(id, Duration::from_secs(30), |status| {
        workstation(status, "ws1").is_some_and(|ws| ws["state"] == "offered")
    });
    // The workstation is away while the job is canceled; P01 then forgets
    // the cancellation and offers the job again, as a compromised site
    // withholding it would.
    agent.process.kill();
    cen.json(&["job", "cancel", &id_text]);
    p01.wait_job(id, Duration::from_secs(30), |status| {
        status["job"]["state"] == "canceled"
    });
    tamper(
        &p01,
        &[(
            "UPDATE jobs SET canceled_at_ms = NULL, cancel_intent = NULL WHERE id = ?",
            vec![id_text.clone()],
        )],
    );
    assert_ne!(p01.job(id)["job"]["state"], "canceled");
    // Past the site's shared-policy cache (1 s), which still holds the
    // cancellation.
    std::thread::sleep(Duration::from_secs(2));
    agent.process.start();
    let status = p01.wait_job(id, Duration::from_secs(60), |status| {
        workstation(status, "ws1").is_some_and(|ws| ws["state"] == "stopped")
    });
    let ws = workstation(&status, "ws1").unwrap();
    assert!(
        ws["reason"].as_str().unwrap().contains("canceled"),
        "{ws:#}"
    );
    // The central site sees it too.
    cen.wait_job(id, Duration::from_secs(30), |status| {
        workstation(status, "ws1").is_some_and(|ws| ws["state"] == "stopped")
    });
    std::thread::sleep(Duration::from_secs(2));
    assert!(!ran.exists(), "a job canceled at the central site ran");
}
