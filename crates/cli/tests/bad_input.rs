//! Every bad input gets a clear error naming what was wrong, and nothing
//! already stored is damaged.

use crate::harness::*;
use reqwest::Method;
use std::time::Duration;

#[test]
fn bad_input_is_refused_clearly_and_damages_nothing() {
    let root = tempfile::tempdir().unwrap();
    let site = Site::start(root.path());
    let dp = site.add_dp("dp1");
    let source = root.path().join("src");
    make_tree(&source, 10, 1024 * 1024, 7);
    let src = source.to_str().unwrap();
    site.json(&["package", "create", "good", "--source", src]);
    site.json(&["package", "distribute", "good", "--dp", "dp1"]);
    site.wait_installed("good", &[&dp], 1, Duration::from_secs(60));
    let api = format!("{}/api/v1", site.url);
    let admin = Some(site.admin_token.as_str());

    // A symlink pointing outside the source.
    let outside = root.path().join("escape");
    std::fs::create_dir_all(&outside).unwrap();
    let evil = root.path().join("evil");
    make_tree(&evil, 2, 0, 8);
    std::os::unix::fs::symlink("../../escape", evil.join("dir0").join("link")).unwrap();
    let err = site.fails(&[
        "package",
        "create",
        "evil",
        "--source",
        evil.to_str().unwrap(),
    ]);
    assert!(err.contains("dir0/link"), "{err}");

    // Path traversal in a manifest sent straight to the API.
    let body = serde_json::json!({
        "name": "evil", "intent": "create",
        "entries": [{"path": "../../etc/passwd", "type": "file", "mode": 420, "size": 0, "chunks": []}]
    });
    let err = http(
        Method::POST,
        &format!("{api}/packages"),
        admin,
        Some(body.to_string().into_bytes()),
        &[],
    )
    .unwrap_err();
    assert!(
        err.starts_with("400")
            && err.contains("invalid_manifest")
            && err.contains("../../etc/passwd"),
        "{err}"
    );

    // A manifest naming chunks that were never uploaded.
    let body = serde_json::json!({
        "name": "ghost", "intent": "create",
        "entries": [{"path": "a", "type": "file", "mode": 420, "size": 5,
                     "chunks": [{"hash": "00".repeat(32), "size": 5}]}]
    });
    let err = http(
        Method::POST,
        &format!("{api}/packages"),
        admin,
        Some(body.to_string().into_bytes()),
        &[],
    )
    .unwrap_err();
    assert!(err.contains("missing_chunks"), "{err}");

    // Invalid and duplicate names.
    let err = site.fails(&["package", "create", "bad/name", "--source", src]);
    assert!(err.contains("invalid package name"), "{err}");
    let err = site.fails(&["package", "create", "good", "--source", src]);
    assert!(err.contains("already exists"), "{err}");
    let err = site.fails(&["package", "update", "nope", "--source", src]);
    assert!(
        err.contains("unknown package") && err.contains("nope"),
        "{err}"
    );
    let dup = root.path().join("dup");
    let out = std::process::Command::new(BIN)
        .args([
            "dp",
            "init",
            dup.to_str().unwrap(),
            "--site",
            &site.url,
            "--join-token",
            &site.dp_join_token,
            "--name",
            "dp1",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already enrolled"));

    // Initialising over an existing site or DP refuses and changes nothing.
    for dir in [&site.dir, &dp.dir] {
        let out = std::process::Command::new(BIN)
            .args(["site", "init", dir.to_str().unwrap(), "--code", "XYZ"])
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));
    }
    let err = site.fails(&[
        "site",
        "init",
        root.path().join("new").to_str().unwrap(),
        "--code",
        "cen",
    ]);
    assert!(err.contains("invalid site code"), "{err}");
    assert!(!root.path().join("new").exists());

    // Unknown routes and methods.
    let err = http(Method::GET, &format!("{api}/nothing"), admin, None, &[]).unwrap_err();
    assert!(
        err.starts_with("404") && err.contains("no_such_route"),
        "{err}"
    );
    let err = http(Method::DELETE, &format!("{api}/packages"), admin, None, &[]).unwrap_err();
    assert!(err.starts_with("405"), "{err}");

    // Unknown package and DP.
    let err = site.fails(&["package", "status", "nope"]);
    assert!(err.contains("unknown package \"nope\""), "{err}");
    let err = site.fails(&["package", "distribute", "good", "--dp", "ghost"]);
    assert!(err.contains("unknown dp \"ghost\""), "{err}");
    let err = site.fails(&["package", "refresh", "good", "--dp", "ghost"]);
    assert!(err.contains("unknown dp \"ghost\""), "{err}");

    // Missing, wrong and misplaced credentials.
    let err = http(Method::GET, &format!("{api}/packages"), None, None, &[]).unwrap_err();
    assert!(
        err.starts_with("401") && err.contains("missing credential"),
        "{err}"
    );
    let err = http(
        Method::GET,
        &format!("{api}/packages"),
        Some("cas_admin_wrong"),
        None,
        &[],
    )
    .unwrap_err();
    assert!(
        err.starts_with("401") && err.contains("unknown credential"),
        "{err}"
    );
    let dp_config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dp.dir.join("dp.json")).unwrap()).unwrap();
    let dp_token = dp_config["credential"].as_str().unwrap();
    let err = http(
        Method::GET,
        &format!("{api}/packages"),
        Some(dp_token),
        None,
        &[],
    )
    .unwrap_err();
    assert!(err.starts_with("403"), "{err}");
    let err = http(
        Method::GET,
        &format!("{api}/dp/assignments"),
        admin,
        None,
        &[],
    )
    .unwrap_err();
    assert!(err.starts_with("403"), "{err}");
    let err = http(
        Method::GET,
        &format!("{api}/packages"),
        Some(&site.join_token),
        None,
        &[],
    )
    .unwrap_err();
    assert!(err.starts_with("401"), "{err}");
    // A token with the site's pins but a secret it never minted.
    let pins = site.admin_token.split_once('.').unwrap().1;
    let out = site
        .cmd(&["package", "list"])
        .env("CASCADE_TOKEN", format!("cas_admin_wrong.{pins}"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown credential"));
    let body = serde_json::json!({"name": "dp9", "join_token": "wrong"}).to_string();
    let err = http(
        Method::POST,
        &format!("{api}/dps/enroll"),
        None,
        Some(body.into_bytes()),
        &[],
    )
    .unwrap_err();
    assert!(
        err.starts_with("401") && err.contains("invalid join token"),
        "{err}"
    );
    // A DP may not report messages of the site's kind.
    let body =
        serde_json::json!({"messages": [{"seq": 1, "at_ms": 1, "kind": "distribution_targeted",
        "package": "good", "dp": "dp1", "version": 9, "refresh": 0}]})
        .to_string();
    let err = http(
        Method::POST,
        &format!("{api}/status"),
        Some(dp_token),
        Some(body.into_bytes()),
        &[],
    )
    .unwrap_err();
    assert!(err.starts_with("403"), "{err}");

    // Oversize and malformed requests.
    let huge = vec![b' '; 2 * 1024 * 1024];
    let err = http(
        Method::POST,
        &format!("{api}/packages/good/distribute"),
        admin,
        Some(huge),
        &[],
    )
    .unwrap_err();
    assert!(err.starts_with("413"), "{err}");
    let err = http(
        Method::POST,
        &format!("{api}/packages/good/distribute"),
        admin,
        Some(b"{not json".to_vec()),
        &[],
    )
    .unwrap_err();
    assert!(
        err.starts_with("400") && err.contains("malformed_request"),
        "{err}"
    );
    let err = http(
        Method::GET,
        &format!("{api}/packages/good/versions/x/manifest"),
        admin,
        None,
        &[],
    )
    .unwrap_err();
    assert!(err.starts_with("400"), "{err}");

    // A chunk whose bytes do not match its name.
    let mut frame = Vec::new();
    frame.extend_from_slice(&[7u8; 32]);
    frame.extend_from_slice(&6u32.to_be_bytes());
    frame.extend_from_slice(b"\0hello");
    let err = http(
        Method::POST,
        &format!("{api}/content/chunks"),
        admin,
        Some(frame),
        &[("content-type", "application/octet-stream")],
    )
    .unwrap_err();
    assert!(
        err.starts_with("400") && err.contains("corrupt_chunk"),
        "{err}"
    );

    // Ranges outside the file.
    let err = dp
        .get(
            "/v1/packages/good/files/big.bin",
            &[("range", "bytes=99999999-")],
        )
        .unwrap_err();
    assert!(err.starts_with("416"), "{err}");
    let err = dp
        .get("/v1/packages/good/files/..%2f..%2fetc%2fpasswd", &[])
        .unwrap_err();
    assert!(err.starts_with("404"), "{err}");

    // Nothing stored was damaged: one package, one version, still installed
    // and byte-identical on the DP.
    let packages = site.json(&["package", "list"]);
    assert_eq!(packages.as_array().unwrap().len(), 1, "{packages:#}");
    assert_eq!(packages[0]["latest"]["version"], 1);
    site.wait_installed("good", &[&dp], 1, Duration::from_secs(10));
    dp.verify_against("good", &source);
}

#[test]
fn range_requests_return_exact_slices() {
    let root = tempfile::tempdir().unwrap();
    let site = Site::start(root.path());
    let dp = site.add_dp("dp1");
    let source = root.path().join("src");
    make_tree(&source, 1, 1024 * 1024, 9);
    site.create_package("r", &source);
    site.json(&["package", "distribute", "r", "--dp", "dp1"]);
    site.wait_installed("r", &[&dp], 1, Duration::from_secs(60));
    let big = std::fs::read(source.join("big.bin")).unwrap();
    for (range, expected) in [
        ("bytes=0-0", &big[0..1]),
        ("bytes=100000-300000", &big[100_000..300_001]),
        ("bytes=-10", &big[big.len() - 10..]),
        ("bytes=1000000-", &big[1_000_000..]),
    ] {
        let got = dp
            .get("/v1/packages/r/files/big.bin", &[("range", range)])
            .unwrap();
        assert!(got == expected, "range {range}");
    }
}

#[test]
fn clean_shutdown_on_sigterm_and_restart_keeps_everything() {
    let root = tempfile::tempdir().unwrap();
    let mut site = Site::start(root.path());
    let dp = site.add_dp("dp1");
    let source = root.path().join("src");
    make_tree(&source, 3, 200_000, 10);
    site.create_package("p", &source);
    site.json(&["package", "distribute", "p", "--dp", "dp1"]);
    site.wait_installed("p", &[&dp], 1, Duration::from_secs(60));
    site.process.stop();
    // The DP keeps serving while its site is down.
    dp.verify_against("p", &source);
    let err = site.fails(&["package", "list"]);
    assert!(err.contains("cannot reach"), "{err}");
    site.restart();
    site.wait_installed("p", &[&dp], 1, Duration::from_secs(10));
    // The DP reconnects by itself and follows an update.
    std::fs::write(source.join("new.txt"), b"new").unwrap();
    site.json(&[
        "package",
        "update",
        "p",
        "--source",
        source.to_str().unwrap(),
    ]);
    site.wait_installed("p", &[&dp], 2, Duration::from_secs(60));
    dp.verify_against("p", &source);
}
