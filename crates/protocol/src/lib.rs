//! The wire: every type that crosses a process boundary between the CLI, a
//! site server, a DP, an agent and child sites, the chunk frame
//! codec, and the HTTP client that speaks it.
//!
//! **Architecture Invariant:** JSON shapes are defined here and nowhere else.
//! The site server and the DP serialize only these types.

pub mod client;
mod enrollment;
mod error;
pub mod forward;
pub mod frames;
pub mod intent;
pub mod logging;
pub mod serve;
pub mod signal;
mod signed;
pub mod sites;
pub mod states;
pub mod status_signing;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod ticket;
pub mod tls;
pub mod types;
pub mod worker;

pub use client::Client;
pub use enrollment::{
    check_pinned_key, client_for_token, client_presenting, pinned_key, pinning_token, read_config,
    Enrollment, TokenPins,
};
pub use error::{chain, Error, Result};
pub use intent::{
    CancelIntent, Freshness, Intent, IntentError, JobIntent, JobTarget, SignedIntent, Timestamp,
};
pub use sites::*;
pub use states::*;
pub use types::*;

/// Prefix of every API route of a site server.
pub const API: &str = "/api/v1";

/// Largest JSON body a site accepts on control routes.
pub const MAX_CONTROL_BODY: usize = 1024 * 1024;

/// Largest manifest upload a site accepts (about 40 GiB of package content).
pub const MAX_MANIFEST_BODY: usize = 64 * 1024 * 1024;

/// Largest chunk-frame body accepted in one upload request.
pub const MAX_UPLOAD_BODY: usize = 64 * 1024 * 1024;

/// The largest status sequence number: numbers are whole numbers from 1 to
/// 2^63 - 1, the range of the receivers' database columns.
pub const MAX_SEQ: u64 = i64::MAX as u64;

/// Why `seq` is not a valid status sequence number, if it is not.
pub fn seq_out_of_range(seq: u64) -> Option<String> {
    (seq == 0 || seq > MAX_SEQ).then(|| {
        format!("status sequence number {seq} is out of range: sequence numbers run from 1 to {MAX_SEQ} (2^63 - 1)")
    })
}

/// Most chunk hashes asked for in one request.
pub const MAX_HASHES_PER_REQUEST: usize = 4096;

/// Splits chunks to fetch into requests of about `max_bytes` each, and at
/// most [`MAX_HASHES_PER_REQUEST`] hashes.
pub fn fetch_batches(
    chunks: &[cascade_content::ChunkRef],
    max_bytes: u64,
) -> Vec<Vec<cascade_content::ChunkHash>> {
    let mut batches = Vec::new();
    let mut current = Vec::new();
    let mut current_bytes = 0u64;
    for chunk in chunks {
        current.push(chunk.hash);
        current_bytes += chunk.size as u64;
        if current_bytes >= max_bytes || current.len() >= MAX_HASHES_PER_REQUEST {
            batches.push(std::mem::take(&mut current));
            current_bytes = 0;
        }
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

/// The header that carries a credential: `Authorization: Bearer <token>`.
pub const AUTHORIZATION: &str = "authorization";

/// The URL clients use to reach a bound address; an unspecified address
/// (`0.0.0.0`, `[::]`) is reached on loopback.
pub fn url_for(addr: std::net::SocketAddr) -> String {
    let ip = addr.ip();
    let host = match (ip.is_unspecified(), ip) {
        (true, std::net::IpAddr::V4(_)) => "127.0.0.1".to_owned(),
        (true, std::net::IpAddr::V6(_)) => "[::1]".to_owned(),
        (false, std::net::IpAddr::V6(v6)) => format!("[{v6}]"),
        (false, std::net::IpAddr::V4(v4)) => v4.to_string(),
    };
    format!("https://{host}:{}", addr.port())
}
