//! The applier's side of the send phase: instructions received from the
//! parent are stored in the durable inbox, then applied one at a time in
//! order, each in one transaction with its effects, the inbox row's removal
//! and the copies queued for this site's own children (see `send.rs`). An
//! instruction that can never apply ([`Error::can_never_apply`]) is refused:
//! reported as `instruction_refused` and removed, so nothing is ever left
//! unprocessed behind it.

use crate::db::{self, WriteTx};
use crate::error::{Error, Result};
use crate::service::{collections, distribution, groups, jobs, messages, send, timestamp};
use crate::state::{upstream, AppState, Parent};
use cascade_domain::{PackageName, Version};
use cascade_protocol::{Instruction, InstructionEnvelope, SignedManifestWire, StatusBody};
use cascade_store::now_ms;
use std::time::Duration;

/// How long one instructions poll waits for something new.
const POLL_WAIT: Duration = Duration::from_secs(30);

/// One long poll of the parent's instructions, stored in the inbox.
pub async fn receive_once(state: &AppState, parent: &Parent) -> Result<()> {
    let after = db::cursor(state.db.pool(), "instructions").await? as u64;
    // The newest held or offered (0 for none): an older site sends
    // nothing, and its parent answers it as before, at the end of the wait.
    let held = timestamp::held(state)
        .await?
        .map_or(0, |(_, held)| held.issued_at_ms)
        .max(
            parent
                .timestamp_offered
                .load(std::sync::atomic::Ordering::Relaxed),
        );
    let polled = parent
        .client
        .instructions(after, POLL_WAIT, Some(held))
        .await;
    let answer = polled.map_err(|err| {
        let err = upstream(
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
    // Before the instructions: whatever a policy offers from them is
    // offered with a timestamp at least as new as the one that came along.
    if let Some(offered) = timestamp::accept_from_parent(state, answer.timestamp).await? {
        parent
            .timestamp_offered
            .fetch_max(offered, std::sync::atomic::Ordering::Relaxed);
    }
    store_in_inbox(state, answer.instructions).await
}

/// Stores instructions received from the parent in the inbox and moves
/// the durable cursor past them, in one transaction.
pub async fn store_in_inbox(
    state: &AppState,
    instructions: Vec<InstructionEnvelope>,
) -> Result<()> {
    let Some(highest) = instructions.iter().map(|envelope| envelope.seq).max() else {
        return Ok(());
    };
    let now = now_ms();
    let mut tx = state.db.write().await?;
    for envelope in &instructions {
        let body =
            serde_json::to_string(&envelope.instruction).map_err(Error::json("encoding JSON"))?;
        db::inbox_insert(
            &mut tx,
            envelope.seq as i64,
            envelope.instruction.kind(),
            envelope.instruction.package(),
            &body,
            now,
        )
        .await?;
    }
    db::advance_cursor(&mut tx.tx, "instructions", highest as i64).await?;
    tx.commit().await?;
    state.wakes.inbox.notify_one();
    tracing::debug!(count = instructions.len(), highest, "instructions received");
    Ok(())
}

/// Applies the oldest instruction of the inbox; false when it is empty.
pub async fn apply_next(state: &AppState) -> Result<bool> {
    let Some((seq, body)) = db::inbox_first(state.db.pool()).await? else {
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
            db::inbox_remove(&mut tx, seq).await?;
            tx.commit().await?;
            if let Ok(instruction) = &instruction {
                tracing::info!(seq, instruction = %instruction.describe(), "instruction applied");
            }
        }
        Err(err) if err.can_never_apply() => {
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
            messages::record_site_message(
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
            db::inbox_remove(&mut tx, seq).await?;
            tx.commit().await?;
        }
        Err(err) => {
            drop(tx);
            let mut tx = state.db.write().await?;
            db::inbox_failed(&mut tx, seq, &cascade_protocol::chain(&err)).await?;
            tx.commit().await?;
            return Err(err);
        }
    }
    state.notify_everything();
    // A new version or a cancellation from above.
    state.notify_retention();
    Ok(true)
}

/// Applies one instruction here, then passes it on to the children
/// unchanged, inside `tx`. Each `apply_*` applies at this site only; the
/// passing on is here, once, for every kind (a duplicate goes down too: the
/// children apply it idempotently, as this site did).
async fn apply(state: &AppState, tx: &mut WriteTx<'_>, instruction: &Instruction) -> Result<()> {
    apply_here(state, tx, instruction).await?;
    send::send_down(state, tx, instruction).await
}

/// Applies one instruction at this site, inside `tx`.
async fn apply_here(
    state: &AppState,
    tx: &mut WriteTx<'_>,
    instruction: &Instruction,
) -> Result<()> {
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
        } => collections::apply_collection(tx, name, machines.clone(), rule.clone()).await,
        Instruction::DpGroup { name, dps } => groups::apply_group(tx, name, dps).await,
        Instruction::Distribute { package, dp_group } => {
            groups::apply_group_distribution(state, tx, package, dp_group)
                .await
                .map(|_| ())
        }
        Instruction::Job { job } => jobs::apply_job(state, tx, job).await,
        Instruction::JobCanceled { job, intent, .. } => {
            jobs::apply_cancel(state, tx, *job, intent.as_ref())
                .await
                .map(|_| ())
        }
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
/// manifest is stored; the content follows where it is needed, and the DPs
/// holding the package move to the version at once, fetching its chunks as
/// they arrive here (cut-through).
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
        None => db::insert_package(tx, name.as_str(), manifest.created_at_ms).await?,
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
    db::insert_version(tx, package_id, &manifest, &signed, false).await?;
    distribution::supersede(state, tx, package_id, package, version as i64).await?;
    Ok(())
}
