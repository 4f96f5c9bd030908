//! Status in: DPs and agents deliver their messages, checked here and
//! handed to the status writer (group commit).

use crate::db;
use crate::error::{Error, Result};
use crate::service::auth::Principal;
use crate::service::jobs;
use crate::state::{AppState, Pending};
use cascade_domain::hierarchy::{SourceMember, StatusSource};
use cascade_domain::DpName;
use cascade_protocol::{seq_out_of_range, StatusAck, StatusBatch};
use cascade_store::now_ms;
use std::collections::BTreeMap;

/// Largest batch of status messages accepted in one call.
const MAX_BATCH: usize = 10_000;

/// `POST /api/v1/status`: a DP or an agent delivers its messages.
/// Idempotent: a message already stored (same source, sequence number and
/// content) is counted as a duplicate and changes nothing.
///
/// The sequence rules (see [`store_group`]): numbers run from 1 to 2^63 - 1
/// and are consecutive within a batch (`invalid_seq`); a batch continues from the
/// highest number stored for the source, or resends numbers below it,
/// without skipping any (`seq_gap`); the answer acknowledges only messages
/// of the batch.
pub async fn ingest(
    state: &AppState,
    principal: &Principal,
    batch: StatusBatch,
) -> Result<StatusAck> {
    // The source is the authenticated sender: a DP or an agent reports
    // only for itself, and only messages of its own kinds.
    let (member, sender_id) = match principal {
        Principal::Dp { id, name } => (SourceMember::Dp(DpName::new(name)?), *id),
        Principal::Agent { id, name } => (SourceMember::Agent(name.clone()), *id),
        Principal::Admin | Principal::Site { .. } => return Err(Error::Forbidden(
            "status messages come from DPs and agents (child sites relay theirs to /site/status)"
                .into(),
        )),
    };
    let source = StatusSource {
        site: state.code.clone(),
        member,
    };
    if batch.messages.len() > MAX_BATCH {
        return Err(Error::TooLarge(format!(
            "{} status messages in one batch; at most {MAX_BATCH}",
            batch.messages.len()
        )));
    }
    // Signed by the sender's own key, when it registered one (issue 12).
    let table = match &source.member {
        SourceMember::Dp(_) => db::SenderTable::Dps,
        _ => db::SenderTable::Agents,
    };
    let sender_key = db::sender_key(state.db.pool(), table, sender_id)
        .await?
        .map(|key| {
            cascade_content::public_key_from_hex(&key)
                .map_err(|err| Error::Internal(format!("a stored sender key is damaged: {err}")))
        })
        .transpose()?;
    let source_name = source.to_string();
    let mut allowed_jobs: BTreeMap<u64, bool> = BTreeMap::new();
    let mut previous: Option<u64> = None;
    for message in &batch.messages {
        if let Some(reason) = seq_out_of_range(message.seq) {
            return Err(Error::invalid("invalid_seq", reason));
        }
        // Consecutive: an outbox sends a run of numbers without holes, and
        // a batch then spans no more numbers than it carries messages, so
        // checking it for resends reads at most that many stored rows (a
        // batch `[1, 10^12]` cannot make the writer load a whole history).
        if let Some(previous) = previous.filter(|previous| previous + 1 != message.seq) {
            return Err(Error::invalid(
                "invalid_seq",
                format!(
                    "status sequence numbers must be consecutive within a batch: {} follows {previous}",
                    message.seq
                ),
            ));
        }
        previous = Some(message.seq);
        if let Some(key) = &sender_key {
            cascade_protocol::status_signing::verify_status(&source_name, message, key)
                .map_err(Error::Forbidden)?;
        }
        let allowed = match &source.member {
            // Only about a package it was given (a rogue DP reported
            // `dp_installed` for one it never was).
            SourceMember::Dp(_) => match message.body.dp_subject() {
                Some((package, version)) => {
                    db::dp_assigned(state.db.pool(), sender_id, package, version).await?
                }
                None => false,
            },
            SourceMember::Agent(agent) => match message.body.agent_job() {
                // Most batches are about one job: ask once per job.
                Some(job) => match allowed_jobs.get(&job) {
                    Some(known) => *known,
                    None => {
                        let targets = jobs::targets(state, job, agent).await?;
                        allowed_jobs.insert(job, targets);
                        targets
                    }
                },
                None => false,
            },
            SourceMember::Site => false,
        };
        if !allowed {
            tracing::warn!(%source, kind = message.body.kind(), "refused a status message");
            return Err(Error::Forbidden(format!(
                "{source} may not report this {} message",
                message.body.kind()
            )));
        }
    }
    if batch.messages.is_empty() {
        // Nothing to store: the answer says where the source stands.
        let high_water = db::high_water(state.db.pool(), &source.to_string()).await?;
        return Ok(StatusAck {
            high_water_seq: high_water as u64,
            ..StatusAck::default()
        });
    }
    let (reply, answer) = tokio::sync::oneshot::channel();
    let pending = Pending {
        source,
        sender_id,
        messages: batch.messages,
        received: now_ms(),
        reply,
    };
    let stopped = || Error::Unavailable {
        code: "shutting_down",
        message: "the site is shutting down; deliver the status messages again".into(),
    };
    state
        .status_queue
        .send(pending)
        .await
        .map_err(|_| stopped())?;
    answer.await.map_err(|_| stopped())?
}
