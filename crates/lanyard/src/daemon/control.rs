//! The control socket (`daemon.sock`, [`handoff`]): a task on the event loop accepts
//! connections and serves each one's messages. Tombstones handed over by detaches go
//! to a reaper thread, which deletes each in its own namespace (the thread moves
//! between namespaces and does nothing else, so no other work ever runs in a
//! container's namespace by mistake). Endpoint notices are logged and passed on to
//! every subscriber; `status` is answered on the spot.
//!
//! Delegated verbs of current clients do not come here: they connect to
//! `verbs.sock` ([`handoff::VERB_SOCKET`]), bound here too but served by the engine
//! thread itself ([`super::worker`]), so a verb wakes one daemon thread, not the loop
//! and then the engine thread. A `verb` on `daemon.sock` (a client from before
//! `verbs.sock`) is still served, through the loop as before.
//!
//! A second daemon on the same socket is refused; a socket left by a killed daemon
//! is taken over. Without the daemon (or with its socket failed) detaches fork their
//! own workers.

use super::worker::Worker;
use crate::cli::Cli;
use lanyard_core::{Error, Result};
use lanyard_kernel::handoff::{self, Message};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use tokio::io::unix::AsyncFd;
use tokio::sync::broadcast;

/// Endpoint notices a slow subscriber may fall behind by before it misses some.
const SUBSCRIBER_QUEUE: usize = 1024;

/// The bound socket, until the loop takes it ([`Control::serve`]), and the reaper
/// thread's queue.
pub struct Control {
    path: PathBuf,
    listener: Option<handoff::Listener>,
    /// `verbs.sock`'s listener, until the engine thread takes it.
    verbs: Option<handoff::Listener>,
    reaper: mpsc::Sender<(OwnedFd, String)>,
    counters: Arc<Counters>,
}

/// What `status` reports.
#[derive(Default)]
struct Counters {
    /// Shared with the engine thread's [`handoff::LocalReaper`].
    tombstones: Arc<AtomicU64>,
    notices: AtomicU64,
    /// Shared with the engine thread, which serves `verbs.sock`.
    verbs: Arc<AtomicU64>,
    /// Clients subscribed (the daemon's own listeners, such as DNS, not counted).
    subscribers: AtomicU64,
}

/// A connected socket the loop can poll.
struct Conn(OwnedFd);

impl AsRawFd for Conn {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// The channel endpoint notices go out on (to subscribers and the DNS responder).
pub fn events() -> broadcast::Sender<Message> {
    broadcast::channel(SUBSCRIBER_QUEUE).0
}

impl Control {
    /// Binds `daemon.sock` in the run directory (made 0700 if missing; refused if it
    /// is not root's alone). Another live daemon on the socket is an error.
    pub fn bind(cli: &Cli) -> Result<Control> {
        let dir = &cli.run_dir;
        let path = dir.join(handoff::SOCKET);
        let fail = |what: &str, e: std::io::Error| {
            Error::Other(format!("daemon: {what} {}: {e}", path.display()))
        };
        if !dir.is_dir() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| fail("creating the directory of", e))?;
        }
        for d in [dir, &cli.state_dir] {
            handoff::check_private_dir(d).map_err(|e| {
                Error::invalid(
                    "run or state directory",
                    d.display().to_string(),
                    e.to_string(),
                )
            })?;
        }
        let listener = handoff::Listener::bind(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AddrInUse {
                Error::Conflict(format!(
                    "another lanyard daemon is running (it answers on {}); stop it first",
                    path.display()
                ))
            } else {
                fail("binding", e)
            }
        })?;
        // Bound while `daemon.sock` is held: no other daemon binds it meanwhile.
        let verbs_path = dir.join(handoff::VERB_SOCKET);
        let verbs = handoff::Listener::bind(&verbs_path).map_err(|e| {
            let _ = std::fs::remove_file(&path);
            Error::Other(format!("daemon: binding {}: {e}", verbs_path.display()))
        })?;
        // Tombstones a killed daemon never received (the senders journaled them).
        match handoff::sweep_journal(dir) {
            Ok(done) => {
                for d in done {
                    println!("lanyard daemon: deleted {d} left by a daemon before");
                }
            }
            Err(e) => tracing::warn!("daemon: sweeping the hand-off journal: {e}"),
        }
        // The reaper thread; it ends when the last queue handle is dropped.
        let (reaper, items) = mpsc::channel::<(OwnedFd, String)>();
        let run_dir = dir.clone();
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || reap(items, &run_dir))
            .map_err(|e| Error::Other(format!("daemon: starting the reaper thread: {e}")))?;
        Ok(Control {
            path,
            listener: Some(listener),
            verbs: Some(verbs),
            reaper,
            counters: Arc::new(Counters::default()),
        })
    }

    /// The reaper thread's queue for the daemon's own detaches (the engine thread).
    pub fn local_reaper(&self) -> handoff::LocalReaper {
        handoff::LocalReaper::new(
            self.path.clone(),
            self.reaper.clone(),
            self.counters.tombstones.clone(),
        )
    }

    /// `verbs.sock`'s listener (once), for the engine thread, and the counter of
    /// verbs `status` reports.
    pub fn take_verbs(&mut self) -> Option<(handoff::Listener, Arc<AtomicU64>)> {
        Some((self.verbs.take()?, self.counters.verbs.clone()))
    }

    /// Returns the task that serves the socket (to spawn on the loop). If the socket
    /// fails the task ends; senders then get `ECONNREFUSED` and fork their own
    /// workers.
    pub fn serve(
        &mut self,
        worker: Worker,
        events: broadcast::Sender<Message>,
    ) -> Result<impl std::future::Future<Output = ()> + Send> {
        let listener = self
            .listener
            .take()
            .ok_or_else(|| Error::Other("daemon: control socket served twice".into()))?;
        let tx = self.reaper.clone();
        // SAFETY: the listener owns its socket and never replaces or closes it while
        // the AsyncFd holds it.
        let fd = unsafe { AsyncFd::register(listener) }
            .map_err(|e| Error::Other(format!("daemon: polling the control socket: {e}")))?;
        Ok(accept(fd, tx, events, self.counters.clone(), worker))
    }

    /// Removes the socket file, so that CLI calls fork their own reapers again
    /// without trying it first.
    pub fn stop(&self) {
        let _ = std::fs::remove_file(self.path.with_file_name(handoff::VERB_SOCKET));
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Accepts connections and serves each in a task of its own.
async fn accept(
    fd: AsyncFd<handoff::Listener>,
    reaper: mpsc::Sender<(OwnedFd, String)>,
    events: broadcast::Sender<Message>,
    counters: Arc<Counters>,
    worker: Worker,
) {
    loop {
        let mut guard = match fd.readable().await {
            Ok(g) => g,
            Err(e) => return failed(&e),
        };
        match guard.try_io(|l| l.get_ref().accept()) {
            Err(_would_block) => continue,
            Ok(Ok(conn)) => {
                // SAFETY: the connection's fd is owned by `Conn` and closed only
                // when the AsyncFd (and the task) is dropped.
                match unsafe { AsyncFd::register(Conn(conn)) } {
                    Ok(c) => {
                        tokio::spawn(connection(
                            c,
                            reaper.clone(),
                            events.clone(),
                            counters.clone(),
                            worker.clone(),
                        ));
                    }
                    Err(e) => tracing::warn!("daemon: polling a control connection: {e}"),
                }
            }
            Ok(Err(e)) if e.raw_os_error() == Some(libc::EMFILE) => {
                tracing::warn!("daemon: control socket: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Ok(Err(e)) => return failed(&e),
        }
    }
}

/// Serves one connection until its peer closes it.
async fn connection(
    c: AsyncFd<Conn>,
    reaper: mpsc::Sender<(OwnedFd, String)>,
    events: broadcast::Sender<Message>,
    counters: Arc<Counters>,
    worker: Worker,
) {
    loop {
        let mut guard = match c.readable().await {
            Ok(g) => g,
            Err(_) => return,
        };
        let got = match guard.try_io(|c| handoff::recv_on(c.get_ref().0.as_fd())) {
            Err(_would_block) => continue,
            Ok(got) => got,
        };
        drop(guard);
        let (m, fds) = match got {
            Ok(Some(x)) => x,
            Ok(None) => return,
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                tracing::warn!("daemon: ignored a control message: {e}");
                let _ = reply(&c, &Message::Error(e.to_string()));
                continue;
            }
            Err(_) => return,
        };
        match m {
            Message::Reap(names) => {
                counters
                    .tombstones
                    .fetch_add(names.len() as u64, Ordering::Relaxed);
                for item in fds.into_iter().zip(names) {
                    if reaper.send(item).is_err() {
                        return;
                    }
                }
            }
            Message::Endpoint {
                change,
                network,
                id,
            } => {
                counters.notices.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("daemon: endpoint {id} on {network} {change:?}");
                // No subscriber is fine.
                let _ = events.send(Message::Endpoint {
                    change,
                    network,
                    id,
                });
            }
            Message::Status => {
                let s = Message::StatusIs(vec![
                    format!("pid={}", std::process::id()),
                    format!("version={}", handoff::VERSION),
                    format!("tombstones={}", counters.tombstones.load(Ordering::Relaxed)),
                    format!("notices={}", counters.notices.load(Ordering::Relaxed)),
                    format!("verbs={}", counters.verbs.load(Ordering::Relaxed)),
                    format!(
                        "subscribers={}",
                        counters.subscribers.load(Ordering::Relaxed)
                    ),
                ]);
                let _ = reply(&c, &s);
            }
            Message::Subscribe => {
                counters.subscribers.fetch_add(1, Ordering::Relaxed);
                subscriber(c, events.subscribe()).await;
                counters.subscribers.fetch_sub(1, Ordering::Relaxed);
                return;
            }
            Message::Verb(json) => {
                counters.verbs.fetch_add(1, Ordering::Relaxed);
                // The engine thread answers on its own copy of the connection: the
                // caller does not wait for this loop to wake up again.
                let conn = match c.get_ref().0.try_clone() {
                    Ok(fd) => fd,
                    Err(e) => {
                        let why = format!("daemon: {e}");
                        let _ = reply(&c, &Message::VerbErr(crate::delegate::NOT_HERE, why));
                        continue;
                    }
                };
                match worker.verb(json, conn).await {
                    Ok(Some(n)) => {
                        let _ = events.send(n);
                    }
                    Ok(None) => {}
                    Err(answer) => {
                        let _ = reply(&c, &answer);
                    }
                }
            }
            other => {
                let _ = reply(&c, &Message::Error(format!("unexpected {other:?}")));
            }
        }
    }
}

/// Streams endpoint notices to a subscriber until it goes away or falls behind.
async fn subscriber(c: AsyncFd<Conn>, mut rx: broadcast::Receiver<Message>) {
    if reply(&c, &Message::Subscribed).is_err() {
        return;
    }
    loop {
        let m = tokio::select! {
            m = rx.recv() => m,
            // The peer closed (readable at EOF) or wrote something: either ends it.
            g = c.readable() => {
                let Ok(mut g) = g else { return };
                match g.try_io(|c| handoff::recv_on(c.get_ref().0.as_fd())) {
                    Err(_would_block) => continue,
                    Ok(_) => return,
                }
            }
        };
        match m {
            Ok(m) => {
                if reply(&c, &m).is_err() {
                    return;
                }
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                let _ = reply(&c, &Message::Error(format!("{n} notices missed")));
                return;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Sends `m` on `c` without waiting (a peer that does not read loses it).
fn reply(c: &AsyncFd<Conn>, m: &Message) -> std::io::Result<()> {
    handoff::send_on(c.get_ref().0.as_fd(), m, &[])
}

fn failed(e: &std::io::Error) {
    tracing::warn!("daemon: control socket failed ({e}); detaches fork their own reapers");
}

/// The hand-off journal is swept (and so emptied) while running once it is this big.
const JOURNAL_TRIM: u64 = 1 << 20;

/// The reaper thread: deletes each tombstone in its namespace; when idle, sweeps a
/// journal grown big (what it names is deleted already or about to be: deleting
/// again is harmless, and senders start a new journal meanwhile).
fn reap(items: mpsc::Receiver<(OwnedFd, String)>, run_dir: &std::path::Path) {
    let journal = run_dir.join(handoff::JOURNAL);
    let mut next = items.recv().ok();
    while let Some((netns, name)) = next {
        match handoff::delete_in(netns.as_fd(), &name) {
            Ok(()) => tracing::debug!("daemon: deleted tombstone {name}"),
            // Deleted already (by gc), or its namespace went with it.
            Err(e) => tracing::debug!("daemon: tombstone {name}: {e}"),
        }
        next = match items.try_recv() {
            Ok(item) => Some(item),
            Err(mpsc::TryRecvError::Disconnected) => None,
            Err(mpsc::TryRecvError::Empty) => {
                if std::fs::metadata(&journal).is_ok_and(|m| m.len() > JOURNAL_TRIM) {
                    if let Err(e) = handoff::sweep_journal(run_dir) {
                        tracing::warn!("daemon: trimming the hand-off journal: {e}");
                    }
                }
                items.recv().ok()
            }
        };
    }
}
