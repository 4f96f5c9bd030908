//! Status up: every status message a site stores (its own, its DPs' and
//! agents', and those relayed from the sites below) is relayed to its
//! parent, so that every message reaches the central site.
//!
//! The site's message table is the outbox: messages are relayed in the
//! order they were stored, in batches, and a durable cursor records the
//! last one the parent acknowledged. The parent stores each message once
//! per (source, sequence number), so a batch resent after a lost answer
//! duplicates nothing, and the views fold each source's messages in
//! sequence order, so a late message never moves a state backwards. While
//! the parent is unreachable, messages wait here; none is lost.

use crate::db;
use crate::error::{Error, Result};
use crate::service::messages;
use crate::state::{upstream, AppState, Parent};
use cascade_content::VerifyingKey;
use cascade_domain::hierarchy::{SourceMember, StatusSource};
use cascade_protocol::{RelayAck, RelayBatch, RelayConflict, RelayedStatus, StatusBody};
use cascade_store::now_ms;
use std::collections::HashMap;

/// Most messages relayed per request.
const BATCH: i64 = 1000;
/// Most message bytes relayed per request (at least one message is sent).
const BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Most messages accepted per request.
const MAX_MESSAGES: usize = 10_000;
/// Relays one batch; returns how many messages it carried.
pub async fn relay_once(state: &AppState, parent: &Parent) -> Result<usize> {
    let cursor = db::cursor(state.db.pool(), "relayed").await?;
    let rows = db::messages_after(state.db.pool(), cursor, BATCH).await?;
    let mut messages = Vec::with_capacity(rows.len());
    let mut last = cursor;
    let mut bytes = 0;
    for (id, source, body) in rows {
        if bytes > 0 && bytes + body.len() > BATCH_BYTES {
            break;
        }
        bytes += body.len();
        messages.push(RelayedStatus {
            source,
            message: messages::parse_stored(&body)?,
        });
        last = id;
    }
    if messages.is_empty() {
        return Ok(0);
    }
    let count = messages.len();
    let ack = parent
        .client
        .relay_status(&RelayBatch { messages })
        .await
        .map_err(|err| upstream(&format!("relaying status to {}", parent.code()), err))?;
    // The cursor moves to the batch's last message, never further: the
    // answer carries no number. An answer that does not account for every
    // message of the batch moves nothing.
    check_relay_ack(&ack, count).map_err(|reason| Error::Unavailable {
        code: "parent_unreachable",
        message: format!("relaying status to {}: {reason}", parent.code()),
    })?;
    if !ack.conflicts.is_empty() {
        // Nothing moves: this site's own messages are renumbered past what
        // the parent holds and the same batch goes again.
        renumber_own(state, parent, &ack.conflicts).await?;
        return Ok(count);
    }
    state
        .progress
        .lock()
        .expect("progress lock")
        .parent_answered();
    let mut tx = state.db.write().await?;
    db::advance_cursor(&mut tx.tx, "relayed", last).await?;
    tx.commit().await?;
    Ok(count)
}

/// Whether the parent's answer accounts for every one of the `count`
/// messages relayed: each stored now or before, or in conflict.
fn check_relay_ack(ack: &RelayAck, count: usize) -> std::result::Result<(), String> {
    match ack
        .stored
        .checked_add(ack.duplicates)
        .and_then(|total| total.checked_add(ack.conflicts.len() as u64))
    {
        Some(total) if total == count as u64 => Ok(()),
        _ => Err(format!(
            "the parent answered {} stored, {} duplicates and {} conflicts for a batch of {count} messages",
            ack.stored,
            ack.duplicates,
            ack.conflicts.len()
        )),
    }
}

/// The parent holds other messages under numbers of this site's own: the
/// site was restored from a backup and numbered its messages again from
/// where the backup was. Its own messages from the first conflicting
/// number on move past the parent's highest number, in order, and the
/// site's counter with them, so each reaches the parent under a number of
/// its own. A conflict about another source (this site relays it as it was
/// given) is not this site's to mend: it stays, and the relay waits.
async fn renumber_own(
    state: &AppState,
    parent: &Parent,
    conflicts: &[RelayConflict],
) -> Result<()> {
    let own = state.code.to_string();
    let (ours, others): (Vec<&RelayConflict>, Vec<&RelayConflict>) = conflicts
        .iter()
        .partition(|conflict| conflict.source == own);
    if let Some(other) = others.first() {
        return Err(Error::Unavailable {
            code: "relay_conflict",
            message: format!(
                "relaying status to {}: it holds another message {} of {}; relaying waits",
                parent.code(),
                other.seq,
                other.source
            ),
        });
    }
    let (Some(from), Some(high)) = (
        ours.iter().map(|conflict| conflict.seq).min(),
        ours.iter().map(|conflict| conflict.high_water_seq).max(),
    ) else {
        return Ok(());
    };
    let delta = (high + 1).saturating_sub(from) as i64;
    if delta <= 0 {
        return Err(Error::Internal(format!(
            "the parent reported message {from} of {own} in conflict below its highest number {high}"
        )));
    }
    let mut tx = state.db.write().await?;
    // Through negative numbers, so that no row meets another's number on
    // the way (source and number are unique).
    db::renumber_source(&mut tx, &own, from, delta).await?;
    tx.commit().await?;
    tracing::warn!(site = %own, from, to = high + 1, parent = parent.code(), "the parent holds other messages under this site's numbers (restored from a backup?); renumbered this site's own messages past them");
    Ok(())
}

/// `POST /api/v1/site/status`: a child relays messages of its subtree.
/// A child may relay only messages whose source is a site at or below it.
pub async fn ingest_relayed(state: &AppState, child: &str, batch: &RelayBatch) -> Result<RelayAck> {
    if batch.messages.len() > MAX_MESSAGES {
        return Err(Error::TooLarge(format!(
            "{} status messages in one batch; at most {MAX_MESSAGES}",
            batch.messages.len()
        )));
    }
    let sites = db::subtree(state.db.pool()).await?;
    let mut sources = Vec::with_capacity(batch.messages.len());
    // DPs and agents enrolled earlier in this batch, and those looked up:
    // source → the key its messages must be signed with (none: one
    // enrolled before status was signed).
    let mut keys: HashMap<String, Option<VerifyingKey>> = HashMap::new();
    for relayed in &batch.messages {
        let source = StatusSource::parse(&relayed.source)?;
        if !db::contains(&sites, child, source.site.as_str()) {
            tracing::warn!(%child, source = %source, "refused a relayed status message");
            return Err(Error::Forbidden(format!(
                "site {child} may not relay messages of {source}, which is not in its subtree"
            )));
        }
        // A DP's or workstation's message only once it is enrolled there
        // (issue 12: a child relayed `job_failed` for a workstation that
        // does not exist, and turned the job's outcome to failed), and
        // signed with the key it registered then: a site can delay its
        // results, not invent them.
        match (&source.member, &relayed.message.body) {
            (SourceMember::Site, StatusBody::AgentEnrolled { agent, public_key }) => {
                keys.insert(
                    format!("{}/agent/{agent}", source.site),
                    parse_key(public_key.as_deref())?,
                );
            }
            (SourceMember::Site, StatusBody::DpEnrolled { dp, public_key }) => {
                keys.insert(
                    format!("{}/dp/{dp}", source.site),
                    parse_key(public_key.as_deref())?,
                );
            }
            (SourceMember::Site, _) => {}
            (member, _) => {
                let key = source.to_string();
                if !keys.contains_key(&key) {
                    let site = source.site.as_str();
                    let (exists, public_key) = match member {
                        SourceMember::Agent(name) => (
                            db::agent_enrolled_below(state.db.pool(), site, name).await?,
                            db::enrolled_key_below(
                                state.db.pool(),
                                site,
                                db::SenderTable::Agents,
                                name,
                            )
                            .await?,
                        ),
                        SourceMember::Dp(name) => (
                            db::dp_known(state.db.pool(), state.code.as_str(), site, name.as_str())
                                .await?,
                            db::enrolled_key_below(
                                state.db.pool(),
                                site,
                                db::SenderTable::Dps,
                                name.as_str(),
                            )
                            .await?,
                        ),
                        SourceMember::Site => (true, None),
                    };
                    if !exists {
                        tracing::warn!(%child, source = %source, "refused a relayed status message of a source never enrolled");
                        return Err(Error::Forbidden(format!(
                            "site {child} relayed a message of {source}, which never enrolled there"
                        )));
                    }
                    keys.insert(key.clone(), parse_key(public_key.as_deref())?);
                }
                if let Some(Some(public_key)) = keys.get(&key) {
                    if let Err(reason) = cascade_protocol::status_signing::verify_status(
                        &key,
                        &relayed.message,
                        public_key,
                    ) {
                        tracing::warn!(%child, source = %source, %reason, "refused a relayed status message");
                        return Err(Error::Forbidden(format!(
                            "site {child} relayed a message that {source} did not sign: {reason}"
                        )));
                    }
                }
            }
        }
        if let Some(reason) = cascade_protocol::seq_out_of_range(relayed.message.seq) {
            return Err(Error::invalid("invalid_seq", reason));
        }
        sources.push(source);
    }
    let received = now_ms();
    let mut tx = state.db.write().await?;
    let (mut stored, mut duplicates, mut conflicts) = (0, 0, Vec::<RelayConflict>::new());
    for (source, relayed) in sources.iter().zip(&batch.messages) {
        let key = source.to_string();
        // After a conflict, nothing more of that source is stored from this
        // batch: the child renumbers all of it, and a message stored now
        // would arrive again under its new number.
        if let Some(high_water_seq) = conflicts
            .iter()
            .find(|conflict| conflict.source == key)
            .map(|conflict| conflict.high_water_seq)
        {
            conflicts.push(RelayConflict {
                source: key,
                seq: relayed.message.seq,
                high_water_seq,
            });
            continue;
        }
        if db::insert_message(&mut tx.tx, source, &relayed.message, received).await? {
            stored += 1;
            continue;
        }
        // Held already: the same message again (a resend), or another one
        // under its number, which is never taken for a duplicate.
        let held = db::message_body(&mut *tx.tx, &key, relayed.message.seq).await?;
        let same = held
            .as_deref()
            .and_then(|body| messages::parse_stored(body).ok())
            == Some(relayed.message.clone());
        if same {
            duplicates += 1;
        } else {
            let high = db::max_stored_seq(&mut *tx.tx, &key).await?;
            tracing::warn!(%child, source = %key, seq = relayed.message.seq, "a relayed message conflicts with one held under its number");
            conflicts.push(RelayConflict {
                source: key,
                seq: relayed.message.seq,
                high_water_seq: high as u64,
            });
        }
    }
    db::touch_site(&mut tx, child, now_ms()).await?;
    tx.commit().await?;
    if stored > 0 {
        state.notify_status_stored();
    }
    Ok(RelayAck {
        stored,
        duplicates,
        conflicts,
    })
}

/// A registered public key, as stored in an enrollment message.
fn parse_key(key: Option<&str>) -> Result<Option<VerifyingKey>> {
    key.map(|key| {
        cascade_content::public_key_from_hex(key)
            .map_err(|err| Error::invalid("invalid_public_key", err.to_string()))
    })
    .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relay_ack_must_account_for_the_whole_batch() {
        let ack = |stored, duplicates| RelayAck {
            stored,
            duplicates,
            conflicts: Vec::new(),
        };
        assert!(check_relay_ack(&ack(3, 2), 5).is_ok());
        assert!(check_relay_ack(&ack(3, 1), 5).is_err());
        assert!(check_relay_ack(&ack(9, 0), 5).is_err());
        assert!(check_relay_ack(&ack(u64::MAX, 6), 5).is_err());
    }
}
