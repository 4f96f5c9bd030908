//! Jobs reach the agents of their collection, are withdrawn on cancel and at
//! expiry, and the status keeps each workstation's last state beside the
//! expired and canceled flags (Q152229).

use crate::harness::*;
use reqwest::Method;
use std::time::{Duration, Instant};

fn wait_for(site: &Site, what: &str, mut check: impl FnMut(&Site) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check(site) {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn offers(agent: &Agent) -> Vec<u64> {
    let out = run_ok(
        std::process::Command::new(BIN)
            .args(["-o", "json", "agent", "offers"])
            .arg(&agent.dir),
    );
    let offers: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    offers
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_u64().unwrap())
        .collect()
}

/// Seed 003 (Q152229): of five workstations three succeed, one fails and one
/// is offline; after expiry each keeps its last state, marked expired, and
/// the offline one, started after expiry, never runs the job.
#[test]
fn q152229_expiry_keeps_last_status() {
    let root = tempfile::tempdir().unwrap();
    let site = Site::start(root.path());
    site.json(&["site", "settings", "--agent-poll-interval", "2s"]);
    let dp = site.add_dp("dp1");
    let source = root.path().join("src");
    make_tree(&source, 3, 100_000, 11);
    site.create_package("tool", &source);
    let agents: Vec<Agent> = (1..=4)
        .map(|i| site.add_agent(&format!("ws{i}"), &["role=kiosk"]))
        .collect();
    let offline = site.init_agent("ws5", &["role=kiosk"]);
    let office = site.add_agent("office1", &["role=office"]);
    site.json(&[
        "collection",
        "create",
        "kiosks",
        "--rule",
        "tag.role = kiosk",
    ]);

    // ws4 fails; the others succeed after checking their files arrived.
    let job = site.json(&[
        "job",
        "create",
        "--package",
        "tool",
        "--collection",
        "kiosks",
        "--command",
        "test -f big.bin && echo ran on $CASCADE_AGENT && test $CASCADE_AGENT != ws4",
        "--expires-in",
        "8s",
    ]);
    let id = job["id"].as_u64().unwrap().to_string();
    wait_for(&site, "three complete and one failed", |site| {
        let status = site.json(&["job", "status", &id]);
        status["counts"]["complete"] == 3 && status["counts"]["failed"] == 1
    });
    let status = site.json(&["job", "status", &id]);
    assert_eq!(ws_row(&status, "ws4")["exit_code"], 1);
    assert!(ws_row(&status, "ws4")["output_tail"]
        .as_str()
        .unwrap()
        .contains("ran on ws4"));
    assert_eq!(ws_row(&status, "ws1")["exit_code"], 0);
    assert_eq!(ws_row(&status, "ws5")["state"], "none");
    assert!(status["workstations"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["agent"] != "office1"));
    assert_eq!(status["distribution"][0]["state"], "installed");
    let _ = &dp;

    // After expiry every row keeps its last state, marked expired.
    wait_for(&site, "expiry", |site| {
        site.json(&["job", "status", &id])["workstations"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["expired_at_ms"].as_i64().is_some())
    });
    let status = site.json(&["job", "status", &id]);
    for (agent, state) in [
        ("ws1", "complete"),
        ("ws2", "complete"),
        ("ws3", "complete"),
        ("ws4", "failed"),
        ("ws5", "none"),
    ] {
        assert_eq!(ws_row(&status, agent)["state"], state, "{status:#}");
    }
    assert_eq!(status["counts"]["complete"], 3);
    assert_eq!(site.json(&["job", "list"])[0]["state"], "expired");
    // The offline workstation is shown unreachable beside its state.
    assert!(
        ws_row(&status, "ws5")["unreachable_since_ms"]
            .as_i64()
            .is_some(),
        "{status:#}"
    );
    assert!(
        ws_row(&status, "ws1")["unreachable_since_ms"].is_null(),
        "{status:#}"
    );

    // The offline agent, started after expiry, never runs the job.
    let ws5 = Agent {
        name: "ws5".into(),
        dir: offline.clone(),
        process: Process::spawn(
            &["agent", "run", offline.to_str().unwrap()],
            &root.path().join("ws5.log"),
        ),
    };
    std::thread::sleep(Duration::from_secs(3));
    assert!(offers(&ws5).is_empty());
    assert!(
        !offline.join("jobs").join(&id).exists(),
        "the expired job ran"
    );
    assert_eq!(
        ws_row(&site.json(&["job", "status", &id]), "ws5")["state"],
        "none"
    );

    // A restarted agent never runs a completed job again.
    let mut ws1 = agents.into_iter().next().unwrap();
    // Expired, so no longer offered: the agent removed the job's directory
    // (issue 13).
    let marker = ws1.dir.join("jobs").join(&id);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while marker.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the expired job's directory stayed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    ws1.process.kill();
    let log = root.path().join("ws1-again.log");
    ws1.process = Process::spawn(&["agent", "run", ws1.dir.to_str().unwrap()], &log);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !marker.exists(),
        "a completed job ran again after a restart"
    );

    // An agent may report only about jobs offered to it.
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(office.dir.join("agent.json")).unwrap()).unwrap();
    let body = serde_json::json!({"messages": [{"seq": 1, "at_ms": 1, "kind": "job_completed",
        "job": id.parse::<u64>().unwrap(), "package": "tool", "attempt": 1, "exit_code": 0}]});
    let err = http(
        Method::POST,
        &format!("{}/api/v1/status", site.url),
        config["credential"].as_str(),
        Some(body.to_string().into_bytes()),
        &[],
    )
    .unwrap_err();
    assert!(err.starts_with("403"), "{err}");
}

/// Optional jobs run only when requested; canceled jobs never run; failures
/// retry and then fail with their exit code and output; a hanging command
/// ends failed (timeout).
#[test]
fn optional_cancel_retry_and_timeout() {
    let root = tempfile::tempdir().unwrap();
    let site = Site::start(root.path());
    site.json(&["site", "settings", "--agent-poll-interval", "2s"]);
    let _dp = site.add_dp("dp1");
    let source = root.path().join("src");
    make_tree(&source, 2, 10_000, 12);
    site.create_package("tool", &source);
    let ws1 = site.add_agent("ws1", &["role=kiosk"]);
    site.json(&["collection", "create", "one", "--machines", "ws1"]);
    let create = |extra: &[&str]| -> String {
        let mut args = vec!["job", "create", "--package", "tool", "--collection", "one"];
        args.extend_from_slice(extra);
        site.json(&args)["id"].as_u64().unwrap().to_string()
    };

    let optional = create(&["--command", "true", "--optional"]);
    let canceled = create(&["--command", "true", "--optional"]);
    let retried = create(&[
        "--command",
        "echo try $CASCADE_ATTEMPT; exit 3",
        "--retries",
        "2",
        "--retry-delay",
        "1s",
    ]);
    let hangs = create(&["--command", "sleep 600", "--timeout", "2s"]);

    wait_for(&site, "retries to end", |site| {
        site.json(&["job", "status", &retried])["counts"]["failed"] == 1
    });
    let row_retried = site.json(&["job", "status", &retried]);
    let ws = ws_row(&row_retried, "ws1");
    assert_eq!(ws["attempts"], 3);
    assert_eq!(ws["exit_code"], 3);
    assert!(
        ws["output_tail"].as_str().unwrap().contains("try 3"),
        "{ws:#}"
    );
    let history = site.history("tool");
    assert!(
        history.iter().any(|m| m["kind"] == "job_retrying"),
        "no retrying in between"
    );
    let out = run_ok(&mut site.cmd(&["job", "status", &retried, "--machine", "ws1"]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("exit code: 3") && text.contains("try 3"),
        "{text}"
    );
    let err = site.fails(&["job", "status", &retried, "--machine", "nobody"]);
    assert!(err.contains("not targeted"), "{err}");

    // `--watch` returns once the job is finished, exiting 3 since it failed.
    let out = site
        .cmd(&["-o", "json", "job", "status", &hangs, "--watch"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["counts"]["failed"], 1, "{status:#}");
    assert!(
        ws_row(&status, "ws1")["reason"]
            .as_str()
            .unwrap()
            .contains("timeout"),
        "{status:#}"
    );

    // The optional job waits until requested.
    assert_eq!(
        ws_row(&site.json(&["job", "status", &optional]), "ws1")["state"],
        "offered"
    );
    site.json(&["job", "cancel", &canceled]);
    wait_for(&site, "the canceled offer withdrawn", |_| {
        !offers(&ws1).contains(&canceled.parse().unwrap())
    });
    let out = std::process::Command::new(BIN)
        .args(["agent", "run-offer"])
        .arg(&ws1.dir)
        .arg(&canceled)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("withdrawn"));
    run_ok(
        std::process::Command::new(BIN)
            .args(["agent", "run-offer"])
            .arg(&ws1.dir)
            .arg(&optional),
    );
    wait_for(&site, "the requested optional job", |site| {
        site.json(&["job", "status", &optional])["counts"]["complete"] == 1
    });
    // Requesting it again, or an unknown job, is refused on the workstation.
    for (job, expected) in [
        (optional.as_str(), "already ran"),
        ("999", "no offer of job 999"),
    ] {
        let out = std::process::Command::new(BIN)
            .args(["agent", "run-offer"])
            .arg(&ws1.dir)
            .arg(job)
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(expected),
            "{out:?}"
        );
    }
    // Jobs that could never run are refused when created.
    for (extra, expected) in [
        (
            &["--command", "true", "--expires-in", "0s"][..],
            "expire before it is offered",
        ),
        (&["--command", " "][..], "the command must be"),
        (
            &["--command", "true", "--version", "9"][..],
            "unknown version",
        ),
    ] {
        let mut args = vec!["job", "create", "--package", "tool", "--collection", "one"];
        args.extend_from_slice(extra);
        let err = site.fails(&args);
        assert!(err.contains(expected), "{err}");
    }
    let status = site.json(&["job", "status", &canceled]);
    assert_eq!(
        ws_row(&status, "ws1")["state"],
        "offered",
        "a canceled job ran"
    );
    assert!(ws_row(&status, "ws1")["canceled_at_ms"].as_i64().is_some());
}

/// Content tampered on one DP is refused, the refusal is reported, and the
/// job completes from another DP with the right bytes.
#[test]
fn tampered_content_on_one_dp_is_refused_and_the_job_completes_from_another() {
    let root = tempfile::tempdir().unwrap();
    let site = Site::start(root.path());
    site.json(&["site", "settings", "--agent-poll-interval", "2s"]);
    let dp1 = site.add_dp("dp1");
    let dp2 = site.add_dp("dp2");
    let source = root.path().join("src");
    make_tree(&source, 2, 1024 * 1024, 13);
    site.create_package("tool", &source);
    site.json(&["package", "distribute", "tool", "--all-dps"]);
    site.wait_installed("tool", &[&dp1, &dp2], 1, Duration::from_secs(30));
    let big = std::fs::read(source.join("big.bin")).unwrap();
    corrupt_chunk(&dp1.dir, &big);

    let ws1 = site.add_agent("ws1", &[]);
    site.json(&["collection", "create", "one", "--machines", "ws1"]);
    let id = site.json(&[
        "job",
        "create",
        "--package",
        "tool",
        "--collection",
        "one",
        "--command",
        "test -f big.bin",
    ])["id"]
        .as_u64()
        .unwrap()
        .to_string();
    wait_for(&site, "the job to complete", |site| {
        site.json(&["job", "status", &id])["counts"]["complete"] == 1
    });
    let got = std::fs::read(ws1.dir.join("jobs").join(&id).join("big.bin")).unwrap();
    assert!(got == big, "the workstation holds wrong bytes");
    let refused: Vec<_> = site
        .history("tool")
        .into_iter()
        .filter(|m| m["kind"] == "job_content_refused")
        .collect();
    assert!(
        refused.iter().any(|m| m["dp"] == dp1.url.as_str()),
        "no refusal of dp1 reported: {refused:#?}"
    );
}

/// An agent killed mid-download resumes after restart, fetching only the
/// chunks it did not hold yet, and completes.
#[test]
fn agent_killed_mid_download_resumes() {
    let root = tempfile::tempdir().unwrap();
    let site = Site::start(root.path());
    site.json(&["site", "settings", "--agent-poll-interval", "2s"]);
    let dp = site.add_dp("dp1");
    let source = root.path().join("src");
    make_tree(&source, 2, 60 * 1024 * 1024, 14);
    let created = site.create_package("big", &source);
    let total = created["total_size"].as_u64().unwrap();
    site.json(&["package", "distribute", "big", "--dp", "dp1"]);
    site.wait_installed("big", &[&dp], 1, Duration::from_secs(60));
    let served_before = dp.info()["counters"]["bytes_served"].as_u64().unwrap();

    let mut ws1 = site.add_agent("ws1", &[]);
    site.json(&["collection", "create", "one", "--machines", "ws1"]);
    let id = site.json(&[
        "job",
        "create",
        "--package",
        "big",
        "--collection",
        "one",
        "--command",
        "test -f big.bin",
    ])["id"]
        .as_u64()
        .unwrap()
        .to_string();
    // Kill as soon as some chunks arrived on the workstation.
    let deadline = Instant::now() + Duration::from_secs(30);
    while stored_chunks(&ws1.dir) < 5 {
        assert!(Instant::now() < deadline, "the download never started");
        std::thread::sleep(Duration::from_millis(5));
    }
    ws1.process.kill();
    let held_at_kill = stored_chunks(&ws1.dir);
    assert!(
        !ws1.dir.join("jobs").join(&id).exists(),
        "the download finished before the kill"
    );
    let log = root.path().join("ws1-again.log");
    ws1.process = Process::spawn(&["agent", "run", ws1.dir.to_str().unwrap()], &log);
    wait_for(&site, "the job to complete", |site| {
        site.json(&["job", "status", &id])["counts"]["complete"] == 1
    });
    assert!(held_at_kill > 0);
    let served = dp.info()["counters"]["bytes_served"].as_u64().unwrap() - served_before;
    // Resumed, not restarted: at most a chunk or two fetched twice.
    assert!(
        served <= total + 512 * 1024,
        "served {served} bytes for a {total}-byte package"
    );
}
