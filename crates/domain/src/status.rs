//! Status events and the views derived from them.
//!
//! Every state change anywhere in Cascade is reported as an immutable status
//! message. Views (what `cascade package status` prints) are folds over those
//! messages; nothing in a view is stored on its own. The folds here are
//! written so that the result does not depend on how messages from *different*
//! sources interleave: within one source messages arrive in sequence order,
//! across sources only versions and refresh generations are compared.

use crate::{TimestampMs, Version};

/// One change in the life of a package on one DP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DistributionEvent {
    /// Reported by the site: the DP must hold `version`. `refresh` counts the
    /// explicit refresh requests made for this (package, DP) so far.
    Targeted { version: Version, refresh: u64 },
    /// Reported by the DP: it started bringing `version` in; `bytes_needed` of
    /// the package's `bytes_total` have to cross the network.
    TransferStarted {
        version: Version,
        bytes_total: u64,
        bytes_needed: u64,
    },
    /// Reported by the DP while transferring.
    Progress {
        version: Version,
        bytes_done: u64,
        bytes_needed: u64,
    },
    /// Reported by the DP: every chunk of `version` is stored and verified.
    Installed {
        version: Version,
        bytes_received: u64,
    },
    /// Reported by the DP: bringing `version` in failed; it will retry.
    Failed { version: Version, reason: String },
    /// Reported by the DP: stored chunks of `version` failed verification and
    /// are being fetched again.
    CorruptionFound { version: Version, chunks: u64 },
    /// Reported by the DP: an explicit refresh of `version` finished; every
    /// chunk was re-read and verified, `repaired` of them fetched again.
    Refreshed {
        version: Version,
        refresh: u64,
        repaired: u64,
    },
}

/// A status event with the time its source recorded it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timed<E> {
    /// When the source recorded the event.
    pub at: TimestampMs,
    /// What happened.
    pub event: E,
}

/// Where one package stands on one DP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DistributionState {
    /// The DP has been told to hold the target version and has not started.
    Pending,
    /// The DP is fetching the chunks it lacks.
    Transferring { bytes_done: u64, bytes_needed: u64 },
    /// The DP holds the target version, verified.
    Installed,
    /// The last attempt failed; the DP retries by itself.
    Failed { reason: String },
    /// A refresh was requested and the DP has not reported it done yet.
    RefreshPending,
    /// The DP found corrupt chunks and is fetching them again.
    Repairing { chunks: u64 },
}

/// The derived status of one package on one DP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DistributionView {
    /// The version the DP must hold, if it was ever targeted.
    pub target: Option<Version>,
    /// The newest version the DP reported holding.
    pub installed: Option<Version>,
    /// The state with respect to the target.
    pub state: DistributionState,
    /// When the current state began.
    pub since: TimestampMs,
    /// Chunk bytes the DP reported receiving for its installed version.
    pub bytes_received: u64,
}

#[derive(Clone, Debug)]
enum Activity {
    Transferring { bytes_done: u64, bytes_needed: u64 },
    Installed,
    Failed(String),
    Repairing(u64),
}

/// Folds the events of one (package, DP) pair into its view.
#[derive(Clone, Debug, Default)]
pub struct DistributionFold {
    target: Option<(Version, u64, TimestampMs)>,
    installed: Option<Version>,
    bytes_received: u64,
    refresh_done: u64,
    activity: Option<(Version, Activity, TimestampMs)>,
}

impl DistributionFold {
    /// Applies one event. Events of one source must come in their sequence
    /// order; events of different sources may interleave in any order.
    pub fn apply(&mut self, timed: &Timed<DistributionEvent>) {
        let at = timed.at;
        match &timed.event {
            DistributionEvent::Targeted { version, refresh } => {
                let newer = match self.target {
                    None => true,
                    Some((v, r, _)) => (*version, *refresh) > (v, r),
                };
                if newer {
                    self.target = Some((*version, *refresh, at));
                }
            }
            DistributionEvent::TransferStarted {
                version,
                bytes_needed,
                ..
            } => self.set_activity(
                *version,
                Activity::Transferring {
                    bytes_done: 0,
                    bytes_needed: *bytes_needed,
                },
                at,
            ),
            DistributionEvent::Progress {
                version,
                bytes_done,
                bytes_needed,
            } => self.set_activity(
                *version,
                Activity::Transferring {
                    bytes_done: *bytes_done,
                    bytes_needed: *bytes_needed,
                },
                at,
            ),
            DistributionEvent::Installed {
                version,
                bytes_received,
            } => {
                if self.installed.is_none_or(|v| *version >= v) {
                    self.installed = Some(*version);
                    self.bytes_received = *bytes_received;
                }
                self.set_activity(*version, Activity::Installed, at);
            }
            DistributionEvent::Failed { version, reason } => {
                self.set_activity(*version, Activity::Failed(reason.clone()), at)
            }
            DistributionEvent::CorruptionFound { version, chunks } => {
                self.set_activity(*version, Activity::Repairing(*chunks), at)
            }
            DistributionEvent::Refreshed {
                version, refresh, ..
            } => {
                self.refresh_done = self.refresh_done.max(*refresh);
                if self.installed.is_none_or(|v| *version >= v) {
                    self.installed = Some(*version);
                }
                self.set_activity(*version, Activity::Installed, at);
            }
        }
    }

    fn set_activity(&mut self, version: Version, activity: Activity, at: TimestampMs) {
        if self.activity.as_ref().is_none_or(|(v, _, _)| version >= *v) {
            self.activity = Some((version, activity, at));
        }
    }

    /// The view after the events applied so far.
    pub fn view(&self) -> DistributionView {
        let (state, since) = self.state();
        DistributionView {
            target: self.target.map(|(v, _, _)| v),
            installed: self.installed,
            state,
            since,
            bytes_received: self.bytes_received,
        }
    }

    fn state(&self) -> (DistributionState, TimestampMs) {
        let Some((target, refresh, targeted_at)) = self.target else {
            return match &self.activity {
                Some((_, Activity::Installed, at)) => (DistributionState::Installed, *at),
                _ => (DistributionState::Pending, 0),
            };
        };
        match &self.activity {
            Some((version, activity, at)) if *version >= target => match activity {
                Activity::Installed if refresh > self.refresh_done => {
                    (DistributionState::RefreshPending, targeted_at.max(*at))
                }
                Activity::Installed => (DistributionState::Installed, *at),
                Activity::Transferring {
                    bytes_done,
                    bytes_needed,
                } => (
                    DistributionState::Transferring {
                        bytes_done: *bytes_done,
                        bytes_needed: *bytes_needed,
                    },
                    *at,
                ),
                Activity::Failed(reason) => (
                    DistributionState::Failed {
                        reason: reason.clone(),
                    },
                    *at,
                ),
                Activity::Repairing(chunks) => {
                    (DistributionState::Repairing { chunks: *chunks }, *at)
                }
            },
            _ => (DistributionState::Pending, targeted_at),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use DistributionEvent::*;

    fn v(n: u64) -> Version {
        Version::new(n).unwrap()
    }

    fn fold(events: &[DistributionEvent]) -> DistributionView {
        let mut fold = DistributionFold::default();
        for (i, event) in events.iter().enumerate() {
            fold.apply(&Timed {
                at: i as i64,
                event: event.clone(),
            });
        }
        fold.view()
    }

    #[test]
    fn targeted_then_installed_is_installed() {
        let view = fold(&[
            Targeted {
                version: v(1),
                refresh: 0,
            },
            TransferStarted {
                version: v(1),
                bytes_total: 10,
                bytes_needed: 10,
            },
            Installed {
                version: v(1),
                bytes_received: 10,
            },
        ]);
        assert_eq!(view.state, DistributionState::Installed);
        assert_eq!(view.installed, Some(v(1)));
    }

    #[test]
    fn a_newer_target_makes_an_installed_dp_pending_again() {
        let view = fold(&[
            Targeted {
                version: v(1),
                refresh: 0,
            },
            Installed {
                version: v(1),
                bytes_received: 10,
            },
            Targeted {
                version: v(2),
                refresh: 0,
            },
        ]);
        assert_eq!(view.state, DistributionState::Pending);
        assert_eq!(view.target, Some(v(2)));
        assert_eq!(view.installed, Some(v(1)));
    }

    #[test]
    fn a_late_report_about_an_old_version_never_moves_the_state_back() {
        let view = fold(&[
            Targeted {
                version: v(2),
                refresh: 0,
            },
            Installed {
                version: v(2),
                bytes_received: 10,
            },
            Failed {
                version: v(1),
                reason: "late".into(),
            },
        ]);
        assert_eq!(view.state, DistributionState::Installed);
        assert_eq!(view.installed, Some(v(2)));
    }

    #[test]
    fn the_dp_may_report_before_the_site_target_is_seen() {
        // Messages of different sources interleave freely.
        let view = fold(&[
            Installed {
                version: v(3),
                bytes_received: 10,
            },
            Targeted {
                version: v(3),
                refresh: 0,
            },
        ]);
        assert_eq!(view.state, DistributionState::Installed);
    }

    #[test]
    fn refresh_is_pending_until_reported() {
        let mut events = vec![
            Targeted {
                version: v(1),
                refresh: 0,
            },
            Installed {
                version: v(1),
                bytes_received: 10,
            },
            Targeted {
                version: v(1),
                refresh: 1,
            },
        ];
        assert_eq!(fold(&events).state, DistributionState::RefreshPending);
        events.push(CorruptionFound {
            version: v(1),
            chunks: 1,
        });
        assert_eq!(
            fold(&events).state,
            DistributionState::Repairing { chunks: 1 }
        );
        events.push(Refreshed {
            version: v(1),
            refresh: 1,
            repaired: 1,
        });
        assert_eq!(fold(&events).state, DistributionState::Installed);
    }

    #[test]
    fn failure_shows_its_reason_until_the_next_attempt() {
        let mut events = vec![
            Targeted {
                version: v(1),
                refresh: 0,
            },
            Failed {
                version: v(1),
                reason: "site unreachable".into(),
            },
        ];
        assert_eq!(
            fold(&events).state,
            DistributionState::Failed {
                reason: "site unreachable".into()
            }
        );
        events.push(Progress {
            version: v(1),
            bytes_done: 5,
            bytes_needed: 10,
        });
        assert_eq!(
            fold(&events).state,
            DistributionState::Transferring {
                bytes_done: 5,
                bytes_needed: 10
            }
        );
    }
}
