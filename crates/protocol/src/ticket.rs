//! Content tickets: the credential an agent (or an administrator) presents
//! to its site's DPs and to the site's own chunk route.
//!
//! A DP cannot check an agent's credential (only the site holds those), so
//! the site hands out tickets it can check offline: a holder's name and an
//! expiry, with a BLAKE3 keyed hash over both under the site's content key.
//! The site gives the key to the DPs it admitted (with their assignments)
//! and a fresh ticket to each agent with every policy answer.

use std::fmt;

/// Every ticket begins with this.
const PREFIX: &str = "cct1";

/// What the keyed hash covers before the holder and expiry.
const CONTEXT: &str = "cascade content ticket v1";

/// How long a ticket handed out with a policy holds: longer than an agent
/// may go without a policy answer while it still downloads.
pub const TICKET_VALIDITY_MS: i64 = 24 * 60 * 60 * 1000;

/// A site's key for content tickets.
#[derive(Clone, PartialEq, Eq)]
pub struct ContentKey([u8; 32]);

impl fmt::Debug for ContentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ContentKey(…)")
    }
}

/// Why a ticket is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TicketError {
    /// None was presented.
    #[error("a content ticket is required (agents get one with their policy; `cascade dp ticket` prints one)")]
    Missing,
    /// Not a ticket, or not this site's.
    #[error("the content ticket is not valid here")]
    Invalid,
    /// Past its expiry.
    #[error("the content ticket expired")]
    Expired,
}

impl ContentKey {
    /// A fresh random key.
    pub fn generate() -> ContentKey {
        ContentKey(rand::random())
    }

    /// The key from its 64 hex digits.
    pub fn from_hex(text: &str) -> Option<ContentKey> {
        let mut key = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut key).ok()?;
        Some(ContentKey(key))
    }

    /// The key as 64 hex digits (to hand to a DP).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    fn mac(&self, holder: &str, expires_at_ms: i64) -> blake3::Hash {
        blake3::keyed_hash(
            &self.0,
            format!("{CONTEXT}\n{holder}\n{expires_at_ms}").as_bytes(),
        )
    }

    /// A ticket for `holder` (a name without dots) until `expires_at_ms`.
    pub fn issue(&self, holder: &str, expires_at_ms: i64) -> String {
        let holder = holder.replace('.', "_");
        let mac = self.mac(&holder, expires_at_ms);
        format!("{PREFIX}.{holder}.{expires_at_ms}.{}", mac.to_hex())
    }

    /// Checks a ticket at `now_ms`; returns its holder.
    pub fn check<'t>(&self, ticket: &'t str, now_ms: i64) -> Result<&'t str, TicketError> {
        let mut parts = ticket.trim().split('.');
        let (Some(PREFIX), Some(holder), Some(expires), Some(mac), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(TicketError::Invalid);
        };
        let expires: i64 = expires.parse().map_err(|_| TicketError::Invalid)?;
        let mac = blake3::Hash::from_hex(mac).map_err(|_| TicketError::Invalid)?;
        // blake3::Hash compares in constant time.
        if self.mac(holder, expires) != mac {
            return Err(TicketError::Invalid);
        }
        if expires <= now_ms {
            return Err(TicketError::Expired);
        }
        Ok(holder)
    }
}

/// The ticket of an `Authorization: Bearer` header value, if any.
pub fn bearer(header: Option<&str>) -> Option<&str> {
    header?.strip_prefix("Bearer ").map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_holds_for_its_holder_until_it_expires_and_only_under_its_key() {
        let key = ContentKey::generate();
        let ticket = key.issue("ws1", 10_000);
        assert_eq!(key.check(&ticket, 9_999), Ok("ws1"));
        assert_eq!(key.check(&ticket, 10_000), Err(TicketError::Expired));
        assert_eq!(
            ContentKey::generate().check(&ticket, 0),
            Err(TicketError::Invalid)
        );
        // Altered holder or expiry: the hash no longer matches.
        let longer = ticket.replace(".10000.", ".99999999.");
        assert_eq!(key.check(&longer, 0), Err(TicketError::Invalid));
        let other = ticket.replace(".ws1.", ".ws2.");
        assert_eq!(key.check(&other, 0), Err(TicketError::Invalid));
        for junk in ["", "cct1", "cct1.a.b.c", "cct1.ws1.5.00.extra", "Bearer x"] {
            assert_eq!(key.check(junk, 0), Err(TicketError::Invalid), "{junk}");
        }
        let hex = key.to_hex();
        assert_eq!(ContentKey::from_hex(&hex), Some(key));
    }
}
