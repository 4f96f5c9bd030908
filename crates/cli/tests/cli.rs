//! The command line as a script or a new administrator meets it: closed
//! pipes, logs in files, error messages, `-o json` shapes and errors.

use crate::harness::*;
use serde_json::Value;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A pipe whose reading end is already closed: every write to it fails
/// with EPIPE, as `cascade ... | head` sees once `head` has exited.
fn closed_pipe() -> Stdio {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe writes.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both descriptors are ours, just opened; the write end is
    // owned by the `OwnedFd` from here on.
    unsafe {
        libc::close(fds[0]);
        Stdio::from(OwnedFd::from_raw_fd(fds[1]))
    }
}

/// Runs `command` with its stdout (or stderr) a closed pipe; asserts it
/// ended quietly: exit 0 and nothing on the other stream.
fn ends_quietly_on_closed_pipe(mut command: Command, what: &str) {
    let out = command
        .stdin(Stdio::null())
        .stdout(closed_pipe())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.is_empty(),
        "{what} with stdout closed: {} {stderr}",
        out.status
    );
}

#[test]
fn closed_stdout_ends_the_command_quietly() {
    let root = tempfile::tempdir().unwrap();
    let mut init = Command::new(BIN);
    init.args(["site", "init"])
        .arg(root.path().join("quiet"))
        .args(["--code", "QQQ"]);
    ends_quietly_on_closed_pipe(init, "site init");

    let site = Site::start(root.path());
    let _dp = site.add_dp("dp1");
    ends_quietly_on_closed_pipe(site.cmd(&["dp", "list"]), "dp list");
    ends_quietly_on_closed_pipe(site.cmd(&["-o", "json", "dp", "list"]), "-o json dp list");
}

/// Starts `cascade site run` on a new central site in `dir` with `env`,
/// stderr to `log`; stops it once it wrote its URL and returns the log.
fn site_log(dir: &Path, env: &[(&str, &str)]) -> String {
    run_ok(
        Command::new(BIN)
            .args(["site", "init"])
            .arg(dir)
            .args(["--code", "LOG"]),
    );
    let log = dir.with_extension("log");
    let mut command = Command::new(BIN);
    command
        .args(["site", "run"])
        .arg(dir)
        .args(["--listen", "127.0.0.1:0"])
        .env_remove("NO_COLOR")
        .env_remove("CASCADE_LOG_FORMAT")
        .env("CASCADE_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !dir.join("url").exists() {
        assert!(Instant::now() < deadline, "site did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    child.wait().unwrap();
    std::fs::read_to_string(&log).unwrap()
}

#[test]
fn logs_in_a_file_carry_no_colour_and_can_be_json() {
    let root = tempfile::tempdir().unwrap();
    let text = site_log(&root.path().join("text"), &[]);
    assert!(text.contains("site server listening"), "{text}");
    assert!(
        !text.contains('\x1b'),
        "colour escapes in a log file: {text:?}"
    );

    let json = site_log(&root.path().join("json"), &[("CASCADE_LOG_FORMAT", "json")]);
    let lines: Vec<Value> = json
        .lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|err| panic!("not JSON ({err}): {line}"))
        })
        .collect();
    assert!(
        lines.iter().any(|line| line["level"] == "INFO"
            && line["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("site server listening"))),
        "{json}"
    );
}

#[test]
fn an_unknown_log_filter_or_format_is_an_error() {
    let root = tempfile::tempdir().unwrap();
    for (key, value, named) in [
        ("CASCADE_LOG", "debgu", "debgu"),
        ("CASCADE_LOG", "cascade_dp=loud", "loud"),
        ("CASCADE_LOG_FORMAT", "xml", "xml"),
    ] {
        let out = Command::new(BIN)
            .args(["site", "init"])
            .arg(root.path().join(value.replace('=', "-")))
            .args(["--code", "CEN"])
            .env(key, value)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{key}={value} accepted");
        assert!(
            stderr.contains(key) && stderr.contains(named),
            "{key}={value}: {stderr}"
        );
    }
}

/// Every `: `-separated part of an error line appears once.
fn assert_no_repeats(stderr: &str) {
    let line = stderr.trim_end();
    let parts: Vec<&str> = line.split(": ").collect();
    for (i, part) in parts.iter().enumerate() {
        assert!(
            !parts[i + 1..].contains(part),
            "{part:?} repeated in {line:?}"
        );
    }
}

#[test]
fn errors_say_each_thing_once() {
    let out = Command::new(BIN)
        .args(["dp", "list", "--server", "127.0.0.1:7400", "--token", "t"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: server URL 127.0.0.1:7400 has no scheme; use https://127.0.0.1:7400\n"
    );
    assert_eq!(out.status.code(), Some(1));

    let root = tempfile::tempdir().unwrap();
    let site = Site::start(root.path());
    let missing = root.path().join("missing");
    let err = site.fails(&[
        "package",
        "create",
        "tools",
        "--source",
        missing.to_str().unwrap(),
    ]);
    assert!(err.contains("reading source directory"), "{err}");
    assert_no_repeats(&err);

    // A second site on the first one's address.
    let second = root.path().join("second");
    run_ok(
        Command::new(BIN)
            .args(["site", "init"])
            .arg(&second)
            .args(["--code", "TWO"]),
    );
    let addr = addr_of(&site.url);
    let addr = addr.as_str();
    let out = Command::new(BIN)
        .args(["site", "run"])
        .arg(&second)
        .args(["--listen", addr])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(err.matches("Address already in use").count(), 1, "{err}");
    assert_no_repeats(&err);
}

#[test]
fn json_output_is_one_object_per_thing_and_errors_are_json_too() {
    let root = tempfile::tempdir().unwrap();
    let site = Site::start(root.path());
    let _dp = site.add_dp("dp1");
    let _agent = site.add_agent("ws1", &["loc=東京本社"]);
    let source = root.path().join("src");
    make_tree(&source, 3, 0, 1);

    let created = site.json(&[
        "package",
        "create",
        "tools",
        "--source",
        source.to_str().unwrap(),
    ]);
    assert_eq!(created["package"], "tools", "{created:#}");
    assert_eq!(created["version"], 1, "{created:#}");
    std::fs::write(source.join("new.txt"), b"new").unwrap();
    let updated = site.json(&[
        "package",
        "update",
        "tools",
        "--source",
        source.to_str().unwrap(),
    ]);
    assert_eq!(updated["version"], 2, "{updated:#}");
    assert!(
        updated["chunks_uploaded"].as_u64().unwrap() >= 1,
        "{updated:#}"
    );

    // A DP is `dp` wherever it appears, an agent `agent`, a package
    // `package`, a collection `collection`.
    let dps = site.json(&["dp", "list"]);
    assert_eq!(dps[0]["dp"], "dp1", "{dps:#}");
    site.json(&["package", "distribute", "tools", "--dp", "dp1"]);
    let status = site.json(&["package", "status", "tools"]);
    assert_eq!(status["dps"][0]["dp"], "dp1", "{status:#}");
    let agents = site.json(&["agent", "list"]);
    assert_eq!(agents[0]["agent"], "ws1", "{agents:#}");
    assert_eq!(agents[0]["report"]["tags"]["loc"], "東京本社");
    let approved = site.json(&["agent", "approve", "ws1"]);
    assert_eq!(approved["agent"], "ws1", "{approved:#}");
    let packages = site.json(&["package", "list"]);
    assert_eq!(packages[0]["package"], "tools", "{packages:#}");
    let shown = site.json(&["package", "show", "tools"]);
    assert_eq!(shown["package"], "tools", "{shown:#}");

    let collection = site.json(&["collection", "create", "all", "--machines", "ws1"]);
    assert_eq!(collection["collection"], "all", "{collection:#}");
    let collection = site.json(&["collection", "show", "all"]);
    assert_eq!(collection["members"][0], "ws1", "{collection:#}");
    let job = site.json(&[
        "job",
        "create",
        "--package",
        "tools",
        "--collection",
        "all",
        "--command",
        "true",
        "--offer-at",
        "in 1h",
    ]);
    assert_eq!(job["id"], 1, "{job:#}");
    let canceled = site.json(&["job", "cancel", "1"]);
    assert_eq!(canceled["state"], "canceled", "{canceled:#}");

    // Errors under -o json: one JSON object on stderr.
    let out = site
        .cmd(&["-o", "json", "package", "status", "nope"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let error: Value = serde_json::from_slice(&out.stderr)
        .unwrap_or_else(|err| panic!("not JSON ({err}): {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(error["error"]["code"], "unknown_package", "{error:#}");
    assert_eq!(error["error"]["status"], 404, "{error:#}");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown package \"nope\""),
        "{error:#}"
    );
}

#[test]
fn tables_align_wide_characters_by_display_width() {
    let root = tempfile::tempdir().unwrap();
    let site = Site::start(root.path());
    let _tokyo = site.add_agent("tokyo1", &["loc=東京本社"]);
    let _paris = site.add_agent("paris1", &["loc=paris"]);
    let out = run_ok(&mut site.cmd(&["agent", "list"]));
    let text = String::from_utf8(out.stdout).unwrap();
    // The column after TAGS starts at the same display column on every line.
    let columns: Vec<usize> = text
        .lines()
        .map(|line| {
            let approved = line
                .find("APPROVED")
                .or_else(|| line.find("waiting"))
                .or_else(|| line.find("yes"))
                .unwrap_or_else(|| panic!("no approval column: {line}"));
            line[..approved]
                .chars()
                .map(|c| if c.is_ascii() { 1 } else { 2 })
                .sum()
        })
        .collect();
    assert!(
        columns.windows(2).all(|pair| pair[0] == pair[1]),
        "misaligned by display width {columns:?}:\n{text}"
    );
}

#[test]
fn time_options_take_zones_local_times_and_relative_times() {
    let root = tempfile::tempdir().unwrap();
    let site = Site::start(root.path());
    let _agent = site.add_agent("ws1", &[]);
    let source = root.path().join("src");
    make_tree(&source, 2, 0, 2);
    site.create_package("tools", &source);
    site.json(&["collection", "create", "all", "--machines", "ws1"]);
    let offer_at = |when: &str| -> i64 {
        let job = site.json(&[
            "job",
            "create",
            "--package",
            "tools",
            "--collection",
            "all",
            "--command",
            "true",
            "--offer-at",
            when,
            "--expires-in",
            "1d",
        ]);
        job["offer_at_ms"]
            .as_i64()
            .unwrap_or_else(|| panic!("{job:#}"))
    };
    // 2036-12-02T16:00:00Z: far enough ahead that the job (expiring a day
    // after its offer) is never refused as already expired (this test
    // failed on 2026-12-03 while it used 2026-12-02).
    let utc_ms = 2_111_846_400_000;
    assert_eq!(offer_at("2036-12-02T17:00:00+01:00"), utc_ms);
    assert_eq!(offer_at("2036-12-02 17:00 +01:00"), utc_ms);
    assert_eq!(offer_at("2036-12-02 16:00Z"), utc_ms);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let in_two_hours = offer_at("in 2h");
    assert!((in_two_hours - now_ms - 2 * 3600 * 1000).abs() < 60_000);
    let plus_two_hours = offer_at("+2h");
    assert!((plus_two_hours - now_ms - 2 * 3600 * 1000).abs() < 60_000);
    // A bare local time, in the zone of the machine (here TZ is unset in
    // the test's environment or whatever it is: only the form is checked).
    offer_at("2036-12-02 17:00");

    let err = site.fails(&[
        "job",
        "create",
        "--package",
        "tools",
        "--collection",
        "all",
        "--command",
        "true",
        "--offer-at",
        "tomorrow-ish",
    ]);
    assert!(
        err.contains("tomorrow-ish") && err.contains("in 2h"),
        "{err}"
    );
}
