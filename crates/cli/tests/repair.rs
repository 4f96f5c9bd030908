//! Corrupted content on a DP's disk is detected and repaired.

use crate::harness::*;
use std::time::{Duration, Instant};

#[test]
fn corrupted_chunk_is_detected_when_served_and_repaired() {
    let root = tempfile::tempdir().unwrap();
    let site = Site::start(root.path());
    let dp = site.add_dp("dp1");
    let source = root.path().join("src");
    make_tree(&source, 10, 3 * 1024 * 1024, 5);
    site.create_package("pkg", &source);
    site.json(&["package", "distribute", "pkg", "--dp", "dp1"]);
    site.wait_installed("pkg", &[&dp], 1, Duration::from_secs(60));
    let big = std::fs::read(source.join("big.bin")).unwrap();
    corrupt_chunk(&dp.dir, &big);

    // Serving detects it: the client never gets the bad bytes as good, but
    // a 503 telling it to retry or use another DP.
    let err = dp.file("pkg", "big.bin").unwrap_err();
    assert!(
        err.starts_with("503") && err.contains("being repaired"),
        "{err}"
    );
    // The DP repairs by itself.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(bytes) = dp.file("pkg", "big.bin") {
            if bytes == big {
                break;
            }
        }
        assert!(Instant::now() < deadline, "never repaired");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(dp.info()["counters"]["chunks_repaired"].as_u64().unwrap() >= 1);
    let history = site.history("pkg");
    assert!(
        history.iter().any(|m| m["kind"] == "dp_corruption_found"),
        "{history:#?}"
    );
}

#[test]
fn refresh_reverifies_and_repairs_without_touching_other_dps() {
    let root = tempfile::tempdir().unwrap();
    let site = Site::start(root.path());
    let dp1 = site.add_dp("dp1");
    let dp2 = site.add_dp("dp2");
    let source = root.path().join("src");
    make_tree(&source, 10, 3 * 1024 * 1024, 6);
    site.create_package("pkg", &source);
    site.json(&["package", "distribute", "pkg", "--all-dps"]);
    site.wait_installed("pkg", &[&dp1, &dp2], 1, Duration::from_secs(60));
    let big = std::fs::read(source.join("big.bin")).unwrap();
    corrupt_chunk(&dp1.dir, &big);
    let dp2_before = dp2.bytes_received();

    let report = site.json(&["package", "refresh", "pkg", "--dp", "dp1"]);
    assert_eq!(report["dps"].as_array().unwrap().len(), 1);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let history = site.history("pkg");
        if history
            .iter()
            .any(|m| m["kind"] == "dp_refreshed" && m["repaired"] == 1)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "refresh never reported: {history:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    site.wait_installed("pkg", &[&dp1, &dp2], 1, Duration::from_secs(10));
    dp1.verify_against("pkg", &source);
    assert_eq!(
        dp2.bytes_received(),
        dp2_before,
        "refreshing dp1 touched dp2"
    );
}

/// Issue 13: a sender no longer decodes and hashes every chunk it sends,
/// so damage must be found before anyone asks for it: the scheduled scrub
/// (`dp run --scrub-pass`) verifies every stored chunk and the DP repairs
/// what it finds, with nothing served and nothing requested.
#[test]
fn the_scrub_finds_damage_nobody_asked_for_and_the_dp_repairs_it() {
    let root = tempfile::tempdir().unwrap();
    let site = Site::start(root.path());
    let dp = site.add_dp_with("dp1", &["--scrub-pass", "3s"]);
    let source = root.path().join("src");
    make_tree(&source, 10, 3 * 1024 * 1024, 8);
    site.create_package("pkg", &source);
    site.json(&["package", "distribute", "pkg", "--dp", "dp1"]);
    site.wait_installed("pkg", &[&dp], 1, Duration::from_secs(60));
    let big = std::fs::read(source.join("big.bin")).unwrap();
    corrupt_chunk(&dp.dir, &big);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let counters = &dp.info()["counters"];
        if counters["chunks_repaired"].as_u64().unwrap() >= 1 {
            assert!(counters["chunks_scrubbed"].as_u64().unwrap() >= 1);
            break;
        }
        assert!(Instant::now() < deadline, "never repaired: {counters}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let history = site.history("pkg");
    assert!(
        history.iter().any(|m| m["kind"] == "dp_corruption_found"),
        "{history:#?}"
    );
    dp.verify_against("pkg", &source);
}

/// The chunk of `data`'s first bytes, as stored.
fn first_chunk(data: &[u8]) -> cascade_content::ChunkHash {
    cascade_content::chunks(data).next().unwrap().unwrap().hash
}

/// Whether the store of the site, DP or agent at `dir` holds `hash`.
fn holds(dir: &std::path::Path, hash: &cascade_content::ChunkHash) -> bool {
    cascade_content::locate_in(&dir.join("chunks"), hash)
        .unwrap()
        .is_some()
}

/// Issue 13, the site's scrub: a chunk damaged on a child site's disk is
/// found by its scrub (`site run --scrub-pass`) before anyone asks for it,
/// removed, and fetched again from the parent; the site completes the
/// version again, its DP keeps the version it holds and nothing is
/// reported failed.
#[test]
fn a_child_sites_scrub_finds_damage_and_fetches_the_chunk_again() {
    let root = tempfile::tempdir().unwrap();
    let cen = Site::central(root.path(), "CEN");
    let mut p01 = Site::child(root.path(), "P01", "primary", &cen, &[]);
    let dp = p01.add_dp("dp1");
    cen.create_group("branch", &[&dp]);
    let source = root.path().join("src");
    make_tree(&source, 10, 3 * 1024 * 1024, 81);
    cen.create_package("pkg", &source);
    cen.json(&["package", "distribute", "pkg", "--dp-group", "branch"]);
    cen.wait_installed("pkg", &[&dp], 1, Duration::from_secs(60));
    p01.run_with(&["--scrub-pass", "2s"]);
    let big = std::fs::read(source.join("big.bin")).unwrap();
    let damaged = first_chunk(&big);
    let completed = |site: &Site| {
        site.history("pkg")
            .iter()
            .filter(|m| m["source"] == "P01" && m["kind"] == "content_complete")
            .count()
    };
    assert_eq!(completed(&p01), 1);
    corrupt_chunk(&p01.dir, &big);
    let deadline = Instant::now() + Duration::from_secs(30);
    while completed(&p01) < 2 {
        assert!(
            Instant::now() < deadline,
            "P01 never completed the version again: {:#?}",
            p01.history("pkg")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(holds(&p01.dir, &damaged));
    p01.process.stop();
    verify_store(&p01.dir);
    p01.restart();
    let failures: Vec<_> = cen
        .history("pkg")
        .into_iter()
        .filter(|m| m["kind"] == "dp_failed" || m["kind"] == "content_failed")
        .collect();
    assert!(failures.is_empty(), "{failures:#?}");
    cen.wait_installed("pkg", &[&dp], 1, Duration::from_secs(10));
    dp.verify_against("pkg", &source);
}

/// Issue 13: a chunk damaged on the central site's disk is caught when a
/// DP asks for it (its record checksum), removed and never served; the DP
/// reports which chunk the site lacks; the central site holds no other
/// copy, and `package update` of the same tree (which makes no version)
/// puts the chunk back, after which the DP gets the package whole.
#[test]
fn the_central_site_drops_a_damaged_chunk_and_an_update_puts_it_back() {
    let root = tempfile::tempdir().unwrap();
    let mut site = Site::start(root.path());
    let source = root.path().join("src");
    make_tree(&source, 10, 3 * 1024 * 1024, 82);
    site.create_package("pkg", &source);
    let big = std::fs::read(source.join("big.bin")).unwrap();
    let damaged = first_chunk(&big);
    corrupt_chunk(&site.dir, &big);
    let dp = site.add_dp("dp1");
    site.json(&["package", "distribute", "pkg", "--dp", "dp1"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let failed = loop {
        let history = site.history("pkg");
        if let Some(failed) = history.iter().find(|m| {
            m["kind"] == "dp_failed"
                && m["reason"]
                    .as_str()
                    .is_some_and(|reason| reason.contains(&damaged.to_string()))
        }) {
            break failed.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no failure reported: {history:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!holds(&site.dir, &damaged), "{failed:#}");
    let updated = site.json(&[
        "package",
        "update",
        "pkg",
        "--source",
        source.to_str().unwrap(),
    ]);
    assert_eq!(updated["unchanged"], true, "{updated}");
    assert_eq!(updated["chunks_uploaded"], 1, "{updated}");
    site.wait_installed("pkg", &[&dp], 1, Duration::from_secs(60));
    dp.verify_against("pkg", &source);
    site.process.stop();
    verify_store(&site.dir);
}
