//! Status messages signed by the DP or agent that sends them, so that a
//! site between it and the central site can delay its results but not
//! invent them (issue 12).
//!
//! Each agent and DP holds its own ed25519 key (in its configuration file,
//! mode 0600), registered at enrollment and relayed up the hierarchy with
//! its `agent_enrolled` / `dp_enrolled` message. The signature covers
//! [`STATUS_CONTEXT`], the source (`SITE/agent/NAME`) and the message's JSON
//! without its signature; every site that stores the message checks it.

use crate::types::StatusMessage;
use cascade_content::{SigningKey, VerifyingKey};

/// What every status signature covers first.
pub const STATUS_CONTEXT: &[u8] = b"cascade status v1\n";

fn signed_bytes(source: &str, message: &StatusMessage) -> Vec<u8> {
    let mut unsigned = message.clone();
    unsigned.signature = None;
    let json = serde_json::to_string(&unsigned).expect("a status message always serialises");
    format!("{source}\n{json}").into_bytes()
}

/// Signs the messages of one source.
pub struct StatusSigner {
    source: String,
    key: SigningKey,
}

impl StatusSigner {
    /// A signer for `source` (`SITE/agent/NAME`, `SITE/dp/NAME`).
    pub fn new(source: String, key: SigningKey) -> StatusSigner {
        StatusSigner { source, key }
    }

    /// Sets the message's signature.
    pub fn sign(&self, message: &mut StatusMessage) {
        let signature = cascade_content::sign_statement(
            STATUS_CONTEXT,
            &signed_bytes(&self.source, message),
            &self.key,
        );
        message.signature = Some(hex::encode(signature));
    }
}

/// Checks that `message` of `source` is signed with `key`; the error says
/// what is wrong.
pub fn verify_status(
    source: &str,
    message: &StatusMessage,
    key: &VerifyingKey,
) -> Result<(), String> {
    let Some(signature) = &message.signature else {
        return Err(format!(
            "status message {} of {source} is not signed, and {source} signs its messages",
            message.seq
        ));
    };
    let mut bytes = [0u8; 64];
    hex::decode_to_slice(signature, &mut bytes).map_err(|_| {
        format!(
            "status message {} of {source} has a malformed signature",
            message.seq
        )
    })?;
    cascade_content::verify_statement(STATUS_CONTEXT, &signed_bytes(source, message), &bytes, key)
        .map_err(|_| {
            format!(
                "status message {} of {source} is not signed by {source}'s key",
                message.seq
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::StatusBody;

    fn message() -> StatusMessage {
        StatusMessage {
            seq: 3,
            at_ms: 1_000,
            body: StatusBody::JobCompleted {
                job: 1,
                package: "app".into(),
                attempt: 1,
                exit_code: 0,
                output_tail: "ok".into(),
            },
            signature: None,
        }
    }

    #[test]
    fn a_status_signature_binds_source_and_content() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let public = key.verifying_key();
        let mut signed = message();
        StatusSigner::new("S01/agent/ws1".into(), key).sign(&mut signed);
        assert_eq!(verify_status("S01/agent/ws1", &signed, &public), Ok(()));
        // Another source, another result, or no signature: refused.
        assert!(verify_status("S01/agent/ws2", &signed, &public).is_err());
        let mut altered = signed.clone();
        altered.body = StatusBody::JobFailed {
            job: 1,
            package: "app".into(),
            attempt: 1,
            exit_code: Some(1),
            reason: "forged".into(),
            output_tail: String::new(),
        };
        assert!(verify_status("S01/agent/ws1", &altered, &public).is_err());
        assert!(verify_status("S01/agent/ws1", &message(), &public).is_err());
        let other = SigningKey::from_bytes(&[8; 32]).verifying_key();
        assert!(verify_status("S01/agent/ws1", &signed, &other).is_err());
    }
}
