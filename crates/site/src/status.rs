//! Status messages: storing the site's own, ingesting those of its DPs and
//! agents, and the views derived from them.
//!
//! **Architecture Invariant:** no status view is stored. `package_status`
//! folds the stored messages every time it is asked.

use crate::api::ApiJson;
use crate::auth::Principal;
use crate::db::{self, WriteTx};
use crate::error::{Error, Result};
use crate::{now_ms, AppState};
use axum::extract::{Path, State};
use axum::Json;
use cascade_domain::hierarchy::{SourceMember, StatusSource};
use cascade_domain::status::{DistributionFold, DistributionState, DistributionView, Timed};
use cascade_domain::DpName;
use cascade_protocol::*;
use std::collections::BTreeMap;

/// Parses a stored status message (stored by this site, so a failure is the
/// server's fault).
pub fn parse_stored(body: &str) -> Result<StatusMessage> {
    serde_json::from_str(body)
        .map_err(|err| Error::Internal(format!("stored status message does not parse: {err}")))
}

/// Records a message whose source is this site, inside `tx`; call
/// [`AppState::notify_status_stored`] after commit so it is relayed up.
pub async fn record_site_message(
    state: &AppState,
    tx: &mut WriteTx<'_>,
    body: StatusBody,
) -> Result<()> {
    let source = StatusSource::site(state.code.clone());
    let seq = db::next_seq(&mut tx.tx, state.code.as_str()).await?;
    let at_ms = now_ms();
    let message = StatusMessage {
        seq: seq as u64,
        at_ms,
        body,
    };
    db::insert_message(&mut tx.tx, &source, &message, at_ms).await?;
    Ok(())
}

/// Largest batch of status messages accepted in one call.
const MAX_BATCH: usize = 10_000;

/// `POST /api/v1/status`: a DP delivers its messages. Idempotent: a message
/// already stored (same source and sequence number) is counted as a
/// duplicate and changes nothing.
pub async fn ingest(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(batch): ApiJson<StatusBatch>,
) -> Result<Json<StatusAck>> {
    // The source is the authenticated sender: a DP or an agent reports
    // only for itself, and only messages of its own kinds.
    let (member, sender_id) = match &principal {
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
    let mut allowed_jobs: BTreeMap<u64, bool> = BTreeMap::new();
    for message in &batch.messages {
        if message.seq == 0 {
            return Err(Error::invalid(
                "malformed_request",
                "status sequence numbers start at 1",
            ));
        }
        let allowed = match &source.member {
            SourceMember::Dp(_) => message.body.is_from_dp(),
            SourceMember::Agent(agent) => match message.body.agent_job() {
                // Most batches are about one job: ask once per job.
                Some(job) => match allowed_jobs.get(&job) {
                    Some(known) => *known,
                    None => {
                        let targets = crate::jobs::targets(&state, job, agent).await?;
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
    let ack = answer.await.map_err(|_| stopped())??;
    Ok(Json(ack))
}

/// Batches waiting for the status writer, at most.
pub const QUEUE: usize = 4096;
/// Sources whose numbers one statement records (two parameters each, well
/// under SQLite's limit).
const SOURCES_PER_STATEMENT: usize = 5_000;
/// Messages the status writer stores in one transaction, at most.
const GROUP_MESSAGES: usize = 20_000;

/// A checked batch of status messages from one DP or agent, waiting to be
/// stored.
pub struct Pending {
    source: StatusSource,
    sender_id: i64,
    messages: Vec<StatusMessage>,
    received: i64,
    reply: tokio::sync::oneshot::Sender<Result<StatusAck>>,
}

/// Stores the batches DPs and agents deliver, many per transaction (group
/// commit): a batch waits for the transaction in progress, then goes in
/// with every batch that arrived meanwhile, and each is acknowledged once
/// that transaction is on disk. One commit per batch would cap a site at a
/// few thousand batches per second, whatever their size.
pub async fn status_writer(state: AppState, mut queue: tokio::sync::mpsc::Receiver<Pending>) {
    let mut shutdown = state.shutdown.clone();
    loop {
        let first = tokio::select! {
            first = queue.recv() => first,
            _ = shutdown.changed() => None,
        };
        let Some(first) = first else { return };
        let mut count = first.messages.len();
        let mut group = vec![first];
        while count < GROUP_MESSAGES {
            match queue.try_recv() {
                Ok(next) => {
                    count += next.messages.len();
                    group.push(next);
                }
                Err(_) => break,
            }
        }
        match store_group(&state, &group).await {
            Ok(acks) => {
                if acks.iter().any(|ack| ack.stored > 0) {
                    state.notify_status_stored();
                }
                for (pending, ack) in group.into_iter().zip(acks) {
                    let _ = pending.reply.send(Ok(ack));
                }
            }
            Err(err) => {
                tracing::warn!(error = %cascade_protocol::chain(&err), batches = group.len(), "storing status messages failed");
                let message = err.to_string();
                for pending in group {
                    let _ = pending.reply.send(Err(Error::Internal(format!(
                        "storing status messages: {message}"
                    ))));
                }
            }
        }
    }
}

/// Stores a group of batches in one transaction. Idempotent: a message
/// already stored (same source and sequence number) is counted as a
/// duplicate and changes nothing.
async fn store_group(state: &AppState, group: &[Pending]) -> Result<Vec<StatusAck>> {
    let mut tx = state.db.write().await?;
    // Every message of the group in as few statements as possible: a
    // statement costs a round trip to the database's thread, and at a
    // large site that, not SQLite, is the limit.
    let all: Vec<(&StatusSource, &StatusMessage, i64)> = group
        .iter()
        .flat_map(|pending| {
            pending
                .messages
                .iter()
                .map(move |message| (&pending.source, message, pending.received))
        })
        .collect();
    let new = db::insert_messages(&mut tx.tx, &all).await?;
    // The highest sequence number per source, recorded once per source.
    let mut highest: BTreeMap<String, i64> = BTreeMap::new();
    for pending in group {
        let top = pending
            .messages
            .iter()
            .map(|m| m.seq as i64)
            .max()
            .unwrap_or(0);
        let entry = highest.entry(pending.source.to_string()).or_insert(0);
        *entry = (*entry).max(top);
    }
    let highest: Vec<(String, i64)> = highest.into_iter().collect();
    let mut acked: BTreeMap<String, i64> = BTreeMap::new();
    for part in highest.chunks(SOURCES_PER_STATEMENT) {
        let mut upsert = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "INSERT INTO status_sources (source, last_seq) ",
        );
        upsert.push_values(part, |mut row, (source, seq)| {
            row.push_bind(source.clone()).push_bind(*seq);
        });
        upsert.push(
            " ON CONFLICT (source) DO UPDATE SET last_seq = MAX(last_seq, excluded.last_seq)
             RETURNING source, last_seq",
        );
        acked.extend(
            upsert
                .build_query_as::<(String, i64)>()
                .fetch_all(&mut *tx.tx)
                .await?,
        );
    }
    let mut acks = Vec::with_capacity(group.len());
    let mut new = new.into_iter();
    for pending in group {
        let stored = new
            .by_ref()
            .take(pending.messages.len())
            .filter(|was_new| *was_new)
            .count() as u64;
        if let Some(agent) = pending.source.agent() {
            state.seen.record(agent, pending.received);
        } else {
            sqlx::query("UPDATE dps SET last_seen_ms = ? WHERE id = ?")
                .bind(pending.received)
                .bind(pending.sender_id)
                .execute(&mut *tx.tx)
                .await?;
        }
        acks.push(StatusAck {
            acked_seq: acked.get(&pending.source.to_string()).copied().unwrap_or(0) as u64,
            stored,
            duplicates: pending.messages.len() as u64 - stored,
        });
    }
    tx.commit().await?;
    Ok(acks)
}

/// `GET /api/v1/packages/{name}/status`: per DP, folded from the messages.
pub async fn package_status(
    State(state): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
) -> Result<Json<PackageStatus>> {
    principal.require_admin()?;
    let (package, latest, dps) = distribution_rows(&state, &name).await?;
    Ok(Json(PackageStatus {
        package,
        latest_version: latest,
        dps,
    }))
}

/// `GET /api/v1/packages/{name}/messages`: the raw history behind the views.
pub async fn package_messages(
    State(state): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
) -> Result<Json<Vec<StatusRecord>>> {
    principal.require_admin()?;
    let pool = state.db.pool();
    let package = db::require_package(pool, &name).await?;
    let mut out = Vec::new();
    for row in db::messages_of_package(pool, &package.name).await? {
        out.push(StatusRecord {
            body: parse_stored(&row.body)?.body,
            source: row.source,
            seq: row.seq as u64,
            at_ms: row.at_ms,
            received_at_ms: row.received_at_ms,
        });
    }
    Ok(Json(out))
}

/// Per-DP rows of a package, folded from its status messages: (name, newest
/// version, rows by site and DP).
pub async fn distribution_rows(
    state: &AppState,
    name: &str,
) -> Result<(String, u64, Vec<DpPackageStatus>)> {
    let pool = state.db.pool();
    let package = db::require_package(pool, name).await?;
    let latest = db::latest_version(pool, package.id).await?.unwrap_or(0);
    let dps = distribution_views(state, &package.name)
        .await?
        .into_iter()
        .map(|((site, dp), view)| dp_status(site, dp, &view))
        .collect();
    Ok((package.name, latest as u64, dps))
}

/// The view of a package on every DP of this site's subtree that any
/// message is about, by (site, DP). DPs of this site that are queued for
/// the package appear even before any message about them.
pub async fn distribution_views(
    state: &AppState,
    package: &str,
) -> Result<BTreeMap<(String, String), DistributionView>> {
    let pool = state.db.pool();
    let own = state.code.to_string();
    let mut folds: BTreeMap<(String, String), DistributionFold> = BTreeMap::new();
    if let Some(row) = db::package_by_name(pool, package).await? {
        for queued in db::distributions_of_package(pool, row.id).await? {
            folds.insert((own.clone(), queued.dp), DistributionFold::default());
        }
    }
    // Within one source the fold needs sequence order, which a message
    // relayed late could break; across sources any order gives the same
    // view. So: grouped by source, in sequence order.
    let mut rows = db::messages_of_package(pool, package).await?;
    rows.sort_by(|a, b| (&a.source, a.seq).cmp(&(&b.source, b.seq)));
    for row in rows {
        let (Some(site), Some(dp)) = (row.site, row.dp) else {
            continue;
        };
        let message = parse_stored(&row.body)?;
        if let Some(event) = message.body.distribution_event() {
            folds.entry((site, dp)).or_default().apply(&Timed {
                at: row.at_ms,
                event,
            });
        }
    }
    Ok(folds
        .into_iter()
        .map(|(key, fold)| (key, fold.view()))
        .collect())
}

/// One DP's line, from its view.
pub fn dp_status(site: String, dp: String, view: &DistributionView) -> DpPackageStatus {
    let (bytes_done, bytes_total) = match view.state {
        DistributionState::Transferring {
            bytes_done,
            bytes_needed,
        } => (Some(bytes_done), Some(bytes_needed)),
        _ => (None, None),
    };
    let reason = match &view.state {
        DistributionState::Failed { reason } => Some(reason.clone()),
        _ => None,
    };
    DpPackageStatus {
        site,
        dp,
        target_version: view.target.map(|v| v.get()),
        installed_version: view.installed.map(|v| v.get()),
        state: view.state.name().to_owned(),
        bytes_done,
        bytes_total,
        reason,
        since_ms: view.since,
    }
}
