//! Status messages between real processes: whatever a forged message or a
//! sender restored from a backup does, every message an agent reports
//! arrives and the job's status tells the truth (issue 10).

use crate::harness::*;
use reqwest::Method;
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn state_of(site: &Site, job: &str, agent: &str) -> String {
    let status = site.json(&["job", "status", job]);
    status["workstations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["agent"] == agent)
        .map(|row| row["state"].as_str().unwrap().to_owned())
        .unwrap_or_default()
}

fn create_job(site: &Site, collection: &str) -> String {
    site.json(&[
        "job",
        "create",
        "--package",
        "tool",
        "--collection",
        collection,
        "--command",
        "test -f big.bin",
        // Every job here runs the same program, and each must run.
        "--rerun",
        "always",
    ])["id"]
        .as_u64()
        .unwrap()
        .to_string()
}

/// The messages the site stores from `source` about package `tool`, by
/// sequence number.
fn messages_from(site: &Site, source: &str) -> Vec<Value> {
    let mut messages: Vec<Value> = site
        .history("tool")
        .into_iter()
        .filter(|m| m["source"] == source)
        .collect();
    messages.sort_by_key(|m| m["seq"].as_u64().unwrap());
    messages
}

/// Every number from 1 to the highest, once each: nothing is missing.
fn assert_contiguous(messages: &[Value]) {
    let seqs: Vec<u64> = messages
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "{messages:#?}");
}

fn restart(site: &Site, agent: &mut Agent, log: &str) {
    agent.process = Process::spawn(
        &["agent", "run", agent.dir.to_str().unwrap()],
        &site.dir.parent().unwrap().join(log),
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Issue 10: one POST with seq 500 under an agent's own credential made the
/// site acknowledge 500 to the agent, whose forwarder then dropped the
/// messages it had not delivered yet; the job stayed `offered` for good,
/// under the forged message. Now the forged number is refused, and every
/// message of the agent arrives.
#[test]
fn forged_status_seq_is_refused_and_no_agent_message_is_lost() {
    let root = tempfile::tempdir().unwrap();
    let site = Site::start(root.path());
    site.json(&["site", "settings", "--agent-poll-interval", "2s"]);
    let _dp = site.add_dp("dp1");
    let source = root.path().join("src");
    make_tree(&source, 2, 50_000, 21);
    site.create_package("tool", &source);
    let mut ws1 = site.add_agent("ws1", &[]);
    site.json(&["collection", "create", "one", "--machines", "ws1"]);
    // The agent is down when the job is made and the forged message lands.
    ws1.process.kill();
    let job = create_job(&site, "one");
    let config: Value =
        serde_json::from_slice(&std::fs::read(ws1.dir.join("agent.json")).unwrap()).unwrap();
    let credential = config["credential"].as_str().unwrap();
    // Whoever holds the agent's credential and key (issue 12: messages are
    // signed; an unsigned one is refused before its number is looked at).
    let enrollment: cascade_protocol::Enrollment = serde_json::from_value(config.clone()).unwrap();
    let signer = enrollment
        .status_signer("CEN/agent/ws1".into())
        .unwrap()
        .expect("the agent holds a status key");
    let signed = |message: Value| -> Value {
        let mut message: cascade_protocol::StatusMessage = serde_json::from_value(message).unwrap();
        signer.sign(&mut message);
        serde_json::json!({ "messages": [message] })
    };
    let unsigned = serde_json::json!({"messages": [{"seq": 500, "at_ms": 1,
        "kind": "job_offered", "job": job.parse::<u64>().unwrap(), "package": "tool"}]});
    let forged = signed(serde_json::json!({"seq": 500, "at_ms": 1,
        "kind": "job_offered", "job": job.parse::<u64>().unwrap(), "package": "tool"}));
    let post = |body: &Value| {
        http(
            Method::POST,
            &format!("{}/api/v1/status", site.url),
            Some(credential),
            Some(body.to_string().into_bytes()),
            &[],
        )
    };
    let err = post(&unsigned).unwrap_err();
    assert!(
        err.starts_with("403") && err.contains("not signed"),
        "{err}"
    );
    let err = post(&forged).unwrap_err();
    assert!(
        err.starts_with("400") && err.contains("seq_gap") && err.contains("500"),
        "{err}"
    );
    // Nor a number of 2^63 or more, which was stored negative.
    let huge = signed(serde_json::json!({"seq": 1u64 << 63, "at_ms": 1,
        "kind": "job_offered", "job": job.parse::<u64>().unwrap(), "package": "tool"}));
    let err = post(&huge).unwrap_err();
    assert!(
        err.starts_with("400")
            && err.contains("invalid_seq")
            && err.contains("9223372036854775808"),
        "{err}"
    );

    restart(&site, &mut ws1, "ws1-again.log");
    wait_for("the job to complete", || {
        state_of(&site, &job, "ws1") == "complete"
    });
    let messages = messages_from(&site, "CEN/agent/ws1");
    assert_contiguous(&messages);
    assert_eq!(
        messages.last().unwrap()["kind"],
        "job_completed",
        "{messages:#?}"
    );
    assert!(messages.iter().all(|m| m["at_ms"] != 1), "{messages:#?}");
}

/// Issue 10: an agent restored from a backup numbers its new messages
/// again from where the backup was; the site took them for duplicates of
/// the messages it already held under those numbers and dropped them. Now
/// the site asks the agent to renumber them, and every message arrives.
#[test]
fn agent_restored_from_a_backup_loses_no_status() {
    let root = tempfile::tempdir().unwrap();
    let site = Site::start(root.path());
    site.json(&["site", "settings", "--agent-poll-interval", "2s"]);
    let _dp = site.add_dp("dp1");
    let source = root.path().join("src");
    make_tree(&source, 2, 50_000, 22);
    site.create_package("tool", &source);
    let mut ws1 = site.add_agent("ws1", &[]);
    site.json(&["collection", "create", "one", "--machines", "ws1"]);
    let first = create_job(&site, "one");
    wait_for("the first job", || {
        state_of(&site, &first, "ws1") == "complete"
    });

    // The backup, taken with the agent stopped.
    ws1.process.stop();
    let backup = root.path().join("ws1-backup");
    copy_dir(&ws1.dir, &backup);
    restart(&site, &mut ws1, "ws1-2.log");
    let second = create_job(&site, "one");
    wait_for("the second job", || {
        state_of(&site, &second, "ws1") == "complete"
    });
    let before_restore = messages_from(&site, "CEN/agent/ws1").len();

    // The disk dies; the agent comes back from the backup.
    ws1.process.stop();
    std::fs::remove_dir_all(&ws1.dir).unwrap();
    copy_dir(&backup, &ws1.dir);
    restart(&site, &mut ws1, "ws1-3.log");
    let third = create_job(&site, "one");
    wait_for("the third job", || {
        state_of(&site, &third, "ws1") == "complete"
    });

    let messages = messages_from(&site, "CEN/agent/ws1");
    assert_contiguous(&messages);
    assert!(messages.len() > before_restore, "{messages:#?}");
    let third_id: u64 = third.parse().unwrap();
    for kind in ["job_offered", "job_running", "job_completed"] {
        assert!(
            messages
                .iter()
                .any(|m| m["job"] == third_id && m["kind"] == kind),
            "no {kind} of the third job: {messages:#?}"
        );
    }
    assert_eq!(state_of(&site, &second, "ws1"), "complete");
}
