//! The run phase: what one workstation did with one job, folded from its
//! status events, and whether an agent is reachable.
//!
//! The rule that seed 003 (Q152229) was about lives here: a job's expiry or
//! cancellation is a flag shown *beside* each workstation's last reported
//! state, never a state that replaces it.

use crate::TimestampMs;

/// One change in the life of a job on one workstation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunEvent {
    /// Reported by the site: the job expired; offers are withdrawn.
    Expired,
    /// Reported by the site: an administrator canceled the job.
    Canceled,
    /// Reported by the agent: it received the job's offer.
    Offered,
    /// Reported by the agent: downloading the package.
    Downloading { bytes_done: u64, bytes_total: u64 },
    /// Reported by the agent: attempt `attempt` of the command started.
    Running { attempt: u32 },
    /// Reported by the agent: the command ended with a success exit code.
    Completed { attempt: u32, exit_code: i32 },
    /// Reported by the agent: the attempt failed (exit code, or a reason such
    /// as a timeout or a verification error) and no attempt is left.
    Failed {
        attempt: u32,
        exit_code: Option<i32>,
        reason: String,
        output_tail: String,
    },
    /// Reported by the agent: attempt `attempt` failed; attempt `attempt + 1`
    /// of `of` follows after the retry delay.
    Retrying {
        attempt: u32,
        of: u32,
        exit_code: Option<i32>,
        reason: String,
        output_tail: String,
    },
}

/// The last reported state of a job on a workstation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunState {
    /// Nothing reported: the job never reached or never ran on it.
    None,
    /// The agent has the offer.
    Offered,
    /// Downloading the package.
    Downloading { bytes_done: u64, bytes_total: u64 },
    /// The command runs.
    Running,
    /// The command succeeded.
    Complete,
    /// The command failed and will not be retried.
    Failed,
    /// An attempt failed; another follows.
    Retrying { of: u32 },
}

impl RunState {
    /// The short name shown in tables and JSON.
    pub fn name(&self) -> &'static str {
        match self {
            RunState::None => "none",
            RunState::Offered => "offered",
            RunState::Downloading { .. } => "downloading",
            RunState::Running => "running",
            RunState::Complete => "complete",
            RunState::Failed => "failed",
            RunState::Retrying { .. } => "retrying",
        }
    }

    /// True once nothing more will happen on its own.
    pub fn is_final(&self) -> bool {
        matches!(self, RunState::Complete | RunState::Failed)
    }
}

/// What the administrator sees for one workstation in a job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunView {
    /// The last reported state.
    pub state: RunState,
    /// When that state was reported (0 for `None`).
    pub since: TimestampMs,
    /// Attempts started so far.
    pub attempts: u32,
    /// Exit code of the last finished attempt.
    pub exit_code: Option<i32>,
    /// Why the last attempt failed, if it did.
    pub reason: Option<String>,
    /// The last few KiB of output of the last finished attempt.
    pub output_tail: Option<String>,
    /// When the job expired, shown beside the state.
    pub expired_at: Option<TimestampMs>,
    /// When the job was canceled, shown beside the state.
    pub canceled_at: Option<TimestampMs>,
}

/// Folds the events of one (job, workstation) pair.
#[derive(Clone, Debug)]
pub struct RunFold {
    view: RunView,
}

impl Default for RunFold {
    fn default() -> Self {
        RunFold {
            view: RunView {
                state: RunState::None,
                since: 0,
                attempts: 0,
                exit_code: None,
                reason: None,
                output_tail: None,
                expired_at: None,
                canceled_at: None,
            },
        }
    }
}

impl RunFold {
    /// Applies one event. The agent's events must come in its sequence order;
    /// the site's may interleave with them anywhere.
    pub fn apply(&mut self, at: TimestampMs, event: &RunEvent) {
        let view = &mut self.view;
        let mut set = |state: RunState| {
            view.state = state;
            view.since = at;
        };
        match event {
            // Flags only: expiry and cancellation never rewrite history.
            RunEvent::Expired => {
                view.expired_at.get_or_insert(at);
            }
            RunEvent::Canceled => {
                view.canceled_at.get_or_insert(at);
            }
            RunEvent::Offered => set(RunState::Offered),
            RunEvent::Downloading {
                bytes_done,
                bytes_total,
            } => set(RunState::Downloading {
                bytes_done: *bytes_done,
                bytes_total: *bytes_total,
            }),
            RunEvent::Running { attempt } => {
                set(RunState::Running);
                view.attempts = view.attempts.max(*attempt);
            }
            RunEvent::Completed { attempt, exit_code } => {
                set(RunState::Complete);
                view.attempts = view.attempts.max(*attempt);
                view.exit_code = Some(*exit_code);
                view.reason = None;
            }
            RunEvent::Failed {
                attempt,
                exit_code,
                reason,
                output_tail,
            } => {
                set(RunState::Failed);
                view.attempts = view.attempts.max(*attempt);
                view.exit_code = *exit_code;
                view.reason = Some(reason.clone());
                view.output_tail = Some(output_tail.clone());
            }
            RunEvent::Retrying {
                attempt,
                of,
                exit_code,
                reason,
                output_tail,
            } => {
                set(RunState::Retrying { of: *of });
                view.attempts = view.attempts.max(*attempt);
                view.exit_code = *exit_code;
                view.reason = Some(reason.clone());
                view.output_tail = Some(output_tail.clone());
            }
        }
    }

    /// The view after the events applied so far.
    pub fn view(&self) -> RunView {
        self.view.clone()
    }
}

/// Whether an agent is heard from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reachability {
    /// Heard from within the allowed silence.
    Reachable,
    /// Silent since this time (its last contact).
    UnreachableSince(TimestampMs),
    /// Never heard from.
    Never,
}

/// How many poll intervals of silence make an agent unreachable.
pub const SILENT_INTERVALS: i64 = 3;

/// Judges an agent from its last contact, its poll interval and now.
pub fn reachability(
    last_seen: Option<TimestampMs>,
    poll_interval_ms: i64,
    now: TimestampMs,
) -> Reachability {
    match last_seen {
        None => Reachability::Never,
        Some(seen) if now - seen > SILENT_INTERVALS * poll_interval_ms => {
            Reachability::UnreachableSince(seen)
        }
        Some(_) => Reachability::Reachable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fold(events: &[RunEvent]) -> RunView {
        let mut fold = RunFold::default();
        for (i, event) in events.iter().enumerate() {
            fold.apply(i as i64 + 1, event);
        }
        fold.view()
    }

    fn failed(attempt: u32) -> RunEvent {
        RunEvent::Failed {
            attempt,
            exit_code: Some(3),
            reason: "exit code 3".into(),
            output_tail: "boom".into(),
        }
    }

    /// The example of seed 003: three succeed, one fails, one never runs;
    /// after expiry each keeps its last state, marked expired.
    #[test]
    fn q152229_expiry_keeps_the_last_reported_state() {
        let complete = vec![
            RunEvent::Offered,
            RunEvent::Running { attempt: 1 },
            RunEvent::Completed {
                attempt: 1,
                exit_code: 0,
            },
        ];
        let fails = vec![
            RunEvent::Offered,
            RunEvent::Running { attempt: 1 },
            failed(1),
        ];
        let never: Vec<RunEvent> = Vec::new();
        for (events, state) in [
            (complete.clone(), RunState::Complete),
            (complete.clone(), RunState::Complete),
            (complete, RunState::Complete),
            (fails, RunState::Failed),
            (never, RunState::None),
        ] {
            let before = fold(&events);
            let mut after_events = events.clone();
            after_events.push(RunEvent::Expired);
            let after = fold(&after_events);
            assert_eq!(after.state, state);
            assert_eq!(after.state, before.state);
            assert_eq!(after.exit_code, before.exit_code);
            assert!(after.expired_at.is_some());
        }
    }

    #[test]
    fn retries_show_as_retrying_until_the_last_attempt_ends() {
        let mut events = vec![
            RunEvent::Running { attempt: 1 },
            RunEvent::Retrying {
                attempt: 1,
                of: 3,
                exit_code: Some(1),
                reason: "exit code 1".into(),
                output_tail: "first".into(),
            },
        ];
        assert_eq!(fold(&events).state, RunState::Retrying { of: 3 });
        events.push(RunEvent::Running { attempt: 2 });
        events.push(RunEvent::Completed {
            attempt: 2,
            exit_code: 0,
        });
        let view = fold(&events);
        assert_eq!(view.state, RunState::Complete);
        assert_eq!(view.attempts, 2);
        assert_eq!(view.exit_code, Some(0));
    }

    #[test]
    fn an_agent_is_unreachable_after_several_silent_intervals() {
        assert_eq!(reachability(None, 1000, 10_000), Reachability::Never);
        assert_eq!(
            reachability(Some(9_000), 1000, 10_000),
            Reachability::Reachable
        );
        assert_eq!(
            reachability(Some(1_000), 1000, 10_000),
            Reachability::UnreachableSince(1_000)
        );
    }

    fn agent_event() -> impl Strategy<Value = RunEvent> {
        prop_oneof![
            Just(RunEvent::Offered),
            (0u64..100, 100u64..200).prop_map(|(d, t)| RunEvent::Downloading {
                bytes_done: d,
                bytes_total: t
            }),
            (1u32..4).prop_map(|attempt| RunEvent::Running { attempt }),
            (1u32..4, 0i32..3)
                .prop_map(|(attempt, exit_code)| RunEvent::Completed { attempt, exit_code }),
            (1u32..4).prop_map(failed),
        ]
    }

    proptest! {
        /// Wherever expiry and cancellation fall among a workstation's
        /// reports, the state is the same as without them.
        #[test]
        fn expiry_and_cancel_never_change_the_state(
            events in proptest::collection::vec(agent_event(), 0..12),
            expire_at in 0usize..13,
            cancel_at in 0usize..13,
        ) {
            let plain = fold(&events);
            let mut flagged = events.clone();
            flagged.insert(expire_at.min(flagged.len()), RunEvent::Expired);
            flagged.insert(cancel_at.min(flagged.len()), RunEvent::Canceled);
            let view = fold(&flagged);
            prop_assert_eq!(view.state, plain.state);
            prop_assert_eq!(view.exit_code, plain.exit_code);
            prop_assert_eq!(view.attempts, plain.attempts);
            prop_assert!(view.expired_at.is_some() && view.canceled_at.is_some());
        }
    }
}
