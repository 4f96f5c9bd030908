//! The newest timestamp the central site signed that this agent holds
//! (TUF's timestamp role, [`cascade_protocol::intent::Timestamp`]), kept in
//! agent.db so that a restart never accepts an older one. While it has
//! expired, or before one arrives, the executor starts no job and reports
//! it held (`job_held`): the site this agent polls is frozen or cut off
//! from the central site, and may be withholding a cancellation or a
//! newer revision.

use crate::{Error, Result};
use cascade_content::VerifyingKey;
use cascade_protocol::intent::Timestamp;
use cascade_protocol::SignedIntent;
use cascade_store::Db;

/// The key of agent.db's `state` table that holds it, as signed.
const KEY: &str = "timestamp";

/// The timestamp held, verified again (agent.db is not trusted either: one
/// that does not verify counts as none).
pub async fn load(db: &Db, key: &VerifyingKey) -> Result<Option<Timestamp>> {
    let text: Option<String> = sqlx::query_scalar("SELECT value FROM state WHERE key = ?")
        .bind(KEY)
        .fetch_optional(db.pool())
        .await
        .map_err(cascade_store::Error::from)?;
    let Some(text) = text else { return Ok(None) };
    let verified = serde_json::from_str::<SignedIntent>(&text)
        .map_err(|err| err.to_string())
        .and_then(|signed| signed.verify_timestamp(key).map_err(|err| err.to_string()));
    match verified {
        Ok(timestamp) => Ok(Some(timestamp)),
        Err(err) => {
            tracing::warn!(error = %err, "the stored timestamp is refused; waiting for a new one");
            Ok(None)
        }
    }
}

/// Keeps `offered` if it verifies and is newer than `held`; returns the
/// timestamp now held. An older one (a site replaying) or a forged one
/// changes nothing.
pub async fn accept(
    db: &Db,
    key: &VerifyingKey,
    offered: &SignedIntent,
    held: Option<Timestamp>,
) -> Result<Option<Timestamp>> {
    let timestamp = match offered.verify_timestamp(key) {
        Ok(timestamp) => timestamp,
        Err(err) => {
            tracing::warn!(error = %err, "the site passed on a timestamp that was refused");
            return Ok(held);
        }
    };
    if !timestamp.replaces_or_warn(held.as_ref(), "the site") {
        return Ok(held);
    }
    let text = serde_json::to_string(offered).map_err(|err| Error::Config(err.to_string()))?;
    sqlx::query(
        "INSERT INTO state (key, value) VALUES (?, ?)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )
    .bind(KEY)
    .bind(text)
    .execute(db.pool())
    .await
    .map_err(cascade_store::Error::from)?;
    Ok(Some(timestamp))
}
