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

use crate::db::{self, WriteTx};
use crate::error::{Error, Result};
use crate::service::timestamp;
use crate::state::AppState;
use cascade_protocol::{Instruction, InstructionEnvelope, Instructions, InstructionsQuery};
use cascade_store::now_ms;
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
    let body = serde_json::to_string(instruction).map_err(Error::json("encoding JSON"))?;
    for child in children {
        queue(tx, &child, instruction, &body).await?;
    }
    Ok(())
}

/// Queues one instruction (`body`, its JSON) for `child`.
pub async fn queue(
    tx: &mut WriteTx<'_>,
    child: &str,
    instruction: &Instruction,
    body: &str,
) -> Result<()> {
    db::outbox_insert(
        tx,
        child,
        instruction.kind(),
        instruction.package(),
        body,
        now_ms(),
    )
    .await
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
    state: &AppState,
    child: &str,
    query: &InstructionsQuery,
) -> Result<Instructions> {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(query.wait_ms).min(MAX_WAIT);
    let mut changes = state.outbox_changes.subscribe();
    let mut shutdown = state.shutdown.clone();
    let acked = {
        let mut tx = state.db.write().await?;
        let delivered = db::cursor(&mut *tx.tx, &delivered_cursor(child)).await? as u64;
        let acked = query.after.min(delivered);
        if acked < query.after {
            tracing::warn!(%child, after = query.after, delivered, "a child acknowledged instructions it was never sent; answering from what it was sent");
        }
        db::outbox_ack(&mut tx, child, acked as i64).await?;
        db::touch_site(&mut tx, child, now_ms()).await?;
        tx.commit().await?;
        acked
    };
    loop {
        changes.borrow_and_update();
        let rows = db::outbox_after(state.db.pool(), child, acked as i64, 500).await?;
        let timestamp = timestamp::held(state).await?;
        let newer_timestamp = timestamp
            .as_ref()
            .is_some_and(|(_, held)| query.timestamp_ms.is_some_and(|ms| held.issued_at_ms > ms));
        if !rows.is_empty()
            || newer_timestamp
            || tokio::time::Instant::now() >= deadline
            || *shutdown.borrow()
        {
            let mut out = Vec::with_capacity(rows.len());
            let mut bytes = 0;
            for (seq, created_at_ms, body) in rows {
                if bytes > 0 && bytes + body.len() > MAX_ANSWER_BYTES {
                    break;
                }
                bytes += body.len();
                let instruction = serde_json::from_str(&body).map_err(Error::json(format!(
                    "queued instruction {seq} does not parse"
                )))?;
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
                db::advance_cursor(&mut tx.tx, &delivered_cursor(child), last.seq as i64).await?;
                tx.commit().await?;
            }
            return Ok(Instructions {
                instructions: out,
                timestamp: timestamp.map(|(signed, _)| signed),
            });
        }
        tokio::select! {
            _ = changes.changed() => {}
            _ = shutdown.changed() => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestSite;
    use cascade_protocol::CollectionRequest;

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
                kind: cascade_domain::hierarchy::SiteKind::Primary,
                parent_url: site.url.clone(),
                join_token: site.report.site_join_token.clone(),
                central_key: None,
                max_rate: None,
                replace: false,
            }),
            None,
        )
        .await
        .unwrap();
        let child = crate::state::Parent::read(&child_dir.join(crate::layout::PARENT))
            .unwrap()
            .client;
        let admin = site.client(Some(&site.report.admin_token));
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
        let first = child
            .instructions(1000, Duration::ZERO, None)
            .await
            .unwrap();
        let seqs: Vec<u64> = first.instructions.iter().map(|e| e.seq).collect();
        assert!(
            !seqs.is_empty(),
            "the undelivered instructions were dropped"
        );
        // Asked again from the start, they are all still there.
        let again = child.instructions(0, Duration::ZERO, None).await.unwrap();
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
        let rest = child
            .instructions(u64::MAX, Duration::ZERO, None)
            .await
            .unwrap();
        let rest: Vec<u64> = rest.instructions.iter().map(|e| e.seq).collect();
        assert!(
            !rest.is_empty() && rest.iter().all(|seq| *seq > last),
            "{rest:?} after {last}"
        );
        site.stop().await;
    }
}
