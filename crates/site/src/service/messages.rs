//! This site's own status messages: recording them, and reading stored
//! ones back.

use crate::db::{self, WriteTx};
use crate::error::{Error, Result};
use crate::state::AppState;
use cascade_domain::hierarchy::StatusSource;
use cascade_protocol::{StatusBody, StatusMessage};
use cascade_store::now_ms;

/// Parses a stored status message (stored by this site, so a failure is the
/// server's fault).
pub fn parse_stored(body: &str) -> Result<StatusMessage> {
    serde_json::from_str(body).map_err(Error::json("stored status message does not parse"))
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
        signature: None,
    };
    db::insert_message(&mut tx.tx, &source, &message, at_ms).await?;
    Ok(())
}
