//! Status messages: storing the site's own, ingesting those of its DPs and
//! agents, and the views derived from them.
//!
//! **Architecture Invariant:** no status view is stored. `package_status`
//! folds the stored messages every time it is asked.

use crate::db::{self};
use crate::error::{Error, Result};
use crate::service::{groups, messages};
use crate::state::{AppState, Pending};
use cascade_domain::hierarchy::StatusSource;
use cascade_domain::status::{DistributionFold, DistributionState, DistributionView, Timed};
use cascade_protocol::*;
use std::collections::{BTreeMap, HashMap};

/// Messages the status writer stores in one transaction, at most.
pub const GROUP_MESSAGES: usize = 20_000;

/// What became of one batch of a group.
enum Outcome {
    /// Stored (as far as `acked`): messages `..accepted` of the batch are
    /// stored or were already; `conflict` is the number of the first that
    /// the site holds with other content, from which nothing was stored.
    Stored {
        accepted: usize,
        stored: u64,
        conflict: Option<u64>,
    },
    /// Refused as a whole, nothing stored.
    Refused(Error),
}

/// Stores a group of batches in one transaction and answers each.
///
/// Per source, the site keeps the highest number stored (`status_sources`).
/// Each message of a batch, in order, is
/// - the next number (one above the highest): stored;
/// - a number at or below the highest that is stored with the same
///   content: a duplicate (a resend after a lost answer), nothing changes;
/// - a number at or below the highest that is stored with other content:
///   a conflict. The sender numbers again from where a backup left it;
///   nothing from this message on is stored, and the answer asks the
///   sender to renumber from it past the highest ([`StatusAck`]);
/// - a number at or below the highest that is not stored (a hole left by
///   an older Cascade): stored;
/// - a number further ahead: the whole batch is refused (`seq_gap`).
///   Outboxes number without gaps and deliver in order, so a skip is a
///   forged or damaged number; accepted, it would become the source's
///   newest message, standing in the views over its real, later ones.
///
/// The acknowledgement covers only the batch: the last message of its
/// accepted prefix, never the highest number stored for the source.
pub async fn store_group(state: &AppState, group: &[Pending]) -> Result<Vec<Result<StatusAck>>> {
    let mut tx = state.db.write().await?;
    let sources: Vec<String> = group
        .iter()
        .map(|pending| pending.source.to_string())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let highest = db::highest_seqs(&mut tx, &sources).await?;
    // The stored messages a batch may repeat: those at or below the
    // highest number (only resends and restored senders have any).
    let mut held: HashMap<(String, u64), String> = HashMap::new();
    for pending in group {
        let source = pending.source.to_string();
        let top = highest.get(&source).copied().unwrap_or(0) as u64;
        let Some(first) = pending.messages.first().map(|m| m.seq) else {
            continue;
        };
        if first > top {
            continue;
        }
        let last = pending.messages.last().map_or(first, |m| m.seq).min(top);
        let rows = db::message_bodies(&mut *tx.tx, &source, first, last).await?;
        for (seq, body) in rows {
            held.insert((source.clone(), seq as u64), body);
        }
    }
    // Each batch in arrival order, against what is stored and what the
    // batches before it in this group bring.
    let mut running = highest.clone();
    let mut brought: HashMap<(String, u64), &StatusMessage> = HashMap::new();
    let mut outcomes = Vec::with_capacity(group.len());
    for pending in group {
        let source = pending.source.to_string();
        let top = running.get(&source).copied().unwrap_or(0) as u64;
        outcomes.push(judge(pending, &source, top, &held, &brought));
        if let Outcome::Stored { accepted, .. } = outcomes[outcomes.len() - 1] {
            let mut top = top;
            for message in &pending.messages[..accepted] {
                brought
                    .entry((source.clone(), message.seq))
                    .or_insert(message);
                top = top.max(message.seq);
            }
            running.insert(source, top as i64);
        }
    }
    // Every new message of the group in as few statements as possible: a
    // statement costs a round trip to the database's thread, and at a
    // large site that, not SQLite, is the limit.
    let mut all: Vec<(&StatusSource, &StatusMessage, i64)> = Vec::new();
    let mut inserted: std::collections::HashSet<(String, u64)> = Default::default();
    for (pending, outcome) in group.iter().zip(&outcomes) {
        let Outcome::Stored { accepted, .. } = outcome else {
            continue;
        };
        let source = pending.source.to_string();
        for message in &pending.messages[..*accepted] {
            let key = (source.clone(), message.seq);
            if !held.contains_key(&key) && inserted.insert(key) {
                all.push((&pending.source, message, pending.received));
            }
        }
    }
    db::insert_messages(&mut tx.tx, &all).await?;
    // The highest number per source, recorded once per source that moved.
    let moved: Vec<(&String, &i64)> = running
        .iter()
        .filter(|(source, top)| highest.get(*source) != Some(*top))
        .collect();
    db::record_highest_seqs(&mut tx, &moved).await?;
    let mut acks = Vec::with_capacity(group.len());
    for (pending, outcome) in group.iter().zip(outcomes) {
        if let Some(agent) = pending.source.agent() {
            state.seen.record(agent, pending.received);
        } else {
            db::touch_dp(&mut tx, pending.sender_id, pending.received).await?;
        }
        let high_water_seq = running
            .get(&pending.source.to_string())
            .copied()
            .unwrap_or(0) as u64;
        acks.push(match outcome {
            Outcome::Refused(err) => Err(err),
            Outcome::Stored {
                accepted,
                stored,
                conflict,
            } => Ok(StatusAck {
                acked_seq: accepted
                    .checked_sub(1)
                    .map_or(0, |last| pending.messages[last].seq),
                stored,
                duplicates: accepted as u64 - stored,
                high_water_seq,
                renumber_from: conflict,
            }),
        });
    }
    tx.commit().await?;
    Ok(acks)
}

/// Applies the sequence rules of [`store_group`] to one batch of `source`,
/// whose highest number is `top`; `held` are the stored messages the batch
/// may repeat, `brought` those the group's earlier batches bring.
fn judge(
    pending: &Pending,
    source: &str,
    top: u64,
    held: &HashMap<(String, u64), String>,
    brought: &HashMap<(String, u64), &StatusMessage>,
) -> Outcome {
    let mut top = top;
    let mut stored = 0;
    for (index, message) in pending.messages.iter().enumerate() {
        if message.seq > top.saturating_add(1) {
            tracing::warn!(%source, seq = message.seq, highest = top, "refused status messages that skip ahead");
            return Outcome::Refused(Error::invalid(
                "seq_gap",
                format!(
                    "status message {} of {source} skips ahead: this site holds its messages up to {top}, so the next is {}; messages are numbered without gaps",
                    message.seq,
                    top + 1
                ),
            ));
        }
        if message.seq == top + 1 {
            top += 1;
            stored += 1;
            continue;
        }
        let key = (source.to_owned(), message.seq);
        let same = match (brought.get(&key), held.get(&key)) {
            (Some(earlier), _) => *earlier == message,
            (None, Some(body)) => {
                messages::parse_stored(body).is_ok_and(|stored| &stored == message)
            }
            // A hole below the highest number: new here.
            (None, None) => {
                stored += 1;
                continue;
            }
        };
        if !same {
            tracing::warn!(%source, seq = message.seq, highest = top, "status message numbered like a stored one with other content; asking the sender to renumber");
            return Outcome::Stored {
                accepted: index,
                stored,
                conflict: Some(message.seq),
            };
        }
    }
    Outcome::Stored {
        accepted: pending.messages.len(),
        stored,
        conflict: None,
    }
}

/// `GET /api/v1/packages/{name}/status`: per DP, folded from the messages.
pub async fn package_status(state: &AppState, name: &str) -> Result<PackageStatus> {
    let (package, latest, dps) = distribution_rows(state, name).await?;
    Ok(PackageStatus {
        package,
        latest_version: latest,
        dps,
    })
}

/// `GET /api/v1/packages/{name}/messages`: the raw history behind the views.
pub async fn package_messages(state: &AppState, name: &str) -> Result<Vec<StatusRecord>> {
    let pool = state.db.pool();
    let package = db::require_package(pool, name).await?;
    let mut out = Vec::new();
    for row in db::messages_of_package(pool, &package.name).await? {
        let stored = messages::parse_stored(&row.body)?;
        out.push(StatusRecord {
            body: stored.body,
            signature: stored.signature,
            source: row.source,
            seq: row.seq as u64,
            at_ms: row.at_ms,
            received_at_ms: row.received_at_ms,
        });
    }
    Ok(out)
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
    let mut views = distribution_views(state, &package.name).await?;
    // DPs of sites below that the package goes to through a DP group are
    // known from the start: pending until they report, so that a watch
    // never ends while content is still on its way to them.
    for (site, dp) in groups::group_targets(state, package.id).await? {
        views.entry((site, dp)).or_insert_with(|| DistributionView {
            target: cascade_domain::Version::new(latest as u64),
            ..DistributionFold::default().view()
        });
    }
    let dps = views
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
        let message = messages::parse_stored(&row.body)?;
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
        state: (&view.state).into(),
        bytes_done,
        bytes_total,
        reason,
        since_ms: view.since,
    }
}

#[cfg(test)]
mod tests {
    //! The sequence rules of `POST /api/v1/status`, against a site served
    //! in-process on a real socket.

    use super::*;
    use crate::testing::TestSite;
    use cascade_protocol::forward::forward_once;
    use cascade_store::{Db, Outbox, OUTBOX_SCHEMA};

    fn message(seq: u64, at_ms: i64) -> StatusMessage {
        StatusMessage {
            seq,
            at_ms,
            body: StatusBody::DpProgress {
                package: "tools".into(),
                version: 1,
                bytes_done: seq,
                bytes_needed: 1000,
            },
            signature: None,
        }
    }

    fn batch(seqs: impl IntoIterator<Item = u64>) -> StatusBatch {
        StatusBatch {
            messages: seqs
                .into_iter()
                .map(|seq| message(seq, seq as i64))
                .collect(),
        }
    }

    fn refusal(err: cascade_protocol::Error) -> (u16, String, String) {
        match err {
            cascade_protocol::Error::Refused {
                status,
                code,
                message,
                ..
            } => (status, code, message),
            other => panic!("expected a refusal, got {other}"),
        }
    }

    /// Issue 10: the site answered every batch with the highest number it
    /// ever stored for the source, so a resend of older messages
    /// acknowledged newer ones it never carried.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn status_ack_never_covers_more_than_the_batch() {
        let site = TestSite::start().await;
        let dp = site.dp("dp1").await;
        let ack = dp.post_status(&batch(1..=5)).await.unwrap();
        assert_eq!((ack.acked_seq, ack.stored), (5, 5));
        // A resend of 2 and 3 (its answer was lost) covers 3, not 5.
        let ack = dp.post_status(&batch(2..=3)).await.unwrap();
        assert_eq!(ack.acked_seq, 3, "the ack covers more than the batch");
        assert_eq!((ack.stored, ack.duplicates, ack.high_water_seq), (0, 2, 5));
        // An empty batch asks where the source stands and covers nothing.
        let ack = dp.post_status(&batch([])).await.unwrap();
        assert_eq!((ack.acked_seq, ack.high_water_seq), (0, 5));
        site.stop().await;
    }

    /// Issue 10: a number of 2^63 or more was stored as a negative number.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn status_seq_out_of_range_is_refused() {
        let site = TestSite::start().await;
        let dp = site.dp("dp1").await;
        for seq in [0, 1 << 63, u64::MAX] {
            let (status, code, text) = refusal(dp.post_status(&batch([seq])).await.unwrap_err());
            assert_eq!((status, code.as_str()), (400, "invalid_seq"), "{text}");
            assert!(text.contains(&seq.to_string()), "{text}");
        }
        let (status, code, text) = refusal(dp.post_status(&batch([2, 1])).await.unwrap_err());
        assert_eq!((status, code.as_str()), (400, "invalid_seq"), "{text}");
        // The largest number is a number like any other, once the source
        // got there; nothing above was stored.
        let ack = dp.post_status(&batch([])).await.unwrap();
        assert_eq!(ack.high_water_seq, 0);
        site.stop().await;
    }

    /// Issue 10: one message numbered far ahead became the source's
    /// highest number and newest message, standing over its real ones.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn status_seq_gap_is_refused_not_taken_as_the_high_water_mark() {
        let site = TestSite::start().await;
        let dp = site.dp("dp1").await;
        dp.post_status(&batch(1..=46)).await.unwrap();
        let (status, code, text) = refusal(dp.post_status(&batch([500])).await.unwrap_err());
        assert_eq!((status, code.as_str()), (400, "seq_gap"), "{text}");
        assert!(text.contains("500") && text.contains("47"), "{text}");
        // Nothing of a batch with a hole is stored, even its first part.
        let (_, code, _) = refusal(dp.post_status(&batch([47, 49])).await.unwrap_err());
        assert_eq!(code, "invalid_seq");
        // A batch spanning far more numbers than it carries is refused
        // before the writer reads anything for it (the review's stall).
        let (_, code, _) = refusal(
            dp.post_status(&batch([1, 1_000_000_000_000]))
                .await
                .unwrap_err(),
        );
        assert_eq!(code, "invalid_seq");
        let ack = dp.post_status(&batch(47..=49)).await.unwrap();
        assert_eq!((ack.acked_seq, ack.stored, ack.high_water_seq), (49, 3, 49));
        site.stop().await;
    }

    /// A DP restored from a backup numbers its new messages again from
    /// where the backup was: the site holds those numbers with other
    /// content. The forwarder renumbers them past the site's highest
    /// number, and every message arrives.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn status_of_a_sender_restored_from_a_backup_is_not_lost() {
        let site = TestSite::start().await;
        let dp = site.dp("dp1").await;
        let open = |name: &str| {
            let path = site.dir.path().join(name);
            async move { Outbox::new(Db::open(&path, true, &[OUTBOX_SCHEMA]).await.unwrap()) }
        };
        let body = |seq: u64| serde_json::to_string(&message(seq, 0).body).unwrap();
        // Before the backup: 1 to 3 waiting. After it, 4 and 5 as well, all
        // delivered.
        let original = open("original.db").await;
        let restored = open("restored.db").await;
        for seq in 1..=5 {
            original.push(seq as i64, &body(seq)).await.unwrap();
            if seq <= 3 {
                restored.push(seq as i64, &body(seq)).await.unwrap();
            }
        }
        assert_eq!(forward_once(&original, &dp).await.unwrap(), 5);
        // Restored: new messages get 4 and 5 again, with other content.
        restored.push(40, &body(4)).await.unwrap();
        restored.push(50, &body(5)).await.unwrap();
        // 1 to 3 are duplicates; 4 conflicts: renumbered to 6 and 7.
        assert_eq!(forward_once(&restored, &dp).await.unwrap(), 5);
        let waiting: Vec<u64> = restored
            .pending(10)
            .await
            .unwrap()
            .iter()
            .map(|entry| entry.seq)
            .collect();
        assert_eq!(waiting, vec![6, 7]);
        assert_eq!(forward_once(&restored, &dp).await.unwrap(), 2);
        assert!(restored.is_empty().await.unwrap());
        let ack = dp.post_status(&batch([])).await.unwrap();
        assert_eq!(ack.high_water_seq, 7);
        // A new message is numbered after them.
        assert_eq!(restored.push(60, &body(8)).await.unwrap(), 8);
        site.stop().await;
    }
}
