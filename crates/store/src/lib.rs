//! lanyard's durable store on one host: [`SqliteStore`], the SQLite implementation of
//! [`lanyard_core::store::Store`].
//!
//! All state lives in one file, `STATE_DIR/state.db` (mode 0600 in a 0700 directory),
//! in WAL mode with `synchronous=NORMAL`. Every write is one `BEGIN IMMEDIATE`
//! transaction, so writers in any number of processes (parallel CNI calls, the CLI,
//! the Docker plugin) are serialised by SQLite's file locks. A busy database is first
//! waited for (SQLite's busy timeout) and then retried with jittered backoff, so
//! contention alone never fails a call.
//!
//! Modules: `store` opens the file and runs transactions, `txn` begins, commits
//! and retries them, `tx` maps each [`lanyard_core::store::Tx`] method to SQL, and
//! `schema` holds the tables and their migrations.

mod schema;
mod store;
mod tx;
mod txn;

pub use schema::{file_version, SCHEMA_VERSION};
pub use store::{SqliteStore, DB_FILE};
