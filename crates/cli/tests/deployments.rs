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
    _agents: Vec<Agent>,
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
            _agents: agents,
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

/// The row of workstation `agent` in a job's status.
fn ws_row<'a>(status: &'a Value, agent: &str) -> &'a Value {
    status["workstations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["agent"] == agent)
        .unwrap_or_else(|| panic!("no row for {agent}: {status:#}"))
}

/// Creates a job at `site` with `extra` options and waits, at `site`, for
/// its outcome to be final; returns the job's status there.
fn run_job(site: &Site, package: &str, command: &str, extra: &[&str]) -> Value {
    let job = site.create_job(package, "all", command, extra);
    let id = job["id"].as_u64().unwrap();
    site.wait_job(id, Duration::from_secs(90), |status| {
        status["outcome"] != "in_progress"
    })
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
