//! The README's quickstart command works: site, DPs and ten agents, exit 0.

use crate::harness::BIN;

#[test]
fn quickstart_runs_the_whole_tour_and_exits_zero() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("qs");
    let out = std::process::Command::new(BIN)
        .args(["-o", "json", "quickstart", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "quickstart failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // With -o json, stdout is one JSON document: the job's status.
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["counts"]["complete"], 10, "{status:#}");
    assert!(dir
        .join("ws01")
        .join("jobs")
        .join("1")
        .join("installed")
        .join("tool")
        .exists());
}
