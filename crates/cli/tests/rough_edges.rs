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
