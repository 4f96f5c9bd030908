//! The README's CLI tour runs word for word: every shell block of "Using the
//! CLI", in order, in a fresh directory, against real processes, and each
//! output the README shows is what the command printed.
//!
//! The README marks what a reader does without being told, in HTML
//! comments just before a block (invisible when rendered):
//! - `<!-- tour: then wait for PATH -->`: the block starts a server in the
//!   background (`... &`); the next block waits until it wrote PATH, as a
//!   reader would wait for the server to come up;
//! - `<!-- tour: retry -->`: the block may need a moment (news travelling
//!   up the hierarchy); it is run again until it succeeds, for 30 s at most;
//! - `<!-- tour: skip -->`: not run (e.g. a build command);
//! - `<!-- tour: output varies -->`: run, but its shown output is an
//!   example of another moment and is not compared.
//!
//! Outputs are compared line by line with runs of spaces collapsed; times
//! (`2026-11-22T01:27:33Z`), loopback ports and `…` match anything in their
//! place, and a line `...` matches any number of lines.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Longest the whole tour may take; it is ended past it.
const TOUR_DEADLINE: Duration = Duration::from_secs(150);

/// One shell block of the tour with what the README says of it.
#[derive(Debug)]
struct Block {
    /// Line of the block's opening fence in README.md (1-based).
    line: usize,
    script: String,
    expected: Option<Expected>,
    wait_for: Option<String>,
    retry: bool,
    compare: bool,
}

#[derive(Debug)]
enum Expected {
    Text(Vec<String>),
    Json(serde_json::Value),
}

fn readme() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::fs::read_to_string(root.join("README.md")).unwrap()
}

/// The shell blocks of the section headed `## Using the CLI`.
fn tour_blocks(readme: &str) -> Vec<Block> {
    let lines: Vec<&str> = readme.lines().collect();
    let start = lines
        .iter()
        .position(|line| *line == "## Using the CLI")
        .expect("README.md has a section `## Using the CLI`");
    let end = lines[start + 1..]
        .iter()
        .position(|line| line.starts_with("## "))
        .map_or(lines.len(), |at| start + 1 + at);
    let mut blocks: Vec<Block> = Vec::new();
    let mut markers: Vec<String> = Vec::new();
    let mut i = start;
    while i < end {
        let line = lines[i];
        if let Some(marker) = line
            .strip_prefix("<!-- tour: ")
            .and_then(|rest| rest.strip_suffix(" -->"))
        {
            markers.push(marker.to_owned());
            i += 1;
            continue;
        }
        let Some(lang) = line.strip_prefix("```") else {
            if !line.trim().is_empty() {
                markers.retain(|_| false);
            }
            i += 1;
            continue;
        };
        let close = lines[i + 1..]
            .iter()
            .position(|line| *line == "```")
            .map(|at| i + 1 + at)
            .unwrap_or_else(|| panic!("README.md:{}: unclosed fence", i + 1));
        let body: Vec<String> = lines[i + 1..close].iter().map(|s| s.to_string()).collect();
        match lang {
            "sh" => {
                let mut block = Block {
                    line: i + 1,
                    script: body.join("\n"),
                    expected: None,
                    wait_for: None,
                    retry: false,
                    compare: true,
                };
                let mut skip = false;
                for marker in markers.drain(..) {
                    if let Some(path) = marker.strip_prefix("then wait for ") {
                        block.wait_for = Some(path.to_owned());
                    } else if marker == "retry" {
                        block.retry = true;
                    } else if marker == "skip" {
                        skip = true;
                    } else if marker == "output varies" {
                        block.compare = false;
                    } else {
                        panic!("README.md:{}: unknown tour marker {marker:?}", i + 1);
                    }
                }
                if !skip {
                    blocks.push(block);
                }
            }
            "" | "json" => {
                // Output shown right after a shell block is that block's.
                let follows = i > 0 && lines[i - 1] == "```";
                if let (true, Some(last)) = (follows, blocks.last_mut()) {
                    if last.expected.is_none() && last.compare {
                        last.expected = Some(if lang == "json" {
                            Expected::Json(serde_json::from_str(&body.join("\n")).unwrap_or_else(
                                |err| panic!("README.md:{}: JSON does not parse: {err}", i + 1),
                            ))
                        } else {
                            Expected::Text(body)
                        });
                    }
                }
            }
            other => panic!(
                "README.md:{}: a ```{other} block in the tour: shell blocks are ```sh (run), outputs ``` or ```json",
                i + 1
            ),
        }
        markers.clear();
        i = close + 1;
    }
    blocks
}

/// Replaces what differs from run to run by a placeholder: times and
/// loopback ports.
fn normalise(line: &str) -> String {
    let collapsed = line.split_whitespace().collect::<Vec<_>>().join(" ");
    let chars: Vec<char> = collapsed.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    let is_time = |at: usize| -> Option<usize> {
        // YYYY-MM-DDTHH:MM:SS[.fff]Z
        let shape = "dddd-dd-ddTdd:dd:dd";
        if chars.len() < at + shape.len() {
            return None;
        }
        for (k, c) in shape.chars().enumerate() {
            let got = chars[at + k];
            let ok = match c {
                'd' => got.is_ascii_digit(),
                _ => got == c,
            };
            if !ok {
                return None;
            }
        }
        let mut end = at + shape.len();
        if chars.get(end) == Some(&'.') {
            end += 1;
            while chars.get(end).is_some_and(char::is_ascii_digit) {
                end += 1;
            }
        }
        (chars.get(end) == Some(&'Z')).then_some(end + 1)
    };
    while i < chars.len() {
        if let Some(end) = is_time(i) {
            out.push_str("<TIME>");
            i = end;
            continue;
        }
        let rest: String = chars[i..].iter().take(10).collect();
        if rest == "127.0.0.1:" {
            out.push_str("127.0.0.1:<PORT>");
            i += 10;
            while chars.get(i).is_some_and(char::is_ascii_digit) {
                i += 1;
            }
            continue;
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

/// Whether `text` matches `pattern`, where `…` stands for anything; the
/// hex digits right before a `…` are an example of what it cuts
/// (`cas_admin_d406…` is any admin token).
fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('…').collect();
    let last = parts.len() - 1;
    let parts: Vec<&str> = parts
        .iter()
        .enumerate()
        .map(|(k, part)| {
            if k < last {
                part.trim_end_matches(|c: char| c.is_ascii_hexdigit())
            } else {
                part
            }
        })
        .collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let mut rest = text;
    for (k, part) in parts.iter().enumerate() {
        if k == 0 {
            match rest.strip_prefix(part) {
                Some(after) => rest = after,
                None => return false,
            }
        } else if k == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            match rest.find(part) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
    }
    true
}

/// Whether the output lines match the README's, `...` matching any run of
/// lines.
fn lines_match(expected: &[String], actual: &[String]) -> bool {
    match expected.split_first() {
        None => actual.is_empty(),
        Some((first, rest)) if first.trim() == "..." => {
            (0..=actual.len()).any(|skip| lines_match(rest, &actual[skip..]))
        }
        Some((first, rest)) => actual.split_first().is_some_and(|(line, others)| {
            glob(&normalise(first), &normalise(line)) && lines_match(rest, others)
        }),
    }
}

/// The README's JSON: same keys at every level, arrays of the same length,
/// the same booleans, and the same words for states and names (strings of
/// letters, `_` and `-`); numbers and other strings only of the same type.
fn json_matches(expected: &serde_json::Value, actual: &serde_json::Value) -> Result<(), String> {
    use serde_json::Value;
    match (expected, actual) {
        (Value::Object(want), Value::Object(got)) => {
            let want_keys: Vec<_> = want.keys().collect();
            let got_keys: Vec<_> = got.keys().collect();
            if want_keys != got_keys {
                return Err(format!("keys {want_keys:?} shown, {got_keys:?} printed"));
            }
            for (key, value) in want {
                json_matches(value, &got[key]).map_err(|err| format!("{key}: {err}"))?;
            }
            Ok(())
        }
        (Value::Array(want), Value::Array(got)) if want.len() != got.len() => Err(format!(
            "{} elements shown, {} printed",
            want.len(),
            got.len()
        )),
        (Value::Array(want), Value::Array(got)) => want
            .iter()
            .zip(got)
            .try_for_each(|(want, got)| json_matches(want, got)),
        (Value::Bool(want), Value::Bool(got)) if want != got => {
            Err(format!("{want} shown, {got} printed"))
        }
        (Value::String(want), Value::String(got))
            if want
                .chars()
                .all(|c| c.is_ascii_alphabetic() || c == '_' || c == '-') =>
        {
            (want == got)
                .then_some(())
                .ok_or_else(|| format!("{want:?} shown, {got:?} printed"))
        }
        (want, got) if std::mem::discriminant(want) == std::mem::discriminant(got) => Ok(()),
        (want, got) => Err(format!("{want} shown, {got} printed")),
    }
}

fn bin_dir() -> PathBuf {
    Path::new(crate::harness::BIN).parent().unwrap().to_owned()
}

/// Runs the tour as one bash script, so that `export`s and background jobs
/// carry over from block to block as in a reader's shell; each block's
/// output is cut out between markers.
#[test]
fn readme_tour_runs_word_for_word() {
    let blocks = tour_blocks(&readme());
    assert!(blocks.len() > 10, "found only {} tour blocks", blocks.len());
    let dir = tempfile::tempdir().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // `set -e`: a command that fails ends the tour, as it would stop a
    // reader; the block it was in is the last one started.
    let mut script = String::from(
        "set -euo pipefail\n\
         trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null' EXIT\n",
    );
    for (n, block) in blocks.iter().enumerate() {
        script.push_str(&format!(
            "echo '@@tour {n} start@@'\necho '@@tour {n} start@@' >&2\n"
        ));
        let body = if block.retry {
            format!(
                "tour_ok=1\nfor attempt in $(seq 1 300); do\nif (\nset -e\n{}\n) > \"$TOUR_OUT\"; then tour_ok=0; break; fi\nsleep 0.1\ndone\ncat \"$TOUR_OUT\"\n(exit $tour_ok)\n",
                block.script
            )
        } else {
            block.script.clone()
        };
        script.push_str(&body);
        script.push('\n');
        if let Some(path) = &block.wait_for {
            script.push_str(&format!(
                "for attempt in $(seq 1 300); do [ -s {path} ] && break; sleep 0.1; done\n\
                 [ -s {path} ] || {{ echo '@@tour {n} failed@@ (no {path})' >&2; exit 1; }}\n"
            ));
        }
        script.push_str(&format!("echo '@@tour {n} end@@'\n"));
    }
    let started = Instant::now();
    let stdout_path = dir.path().join(".tour-stdout");
    let stderr_path = dir.path().join(".tour-stderr");
    let mut child = {
        use std::os::unix::process::CommandExt;
        Command::new("bash")
            .arg("-c")
            .arg(&script)
            .current_dir(dir.path())
            .env("PATH", path)
            .env("TOUR_OUT", dir.path().join(".tour-out"))
            .env("HOME", dir.path())
            .env_remove("CASCADE_SERVER")
            .env_remove("CASCADE_TOKEN")
            .env_remove("CASCADE_LOG")
            .env("NO_COLOR", "1")
            .stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(&stdout_path).unwrap())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            // Its own process group, so that a tour that hangs is ended
            // with every server it started.
            .process_group(0)
            .spawn()
            .unwrap()
    };
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > TOUR_DEADLINE {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // The script's EXIT trap stops its servers; whatever is left (a hung
    // command, its servers) goes with the group.
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::kill(-(child.id() as i32), libc::SIGKILL);
    }
    let _ = child.wait();
    let stdout = std::fs::read_to_string(&stdout_path).unwrap();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap();
    let section = |text: &str, n: usize| -> Vec<String> {
        let start = format!("@@tour {n} start@@");
        let Some(from) = text.find(&start) else {
            return Vec::new();
        };
        let rest = &text[from + start.len()..];
        let to = rest.find("@@tour ").unwrap_or(rest.len());
        rest[..to]
            .lines()
            .skip(1)
            // What the servers started in the background print lands
            // wherever the tour is at that moment.
            .filter(|line| !line.contains(" listening on https://"))
            .map(str::to_owned)
            .collect()
    };
    if std::env::var_os("CASCADE_TOUR_SHOW").is_some() {
        eprintln!("{stdout}");
    }
    // Every difference at once, so that one run tells what to fix.
    let mut problems: Vec<String> = Vec::new();
    for (n, block) in blocks.iter().enumerate() {
        let started = stdout.contains(&format!("@@tour {n} start@@"));
        let ended = stdout.contains(&format!("@@tour {n} end@@"));
        if started && !ended || stderr.contains(&format!("@@tour {n} failed@@")) {
            problems.push(format!(
                "README.md:{}: the tour's block failed:\n{}\nits output:\n{}\n{}",
                block.line,
                block.script,
                section(&stdout, n).join("\n"),
                section(&stderr, n).join("\n"),
            ));
            break;
        }
        let printed = section(&stdout, n);
        match &block.expected {
            None => {}
            Some(Expected::Text(expected)) if !lines_match(expected, &printed) => {
                problems.push(format!(
                    "README.md:{}: `{}` printed\n{}\nbut the README shows\n{}",
                    block.line,
                    block.script,
                    printed.join("\n"),
                    expected.join("\n")
                ));
            }
            Some(Expected::Text(_)) => {}
            Some(Expected::Json(expected)) => {
                match serde_json::from_str::<serde_json::Value>(&printed.join("\n")) {
                    Err(err) => problems.push(format!(
                        "README.md:{}: `{}` did not print JSON ({err}):\n{}",
                        block.line,
                        block.script,
                        printed.join("\n")
                    )),
                    Ok(actual) => {
                        if let Err(err) = json_matches(expected, &actual) {
                            problems.push(format!(
                                "README.md:{}: `{}` printed JSON unlike the README's: {err}\n{actual:#}",
                                block.line, block.script
                            ));
                        }
                    }
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
    match status {
        None => panic!("the tour did not end within {TOUR_DEADLINE:?}:\n{stdout}\n{stderr}"),
        Some(status) => assert!(
            status.success(),
            "the tour ended with {status:?}:\n{stderr}"
        ),
    }
    for (n, block) in blocks.iter().enumerate() {
        assert!(
            stdout.contains(&format!("@@tour {n} end@@")),
            "README.md:{}: the tour never got to the end of this block",
            block.line
        );
    }
}

#[test]
fn tour_matcher_placeholders() {
    assert!(lines_match(
        &["dp1  https://127.0.0.1:34345  0  2026-11-22T01:27:33Z".into()],
        &["dp1 https://127.0.0.1:40001 0 2026-12-02T18:00:00Z".into()],
    ));
    assert!(lines_match(
        &["admin token: cas_admin_d406…   (also in ./cen/admin.token)".into()],
        &["admin token: cas_admin_0123456789 (also in ./cen/admin.token)".into()],
    ));
    assert!(lines_match(
        &["a".into(), "...".into(), "z".into()],
        &["a".into(), "b".into(), "c".into(), "z".into()],
    ));
    assert!(!lines_match(&["a".into()], &["b".into()]));
    assert!(!lines_match(&["a".into()], &["a".into(), "extra".into()]));
}
