//! How a run on a workstation ends (issue 10): sources down for a while are
//! waited for, a crash mid-run is an interrupted attempt, cancel stops the
//! command, every run keeps its output tail, downloads show their bytes,
//! and reachability follows the agent's polls.

use crate::harness::*;
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn job_id(job: &Value) -> u64 {
    job["id"]
        .as_u64()
        .unwrap_or_else(|| panic!("no job id: {job:#}"))
}

/// Waits until `check` holds for `agent`'s row of job `id`.
fn wait_row(site: &Site, id: u64, agent: &str, secs: u64, check: impl Fn(&Value) -> bool) -> Value {
    let status = site.wait_job(id, Duration::from_secs(secs), |status| {
        check(ws_row(status, agent))
    });
    ws_row(&status, agent).clone()
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Chunk files held in an agent's chunk store.
fn chunk_count(agent: &Agent) -> usize {
    stored_chunks(&agent.dir)
}

fn wait_until(what: &str, secs: u64, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Issue 10: a site server killed (-9) for two seconds while its
/// workstation downloads from it (no DP holds the content) no longer fails
/// the run: the agent waits for its source with backoff, the job completes
/// and the command ran once.
#[test]
fn site_down_during_download_is_waited_for_not_a_failed_run() {
    let root = tempfile::tempdir().unwrap();
    let mut site = Site::start(root.path());
    site.json(&["site", "settings", "--agent-poll-interval", "2s"]);
    let source = root.path().join("src");
    make_tree(&source, 2, 40 * 1024 * 1024, 21);
    site.create_package("big", &source);
    let ws1 = site.add_agent("ws1", &[]);
    site.json(&["collection", "create", "one", "--machines", "ws1"]);
    let marker = root.path().join("ran");
    let command = format!(
        "test -f big.bin && echo $CASCADE_ATTEMPT >> {}",
        marker.display()
    );
    let id = job_id(&site.create_job("big", "one", &command, &[]));
    wait_until("the download to start", 60, || chunk_count(&ws1) >= 5);
    site.process.kill();
    assert!(
        !ws1.dir.join("jobs").join(id.to_string()).exists(),
        "the download finished before the site went down"
    );
    std::thread::sleep(Duration::from_secs(2));
    site.restart();
    let ws = wait_row(&site, id, "ws1", 120, |ws| {
        matches!(ws["state"].as_str(), Some("complete" | "failed"))
    });
    assert_eq!(ws["state"], "complete", "{ws:#}");
    assert_eq!(ws["attempts"], 1, "{ws:#}");
    assert_eq!(
        lines(&marker),
        ["1"],
        "the command did not run exactly once"
    );
}

/// Issue 10: a workstation killed (-9) while its command runs reports the
/// attempt as interrupted when it starts again, and with `--retries 0`
/// never runs the command again (it did, up to four times); with
/// `--retries 1` it reruns once, as attempt 2.
#[test]
fn agent_killed_mid_run_is_interrupted_and_reruns_only_as_retries_allow() {
    let root = tempfile::tempdir().unwrap();
    let site = Site::start(root.path());
    site.json(&["site", "settings", "--agent-poll-interval", "2s"]);
    let source = root.path().join("src");
    make_tree(&source, 2, 10_000, 22);
    site.create_package("tool", &source);
    let mut ws1 = site.add_agent("ws1", &[]);
    let mut ws2 = site.add_agent("ws2", &[]);
    site.json(&["collection", "create", "one", "--machines", "ws1"]);
    site.json(&["collection", "create", "two", "--machines", "ws2"]);
    let marker1 = root.path().join("ran1");
    let marker2 = root.path().join("ran2");
    let command = |marker: &Path| {
        format!(
            "echo $CASCADE_ATTEMPT >> {}; test $CASCADE_ATTEMPT = 2 || sleep 30",
            marker.display()
        )
    };
    let no_retry = job_id(&site.create_job("tool", "one", &command(&marker1), &["--retries", "0"]));
    let one_retry = job_id(&site.create_job(
        "tool",
        "two",
        &command(&marker2),
        &["--retries", "1", "--retry-delay", "1s"],
    ));
    wait_row(&site, no_retry, "ws1", 60, |ws| ws["state"] == "running");
    wait_row(&site, one_retry, "ws2", 60, |ws| ws["state"] == "running");
    wait_until("both commands to start", 30, || {
        lines(&marker1).len() == 1 && lines(&marker2).len() == 1
    });
    ws1.process.kill();
    ws2.process.kill();
    ws1.process = Process::spawn(
        &["agent", "run", ws1.dir.to_str().unwrap()],
        &root.path().join("ws1-again.log"),
    );
    ws2.process = Process::spawn(
        &["agent", "run", ws2.dir.to_str().unwrap()],
        &root.path().join("ws2-again.log"),
    );

    let ws = wait_row(&site, no_retry, "ws1", 60, |ws| {
        ws["state"] == "interrupted"
    });
    assert_eq!(ws["attempts"], 1, "{ws:#}");
    assert!(
        ws["reason"].as_str().unwrap().contains("interrupted"),
        "{ws:#}"
    );
    let ws = wait_row(&site, one_retry, "ws2", 60, |ws| ws["state"] == "complete");
    assert_eq!(ws["attempts"], 2, "{ws:#}");
    assert_eq!(lines(&marker2), ["1", "2"]);
    // Time enough for a rerun that must not happen.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        lines(&marker1),
        ["1"],
        "the command ran again with --retries 0"
    );
    let status = site.job(no_retry);
    assert_eq!(ws_row(&status, "ws1")["state"], "interrupted");
    assert_eq!(status["outcome"], "failed", "{status:#}");
    let kinds: Vec<Value> = site
        .history("tool")
        .into_iter()
        .filter(|m| m["kind"] == "job_interrupted")
        .collect();
    assert_eq!(kinds.len(), 2, "{kinds:#?}");
    let out = run_ok(&mut site.cmd(&["job", "status", &no_retry.to_string()]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("interrupted"));
}

/// Whether a process runs whose command line is exactly `args`.
fn process_running(args: &[&str]) -> bool {
    let wanted: Vec<u8> = args
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|entry| {
            std::fs::read(entry.path().join("cmdline")).is_ok_and(|cmdline| cmdline == wanted)
        })
}

/// Issue 10: `job cancel` stops a running command (its process group gets
/// SIGTERM, then SIGKILL) and the workstation reaches a final state
/// (`stopped`, with the output so far) instead of `canceled, in progress`
/// forever; a run in progress when its job expires finishes.
#[test]
fn cancel_stops_the_running_command_and_expiry_lets_it_finish() {
    let root = tempfile::tempdir().unwrap();
    let site = Site::start(root.path());
    site.json(&["site", "settings", "--agent-poll-interval", "2s"]);
    let source = root.path().join("src");
    make_tree(&source, 2, 10_000, 23);
    site.create_package("tool", &source);
    let _ws1 = site.add_agent("ws1", &[]);
    let _ws2 = site.add_agent("ws2", &[]);
    site.json(&["collection", "create", "one", "--machines", "ws1"]);
    site.json(&["collection", "create", "two", "--machines", "ws2"]);
    // The shell ignores SIGTERM: the group's SIGKILL must end it.
    let canceled = job_id(&site.create_job(
        "tool",
        "one",
        "trap '' TERM; echo started; sleep 67; echo finished",
        &[],
    ));
    let expiring = job_id(&site.create_job(
        "tool",
        "two",
        "sleep 4; echo finished after expiry",
        &["--expires-in", "2s"],
    ));
    wait_row(&site, canceled, "ws1", 60, |ws| ws["state"] == "running");
    site.json(&["job", "cancel", &canceled.to_string()]);
    let ws = wait_row(&site, canceled, "ws1", 30, |ws| ws["state"] == "stopped");
    assert!(ws["canceled_at_ms"].as_i64().is_some(), "{ws:#}");
    let tail = ws["output_tail"].as_str().unwrap_or_default();
    assert!(
        tail.contains("started") && !tail.contains("finished"),
        "{ws:#}"
    );
    assert!(
        ws["reason"].as_str().unwrap().contains("canceled"),
        "{ws:#}"
    );
    assert!(
        !process_running(&["sleep", "67"]),
        "the command outlived its stop"
    );

    let ws = wait_row(&site, expiring, "ws2", 60, |ws| {
        matches!(
            ws["state"].as_str(),
            Some("complete" | "failed" | "stopped")
        )
    });
    assert_eq!(ws["state"], "complete", "{ws:#}");
    assert!(ws["expired_at_ms"].as_i64().is_some(), "{ws:#}");
    assert!(
        ws["output_tail"]
            .as_str()
            .unwrap()
            .contains("finished after expiry"),
        "{ws:#}"
    );
}

/// Issue 10: `job status --machine` promised the output tail but showed
/// `null` on success and nothing on timeout: every run keeps it.
#[test]
fn output_tail_is_kept_on_success_and_on_timeout() {
    let root = tempfile::tempdir().unwrap();
    let site = Site::start(root.path());
    site.json(&["site", "settings", "--agent-poll-interval", "2s"]);
    let source = root.path().join("src");
    make_tree(&source, 2, 10_000, 24);
    site.create_package("tool", &source);
    let _ws1 = site.add_agent("ws1", &[]);
    site.json(&["collection", "create", "one", "--machines", "ws1"]);
    let succeeds = job_id(&site.create_job("tool", "one", "echo hello from success", &[]));
    let times_out = job_id(&site.create_job(
        "tool",
        "one",
        "echo before the timeout; sleep 60",
        &["--timeout", "2s"],
    ));
    let ws = wait_row(&site, succeeds, "ws1", 60, |ws| ws["state"] == "complete");
    assert!(
        ws["output_tail"]
            .as_str()
            .is_some_and(|tail| tail.contains("hello from success")),
        "{ws:#}"
    );
    let ws = wait_row(&site, times_out, "ws1", 60, |ws| ws["state"] == "failed");
    assert!(ws["reason"].as_str().unwrap().contains("timeout"), "{ws:#}");
    assert!(
        ws["output_tail"]
            .as_str()
            .is_some_and(|tail| tail.contains("before the timeout")),
        "{ws:#}"
    );
    let out = run_ok(&mut site.cmd(&["job", "status", &times_out.to_string(), "--machine", "ws1"]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("before the timeout"));
}

/// Issue 10: a workstation's download showed `downloading` with nothing
/// more: the status carries bytes done and the package's size (JSON and
/// text), and progress reports end at the whole package.
#[test]
fn download_progress_shows_bytes_of_the_package() {
    let root = tempfile::tempdir().unwrap();
    let site = Site::start(root.path());
    site.json(&["site", "settings", "--agent-poll-interval", "2s"]);
    let dp = site.add_dp("dp1");
    let source = root.path().join("src");
    make_tree(&source, 2, 40 * 1024 * 1024, 25);
    let created = site.create_package("big", &source);
    let total = created["total_size"].as_u64().unwrap();
    site.json(&["package", "distribute", "big", "--dp", "dp1"]);
    site.wait_installed("big", &[&dp], 1, Duration::from_secs(60));
    let ws1 = site.add_agent("ws1", &[]);
    site.json(&["collection", "create", "one", "--machines", "ws1"]);
    let id = job_id(&site.create_job("big", "one", "test -f big.bin", &[]));
    wait_until("the download to start", 60, || chunk_count(&ws1) >= 5);
    // Freeze the DP: the download stalls mid-way, the site still answers.
    let pid = dp.process.pid().expect("the dp runs");
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, libc::SIGSTOP);
    }
    let ws = wait_row(&site, id, "ws1", 30, |ws| ws["state"] == "downloading");
    let out = run_ok(&mut site.cmd(&["job", "status", &id.to_string()]));
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, libc::SIGCONT);
    }
    assert_eq!(ws["bytes_total"].as_u64(), Some(total), "{ws:#}");
    assert!(
        ws["bytes_done"].as_u64().is_some_and(|done| done < total),
        "{ws:#}"
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("downloading ") && text.contains("B/40."),
        "{text}"
    );

    wait_row(&site, id, "ws1", 120, |ws| ws["state"] == "complete");
    let progress: Vec<(u64, u64)> = site
        .history("big")
        .into_iter()
        .filter(|m| m["kind"] == "job_downloading")
        .map(|m| {
            (
                m["bytes_done"].as_u64().unwrap(),
                m["bytes_total"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(progress.iter().all(|(_, t)| *t == total), "{progress:?}");
    assert!(
        progress.windows(2).all(|w| w[0].0 <= w[1].0),
        "{progress:?}"
    );
    assert_eq!(progress.last(), Some(&(total, total)), "{progress:?}");
}

fn reachability(site: &Site, name: &str) -> String {
    let agents = site.json(&["agent", "list"]);
    agents
        .as_array()
        .unwrap()
        .iter()
        .find(|agent| agent["agent"] == name)
        .unwrap_or_else(|| panic!("no agent {name}: {agents:#}"))["reachability"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Issue 10: an agent showed `reachable` right after `agent init` (it never
/// polled) and for three poll intervals (3 minutes) after it stopped. Now it
/// is `never` until it polls, and a stopped or killed agent (its held poll
/// closed) is unreachable within seconds at the default 60 s interval.
#[test]
fn agent_reachable_only_while_it_polls() {
    let root = tempfile::tempdir().unwrap();
    let site = Site::start(root.path());
    let dir = site.init_agent("ws1", &[]);
    assert_eq!(reachability(&site, "ws1"), "never");
    let mut ws2 = site.add_agent("ws2", &[]);
    let mut ws1 = Agent {
        name: "ws1".into(),
        process: Process::spawn(
            &["agent", "run", dir.to_str().unwrap()],
            &root.path().join("ws1.log"),
        ),
        dir,
    };
    wait_until("both agents to poll", 30, || {
        reachability(&site, "ws1") == "reachable" && reachability(&site, "ws2") == "reachable"
    });
    // Still reachable while they hold their polls.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(reachability(&site, "ws1"), "reachable");
    let stopped_at = Instant::now();
    ws1.process.kill();
    ws2.process.stop();
    wait_until("both agents to be unreachable", 20, || {
        reachability(&site, "ws1") == "unreachable" && reachability(&site, "ws2") == "unreachable"
    });
    assert!(stopped_at.elapsed() < Duration::from_secs(15));
}

/// Issue 13: a workstation kept every chunk it fetched and every job's
/// directory for good (2.1 GiB after one 1 GiB job). With `--cache-size 0`
/// the chunks of a download interrupted by its site going down are kept
/// while the job waits (the agent tidies its disk meanwhile), none is left
/// once the job is done (their packs compacted away), and the job's
/// directory goes once the job is no longer offered.
#[test]
fn the_workstation_keeps_what_open_jobs_need_and_no_more() {
    let root = tempfile::tempdir().unwrap();
    let mut site = Site::start(root.path());
    site.json(&["site", "settings", "--agent-poll-interval", "2s"]);
    let source = root.path().join("src");
    make_tree(&source, 2, 40 * 1024 * 1024, 23);
    site.create_package("big", &source);
    let dir = root.path().join("agent-ws1");
    run_ok(Command::new(BIN).args(["agent", "init"]).arg(&dir).args([
        "--site",
        &site.url,
        "--join-token",
        &site.join_token,
        "--name",
        "ws1",
        "--cache-size",
        "0",
    ]));
    let ws1 = Agent {
        name: "ws1".into(),
        process: Process::spawn(
            &["agent", "run", dir.to_str().unwrap()],
            &root.path().join("agent-ws1.log"),
        ),
        dir,
    };
    site.json(&["collection", "create", "one", "--machines", "ws1"]);
    let id = job_id(&site.create_job("big", "one", "test -f big.bin", &[]));
    wait_until("the download to start", 60, || chunk_count(&ws1) >= 5);
    site.process.kill();
    let held = chunk_count(&ws1);
    // Idle, waiting for its source: it tidies (every 2 s at most), and
    // keeps what the open job needs.
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        chunk_count(&ws1) >= held,
        "chunks of an open job were removed"
    );
    site.restart();
    wait_row(&site, id, "ws1", 120, |ws| ws["state"] == "complete");
    let job_dir = ws1.dir.join("jobs").join(id.to_string());
    wait_until("the cache to be emptied", 30, || chunk_count(&ws1) == 0);
    // Emptied on disk too: the packs of removed chunks are compacted away.
    wait_until("the packs to be compacted", 30, || {
        store_disk(&ws1.dir) < 64 * 1024
    });
    assert!(job_dir.join("big.bin").is_file(), "still offered: kept");
    site.json(&["job", "cancel", &id.to_string()]);
    wait_until("the job's directory to go", 30, || !job_dir.exists());
}
