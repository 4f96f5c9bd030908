//! The site database: its schema and every query, by table family. No SQL
//! text lives anywhere else in the site server.
//!
//! Multi-statement writes go through [`Db::write`], which serializes writers.
//! Queries take any executor (the pool, or the open write transaction as
//! `&mut *tx.tx`), so that a service decides what runs in one transaction.

mod agents;
mod credentials;
mod cursors;
mod distributions;
mod dps;
mod groups;
mod jobs;
mod local_ingest;
mod packages;
mod queues;
mod schema;
mod sites;
mod status;
mod wants;

pub use agents::*;
pub use credentials::*;
pub use cursors::*;
pub use distributions::*;
pub use dps::*;
pub use groups::*;
pub use jobs::*;
pub use local_ingest::*;
pub use packages::*;
pub use queues::*;
pub use schema::MIGRATIONS;
pub use sites::*;
pub use status::*;
pub use wants::*;

pub use cascade_store::{Db, WriteTx};
/// The connection pool queries run on outside a write transaction.
pub use sqlx::SqlitePool as Pool;
