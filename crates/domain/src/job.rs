//! The job status fold: from a job's facts and the events reported about
//! it, per site and per workstation, to what the administrator sees — each
//! workstation's last state, each site's instruction and distribute phase,
//! and the job's outcome. Pure: the site gathers the events from its status
//! messages, passes what it knows of its DPs and agents, and maps the view
//! to its wire types.
//!
//! **Architecture Invariant:** expiry and cancellation are events of a
//! site; they are folded as flags beside each workstation's last reported
//! state, never in its place, and what was complete or failed before stays
//! so (Q152229).

use crate::hierarchy::SiteDistribution;
use crate::run::{RunEvent, RunFold, RunState, RunView};
use crate::status::{DistributionFold, DistributionView};
use crate::{TimestampMs, Version};
use std::collections::BTreeMap;

/// How long after a run's deadline (its start plus the job's timeout) a
/// workstation that reported it running is still waited for; past it, a
/// canceled or expired job is final even if the workstation never reports.
pub const RUN_REPORT_GRACE_MS: i64 = 60_000;

/// Where a job stands by its own times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobState {
    /// Not offered yet (its offer time is ahead).
    Scheduled,
    /// Offered.
    Active,
    /// Its expiry passed.
    Expired,
    /// It was canceled.
    Canceled,
}

impl JobState {
    /// The state at `now`: canceled once canceled, expired once its expiry
    /// passed, scheduled before its offer time, else active.
    pub fn at(
        canceled_at: Option<TimestampMs>,
        offer_at: TimestampMs,
        expires_at: Option<TimestampMs>,
        now: TimestampMs,
    ) -> JobState {
        if canceled_at.is_some() {
            JobState::Canceled
        } else if expires_at.is_some_and(|at| at <= now) {
            JobState::Expired
        } else if offer_at > now {
            JobState::Scheduled
        } else {
            JobState::Active
        }
    }

    /// Still to be offered or on offer.
    pub fn is_open(self) -> bool {
        matches!(self, JobState::Scheduled | JobState::Active)
    }
}

/// What became of a job's instruction at one site.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InstructionState {
    /// Not reported arrived yet.
    Pending,
    /// The site reported the job arrived.
    Arrived,
    /// The site refused the instruction (it can never apply there).
    Refused,
    /// The site never connected to its parent: nothing reaches it.
    NotConnected,
}

/// The job as a whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobOutcome {
    /// A connected site has not reported the instruction, a workstation has
    /// not finished, or a distribute phase is still under way.
    InProgress,
    /// Every workstation completed and every distribute phase is complete
    /// or not applicable.
    Complete,
    /// A workstation failed, or a site refused the instruction.
    Failed,
    /// Canceled before it finished, without a failure.
    Canceled,
    /// Expired before it finished, without a failure.
    Expired,
}

/// What the job's own row says.
#[derive(Clone, Debug)]
pub struct JobFacts {
    /// The code of the site folding (its workstations follow the
    /// collection live).
    pub own: String,
    /// When the job was created.
    pub created_at: TimestampMs,
    /// Its state by its times.
    pub state: JobState,
    /// Its package version.
    pub version: Version,
    /// Its timeout (download and run), in ms.
    pub timeout_ms: i64,
}

/// An event a site reported about the job.
#[derive(Clone, Debug)]
pub enum SiteEvent {
    /// The job arrived (reported again when its targets there change: the
    /// first time is the arrival, the last one names the DPs).
    Arrived {
        targets: Vec<String>,
        dps: Vec<String>,
    },
    /// The site refused the instruction, and why.
    Refused { reason: String },
    /// A flag for every workstation of the site (expired, canceled).
    Run(RunEvent),
}

/// A site of the subtree as the folding site knows it.
#[derive(Clone, Debug)]
pub struct KnownSite {
    /// Its code.
    pub code: String,
    /// When it was registered (`TimestampMs::MIN` for the folding site).
    pub registered_at: TimestampMs,
    /// Whether it ever connected (its `site_joined` came up); the folding
    /// site counts as connected.
    pub connected: bool,
}

/// One workstation's row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkstationRow {
    pub site: String,
    pub agent: String,
    /// Its last reported state, with the site's flags beside it.
    pub run: RunView,
    /// Since when it has been silent, for the folding site's own agents.
    pub unreachable_since: Option<TimestampMs>,
}

/// One site's row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SiteRow {
    pub site: String,
    pub instruction: InstructionState,
    /// Why it refused the instruction (only while it did not arrive).
    pub reason: Option<String>,
    pub arrived_at: Option<TimestampMs>,
    /// Its workstations listed in the job.
    pub targets: u64,
    /// Its distribute phase (`Pending` until the job arrived).
    pub distribution: SiteDistribution,
    /// The DPs it distributes to, each with its view of the package.
    pub dps: Vec<(String, DistributionView)>,
}

/// The whole view of a job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobView {
    pub workstations: Vec<WorkstationRow>,
    pub sites: Vec<SiteRow>,
    pub outcome: JobOutcome,
}

#[derive(Clone, Debug)]
struct Arrival {
    at: TimestampMs,
    targets: Vec<String>,
    dps: Vec<String>,
}

/// Gathers a job's events; [`JobFold::view`] folds them.
#[derive(Clone, Debug)]
pub struct JobFold {
    facts: JobFacts,
    arrivals: BTreeMap<String, Arrival>,
    refusals: BTreeMap<String, String>,
    site_events: BTreeMap<String, Vec<(TimestampMs, RunEvent)>>,
    runs: BTreeMap<(String, String), RunFold>,
}

impl JobFold {
    /// A fold of the job described by `facts`, with no event yet.
    pub fn new(facts: JobFacts) -> JobFold {
        JobFold {
            facts,
            arrivals: BTreeMap::new(),
            refusals: BTreeMap::new(),
            site_events: BTreeMap::new(),
            runs: BTreeMap::new(),
        }
    }

    /// An event of `site` itself. Each site's events in its sequence order.
    pub fn site_event(&mut self, site: &str, at: TimestampMs, event: SiteEvent) {
        match event {
            SiteEvent::Arrived { targets, dps } => {
                let arrival = self.arrivals.entry(site.to_owned()).or_insert(Arrival {
                    at,
                    targets: Vec::new(),
                    dps: Vec::new(),
                });
                arrival.targets.extend(targets);
                arrival.dps = dps;
            }
            SiteEvent::Refused { reason } => {
                self.refusals.entry(site.to_owned()).or_insert(reason);
            }
            SiteEvent::Run(event) => self
                .site_events
                .entry(site.to_owned())
                .or_default()
                .push((at, event)),
        }
    }

    /// An event a workstation of `site` reported, in its sequence order (a
    /// message relayed late is folded in its place, never moving a state
    /// back).
    pub fn workstation_event(
        &mut self,
        site: &str,
        agent: &str,
        at: TimestampMs,
        event: &RunEvent,
    ) {
        self.runs
            .entry((site.to_owned(), agent.to_owned()))
            .or_default()
            .apply(at, event);
    }

    /// A workstation the job targets now (the folding site's, which follow
    /// the collection live), listed even before it reports.
    pub fn target(&mut self, site: &str, agent: &str) {
        self.runs
            .entry((site.to_owned(), agent.to_owned()))
            .or_default();
    }

    /// The view. `sites` is the folding site and every site below it;
    /// `queued_dps` are the folding site's DPs queued for the package (its
    /// DPs when it recorded no arrival: a job from before arrivals were
    /// recorded); `dp_view` gives a DP's view of the package by (site,
    /// DP), `unreachable` since when one of the folding site's agents has
    /// been silent.
    pub fn view(
        mut self,
        sites: &[KnownSite],
        queued_dps: Vec<String>,
        dp_view: impl Fn(&str, &str) -> Option<DistributionView>,
        unreachable: impl Fn(&str, &str) -> Option<TimestampMs>,
        now: TimestampMs,
    ) -> JobView {
        let own = self.facts.own.clone();
        self.arrivals.entry(own.clone()).or_insert(Arrival {
            at: self.facts.created_at,
            targets: Vec::new(),
            dps: queued_dps,
        });
        // Workstations a site reported targeted are listed from then on.
        for (site, arrival) in &self.arrivals {
            for agent in &arrival.targets {
                self.runs.entry((site.clone(), agent.clone())).or_default();
            }
        }
        let workstations: Vec<WorkstationRow> = std::mem::take(&mut self.runs)
            .into_iter()
            .map(|((site, agent), mut fold)| {
                for (at, event) in self.site_events.get(&site).into_iter().flatten() {
                    fold.apply(*at, event);
                }
                let run = fold.view();
                WorkstationRow {
                    unreachable_since: if site == own {
                        unreachable(&site, &agent)
                    } else {
                        None
                    },
                    site,
                    agent,
                    run,
                }
            })
            .collect();

        // Per site: instruction, distribute phase, runs. A site that joined
        // after the job was created and never got it is listed only while
        // the job is open (a snapshot of open jobs goes to every new site).
        let mut rows = Vec::new();
        for site in sites {
            let arrival = self.arrivals.get(&site.code);
            if arrival.is_none()
                && site.registered_at > self.facts.created_at
                && !self.facts.state.is_open()
            {
                continue;
            }
            let dps: Vec<(String, DistributionView)> = arrival
                .map(|arrival| {
                    arrival
                        .dps
                        .iter()
                        .map(|dp| {
                            let view = dp_view(&site.code, dp)
                                .unwrap_or_else(|| DistributionFold::default().view());
                            (dp.clone(), view)
                        })
                        .collect()
                })
                .unwrap_or_default();
            let refused = self.refusals.get(&site.code);
            let instruction = match (arrival, refused) {
                (Some(_), _) => InstructionState::Arrived,
                (None, Some(_)) => InstructionState::Refused,
                (None, None) if site.code != own && !site.connected => {
                    InstructionState::NotConnected
                }
                (None, None) => InstructionState::Pending,
            };
            let distribution = match arrival {
                Some(_) => {
                    let views: Vec<DistributionView> =
                        dps.iter().map(|(_, view)| view.clone()).collect();
                    SiteDistribution::of(&views, self.facts.version)
                }
                None => SiteDistribution::Pending,
            };
            rows.push(SiteRow {
                instruction,
                reason: refused.filter(|_| arrival.is_none()).cloned(),
                arrived_at: arrival.map(|arrival| arrival.at),
                targets: workstations
                    .iter()
                    .filter(|ws| ws.site == site.code)
                    .count() as u64,
                distribution,
                dps,
                site: site.code.clone(),
            });
        }
        let outcome = outcome(&self.facts, &rows, &workstations, now);
        JobView {
            workstations,
            sites: rows,
            outcome,
        }
    }
}

/// The job as a whole: in progress while a connected site has not reported
/// the instruction or a workstation has not finished; then failed if a
/// workstation failed or a site refused the instruction (a DP still
/// retrying changes nothing about that); else complete once every site's
/// distribution is complete or not applicable. A site that never connected
/// is left out.
///
/// A job canceled or expired before that is final too once no workstation
/// is still downloading or running it (one that is may finish, and its
/// report still counts, until its timeout and [`RUN_REPORT_GRACE_MS`] have
/// passed): failed if a workstation failed, else canceled or expired. What
/// was complete or failed before stays so: expiry never rewrites history
/// (Q152229).
fn outcome(
    job: &JobFacts,
    sites: &[SiteRow],
    workstations: &[WorkstationRow],
    now: TimestampMs,
) -> JobOutcome {
    let running = running_outcome(sites, workstations);
    let ended = match job.state {
        JobState::Canceled => JobOutcome::Canceled,
        JobState::Expired => JobOutcome::Expired,
        JobState::Scheduled | JobState::Active => return running,
    };
    let still_running = workstations.iter().any(|ws| {
        matches!(
            ws.run.state,
            RunState::Downloading { .. } | RunState::Running | RunState::Checking
        ) && ws.run.since + job.timeout_ms + RUN_REPORT_GRACE_MS > now
    });
    let any_failed = workstations.iter().any(|ws| ws.run.state.failed());
    match running {
        JobOutcome::Failed => JobOutcome::Failed,
        // Ended with a failure among the runs: that stays the outcome,
        // whatever else did not run.
        JobOutcome::InProgress if !still_running && any_failed => JobOutcome::Failed,
        // Complete only if every workstation completed (or was skipped
        // after an earlier success): a run stopped by the cancel is final
        // but not complete.
        JobOutcome::Complete if workstations.iter().all(|ws| ws.run.state.succeeded()) => {
            JobOutcome::Complete
        }
        JobOutcome::InProgress if still_running => JobOutcome::InProgress,
        _ => ended,
    }
}

fn running_outcome(sites: &[SiteRow], workstations: &[WorkstationRow]) -> JobOutcome {
    let connected = |site: &&SiteRow| site.instruction != InstructionState::NotConnected;
    let runs_open = sites
        .iter()
        .filter(connected)
        .any(|site| site.instruction == InstructionState::Pending)
        || workstations.iter().any(|ws| !ws.run.state.is_final());
    let failed = workstations.iter().any(|ws| ws.run.state.failed())
        || sites
            .iter()
            .any(|site| site.instruction == InstructionState::Refused);
    let distributing = sites.iter().filter(connected).any(|site| {
        site.instruction == InstructionState::Arrived
            && !matches!(
                site.distribution,
                SiteDistribution::NotApplicable | SiteDistribution::Complete
            )
    });
    match (runs_open, failed, distributing) {
        (true, _, _) => JobOutcome::InProgress,
        (false, true, _) => JobOutcome::Failed,
        (false, false, true) => JobOutcome::InProgress,
        (false, false, false) => JobOutcome::Complete,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::DistributionState;

    const CREATED: TimestampMs = 1_000;
    const NOW: TimestampMs = 100_000;
    const TIMEOUT: i64 = 10_000;

    fn facts(state: JobState) -> JobFacts {
        JobFacts {
            own: "CEN".into(),
            created_at: CREATED,
            state,
            version: Version::new(2).unwrap(),
            timeout_ms: TIMEOUT,
        }
    }

    fn site(code: &str, registered_at: TimestampMs, connected: bool) -> KnownSite {
        KnownSite {
            code: code.into(),
            registered_at,
            connected,
        }
    }

    /// The central site and a connected primary registered before the job.
    fn two_sites() -> Vec<KnownSite> {
        vec![site("CEN", TimestampMs::MIN, true), site("P01", 0, true)]
    }

    fn installed(version: u64) -> DistributionView {
        DistributionView {
            target: Version::new(version),
            installed: Version::new(version),
            state: DistributionState::Installed,
            since: 10,
            bytes_received: 0,
        }
    }

    fn state(state: DistributionState) -> DistributionView {
        DistributionView {
            target: Version::new(2),
            installed: None,
            state,
            since: 10,
            bytes_received: 0,
        }
    }

    fn arrived(fold: &mut JobFold, site: &str, targets: &[&str], dps: &[&str]) {
        fold.site_event(
            site,
            2_000,
            SiteEvent::Arrived {
                targets: targets.iter().map(|t| t.to_string()).collect(),
                dps: dps.iter().map(|d| d.to_string()).collect(),
            },
        );
    }

    fn completed(fold: &mut JobFold, site: &str, agent: &str) {
        fold.workstation_event(site, agent, 3_000, &RunEvent::Running { attempt: 1 });
        fold.workstation_event(
            site,
            agent,
            4_000,
            &RunEvent::Completed {
                attempt: 1,
                exit_code: 0,
                output_tail: String::new(),
            },
        );
    }

    fn failed_run(fold: &mut JobFold, site: &str, agent: &str) {
        fold.workstation_event(
            site,
            agent,
            4_000,
            &RunEvent::Failed {
                attempt: 1,
                exit_code: Some(1),
                reason: "exit 1".into(),
                output_tail: String::new(),
            },
        );
    }

    fn view(fold: JobFold, sites: &[KnownSite]) -> JobView {
        view_with(fold, sites, |_, _| Some(installed(2)), NOW)
    }

    fn view_with(
        fold: JobFold,
        sites: &[KnownSite],
        dp_view: impl Fn(&str, &str) -> Option<DistributionView>,
        now: TimestampMs,
    ) -> JobView {
        fold.view(sites, Vec::new(), dp_view, |_, _| None, now)
    }

    fn row<'a>(view: &'a JobView, site: &str) -> &'a SiteRow {
        view.sites.iter().find(|row| row.site == site).unwrap()
    }

    #[test]
    fn job_state_follows_its_times() {
        assert_eq!(JobState::at(None, 10, None, 5), JobState::Scheduled);
        assert_eq!(JobState::at(None, 10, None, 10), JobState::Active);
        assert_eq!(JobState::at(None, 10, Some(20), 20), JobState::Expired);
        assert_eq!(JobState::at(Some(15), 10, Some(20), 30), JobState::Canceled);
        assert!(JobState::Scheduled.is_open() && JobState::Active.is_open());
        assert!(!JobState::Expired.is_open() && !JobState::Canceled.is_open());
    }

    #[test]
    fn every_instruction_state() {
        let sites = vec![
            site("CEN", TimestampMs::MIN, true),
            site("P01", 0, true),
            site("P02", 0, true),
            site("P03", 0, false),
            site("P04", 0, true),
        ];
        let mut fold = JobFold::new(facts(JobState::Active));
        arrived(&mut fold, "P01", &[], &[]);
        fold.site_event(
            "P02",
            2_000,
            SiteEvent::Refused {
                reason: "version refused".into(),
            },
        );
        // Refused, then arrived after all: arrived, and no reason.
        fold.site_event(
            "P04",
            2_000,
            SiteEvent::Refused {
                reason: "once".into(),
            },
        );
        arrived(&mut fold, "P04", &[], &[]);
        let view = view(fold, &sites);
        // The folding site has its job whether or not it recorded it.
        assert_eq!(row(&view, "CEN").instruction, InstructionState::Arrived);
        assert_eq!(row(&view, "P01").instruction, InstructionState::Arrived);
        assert_eq!(row(&view, "P02").instruction, InstructionState::Refused);
        assert_eq!(row(&view, "P02").reason.as_deref(), Some("version refused"));
        assert_eq!(
            row(&view, "P03").instruction,
            InstructionState::NotConnected
        );
        assert_eq!(row(&view, "P04").instruction, InstructionState::Arrived);
        assert_eq!(row(&view, "P04").reason, None);
        // A connected site that has not reported yet.
        let mut fold = JobFold::new(facts(JobState::Active));
        completed(&mut fold, "CEN", "ws1");
        let view = view_with(fold, &two_sites(), |_, _| None, NOW);
        assert_eq!(row(&view, "P01").instruction, InstructionState::Pending);
        assert_eq!(row(&view, "P01").distribution, SiteDistribution::Pending);
        assert_eq!(view.outcome, JobOutcome::InProgress);
    }

    #[test]
    fn every_distribution_summary() {
        let sites = vec![
            site("CEN", TimestampMs::MIN, true),
            site("P01", 0, true),
            site("P02", 0, true),
            site("P03", 0, true),
            site("P04", 0, true),
        ];
        let mut fold = JobFold::new(facts(JobState::Active));
        arrived(&mut fold, "P01", &[], &["dp1", "dp2"]);
        arrived(&mut fold, "P02", &[], &["dp1", "dp2"]);
        arrived(&mut fold, "P03", &[], &["dp1"]);
        arrived(&mut fold, "P04", &[], &["dp1"]);
        let view = view_with(
            fold,
            &sites,
            |site, dp| match (site, dp) {
                ("P01", _) => Some(installed(2)),
                ("P02", "dp1") => Some(installed(2)),
                ("P02", _) => Some(state(DistributionState::Transferring {
                    bytes_done: 1,
                    bytes_needed: 9,
                })),
                ("P03", _) => Some(state(DistributionState::Failed {
                    reason: "disk full".into(),
                })),
                // Never reported: pending.
                _ => None,
            },
            NOW,
        );
        assert_eq!(
            row(&view, "CEN").distribution,
            SiteDistribution::NotApplicable
        );
        assert_eq!(row(&view, "P01").distribution, SiteDistribution::Complete);
        assert_eq!(row(&view, "P02").distribution, SiteDistribution::InProgress);
        assert_eq!(row(&view, "P03").distribution, SiteDistribution::Failed);
        assert_eq!(row(&view, "P04").distribution, SiteDistribution::Pending);
        assert_eq!(row(&view, "P01").dps.len(), 2);
        // A DP still retrying fails nothing by itself: the job waits.
        assert_eq!(view.outcome, JobOutcome::InProgress);
    }

    /// Q167007: a site without a DP in the job's DP group places the
    /// package on no DP; its distribute phase is not applicable, never
    /// failed, and the job completes.
    #[test]
    fn q167007_a_site_without_dps_in_the_group_is_not_applicable() {
        let mut fold = JobFold::new(facts(JobState::Active));
        arrived(&mut fold, "P01", &["ws2"], &[]);
        completed(&mut fold, "P01", "ws2");
        fold.target("CEN", "ws1");
        completed(&mut fold, "CEN", "ws1");
        let view = view(fold, &two_sites());
        assert_eq!(
            row(&view, "P01").distribution,
            SiteDistribution::NotApplicable
        );
        assert_eq!(view.outcome, JobOutcome::Complete);
    }

    #[test]
    fn every_outcome() {
        let outcome = |state: JobState, build: &dyn Fn(&mut JobFold), now: TimestampMs| {
            let mut fold = JobFold::new(facts(state));
            arrived(&mut fold, "P01", &["ws2"], &["dp1"]);
            build(&mut fold);
            view_with(fold, &two_sites(), |_, _| Some(installed(2)), now).outcome
        };
        let active = JobState::Active;
        // A workstation not finished.
        assert_eq!(outcome(active, &|_| {}, NOW), JobOutcome::InProgress);
        assert_eq!(
            outcome(active, &|fold| completed(fold, "P01", "ws2"), NOW),
            JobOutcome::Complete
        );
        assert_eq!(
            outcome(active, &|fold| failed_run(fold, "P01", "ws2"), NOW),
            JobOutcome::Failed
        );
        // A site refused the instruction.
        let refused = |fold: &mut JobFold| {
            completed(fold, "P01", "ws2");
            fold.site_event(
                "P02",
                2_000,
                SiteEvent::Refused {
                    reason: "no".into(),
                },
            );
        };
        let mut fold = JobFold::new(facts(active));
        arrived(&mut fold, "P01", &["ws2"], &["dp1"]);
        refused(&mut fold);
        let sites = vec![
            site("CEN", TimestampMs::MIN, true),
            site("P01", 0, true),
            site("P02", 0, true),
        ];
        assert_eq!(view(fold, &sites).outcome, JobOutcome::Failed);
        // Canceled or expired with nothing run: canceled, expired.
        assert_eq!(
            outcome(JobState::Canceled, &|_| {}, NOW),
            JobOutcome::Canceled
        );
        assert_eq!(
            outcome(JobState::Expired, &|_| {}, NOW),
            JobOutcome::Expired
        );
        // Scheduled: not offered yet, in progress.
        assert_eq!(
            outcome(JobState::Scheduled, &|_| {}, NOW),
            JobOutcome::InProgress
        );
    }

    #[test]
    fn a_canceled_job_waits_for_a_running_command_until_its_deadline() {
        let running = |fold: &mut JobFold| {
            fold.workstation_event("P01", "ws2", 3_000, &RunEvent::Running { attempt: 1 });
            fold.site_event("P01", 3_500, SiteEvent::Run(RunEvent::Canceled));
        };
        let at = |now| {
            let mut fold = JobFold::new(facts(JobState::Canceled));
            arrived(&mut fold, "P01", &["ws2"], &[]);
            running(&mut fold);
            view_with(fold, &two_sites(), |_, _| None, now).outcome
        };
        // Within its timeout and the grace after it, its report still
        // counts; past them the job is final.
        assert_eq!(at(3_000 + TIMEOUT), JobOutcome::InProgress);
        assert_eq!(
            at(3_000 + TIMEOUT + RUN_REPORT_GRACE_MS + 1),
            JobOutcome::Canceled
        );
    }

    /// Q152229: expiring (or canceling) a job never rewrites a
    /// workstation's last reported state: the flag stands beside it, and
    /// what was complete or failed stays so.
    #[test]
    fn q152229_expiry_is_a_flag_beside_the_last_state_never_in_its_place() {
        let mut fold = JobFold::new(facts(JobState::Expired));
        arrived(&mut fold, "P01", &["ws2", "ws3", "ws4"], &[]);
        completed(&mut fold, "P01", "ws2");
        failed_run(&mut fold, "P01", "ws3");
        fold.site_event("P01", 50_000, SiteEvent::Run(RunEvent::Expired));
        let view = view_with(fold, &two_sites(), |_, _| None, NOW);
        let ws = |agent: &str| {
            view.workstations
                .iter()
                .find(|ws| ws.agent == agent)
                .unwrap()
                .run
                .clone()
        };
        assert_eq!(ws("ws2").state, RunState::Complete);
        assert_eq!(ws("ws2").expired_at, Some(50_000));
        assert_eq!(ws("ws3").state, RunState::Failed);
        assert_eq!(ws("ws3").expired_at, Some(50_000));
        // Never offered: still none, expired beside it.
        assert_eq!(ws("ws4").state, RunState::None);
        assert_eq!(ws("ws4").expired_at, Some(50_000));
        // A failure among the runs stays the outcome.
        assert_eq!(view.outcome, JobOutcome::Failed);
        // Complete before the expiry: complete after it.
        let mut fold = JobFold::new(facts(JobState::Expired));
        arrived(&mut fold, "P01", &["ws2"], &[]);
        completed(&mut fold, "P01", "ws2");
        fold.site_event("P01", 50_000, SiteEvent::Run(RunEvent::Expired));
        assert_eq!(
            view_with(fold, &two_sites(), |_, _| None, NOW).outcome,
            JobOutcome::Complete
        );
    }

    #[test]
    fn a_late_site_event_never_moves_a_workstation_back() {
        // The site's own events may come in any order relative to the
        // workstation's: the agent's sequence decides its state.
        let mut fold = JobFold::new(facts(JobState::Active));
        arrived(&mut fold, "P01", &["ws2"], &[]);
        completed(&mut fold, "P01", "ws2");
        fold.site_event("P01", 1_500, SiteEvent::Run(RunEvent::Canceled));
        let view = view_with(fold, &two_sites(), |_, _| None, NOW);
        assert_eq!(view.workstations[0].run.state, RunState::Complete);
    }

    #[test]
    fn a_site_that_joined_after_the_job_is_listed_only_while_it_is_open() {
        let sites = vec![
            site("CEN", TimestampMs::MIN, true),
            site("S01", CREATED + 1, true),
        ];
        let listed = |state| {
            let fold = JobFold::new(facts(state));
            view_with(fold, &sites, |_, _| None, NOW)
                .sites
                .iter()
                .any(|row| row.site == "S01")
        };
        assert!(listed(JobState::Active));
        assert!(listed(JobState::Scheduled));
        assert!(!listed(JobState::Expired));
        assert!(!listed(JobState::Canceled));
    }

    #[test]
    fn the_folding_sites_agents_carry_their_silence_and_live_targets_are_listed() {
        let mut fold = JobFold::new(facts(JobState::Active));
        fold.target("CEN", "ws1");
        arrived(&mut fold, "P01", &["ws2"], &[]);
        let view = fold.view(
            &two_sites(),
            vec!["dp1".into()],
            |_, _| Some(installed(2)),
            |_, agent| (agent == "ws1" || agent == "ws2").then_some(7),
            NOW,
        );
        let ws1 = view
            .workstations
            .iter()
            .find(|ws| ws.agent == "ws1")
            .unwrap();
        let ws2 = view
            .workstations
            .iter()
            .find(|ws| ws.agent == "ws2")
            .unwrap();
        assert_eq!(ws1.unreachable_since, Some(7));
        // Another site's agents: this site does not know their contact.
        assert_eq!(ws2.unreachable_since, None);
        // The folding site without a recorded arrival uses its queued DPs.
        assert_eq!(row(&view, "CEN").dps.len(), 1);
        assert_eq!(row(&view, "CEN").distribution, SiteDistribution::Complete);
        assert_eq!(row(&view, "CEN").targets, 1);
    }
}
