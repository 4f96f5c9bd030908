//! The site hierarchy: which kind of site may sit under which, who a status
//! message comes from, and how one site's part of a job's distribute phase
//! is summed up.
//!
//! A hierarchy has one `central` site at its root, `primary` sites under it
//! (and under other primaries), and `secondary` sites, which are leaves
//! under a primary.

use crate::status::{DistributionState, DistributionView};
use crate::{DpName, Error, Result, SiteCode, Version};
use std::fmt;

/// What a site is in the hierarchy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SiteKind {
    /// The root, where packages, jobs, collections and DP groups are made.
    Central,
    /// Under the central site or another primary; may have children.
    Primary,
    /// A leaf under a primary.
    Secondary,
}

impl SiteKind {
    /// Parses `central`, `primary` or `secondary`.
    pub fn parse(text: &str) -> Result<SiteKind> {
        match text {
            "central" => Ok(SiteKind::Central),
            "primary" => Ok(SiteKind::Primary),
            "secondary" => Ok(SiteKind::Secondary),
            _ => Err(Error::Hierarchy(format!(
                "site kind {text:?} is not central, primary or secondary"
            ))),
        }
    }

    /// The name used on the wire and in tables.
    pub fn name(self) -> &'static str {
        match self {
            SiteKind::Central => "central",
            SiteKind::Primary => "primary",
            SiteKind::Secondary => "secondary",
        }
    }

    /// Refuses a child of kind `child` under a parent of this kind: only
    /// primaries and secondaries join, a secondary has no children, and a
    /// secondary's parent is a primary.
    pub fn check_child(self, child: SiteKind) -> Result<()> {
        match (self, child) {
            (_, SiteKind::Central) => Err(Error::Hierarchy(
                "a central site is the root of its hierarchy and has no parent".into(),
            )),
            (SiteKind::Secondary, _) => Err(Error::Hierarchy(
                "a secondary site cannot have child sites".into(),
            )),
            (SiteKind::Central, SiteKind::Secondary) => Err(Error::Hierarchy(
                "a secondary site's parent must be a primary site, not the central site".into(),
            )),
            _ => Ok(()),
        }
    }
}

impl fmt::Display for SiteKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Who reported a status message: a site itself (`CEN`), one of its DPs
/// (`CEN/dp/dp1`) or one of its workstations (`CEN/agent/ws1`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StatusSource {
    /// The site the source belongs to.
    pub site: SiteCode,
    /// The reporter within the site.
    pub member: SourceMember,
}

/// The reporter within a site.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SourceMember {
    /// The site server.
    Site,
    /// A distribution point.
    Dp(DpName),
    /// A workstation's agent.
    Agent(String),
}

impl StatusSource {
    /// The site server itself.
    pub fn site(site: SiteCode) -> StatusSource {
        StatusSource {
            site,
            member: SourceMember::Site,
        }
    }

    /// Parses `CEN`, `CEN/dp/NAME` or `CEN/agent/NAME`.
    pub fn parse(text: &str) -> Result<StatusSource> {
        let bad = |reason: &str| Error::Hierarchy(format!("status source {text:?} {reason}"));
        let mut parts = text.splitn(3, '/');
        let site = SiteCode::new(parts.next().unwrap_or_default())
            .map_err(|_| bad("does not start with a site code"))?;
        let member = match (parts.next(), parts.next()) {
            (None, _) => SourceMember::Site,
            (Some("dp"), Some(name)) => {
                SourceMember::Dp(DpName::new(name).map_err(|_| bad("names an invalid dp"))?)
            }
            (Some("agent"), Some(name)) => {
                crate::validate_name("agent name", name)
                    .map_err(|_| bad("names an invalid agent"))?;
                SourceMember::Agent(name.to_owned())
            }
            _ => return Err(bad("is not SITE, SITE/dp/NAME or SITE/agent/NAME")),
        };
        Ok(StatusSource { site, member })
    }

    /// The DP's name, when the source is a DP.
    pub fn dp(&self) -> Option<&str> {
        match &self.member {
            SourceMember::Dp(name) => Some(name.as_str()),
            _ => None,
        }
    }

    /// The workstation's name, when the source is an agent.
    pub fn agent(&self) -> Option<&str> {
        match &self.member {
            SourceMember::Agent(name) => Some(name),
            _ => None,
        }
    }
}

impl fmt::Display for StatusSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.member {
            SourceMember::Site => write!(f, "{}", self.site),
            SourceMember::Dp(name) => write!(f, "{}/dp/{name}", self.site),
            SourceMember::Agent(name) => write!(f, "{}/agent/{name}", self.site),
        }
    }
}

/// Whether `site` is `root` or lies below it, given every known site's
/// parent (`parent_of` answers `None` for `root` and for unknown codes).
pub fn in_subtree<'a>(
    site: &'a str,
    root: &str,
    mut parent_of: impl FnMut(&str) -> Option<&'a str>,
) -> bool {
    let mut current = site;
    // A hierarchy is a tree; the bound only guards against a damaged table.
    for _ in 0..1024 {
        if current == root {
            return true;
        }
        match parent_of(current) {
            Some(parent) => current = parent,
            None => return false,
        }
    }
    false
}

/// One site's part in a job's distribute phase, summed up from the views of
/// the DPs the job distributes to there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SiteDistribution {
    /// The job distributes to no DP at this site (Q167007): nothing to do,
    /// and nothing failed.
    NotApplicable,
    /// No targeted DP has started yet.
    Pending,
    /// Some DPs are transferring, or some hold it and others not yet.
    InProgress,
    /// Every targeted DP holds the job's version or a newer one.
    Complete,
    /// A targeted DP reports a failure (it retries by itself).
    Failed,
}

impl SiteDistribution {
    /// Sums up the views of the DPs a job distributes to at one site;
    /// `version` is the job's package version.
    pub fn of(views: &[DistributionView], version: Version) -> SiteDistribution {
        if views.is_empty() {
            return SiteDistribution::NotApplicable;
        }
        let holds =
            |view: &DistributionView| view.installed.is_some_and(|installed| installed >= version);
        if views.iter().all(holds) {
            return SiteDistribution::Complete;
        }
        if views
            .iter()
            .any(|view| matches!(view.state, DistributionState::Failed { .. }))
        {
            return SiteDistribution::Failed;
        }
        let started = views.iter().any(|view| {
            holds(view)
                || !matches!(
                    view.state,
                    DistributionState::Pending | DistributionState::RefreshPending
                )
        });
        if started {
            SiteDistribution::InProgress
        } else {
            SiteDistribution::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(text: &str) -> SiteCode {
        SiteCode::new(text).unwrap()
    }

    #[test]
    fn sources_round_trip_and_bad_ones_are_refused() {
        for text in ["CEN", "P01/dp/dp-1", "S01/agent/ws.7"] {
            assert_eq!(StatusSource::parse(text).unwrap().to_string(), text);
        }
        let dp = StatusSource::parse("P01/dp/dp1").unwrap();
        assert_eq!(dp.site, code("P01"));
        assert_eq!(dp.dp(), Some("dp1"));
        assert_eq!(dp.agent(), None);
        for bad in [
            "",
            "cen",
            "CEN/",
            "CEN/dp",
            "CEN/dp/",
            "CEN/dp/../x",
            "CEN/site/x",
            "CEN/agent/a/b",
        ] {
            assert!(StatusSource::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn kinds_nest_as_the_hierarchy_allows() {
        use SiteKind::*;
        assert!(Central.check_child(Primary).is_ok());
        assert!(Primary.check_child(Primary).is_ok());
        assert!(Primary.check_child(Secondary).is_ok());
        assert!(Central.check_child(Secondary).is_err());
        assert!(Secondary.check_child(Primary).is_err());
        assert!(Secondary.check_child(Secondary).is_err());
        assert!(Primary.check_child(Central).is_err());
        for kind in [Central, Primary, Secondary] {
            assert_eq!(SiteKind::parse(kind.name()).unwrap(), kind);
        }
        assert!(SiteKind::parse("tertiary").is_err());
    }

    #[test]
    fn subtrees_follow_parents() {
        let parents = [("P01", "CEN"), ("S01", "P01"), ("P02", "CEN")];
        let parent_of = |site: &str| {
            parents
                .iter()
                .find(|(child, _)| *child == site)
                .map(|(_, parent)| *parent)
        };
        assert!(in_subtree("S01", "P01", parent_of));
        assert!(in_subtree("P01", "P01", parent_of));
        assert!(in_subtree("S01", "CEN", parent_of));
        assert!(!in_subtree("P02", "P01", parent_of));
        assert!(!in_subtree("X99", "CEN", parent_of));
    }

    fn view(installed: Option<u64>, state: DistributionState) -> DistributionView {
        DistributionView {
            target: Version::new(2),
            installed: installed.and_then(Version::new),
            state,
            since: 0,
            bytes_received: 0,
        }
    }

    #[test]
    fn a_site_without_targeted_dps_is_not_applicable_never_failed() {
        let v2 = Version::new(2).unwrap();
        assert_eq!(
            SiteDistribution::of(&[], v2),
            SiteDistribution::NotApplicable
        );
        let pending = view(None, DistributionState::Pending);
        let installed = view(Some(2), DistributionState::Installed);
        let newer = view(Some(3), DistributionState::Installed);
        let failed = view(Some(1), DistributionState::Failed { reason: "x".into() });
        assert_eq!(
            SiteDistribution::of(std::slice::from_ref(&pending), v2),
            SiteDistribution::Pending
        );
        assert_eq!(
            SiteDistribution::of(&[pending, installed.clone()], v2),
            SiteDistribution::InProgress
        );
        assert_eq!(
            SiteDistribution::of(&[installed.clone(), newer], v2),
            SiteDistribution::Complete
        );
        assert_eq!(
            SiteDistribution::of(&[installed, failed], v2),
            SiteDistribution::Failed
        );
    }
}
