//! The daemon's engine thread: every engine call (drift check and rebuild, gc) runs
//! here, one at a time, off the event loop. The engine is opened afresh for each job
//! on this thread and never leaves it: its netlink sockets and nft context belong to
//! the thread (and namespace) that made them. Jobs run one at a time, so the daemon's
//! own gc never races its own rebuild.
//!
//! **Verbs without the loop.** The thread also serves `verbs.sock`
//! ([`handoff::VERB_SOCKET`]) itself: it sleeps in one `poll` on its job queue's
//! eventfd and that listener, so a CLI verb wakes this thread alone, which accepts,
//! receives, runs the verb, answers and passes the endpoint notice on (a delegated
//! verb through the loop woke the loop to accept and receive, then this thread, then
//! the loop again for the notice: three wake-ups of sleeping threads, each ~0.3 ms on
//! a small VM). One verb per connection. A connection whose message is not there yet
//! when it is accepted waits in the same `poll` (the client sends right after
//! connecting, so this is rare). While a job runs, verbs wait in the listener's
//! backlog as jobs wait in the queue: one engine, one call at a time, as before.
//!
//! The thread is named `lanyard-engine`: the kernel names the process behind each
//! nftables generation by its thread's name, and the watch tells lanyard's own
//! changes from others' by the `lanyard` prefix.

use crate::cli::Cli;
use crate::Lanyard;
use lanyard_core::kernel::Kernel;
use lanyard_core::model::{Endpoint, Network};
use lanyard_core::{Error, Result};
use lanyard_engine::drift::{self, Drift, Expected, Shape, TableReader};
use lanyard_engine::Report;
use lanyard_kernel::handoff::{self, LocalReaper, Message};
use lanyard_kernel::nftwatch;
use rustix::event::{PollFd, PollFlags};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use tokio::sync::{broadcast, oneshot};

/// The thread's name (at most 15 bytes: it becomes the kernel's `comm`).
pub const THREAD_NAME: &str = "lanyard-engine";

/// One engine call.
enum Job {
    /// Check lanyard's tables; rebuild if they drifted or `force` says why anyway.
    Check {
        force: Option<String>,
        done: oneshot::Sender<Result<Drift>>,
    },
    /// `gc`.
    Gc {
        done: oneshot::Sender<Result<Report>>,
    },
    /// A CLI call's verb ([`crate::delegate`]): answered on `conn` (the caller's
    /// connection); `done` gets the endpoint notice.
    Verb {
        json: String,
        conn: OwnedFd,
        done: oneshot::Sender<Option<Message>>,
    },
    /// Every endpoint and network in the store, for the DNS responder.
    Names {
        done: oneshot::Sender<Result<(Vec<Endpoint>, Vec<Network>)>>,
    },
    /// Every endpoint in the store.
    Endpoints {
        done: oneshot::Sender<Result<Vec<Endpoint>>>,
    },
    /// A Docker plugin call ([`crate::docker::handle`]).
    Docker {
        call: lanyard_docker::Call,
        done: oneshot::Sender<lanyard_docker::Reply>,
    },
    /// Keep DHCP leases alive ([`lanyard_engine::Engine::maintain_leases`]).
    Leases {
        reboot: bool,
        done: oneshot::Sender<Result<(Option<u64>, Vec<String>)>>,
    },
}

/// The loop's handle on the engine thread; cheap to clone.
#[derive(Clone)]
pub struct Worker {
    queue: Arc<Queue>,
}

/// The job queue and the eventfd that wakes the engine thread's `poll` for it.
struct Queue {
    /// Always `Some` but in `drop`.
    jobs: Option<mpsc::Sender<Job>>,
    wake: OwnedFd,
}

impl Queue {
    fn ring(&self) {
        // Only fails when the counter is full, which wakes the thread anyway.
        let _ = rustix::io::write(&self.wake, &1u64.to_ne_bytes());
    }
}

impl Drop for Queue {
    /// The last handle gone: wakes the thread, which finds the queue closed and ends.
    fn drop(&mut self) {
        // Closed first, so the thread that wakes finds it closed.
        drop(self.jobs.take());
        self.ring();
    }
}

/// What the engine thread serves `verbs.sock` with.
pub struct Verbs {
    /// The listener ([`super::control::Control::take_verbs`]).
    pub listener: handoff::Listener,
    /// `status`'s count of verbs.
    pub counted: Arc<AtomicU64>,
    /// Where endpoint notices go (subscribers, the DNS responder).
    pub events: broadcast::Sender<Message>,
}

/// What the engine thread keeps across delegated verbs.
struct Kept {
    /// The engine of delegated verbs and Docker calls, kept: the store stays open
    /// (no open, no WAL-index rebuild, statements stay prepared) and so do the
    /// kernel's host socket and nftables context; what one call named of other
    /// namespaces is dropped after it ([`Kernel::end_of_call`]). Other jobs open
    /// their own.
    engine: Option<Lanyard>,
    /// Whether [`Kept::engine`] may be kept: not under the test hooks that fail or
    /// kill at the N-th kernel step (their count is per call).
    keep: bool,
    /// Where the daemon's own detaches queue their tombstones.
    reaper: LocalReaper,
    /// The Docker front end's state ([`crate::docker::handle`]).
    docker: crate::docker::handle::State,
}

impl Kept {
    /// The kept engine, or a new one (store and kernel opened) if none is kept.
    fn engine(&mut self, cli: &Cli) -> Result<Lanyard> {
        match self.engine.take() {
            Some(e) => Ok(e),
            None => crate::store::open(cli)
                .and_then(|s| crate::open_with_reaper(cli, s, Some(self.reaper.clone()))),
        }
    }

    /// Keeps `engine` for the next call, without what this call named.
    fn put(&mut self, mut engine: Lanyard) {
        if self.keep {
            engine.kernel.end_of_call();
            engine.locks.close();
            self.engine = Some(engine);
        }
    }
}

/// Reads lanyard's tables over nfnetlink ([`nftwatch::table_shape`]).
pub(crate) struct Nfnetlink;

impl TableReader for Nfnetlink {
    fn table(&mut self, family: &str, name: &str) -> Result<Option<Shape>> {
        let number = nftwatch::family_number(family).unwrap_or(0);
        match nftwatch::table_shape(number, name) {
            Ok(s) => Ok(s.map(|s| Shape {
                chains: s.chains,
                sets: s.sets,
            })),
            Err(e) => Err(Error::kernel(
                format!("reading table {family} {name}"),
                e.to_string(),
                e.raw_os_error(),
            )),
        }
    }
}

impl Worker {
    /// Starts the engine thread inside `scope`, serving `verbs` too; it ends when
    /// every handle is dropped.
    pub fn start<'s, 'c: 's>(
        scope: &'s std::thread::Scope<'s, '_>,
        cli: &'c Cli,
        reaper: LocalReaper,
        verbs: Option<Verbs>,
    ) -> Result<Worker> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let wake = rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )
        .map_err(|e| Error::Other(format!("daemon: the engine thread's eventfd: {e}")))?;
        let woken = wake
            .try_clone()
            .map_err(|e| Error::Other(format!("daemon: the engine thread's eventfd: {e}")))?;
        let expected = drift::expected_tables();
        std::thread::Builder::new()
            .name(THREAD_NAME.into())
            .spawn_scoped(scope, move || {
                let mut kept = Kept {
                    engine: None,
                    keep: !crate::test_hooks_set(),
                    reaper,
                    docker: crate::docker::handle::State::default(),
                };
                engine_thread(cli, &expected, &rx, &woken, verbs.as_ref(), &mut kept);
            })
            .map_err(|e| Error::Other(format!("daemon: starting the engine thread: {e}")))?;
        Ok(Worker {
            queue: Arc::new(Queue {
                jobs: Some(jobs),
                wake,
            }),
        })
    }

    /// Checks (and repairs) lanyard's tables on the engine thread.
    pub async fn check(&self, force: Option<String>) -> Result<Drift> {
        let (done, rx) = oneshot::channel();
        self.send(Job::Check { force, done })?;
        rx.await.map_err(|_| gone())?
    }

    /// Runs `gc` on the engine thread.
    pub async fn gc(&self) -> Result<Report> {
        let (done, rx) = oneshot::channel();
        self.send(Job::Gc { done })?;
        rx.await.map_err(|_| gone())?
    }

    /// Reads every endpoint from the store on the engine thread.
    pub async fn endpoints(&self) -> Result<Vec<Endpoint>> {
        let (done, rx) = oneshot::channel();
        self.send(Job::Endpoints { done })?;
        rx.await.map_err(|_| gone())?
    }

    /// Reads every endpoint and network (one read transaction, on the store kept
    /// open for delegated verbs) on the engine thread.
    pub async fn names(&self) -> Result<(Vec<Endpoint>, Vec<Network>)> {
        let (done, rx) = oneshot::channel();
        self.send(Job::Names { done })?;
        rx.await.map_err(|_| gone())?
    }

    /// Renews, rebinds or (with `reboot`) confirms every DHCP lease on the engine
    /// thread: when the next one is due (Unix seconds) and what was done.
    pub async fn leases(&self, reboot: bool) -> Result<(Option<u64>, Vec<String>)> {
        let (done, rx) = oneshot::channel();
        self.send(Job::Leases { reboot, done })?;
        rx.await.map_err(|_| gone())?
    }

    /// Runs a CLI call's verb on the engine thread, which sends the answer on `conn`
    /// itself. `Ok`: the endpoint notice to pass on, if any; `Err`: the engine thread
    /// did not answer, this is the answer to send.
    pub async fn verb(&self, json: String, conn: OwnedFd) -> Result<Option<Message>, Message> {
        let (done, rx) = oneshot::channel();
        if self.send(Job::Verb { json, conn, done }).is_err() {
            let why = "no engine".into();
            return Err(Message::VerbErr(crate::delegate::NOT_HERE, why));
        }
        rx.await
            .map_err(|_| Message::VerbErr(1, gone().to_string()))
    }

    /// Answers a Docker plugin call on the engine thread.
    pub async fn docker(&self, call: lanyard_docker::Call) -> lanyard_docker::Reply {
        let (done, rx) = oneshot::channel();
        let refused = || lanyard_docker::Reply::err(500, format!("lanyard: {}", gone()));
        if self.send(Job::Docker { call, done }).is_err() {
            return refused();
        }
        rx.await.unwrap_or_else(|_| refused())
    }

    fn send(&self, job: Job) -> Result<()> {
        let jobs = self.queue.jobs.as_ref().ok_or_else(gone)?;
        jobs.send(job).map_err(|_| gone())?;
        self.queue.ring();
        Ok(())
    }
}

fn gone() -> Error {
    Error::Other("daemon: the engine thread is gone".into())
}

/// The engine thread: runs queued jobs and serves `verbs.sock`, sleeping in one
/// `poll` on both (and on accepted connections whose message is still on its way)
/// when there is nothing to do. Ends when the queue is closed.
fn engine_thread(
    cli: &Cli,
    expected: &[Expected],
    jobs: &mpsc::Receiver<Job>,
    woken: &OwnedFd,
    verbs: Option<&Verbs>,
    kept: &mut Kept,
) {
    // Accepted connections whose verb has not arrived yet.
    let mut waiting: Vec<OwnedFd> = vec![];
    loop {
        // Every queued job first (the eventfd was reset before the queue was read,
        // so a job queued after this drain rings it again).
        loop {
            match jobs.try_recv() {
                Ok(job) => run(cli, expected, job, kept),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => return,
            }
        }
        let mut fds = vec![PollFd::new(woken, PollFlags::IN)];
        if let Some(v) = verbs {
            fds.push(PollFd::new(&v.listener, PollFlags::IN));
        }
        fds.extend(waiting.iter().map(|c| PollFd::new(c, PollFlags::IN)));
        match rustix::event::poll(&mut fds, None) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                tracing::warn!("daemon: engine thread: poll: {e}");
                std::thread::sleep(std::time::Duration::from_millis(100));
                continue;
            }
        }
        let ready: Vec<bool> = fds.iter().map(|f| !f.revents().is_empty()).collect();
        drop(fds);
        if ready[0] {
            let mut buf = [0u8; 8];
            let _ = rustix::io::read(woken, &mut buf);
        }
        let Some(v) = verbs else { continue };
        // Connections that were waiting and are readable now (or closed).
        let before = std::mem::take(&mut waiting);
        for (conn, r) in before.into_iter().zip(&ready[2..]) {
            if *r {
                on_connection(cli, kept, v, conn, &mut waiting);
            } else {
                waiting.push(conn);
            }
        }
        if ready[1] {
            loop {
                match v.listener.accept() {
                    Ok(conn) => on_connection(cli, kept, v, conn, &mut waiting),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        tracing::warn!("daemon: verbs socket: {e}");
                        break;
                    }
                }
            }
        }
    }
}

/// Reads one verb on `conn` and runs it; a message still on its way puts `conn`
/// on `waiting`.
fn on_connection(cli: &Cli, kept: &mut Kept, v: &Verbs, conn: OwnedFd, waiting: &mut Vec<OwnedFd>) {
    let json = match handoff::recv_on(conn.as_fd()) {
        Ok(Some((Message::Verb(json), _))) => json,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            waiting.push(conn);
            return;
        }
        // The peer went away without a word.
        Ok(None) => return,
        Ok(Some((other, _))) => {
            let why = format!("{} takes verbs only, not {other:?}", handoff::VERB_SOCKET);
            let _ = handoff::send_on(conn.as_fd(), &Message::Error(why), &[]);
            return;
        }
        Err(e) => {
            let _ = handoff::send_on(conn.as_fd(), &Message::Error(e.to_string()), &[]);
            return;
        }
    };
    v.counted.fetch_add(1, Ordering::Relaxed);
    if let Some(notice) = verb(cli, kept, &json, conn) {
        // No subscriber is fine.
        let _ = v.events.send(notice);
    }
}

/// Runs a delegated verb on the kept engine, answers on `conn` and closes it; the
/// endpoint notice to pass on, if any.
fn verb(cli: &Cli, kept: &mut Kept, json: &str, conn: OwnedFd) -> Option<Message> {
    let mut used = None;
    let (answer, notice) = match kept.engine(cli) {
        Ok(mut engine) => {
            let r = crate::delegate::serve(&mut engine, json);
            used = Some(engine);
            r
        }
        // Not opened here: the caller runs the verb itself, and says why.
        Err(_) => (
            Message::VerbErr(crate::delegate::NOT_HERE, "store not open".into()),
            None,
        ),
    };
    // The answer first; the engine is put back after it. A caller gone meanwhile
    // misses its answer.
    let _ = handoff::send_on(conn.as_fd(), &answer, &[]);
    drop(conn);
    if let Some(engine) = used {
        kept.put(engine);
    }
    notice
}

/// Runs one job; a dropped answer (the loop stopping) is fine.
fn run(cli: &Cli, expected: &[Expected], job: Job, kept: &mut Kept) {
    match job {
        Job::Docker { call, done } => {
            let started = std::time::Instant::now();
            let name = call.name();
            let r = match kept.engine(cli) {
                Ok(mut engine) => {
                    let r = crate::docker::handle::answer(&mut engine, &mut kept.docker, call);
                    kept.put(engine);
                    r
                }
                Err(e) => lanyard_docker::Reply::err(500, format!("lanyard: {e}")),
            };
            tracing::debug!(
                "docker: {name}: {:.2} ms",
                started.elapsed().as_secs_f64() * 1e3
            );
            let _ = done.send(r);
        }
        Job::Verb { json, conn, done } => {
            let _ = done.send(verb(cli, kept, &json, conn));
        }
        Job::Check { force, done } => {
            let r = crate::open(cli).and_then(|mut engine| {
                engine.repair_firewall_drift(expected, &mut Nfnetlink, force.as_deref())
            });
            let _ = done.send(r);
        }
        Job::Gc { done } => {
            let _ = done.send(crate::open(cli).and_then(|mut engine| engine.gc()));
        }
        Job::Names { done } => {
            // On the engine kept for delegated verbs: one read, no open (the DNS
            // responder asks after every attach and detach).
            use lanyard_core::store::Store;
            let r = kept.engine(cli).and_then(|engine| {
                let r = engine
                    .store
                    .read(&mut |tx| Ok((tx.endpoints()?, tx.networks()?)));
                kept.put(engine);
                r
            });
            let _ = done.send(r);
        }
        Job::Endpoints { done } => {
            let _ = done.send(crate::open(cli).and_then(|engine| engine.endpoints()));
        }
        Job::Leases { reboot, done } => {
            let r = crate::open(cli)
                .and_then(|mut engine| engine.maintain_leases(lanyard_engine::now(), reboot));
            let _ = done.send(r);
        }
    }
}
