//! Cascade's model: validated names, package versions, status events and the
//! state machines that turn status events into what an administrator sees.
//!
//! **Architecture Invariant:** this crate does no IO and knows nothing of
//! serialization. Everything here is a pure function of its inputs, which is
//! what lets the status views be tested exhaustively and derived anywhere.

pub mod backoff;
mod error;
pub mod hierarchy;
pub mod job;
mod names;
pub mod rule;
pub mod run;
pub mod status;
mod version;
pub mod window;

pub use error::{Error, Result};
pub use names::{validate_name, DpName, PackageName, SiteCode};
pub use version::Version;

/// Milliseconds since the Unix epoch. The domain never reads a clock: callers
/// pass the time in.
pub type TimestampMs = i64;
