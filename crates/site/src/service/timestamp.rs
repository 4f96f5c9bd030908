//! The central site's signed timestamp (TUF's timestamp role,
//! [`cascade_protocol::intent::Timestamp`]): signed afresh at the central
//! site every quarter of its validity, passed down unchanged by every site
//! in its instructions answers, and handed to agents in their policy. A
//! site keeps only the newest that verifies against the central key: a
//! parent that sends an older one (a replay) or a forged one changes
//! nothing.

use crate::db::{self, WriteTx};
use crate::error::Result;
use crate::state::AppState;
use cascade_protocol::intent::{Intent, Timestamp, MAX_TIMESTAMP_CANCELED};
use cascade_protocol::SignedIntent;
use cascade_store::now_ms;
use std::time::Duration;

/// Longest wait between two looks at the central site's timestamp.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// Shortest and longest validity an administrator may set.
pub const VALIDITY_RANGE_MS: std::ops::RangeInclusive<u64> = 10_000..=30 * 86_400_000;

/// At the central site: signs a new timestamp when none is held, when a
/// quarter of the held one's validity has passed, or when the validity
/// setting changed. Returns how long until the next look.
pub async fn sign_if_due(state: &AppState) -> Result<Duration> {
    let validity = db::read_settings(state.db.pool())
        .await?
        .timestamp_validity_ms as i64;
    let now = now_ms();
    let due = held(state).await?.map_or(now, |(_, held)| {
        if held.expires_at_ms - held.issued_at_ms != validity {
            now
        } else {
            held.issued_at_ms + validity / 4
        }
    });
    if due <= now {
        let mut tx = state.db.write().await?;
        sign_in(&mut tx, state, now).await?;
        tx.commit().await?;
        state.notify_outbox_changed();
        tracing::debug!(validity_ms = validity, "timestamp signed");
        return Ok(Duration::from_millis((validity / 4) as u64).min(MAX_WAIT));
    }
    Ok(Duration::from_millis((due - now) as u64).min(MAX_WAIT))
}

/// The timestamp this site holds, as signed and as read. One stored that
/// does not verify (a damaged database, a central key replaced) counts as
/// none: it is never passed on, and the next one replaces it.
pub async fn held(state: &AppState) -> Result<Option<(SignedIntent, Timestamp)>> {
    let Some(signed) = db::read_timestamp(state.db.pool()).await? else {
        return Ok(None);
    };
    match signed.verify_timestamp(&state.trust) {
        Ok(timestamp) => Ok(Some((signed, timestamp))),
        Err(err) => {
            tracing::warn!(error = %err, "the stored timestamp is refused; it counts as none");
            Ok(None)
        }
    }
}

/// Signs a timestamp valid for the validity setting from `now`, naming
/// the jobs canceled and not expired, and stores it in `tx` (central site
/// only: after a cancellation too, so that it reaches every agent at once).
pub async fn sign_in(tx: &mut WriteTx<'_>, state: &AppState, now: i64) -> Result<()> {
    let validity = db::read_settings(&mut *tx.tx).await?.timestamp_validity_ms as i64;
    // Later than the one held, always (two signed in the same millisecond,
    // or a clock set back): sites and agents keep only a newer one.
    let held = db::read_timestamp(&mut *tx.tx)
        .await?
        .and_then(|held| held.verify_timestamp(&state.trust).ok());
    let now = held.map_or(now, |held| now.max(held.issued_at_ms + 1));
    let canceled = db::canceled_unexpired_job_ids(&mut *tx.tx, now, MAX_TIMESTAMP_CANCELED).await?;
    let signed = SignedIntent::sign(
        &Intent::Timestamp(Timestamp {
            issued_at_ms: now,
            expires_at_ms: now + validity,
            canceled,
        }),
        &*state.signing_key()?,
    );
    db::write_timestamp(tx, &signed).await
}

/// At a child site: keeps the timestamp the parent passed on if it
/// verifies against the central key and is newer than the one held. One
/// that does not verify is logged and ignored (the parent cannot make this
/// site believe it, nor stop the instructions that came with it). Returns
/// when the one offered says it was signed, kept or not (none when it does
/// not parse).
pub async fn accept_from_parent(
    state: &AppState,
    offered: Option<SignedIntent>,
) -> Result<Option<i64>> {
    let Some(offered) = offered else {
        return Ok(None);
    };
    let said = serde_json::from_str::<Intent>(&offered.intent)
        .ok()
        .and_then(|intent| match intent {
            Intent::Timestamp(timestamp) => Some(timestamp.issued_at_ms),
            _ => None,
        });
    let timestamp = match offered.verify_timestamp(&state.trust) {
        Ok(timestamp) => timestamp,
        Err(err) => {
            tracing::warn!(error = %err, "the parent passed on a timestamp that was refused");
            return Ok(said);
        }
    };
    let mut tx = state.db.write().await?;
    let held = db::read_timestamp(&mut *tx.tx)
        .await?
        .and_then(|held| held.verify_timestamp(&state.trust).ok());
    if !timestamp.replaces_or_warn(held.as_ref(), "the parent") {
        return Ok(said);
    }
    db::write_timestamp(&mut tx, &offered).await?;
    tx.commit().await?;
    // Children's instructions polls and agents' policies carry it.
    state.notify_outbox_changed();
    Ok(said)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestState;

    fn stamp(issued_at_ms: i64, key: &cascade_content::SigningKey) -> SignedIntent {
        SignedIntent::sign(
            &Intent::Timestamp(Timestamp {
                issued_at_ms,
                expires_at_ms: issued_at_ms + 60_000,
                canceled: Vec::new(),
            }),
            key,
        )
    }

    /// A hostile or restored parent: only a newer timestamp that verifies
    /// replaces the one held.
    #[tokio::test]
    async fn a_site_keeps_only_a_newer_timestamp_that_verifies() {
        let site = TestState::open().await;
        let state = &site.state;
        assert_eq!(held(state).await.unwrap(), None);
        sign_if_due(state).await.unwrap();
        let (_, first) = held(state).await.unwrap().unwrap();
        assert_eq!(
            first.expires_at_ms - first.issued_at_ms,
            cascade_protocol::DEFAULT_TIMESTAMP_VALIDITY_MS as i64
        );
        // Not due again yet: the same one is kept.
        sign_if_due(state).await.unwrap();
        assert_eq!(held(state).await.unwrap().unwrap().1, first);

        let key = state.signing_key().unwrap();
        // Older: a replay.
        accept_from_parent(state, Some(stamp(first.issued_at_ms - 1, &key)))
            .await
            .unwrap();
        assert_eq!(held(state).await.unwrap().unwrap().1, first);
        // Newer, but signed by another key.
        let other = cascade_content::SigningKey::from_bytes(&[7; 32]);
        accept_from_parent(state, Some(stamp(first.issued_at_ms + 1_000, &other)))
            .await
            .unwrap();
        assert_eq!(held(state).await.unwrap().unwrap().1, first);
        // A signed intent that is not a timestamp.
        let cancel = SignedIntent::sign(
            &Intent::Cancel(cascade_protocol::CancelIntent {
                job: 1,
                package: "app".into(),
                issued_at_ms: first.issued_at_ms + 1_000,
            }),
            &key,
        );
        accept_from_parent(state, Some(cancel)).await.unwrap();
        assert_eq!(held(state).await.unwrap().unwrap().1, first);
        // Newer and signed: kept, as signed.
        let newer = stamp(first.issued_at_ms + 1_000, &key);
        accept_from_parent(state, Some(newer.clone()))
            .await
            .unwrap();
        assert_eq!(held(state).await.unwrap().unwrap().0, newer);

        // One stored that does not verify (the central key was replaced)
        // counts as none, and the central site signs a new one.
        let mut tx = state.db.write().await.unwrap();
        db::write_timestamp(&mut tx, &stamp(first.issued_at_ms + 2_000, &other))
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(held(state).await.unwrap(), None);
        sign_if_due(state).await.unwrap();
        assert!(held(state).await.unwrap().is_some());
    }
}
