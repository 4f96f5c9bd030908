//! The site crate's layering, checked by `cargo test` from its source (see
//! ARCHITECTURE.md, `crates/site`): axum only in `http/`, SQL only in `db/`,
//! `http` and `workers` used only by `lib.rs`, and no file importing one
//! that imports it back, however long the way round.
//!
//! Imports are read as text, from `crate::`, `super::` and `self::` paths
//! in code (comments and string literals are skipped); test modules
//! (`#[cfg(test)]` files and the `mod tests` at the end of a file) are left
//! out, as they may reach anything.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Source files of the crate, relative to `src/`, without test-only files.
fn sources() -> BTreeMap<String, String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = BTreeMap::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                let rel = path
                    .strip_prefix(&src)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                let text = std::fs::read_to_string(&path).unwrap();
                if rel == "testing.rs" || rel.ends_with("/tests.rs") {
                    continue;
                }
                out.insert(rel, code_only(&text));
            }
        }
    }
    out
}

/// The text without comments, string literals and the test module.
fn code_only(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    };
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let line = match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        };
        out.push_str(line);
        out.push('\n');
    }
    // Drop string literals (raw strings first: the schema's SQL).
    let mut result = String::with_capacity(out.len());
    let mut rest = out.as_str();
    while let Some(start) = rest.find(['"', '#']) {
        let (before, after) = rest.split_at(start);
        result.push_str(before);
        if let Some(raw) = after.strip_prefix("#\"") {
            let end = raw.find("\"#").map_or(raw.len(), |end| end + 2);
            rest = &raw[end.min(raw.len())..];
        } else if let Some(quoted) = after.strip_prefix('"') {
            let mut escaped = false;
            let mut end = quoted.len();
            for (i, c) in quoted.char_indices() {
                match c {
                    '\\' if !escaped => escaped = true,
                    '"' if !escaped => {
                        end = i + 1;
                        break;
                    }
                    _ => escaped = false,
                }
            }
            result.push_str("\"\"");
            rest = &quoted[end.min(quoted.len())..];
        } else {
            result.push('#');
            rest = &after[1..];
        }
    }
    result.push_str(rest);
    result
}

/// The module path of a file: `service/jobs.rs` → `service::jobs`.
fn module_of(file: &str) -> Vec<String> {
    let file = file.trim_end_matches(".rs");
    let mut parts: Vec<String> = file.split('/').map(str::to_owned).collect();
    if parts
        .last()
        .is_some_and(|last| last == "mod" || last == "lib")
    {
        parts.pop();
    }
    parts
}

/// The file a module path names, if any (the longest prefix that is one).
fn file_of(path: &[String], files: &BTreeMap<String, String>) -> Option<String> {
    for len in (0..=path.len()).rev() {
        let prefix = path[..len].join("/");
        for candidate in [
            format!("{prefix}.rs"),
            format!("{prefix}/mod.rs"),
            if prefix.is_empty() {
                "lib.rs".to_owned()
            } else {
                String::new()
            },
        ] {
            if files.contains_key(&candidate) {
                return Some(candidate);
            }
        }
    }
    None
}

/// Every path `crate::a::b…`, `super::a…` or `self::a…` a file names, with
/// `use` groups (`crate::a::{b, c::d}`) expanded one level, resolved to
/// module paths.
fn paths_named(file: &str, code: &str) -> Vec<Vec<String>> {
    let own = module_of(file);
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    for root in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(at) = code[from..].find(root) {
            let start = from + at;
            from = start + root.len();
            if start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_') {
                continue;
            }
            let base: Vec<String> = match root {
                "crate::" => Vec::new(),
                "super::" => own[..own.len().saturating_sub(1)].to_vec(),
                _ => own.clone(),
            };
            let tail = &code[from..];
            let word_end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(tail.len());
            let path: Vec<String> = tail[..word_end]
                .split("::")
                .filter(|part| !part.is_empty())
                .map(str::to_owned)
                .collect();
            let mut full = base.clone();
            full.extend(path.iter().cloned());
            if tail[word_end..].starts_with('{') {
                let group_end = tail[word_end..]
                    .find('}')
                    .map_or(tail.len(), |end| word_end + end);
                for item in tail[word_end + 1..group_end].split(',') {
                    let mut each = full.clone();
                    each.extend(
                        item.trim()
                            .split("::")
                            .filter(|part| !part.is_empty() && *part != "self")
                            .map(str::to_owned),
                    );
                    out.push(each);
                }
            }
            out.push(full);
        }
    }
    out
}

/// file → the other files it imports.
fn graph(files: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    files
        .iter()
        .map(|(file, code)| {
            let targets = paths_named(file, code)
                .iter()
                .filter_map(|path| file_of(path, files))
                .filter(|target| target != file)
                .collect();
            (file.clone(), targets)
        })
        .collect()
}

#[test]
fn axum_only_in_http_and_sql_only_in_db() {
    let files = sources();
    assert!(files.len() > 30, "found only {} files", files.len());
    for (file, code) in &files {
        if !file.starts_with("http/") {
            assert!(
                !code.contains("axum"),
                "{file} uses axum; HTTP belongs in http/"
            );
        }
        if !file.starts_with("db/") {
            for sql in ["sqlx::query", "QueryBuilder", "query_as", "query_scalar"] {
                assert!(
                    !code.contains(sql),
                    "{file} runs SQL ({sql}); SQL belongs in db/"
                );
            }
        }
    }
}

#[test]
fn only_lib_uses_http_and_workers() {
    let files = sources();
    for (file, targets) in graph(&files) {
        for target in targets {
            for layer in ["http/", "workers/"] {
                if target.starts_with(layer) && !file.starts_with(layer) && file != "lib.rs" {
                    panic!("{file} imports {target}; only lib.rs uses {layer}");
                }
            }
            let below = ["db/", "state", "error.rs"];
            if file.starts_with("db/") && !(target.starts_with("db/") || target == "error.rs") {
                panic!("{file} (db) imports {target}, above it");
            }
            if file.starts_with("state") && !below.iter().any(|layer| target.starts_with(layer)) {
                panic!("{file} (state) imports {target}, above it");
            }
            if file.starts_with("service/") && (target == "lib.rs") {
                panic!("{file} imports lib.rs");
            }
        }
    }
}

#[test]
fn no_file_imports_one_that_imports_it_back() {
    let files = sources();
    let graph = graph(&files);
    // Depth-first search for a cycle, reporting the first one found.
    fn visit(
        file: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|seen| seen == file) {
            let mut cycle = path[at..].to_vec();
            cycle.push(file.to_owned());
            return Some(cycle);
        }
        if done.contains(file) {
            return None;
        }
        path.push(file.to_owned());
        for next in graph.get(file).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(file.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    for file in graph.keys() {
        if let Some(cycle) = visit(file, &graph, &mut Vec::new(), &mut done) {
            panic!("import circle: {}", cycle.join(" -> "));
        }
    }
    // The graph is read at all: a service names the db layer.
    assert!(graph["service/jobs.rs"].contains("db/mod.rs"));
}
