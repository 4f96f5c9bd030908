//! What a DP or an agent keeps after enrolling with its site: who it is, how
//! to reach the site, and which key every manifest must be signed with.

use crate::tls::Fingerprint;
use crate::{Client, Error, Result, SiteInfo};
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
    /// Fingerprint of the site's TLS certificate, pinned at enrollment
    /// from the join token ([`crate::tls`]); none: the site's certificate
    /// is verified against the web's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site_certificate: Option<String>,
}

impl Enrollment {
    /// The identity granted by an enrollment answer.
    /// `client` is the one that enrolled (its pin is kept).
    pub fn granted(
        name: &str,
        client: &Client,
        credential: String,
        site: SiteInfo,
        status_key: Option<&cascade_content::SigningKey>,
    ) -> Enrollment {
        Enrollment {
            name: name.to_owned(),
            site_url: client.base().to_owned(),
            site_code: site.code,
            credential,
            site_public_key: site.public_key,
            status_key: status_key.map(|key| hex::encode(key.to_bytes())),
            site_certificate: client.pin().map(|pin| pin.to_string()),
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

    /// A client of the site that presents this credential, pinning the
    /// site's certificate.
    pub fn client(&self) -> Result<Client> {
        let pin = match &self.site_certificate {
            Some(hex) => Some(Fingerprint::parse(hex).ok_or_else(|| Error::BadUrl {
                url: self.site_url.clone(),
                problem: format!(
                    "is pinned to a malformed certificate fingerprint {hex:?} in the configuration"
                ),
            })?),
            None => None,
        };
        Client::new(&self.site_url, Some(&self.credential), pin)
    }
}

/// What a token a site minted pins. Every token ends in
/// `.CENTRALKEY.CERTIFICATE`: the 64 hex digits of the central site's
/// public key and of the SHA-256 fingerprint of the minting site's TLS
/// certificate, so that whoever holds a token checks the site's answer
/// against the key and the certificate the administrator handed out with
/// it, and never takes either on trust (as kubeadm's discovery hash).
/// The whole token is the credential.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenPins<'a> {
    /// Hex of the central key (absent in tokens made before issue 12).
    pub central_key: Option<&'a str>,
    /// The site's certificate (absent in tokens made before TLS).
    pub certificate: Option<Fingerprint>,
}

impl<'a> TokenPins<'a> {
    /// The pins `token` ends with.
    pub fn of(token: &'a str) -> TokenPins<'a> {
        let is_hex = |part: &str| part.len() == 64 && part.bytes().all(|b| b.is_ascii_hexdigit());
        let mut parts = token.trim().split('.').skip(1);
        let central_key = parts.next().filter(|part| is_hex(part));
        let certificate = central_key
            .and(parts.next())
            .filter(|part| is_hex(part))
            .and_then(Fingerprint::parse);
        TokenPins {
            central_key,
            certificate,
        }
    }
}

/// A client of the site at `url` (with no credential: add one with
/// [`Client::with_token`]) pinning the certificate `token` names; refuses
/// a token that pins none, naming the fix.
pub fn client_for_token(url: &str, token: &str) -> Result<Client> {
    let token = token.trim();
    crate::client::check_base(url)?;
    let Some(pin) = TokenPins::of(token).certificate else {
        return Err(Error::BadUrl {
            url: url.to_owned(),
            problem: "cannot be trusted with this token: it pins no TLS certificate (it was made before Cascade spoke TLS); use the token the site wrote to its directory when it last started".into(),
        });
    };
    Client::new(url, None, Some(pin))
}

/// A client of the site at `url` presenting `token` (an administrator's)
/// and pinning the certificate it names ([`client_for_token`]).
pub fn client_presenting(url: &str, token: &str) -> Result<Client> {
    Ok(client_for_token(url, token)?.with_token(token.trim()))
}

/// The central key a token pins ([`TokenPins`]). None for a token without
/// one (made before issue 12).
pub fn pinned_key(join_token: &str) -> Option<&str> {
    TokenPins::of(join_token).central_key
}

/// A token that pins `central_key` and `certificate` ([`TokenPins`]).
pub fn pinning_token(secret: &str, central_key: &str, certificate: &Fingerprint) -> String {
    format!("{secret}.{central_key}.{certificate}")
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
        let certificate = Fingerprint::of(b"certificate");
        let token = pinning_token("cas_join_0123", &key, &certificate);
        assert_eq!(pinned_key(&token), Some(key.as_str()));
        assert_eq!(TokenPins::of(&token).certificate, Some(certificate));
        assert!(check_pinned_key(&token, &key, "http://site").is_ok());
        assert!(check_pinned_key(&token, &key.to_uppercase(), "http://site").is_ok());
        let err = check_pinned_key(&token, &"cd".repeat(32), "http://site").unwrap_err();
        assert!(err.contains("not enrolling") && err.contains(&key), "{err}");
        // A token from before issue 12 pins nothing; nor does junk after a dot.
        assert_eq!(pinned_key("cas_join_0123"), None);
        assert_eq!(pinned_key("cas_join_0123.nothex"), None);
        assert!(check_pinned_key("cas_join_0123", &key, "http://site").is_ok());
        // A token from before TLS pins a key and no certificate, and no
        // client is made from it.
        let old = format!("cas_join_0123.{key}");
        assert_eq!(TokenPins::of(&old).certificate, None);
        let err = client_for_token("https://site", &old).err().unwrap();
        assert!(err.to_string().contains("pins no TLS certificate"), "{err}");
    }
}
