//! Jobs, as the central site issued them.

use crate::error::{Entity, Error, Result};
use cascade_domain::job::JobState;
use cascade_domain::run::RerunRule;
use cascade_protocol::{JobInfo, JobOffer, SignedIntent};
use cascade_store::{now_ms, WriteTx};
use sqlx::{Row, Sqlite};

/// Deadline of a job's download and run when none is given, so that no
/// workstation can stay "running" forever.
pub const DEFAULT_TIMEOUT_MS: u64 = 60 * 60 * 1000;

const JOB_COLUMNS: &str = "j.id, p.name, j.version, c.name, j.command, j.offer_at_ms, j.expires_at_ms, j.optional,
     j.retries, j.retry_delay_ms, j.timeout_ms, j.success_codes, j.created_at_ms, j.canceled_at_ms, j.collection_id,
     j.dp_group, j.intent, j.intent_signature, j.cancel_intent, j.cancel_signature, j.rerun,
     j.check_command, j.reboot_codes, j.windows, j.any_time, j.remove";

const JOB_FROM: &str =
    "jobs j JOIN packages p ON p.id = j.package_id JOIN collections c ON c.id = j.collection_id";

fn job_from_row(row: sqlx::sqlite::SqliteRow, now: i64) -> Result<(JobInfo, i64)> {
    let codes: String = row.get(11);
    let offer = JobOffer {
        id: row.get::<i64, _>(0) as u64,
        package: row.get(1),
        version: row.get::<i64, _>(2) as u64,
        command: row.get(4),
        offer_at_ms: row.get(5),
        expires_at_ms: row.get(6),
        optional: row.get(7),
        retries: row.get::<i64, _>(8) as u32,
        retry_delay_ms: row.get::<i64, _>(9) as u64,
        timeout_ms: row.get::<Option<i64>, _>(10).map(|t| t as u64),
        success_codes: serde_json::from_str(&codes)
            .map_err(|err| Error::Internal(format!("stored success codes do not parse: {err}")))?,
        windows: serde_json::from_str(&row.get::<String, _>(23))
            .map_err(|err| Error::Internal(format!("stored windows do not parse: {err}")))?,
        any_time: row.get(24),
        remove: row.get(25),
        check: row.get(21),
        reboot_codes: serde_json::from_str(&row.get::<String, _>(22))
            .map_err(|err| Error::Internal(format!("stored reboot codes do not parse: {err}")))?,
        rerun: RerunRule::parse(&row.get::<String, _>(20))
            .map_err(|err| Error::Internal(format!("stored rerun rule: {err}")))?,
        dps: Vec::new(),
        intent: signed(row.get(16), row.get(17)),
    };
    let canceled_at_ms: Option<i64> = row.get(13);
    let state = JobState::at(canceled_at_ms, offer.offer_at_ms, offer.expires_at_ms, now);
    Ok((
        JobInfo {
            offer,
            collection: row.get(3),
            created_at_ms: row.get(12),
            canceled_at_ms,
            state: state.into(),
            dp_group: row.get(15),
            outcome: None,
        },
        row.get(14),
    ))
}

fn signed(intent: Option<String>, signature: Option<String>) -> Option<SignedIntent> {
    Some(SignedIntent {
        intent: intent?,
        signature: signature?,
    })
}

pub async fn job_by_id<'e, E>(executor: E, id: u64) -> Result<(JobInfo, i64)>
where
    E: sqlx::Executor<'e, Database = sqlx::Sqlite>,
{
    let row = sqlx::query(&format!(
        "SELECT {JOB_COLUMNS} FROM {JOB_FROM} WHERE j.id = ?"
    ))
    .bind(id as i64)
    .fetch_optional(executor)
    .await?
    .ok_or(Error::NotFound {
        what: Entity::Job,
        name: id.to_string(),
    })?;
    job_from_row(row, now_ms())
}

/// Jobs neither canceled nor expired at `now`, by id, with their
/// collection's id.
pub async fn open_jobs<'e, E>(executor: E, now: i64) -> Result<Vec<(JobInfo, i64)>>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    sqlx::query(&format!(
        "SELECT {JOB_COLUMNS} FROM {JOB_FROM}
         WHERE j.canceled_at_ms IS NULL AND (j.expires_at_ms IS NULL OR j.expires_at_ms > ?) ORDER BY j.id"
    ))
    .bind(now)
    .fetch_all(executor)
    .await?
    .into_iter()
    .map(|row| job_from_row(row, now))
    .collect()
}

/// Jobs canceled recently enough that a run of theirs may still be in
/// progress: within their timeout and `margin_ms` of the cancel; with
/// their collection's id and their signed cancellation.
pub async fn recently_canceled_jobs<'e, E>(
    executor: E,
    now: i64,
    margin_ms: i64,
) -> Result<Vec<(JobInfo, i64, Option<SignedIntent>)>>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    sqlx::query(&format!(
        "SELECT {JOB_COLUMNS} FROM {JOB_FROM}
         WHERE j.canceled_at_ms IS NOT NULL
           AND j.canceled_at_ms + COALESCE(j.timeout_ms, ?) + ? > ? ORDER BY j.id"
    ))
    .bind(DEFAULT_TIMEOUT_MS as i64)
    .bind(margin_ms)
    .bind(now)
    .fetch_all(executor)
    .await?
    .into_iter()
    .map(|row| {
        let cancel = signed(row.get(18), row.get(19));
        let (info, collection) = job_from_row(row, now)?;
        Ok((info, collection, cancel))
    })
    .collect()
}

/// The jobs canceled and not expired a day before `now` (an agent's clock
/// may lag the central site's), most recently canceled first, at most
/// `limit`.
pub async fn canceled_unexpired_job_ids<'e, E>(
    executor: E,
    now: i64,
    limit: usize,
) -> Result<Vec<u64>>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    let ids: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM jobs
         WHERE canceled_at_ms IS NOT NULL AND (expires_at_ms IS NULL OR expires_at_ms > ?)
         ORDER BY canceled_at_ms DESC, id DESC LIMIT ?",
    )
    .bind(now - 86_400_000)
    .bind(limit as i64)
    .fetch_all(executor)
    .await?;
    Ok(ids.into_iter().map(|id| id as u64).collect())
}

/// Every job, by id, with its collection's id.
pub async fn all_jobs<'e, E>(executor: E, now: i64) -> Result<Vec<(JobInfo, i64)>>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    sqlx::query(&format!(
        "SELECT {JOB_COLUMNS} FROM {JOB_FROM} ORDER BY j.id"
    ))
    .fetch_all(executor)
    .await?
    .into_iter()
    .map(|row| job_from_row(row, now))
    .collect()
}

/// What a new job (or one passed down from the parent) stores.
pub struct NewJob<'a> {
    pub package_id: i64,
    pub version: i64,
    pub collection_id: i64,
    pub command: &'a str,
    pub offer_at_ms: i64,
    pub expires_at_ms: Option<i64>,
    pub optional: bool,
    pub retries: u32,
    pub retry_delay_ms: u64,
    pub timeout_ms: Option<u64>,
    pub success_codes: &'a [i32],
    pub windows: &'a [cascade_protocol::WindowSpec],
    pub any_time: bool,
    pub remove: bool,
    pub check: Option<&'a str>,
    pub reboot_codes: &'a [i32],
    pub rerun: RerunRule,
    pub created_at_ms: i64,
    pub canceled_at_ms: Option<i64>,
    pub dp_group: Option<&'a str>,
    /// The central site's signed intent (none only while the central site
    /// creates the job: it signs it once the id is known).
    pub intent: Option<&'a SignedIntent>,
}

/// Stores a job: created here (`id` none: the next id), or passed down
/// from the parent under the central site's `id`. Returns its id, or none
/// when a job of that id is stored already (applying it twice changes
/// nothing).
pub async fn insert_job(
    tx: &mut WriteTx<'_>,
    id: Option<i64>,
    job: &NewJob<'_>,
) -> Result<Option<i64>> {
    let codes =
        serde_json::to_string(job.success_codes).map_err(Error::json("encoding success codes"))?;
    let reboot_codes =
        serde_json::to_string(job.reboot_codes).map_err(Error::json("encoding reboot codes"))?;
    let windows = serde_json::to_string(job.windows).map_err(Error::json("encoding windows"))?;
    Ok(sqlx::query_scalar(
        "INSERT OR IGNORE INTO jobs (id, package_id, version, collection_id, command, offer_at_ms, expires_at_ms,
                           optional, retries, retry_delay_ms, timeout_ms, success_codes, created_at_ms,
                           canceled_at_ms, dp_group, intent, intent_signature, rerun,
                           check_command, reboot_codes, windows, any_time, remove)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
    )
    .bind(id)
    .bind(job.package_id)
    .bind(job.version)
    .bind(job.collection_id)
    .bind(job.command)
    .bind(job.offer_at_ms)
    .bind(job.expires_at_ms)
    .bind(job.optional)
    .bind(job.retries as i64)
    .bind(job.retry_delay_ms as i64)
    .bind(job.timeout_ms.map(|ms| ms as i64))
    .bind(codes)
    .bind(job.created_at_ms)
    .bind(job.canceled_at_ms)
    .bind(job.dp_group)
    .bind(job.intent.map(|signed| &signed.intent))
    .bind(job.intent.map(|signed| &signed.signature))
    .bind(job.rerun.name())
    .bind(job.check)
    .bind(reboot_codes)
    .bind(windows)
    .bind(job.any_time)
    .bind(job.remove)
    .fetch_optional(&mut *tx.tx)
    .await?)
}

/// Records how many of this site's workstations the job targets.
pub async fn set_local_targets(tx: &mut WriteTx<'_>, id: i64, targets: i64) -> Result<()> {
    sqlx::query("UPDATE jobs SET local_targets = ? WHERE id = ?")
        .bind(targets)
        .bind(id)
        .execute(&mut *tx.tx)
        .await?;
    Ok(())
}

/// Whether a job's signed cancellation is stored.
pub async fn has_cancel_intent<'e, E>(executor: E, id: u64) -> Result<bool>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    let held: Option<i64> =
        sqlx::query_scalar("SELECT 1 FROM jobs WHERE id = ? AND cancel_intent IS NOT NULL")
            .bind(id as i64)
            .fetch_optional(executor)
            .await?;
    Ok(held.is_some())
}

/// Stores the central site's signed intent of a job it just created.
pub async fn set_intent(tx: &mut WriteTx<'_>, id: i64, intent: &SignedIntent) -> Result<()> {
    sqlx::query("UPDATE jobs SET intent = ?, intent_signature = ? WHERE id = ?")
        .bind(&intent.intent)
        .bind(&intent.signature)
        .bind(id)
        .execute(&mut *tx.tx)
        .await?;
    Ok(())
}

/// Sets a job's offer time and expiry (a newer revision of its intent).
pub async fn set_times(
    tx: &mut WriteTx<'_>,
    id: i64,
    offer_at_ms: i64,
    expires_at_ms: Option<i64>,
) -> Result<()> {
    // An expiry moved past now is to be recorded again when it comes.
    sqlx::query(
        "UPDATE jobs SET offer_at_ms = ?1, expires_at_ms = ?2,
                expiry_recorded = CASE WHEN ?2 IS NULL OR ?2 > ?4 THEN 0 ELSE expiry_recorded END
         WHERE id = ?3",
    )
    .bind(offer_at_ms)
    .bind(expires_at_ms)
    .bind(id)
    .bind(now_ms())
    .execute(&mut *tx.tx)
    .await?;
    Ok(())
}

/// Records that a job was canceled, with the central site's signed
/// cancellation.
pub async fn set_canceled(
    tx: &mut WriteTx<'_>,
    id: i64,
    now_ms: i64,
    cancel: Option<&SignedIntent>,
) -> Result<()> {
    sqlx::query(
        "UPDATE jobs SET canceled_at_ms = ?, cancel_intent = ?, cancel_signature = ? WHERE id = ?",
    )
    .bind(now_ms)
    .bind(cancel.map(|signed| &signed.intent))
    .bind(cancel.map(|signed| &signed.signature))
    .bind(id)
    .execute(&mut *tx.tx)
    .await?;
    Ok(())
}

/// An open job that targeted none of this site's workstations when it
/// arrived.
pub struct UntargetedJob {
    pub id: i64,
    pub version: i64,
    pub collection_id: i64,
    pub dp_group: Option<String>,
    pub package_id: i64,
    pub package: String,
}

/// The jobs open at `now` that target none of this site's workstations.
pub async fn open_jobs_without_targets<'e, E>(executor: E, now: i64) -> Result<Vec<UntargetedJob>>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    let rows: Vec<(i64, i64, i64, Option<String>, i64, String)> = sqlx::query_as(
        "SELECT j.id, j.version, j.collection_id, j.dp_group, p.id, p.name FROM jobs j
         JOIN packages p ON p.id = j.package_id
         WHERE j.local_targets = 0 AND j.canceled_at_ms IS NULL
           AND (j.expires_at_ms IS NULL OR j.expires_at_ms > ?)",
    )
    .bind(now)
    .fetch_all(executor)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(id, version, collection_id, dp_group, package_id, package)| UntargetedJob {
                id,
                version,
                collection_id,
                dp_group,
                package_id,
                package,
            },
        )
        .collect())
}

/// Jobs whose expiry passed and is not recorded yet: (id, package).
pub async fn expired_unrecorded<'e, E>(executor: E, now: i64) -> Result<Vec<(i64, String)>>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    Ok(sqlx::query_as(
        "SELECT j.id, p.name FROM jobs j JOIN packages p ON p.id = j.package_id
         WHERE j.expiry_recorded = 0 AND j.expires_at_ms IS NOT NULL AND j.expires_at_ms <= ?",
    )
    .bind(now)
    .fetch_all(executor)
    .await?)
}

/// Records that a job's expiry was recorded as a status message.
pub async fn set_expiry_recorded(tx: &mut WriteTx<'_>, id: i64) -> Result<()> {
    sqlx::query("UPDATE jobs SET expiry_recorded = 1 WHERE id = ?")
        .bind(id)
        .execute(&mut *tx.tx)
        .await?;
    Ok(())
}

/// A message about a job: source, seq, at, site, agent, body.
pub type JobMessageRow = (String, i64, i64, Option<String>, Option<String>, String);

/// Every stored message about a job.
pub async fn messages_of_job<'e, E>(executor: E, job: u64) -> Result<Vec<JobMessageRow>>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    Ok(sqlx::query_as(
        "SELECT source, seq, at_ms, site, agent, body FROM status_messages WHERE job = ?",
    )
    .bind(job as i64)
    .fetch_all(executor)
    .await?)
}

/// The sites below that ever connected (their `site_joined` came up).
pub async fn connected_sites<'e, E>(executor: E) -> Result<Vec<String>>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    Ok(sqlx::query_scalar(
        "SELECT DISTINCT site FROM status_messages WHERE kind = 'site_joined' AND site IS NOT NULL",
    )
    .fetch_all(executor)
    .await?)
}
