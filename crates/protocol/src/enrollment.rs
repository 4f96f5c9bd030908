//! What a DP or an agent keeps after enrolling with its site: who it is, how
//! to reach the site, and which key every manifest must be signed with.

use crate::{Client, Result, SiteInfo};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// An enrolled DP's or agent's identity, stored (mode 0600) in its
/// configuration file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Enrollment {
    /// The DP's or workstation's name, unique in its site.
    pub name: String,
    /// The site server's URL.
    pub site_url: String,
    /// The site's code.
    pub site_code: String,
    /// Its own credential.
    pub credential: String,
    /// Hex of the key every manifest must be signed with, pinned at enrollment.
    pub site_public_key: String,
    /// Hex of its own secret key, which signs its status messages (absent
    /// in a configuration written before issue 12).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_key: Option<String>,
}

impl Enrollment {
    /// The identity granted by an enrollment answer.
    pub fn granted(
        name: &str,
        site_url: &str,
        credential: String,
        site: SiteInfo,
        status_key: Option<&cascade_content::SigningKey>,
    ) -> Enrollment {
        Enrollment {
            name: name.to_owned(),
            site_url: site_url.to_owned(),
            site_code: site.code,
            credential,
            site_public_key: site.public_key,
            status_key: status_key.map(|key| hex::encode(key.to_bytes())),
        }
    }

    /// A new key for its status messages.
    pub fn new_status_key() -> cascade_content::SigningKey {
        cascade_content::generate_key()
    }

    /// The signer of its status messages as `source` (`SITE/agent/NAME`),
    /// if it holds a key.
    pub fn status_signer(
        &self,
        source: String,
    ) -> std::result::Result<Option<crate::status_signing::StatusSigner>, String> {
        let Some(hex_key) = &self.status_key else {
            return Ok(None);
        };
        let mut secret = [0u8; 32];
        hex::decode_to_slice(hex_key.trim(), &mut secret)
            .map_err(|_| "the configuration holds a malformed status key".to_owned())?;
        Ok(Some(crate::status_signing::StatusSigner::new(
            source,
            cascade_content::SigningKey::from_bytes(&secret),
        )))
    }

    /// A client of the site that presents this credential.
    pub fn client(&self) -> Result<Client> {
        Client::new(&self.site_url, Some(&self.credential))
    }
}

/// The central key a join token pins: join tokens end in `.KEY` (the 64 hex
/// digits of the central site's public key), so that enrolling checks the
/// site's answer against the key the administrator handed out with the
/// token, and never takes it on trust. None for a token without one (made
/// before issue 12).
pub fn pinned_key(join_token: &str) -> Option<&str> {
    let (_, key) = join_token.trim().rsplit_once('.')?;
    (key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit())).then_some(key)
}

/// A join token that pins `central_key` (see [`pinned_key`]).
pub fn pinning_token(secret: &str, central_key: &str) -> String {
    format!("{secret}.{central_key}")
}

/// Checks an enrollment answer's central key against the one the join
/// token pins; the error says what to do.
pub fn check_pinned_key(
    join_token: &str,
    answered: &str,
    url: &str,
) -> std::result::Result<(), String> {
    match pinned_key(join_token) {
        Some(pinned) if !pinned.eq_ignore_ascii_case(answered.trim()) => Err(format!(
            "{url} answered with central key {answered}, but the join token pins {pinned}: it is not the site the token came from, or its answer was altered on the way; not enrolling"
        )),
        _ => Ok(()),
    }
}

/// Reads a JSON configuration file written at `init`; the error says which
/// command creates it.
pub fn read_config<T: DeserializeOwned>(
    path: &Path,
    init_command: &str,
) -> std::result::Result<T, String> {
    let text = std::fs::read_to_string(path).map_err(|err| {
        format!(
            "reading {}: {err} (run `{init_command}` first)",
            path.display()
        )
    })?;
    serde_json::from_str(&text).map_err(|err| format!("{} is damaged: {err}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 12: `agent init` and `dp init` took the central key from an
    /// unprotected enrollment answer (trust on first use). A join token
    /// now pins it, and an answer with another key is refused.
    #[test]
    fn a_join_token_pins_the_central_key() {
        let key = "ab".repeat(32);
        let token = pinning_token("cas_join_0123", &key);
        assert_eq!(pinned_key(&token), Some(key.as_str()));
        assert!(check_pinned_key(&token, &key, "http://site").is_ok());
        assert!(check_pinned_key(&token, &key.to_uppercase(), "http://site").is_ok());
        let err = check_pinned_key(&token, &"cd".repeat(32), "http://site").unwrap_err();
        assert!(err.contains("not enrolling") && err.contains(&key), "{err}");
        // A token from before issue 12 pins nothing; nor does junk after a dot.
        assert_eq!(pinned_key("cas_join_0123"), None);
        assert_eq!(pinned_key("cas_join_0123.nothex"), None);
        assert!(check_pinned_key("cas_join_0123", &key, "http://site").is_ok());
    }
}
