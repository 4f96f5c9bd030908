//! The site hierarchy: central, primary and secondary sites, each its own
//! process with its own DPs and agents; content and instructions down,
//! status up.

use crate::harness::*;
use serde_json::Value;
use std::time::{Duration, Instant};

const MIB: usize = 1024 * 1024;

/// The row of `site` in a job status.
fn site_row<'a>(status: &'a Value, site: &str) -> &'a Value {
    status["sites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["site"] == site)
        .unwrap_or_else(|| panic!("no row for site {site}: {status:#}"))
}

/// The site codes of a job status, in order.
fn site_codes(status: &Value) -> Vec<String> {
    status["sites"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["site"].as_str().unwrap().to_owned())
        .collect()
}

/// Every stored message of a package whose kind is one of `kinds`.
fn messages_of_kinds(site: &Site, package: &str, kinds: &[&str]) -> Vec<Value> {
    site.history(package)
        .into_iter()
        .filter(|m| kinds.contains(&m["kind"].as_str().unwrap()))
        .collect()
}

/// Waits until `check` holds for the value `read` returns.
fn wait_until(
    what: &str,
    timeout: Duration,
    read: impl Fn() -> Value,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let value = read();
        if check(&value) {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {value:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every queue of a site is empty: inbox, outbox, content, status relay.
fn queues_empty(queues: &Value) -> bool {
    queues["inbox"].as_array().unwrap().is_empty()
        && queues["outbox"].as_array().unwrap().is_empty()
        && queues["content"].as_array().unwrap().is_empty()
        && queues["status_pending"] == 0
}

/// Three levels — CEN with P01 and P02 under it, S01 under P01 — with a DP
/// and an agent at every site, and one job to all: a 50 MiB package reaches
/// every DP, each copy verified byte for byte, every workstation runs it,
/// and the central site shows each site's part; P01 shows its subtree.
#[test]
fn three_levels_deliver_a_large_package_to_every_dp() {
    let root = tempfile::tempdir().unwrap();
    let cen = Site::central(root.path(), "CEN");
    let p01 = Site::child(root.path(), "P01", "primary", &cen, &[]);
    let p02 = Site::child(root.path(), "P02", "primary", &cen, &[]);
    let s01 = Site::child(root.path(), "S01", "secondary", &p01, &[]);
    let sites = [&cen, &p01, &p02, &s01];
    let dps: Vec<Dp> = sites.iter().map(|site| site.add_dp("dp1")).collect();
    let _agents: Vec<Agent> = sites
        .iter()
        .map(|site| site.add_agent("ws1", &[]))
        .collect();
    let listed: Vec<String> = cen
        .json(&["site", "list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|site| format!("{}<{}", site["code"].as_str().unwrap(), site["parent"]))
        .collect();
    assert_eq!(
        listed,
        ["CEN<null", "P01<\"CEN\"", "P02<\"CEN\"", "S01<\"P01\""],
        "the central site knows the whole hierarchy"
    );

    let source = root.path().join("src");
    make_tree(&source, 40, 50 * MIB, 7);
    cen.create_package("big", &source);
    cen.json(&["collection", "create", "all", "--rule", "name = ws1"]);
    let job = cen.json(&[
        "job",
        "create",
        "--package",
        "big",
        "--collection",
        "all",
        "--command",
        "test -f big.bin && echo ran at $CASCADE_AGENT",
    ]);
    let id = job[0]["id"].as_u64().unwrap();
    let status = cen.wait_job(id, Duration::from_secs(400), |status| {
        status["outcome"] == "complete"
    });
    assert_eq!(site_codes(&status), ["CEN", "P01", "P02", "S01"]);
    for site in &sites {
        let row = site_row(&status, &site.code);
        assert_eq!(row["instruction"], "arrived", "{row:#}");
        assert_eq!(row["targets"], 1, "{row:#}");
        assert_eq!(row["distribution"], "complete", "{row:#}");
        assert_eq!(row["runs"]["complete"], 1, "{row:#}");
        assert_eq!(row["dps"][0]["dp"], "dp1");
        assert_eq!(row["dps"][0]["installed_version"], 1);
    }
    assert_eq!(status["counts"]["complete"], 4);
    for dp in &dps {
        dp.verify_against("big", &source);
    }
    // The central site's package status shows every site's DP.
    let package = cen.status("big");
    assert_eq!(package["dps"].as_array().unwrap().len(), 4, "{package:#}");
    // A primary shows its own subtree.
    let below = p01.job(id);
    assert_eq!(site_codes(&below), ["P01", "S01"]);
    assert_eq!(below["outcome"], "complete");
    // Nothing failed anywhere, and every queue drained.
    let failures = messages_of_kinds(
        &cen,
        "big",
        &[
            "dp_failed",
            "content_failed",
            "instruction_refused",
            "job_failed",
        ],
    );
    assert!(failures.is_empty(), "failures: {failures:#?}");
    for site in &sites {
        wait_until(
            &format!("the queues of {} to drain", site.code),
            Duration::from_secs(30),
            || site.queues(),
            queues_empty,
        );
    }
}

/// Seed 000 (Q167007): a job distributing to a DP group with DPs at two of
/// its three target sites. The third site shows distribution not
/// applicable (its own DP, outside the group, receives nothing), nothing is
/// failed, its workstation downloads from its site server, and the job
/// completes.
#[test]
fn q167007_sites_without_dps_not_failed() {
    let root = tempfile::tempdir().unwrap();
    let cen = Site::central(root.path(), "CEN");
    let p01 = Site::child(root.path(), "P01", "primary", &cen, &[]);
    let p02 = Site::child(root.path(), "P02", "primary", &cen, &[]);
    let s01 = Site::child(root.path(), "S01", "secondary", &p01, &[]);
    let in_group = [p01.add_dp("dp1"), p02.add_dp("dp1")];
    let outside = s01.add_dp("dp1");
    let _agents: Vec<Agent> = [&p01, &p02, &s01]
        .iter()
        .map(|site| site.add_agent(&format!("ws-{}", site.code.to_lowercase()), &["role=till"]))
        .collect();
    cen.json(&[
        "dp-group", "create", "tills", "--dp", "P01/dp1", "--dp", "P02/dp1",
    ]);
    let source = root.path().join("src");
    make_tree(&source, 10, 2 * MIB, 8);
    cen.create_package("pos", &source);
    cen.json(&["collection", "create", "tills", "--rule", "tag.role = till"]);
    let job = cen.json(&[
        "job",
        "create",
        "--package",
        "pos",
        "--collection",
        "tills",
        "--dp-group",
        "tills",
        "--command",
        "test -f big.bin",
    ]);
    let id = job[0]["id"].as_u64().unwrap();
    assert_eq!(job[0]["dp_group"], "tills");
    let status = cen.wait_job(id, Duration::from_secs(120), |status| {
        status["outcome"] != "in_progress"
    });
    assert_eq!(status["outcome"], "complete", "{status:#}");
    for site in ["P01", "P02"] {
        let row = site_row(&status, site);
        assert_eq!(row["distribution"], "complete", "{row:#}");
        assert_eq!(row["runs"]["complete"], 1, "{row:#}");
    }
    let third = site_row(&status, "S01");
    assert_eq!(third["instruction"], "arrived", "{third:#}");
    assert_eq!(third["distribution"], "not_applicable", "{third:#}");
    assert!(third["dps"].as_array().unwrap().is_empty(), "{third:#}");
    assert_eq!(third["runs"]["complete"], 1, "{third:#}");
    // The central site has no target and no DP: not applicable, not failed.
    let central = site_row(&status, "CEN");
    assert_eq!(central["distribution"], "not_applicable", "{central:#}");
    assert!(status["sites"]
        .as_array()
        .unwrap()
        .iter()
        .all(|row| row["distribution"] != "failed"));
    for dp in &in_group {
        dp.verify_against("pos", &source);
    }
    assert_eq!(
        outside.bytes_received(),
        0,
        "a DP outside the group was sent content"
    );
    assert!(outside.info()["packages"].as_array().unwrap().is_empty());
}

/// Seed 001 (Q258424), across the hierarchy: a package created and at once
/// updated at the central site, distributed to a DP group holding every DP
/// of three levels, ends at the newest version on every DP, with no failed
/// status anywhere and no second update.
#[test]
fn q258424_update_right_after_create_hierarchy() {
    let root = tempfile::tempdir().unwrap();
    let cen = Site::central(root.path(), "CEN");
    let p01 = Site::child(root.path(), "P01", "primary", &cen, &[]);
    let s01 = Site::child(root.path(), "S01", "secondary", &p01, &[]);
    let dps = [
        cen.add_dp("dp1"),
        p01.add_dp("dp1"),
        p01.add_dp("dp2"),
        s01.add_dp("dp1"),
    ];
    let members: Vec<String> = dps
        .iter()
        .map(|dp| format!("{}/{}", dp.site, dp.name))
        .collect();
    let mut args = vec!["dp-group", "create", "everywhere"];
    for member in &members {
        args.extend(["--dp", member.as_str()]);
    }
    cen.json(&args);
    let source = root.path().join("src");
    make_tree(&source, 30, 8 * MIB, 2);
    let src = source.to_str().unwrap();
    cen.json(&["package", "create", "app", "--source", src]);
    let report = cen.json(&["package", "distribute", "app", "--dp-group", "everywhere"]);
    assert_eq!(report["sites"], serde_json::json!(["P01"]));
    // At once, while every site is still receiving version 1.
    std::fs::write(source.join("big.bin"), random_bytes(99, 8 * MIB)).unwrap();
    cen.json(&["package", "update", "app", "--source", src]);
    let refs: Vec<&Dp> = dps.iter().collect();
    cen.wait_installed("app", &refs, 2, Duration::from_secs(180));
    for dp in &dps {
        dp.verify_against("app", &source);
    }
    let failures = messages_of_kinds(
        &cen,
        "app",
        &["dp_failed", "content_failed", "instruction_refused"],
    );
    assert!(failures.is_empty(), "failed status messages: {failures:#?}");
}

/// Seed 002 (Q235788): five updates in quick succession while the first
/// version is still in transit to a rate-limited primary and its
/// secondary. Every newer version supersedes the older one in transit,
/// every DP converges to the newest version, and every outbox and inbox of
/// the hierarchy is empty at the end.
#[test]
fn q235788_concurrent_updates_converge() {
    let root = tempfile::tempdir().unwrap();
    let cen = Site::central(root.path(), "CEN");
    let p01 = Site::child(root.path(), "P01", "primary", &cen, &["--max-rate", "2MiB"]);
    let s01 = Site::child(root.path(), "S01", "secondary", &p01, &[]);
    let dps = [cen.add_dp("dp1"), p01.add_dp("dp1"), s01.add_dp("dp1")];
    let members: Vec<String> = dps
        .iter()
        .map(|dp| format!("{}/{}", dp.site, dp.name))
        .collect();
    let mut args = vec!["dp-group", "create", "all"];
    for member in &members {
        args.extend(["--dp", member.as_str()]);
    }
    cen.json(&args);
    let source = root.path().join("src");
    make_tree(&source, 20, 12 * MIB, 3);
    let src = source.to_str().unwrap();
    cen.json(&["package", "create", "app", "--source", src]);
    cen.json(&["package", "distribute", "app", "--dp-group", "all"]);
    // Wait until version 1 is on its way to P01, then update five times.
    wait_until(
        "version 1 in transit to P01",
        Duration::from_secs(60),
        || Value::Array(cen.history("app")),
        |history| {
            history
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["source"] == "P01" && m["kind"] == "content_progress")
        },
    );
    for round in 0..5u64 {
        let big = source.join("big.bin");
        let mut data = std::fs::read(&big).unwrap();
        let at = (round as usize + 1) * data.len() / 7;
        data[at..at + MIB].copy_from_slice(&random_bytes(500 + round, MIB));
        std::fs::write(&big, data).unwrap();
        cen.json(&["package", "update", "app", "--source", src]);
    }
    let refs: Vec<&Dp> = dps.iter().collect();
    cen.wait_installed("app", &refs, 6, Duration::from_secs(180));
    for dp in &dps {
        dp.verify_against("app", &source);
    }
    for site in [&cen, &p01, &s01] {
        wait_until(
            &format!("the queues of {} to drain", site.code),
            Duration::from_secs(30),
            || site.queues(),
            queues_empty,
        );
    }
    let pending: Vec<u64> = cen
        .json(&["site", "list"])
        .as_array()
        .unwrap()
        .iter()
        .map(|site| site["pending_instructions"].as_u64().unwrap())
        .collect();
    assert!(
        pending.iter().all(|n| *n == 0),
        "instructions left: {pending:?}"
    );
    let failures = messages_of_kinds(
        &cen,
        "app",
        &["dp_failed", "content_failed", "instruction_refused"],
    );
    assert!(failures.is_empty(), "failed status messages: {failures:#?}");
    // P01 never finished an intermediate version it was still receiving.
    let completed: Vec<u64> = cen
        .history("app")
        .iter()
        .filter(|m| m["source"] == "P01" && m["kind"] == "content_complete")
        .map(|m| m["version"].as_u64().unwrap())
        .collect();
    assert!(
        !completed.contains(&1),
        "P01 completed version 1 although newer versions arrived while it was in transit: {completed:?}"
    );
}
