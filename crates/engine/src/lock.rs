//! The one lock lanyard's processes share: `RUN_DIR/lock`, an advisory `flock`.
//!
//! Sections that read the store and the kernel and then change the kernel from what
//! they read must not interleave with another process's change of the same things:
//! - **exclusive**: network create, remove and prune, `gc`'s sweep, firewall rebuilds,
//!   `restore`;
//! - **shared**: attach and detach, from before their store record until their kernel
//!   work is done, and a DHCP lease moving an endpoint to another address
//!   ([`crate::Engine::maintain_leases`]). Attaches and detaches never wait for each
//!   other (200 CNI ADDs at once take the shared lock together); they wait only while
//!   an exclusive section runs, and an exclusive section waits for the attaches in
//!   flight.
//!
//! The store's own transactions stay what they were (SQLite `BEGIN IMMEDIATE`); this
//! lock covers what a transaction cannot: the kernel work after it.
//!
//! Within one engine the lock is reentrant: `gc` (exclusive) forgets endpoints with
//! the detach code (shared), `restore` rebuilds the firewall. A shared section that
//! asks for exclusive converts the lock (flock(2) may drop the shared hold before it
//! waits, so another exclusive section can run in between; the rebuild that asks
//! reads the store afresh after it) and keeps it
//! exclusive until its outermost guard drops. Without a run dir ([`Locks::none`], the
//! unit tests on an in-memory store) every guard is free.
//!
//! The kernel drops a dead process's flock, so a crash never leaves the lock held.

use lanyard_core::{Error, Result};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

/// Name of the lock file in the run dir.
pub const LOCK_FILE: &str = "lock";

/// How a section holds the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mode {
    /// Attach, detach: many at once.
    Shared,
    /// Sections that read state and then change the kernel from it.
    Exclusive,
}

#[derive(Debug, Default)]
struct State {
    file: Option<File>,
    held: Option<Mode>,
    depth: usize,
}

/// The engine's handle on the lock (cheap to clone; clones share one state).
#[derive(Debug, Clone, Default)]
pub struct Locks {
    path: Option<PathBuf>,
    state: Arc<Mutex<State>>,
}

/// Holds the lock until dropped.
#[must_use = "the lock is released when the guard drops"]
#[derive(Debug)]
pub struct Guard {
    state: Option<Arc<Mutex<State>>>,
}

impl Locks {
    /// No lock at all (one process, e.g. unit tests on an in-memory store).
    pub fn none() -> Self {
        Locks::default()
    }

    /// The lock file `dir/lock`; the directory is made (0700) on first use.
    pub fn in_dir(dir: &Path) -> Self {
        Locks {
            path: Some(dir.join(LOCK_FILE)),
            state: Arc::default(),
        }
    }

    /// Takes the lock in `mode` (blocking), or deepens a hold this engine has.
    pub fn take(&self, mode: Mode) -> Result<Guard> {
        let Some(path) = &self.path else {
            return Ok(Guard { state: None });
        };
        let mut st = lock_state(&self.state);
        if st.held.is_none_or(|h| h < mode) {
            if st.file.is_none() {
                st.file = Some(open(path)?);
            }
            let file = st.file.as_ref().unwrap_or_else(|| unreachable!("opened"));
            let taken = match mode {
                Mode::Shared => file.lock_shared(),
                Mode::Exclusive => file.lock(),
            };
            taken.map_err(|e| Error::Other(format!("lock {}: {e}", path.display())))?;
            st.held = Some(mode);
        }
        st.depth += 1;
        drop(st);
        Ok(Guard {
            state: Some(self.state.clone()),
        })
    }

    /// Closes the lock file when nothing holds the lock, so the next [`Locks::take`]
    /// opens it by its path again: for an engine kept across calls (the daemon's),
    /// which must lock the run directory's file as it is then, not one deleted since.
    pub fn close(&self) {
        let mut st = lock_state(&self.state);
        if st.held.is_none() {
            st.file = None;
        }
    }

    /// The run dir holding the lock file, if any.
    pub fn dir(&self) -> Option<&Path> {
        self.path.as_deref().and_then(Path::parent)
    }

    /// Whether this engine holds the lock now, and how (tests).
    pub fn held(&self) -> Option<Mode> {
        lock_state(&self.state).held
    }
}

fn lock_state(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn open(path: &Path) -> Result<File> {
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| Error::Other(format!("run dir {}: {e}", dir.display())))?;
        }
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::Other(format!("lock {}: {e}", path.display())))
}

impl Drop for Guard {
    fn drop(&mut self) {
        let Some(state) = self.state.take() else {
            return;
        };
        let mut st = lock_state(&state);
        st.depth = st.depth.saturating_sub(1);
        if st.depth == 0 {
            if let Some(f) = &st.file {
                let _ = f.unlock();
            }
            st.held = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn shared_holders_coexist_and_exclusive_waits_for_them() {
        let dir = tempfile::tempdir().unwrap();
        let a = Locks::in_dir(dir.path());
        let b = Locks::in_dir(dir.path());
        let ga = a.take(Mode::Shared).unwrap();
        let gb = b.take(Mode::Shared).unwrap();
        let c = Locks::in_dir(dir.path());
        let (tx, rx) = mpsc::channel();
        let t = std::thread::spawn(move || {
            let _g = c.take(Mode::Exclusive).unwrap();
            tx.send(()).unwrap();
        });
        assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
        drop(ga);
        assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
        drop(gb);
        rx.recv_timeout(Duration::from_secs(10))
            .expect("exclusive once no one shares");
        t.join().unwrap();
    }

    #[test]
    fn nested_holds_are_reentrant_and_keep_the_strongest_mode() {
        let dir = tempfile::tempdir().unwrap();
        let a = Locks::in_dir(dir.path());
        let outer = a.take(Mode::Exclusive).unwrap();
        let inner = a.clone().take(Mode::Shared).unwrap();
        assert_eq!(a.held(), Some(Mode::Exclusive));
        drop(inner);
        assert_eq!(a.held(), Some(Mode::Exclusive));
        drop(outer);
        assert_eq!(a.held(), None);
        // Now another engine may take it exclusively at once.
        let b = Locks::in_dir(dir.path());
        let _g = b.take(Mode::Exclusive).unwrap();
    }

    #[test]
    fn after_close_the_lock_is_taken_on_the_file_the_path_names_now() {
        let dir = tempfile::tempdir().unwrap();
        let locks = Locks::in_dir(dir.path());
        drop(locks.take(Mode::Shared).unwrap());
        let path = dir.path().join(LOCK_FILE);
        std::fs::remove_file(&path).unwrap();
        locks.close();
        let _held = locks.take(Mode::Exclusive).unwrap();
        // Another process's view: the file at the path is the one held.
        let other = std::fs::File::open(&path).expect("the lock file is there again");
        assert!(
            other.try_lock_shared().is_err(),
            "held on the old inode only"
        );
    }

    #[test]
    fn no_run_dir_means_no_lock() {
        let g = Locks::none().take(Mode::Exclusive).unwrap();
        drop(g);
    }
}
