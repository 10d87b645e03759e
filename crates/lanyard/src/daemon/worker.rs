//! The daemon's engine thread: every engine call (drift check and rebuild, gc) runs
//! here, one at a time, off the event loop. The engine is opened afresh for each job
//! on this thread and never leaves it: its netlink sockets and nft context belong to
//! the thread (and namespace) that made them. Jobs run one at a time, so the daemon's
//! own gc never races its own rebuild.
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
use std::os::fd::{AsFd, OwnedFd};
use std::sync::mpsc;
use tokio::sync::oneshot;

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
    jobs: mpsc::Sender<Job>,
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
    /// Starts the engine thread inside `scope`; it ends when every handle is dropped.
    pub fn start<'s, 'c: 's>(
        scope: &'s std::thread::Scope<'s, '_>,
        cli: &'c Cli,
        reaper: LocalReaper,
    ) -> Result<Worker> {
        let (jobs, rx) = mpsc::channel::<Job>();
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
                for job in rx {
                    run(cli, &expected, job, &mut kept);
                }
            })
            .map_err(|e| Error::Other(format!("daemon: starting the engine thread: {e}")))?;
        Ok(Worker { jobs })
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
        self.jobs.send(job).map_err(|_| gone())
    }
}

fn gone() -> Error {
    Error::Other("daemon: the engine thread is gone".into())
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
            let mut used = None;
            let (answer, notice) = match kept.engine(cli) {
                Ok(mut engine) => {
                    let r = crate::delegate::serve(&mut engine, &json);
                    used = Some(engine);
                    r
                }
                // Not opened here: the caller runs the verb itself, and says why.
                Err(_) => (
                    Message::VerbErr(crate::delegate::NOT_HERE, "store not open".into()),
                    None,
                ),
            };
            // The answer first; the engine is put back after it. A caller gone
            // meanwhile misses its answer, as it would from the loop.
            let _ = handoff::send_on(conn.as_fd(), &answer, &[]);
            drop(conn);
            if let Some(engine) = used {
                kept.put(engine);
            }
            let _ = done.send(notice);
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
