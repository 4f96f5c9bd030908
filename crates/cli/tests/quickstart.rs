//! The README's quickstart command works: four sites on three levels, a DP
//! and three agents at each, one job complete everywhere, exit 0.

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
    assert_eq!(status["outcome"], "complete", "{status:#}");
    assert_eq!(status["counts"]["complete"], 12, "{status:#}");
    let sites: Vec<&str> = status["sites"]
        .as_array()
        .unwrap()
        .iter()
        .map(|site| {
            assert_eq!(site["distribution"], "complete", "{site:#}");
            assert_eq!(site["runs"]["complete"], 3, "{site:#}");
            site["site"].as_str().unwrap()
        })
        .collect();
    assert_eq!(sites, ["CEN", "P01", "P02", "S01"]);
    assert!(dir
        .join("s01-ws3")
        .join("jobs")
        .join("1")
        .join("installed")
        .join("tool")
        .exists());
}

/// Regression (issue 10): `cargo run --release -- quickstart`, the README's
/// first command, failed on a fresh clone with "could not determine which
/// binary to run" once the workspace had several binaries. `.ci/run` runs
/// the README's block literally; here the block is checked to be that
/// command and the workspace to name the binary `cargo run` runs (building
/// it again here would replace the binary the other scenarios are running).
#[test]
fn readme_quickstart_command_picks_the_cascade_binary() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .and_then(|crates| crates.parent())
        .unwrap();
    let block = std::process::Command::new("bash")
        .arg(root.join(".ci/readme-block"))
        .arg("quickstart")
        .output()
        .unwrap();
    assert!(block.status.success(), "{block:?}");
    let command = String::from_utf8(block.stdout).unwrap();
    assert_eq!(
        command.trim(),
        "cargo run --release -- quickstart",
        "the README's quickstart block changed: update this test"
    );
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .current_dir(root)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let metadata: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let with_binaries: Vec<&serde_json::Value> = metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|package| {
            package["targets"]
                .as_array()
                .unwrap()
                .iter()
                .any(|target| target["kind"][0] == "bin")
        })
        .collect();
    let defaults: Vec<&str> = with_binaries
        .iter()
        .filter_map(|package| package["default_run"].as_str())
        .collect();
    assert!(
        with_binaries.len() == 1 || defaults == ["cascade"],
        "several packages have binaries and `cargo run` cannot pick one: default-run = {defaults:?}"
    );
}
