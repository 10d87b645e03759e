//! Tombstones handed over by detaches ([`handoff`]): a task on the event loop
//! receives them on `daemon.sock` and a reaper thread deletes them, each in its own
//! namespace (the thread moves between namespaces and does nothing else, so no other
//! work ever runs in a container's namespace by mistake).
//!
//! A second daemon on the same socket is refused; a socket left by a killed daemon
//! is taken over. Without the daemon (or with its socket failed) detaches fork their
//! own workers.

use crate::cli::Cli;
use lanyard_core::{Error, Result};
use lanyard_kernel::handoff;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::mpsc;
use tokio::io::unix::AsyncFd;

/// The bound socket, until the loop takes it ([`HandOff::serve`]).
pub struct HandOff {
    path: PathBuf,
    rx: Option<handoff::Receiver>,
}

impl HandOff {
    /// Binds `daemon.sock` in the run directory (made 0700 if missing). Another live
    /// daemon on the socket is an error.
    pub fn bind(cli: &Cli) -> Result<HandOff> {
        let dir = &cli.run_dir;
        let path = dir.join(handoff::SOCKET);
        let fail = |what: &str, e: std::io::Error| {
            Error::Other(format!("daemon: {what} {}: {e}", path.display()))
        };
        if !dir.is_dir() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| fail("creating the directory of", e))?;
        }
        let rx = handoff::Receiver::bind(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AddrInUse {
                Error::Conflict(format!(
                    "another lanyard daemon is running (it answers on {}); stop it first",
                    path.display()
                ))
            } else {
                fail("binding", e)
            }
        })?;
        rx.set_nonblocking().map_err(|e| fail("configuring", e))?;
        Ok(HandOff { path, rx: Some(rx) })
    }

    /// Starts the reaper thread and returns the task that feeds it (to spawn on the
    /// loop). If the socket fails the task ends; senders then get `ECONNREFUSED` and
    /// fork their own workers.
    pub fn serve(&mut self) -> Result<impl std::future::Future<Output = ()> + Send> {
        let rx = self
            .rx
            .take()
            .ok_or_else(|| Error::Other("daemon: hand-off socket served twice".into()))?;
        let (tx, items) = mpsc::channel::<(OwnedFd, String)>();
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || reap(items))
            .map_err(|e| Error::Other(format!("daemon: starting the reaper thread: {e}")))?;
        // SAFETY: the receiver owns its socket and never replaces or closes it while
        // the AsyncFd holds it.
        let fd = unsafe { AsyncFd::register(rx) }
            .map_err(|e| Error::Other(format!("daemon: polling the hand-off socket: {e}")))?;
        Ok(receive(fd, tx))
    }

    /// Removes the socket file, so that CLI calls fork their own reapers again
    /// without trying it first.
    pub fn stop(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Receives hand-offs and passes each tombstone to the reaper thread.
async fn receive(fd: AsyncFd<handoff::Receiver>, tx: mpsc::Sender<(OwnedFd, String)>) {
    loop {
        let mut guard = match fd.readable().await {
            Ok(g) => g,
            Err(e) => return failed(&e),
        };
        match guard.try_io(|r| r.get_ref().recv()) {
            Err(_would_block) => continue,
            Ok(Ok(items)) => {
                for item in items {
                    if tx.send(item).is_err() {
                        return;
                    }
                }
            }
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
                tracing::warn!("daemon: ignored a tombstone hand-off: {e}")
            }
            Ok(Err(e)) => return failed(&e),
        }
    }
}

fn failed(e: &std::io::Error) {
    tracing::warn!(
        "daemon: tombstone hand-off socket failed ({e}); detaches fork their own reapers"
    );
}

/// The reaper thread: deletes each tombstone in its namespace.
fn reap(items: mpsc::Receiver<(OwnedFd, String)>) {
    for (netns, name) in items {
        match handoff::delete_in(netns.as_fd(), &name) {
            Ok(()) => tracing::debug!("daemon: deleted tombstone {name}"),
            // Deleted already (by gc), or its namespace went with it.
            Err(e) => tracing::debug!("daemon: tombstone {name}: {e}"),
        }
    }
}
