//! The send phase: instructions (package versions, collections, DP groups,
//! distributions, jobs, cancellations) flow from a site to its children.
//!
//! The sender writes each instruction into a durable outbox, one row per
//! child, in the same transaction as the change it carries. A child pulls
//! them with a long poll, stores them in its durable inbox, and
//! acknowledges them with its next poll; its applier then applies them one
//! at a time in order, each in one transaction with its effects, with the
//! inbox row's removal and with the copies queued for its own children.
//! Applying an instruction twice changes nothing, so a crash anywhere loses
//! and doubles nothing. An instruction that can never apply (a manifest not
//! signed by the central key, an older version) is refused: reported as an
//! `instruction_refused` status message and removed, so nothing is ever
//! left unprocessed behind it.
//!
//! Rationale: in SMS an update arriving while the previous version of the
//! same package was still being unpacked was never processed (Q235788).
//! Here an instruction is applied as soon as it arrives: a package version
//! only stores its manifest, and the content of the newest version is
//! fetched by the receiver (`receive.rs`), which drops an older version the
//! moment a newer one is known.

use crate::auth::Principal;
use crate::db::{self, WriteTx};
use crate::error::{Error, Result};
use crate::{agents, api, distribution, groups, hierarchy, jobs, now_ms, status, AppState};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;
use cascade_content::SignedManifest;
use cascade_domain::{PackageName, Version};
use cascade_protocol::{
    Instruction, InstructionEnvelope, Instructions, InstructionsQuery, SignedManifestWire,
    StatusBody,
};
use std::time::Duration;

/// Queues `instruction` for every direct child, inside `tx`; call
/// [`AppState::notify_outbox_changed`] after commit.
pub async fn send_down(
    state: &AppState,
    tx: &mut WriteTx<'_>,
    instruction: &Instruction,
) -> Result<()> {
    let children = db::children(&mut *tx.tx, state.code.as_str()).await?;
    if children.is_empty() {
        return Ok(());
    }
    let body =
        serde_json::to_string(instruction).map_err(|err| Error::Internal(err.to_string()))?;
    for child in children {
        queue(tx, &child, instruction, &body).await?;
    }
    Ok(())
}

async fn queue(
    tx: &mut WriteTx<'_>,
    child: &str,
    instruction: &Instruction,
    body: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO site_outbox (child, kind, package, body, created_at_ms) VALUES (?, ?, ?, ?, ?)",
    )
    .bind(child)
    .bind(instruction.kind())
    .bind(instruction.package())
    .bind(body)
    .bind(now_ms())
    .execute(&mut *tx.tx)
    .await?;
    Ok(())
}

/// Queues for a new child everything it must know to catch up: every
/// package version's manifest, the collections, the DP groups and their
/// distributions, and the jobs still active. Returns how many.
pub async fn snapshot(tx: &mut WriteTx<'_>, child: &str) -> Result<usize> {
    let mut instructions = Vec::new();
    let versions: Vec<(String, i64, Vec<u8>, Vec<u8>)> = sqlx::query_as(
        "SELECT p.name, v.version, v.manifest, v.signature FROM package_versions v
         JOIN packages p ON p.id = v.package_id ORDER BY p.name, v.version",
    )
    .fetch_all(&mut *tx.tx)
    .await?;
    for (package, version, manifest, signature) in versions {
        let signed = SignedManifest {
            bytes: manifest,
            signature: signature.try_into().map_err(|_| {
                Error::Internal(format!(
                    "stored signature of {package} v{version} is damaged"
                ))
            })?,
        };
        instructions.push(Instruction::PackageVersion {
            package,
            version: version as u64,
            manifest: SignedManifestWire::from_signed(&signed),
        });
    }
    let collections: Vec<(String, Option<String>, Option<String>)> =
        sqlx::query_as("SELECT name, machines, rule FROM collections ORDER BY id")
            .fetch_all(&mut *tx.tx)
            .await?;
    for (name, machines, rule) in collections {
        let machines = machines
            .map(|json| serde_json::from_str(&json))
            .transpose()
            .map_err(|err| Error::Internal(format!("stored machine list does not parse: {err}")))?;
        instructions.push(Instruction::Collection {
            name,
            machines,
            rule,
        });
    }
    instructions.extend(groups::snapshot(tx).await?);
    instructions.extend(jobs::snapshot(tx).await?);
    for instruction in &instructions {
        let body =
            serde_json::to_string(instruction).map_err(|err| Error::Internal(err.to_string()))?;
        queue(tx, child, instruction, &body).await?;
    }
    Ok(instructions.len())
}

/// Longest an instructions poll is held.
const MAX_WAIT: Duration = Duration::from_secs(60);
/// Most instruction bytes in one answer (at least one instruction is sent).
const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;

/// The durable cursor recording the highest instruction number answered to
/// `child`.
fn delivered_cursor(child: &str) -> String {
    format!("delivered:{child}")
}

/// `GET /api/v1/site/instructions?after=S&wait_ms=W`: a child's long poll.
/// Everything up to `after` is acknowledged and dropped from the outbox,
/// but never beyond the highest number this site answered the child with:
/// an acknowledgement never covers more than was delivered. A child
/// claiming more (a lying child, or this site restored from a backup) is
/// answered from what it was really sent.
pub async fn instructions(
    State(state): State<AppState>,
    principal: Principal,
    query: std::result::Result<Query<InstructionsQuery>, QueryRejection>,
) -> Result<Json<Instructions>> {
    let Query(query) =
        query.map_err(|rejection| Error::invalid("malformed_request", rejection.body_text()))?;
    let child = principal.require_site()?.to_owned();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(query.wait_ms).min(MAX_WAIT);
    let mut changes = state.outbox_changes.subscribe();
    let mut shutdown = state.shutdown.clone();
    let acked = {
        let mut tx = state.db.write().await?;
        let delivered = db::cursor(&mut *tx.tx, &delivered_cursor(&child)).await? as u64;
        let acked = query.after.min(delivered);
        if acked < query.after {
            tracing::warn!(%child, after = query.after, delivered, "a child acknowledged instructions it was never sent; answering from what it was sent");
        }
        sqlx::query("DELETE FROM site_outbox WHERE child = ? AND seq <= ?")
            .bind(&child)
            .bind(acked as i64)
            .execute(&mut *tx.tx)
            .await?;
        crate::hierarchy::touch_in(&mut tx, &child).await?;
        tx.commit().await?;
        acked
    };
    loop {
        changes.borrow_and_update();
        let rows: Vec<(i64, i64, String)> = sqlx::query_as(
            "SELECT seq, created_at_ms, body FROM site_outbox WHERE child = ? AND seq > ?
             ORDER BY seq LIMIT 500",
        )
        .bind(&child)
        .bind(acked as i64)
        .fetch_all(state.db.pool())
        .await?;
        if !rows.is_empty() || tokio::time::Instant::now() >= deadline || *shutdown.borrow() {
            let mut out = Vec::with_capacity(rows.len());
            let mut bytes = 0;
            for (seq, created_at_ms, body) in rows {
                if bytes > 0 && bytes + body.len() > MAX_ANSWER_BYTES {
                    break;
                }
                bytes += body.len();
                let instruction = serde_json::from_str(&body).map_err(|err| {
                    Error::Internal(format!("queued instruction {seq} does not parse: {err}"))
                })?;
                out.push(InstructionEnvelope {
                    seq: seq as u64,
                    created_at_ms,
                    instruction,
                });
            }
            // Recorded before the answer leaves: a later `after` is
            // believed only as far as this.
            if let Some(last) = out.last() {
                let mut tx = state.db.write().await?;
                db::advance_cursor(&mut tx.tx, &delivered_cursor(&child), last.seq as i64).await?;
                tx.commit().await?;
            }
            return Ok(Json(Instructions { instructions: out }));
        }
        tokio::select! {
            _ = changes.changed() => {}
            _ = shutdown.changed() => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

/// How long one instructions poll waits for something new.
const POLL_WAIT: Duration = Duration::from_secs(30);

/// The child's receiver: long-polls the parent and stores what arrives in
/// the inbox, until shutdown. While the parent is unreachable it backs off,
/// and the site serves its DPs and agents from what it holds.
pub async fn receive_worker(state: AppState) {
    let Some(parent) = state.parent.clone() else {
        return;
    };
    crate::worker::run(
        &state,
        "fetching instructions from the parent",
        None,
        Duration::ZERO,
        || {
            let (state, parent) = (state.clone(), parent.clone());
            async move {
                let after = db::cursor(state.db.pool(), "instructions").await? as u64;
                let polled = parent.client.instructions(after, POLL_WAIT).await;
                let answer = polled.map_err(|err| {
                    let err = hierarchy::upstream(
                        &format!("fetching instructions from {}", parent.code()),
                        err,
                    );
                    let mut progress = state.progress.lock().expect("progress lock");
                    progress.parent_failed(cascade_protocol::chain(&err));
                    err
                })?;
                state
                    .progress
                    .lock()
                    .expect("progress lock")
                    .parent_answered();
                store_in_inbox(&state, answer.instructions).await?;
                Ok(true)
            }
        },
    )
    .await
}

async fn store_in_inbox(state: &AppState, instructions: Vec<InstructionEnvelope>) -> Result<()> {
    let Some(highest) = instructions.iter().map(|envelope| envelope.seq).max() else {
        return Ok(());
    };
    let now = now_ms();
    let mut tx = state.db.write().await?;
    for envelope in &instructions {
        let body = serde_json::to_string(&envelope.instruction)
            .map_err(|err| Error::Internal(err.to_string()))?;
        sqlx::query(
            "INSERT OR IGNORE INTO site_inbox (seq, kind, package, body, received_at_ms)
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(envelope.seq as i64)
        .bind(envelope.instruction.kind())
        .bind(envelope.instruction.package())
        .bind(body)
        .bind(now)
        .execute(&mut *tx.tx)
        .await?;
    }
    db::advance_cursor(&mut tx.tx, "instructions", highest as i64).await?;
    tx.commit().await?;
    state.wakes.inbox.notify_one();
    tracing::debug!(count = instructions.len(), highest, "instructions received");
    Ok(())
}

/// The child's applier: applies the inbox in order until shutdown.
pub async fn apply_worker(state: AppState) {
    crate::worker::run(
        &state,
        "applying an instruction",
        Some(&state.wakes.inbox),
        Duration::from_secs(5),
        || {
            let state = state.clone();
            async move { apply_next(&state).await }
        },
    )
    .await
}

/// Whether an error means the instruction can never apply (as opposed to
/// a failure of this site that a retry may get past).
fn is_refusal(err: &Error) -> bool {
    matches!(
        err,
        Error::Invalid { .. }
            | Error::Conflict(_)
            | Error::NotFound { .. }
            | Error::Forbidden(_)
            | Error::Unauthorized(_)
    )
}

/// Applies the oldest instruction of the inbox; false when it is empty.
async fn apply_next(state: &AppState) -> Result<bool> {
    let row: Option<(i64, String)> =
        sqlx::query_as("SELECT seq, body FROM site_inbox ORDER BY seq LIMIT 1")
            .fetch_optional(state.db.pool())
            .await?;
    let Some((seq, body)) = row else {
        return Ok(false);
    };
    let instruction: std::result::Result<Instruction, _> = serde_json::from_str(&body);
    let mut tx = state.db.write().await?;
    let outcome = match &instruction {
        Ok(instruction) => apply(state, &mut tx, instruction).await,
        Err(err) => Err(Error::invalid(
            "malformed_instruction",
            format!("instruction {seq} does not parse: {err}"),
        )),
    };
    match outcome {
        Ok(()) => {
            remove(&mut tx, seq).await?;
            tx.commit().await?;
            if let Ok(instruction) = &instruction {
                tracing::info!(seq, instruction = %instruction.describe(), "instruction applied");
            }
        }
        Err(err) if is_refusal(&err) => {
            // Nothing of it stays: start over in a transaction of its own.
            drop(tx);
            let (what, package, version, job) = match &instruction {
                Ok(instruction) => (
                    instruction.describe(),
                    instruction.package().map(str::to_owned),
                    match instruction {
                        Instruction::PackageVersion { version, .. } => Some(*version),
                        Instruction::Job { job } => Some(job.offer.version),
                        _ => None,
                    },
                    match instruction {
                        Instruction::Job { job } => Some(job.offer.id),
                        Instruction::JobCanceled { job, .. } => Some(*job),
                        _ => None,
                    },
                ),
                Err(_) => (format!("instruction {seq}"), None, None, None),
            };
            tracing::warn!(seq, instruction = %what, error = %cascade_protocol::chain(&err), "instruction refused");
            let mut tx = state.db.write().await?;
            status::record_site_message(
                state,
                &mut tx,
                StatusBody::InstructionRefused {
                    instruction: what,
                    package,
                    version,
                    job,
                    reason: cascade_protocol::chain(&err),
                },
            )
            .await?;
            remove(&mut tx, seq).await?;
            tx.commit().await?;
        }
        Err(err) => {
            drop(tx);
            let mut tx = state.db.write().await?;
            sqlx::query(
                "UPDATE site_inbox SET attempts = attempts + 1, last_error = ? WHERE seq = ?",
            )
            .bind(cascade_protocol::chain(&err))
            .bind(seq)
            .execute(&mut *tx.tx)
            .await?;
            tx.commit().await?;
            return Err(err);
        }
    }
    state.notify_everything();
    Ok(true)
}

async fn remove(tx: &mut WriteTx<'_>, seq: i64) -> Result<()> {
    sqlx::query("DELETE FROM site_inbox WHERE seq = ?")
        .bind(seq)
        .execute(&mut *tx.tx)
        .await?;
    Ok(())
}

/// Applies one instruction here and queues it for the children, inside `tx`.
async fn apply(state: &AppState, tx: &mut WriteTx<'_>, instruction: &Instruction) -> Result<()> {
    match instruction {
        Instruction::PackageVersion {
            package,
            version,
            manifest,
        } => receive_version(state, tx, package, *version, manifest).await,
        Instruction::Collection {
            name,
            machines,
            rule,
        } => agents::apply_collection(state, tx, name, machines.clone(), rule.clone()).await,
        Instruction::DpGroup { name, dps } => groups::apply_group(state, tx, name, dps).await,
        Instruction::Distribute { package, dp_group } => {
            groups::apply_group_distribution(state, tx, package, dp_group)
                .await
                .map(|_| ())
        }
        Instruction::Job { job } => jobs::apply_job(state, tx, job).await,
        Instruction::JobCanceled { job, .. } => jobs::apply_cancel(state, tx, *job).await,
        Instruction::Refresh { package, dps } => {
            distribution::apply_refresh(state, tx, package, dps.as_deref())
                .await
                .map(|_| ())
        }
    }
}

/// A package version from the parent: its manifest must verify against the
/// central key and be newer than every version of the package held here
/// (the same manifest again is a duplicate and changes nothing). Only the
/// manifest is stored; the content follows where it is needed.
async fn receive_version(
    state: &AppState,
    tx: &mut WriteTx<'_>,
    package: &str,
    version: u64,
    wire: &SignedManifestWire,
) -> Result<()> {
    let name = PackageName::new(package)?;
    let signed = wire.to_signed().ok_or_else(|| {
        Error::invalid(
            "invalid_manifest",
            format!("manifest of {package} v{version} has a malformed signature"),
        )
    })?;
    let manifest = signed.verify(&state.trust).map_err(|err| {
        Error::invalid(
            "manifest_refused",
            format!(
                "manifest of {package} v{version} refused: {err} (every manifest must be signed by the central site {})",
                state.central
            ),
        )
    })?;
    if manifest.package != package || manifest.version != version {
        return Err(Error::invalid(
            "invalid_manifest",
            format!(
                "the instruction for {package} v{version} carries the manifest of {} v{}",
                manifest.package, manifest.version
            ),
        ));
    }
    let package_id = match db::package_by_name(&mut *tx.tx, name.as_str()).await? {
        Some(row) => row.id,
        None => {
            sqlx::query_scalar(
                "INSERT INTO packages (name, created_at_ms) VALUES (?, ?) RETURNING id",
            )
            .bind(name.as_str())
            .bind(manifest.created_at_ms)
            .fetch_one(&mut *tx.tx)
            .await?
        }
    };
    if let Some((bytes, _)) = db::manifest(&mut *tx.tx, package_id, version as i64).await? {
        if bytes == signed.bytes {
            return Ok(());
        }
        return Err(Error::Conflict(format!(
            "a different version {version} of {package} is already held here; a version is never replaced"
        )));
    }
    let offered = Version::new(version)
        .ok_or_else(|| Error::invalid("invalid_manifest", format!("version 0 of {package}")))?;
    let held = db::latest_version(&mut *tx.tx, package_id)
        .await?
        .and_then(|held| Version::new(held as u64));
    Version::check_newer(package, held, offered)?;
    api::insert_version(tx, package_id, &manifest, &signed, false).await?;
    send_down(
        state,
        tx,
        &Instruction::PackageVersion {
            package: package.to_owned(),
            version,
            manifest: wire.clone(),
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestSite;
    use cascade_protocol::{Client, CollectionRequest};

    /// Issue 10: `after` acknowledged everything up to it, so a child
    /// claiming a number it was never sent made the parent drop
    /// instructions it never delivered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn instruction_ack_never_covers_more_than_was_delivered() {
        let site = TestSite::start().await;
        // A child joins (its server is never started: the test polls with
        // its credential).
        let child_dir = site.dir.path().join("p01");
        crate::init(
            &child_dir,
            "P01",
            Some(&crate::Join {
                kind: "primary".into(),
                parent_url: site.url.clone(),
                join_token: site.report.site_join_token.clone(),
                central_key: None,
                max_rate: None,
                replace: false,
            }),
        )
        .await
        .unwrap();
        let child = hierarchy::Parent::read(&child_dir.join(crate::layout::PARENT))
            .unwrap()
            .client;
        let admin = Client::new(&site.url, Some(&site.report.admin_token)).unwrap();
        admin
            .create_collection(&CollectionRequest {
                name: "kiosks".into(),
                machines: vec!["ws1".into()],
                rule: None,
                allow_unknown: true,
            })
            .await
            .unwrap();
        // The child claims to hold everything up to 1000: it was sent
        // nothing yet, so nothing is dropped and it is sent the collection.
        let first = child.instructions(1000, Duration::ZERO).await.unwrap();
        let seqs: Vec<u64> = first.instructions.iter().map(|e| e.seq).collect();
        assert!(
            !seqs.is_empty(),
            "the undelivered instructions were dropped"
        );
        // Asked again from the start, they are all still there.
        let again = child.instructions(0, Duration::ZERO).await.unwrap();
        let again: Vec<u64> = again.instructions.iter().map(|e| e.seq).collect();
        assert_eq!(again, seqs);
        // Once delivered, an acknowledgement drops them, and only them.
        let last = *seqs.last().unwrap();
        admin
            .create_collection(&CollectionRequest {
                name: "tills".into(),
                machines: vec!["ws2".into()],
                rule: None,
                allow_unknown: true,
            })
            .await
            .unwrap();
        let rest = child.instructions(u64::MAX, Duration::ZERO).await.unwrap();
        let rest: Vec<u64> = rest.instructions.iter().map(|e| e.seq).collect();
        assert!(
            !rest.is_empty() && rest.iter().all(|seq| *seq > last),
            "{rest:?} after {last}"
        );
        site.stop().await;
    }
}
