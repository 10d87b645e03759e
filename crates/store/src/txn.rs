//! Transactions on one connection that wait out other processes: `BEGIN`, `COMMIT`
//! and `ROLLBACK`, retried with jittered backoff while SQLite reports the database
//! busy or locked, and a guard that rolls back whatever is left open (on `Err` or a
//! panic in the caller's closure).
//!
//! Waiting happens at two levels. SQLite's busy handler (`busy_timeout`) sleeps and
//! retries inside one call for up to [`BUSY_TIMEOUT`]; some `SQLITE_BUSY` results
//! bypass it (WAL recovery, lock upgrades), and 50 processes queueing behind one
//! another can outlast it, so [`run`] retries the failed step after a short random
//! sleep, until [`RETRY_FOR`] has passed since the first attempt.

use lanyard_core::{Error, Result};
use rusqlite::{Connection, ErrorCode};
use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::path::Path;
use std::time::{Duration, Instant};

/// How long SQLite's own busy handler waits inside one call.
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long [`run`] keeps retrying a busy database before giving up.
pub(crate) const RETRY_FOR: Duration = Duration::from_secs(30);

/// Longest single backoff sleep.
const MAX_SLEEP: Duration = Duration::from_millis(50);

/// What kind of transaction to begin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `BEGIN` (deferred): a snapshot taken at the first read, no write lock.
    Read,
    /// `BEGIN IMMEDIATE`: takes the write lock up front, so the transaction can never
    /// fail half-way for lack of it.
    Write,
}

impl Kind {
    fn begin_sql(self) -> &'static str {
        match self {
            Kind::Read => "BEGIN DEFERRED",
            Kind::Write => "BEGIN IMMEDIATE",
        }
    }
}

/// Whether `e` means "another connection holds the lock; try again".
pub(crate) fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

/// `Error::Store` naming the database file and what was being done.
pub(crate) fn store_error(path: &Path, what: &str, e: impl std::fmt::Display) -> Error {
    Error::Store(format!("{}: {what}: {e}", path.display()))
}

/// Growing, jittered sleeps between retries, bounded by [`RETRY_FOR`] in total.
#[derive(Debug)]
pub(crate) struct Backoff {
    started: Instant,
    attempt: u32,
}

impl Backoff {
    /// A backoff whose deadline starts now.
    pub(crate) fn new() -> Self {
        Backoff {
            started: Instant::now(),
            attempt: 0,
        }
    }

    /// Sleeps before the next attempt and returns true, or returns false once the
    /// deadline has passed. The n-th sleep is uniform in [c/2, c] with
    /// c = min(2^n ms, 50 ms), so processes that collided spread out.
    pub(crate) fn wait(&mut self) -> bool {
        if self.started.elapsed() >= RETRY_FOR {
            return false;
        }
        let cap = Duration::from_millis(1 << self.attempt.min(6)).min(MAX_SLEEP);
        let half = cap.as_micros() as u64 / 2;
        let mut h = RandomState::new().build_hasher();
        h.write_u32(self.attempt);
        let sleep = Duration::from_micros(half + h.finish() % (half + 1));
        std::thread::sleep(sleep);
        self.attempt += 1;
        true
    }

    /// How long this backoff has been retrying, for error messages.
    fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

/// Runs `op` until it succeeds, fails with something other than busy/locked, or the
/// backoff's deadline passes.
pub(crate) fn retrying<T>(
    backoff: &mut Backoff,
    path: &Path,
    what: &str,
    mut op: impl FnMut() -> rusqlite::Result<T>,
) -> Result<T> {
    loop {
        match op() {
            Ok(v) => return Ok(v),
            Err(e) if is_busy(&e) && backoff.wait() => continue,
            // Transient by nature: a caller may run the whole verb again (the CNI
            // front end does, a runtime may), so it is a try-again, not a failure.
            Err(e) if is_busy(&e) => {
                return Err(Error::TryAgain(
                    store_error(
                        path,
                        what,
                        format!(
                            "{e}; still locked after {:.0?} of retries: another process \
                             holds a write transaction open (a stuck lanyard process?)",
                            backoff.elapsed()
                        ),
                    )
                    .to_string(),
                ))
            }
            Err(e) => return Err(store_error(path, what, e)),
        }
    }
}

/// Rolls back the transaction it guards unless it was committed.
struct Guard<'c> {
    conn: &'c Connection,
    armed: bool,
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        // SQLite may already have rolled back by itself (after some I/O errors).
        if self.armed && !self.conn.is_autocommit() {
            // Nothing better to do with a failed ROLLBACK: the next BEGIN reports it.
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }
}

/// Runs `body` in one transaction of `kind` on `conn`: commits if it returns `Ok`,
/// rolls back if it returns `Err` or panics. `BEGIN` and `COMMIT` are retried while
/// the database is busy; so is the whole transaction (running `body` again) when
/// `body` failed after a statement inside it reported busy, which `body` signals by
/// setting the flag it is given.
pub(crate) fn run<T>(
    conn: &Connection,
    path: &Path,
    kind: Kind,
    mut body: impl FnMut(&Cell<bool>) -> Result<T>,
) -> Result<T> {
    if !conn.is_autocommit() {
        return Err(store_error(
            path,
            "beginning a transaction",
            "another transaction is still open on this connection (Store::read or \
             Store::write called from inside another one?)",
        ));
    }
    let mut backoff = Backoff::new();
    loop {
        retrying(&mut backoff, path, "waiting for the database lock", || {
            conn.execute_batch(kind.begin_sql())
        })?;
        let mut guard = Guard { conn, armed: true };
        let busy = Cell::new(false);
        match body(&busy) {
            Ok(v) => {
                // On failure the guard rolls back (if SQLite has not already).
                retrying(&mut backoff, path, "committing", || {
                    conn.execute_batch("COMMIT")
                })?;
                guard.armed = false;
                return Ok(v);
            }
            Err(e) => {
                drop(guard);
                if busy.get() && backoff.wait() {
                    continue;
                }
                return Err(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_sleeps_stay_small() {
        let mut b = Backoff::new();
        let t = Instant::now();
        for _ in 0..5 {
            assert!(b.wait());
        }
        // 0.5..1 + 1..2 + 2..4 + 4..8 + 8..16 ms
        let spent = t.elapsed();
        assert!(spent >= Duration::from_micros(15_500), "{spent:?}");
        assert!(spent < Duration::from_millis(500), "{spent:?}");
    }

    #[test]
    fn nested_transaction_is_refused_with_a_reason() {
        let conn = Connection::open_in_memory().unwrap();
        let path = Path::new(":memory:");
        let e = run(&conn, path, Kind::Write, |_| {
            run(&conn, path, Kind::Read, |_| Ok(())).map(|_| ())
        })
        .unwrap_err();
        assert!(e.to_string().contains("called from inside another"), "{e}");
        assert!(
            conn.is_autocommit(),
            "the outer transaction was rolled back"
        );
    }

    #[test]
    fn begin_is_retried_after_the_busy_handler_gives_up() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("t.db");
        let holder = Connection::open(&path).unwrap();
        holder
            .execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (x)")
            .unwrap();
        let waiter = Connection::open(&path).unwrap();
        // SQLite's own wait is far shorter than the other process's transaction.
        waiter.busy_timeout(Duration::from_millis(5)).unwrap();
        holder
            .execute_batch("BEGIN IMMEDIATE; INSERT INTO t VALUES (1)")
            .unwrap();
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            holder.execute_batch("COMMIT").unwrap();
        });
        let t = Instant::now();
        let n: i64 = run(&waiter, &path, Kind::Write, |_| {
            waiter.execute_batch("INSERT INTO t VALUES (2)").unwrap();
            Ok(waiter
                .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
                .unwrap())
        })
        .unwrap();
        release.join().unwrap();
        assert_eq!(n, 2);
        assert!(
            t.elapsed() >= Duration::from_millis(250),
            "{:?}",
            t.elapsed()
        );
    }

    #[test]
    fn body_is_run_again_only_after_a_busy_failure() {
        let conn = Connection::open_in_memory().unwrap();
        let path = Path::new(":memory:");
        let mut calls = 0;
        let v = run(&conn, path, Kind::Read, |busy| {
            calls += 1;
            if calls == 1 {
                busy.set(true);
                return Err(Error::Store("database is locked".into()));
            }
            Ok(calls)
        })
        .unwrap();
        assert_eq!(v, 2);
        let mut calls = 0;
        let e = run(&conn, path, Kind::Write, |_| -> Result<()> {
            calls += 1;
            Err(Error::Conflict("no".into()))
        })
        .unwrap_err();
        assert_eq!((calls, e.to_string()), (1, "no".to_string()));
    }

    #[test]
    fn panic_in_body_rolls_back() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (x)").unwrap();
        let path = Path::new(":memory:");
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run(&conn, path, Kind::Write, |_| -> Result<()> {
                conn.execute_batch("INSERT INTO t VALUES (1)").unwrap();
                panic!("boom")
            })
        }));
        assert!(r.is_err());
        assert!(conn.is_autocommit());
        let n: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0);
    }
}
