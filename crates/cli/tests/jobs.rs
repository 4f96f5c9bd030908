//! Jobs reach the agents of their collection, are withdrawn on cancel and at
//! expiry, and the status keeps each workstation's last state beside the
//! expired and canceled flags (Q152229).

use crate::harness::*;
use reqwest::Method;
use std::time::{Duration, Instant};

fn wait_for(site: &Site, what: &str, mut check: impl FnMut(&Site) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check(site) {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn row<'a>(status: &'a serde_json::Value, agent: &str) -> &'a serde_json::Value {
    status["workstations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["agent"] == agent)
        .unwrap_or_else(|| panic!("no row for {agent}: {status:#}"))
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

#[test]
fn jobs_are_offered_then_withdrawn_on_cancel_and_expiry_keeping_the_last_state() {
    let root = tempfile::tempdir().unwrap();
    let site = Site::start(root.path());
    site.json(&["site", "settings", "--agent-poll-interval", "2s"]);
    let dp = site.add_dp("dp1");
    let source = root.path().join("src");
    make_tree(&source, 3, 100_000, 11);
    site.json(&[
        "package",
        "create",
        "tool",
        "--source",
        source.to_str().unwrap(),
    ]);
    let agents: Vec<Agent> = (1..=3)
        .map(|i| site.add_agent(&format!("ws{i}"), &["role=kiosk"]))
        .collect();
    let office = site.add_agent("office1", &["role=office"]);
    // ws4 is enrolled but offline.
    run_ok(
        std::process::Command::new(BIN)
            .args(["agent", "init"])
            .arg(root.path().join("agent-ws4"))
            .args([
                "--site",
                &site.url,
                "--join-token",
                &site.join_token,
                "--name",
                "ws4",
                "--tag",
                "role=kiosk",
            ]),
    );
    site.json(&[
        "collection",
        "create",
        "kiosks",
        "--rule",
        "tag.role = kiosk",
    ]);

    let job = site.json(&[
        "job",
        "create",
        "--package",
        "tool",
        "--collection",
        "kiosks",
        "--command",
        "sh install.sh",
        "--expires-in",
        "5s",
    ]);
    let id = job[0]["id"].as_u64().unwrap().to_string();
    let optional = site.json(&[
        "job",
        "create",
        "--package",
        "tool",
        "--collection",
        "kiosks",
        "--command",
        "true",
        "--optional",
    ]);
    let optional_id = optional[0]["id"].as_u64().unwrap();

    // Offered to the three running kiosks; the offline one shows none.
    wait_for(&site, "three offers", |site| {
        site.json(&["job", "status", &id])["counts"]["offered"] == 3
    });
    let status = site.json(&["job", "status", &id]);
    assert_eq!(row(&status, "ws4")["state"], "none");
    assert!(status["workstations"]
        .as_array()
        .unwrap()
        .iter()
        .all(|r| r["agent"] != "office1"));
    site.wait_installed("tool", &[&dp], 1, Duration::from_secs(30));
    assert_eq!(
        site.json(&["job", "status", &id])["distribution"][0]["state"],
        "installed"
    );

    // The optional job waits on the workstation until canceled.
    wait_for(&site, "the optional offer on ws1", |_| {
        offers(&agents[0]).contains(&optional_id)
    });
    let canceled = site.json(&["job", "cancel", &optional_id.to_string()]);
    assert_eq!(canceled[0]["state"], "canceled");
    wait_for(&site, "the optional offer withdrawn", |_| {
        !offers(&agents[0]).contains(&optional_id)
    });
    let status = site.json(&["job", "status", &optional_id.to_string()]);
    let ws1 = row(&status, "ws1");
    assert_eq!(
        ws1["state"], "offered",
        "cancel must not replace the last state"
    );
    assert!(ws1["canceled_at_ms"].as_i64().is_some());

    // Expiry: every row keeps its last state, marked expired.
    wait_for(&site, "expiry", |site| {
        site.json(&["job", "status", &id])["workstations"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["expired_at_ms"].as_i64().is_some())
    });
    let status = site.json(&["job", "status", &id]);
    for agent in ["ws1", "ws2", "ws3"] {
        assert_eq!(row(&status, agent)["state"], "offered");
    }
    assert_eq!(row(&status, "ws4")["state"], "none");
    assert_eq!(site.json(&["job", "list"])[0]["state"], "expired");

    // The offline agent, started after expiry, is never offered the job.
    let ws4 = Agent {
        name: "ws4".into(),
        dir: root.path().join("agent-ws4"),
        process: Process::spawn(
            &[
                "agent",
                "run",
                root.path().join("agent-ws4").to_str().unwrap(),
            ],
            &root.path().join("ws4.log"),
        ),
    };
    std::thread::sleep(Duration::from_secs(2));
    assert!(offers(&ws4).is_empty());
    assert_eq!(
        row(&site.json(&["job", "status", &id]), "ws4")["state"],
        "none"
    );

    // An agent may report only about jobs offered to it.
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(office.dir.join("agent.json")).unwrap()).unwrap();
    let body = serde_json::json!({"messages": [{"seq": 1, "at_ms": 1, "kind": "job_offered", "job": id.parse::<u64>().unwrap(), "package": "tool"}]});
    let err = http(
        Method::POST,
        &format!("{}/api/v1/status", site.url),
        config["credential"].as_str(),
        Some(body.to_string().into_bytes()),
        &[],
    )
    .unwrap_err();
    assert!(err.starts_with("403"), "{err}");
    let err = site.fails(&[
        "job",
        "create",
        "--package",
        "tool",
        "--collection",
        "nope",
        "--command",
        "x",
    ]);
    assert!(err.contains("unknown collection"), "{err}");
    let err = site.fails(&["job", "cancel", "999"]);
    assert!(err.contains("unknown job"), "{err}");
}
