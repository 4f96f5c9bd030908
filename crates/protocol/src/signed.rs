//! The form a signed intent is stored in and travels in, beneath both the
//! wire types that carry it (`types.rs`) and the signing and checking of
//! what it says (`intent.rs`, which holds its methods).

use serde::{Deserialize, Serialize};

/// An intent as it is stored and travels: its JSON text exactly as signed,
/// and the hex ed25519 signature over [`crate::intent::INTENT_CONTEXT`] and
/// that text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedIntent {
    /// The intent's JSON, byte for byte as signed.
    pub intent: String,
    /// Hex of the 64-byte signature.
    pub signature: String,
}
