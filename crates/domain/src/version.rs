//! Package versions, which only ever go up.

use crate::{Error, Result};
use std::fmt;

/// A package version: 1 for the first, then one more for every update.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Version(u64);

impl Version {
    /// The version a new package starts at.
    pub const FIRST: Version = Version(1);

    /// Wraps a version number; 0 is not a version.
    pub fn new(number: u64) -> Option<Version> {
        (number > 0).then_some(Version(number))
    }

    /// The number.
    pub fn get(self) -> u64 {
        self.0
    }

    /// The version after this one.
    pub fn next(self) -> Version {
        Version(self.0 + 1)
    }

    /// Accepts `offered` as the new version of `package` only if it is newer
    /// than `current`. This is the one check every receiver runs so that a
    /// version never goes backwards anywhere.
    pub fn check_newer(package: &str, current: Option<Version>, offered: Version) -> Result<()> {
        match current {
            Some(current) if offered <= current => Err(Error::VersionNotNewer {
                package: package.to_owned(),
                current: current.0,
                offered: offered.0,
            }),
            _ => Ok(()),
        }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn zero_is_not_a_version() {
        assert_eq!(Version::new(0), None);
        assert_eq!(Version::new(1), Some(Version::FIRST));
    }

    proptest! {
        #[test]
        fn only_strictly_newer_versions_are_accepted(current in 1u64..1000, offered in 1u64..1000) {
            let result = Version::check_newer("p", Version::new(current), Version::new(offered).unwrap());
            prop_assert_eq!(result.is_ok(), offered > current);
        }

        #[test]
        fn a_sequence_of_accepted_versions_is_strictly_increasing(offers in proptest::collection::vec(1u64..50, 1..40)) {
            let mut current: Option<Version> = None;
            let mut accepted = Vec::new();
            for offered in offers {
                let offered = Version::new(offered).unwrap();
                if Version::check_newer("p", current, offered).is_ok() {
                    current = Some(offered);
                    accepted.push(offered);
                }
            }
            prop_assert!(accepted.windows(2).all(|w| w[0] < w[1]));
        }
    }
}
