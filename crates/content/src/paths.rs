//! The rules for paths inside a package tree and for symlink targets.
//!
//! Every name that becomes a filesystem path on a receiver passes through
//! here, at ingest (scan), on every manifest read (validate) and again when
//! writing a tree out (materialize).

use crate::error::{Error, Result};

/// Longest accepted path, in bytes.
pub const MAX_PATH_LEN: usize = 4096;
/// Longest accepted path component, in bytes.
pub const MAX_COMPONENT_LEN: usize = 255;

/// A manifest path: relative, '/'-separated, UTF-8, non-empty, no
/// empty/"."/".." components, no leading '/', no '\\' and no NUL, at most
/// 4096 bytes, components at most 255 bytes.
pub fn validate_path(path: &str) -> Result<()> {
    let invalid = |reason| {
        Err(Error::InvalidPath {
            path: path.to_string(),
            reason,
        })
    };
    if path.is_empty() {
        return invalid("empty path");
    }
    if path.len() > MAX_PATH_LEN {
        return invalid("longer than 4096 bytes");
    }
    if path.starts_with('/') {
        return invalid("absolute path");
    }
    if path.contains('\\') {
        return invalid("contains a backslash");
    }
    if path.contains('\0') {
        return invalid("contains a NUL byte");
    }
    for component in path.split('/') {
        match component {
            "" => return invalid("empty component"),
            "." => return invalid("\".\" component"),
            ".." => return invalid("\"..\" component"),
            _ if component.len() > MAX_COMPONENT_LEN => {
                return invalid("component longer than 255 bytes")
            }
            _ => {}
        }
    }
    Ok(())
}

/// The parent directory of a valid manifest path, or `None` at the top.
pub(crate) fn parent(path: &str) -> Option<&str> {
    path.rfind('/').map(|index| &path[..index])
}

/// Checks a symlink at `link` (a valid manifest path) pointing at `target`.
///
/// The target must be relative and, resolved lexically from the link's
/// directory, stay inside the tree (the tree root itself is inside).
/// `is_symlink` says which other paths of the tree are symlinks: once the
/// resolution passes through one, its physical location is somewhere else,
/// so a later ".." could climb out; such targets are refused.
pub(crate) fn validate_symlink_target(
    link: &str,
    target: &str,
    is_symlink: &dyn Fn(&str) -> bool,
) -> Result<()> {
    let unsafe_link = |reason| {
        Err(Error::UnsafeSymlink {
            path: link.to_string(),
            target: target.to_string(),
            reason,
        })
    };
    if target.is_empty() {
        return unsafe_link("empty target");
    }
    if target.len() > MAX_PATH_LEN {
        return unsafe_link("target longer than 4096 bytes");
    }
    if target.starts_with('/') {
        return unsafe_link("absolute target");
    }
    if target.contains('\\') {
        return unsafe_link("target contains a backslash");
    }
    if target.contains('\0') {
        return unsafe_link("target contains a NUL byte");
    }

    let mut resolved: Vec<&str> = match parent(link) {
        Some(dir) => dir.split('/').collect(),
        None => Vec::new(),
    };
    let mut passed_symlink = false;
    for component in target.split('/') {
        match component {
            "" | "." => {}
            ".." => {
                if passed_symlink {
                    return unsafe_link("\"..\" after passing through another symlink");
                }
                if resolved.pop().is_none() {
                    return unsafe_link("resolves outside the tree");
                }
            }
            name => {
                resolved.push(name);
                if !passed_symlink && is_symlink(&resolved.join("/")) {
                    passed_symlink = true;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_symlinks(_: &str) -> bool {
        false
    }

    #[test]
    fn good_paths_pass() {
        for path in [
            "a",
            "a/b",
            "a.b/c d/é",
            ".hidden",
            "a/..b",
            "...",
            &"x".repeat(255),
        ] {
            validate_path(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        }
    }

    #[test]
    fn hostile_paths_are_refused() {
        let long_component = "x".repeat(256);
        let long_path = "a/".repeat(2048) + "b";
        for path in [
            "",
            "../x",
            "a/../../etc/passwd",
            "foo/../../etc/passwd",
            "/abs",
            "/etc/passwd",
            "a//b",
            "a/",
            ".",
            "..",
            "./a",
            "a/.",
            "a\\b",
            "..\\x",
            "a\0b",
            &long_component,
            &long_path,
        ] {
            match validate_path(path) {
                Err(Error::InvalidPath { path: reported, .. }) => assert_eq!(reported, path),
                other => panic!("{path:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn symlink_targets_inside_pass() {
        for (link, target) in [
            ("l", "a"),
            ("l", "a/b/c"),
            ("d/l", "../a"),
            ("d/e/l", "../../a"),
            ("d/l", ".."),
            ("d/l", "./x/./y/"),
            ("d/l", "x/../../y"),
        ] {
            validate_symlink_target(link, target, &no_symlinks)
                .unwrap_or_else(|e| panic!("{link} -> {target}: {e}"));
        }
    }

    #[test]
    fn symlink_targets_outside_are_refused() {
        for (link, target) in [
            ("l", ".."),
            ("l", "../x"),
            ("d/l", "../../x"),
            ("d/l", "x/../../../y"),
            ("l", "/etc/passwd"),
            ("l", ""),
            ("l", "a\\..\\..\\b"),
        ] {
            assert!(
                matches!(
                    validate_symlink_target(link, target, &no_symlinks),
                    Err(Error::UnsafeSymlink { .. })
                ),
                "{link} -> {target} accepted"
            );
        }
    }

    #[test]
    fn dotdot_through_another_symlink_is_refused() {
        // d/e/up -> ../.. is the root; "up/.." would be lexically "d" but
        // physically the parent of the root.
        let is_symlink = |path: &str| path == "d/e/up";
        validate_symlink_target("d/e/up", "../..", &is_symlink).unwrap();
        validate_symlink_target("x", "d/e/up/file", &is_symlink).unwrap();
        assert!(validate_symlink_target("x", "d/e/up/..", &is_symlink).is_err());
        assert!(validate_symlink_target("x", "d/e/up/a/../..", &is_symlink).is_err());
    }
}
