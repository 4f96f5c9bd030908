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
