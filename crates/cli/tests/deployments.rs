//! Deployments and lifecycle (issue 14), through a three-level hierarchy of
//! real processes: jobs are made at the central site and run on a
//! secondary site's workstation, and the central site's `job status` shows
//! what happened there.

use crate::harness::*;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

/// The hierarchy every test here runs in: CEN → P01 → S01, with `agents`
/// enrolled and running at S01 (no DP: workstations fetch from S01).
struct Tree {
    cen: Site,
    _p01: Site,
    s01: Site,
    agents: Vec<Agent>,
}

impl Tree {
    fn new(root: &Path, agents: &[&str]) -> Tree {
        let cen = Site::central(root, "CEN");
        let p01 = Site::child(root, "P01", "primary", &cen, &[]);
        let s01 = Site::child(root, "S01", "secondary", &p01, &[]);
        let agents = agents.iter().map(|name| s01.add_agent(name, &[])).collect();
        Tree {
            cen,
            _p01: p01,
            s01,
            agents,
        }
    }
}

impl Tree {
    /// Creates collection `name` of `machines` (comma-separated) at the
    /// central site, once their enrollments at S01 reached it.
    fn collection(&self, name: &str, machines: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let out = self
                .cen
                .cmd(&["collection", "create", name, "--machines", machines])
                .output()
                .unwrap();
            if out.status.success() {
                return;
            }
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains("unknown_machines") && std::time::Instant::now() < deadline,
                "{err}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The state of workstation `agent` in a job's status, once it has a row.
fn ws_state<'a>(status: &'a Value, agent: &str) -> Option<&'a str> {
    workstation(status, agent)?["state"].as_str()
}

/// Waits, at `site`, for job `id`'s outcome to be final; returns its
/// status there.
fn finished(site: &Site, id: u64) -> Value {
    site.wait_job(id, Duration::from_secs(90), |status| {
        status["outcome"] != "in_progress"
    })
}

/// Creates a job at `site` with `extra` options and waits, at `site`, for
/// its outcome to be final; returns the job's status there.
fn run_job(site: &Site, package: &str, command: &str, extra: &[&str]) -> Value {
    let job = site.create_job(package, "all", command, extra);
    let id = job["id"].as_u64().unwrap();
    finished(site, id)
}

/// Issue 14, rerun rules (Configuration Manager's four), decided on the
/// workstation from its own history of the same program (package version
/// and command line), whichever job ran it. The command appends the job's
/// id to a file and fails while a flag file exists, so what ran, and how
/// it ended, is known from the workstation itself.
#[test]
fn each_rerun_rule_is_decided_from_the_workstations_history() {
    let root = tempfile::tempdir().unwrap();
    let tree = Tree::new(root.path(), &["ws1"]);
    let cen = &tree.cen;
    let source = root.path().join("src");
    make_tree(&source, 2, 10_000, 14);
    cen.create_package("app", &source);
    tree.collection("all", "ws1");
    let ran = root.path().join("ran");
    let flag = root.path().join("fail");
    let command = format!(
        "echo $CASCADE_JOB >> {} && test ! -e {}",
        ran.display(),
        flag.display()
    );
    let ran_jobs = || -> Vec<u64> {
        std::fs::read_to_string(&ran)
            .unwrap_or_default()
            .lines()
            .map(|line| line.parse().unwrap())
            .collect()
    };
    let id = |status: &Value| status["job"]["id"].as_u64().unwrap();

    // Never ran: every rule runs it; `always` here.
    let first = run_job(cen, "app", &command, &["--rerun", "always"]);
    assert_eq!(first["outcome"], "complete", "{first:#}");
    let j1 = id(&first);

    // The default, if-failed: the last run succeeded, so not again. The
    // workstation is as that run left it: the job is complete.
    let skipped = run_job(cen, "app", &command, &[]);
    let row = ws_row(&skipped, "ws1");
    assert_eq!(row["state"], "skipped", "{row:#}");
    assert_eq!(row["site"], "S01", "{row:#}");
    let reason = row["reason"].as_str().unwrap();
    assert!(
        reason.contains("rerun rule if-failed") && reason.contains(&format!("job {j1}")),
        "{reason}"
    );
    assert_eq!(skipped["outcome"], "complete", "{skipped:#}");
    assert_eq!(skipped["job"]["rerun"], "if-failed");
    assert_eq!(ran_jobs(), vec![j1]);

    // if-succeeded: the last run succeeded, so it runs; and fails.
    std::fs::write(&flag, b"").unwrap();
    let failing = run_job(cen, "app", &command, &["--rerun", "if-succeeded"]);
    assert_eq!(failing["outcome"], "failed", "{failing:#}");
    let j3 = id(&failing);
    assert_eq!(ran_jobs(), vec![j1, j3]);

    // if-succeeded again: the last run failed, so not again; the job is
    // failed there, as the workstation is.
    let after_failure = run_job(cen, "app", &command, &["--rerun", "if-succeeded"]);
    let row = ws_row(&after_failure, "ws1");
    assert_eq!(row["state"], "skipped", "{row:#}");
    assert!(
        row["reason"]
            .as_str()
            .unwrap()
            .contains(&format!("failed here in job {j3}")),
        "{row:#}"
    );
    assert_eq!(after_failure["outcome"], "failed", "{after_failure:#}");

    // never: it ran before (twice), so not again.
    let never = run_job(cen, "app", &command, &["--rerun", "never"]);
    assert_eq!(ws_row(&never, "ws1")["state"], "skipped", "{never:#}");

    // if-failed: the last run failed, so it runs, and now succeeds.
    std::fs::remove_file(&flag).unwrap();
    let retried = run_job(cen, "app", &command, &["--rerun", "if-failed"]);
    assert_eq!(retried["outcome"], "complete", "{retried:#}");
    assert_eq!(ws_row(&retried, "ws1")["state"], "complete");
    let j6 = id(&retried);

    // always: whatever ran before.
    let again = run_job(cen, "app", &command, &["--rerun", "always"]);
    assert_eq!(again["outcome"], "complete", "{again:#}");
    let j7 = id(&again);
    assert_eq!(ran_jobs(), vec![j1, j3, j6, j7]);

    // A different command line is another program: if-failed runs it.
    let other = run_job(cen, "app", &format!("{command} && true"), &[]);
    assert_eq!(ws_row(&other, "ws1")["state"], "complete", "{other:#}");

    // The secondary site's own view agrees with the central site's.
    let here = tree.s01.job(id(&after_failure));
    assert_eq!(ws_row(&here, "ws1")["state"], "skipped", "{here:#}");

    // A wrong rule is refused with the rules named.
    let err = cen.fails(&[
        "job",
        "create",
        "--package",
        "app",
        "--collection",
        "all",
        "--command",
        "true",
        "--rerun",
        "sometimes",
    ]);
    assert!(
        err.contains("always, never, if-failed or if-succeeded"),
        "{err}"
    );
}

/// Issue 14, health after the run: a job's check command runs after its
/// command succeeded, and after the reboot the command asked for (one of
/// the job's reboot codes); the job completes on a workstation only once
/// the check passed, and an agent killed during the check runs the check
/// again, not the command. hawkBit's users saw "success" before the device had
/// even restarted: here the workstation shows `reboot_pending` until the
/// agent starts in another boot (its boot identity is read from a file
/// this test changes, as a restart changes Linux's).
#[test]
fn a_job_completes_only_after_the_reboot_it_asked_for_and_its_check() {
    let root = tempfile::tempdir().unwrap();
    let tree = Tree::new(root.path(), &[]);
    let cen = &tree.cen;
    let boot = root.path().join("boot_id");
    std::fs::write(&boot, "boot-1\n").unwrap();
    let dir = root.path().join("ws1");
    run_ok(
        std::process::Command::new(BIN)
            .args(["agent", "init"])
            .arg(&dir)
            .args([
                "--site",
                &tree.s01.url,
                "--join-token",
                &tree.s01.join_token,
            ])
            .args(["--name", "ws1", "--boot-id-file"])
            .arg(&boot),
    );
    let log = root.path().join("ws1.log");
    let mut ws1 = Process::spawn(&["agent", "run", dir.to_str().unwrap()], &log);
    let source = root.path().join("src");
    make_tree(&source, 2, 10_000, 15);
    cen.create_package("app", &source);
    tree.collection("all", "ws1");

    let installed = root.path().join("installed");
    let command = format!("echo installing; touch {}; exit 100", installed.display());
    let check = format!("test -f {} && echo installed", installed.display());
    let job = cen.create_job(
        "app",
        "all",
        &command,
        &["--reboot-codes", "100,101", "--check", &check],
    );
    assert_eq!(
        job["reboot_codes"],
        serde_json::json!([100, 101]),
        "{job:#}"
    );
    assert_eq!(job["check"], check.as_str(), "{job:#}");
    let id = job["id"].as_u64().unwrap();
    let pending = cen.wait_job(id, Duration::from_secs(60), |status| {
        ws_state(status, "ws1") == Some("reboot_pending")
    });
    let row = ws_row(&pending, "ws1");
    assert_eq!(row["exit_code"], 100, "{row:#}");
    assert_eq!(pending["outcome"], "in_progress", "{pending:#}");
    // Restarting the agent in the same boot changes nothing.
    ws1.stop();
    ws1.start();
    std::thread::sleep(Duration::from_secs(2));
    let still = cen.job(id);
    assert_eq!(
        ws_row(&still, "ws1")["state"],
        "reboot_pending",
        "{still:#}"
    );

    // The workstation restarts: a new boot, the agent starts again.
    ws1.stop();
    std::fs::write(&boot, "boot-2\n").unwrap();
    ws1.start();
    let done = finished(cen, id);
    assert_eq!(done["outcome"], "complete", "{done:#}");
    let row = ws_row(&done, "ws1");
    assert_eq!(row["state"], "complete", "{row:#}");
    assert_eq!(row["exit_code"], 100, "{row:#}");
    let shown = cen.json(&["job", "status", &id.to_string(), "--machine", "ws1"]);
    let tail = serde_json::to_string(&shown).unwrap();
    assert!(
        tail.contains("installing") && tail.contains("--- check ---") && tail.contains("installed"),
        "{shown:#}"
    );

    // A check that fails fails the job there, whatever the command said.
    let job = cen.create_job(
        "app",
        "all",
        "echo fine",
        &["--check", "echo not there >&2; exit 4"],
    );
    let id = job["id"].as_u64().unwrap();
    let failed = finished(cen, id);
    assert_eq!(failed["outcome"], "failed", "{failed:#}");
    let row = ws_row(&failed, "ws1");
    assert_eq!(row["state"], "failed", "{row:#}");
    let reason = row["reason"].as_str().unwrap();
    assert!(
        reason.contains("the check `echo not there >&2; exit 4` failed: exit code 4"),
        "{reason}"
    );

    // The agent killed during a check runs the check again when it
    // starts, never the command (review of issue 14).
    let counted = root.path().join("command-ran");
    let job = cen.create_job(
        "app",
        "all",
        &format!("echo once >> {}", counted.display()),
        &["--check", "sleep 3"],
    );
    let id = job["id"].as_u64().unwrap();
    cen.wait_job(id, Duration::from_secs(60), |status| {
        ws_state(status, "ws1") == Some("checking")
    });
    ws1.kill();
    ws1.start();
    let done = finished(cen, id);
    assert_eq!(done["outcome"], "complete", "{done:#}");
    assert_eq!(
        std::fs::read_to_string(&counted).unwrap(),
        "once\n",
        "the command ran again"
    );

    // An exit code cannot mean both "succeeded" and "reboot needed".
    let err = cen.fails(&[
        "job",
        "create",
        "--package",
        "app",
        "--collection",
        "all",
        "--command",
        "true",
        "--success-codes",
        "0,100",
        "--reboot-codes",
        "100",
    ]);
    assert!(
        err.contains("exit code 100 is both a success code and a reboot code"),
        "{err}"
    );
    // Nor can a command exit with 3010 here (Windows' "reboot needed").
    let err = cen.fails(&[
        "job",
        "create",
        "--package",
        "app",
        "--collection",
        "all",
        "--command",
        "true",
        "--reboot-codes",
        "3010",
    ]);
    assert!(err.contains("a command exits with 0 to 255"), "{err}");
    ws1.stop();
}

/// `secs` since the epoch as a wall-clock time in UTC, as `collection
/// window --start` takes it.
fn utc_civil(secs: u64) -> String {
    let out = run_ok(std::process::Command::new("date").args([
        "-u",
        "-d",
        &format!("@{secs}"),
        "+%Y-%m-%dT%H:%M:%S",
    ]));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Issue 14, maintenance windows: a mandatory job starts on a workstation
/// only inside a window of its collection with room for its timeout; it
/// shows `waiting_for_window` with the next opening until then, and a job
/// whose timeout no window can hold never starts. A job made `--any-time`
/// runs at once. The agent enforces the windows the central site signed
/// into the job, at a secondary site's workstation.
#[test]
fn a_mandatory_job_waits_for_a_window_with_room_for_its_timeout() {
    let root = tempfile::tempdir().unwrap();
    let tree = Tree::new(root.path(), &["ws1"]);
    let cen = &tree.cen;
    let source = root.path().join("src");
    make_tree(&source, 2, 10_000, 16);
    cen.create_package("app", &source);
    tree.collection("all", "ws1");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let opens = now + 10;
    let start = utc_civil(opens);
    let info = cen.json(&[
        "collection",
        "window",
        "all",
        "--start",
        &start,
        "--duration",
        "12s",
        "--every",
        "1d",
    ]);
    assert_eq!(info["windows"][0]["start"], start.as_str(), "{info:#}");
    assert_eq!(info["windows"][0]["every_days"], 1, "{info:#}");
    let err = cen.fails(&[
        "collection",
        "window",
        "all",
        "--start",
        &start,
        "--duration",
        "1h",
        "--tz",
        "Mars/Olympus",
    ]);
    assert!(err.contains("time zone \"Mars/Olympus\""), "{err}");

    let marker = |name: &str| root.path().join(name);
    let started_at = |name: &str| -> Option<u64> {
        std::fs::read_to_string(marker(name))
            .ok()
            .map(|text| text.trim().parse().unwrap())
    };
    let command = |name: &str| format!("date +%s > {}", marker(name).display());
    let fits = cen.create_job("app", "all", &command("fits"), &["--timeout", "5s"])["id"]
        .as_u64()
        .unwrap();
    let too_long = cen.create_job("app", "all", &command("too-long"), &["--timeout", "15s"])["id"]
        .as_u64()
        .unwrap();
    let waiting = cen.wait_job(fits, Duration::from_secs(30), |status| {
        ws_state(status, "ws1") == Some("waiting_for_window")
    });
    let row = ws_row(&waiting, "ws1");
    assert_eq!(row["window_opens_at_ms"], opens * 1000, "{row:#}");
    let never = cen.wait_job(too_long, Duration::from_secs(30), |status| {
        ws_state(status, "ws1") == Some("waiting_for_window")
    });
    let row = ws_row(&never, "ws1");
    assert!(row.get("window_opens_at_ms").is_none(), "{row:#}");
    assert!(
        row["reason"].as_str().unwrap().contains("long enough"),
        "{row:#}"
    );

    // Any time: runs at once, before the window opens.
    let now_job = cen.create_job("app", "all", &command("any-time"), &["--any-time"])["id"]
        .as_u64()
        .unwrap();
    let done = finished(cen, now_job);
    assert_eq!(done["outcome"], "complete", "{done:#}");
    assert!(started_at("any-time").unwrap() < opens);

    // The job that fits runs once the window opens, not before.
    let done = finished(cen, fits);
    assert_eq!(done["outcome"], "complete", "{done:#}");
    let ran = started_at("fits").unwrap();
    assert!(
        ran >= opens,
        "started at {ran}, the window opened at {opens}"
    );

    // The other never started, and still says why.
    let still = cen.job(too_long);
    assert_eq!(
        ws_state(&still, "ws1"),
        Some("waiting_for_window"),
        "{still:#}"
    );
    assert_eq!(started_at("too-long"), None);

    let cleared = cen.json(&["collection", "window", "all", "--clear"]);
    assert_eq!(cleared["windows"], serde_json::json!([]), "{cleared:#}");
}

/// Issue 14, editing: a job's offer time and expiry changed at the central
/// site flow down like any instruction and apply at every site (the
/// secondary holds the new times) and on the workstation, which runs the
/// job at its new time. A canceled job is not changed; wrong input is
/// refused clearly.
#[test]
fn a_job_edited_at_the_central_site_changes_at_every_level() {
    let root = tempfile::tempdir().unwrap();
    let mut tree = Tree::new(root.path(), &["ws1"]);
    let cen = &tree.cen;
    let source = root.path().join("src");
    make_tree(&source, 2, 10_000, 17);
    cen.create_package("app", &source);
    tree.collection("all", "ws1");
    let ran = root.path().join("ran");
    let job = cen.create_job(
        "app",
        "all",
        &format!("touch {}", ran.display()),
        &["--offer-at", "in 1h"],
    );
    let id = job["id"].as_u64().unwrap();
    cen.wait_job(id, Duration::from_secs(60), |status| {
        ws_state(status, "ws1") == Some("offered")
    });
    assert!(!ran.exists());

    let edited = cen.json(&[
        "job",
        "edit",
        &id.to_string(),
        "--offer-at",
        "now",
        "--expires-in",
        "2h",
    ]);
    let offer_at = edited["offer_at_ms"].as_i64().unwrap();
    assert!(
        offer_at < job["offer_at_ms"].as_i64().unwrap(),
        "{edited:#}"
    );
    // Two hours from the new offer time, which is now.
    let expires = edited["expires_at_ms"].as_i64().unwrap() - offer_at;
    assert!(
        (2 * 3_600_000..2 * 3_600_000 + 60_000).contains(&expires),
        "{edited:#}"
    );
    let done = finished(cen, id);
    assert_eq!(done["outcome"], "complete", "{done:#}");
    assert!(ran.exists());
    let held = tree.s01.json(&["job", "list"]);
    let at_s01 = held
        .as_array()
        .unwrap()
        .iter()
        .find(|job| job["id"] == id)
        .unwrap_or_else(|| panic!("S01 holds no job {id}: {held:#}"));
    assert_eq!(at_s01["offer_at_ms"], offer_at, "{at_s01:#}");
    assert_eq!(
        at_s01["expires_at_ms"], edited["expires_at_ms"],
        "{at_s01:#}"
    );

    // Wrong input, and a canceled job.
    let err = cen.fails(&["job", "edit", &id.to_string()]);
    assert!(err.contains("nothing to change"), "{err}");
    let err = cen.fails(&[
        "job",
        "edit",
        &id.to_string(),
        "--expires-at",
        "2020-01-01T00:00:00Z",
    ]);
    assert!(err.contains("expire before it is offered"), "{err}");
    let other = cen.create_job("app", "all", "true", &["--offer-at", "in 1h"]);
    let other = other["id"].as_u64().unwrap().to_string();
    cen.json(&["job", "cancel", &other]);
    let err = cen.fails(&["job", "edit", &other, "--offer-at", "now"]);
    assert!(err.contains("is canceled"), "{err}");
    let err = tree
        .s01
        .fails(&["job", "edit", &id.to_string(), "--offer-at", "now"]);
    assert!(err.contains("central"), "{err}");

    // The central site lists every listed workstation of a job from the
    // start, with its site, before the site reports the job: ws9 enrolled
    // at S01, which is down when the job is made.
    tree.s01.init_agent("ws9", &[]);
    tree.collection("listed", "ws1,ws9");
    tree.s01.process.kill();
    let job = cen.create_job("app", "listed", "true", &["--offer-at", "in 1h"]);
    let status = cen.job(job["id"].as_u64().unwrap());
    let row = ws_row(&status, "ws9");
    assert_eq!(row["site"], "S01", "{row:#}");
    assert_eq!(row["state"], "none", "{row:#}");
    let s01 = status["sites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|site| site["site"] == "S01")
        .unwrap();
    assert_ne!(s01["instruction"], "arrived", "{status:#}");
}

/// Issue 14, rotating tokens: on the site's machine, while it runs, the
/// admin and join tokens are replaced; the old ones stop working at once,
/// the new ones work, and an agent enrolled with the old join token keeps
/// working.
#[test]
fn tokens_are_rotated_while_the_site_runs() {
    let root = tempfile::tempdir().unwrap();
    let mut cen = Site::central(root.path(), "CEN");
    cen.json(&["site", "settings", "--agent-poll-interval", "2s"]);
    let _ws1 = cen.add_agent("ws1", &[]);
    let rotate = |role: &str| -> Value {
        let out = run_ok(
            std::process::Command::new(BIN)
                .args(["-o", "json", "site", "rotate-token"])
                .arg(&cen.dir)
                .args(["--role", role]),
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let old_admin = cen.admin_token.clone();
    let rotated = rotate("admin");
    let new_admin = rotated["token"].as_str().unwrap().to_owned();
    assert_ne!(new_admin, old_admin);
    let file = std::fs::read_to_string(rotated["file"].as_str().unwrap()).unwrap();
    assert_eq!(file.trim(), new_admin);
    let err = cen.fails(&["agent", "list"]);
    assert!(err.contains("401"), "{err}");
    cen.admin_token = new_admin;
    let agents = cen.json(&["agent", "list"]);
    assert_eq!(agents.as_array().unwrap().len(), 1, "{agents:#}");

    let old_join = cen.join_token.clone();
    let new_join = rotate("join")["token"].as_str().unwrap().to_owned();
    let enroll = |name: &str, token: &str| {
        std::process::Command::new(BIN)
            .args(["agent", "init"])
            .arg(root.path().join(name))
            .args(["--site", &cen.url, "--join-token", token, "--name", name])
            .output()
            .unwrap()
    };
    let refused = enroll("ws2", &old_join);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("invalid join token"), "{err}");
    assert!(enroll("ws3", &new_join).status.success());
    // ws1, enrolled before, polls again with its own credential after
    // both rotations (a revoked credential would be answered 401 and leave
    // its last contact where it was).
    let rotated_at = cascade_store::now_ms();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let agents = cen.json(&["agent", "list"]);
        let ws1 = agents
            .as_array()
            .unwrap()
            .iter()
            .find(|agent| agent["agent"] == "ws1")
            .cloned()
            .unwrap();
        if ws1["last_seen_ms"]
            .as_i64()
            .is_some_and(|seen| seen > rotated_at)
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{ws1:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let err = run_ok(
        std::process::Command::new(BIN)
            .args(["site", "rotate-token"])
            .arg(&cen.dir)
            .args(["--role", "admin"]),
    );
    assert!(String::from_utf8_lossy(&err.stdout).contains("the old one is revoked"));
    let wrong = std::process::Command::new(BIN)
        .args(["site", "rotate-token"])
        .arg(root.path())
        .args(["--role", "join"])
        .output()
        .unwrap();
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("holds no site"));
}

/// Issue 14, editing a collection: its definition changed at the central
/// site flows down to a secondary site, and the open job for it follows:
/// a workstation added is offered the job and runs it; one removed keeps
/// what it did, and nothing runs twice; one removed and taken back before
/// the job was due runs it when it is.
#[test]
fn a_collection_edited_at_the_central_site_changes_who_runs_its_job() {
    let root = tempfile::tempdir().unwrap();
    let tree = Tree::new(root.path(), &["ws1", "ws2", "ws3"]);
    let cen = &tree.cen;
    let source = root.path().join("src");
    make_tree(&source, 2, 10_000, 18);
    cen.create_package("app", &source);
    tree.collection("pilots", "ws1,ws3");
    let ran = root.path().join("ran");
    let job = cen.create_job(
        "app",
        "pilots",
        &format!("echo $CASCADE_AGENT >> {}", ran.display()),
        &[],
    );
    let id = job["id"].as_u64().unwrap();
    let done = finished(cen, id);
    assert_eq!(done["outcome"], "complete", "{done:#}");

    // ws2 joins the pilots, ws3 leaves: ws2 runs the job, nobody again.
    let edited = cen.json(&["collection", "edit", "pilots", "--machines", "ws1,ws2"]);
    assert_eq!(
        edited["machines"],
        serde_json::json!(["ws1", "ws2"]),
        "{edited:#}"
    );
    let done = cen.wait_job(id, Duration::from_secs(60), |status| {
        ws_state(status, "ws2") == Some("complete")
    });
    assert_eq!(done["outcome"], "complete", "{done:#}");
    let mut lines: Vec<String> = std::fs::read_to_string(&ran)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    lines.sort();
    assert_eq!(lines, ["ws1", "ws2", "ws3"]);
    // S01 holds the new definition.
    let at_s01 = tree.s01.json(&["collection", "show", "pilots"]);
    assert_eq!(
        at_s01["machines"],
        serde_json::json!(["ws1", "ws2"]),
        "{at_s01:#}"
    );
    let members = at_s01["members"].as_array().unwrap();
    assert_eq!(members.len(), 2, "{at_s01:#}");

    // A job not due yet: ws3 dropped from the collection and taken back
    // holds it again (review of issue 14), and runs it once it is due.
    let later = root.path().join("later");
    let job = cen.create_job(
        "app",
        "pilots",
        &format!("echo $CASCADE_AGENT >> {}", later.display()),
        &["--offer-at", "in 1h"],
    );
    let later_id = job["id"].as_u64().unwrap();
    cen.wait_job(later_id, Duration::from_secs(60), |status| {
        ws_state(status, "ws2") == Some("offered")
    });
    cen.json(&["collection", "edit", "pilots", "--machines", "ws1"]);
    cen.json(&["collection", "edit", "pilots", "--machines", "ws1,ws2"]);
    cen.json(&["job", "edit", &later_id.to_string(), "--offer-at", "now"]);
    let done = finished(cen, later_id);
    assert_eq!(done["outcome"], "complete", "{done:#}");
    let mut lines: Vec<String> = std::fs::read_to_string(&later)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    lines.sort();
    assert_eq!(lines, ["ws1", "ws2"]);

    // Wrong input.
    let err = cen.fails(&["collection", "edit", "nobody", "--machines", "ws1"]);
    assert!(
        err.contains("404") || err.contains("not found") || err.contains("no collection"),
        "{err}"
    );
    let err = cen.fails(&["collection", "edit", "pilots", "--machines", "ghost"]);
    assert!(err.contains("unknown_machines"), "{err}");
    let err = tree
        .s01
        .fails(&["collection", "edit", "pilots", "--machines", "ws1"]);
    assert!(err.contains("central"), "{err}");
}

/// Issue 14, removal: a job made `--remove` runs its version's uninstall
/// command (given at `package create --uninstall-command`, or the job's own);
/// once it succeeded the workstation holds nothing more of the package (no
/// job directory, no chunk of it) and has forgotten that the package's
/// programs ran, so that installing again runs under the default rerun
/// rule.
#[test]
fn a_removal_job_uninstalls_and_leaves_nothing_of_the_package() {
    let root = tempfile::tempdir().unwrap();
    let tree = Tree::new(root.path(), &["ws1"]);
    let cen = &tree.cen;
    let ws1 = &tree.agents[0];
    let source = root.path().join("src");
    make_tree(&source, 3, 300_000, 19);
    let installed = root.path().join("installed");
    let uninstall = format!("rm {}", installed.display());
    let created = cen.json(&[
        "package",
        "create",
        "app",
        "--source",
        source.to_str().unwrap(),
        "--uninstall-command",
        &uninstall,
    ]);
    assert_eq!(
        created["uninstall_command"],
        uninstall.as_str(),
        "{created:#}"
    );
    tree.collection("all", "ws1");
    let install = format!("test -f big.bin && touch {}", installed.display());
    let run = |command: &str, extra: &[&str]| -> Value {
        let job = cen.create_job("app", "all", command, extra);
        let id = job["id"].as_u64().unwrap();
        finished(cen, id)
    };
    let first = run(&install, &[]);
    assert_eq!(first["outcome"], "complete", "{first:#}");
    assert!(installed.exists());
    let jobs_dir = ws1.dir.join("jobs");
    assert!(std::fs::read_dir(&jobs_dir).unwrap().count() > 0);
    assert!(stored_chunks(&ws1.dir) > 0);

    // No --command: the version's uninstall command.
    let job = cen.json(&[
        "job",
        "create",
        "--package",
        "app",
        "--collection",
        "all",
        "--remove",
    ]);
    assert_eq!(job["command"], uninstall.as_str(), "{job:#}");
    let id = job["id"].as_u64().unwrap();
    let removal = finished(cen, id);
    assert_eq!(removal["outcome"], "complete", "{removal:#}");
    assert_eq!(removal["job"]["remove"], true, "{removal:#}");
    assert!(!installed.exists());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::fs::read_dir(&jobs_dir).unwrap().count() > 0 || stored_chunks(&ws1.dir) > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the workstation still holds {} job directories and {} chunks",
            std::fs::read_dir(&jobs_dir).unwrap().count(),
            stored_chunks(&ws1.dir)
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // A version without an uninstall command needs --command.
    std::fs::write(source.join("extra.txt"), b"v2").unwrap();
    cen.json(&[
        "package",
        "update",
        "app",
        "--source",
        source.to_str().unwrap(),
    ]);
    let err = cen.fails(&[
        "job",
        "create",
        "--package",
        "app",
        "--collection",
        "all",
        "--remove",
    ]);
    assert!(err.contains("carries no uninstall command"), "{err}");

    // Installing again runs (if-failed, the default, finds no run).
    let again = run(&install, &[]);
    let row = ws_row(&again, "ws1");
    assert_eq!(row["state"], "complete", "{row:#}");
    assert!(installed.exists());
}
