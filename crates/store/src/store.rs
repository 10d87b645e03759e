//! [`SqliteStore`]: opening `state.db` (private file permissions, connection
//! settings, schema check) and running [`Store`] transactions on it.

use crate::tx::SqliteTx;
use crate::txn::{self, store_error, Kind, BUSY_TIMEOUT};
use lanyard_core::store::{Store, Tx};
use lanyard_core::Result;
use rusqlite::{Connection, OpenFlags};
use std::fs::{self, DirBuilder, OpenOptions, Permissions};
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The database's file name inside the state directory.
pub const DB_FILE: &str = "state.db";

/// Per-connection settings, applied on every open. (`journal_mode = WAL` is stored
/// in the file itself and set once, by the first migration. No `foreign_keys`: the
/// schema has none, and every statement counts on a short CLI call.)
const PRAGMAS: &str = "PRAGMA synchronous = NORMAL;
                       PRAGMA journal_size_limit = 8388608;";

/// lanyard's state in one SQLite file, shared safely by every lanyard process on
/// the host.
///
/// One value is one connection. It is `Send` but not `Sync`: a thread that needs
/// the store opens its own (opening an existing database takes about 0.1 ms;
/// `examples/bench_ipam.rs` measures it). Transactions do not nest: calling [`Store::read`] or
/// [`Store::write`] from inside another on the same value is an error.
#[derive(Debug)]
pub struct SqliteStore {
    conn: Connection,
    path: PathBuf,
}

impl SqliteStore {
    /// Opens `state_dir/state.db`, creating the directory (mode 0700) and the file
    /// (mode 0600; SQLite gives its `-wal` and `-shm` files the same mode) when they
    /// are missing, and bringing an older schema up to date. Fails with
    /// [`lanyard_core::Error::Store`] on a file written by a newer lanyard.
    pub fn open(state_dir: &Path) -> Result<Self> {
        let path = state_dir.join(DB_FILE);
        match fs::metadata(&path) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => create_private(state_dir, &path)?,
            Err(e) => return Err(store_error(&path, "opening", e)),
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&path, flags)
            .map_err(|e| store_error(&path, "opening", e))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .and_then(|()| conn.execute_batch(PRAGMAS))
            .map_err(|e| store_error(&path, "configuring the connection", e))?;
        conn.set_prepared_statement_cache_capacity(32);
        // No checkpoint when the last connection closes: that is 4 fsyncs and a WAL
        // unlink at the end of every CLI call (~2 ms on ext4, half an attach+detach
        // cycle). The WAL stays and is checkpointed every 100 pages instead. With
        // synchronous=NORMAL commits were never fsynced anyway: a power loss may drop
        // the last records but never corrupts the db — and it also drops every
        // namespace they describe; `restore`/`gc` reconcile the rest.
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
            true,
        )
        .and_then(|_| conn.execute_batch("PRAGMA wal_autocheckpoint = 100;"))
        .map_err(|e| store_error(&path, "configuring the connection", e))?;
        crate::schema::migrate(&conn, &path)?;
        Ok(SqliteStore { conn, path })
    }

    /// The database file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Creates `dir` (0700) if missing and an empty `path` (0600), whatever the umask.
/// Losing a creation race to another process is fine.
fn create_private(dir: &Path, path: &Path) -> Result<()> {
    if !dir.is_dir() {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .and_then(|()| fs::set_permissions(dir, Permissions::from_mode(0o700)))
            .map_err(|e| store_error(dir, "creating the state directory", e))?;
    }
    let created = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path);
    match created {
        // The umask may have taken bits away; put back exactly 0600.
        Ok(f) => f.set_permissions(Permissions::from_mode(0o600)),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
    .map_err(|e| store_error(path, "creating the database file", e))
}

impl Store for SqliteStore {
    fn read<T>(&self, f: &mut dyn FnMut(&dyn Tx) -> Result<T>) -> Result<T> {
        txn::run(&self.conn, &self.path, Kind::Read, |busy| {
            f(&SqliteTx::new(&self.conn, &self.path, busy))
        })
    }

    fn write<T>(&self, f: &mut dyn FnMut(&mut dyn Tx) -> Result<T>) -> Result<T> {
        txn::run(&self.conn, &self.path, Kind::Write, |busy| {
            f(&mut SqliteTx::new(&self.conn, &self.path, busy))
        })
    }
}
