//! Agents enroll (with approval when the site asks for it), report their
//! attributes, and collections follow them.

use crate::harness::*;
use reqwest::Method;
use std::time::{Duration, Instant};

fn members(site: &Site, collection: &str) -> Vec<String> {
    let shown = site.json(&["collection", "show", collection]);
    shown["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn agents_enroll_with_approval_and_rule_collections_follow_them() {
    let root = tempfile::tempdir().unwrap();
    let site = Site::start(root.path());
    let settings = site.json(&[
        "site",
        "settings",
        "--require-approval",
        "true",
        "--agent-poll-interval",
        "2s",
    ]);
    assert_eq!(settings["require_approval"], true);

    let kiosk = site.add_agent("kiosk1", &["role=kiosk"]);
    let office = site.add_agent("office1", &["role=office"]);
    let agents = site.json(&["agent", "list"]);
    assert_eq!(agents.as_array().unwrap().len(), 2);
    assert!(agents
        .as_array()
        .unwrap()
        .iter()
        .all(|a| a["approved"] == false));
    assert_eq!(agents[0]["report"]["os"], std::env::consts::OS);
    assert_eq!(agents[0]["report"]["tags"]["role"], "kiosk");

    let approved = site.json(&["agent", "approve", "kiosk1"]);
    assert_eq!(approved["approved"], true);
    let err = site.fails(&["agent", "approve", "ghost"]);
    assert!(err.contains("unknown agent \"ghost\""), "{err}");

    // Collections: by rule and by names; membership follows enrollment.
    site.json(&[
        "collection",
        "create",
        "kiosks",
        "--rule",
        "tag.role = kiosk and os = linux",
    ]);
    site.json(&[
        "collection",
        "create",
        "named",
        "--machines",
        "office1,later1",
        "--allow-unknown",
    ]);
    assert_eq!(members(&site, "kiosks"), ["kiosk1"]);
    assert_eq!(members(&site, "named"), ["office1"]);
    let _later = site.add_agent("later1", &["role=kiosk"]);
    assert_eq!(members(&site, "kiosks"), ["kiosk1", "later1"]);
    assert_eq!(members(&site, "named"), ["later1", "office1"]);

    // Bad input.
    let err = site.fails(&["collection", "create", "bad", "--rule", "tag.role = "]);
    assert!(
        err.contains("invalid rule") && err.contains("expected a value"),
        "{err}"
    );
    let err = site.fails(&["collection", "create", "kiosks", "--machines", "kiosk1"]);
    assert!(err.contains("already exists"), "{err}");
    let err = site.fails(&["collection", "show", "nope"]);
    assert!(err.contains("unknown collection"), "{err}");
    let out = std::process::Command::new(BIN)
        .args([
            "agent",
            "init",
            root.path().join("dup").to_str().unwrap(),
            "--site",
            &site.url,
        ])
        .args(["--join-token", &site.join_token, "--name", "kiosk1"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("already enrolled"));
    assert!(
        !root.path().join("dup").exists(),
        "a failed init left its directory"
    );

    // An agent's credential is refused on administrator and DP routes.
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(kiosk.dir.join("agent.json")).unwrap()).unwrap();
    let token = config["credential"].as_str().unwrap();
    let api = format!("{}/api/v1", site.url);
    let err = http(
        Method::GET,
        &format!("{api}/agents"),
        Some(token),
        None,
        &[],
    )
    .unwrap_err();
    assert!(err.starts_with("403"), "{err}");
    let err = http(
        Method::GET,
        &format!("{api}/dp/assignments"),
        Some(token),
        None,
        &[],
    )
    .unwrap_err();
    assert!(err.starts_with("403"), "{err}");

    // Both agents keep polling: reachable.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let agents = site.json(&["agent", "list"]);
        if agents
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["reachability"] == "reachable")
        {
            break;
        }
        assert!(Instant::now() < deadline, "{agents:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // SIGTERM stops an agent cleanly.
    let mut office = office;
    office.process.stop();
    assert_eq!(kiosk.name, "kiosk1");
}
