//! The run phase: what one workstation did with one job, folded from its
//! status events, whether a job runs a program that already ran there
//! (its rerun rule), and whether an agent is reachable.
//!
//! The rule that seed 003 (Q152229) was about lives here: a job's expiry or
//! cancellation is a flag shown *beside* each workstation's last reported
//! state, never a state that replaces it.

use crate::{Error, Result, TimestampMs};
use std::fmt;

/// Whether a job runs a program that already ran on the workstation:
/// Configuration Manager's four rerun behaviours. "The program" is the
/// same package version run by the same command line, by any job; the
/// agent decides from its own history when the job is first due, so the
/// decision holds while it is cut off from its site. A job the
/// workstation requested (an optional one) always runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum RerunRule {
    /// Runs whatever happened before.
    Always,
    /// Runs only if the program never ran here.
    Never,
    /// Runs unless the program's last run here succeeded (the default, as
    /// in Configuration Manager).
    #[default]
    IfFailed,
    /// Runs unless the program's last run here failed.
    IfSucceeded,
}

/// How a program's last run on a workstation ended: the command ran and
/// ended with a success code, or it ran and did not (a failure code, a
/// timeout, stopped by a cancel, interrupted by a crash).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PastOutcome {
    Succeeded,
    Failed,
}

impl RerunRule {
    /// Every rule, in the order help texts list them.
    pub const ALL: [RerunRule; 4] = [
        RerunRule::IfFailed,
        RerunRule::Always,
        RerunRule::Never,
        RerunRule::IfSucceeded,
    ];

    /// Parses `always`, `never`, `if-failed` or `if-succeeded`.
    pub fn parse(text: &str) -> Result<RerunRule> {
        RerunRule::ALL
            .into_iter()
            .find(|rule| rule.name() == text)
            .ok_or_else(|| Error::InvalidValue {
                what: "rerun rule",
                value: text.to_owned(),
                expected: "always, never, if-failed or if-succeeded",
            })
    }

    /// The name used on the wire, in tables and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            RerunRule::Always => "always",
            RerunRule::Never => "never",
            RerunRule::IfFailed => "if-failed",
            RerunRule::IfSucceeded => "if-succeeded",
        }
    }

    /// Whether the job runs, given how the same program's last run here
    /// ended (`None`: it never ran here). Every rule runs a program that
    /// never ran.
    pub fn runs_after(self, last: Option<PastOutcome>) -> bool {
        match (self, last) {
            (_, None) | (RerunRule::Always, _) => true,
            (RerunRule::Never, Some(_)) => false,
            (RerunRule::IfFailed, Some(last)) => last == PastOutcome::Failed,
            (RerunRule::IfSucceeded, Some(last)) => last == PastOutcome::Succeeded,
        }
    }
}

impl fmt::Display for RerunRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

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
    /// Reported by the agent: the command of attempt `attempt` succeeded
    /// and the job's check command runs; the job completes only if it
    /// passes.
    Checking { attempt: u32 },
    /// Reported by the agent: the command of attempt `attempt` ended with
    /// one of the job's reboot codes (it succeeded, and asked for a
    /// reboot): the job completes once the workstation has restarted and
    /// the check, if any, passed.
    RebootPending {
        attempt: u32,
        exit_code: i32,
        output_tail: String,
    },
    /// Reported by the agent: the command ended with a success exit code
    /// (and the check, if the job has one, passed).
    Completed {
        attempt: u32,
        exit_code: i32,
        output_tail: String,
    },
    /// Reported by the agent when it starts again after a crash: attempt
    /// `attempt` (of `of` allowed) was running when it stopped, so how the
    /// command ended is unknown. The interrupted attempt counts; another
    /// follows only if `retrying` (the job's retry policy allows it).
    Interrupted {
        attempt: u32,
        of: u32,
        retrying: bool,
        reason: String,
    },
    /// Reported by the agent: it stopped the job's work in flight because
    /// the job was canceled (the command is terminated) or expired before
    /// the command started; nothing more happens.
    Stopped {
        attempt: u32,
        reason: String,
        output_tail: String,
    },
    /// Reported by the agent: it refused the job's offer (not as the central
    /// site signed it), and runs nothing for it.
    Refused { reason: String },
    /// Reported by the agent: the job is due but held, not started, because
    /// the instructions its site passes on are not known current.
    Held { reason: String },
    /// Reported by the agent: the job is due but not started, because no
    /// maintenance window of its collection is open with room for its
    /// timeout: the next such window opens at `opens_at` (none: no window
    /// is long enough).
    WaitingForWindow {
        opens_at: Option<TimestampMs>,
        /// Why none will do, if not that none is long enough.
        reason: Option<String>,
    },
    /// Reported by the agent: the job did not run because the same program
    /// ran here before (in job `previous_job`, ending as `previous`) and the
    /// job's rerun rule says not again. Final.
    Skipped {
        rule: RerunRule,
        previous_job: u64,
        previous: PastOutcome,
    },
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
    /// The command succeeded; the job's check command runs.
    Checking,
    /// The command succeeded and asked for a reboot; the workstation has
    /// not restarted since.
    RebootPending,
    /// The command succeeded (and the check passed).
    Complete,
    /// The command failed and will not be retried.
    Failed,
    /// An attempt failed; another follows.
    Retrying { of: u32 },
    /// The agent crashed while the command ran and the retry policy allows
    /// no further attempt; how the command ended is unknown.
    Interrupted,
    /// The agent stopped the work in flight (the job was canceled, or it
    /// expired before the command started).
    Stopped,
    /// The agent refused the offer (unsigned, altered on the way, or older
    /// than the one it held): nothing ran.
    Refused,
    /// Due, but held until the central site's timestamp is current again.
    Held,
    /// Due, but waiting for a maintenance window (when it opens is the
    /// view's `window_opens_at`).
    WaitingForWindow,
    /// Not run: the same program ran here before, and the rerun rule says
    /// not again. The workstation is left as that run left it (`previous`).
    Skipped { previous: PastOutcome },
}

impl RunState {
    /// True once nothing more will happen on its own.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            RunState::Complete
                | RunState::Failed
                | RunState::Interrupted
                | RunState::Stopped
                | RunState::Refused
                | RunState::Skipped { .. }
        )
    }

    /// True when the program is known to have succeeded on the
    /// workstation: this job's run completed, or it was skipped because an
    /// earlier run of the same program had.
    pub fn succeeded(&self) -> bool {
        matches!(
            self,
            RunState::Complete
                | RunState::Skipped {
                    previous: PastOutcome::Succeeded
                }
        )
    }

    /// True when the job failed on the workstation: its last attempt
    /// failed or was interrupted, the offer was refused (it did not run
    /// there), or it was skipped after an earlier run of the same program
    /// had failed (the rule `never` or `if-succeeded`).
    pub fn failed(&self) -> bool {
        matches!(
            self,
            RunState::Failed
                | RunState::Interrupted
                | RunState::Refused
                | RunState::Skipped {
                    previous: PastOutcome::Failed
                }
        )
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
    /// The last few KiB of output of the last finished attempt, whatever
    /// its end (completed, failed, timed out, retrying, stopped).
    pub output_tail: Option<String>,
    /// When the job expired, shown beside the state.
    pub expired_at: Option<TimestampMs>,
    /// When the job was canceled, shown beside the state.
    pub canceled_at: Option<TimestampMs>,
    /// While it waits for a maintenance window: when the next one with
    /// room for the job's timeout opens (none: no window is long enough).
    pub window_opens_at: Option<TimestampMs>,
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
                window_opens_at: None,
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
            view.window_opens_at = None;
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
            RunEvent::Checking { attempt } => {
                set(RunState::Checking);
                view.attempts = view.attempts.max(*attempt);
            }
            RunEvent::RebootPending {
                attempt,
                exit_code,
                output_tail,
            } => {
                set(RunState::RebootPending);
                view.attempts = view.attempts.max(*attempt);
                view.exit_code = Some(*exit_code);
                view.reason = None;
                view.output_tail = Some(output_tail.clone());
            }
            RunEvent::Completed {
                attempt,
                exit_code,
                output_tail,
            } => {
                set(RunState::Complete);
                view.attempts = view.attempts.max(*attempt);
                view.exit_code = Some(*exit_code);
                view.reason = None;
                view.output_tail = Some(output_tail.clone());
            }
            RunEvent::Interrupted {
                attempt,
                of,
                retrying,
                reason,
            } => {
                set(if *retrying {
                    RunState::Retrying { of: *of }
                } else {
                    RunState::Interrupted
                });
                view.attempts = view.attempts.max(*attempt);
                view.exit_code = None;
                view.reason = Some(reason.clone());
                view.output_tail = None;
            }
            RunEvent::Stopped {
                attempt,
                reason,
                output_tail,
            } => {
                set(RunState::Stopped);
                view.attempts = view.attempts.max(*attempt);
                view.exit_code = None;
                view.reason = Some(reason.clone());
                view.output_tail = Some(output_tail.clone());
            }
            RunEvent::Refused { reason } => {
                set(RunState::Refused);
                view.exit_code = None;
                view.reason = Some(reason.clone());
                view.output_tail = None;
            }
            RunEvent::Held { reason } => {
                set(RunState::Held);
                view.reason = Some(reason.clone());
            }
            RunEvent::WaitingForWindow { opens_at, reason } => {
                set(RunState::WaitingForWindow);
                view.window_opens_at = *opens_at;
                view.reason = match (opens_at, reason) {
                    (_, Some(reason)) => Some(reason.clone()),
                    (Some(_), None) => None,
                    (None, None) => Some(
                        "no maintenance window of its collection is long enough for its timeout"
                            .into(),
                    ),
                };
            }
            RunEvent::Skipped {
                rule,
                previous_job,
                previous,
            } => {
                set(RunState::Skipped {
                    previous: *previous,
                });
                view.exit_code = None;
                let ended = match previous {
                    PastOutcome::Succeeded => "succeeded",
                    PastOutcome::Failed => "failed",
                };
                view.reason = Some(format!(
                    "not run again (rerun rule {rule}): the same program {ended} here in job {previous_job}"
                ));
                view.output_tail = None;
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

/// What a site knows about an agent's contact with it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Contact {
    /// When it was last heard from: a poll began or ended, a report
    /// arrived. `None`: never (enrolling is not contact: an agent that was
    /// set up but never ran is not reachable).
    pub last_seen: Option<TimestampMs>,
    /// Policy polls it holds open now. A held long poll is the strongest
    /// sign of life: the agent is connected this very moment.
    pub polls_held: u32,
    /// When its last poll ended by the agent closing the connection before
    /// the answer (it stopped, crashed or lost the network), if nothing
    /// was heard from it since.
    pub hung_up_at: Option<TimestampMs>,
}

/// How long after a poll ends an agent may take to poll again before it
/// counts as unreachable, on top of the poll interval when the poll was
/// answered. A live agent polls again at once after an answer, and within
/// about a second after a network error.
pub const REACHABLE_GRACE_MS: i64 = 5_000;

/// Judges an agent from what the site knows of its contact, the poll
/// interval and now: reachable while it holds a poll open; after its poll
/// was answered, for one poll interval and a grace (it polls again at once
/// and holds the poll for about an interval); after it hung up, for the
/// grace only.
pub fn reachability(contact: Contact, poll_interval_ms: i64, now: TimestampMs) -> Reachability {
    if contact.polls_held > 0 {
        return Reachability::Reachable;
    }
    let Some(seen) = contact.last_seen else {
        return Reachability::Never;
    };
    match contact.hung_up_at {
        Some(left) if now - left > REACHABLE_GRACE_MS => Reachability::UnreachableSince(left),
        Some(_) => Reachability::Reachable,
        None if now - seen > poll_interval_ms + REACHABLE_GRACE_MS => {
            Reachability::UnreachableSince(seen)
        }
        None => Reachability::Reachable,
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
                output_tail: "ok".into(),
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
    fn the_four_rerun_rules_follow_configuration_manager() {
        use PastOutcome::{Failed, Succeeded};
        use RerunRule::*;
        let table = [
            (Always, [true, true, true]),
            (Never, [true, false, false]),
            (IfFailed, [true, false, true]),
            (IfSucceeded, [true, true, false]),
        ];
        for (rule, [never_ran, after_success, after_failure]) in table {
            assert_eq!(rule.runs_after(None), never_ran, "{rule} after nothing");
            assert_eq!(rule.runs_after(Some(Succeeded)), after_success, "{rule}");
            assert_eq!(rule.runs_after(Some(Failed)), after_failure, "{rule}");
            assert_eq!(RerunRule::parse(rule.name()), Ok(rule));
        }
        assert_eq!(RerunRule::default(), IfFailed);
        let err = RerunRule::parse("sometimes").unwrap_err().to_string();
        assert!(
            err.contains("always, never, if-failed or if-succeeded"),
            "{err}"
        );
    }

    #[test]
    fn waiting_for_a_window_shows_when_it_opens_until_the_run_starts() {
        let view = fold(&[
            RunEvent::Offered,
            RunEvent::WaitingForWindow {
                opens_at: Some(9_000),
                reason: None,
            },
        ]);
        assert_eq!(view.state, RunState::WaitingForWindow);
        assert_eq!(view.window_opens_at, Some(9_000));
        assert!(!view.state.is_final());
        let never = fold(&[RunEvent::WaitingForWindow {
            opens_at: None,
            reason: None,
        }]);
        assert!(never.reason.unwrap().contains("long enough"));
        let started = fold(&[
            RunEvent::WaitingForWindow {
                opens_at: Some(9_000),
                reason: None,
            },
            RunEvent::Running { attempt: 1 },
        ]);
        assert_eq!(started.window_opens_at, None);
    }

    #[test]
    fn a_skipped_run_is_final_and_as_good_as_the_run_it_follows() {
        for (previous, succeeded) in [(PastOutcome::Succeeded, true), (PastOutcome::Failed, false)]
        {
            let view = fold(&[
                RunEvent::Offered,
                RunEvent::Skipped {
                    rule: RerunRule::Never,
                    previous_job: 4,
                    previous,
                },
                RunEvent::Expired,
            ]);
            assert_eq!(view.state, RunState::Skipped { previous });
            assert!(view.state.is_final());
            assert_eq!(view.state.succeeded(), succeeded);
            assert_eq!(view.state.failed(), !succeeded);
            let reason = view.reason.unwrap();
            assert!(
                reason.contains("rerun rule never") && reason.contains("job 4"),
                "{reason}"
            );
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
            output_tail: "second".into(),
        });
        let view = fold(&events);
        assert_eq!(view.state, RunState::Complete);
        assert_eq!(view.attempts, 2);
        assert_eq!(view.exit_code, Some(0));
        assert_eq!(view.output_tail.as_deref(), Some("second"));
    }

    /// Issue 10: a crash while the command ran is reported as interrupted;
    /// the attempt counts, and the state is final unless a retry follows.
    #[test]
    fn an_interrupted_attempt_counts_and_is_final_without_retries() {
        let events = vec![
            RunEvent::Offered,
            RunEvent::Running { attempt: 1 },
            RunEvent::Interrupted {
                attempt: 1,
                of: 1,
                retrying: false,
                reason: "interrupted".into(),
            },
        ];
        let view = fold(&events);
        assert_eq!(view.state, RunState::Interrupted);
        assert!(view.state.is_final());
        assert_eq!(view.attempts, 1);
        let retried = fold(&[
            RunEvent::Running { attempt: 1 },
            RunEvent::Interrupted {
                attempt: 1,
                of: 2,
                retrying: true,
                reason: "interrupted".into(),
            },
        ]);
        assert_eq!(retried.state, RunState::Retrying { of: 2 });
        assert!(!retried.state.is_final());
    }

    /// Issue 10: a run stopped on cancel ends in a final state with the
    /// output it wrote.
    #[test]
    fn a_stopped_run_is_final_and_keeps_its_output() {
        let view = fold(&[
            RunEvent::Running { attempt: 1 },
            RunEvent::Canceled,
            RunEvent::Stopped {
                attempt: 1,
                reason: "canceled".into(),
                output_tail: "half".into(),
            },
        ]);
        assert_eq!(view.state, RunState::Stopped);
        assert!(view.state.is_final());
        assert_eq!(view.output_tail.as_deref(), Some("half"));
        assert!(view.canceled_at.is_some());
    }

    /// Issue 10: an agent that never polled is not reachable, one that
    /// holds a poll is, and one that stopped is unreachable within seconds
    /// (a hang-up) or one interval and a grace (no new poll after an
    /// answer), not several intervals.
    #[test]
    fn reachability_follows_held_polls_and_hang_ups() {
        let contact = |last_seen, polls_held, hung_up_at| Contact {
            last_seen,
            polls_held,
            hung_up_at,
        };
        let minute = 60_000;
        let grace = REACHABLE_GRACE_MS;
        assert_eq!(
            reachability(contact(None, 0, None), minute, 10_000),
            Reachability::Never
        );
        assert_eq!(
            reachability(contact(Some(0), 1, None), minute, 100 * minute),
            Reachability::Reachable
        );
        let now = 10 * minute;
        assert_eq!(
            reachability(
                contact(Some(now - 1_000), 0, Some(now - 1_000)),
                minute,
                now
            ),
            Reachability::Reachable
        );
        assert_eq!(
            reachability(
                contact(Some(now - grace - 1), 0, Some(now - grace - 1)),
                minute,
                now
            ),
            Reachability::UnreachableSince(now - grace - 1)
        );
        assert_eq!(
            reachability(contact(Some(now - minute), 0, None), minute, now),
            Reachability::Reachable
        );
        assert_eq!(
            reachability(
                contact(Some(now - minute - grace - 1), 0, None),
                minute,
                now
            ),
            Reachability::UnreachableSince(now - minute - grace - 1)
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
            (1u32..4, 0i32..3).prop_map(|(attempt, exit_code)| RunEvent::Completed {
                attempt,
                exit_code,
                output_tail: "done".into(),
            }),
            (1u32..4, 1u32..4, any::<bool>()).prop_map(|(attempt, of, retrying)| {
                RunEvent::Interrupted {
                    attempt,
                    of,
                    retrying,
                    reason: "interrupted".into(),
                }
            }),
            (1u32..4).prop_map(|attempt| RunEvent::Stopped {
                attempt,
                reason: "canceled".into(),
                output_tail: "partial".into(),
            }),
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
