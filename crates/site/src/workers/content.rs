//! The content worker: a child site brings in the content it needs.

pub use crate::service::receive::content_worker;
