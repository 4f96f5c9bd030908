//! What ran on this workstation, by program (issue 14): the history a job's
//! rerun rule ([`RerunRule`]) is decided from. "The program" is a package
//! version run by a command line, whichever job ran it.
//!
//! A run is recorded when its command starts, in the transaction of the
//! `job_running` report, and its end in the transaction of the report that
//! ends it: a run whose end was never recorded (the agent crashed while it
//! ran) counts as failed, as its `job_interrupted` report says. A job whose
//! command never started (its download failed, it was canceled before)
//! leaves no run: the program did not run.

use crate::Result;
use cascade_domain::run::{PastOutcome, RerunRule};
use cascade_protocol::JobOffer;
use cascade_store::{Db, WriteTx};

/// The migration of the table this module keeps.
pub const SCHEMA: &str = "CREATE TABLE runs (
    job INTEGER PRIMARY KEY,
    package TEXT NOT NULL,
    version INTEGER NOT NULL,
    command TEXT NOT NULL,
    started_at_ms INTEGER NOT NULL,
    succeeded INTEGER,
    ended_at_ms INTEGER
);
CREATE INDEX runs_by_program ON runs (package, version, command, started_at_ms);";

/// What a report records about the job's run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    /// The command starts (again, for a retry).
    Started,
    /// The command ended: with a success code, or not (a failure code, a
    /// timeout, stopped, interrupted). Recorded only for a run that
    /// started.
    Ended { succeeded: bool },
    /// A removal of the package succeeded: every run of its programs,
    /// the removal's included, is forgotten (an install runs again under
    /// its rerun rule, and so does a later removal).
    Removed,
}

/// Records `entry` for `offer`'s run, at `now`, in `tx`.
pub async fn record(tx: &mut WriteTx<'_>, offer: &JobOffer, entry: Entry, now: i64) -> Result<()> {
    let query = match entry {
        Entry::Started => sqlx::query(
            "INSERT INTO runs (job, package, version, command, started_at_ms) VALUES (?, ?, ?, ?, ?)
             ON CONFLICT (job) DO UPDATE SET started_at_ms = excluded.started_at_ms,
                                             succeeded = NULL, ended_at_ms = NULL",
        )
        .bind(offer.id as i64)
        .bind(&offer.package)
        .bind(offer.version as i64)
        .bind(&offer.command)
        .bind(now),
        Entry::Ended { succeeded } => {
            sqlx::query("UPDATE runs SET succeeded = ?, ended_at_ms = ? WHERE job = ?")
                .bind(succeeded)
                .bind(now)
                .bind(offer.id as i64)
        }
        Entry::Removed => sqlx::query("DELETE FROM runs WHERE package = ?").bind(&offer.package),
    };
    query
        .execute(&mut *tx.tx)
        .await
        .map_err(cascade_store::Error::from)?;
    Ok(())
}

/// The last run of `offer`'s program here by another job: that job, and
/// how the run ended.
pub async fn last_run(db: &Db, offer: &JobOffer) -> Result<Option<(u64, PastOutcome)>> {
    let row: Option<(i64, Option<bool>)> = sqlx::query_as(
        "SELECT job, succeeded FROM runs
         WHERE package = ? AND version = ? AND command = ? AND job != ?
         ORDER BY started_at_ms DESC, job DESC LIMIT 1",
    )
    .bind(&offer.package)
    .bind(offer.version as i64)
    .bind(&offer.command)
    .bind(offer.id as i64)
    .fetch_optional(db.pool())
    .await
    .map_err(cascade_store::Error::from)?;
    Ok(row.map(|(job, succeeded)| {
        let outcome = if succeeded == Some(true) {
            PastOutcome::Succeeded
        } else {
            PastOutcome::Failed
        };
        (job as u64, outcome)
    }))
}

/// Whether `offer`, first due now under `rule`, is not to run: the
/// previous job and outcome that rule it out.
pub async fn rules_out(
    db: &Db,
    offer: &JobOffer,
    rule: RerunRule,
) -> Result<Option<(u64, PastOutcome)>> {
    Ok(last_run(db, offer)
        .await?
        .filter(|(_, outcome)| !rule.runs_after(Some(*outcome))))
}
