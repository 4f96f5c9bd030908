//! Validated names: site codes, package names and DP names.

use crate::{Error, Result};
use std::fmt;

/// Longest package or DP name accepted.
pub const MAX_NAME_LEN: usize = 64;

/// Checks a package or DP name: 1 to 64 characters from `A-Z a-z 0-9 . _ -`,
/// starting with a letter or digit. Names become parts of URLs and file paths,
/// so nothing else is accepted.
pub fn validate_name(what: &'static str, value: &str) -> Result<()> {
    let invalid = |reason| {
        Err(Error::InvalidName {
            what,
            value: value.to_owned(),
            reason,
        })
    };
    if value.is_empty() {
        return invalid("must not be empty");
    }
    if value.len() > MAX_NAME_LEN {
        return invalid("must be at most 64 characters");
    }
    if !value.as_bytes()[0].is_ascii_alphanumeric() {
        return invalid("must start with a letter or a digit");
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return invalid("may contain only letters, digits, '.', '_' and '-'");
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps a name.
            pub fn new(value: &str) -> Result<Self> {
                validate_name($what, value)?;
                Ok(Self(value.to_owned()))
            }
            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = Error;
            fn from_str(value: &str) -> Result<Self> {
                Self::new(value)
            }
        }
    };
}

name_type!(
    /// The name of a package, unique in the hierarchy.
    PackageName,
    "package name"
);
name_type!(
    /// The name of a distribution point, unique within its site.
    DpName,
    "dp name"
);

/// A site code: exactly three characters, uppercase letters and digits
/// (`CEN`, `P01`, `S07`), unique in the hierarchy.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SiteCode(String);

impl SiteCode {
    /// Validates and wraps a site code.
    pub fn new(value: &str) -> Result<Self> {
        let ok = value.len() == 3
            && value
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
        if !ok {
            return Err(Error::InvalidName {
                what: "site code",
                value: value.to_owned(),
                reason: "must be exactly 3 characters, uppercase letters and digits",
            });
        }
        Ok(Self(value.to_owned()))
    }
    /// The code as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SiteCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for SiteCode {
    type Err = Error;
    fn from_str(value: &str) -> Result<Self> {
        Self::new(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for name in ["office", "Office-2024", "a", "7zip", "tool_v1.2"] {
            PackageName::new(name).unwrap();
        }
    }

    #[test]
    fn refuses_names_that_could_become_paths_or_urls() {
        let long = "x".repeat(65);
        for name in [
            "",
            ".hidden",
            "-flag",
            "a/b",
            "..",
            "a b",
            "é",
            "a\0",
            long.as_str(),
        ] {
            assert!(PackageName::new(name).is_err(), "{name:?} accepted");
        }
    }

    #[test]
    fn site_codes_are_three_uppercase_characters() {
        SiteCode::new("CEN").unwrap();
        SiteCode::new("P01").unwrap();
        for code in ["cen", "CE", "CENT", "C-1", ""] {
            assert!(SiteCode::new(code).is_err(), "{code:?} accepted");
        }
    }
}
