//! The states that cross the wire, as enums: the one table of their names
//! in JSON and tables, and the conversions from the domain's states.
//!
//! The domain's states carry data (a download's bytes, a failure's
//! reason, when an agent fell silent); the wire carries a state's name in
//! one field and its data in fields of their own. Each wire enum here is
//! the fieldless name of a domain state, converted with `From` in this
//! file and nowhere else. A site's kind has no data and crosses the wire
//! as the domain's [`SiteKind`] itself, named by [`SiteKind::name`].

use cascade_domain::hierarchy;
pub use cascade_domain::hierarchy::SiteKind;
use cascade_domain::job;
use cascade_domain::run::{self, RunState};
use cascade_domain::status::DistributionState;
use serde::{Deserialize, Serialize};

/// Defines fieldless wire enums from one table of `Variant = "name"`:
/// serde renames, [`as_str`](DpState::as_str), `ALL` and `Display` all
/// come from it.
macro_rules! wire_states {
    ($(
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$variant_meta:meta])* $variant:ident = $text:literal, )+
        }
    )+) => {$(
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub enum $name {
            $( $(#[$variant_meta])* #[serde(rename = $text)] $variant, )+
        }

        impl $name {
            /// Every state, in the order declared.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The name on the wire and in tables.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    )+};
}

wire_states! {
    /// Where one package stands on one DP ([`DistributionState`]).
    pub enum DpState {
        /// Told to hold the target version; not started.
        Pending = "pending",
        /// Fetching the chunks it lacks.
        Transferring = "transferring",
        /// Holds the target version, verified.
        Installed = "installed",
        /// The last attempt failed; it retries by itself.
        Failed = "failed",
        /// A refresh was requested and not reported done yet.
        RefreshPending = "refresh-pending",
        /// Fetching corrupt chunks again.
        Repairing = "repairing",
    }

    /// Whether an agent is heard from ([`run::Reachability`]).
    pub enum Reachability {
        /// Holding a poll open, or polled within the poll interval and a
        /// grace.
        Reachable = "reachable",
        /// Silent longer, or hung up its poll more than the grace ago.
        Unreachable = "unreachable",
        /// Enrolled, never polled.
        Never = "never",
    }

    /// Where a job stands in its life ([`job::JobState`]).
    pub enum JobState {
        /// Before its offer time.
        Scheduled = "scheduled",
        /// Offered.
        Active = "active",
        /// Its expiry passed.
        Expired = "expired",
        /// Canceled by an administrator.
        Canceled = "canceled",
    }

    /// A job as a whole ([`job::JobOutcome`]).
    pub enum JobOutcome {
        /// Not finished.
        InProgress = "in_progress",
        /// Every workstation completed, every distribution complete or not
        /// applicable.
        Complete = "complete",
        /// A workstation failed, or a site refused the instruction.
        Failed = "failed",
        /// Canceled before it completed.
        Canceled = "canceled",
        /// Expired before it completed.
        Expired = "expired",
    }

    /// A workstation's last reported state in a job ([`RunState`]).
    ///
    /// Declared in the alphabetical order of the names, so that maps keyed
    /// by it (a job's counts per state) list in that order, as they
    /// always did.
    pub enum WorkstationState {
        /// The command succeeded; the job's check command runs.
        Checking = "checking",
        /// The command succeeded.
        Complete = "complete",
        /// Downloading the package.
        Downloading = "downloading",
        /// The command failed and will not be retried.
        Failed = "failed",
        /// Due, but held: the instructions its site passes on are not
        /// known current (an expired timestamp).
        Held = "held",
        /// The agent crashed while the command ran and no retry is left.
        Interrupted = "interrupted",
        /// Nothing reported.
        None = "none",
        /// The agent has the offer.
        Offered = "offered",
        /// The command succeeded and asked for a reboot; the check (if
        /// any) runs, and the job completes, once the workstation
        /// restarted.
        RebootPending = "reboot_pending",
        /// The agent refused the offer: not as the central site signed it.
        Refused = "refused",
        /// An attempt failed; another follows.
        Retrying = "retrying",
        /// The command runs.
        Running = "running",
        /// Not run: the same program ran here before and the job's rerun
        /// rule says not again.
        Skipped = "skipped",
        /// The agent stopped the work (cancel, or expiry before the
        /// command started).
        Stopped = "stopped",
        /// Due, but waiting for a maintenance window with room for the
        /// job's timeout.
        WaitingForWindow = "waiting_for_window",
    }

    /// Where a job's instruction stands at one site
    /// ([`job::InstructionState`]).
    pub enum InstructionState {
        /// Not reported yet.
        Pending = "pending",
        /// Reported.
        Arrived = "arrived",
        /// Refused by the site.
        Refused = "refused",
        /// A site that joined but never connected since.
        NotConnected = "not_connected",
    }

    /// One site's part in a job's distribute phase
    /// ([`hierarchy::SiteDistribution`]).
    pub enum SiteDistribution {
        /// The job distributes to no DP there (Q167007).
        NotApplicable = "not_applicable",
        /// No targeted DP has started.
        Pending = "pending",
        /// Under way.
        InProgress = "in_progress",
        /// Every targeted DP holds the version.
        Complete = "complete",
        /// A targeted DP reports a failure.
        Failed = "failed",
    }
}

impl From<&DistributionState> for DpState {
    fn from(state: &DistributionState) -> DpState {
        match state {
            DistributionState::Pending => DpState::Pending,
            DistributionState::Transferring { .. } => DpState::Transferring,
            DistributionState::Installed => DpState::Installed,
            DistributionState::Failed { .. } => DpState::Failed,
            DistributionState::RefreshPending => DpState::RefreshPending,
            DistributionState::Repairing { .. } => DpState::Repairing,
        }
    }
}

impl From<run::Reachability> for Reachability {
    fn from(reachability: run::Reachability) -> Reachability {
        match reachability {
            run::Reachability::Reachable => Reachability::Reachable,
            run::Reachability::UnreachableSince(_) => Reachability::Unreachable,
            run::Reachability::Never => Reachability::Never,
        }
    }
}

impl From<job::JobState> for JobState {
    fn from(state: job::JobState) -> JobState {
        match state {
            job::JobState::Scheduled => JobState::Scheduled,
            job::JobState::Active => JobState::Active,
            job::JobState::Expired => JobState::Expired,
            job::JobState::Canceled => JobState::Canceled,
        }
    }
}

impl From<job::JobOutcome> for JobOutcome {
    fn from(outcome: job::JobOutcome) -> JobOutcome {
        match outcome {
            job::JobOutcome::InProgress => JobOutcome::InProgress,
            job::JobOutcome::Complete => JobOutcome::Complete,
            job::JobOutcome::Failed => JobOutcome::Failed,
            job::JobOutcome::Canceled => JobOutcome::Canceled,
            job::JobOutcome::Expired => JobOutcome::Expired,
        }
    }
}

impl From<&RunState> for WorkstationState {
    fn from(state: &RunState) -> WorkstationState {
        match state {
            RunState::None => WorkstationState::None,
            RunState::Offered => WorkstationState::Offered,
            RunState::Downloading { .. } => WorkstationState::Downloading,
            RunState::Running => WorkstationState::Running,
            RunState::Checking => WorkstationState::Checking,
            RunState::WaitingForWindow => WorkstationState::WaitingForWindow,
            RunState::RebootPending => WorkstationState::RebootPending,
            RunState::Complete => WorkstationState::Complete,
            RunState::Failed => WorkstationState::Failed,
            RunState::Retrying { .. } => WorkstationState::Retrying,
            RunState::Interrupted => WorkstationState::Interrupted,
            RunState::Stopped => WorkstationState::Stopped,
            RunState::Refused => WorkstationState::Refused,
            RunState::Held => WorkstationState::Held,
            RunState::Skipped { .. } => WorkstationState::Skipped,
        }
    }
}

impl From<&job::InstructionState> for InstructionState {
    fn from(state: &job::InstructionState) -> InstructionState {
        match state {
            job::InstructionState::Pending => InstructionState::Pending,
            job::InstructionState::Arrived => InstructionState::Arrived,
            job::InstructionState::Refused => InstructionState::Refused,
            job::InstructionState::NotConnected => InstructionState::NotConnected,
        }
    }
}

impl From<&hierarchy::SiteDistribution> for SiteDistribution {
    fn from(summary: &hierarchy::SiteDistribution) -> SiteDistribution {
        match summary {
            hierarchy::SiteDistribution::NotApplicable => SiteDistribution::NotApplicable,
            hierarchy::SiteDistribution::Pending => SiteDistribution::Pending,
            hierarchy::SiteDistribution::InProgress => SiteDistribution::InProgress,
            hierarchy::SiteDistribution::Complete => SiteDistribution::Complete,
            hierarchy::SiteDistribution::Failed => SiteDistribution::Failed,
        }
    }
}

/// Serde for a [`SiteKind`] field: its [`SiteKind::name`], parsed back
/// with [`SiteKind::parse`] (`#[serde(with = "crate::states::site_kind")]`).
pub(crate) mod site_kind {
    use super::SiteKind;
    use serde::{de::Error as _, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(kind: &SiteKind, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(kind.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SiteKind, D::Error> {
        let text = std::borrow::Cow::<str>::deserialize(deserializer)?;
        SiteKind::parse(&text).map_err(D::Error::custom)
    }
}

/// Serde for a [`run::RerunRule`] field: its name, parsed back with
/// [`run::RerunRule::parse`]. A job signed before rerun rules existed
/// carries none, and ran whatever ran before: it reads as
/// [`run::RerunRule::Always`] (`#[serde(default = "crate::states::rerun_rule::before_rules",
/// with = "crate::states::rerun_rule")]`).
pub(crate) mod rerun_rule {
    use cascade_domain::run::RerunRule;
    use serde::{de::Error as _, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(rule: &RerunRule, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(rule.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<RerunRule, D::Error> {
        let text = std::borrow::Cow::<str>::deserialize(deserializer)?;
        RerunRule::parse(&text).map_err(D::Error::custom)
    }

    /// What a job signed before rerun rules existed did.
    pub fn before_rules() -> RerunRule {
        RerunRule::Always
    }

    /// For an optional field (a request that may leave the rule to the
    /// default).
    pub mod optional {
        use super::*;

        pub fn serialize<S: Serializer>(
            rule: &Option<RerunRule>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            match rule {
                Some(rule) => serializer.serialize_some(rule.name()),
                None => serializer.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<RerunRule>, D::Error> {
            Option::<std::borrow::Cow<'_, str>>::deserialize(deserializer)?
                .map(|text| RerunRule::parse(&text).map_err(D::Error::custom))
                .transpose()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each state's JSON is exactly its name, and parses back.
    fn round_trips<T>(all: &[T], name: impl Fn(T) -> &'static str)
    where
        T: Copy + std::fmt::Debug + PartialEq + Serialize + serde::de::DeserializeOwned,
    {
        for &state in all {
            let json = serde_json::to_string(&state).unwrap();
            assert_eq!(json, format!("\"{}\"", name(state)));
            assert_eq!(serde_json::from_str::<T>(&json).unwrap(), state);
        }
    }

    #[test]
    fn states_cross_the_wire_as_their_names() {
        round_trips(DpState::ALL, DpState::as_str);
        round_trips(Reachability::ALL, Reachability::as_str);
        round_trips(JobState::ALL, JobState::as_str);
        round_trips(JobOutcome::ALL, JobOutcome::as_str);
        round_trips(WorkstationState::ALL, WorkstationState::as_str);
        round_trips(InstructionState::ALL, InstructionState::as_str);
        round_trips(SiteDistribution::ALL, SiteDistribution::as_str);
        assert!(serde_json::from_str::<JobState>("\"paused\"").is_err());
    }

    /// The names the wire always carried, spelled out once more here as
    /// the compatibility check (the tables above are the source).
    #[test]
    fn the_wire_names_are_the_ones_of_before() {
        let names = |all: &[&'static str]| all.join(" ");
        assert_eq!(
            names(&DpState::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>()),
            "pending transferring installed failed refresh-pending repairing"
        );
        assert_eq!(
            names(
                &InstructionState::ALL
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
            ),
            "pending arrived refused not_connected"
        );
        assert_eq!(
            names(
                &SiteDistribution::ALL
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
            ),
            "not_applicable pending in_progress complete failed"
        );
        assert_eq!(
            names(
                &JobOutcome::ALL
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
            ),
            "in_progress complete failed canceled expired"
        );
        assert_eq!(
            names(
                &Reachability::ALL
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
            ),
            "reachable unreachable never"
        );
        assert_eq!(
            names(&JobState::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>()),
            "scheduled active expired canceled"
        );
        // `refused` and `held` are new with issue 12; `skipped`,
        // `checking`, `reboot_pending` and `waiting_for_window` with issue
        // 14; the others are as before.
        assert_eq!(
            names(
                &WorkstationState::ALL
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
            ),
            "checking complete downloading failed held interrupted none offered reboot_pending refused retrying running skipped stopped waiting_for_window"
        );
    }

    #[test]
    fn workstation_states_order_as_their_names() {
        let mut by_enum = WorkstationState::ALL.to_vec();
        by_enum.sort();
        let mut by_name = WorkstationState::ALL.to_vec();
        by_name.sort_by_key(|state| state.as_str());
        assert_eq!(by_enum, by_name);
    }

    #[test]
    fn site_kinds_cross_the_wire_as_their_names() {
        #[derive(Serialize, Deserialize)]
        struct Kinded {
            #[serde(with = "site_kind")]
            kind: SiteKind,
        }
        for kind in [SiteKind::Central, SiteKind::Primary, SiteKind::Secondary] {
            let json = serde_json::to_string(&Kinded { kind }).unwrap();
            assert_eq!(json, format!("{{\"kind\":\"{}\"}}", kind.name()));
            assert_eq!(serde_json::from_str::<Kinded>(&json).unwrap().kind, kind);
        }
        assert!(serde_json::from_str::<Kinded>("{\"kind\":\"tertiary\"}").is_err());
    }
}
