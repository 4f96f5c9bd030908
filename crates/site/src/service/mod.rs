//! The services: every decision of the site server, one module per
//! resource. They take the [`AppState`](crate::state::AppState) (or a write
//! transaction of its database) and plain arguments, never an HTTP type;
//! `http` calls them for requests and `workers` for background work.

pub mod agents;
pub mod apply;
pub mod auth;
pub mod collections;
pub mod content;
pub mod distribution;
pub mod dps;
pub mod groups;
pub mod hierarchy;
pub mod ingest;
pub mod jobs;
pub mod local_ingest;
pub mod messages;
pub mod packages;
pub mod queues;
pub mod receive;
pub mod relay;
pub mod repair;
pub mod retention;
pub mod send;
pub mod status;
pub mod timestamp;
