//! SqliteStore as lanyard uses it: objects survive a reopen, lookups and conflicts
//! behave like the reference MemStore, failed transactions leave nothing behind,
//! the file is private and versioned, and 50 processes can hammer it at once.
//!
//! One test binary; tests that need another process re-run it with `--exact NAME`
//! and an environment variable that selects the child's part.

mod common;
mod damaged;
mod file;
mod fixtures;
mod objects;
mod processes;
mod transactions;
