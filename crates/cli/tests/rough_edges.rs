//! Regressions of what a new administrator tripped over when driving a real
//! site from outside (issue 10): empty packages, updates that change
//! nothing, names not known yet, codes registered twice, final outcomes.

use crate::harness::*;
use reqwest::Method;

/// `package create --source EMPTY_DIR` stored a package of 0 files. The CLI
/// refuses it before uploading anything, and the site refuses such a tree
/// sent straight to the API.
#[test]
fn empty_source_directory_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let site = Site::start(root.path());
    let empty = root.path().join("empty");
    std::fs::create_dir_all(empty.join("only-a-dir")).unwrap();
    let err = site.fails(&[
        "package",
        "create",
        "void",
        "--source",
        empty.to_str().unwrap(),
    ]);
    assert!(err.contains("holds no file"), "{err}");
    let body = serde_json::json!({
        "name": "void", "intent": "create",
        "entries": [{"path": "only-a-dir", "type": "dir", "mode": 493}]
    });
    let err = http(
        Method::POST,
        &format!("{}/api/v1/packages", site.url),
        Some(site.admin_token.as_str()),
        Some(body.to_string().into_bytes()),
        &[],
    )
    .unwrap_err();
    assert!(
        err.starts_with("400") && err.contains("empty_package"),
        "{err}"
    );
    let packages = site.json(&["package", "list"]);
    assert_eq!(packages.as_array().unwrap().len(), 0, "{packages:#}");
}

/// An identical `package update` made a new version silently. It now keeps
/// the newest version and says so; `--allow-unchanged` makes one anyway.
#[test]
fn identical_update_says_nothing_changed() {
    let root = tempfile::tempdir().unwrap();
    let site = Site::start(root.path());
    let source = root.path().join("src");
    make_tree(&source, 3, 4096, 31);
    let src = source.to_str().unwrap();
    site.create_package("tools", &source);
    let out = run_ok(&mut site.cmd(&["package", "update", "tools", "--source", src]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("package tools unchanged: version 1 already holds this tree"),
        "{text}"
    );
    let detail = site.json(&["package", "show", "tools"]);
    assert_eq!(
        detail["versions"].as_array().unwrap().len(),
        1,
        "{detail:#}"
    );
    run_ok(&mut site.cmd(&[
        "package",
        "update",
        "tools",
        "--source",
        src,
        "--allow-unchanged",
    ]));
    let detail = site.json(&["package", "show", "tools"]);
    assert_eq!(
        detail["versions"].as_array().unwrap().len(),
        2,
        "{detail:#}"
    );
}

/// An expired job showed outcome `in progress` forever, `job list` showed
/// `active` for a job that failed everywhere, `job status --watch` exited 0
/// on a failed job, and a canceled one stayed `canceled, in progress`. Each
/// job now reaches a final outcome, `job list` shows it, and the watch's
/// exit code says it (0 complete, 3 failed, 4 canceled or expired).
#[test]
fn jobs_reach_a_final_outcome_that_list_and_watch_report() {
    let root = tempfile::tempdir().unwrap();
    let site = Site::start(root.path());
    site.json(&["site", "settings", "--agent-poll-interval", "2s"]);
    let _dp = site.add_dp("dp1");
    let source = root.path().join("src");
    make_tree(&source, 2, 10_000, 41);
    site.create_package("tool", &source);
    let _ws1 = site.add_agent("ws1", &["role=kiosk"]);
    site.init_agent("ws2", &["role=kiosk"]); // enrolled, never runs
    site.json(&[
        "collection",
        "create",
        "kiosks",
        "--rule",
        "tag.role = kiosk",
    ]);
    site.json(&["collection", "create", "one", "--machines", "ws1"]);

    let failing = site.create_job("tool", "one", "false", &[]);
    let failing = failing["id"].as_u64().unwrap().to_string();
    let expiring = site.create_job("tool", "kiosks", "true", &["--expires-in", "5s"]);
    let expiring = expiring["id"].as_u64().unwrap().to_string();
    let canceled = site.create_job("tool", "kiosks", "true", &["--optional"]);
    let canceled = canceled["id"].as_u64().unwrap().to_string();

    let watch = |id: &str| {
        site.cmd(&["job", "status", id, "--watch"])
            .output()
            .unwrap()
            .status
            .code()
    };
    assert_eq!(watch(&failing), Some(3), "a failed job's watch exits 3");
    site.json(&["job", "cancel", &canceled]);
    assert_eq!(watch(&canceled), Some(4), "a canceled job's watch exits 4");
    assert_eq!(watch(&expiring), Some(4), "an expired job's watch exits 4");

    let list = site.json(&["job", "list"]);
    let outcome = |id: &str| {
        let job = list
            .as_array()
            .unwrap()
            .iter()
            .find(|job| job["id"].as_u64().unwrap().to_string() == id)
            .unwrap();
        (job["state"].clone(), job["outcome"].clone())
    };
    assert_eq!(
        outcome(&failing),
        ("active".into(), "failed".into()),
        "{list:#}"
    );
    assert_eq!(
        outcome(&expiring),
        ("expired".into(), "expired".into()),
        "{list:#}"
    );
    assert_eq!(
        outcome(&canceled),
        ("canceled".into(), "canceled".into()),
        "{list:#}"
    );
    // Expiry kept what ws1 reported: complete, beside the expired flag.
    let status = site.job(expiring.parse().unwrap());
    assert_eq!(status["counts"]["complete"], 1, "{status:#}");
    assert_eq!(status["counts"]["none"], 1, "{status:#}");
}

/// `collection create bad --machines ghost1` was accepted with no warning,
/// and `dp-group create --dp CEN/dp3` for a DP not enrolled yet was refused
/// although groups are meant to cover DPs enrolled later. Both now refuse
/// an unknown name unless `--allow-unknown` pre-stages it, and show it as
/// not enrolled until it is.
#[test]
fn unknown_names_are_refused_unless_pre_staged() {
    let root = tempfile::tempdir().unwrap();
    let site = Site::start(root.path());
    let _dp1 = site.add_dp("dp1");
    let _ws1 = site.add_agent("ws1", &[]);

    let err = site.fails(&["collection", "create", "bad", "--machines", "ws1,ghost1"]);
    assert!(
        err.contains("ghost1") && err.contains("--allow-unknown"),
        "{err}"
    );
    assert!(!err.contains("ws1,"), "names only the unknown one: {err}");
    let info = site.json(&[
        "collection",
        "create",
        "staged",
        "--machines",
        "ws1,ghost1",
        "--allow-unknown",
    ]);
    let info = if info.is_array() {
        info[0].clone()
    } else {
        info
    };
    assert_eq!(
        info["not_enrolled"],
        serde_json::json!(["ghost1"]),
        "{info:#}"
    );
    let out = run_ok(&mut site.cmd(&["collection", "list"]));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("not enrolled: ghost1"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    let err = site.fails(&[
        "dp-group", "create", "g", "--dp", "CEN/dp1", "--dp", "CEN/dp3",
    ]);
    assert!(
        err.contains("CEN/dp3") && err.contains("--allow-unknown"),
        "{err}"
    );
    site.json(&[
        "dp-group",
        "create",
        "g",
        "--dp",
        "CEN/dp1",
        "--dp",
        "CEN/dp3",
        "--allow-unknown",
    ]);
    let groups = site.json(&["dp-group", "list"]);
    assert_eq!(
        groups[0]["not_enrolled"],
        serde_json::json!(["CEN/dp3"]),
        "{groups:#}"
    );
    // Once dp3 enrolls, the group knows it, and the group's package goes
    // to it.
    let source = root.path().join("src");
    make_tree(&source, 2, 10_000, 51);
    site.create_package("tool", &source);
    site.json(&["package", "distribute", "tool", "--dp-group", "g"]);
    let dp3 = site.add_dp("dp3");
    site.wait_installed("tool", &[&dp3], 1, std::time::Duration::from_secs(60));
    let groups = site.json(&["dp-group", "list"]);
    assert_eq!(
        groups[0]["not_enrolled"],
        serde_json::json!([]),
        "{groups:#}"
    );
}

/// A second `site init --code P01 --parent ...` silently replaced a P01
/// registered at the parent that had not connected yet, and revoked its
/// credential. It is now refused unless `--replace` asks for it; a site that
/// has connected is never replaced.
#[test]
fn registered_site_code_is_replaced_only_when_asked() {
    let root = tempfile::tempdir().unwrap();
    let cen = Site::central(root.path(), "CEN");
    let p02 = Site::child(root.path(), "P02", "primary", &cen, &[]);
    let init = |dir: &str, code: &str, extra: &[&str]| {
        std::process::Command::new(BIN)
            .args(["site", "init"])
            .arg(root.path().join(dir))
            .args(["--code", code, "--kind", "primary", "--parent", &cen.url])
            .args(["--join-token", &cen.site_join_token])
            .args(extra)
            .output()
            .unwrap()
    };
    let first = init("p01-a", "P01", &[]);
    assert!(first.status.success(), "{first:?}");
    let second = init("p01-b", "P01", &[]);
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        !second.status.success()
            && err.contains("has not connected yet")
            && err.contains("--replace"),
        "{err}"
    );
    assert!(
        !root.path().join("p01-b").exists(),
        "a refused init left a directory"
    );
    let replaced = init("p01-b", "P01", &["--replace"]);
    assert!(replaced.status.success(), "{replaced:?}");
    // P02 runs and has connected: --replace does not take its code.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let taken = init("p02-b", "P02", &["--replace"]);
        let err = String::from_utf8_lossy(&taken.stderr).to_string();
        assert!(
            !taken.status.success(),
            "a connected site's code was taken over"
        );
        if err.contains("already used") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{err}");
        let _ = std::fs::remove_dir_all(root.path().join("p02-b"));
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    drop(p02);
}
