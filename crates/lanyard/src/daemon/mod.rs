//! `lanyard daemon`: keeps lanyard's nftables tables in place for as long as it runs,
//! in the network namespace it was started in, deletes the links detaches hand over,
//! and runs `gc` now and then. Foreground; SIGTERM or SIGINT stop it, SIGHUP asks for
//! a check now.
//!
//! # How
//!
//! One tokio event loop (current-thread), started here and nowhere else: no other
//! verb ever starts a runtime. Its tasks:
//!
//! - **Watch** ([`watch`]): nftables announcements, read through `AsyncFd`; a
//!   deletion in lanyard's tables arms a check, an element someone else deleted arms
//!   a forced rebuild.
//! - **Check** (this module): an armed check runs after a short debounce
//!   (`--debounce-ms`) so the rest of the transaction's announcements are in, and
//!   every `--interval` seconds anyway (the safety net). What is checked and how a
//!   rebuild is done is the engine's ([`lanyard_engine::drift`]).
//! - **DHCP leases**: renewed at T1, rebound at T2, asked for again at start
//!   (INIT-REBOOT), for every endpoint of a `--ipam-driver dhcp` network.
//! - **gc** every `--gc-interval` seconds (tombstones, endpoints whose namespace is
//!   gone, crash leftovers).
//! - **Signals** (`tokio::signal`).
//! - **Control socket** ([`control`]): `daemon.sock`, a small versioned protocol:
//!   tombstones from detaches, endpoint notices and subscriptions, status.
//!   Delegated verbs come on `verbs.sock`, which the engine thread serves itself
//!   ([`worker`]): a verb never waits for the loop.
//! - **DNS** ([`dns`]): a responder on 127.0.0.11:53 in every endpoint's namespace
//!   (names and aliases of the endpoints on the networks it shares, PTR, the rest
//!   forwarded); off with `--no-dns`.
//! - **Docker plugin socket** ([`crate::docker`]): dockerd's remote NetworkDriver
//!   and IpamDriver calls (`--docker-socket`), HTTP/1.1 served by hyper.
//!
//! Engine calls never run on the loop: they go to one engine thread ([`worker`]),
//! one at a time; deleting tombstones goes to a reaper thread.
//!
//! **Store.** The daemon holds one store connection open for its whole life, so every
//! CLI call finds SQLite's WAL index ready instead of rebuilding it.
//!
//! **Robust.** Every check opens the store and the kernel afresh; a failing store,
//! nft or netlink socket is logged and retried with backoff (up to
//! [`MAX_BACKOFF`]), never fatal. Only a bad command line, a taken socket or a
//! failure to start the loop stops the daemon.
//!
//! A rebuild that reads the store in the milliseconds between a concurrent detach
//! removing its elements and removing its record puts that endpoint's elements back
//! (stale, until the next rebuild); the store re-read after each rebuild narrows this
//! window but cannot close it without a lock shared with the CLI.

mod control;
pub(crate) mod dns;
mod dns_table;
pub(crate) mod dns_upstream;
mod watch;
pub(crate) mod worker;

use crate::cli::{Cli, DaemonArgs};
use lanyard_core::model::Endpoint;
use lanyard_core::{Error, Result};
use lanyard_engine::drift::Drift;
use lanyard_kernel::handoff::Change;
use lanyard_kernel::nftwatch::NftWatch;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::time::Instant;
use worker::Worker;

/// Longest wait between retries of a failing check.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// First wait after a failed check.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// However busy nftables stays, an armed check waits no longer than this.
const MAX_QUIET_WAIT: Duration = Duration::from_millis(250);

/// What the loop's tasks tell the checker.
#[derive(Debug)]
pub enum Msg {
    /// Check soon, because of `why`; rebuild even if the shape is right when
    /// `force` says why.
    Arm {
        /// What was heard.
        why: String,
        /// Why to rebuild whatever the check finds.
        force: Option<String>,
    },
    /// Stop (the signal's number).
    Stop(i32),
}

/// A check is due: since when, when the last relevant change was heard, and why.
#[derive(Debug, Clone)]
struct Armed {
    first: Instant,
    last: Instant,
    why: String,
    force: Option<String>,
}

impl Armed {
    /// When to run it: once nftables has been quiet for `debounce`, at the latest
    /// [`MAX_QUIET_WAIT`] after the first change.
    fn due(&self, debounce: Duration) -> Instant {
        (self.last + debounce).min(self.first + MAX_QUIET_WAIT.max(debounce))
    }
}

/// The checker's state between wake-ups.
struct Checker {
    worker: Worker,
    /// A check is armed.
    armed: Option<Armed>,
    /// The check after a failure waits until then.
    retry_at: Option<Instant>,
    backoff: Duration,
    /// The state directory, looked at when a check fails: a newer lanyard may have
    /// migrated the store.
    state_dir: std::path::PathBuf,
    /// Set when the store's schema is newer than this build's: the daemon stops.
    newer: Option<Error>,
}

impl Checker {
    /// Arms a check (keeping the first reason), or pushes an armed one back to wait
    /// for quiet.
    fn arm(&mut self, why: String, force: Option<String>) {
        let now = Instant::now();
        match &mut self.armed {
            Some(a) => {
                a.last = now;
                if a.force.is_none() {
                    a.force = force;
                }
            }
            None => {
                self.armed = Some(Armed {
                    first: now,
                    last: now,
                    why,
                    force,
                })
            }
        }
    }

    /// Runs a check and reports it; on failure re-arms it with a backoff.
    async fn run_check(&mut self, why: String, heard: Instant, force: Option<String>) {
        let started = Instant::now();
        match self.worker.check(force.clone()).await {
            Ok(outcome) => {
                self.retry_at = None;
                self.backoff = FIRST_BACKOFF;
                if let Drift::Rebuilt(wrong) = outcome {
                    let done = Instant::now();
                    println!(
                        "lanyard daemon: rebuilt lanyard's nftables tables ({}) after {why}; {:.1} ms after it was heard, rebuild {:.1} ms",
                        wrong.join("; "),
                        ms(done - heard),
                        ms(done - started)
                    );
                }
            }
            Err(e) => {
                if let Some(stop) = newer_store(&self.state_dir) {
                    self.newer = Some(stop);
                    return;
                }
                tracing::warn!(
                    "daemon: checking lanyard's nftables tables after {why} failed: {e}; retrying in {:?}",
                    self.backoff
                );
                self.retry_at = Some(Instant::now() + self.backoff);
                self.armed.get_or_insert(Armed {
                    first: heard,
                    last: heard,
                    why,
                    force,
                });
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
            }
        }
    }

    /// Serves `msgs` until a stop; returns the signal that stopped it, or the error
    /// that says a newer lanyard migrated the store.
    async fn serve(
        &mut self,
        msgs: &mut UnboundedReceiver<Msg>,
        interval: Duration,
        debounce: Duration,
    ) -> Result<i32> {
        let mut next_tick = Instant::now() + interval;
        loop {
            let now = Instant::now();
            let check_at = match &self.armed {
                Some(a) => a.due(debounce).max(self.retry_at.unwrap_or(now)),
                None => next_tick,
            }
            .min(next_tick);
            tokio::select! {
                m = msgs.recv() => match m {
                    Some(Msg::Arm { why, force }) => self.arm(why, force),
                    Some(Msg::Stop(sig)) => return Ok(sig),
                    None => return Ok(0),
                },
                _ = tokio::time::sleep_until(check_at) => {
                    let now = Instant::now();
                    let armed_due = self.armed.as_ref().is_some_and(|a| {
                        now >= a.due(debounce) && self.retry_at.is_none_or(|r| now >= r)
                    });
                    if armed_due || now >= next_tick {
                        let (heard, why, force) = match self.armed.take() {
                            Some(a) => (a.first, a.why, a.force),
                            None => (now, "the periodic check".to_string(), None),
                        };
                        self.run_check(why, heard, force).await;
                        if let Some(e) = self.newer.take() {
                            return Err(e);
                        }
                        next_tick = Instant::now() + interval;
                    }
                }
            }
        }
    }
}

/// Forwards SIGTERM and SIGINT (stop) and SIGHUP (check now) to the checker.
async fn signals(tx: UnboundedSender<Msg>) -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let sent = move |m| tx.send(m).is_ok();
    tokio::spawn(async move {
        loop {
            let ok = tokio::select! {
                _ = term.recv() => sent(Msg::Stop(libc::SIGTERM)),
                _ = int.recv() => sent(Msg::Stop(libc::SIGINT)),
                _ = hup.recv() => sent(Msg::Arm { why: "SIGHUP".into(), force: None }),
            };
            if !ok {
                return;
            }
        }
    });
    Ok(())
}

/// Runs `gc` every `every` on the engine thread.
async fn gc_loop(worker: Worker, every: Duration) {
    let mut tick = tokio::time::interval_at(Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match worker.gc().await {
            Ok(r) => {
                for s in &r.removed {
                    println!("lanyard daemon: gc removed {s}");
                }
                for s in &r.errors {
                    tracing::warn!("daemon: gc: {s}");
                }
            }
            Err(e) => tracing::warn!("daemon: gc failed: {e}; trying again next time"),
        }
    }
}

/// Keeps DHCP endpoints' leases alive: at start every stored lease is asked for
/// again (INIT-REBOOT); then each is renewed at T1 and rebound at T2 (the engine
/// decides, [`lanyard_engine::Engine::maintain_leases`]). Looks again when the next
/// lease is due and at least every [`LEASE_RESCAN`] (new endpoints attached by the
/// CLI); with no DHCP endpoint that is one store read.
async fn lease_loop(worker: Worker) {
    let mut reboot = true;
    loop {
        let wait = match worker.leases(reboot).await {
            Ok((next, done)) => {
                reboot = false;
                for s in &done {
                    println!("lanyard daemon: dhcp: {s}");
                }
                next.map_or(LEASE_RESCAN.as_secs(), |n| {
                    n.saturating_sub(lanyard_engine::now())
                })
            }
            Err(e) => {
                tracing::warn!("daemon: DHCP leases: {e}; trying again soon");
                10
            }
        };
        let wait = Duration::from_secs(wait.clamp(1, LEASE_RESCAN.as_secs()));
        tokio::time::sleep(wait).await;
    }
}

/// The error that stops the daemon when the store in `state_dir` has a schema newer
/// than this build's (a newer lanyard was installed and migrated it): this build
/// cannot read it, so it stops, with a failure status that makes systemd start the
/// new binary (`Restart=on-failure` in dist/lanyard.service).
fn newer_store(state_dir: &std::path::Path) -> Option<Error> {
    let found = lanyard_store::file_version(state_dir).ok()??;
    (found > lanyard_store::SCHEMA_VERSION).then(|| {
        Error::Other(format!(
            "daemon: the store in {} has schema version {found}, newer than this lanyard's \
             ({}): a newer lanyard was installed; stopping so that it takes over",
            state_dir.display(),
            lanyard_store::SCHEMA_VERSION
        ))
    })
}

/// Where the DNS responder finds the host's upstreams and `lanyard run --dns`'s.
fn dns_config(cli: &Cli, args: &DaemonArgs) -> dns::Config {
    dns::Config {
        resolv: args.resolv_conf.clone(),
        resolved: args.resolved_conf.clone(),
        given_dir: cli.run_dir.join(dns::GIVEN_DIR),
        node: crate::node(cli),
    }
}

/// How often the lease task looks for DHCP endpoints at least.
const LEASE_RESCAN: Duration = Duration::from_secs(30);

/// Tells a running daemon that `ep` came or went (best effort, never waits: one
/// `stat` when no daemon runs). Called by the CLI after a successful attach or
/// detach; no event loop is involved.
pub fn notify(cli: &Cli, change: Change, ep: &Endpoint) {
    let path = cli.run_dir.join(lanyard_kernel::handoff::SOCKET);
    if let Err(e) = lanyard_kernel::handoff::notify(&path, change, ep.network.as_str(), &ep.id) {
        tracing::debug!(
            "daemon at {} not told of endpoint {}: {e}",
            path.display(),
            ep.id
        );
    }
}

/// After an attach on a DHCP network: says on stderr when no daemon is up to
/// renew the lease, and when it runs out (one `stat`, DHCP endpoints only).
pub fn lease_note(cli: &Cli, ep: &Endpoint) {
    let Some(lease) = &ep.lease else { return };
    if cli.run_dir.join(lanyard_kernel::handoff::SOCKET).exists() {
        return;
    }
    eprintln!(
        "note: no lanyard daemon is running, so nobody renews the lease of {} \
         (renewal due in {} s, it ends in {} s): start `lanyard daemon`",
        lease.address, lease.t1_secs, lease.lease_secs
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `lanyard daemon`: runs until SIGTERM or SIGINT; returns the exit code (0).
pub fn run(cli: &Cli, args: &DaemonArgs) -> Result<i32> {
    if args.interval == 0 {
        return Err(Error::invalid(
            "--interval",
            "0",
            "must be at least 1 second",
        ));
    }
    // Held open for the daemon's life: while one connection is open, every CLI
    // call's connection finds the WAL index ready instead of rebuilding it from
    // the WAL (a third of the cost of opening the store).
    let _store = lanyard_store::SqliteStore::open(&cli.state_dir)?;
    let mut handoff = control::Control::bind(cli)?;
    crate::store::heartbeat(cli, Duration::from_secs(args.gc_interval));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| Error::Other(format!("daemon: starting the event loop: {e}")));
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            handoff.stop();
            return Err(e);
        }
    };
    let events = control::events();
    let verbs = handoff
        .take_verbs()
        .map(|(listener, counted)| worker::Verbs {
            listener,
            counted,
            events: events.clone(),
        });
    let result = std::thread::scope(|scope| -> Result<i32> {
        let worker = Worker::start(scope, cli, handoff.local_reaper(), verbs)?;
        let dns = (!args.no_dns).then(|| dns_config(cli, args));
        let r = rt.block_on(serve(
            args,
            &cli.state_dir,
            worker,
            &mut handoff,
            events,
            dns,
        ));
        // Drops the tasks (and with them every handle on the engine thread, which
        // then ends and is joined by the scope).
        drop(rt);
        r
    });
    handoff.stop();
    result
}

/// The loop's main task: starts the others, checks once, then serves.
async fn serve(
    args: &DaemonArgs,
    state_dir: &std::path::Path,
    worker: Worker,
    handoff: &mut control::Control,
    events: tokio::sync::broadcast::Sender<lanyard_kernel::handoff::Message>,
    dns: Option<dns::Config>,
) -> Result<i32> {
    let interval = Duration::from_secs(args.interval);
    let gc_interval = (args.gc_interval > 0).then(|| Duration::from_secs(args.gc_interval));
    let debounce = Duration::from_millis(args.debounce_ms);
    let (tx, mut msgs) = unbounded_channel();
    signals(tx.clone())
        .await
        .map_err(|e| Error::Other(format!("daemon: signal handlers: {e}")))?;
    let dns_events = events.subscribe();
    tokio::spawn(handoff.serve(worker.clone(), events)?);
    // Subscribed before the first check: every later change is heard.
    let first = NftWatch::open().ok();
    let mut checker = Checker {
        worker: worker.clone(),
        armed: None,
        retry_at: None,
        backoff: FIRST_BACKOFF,
        state_dir: state_dir.to_path_buf(),
        newer: None,
    };
    // The first check before saying so: whoever waits for the line below can rely on
    // the tables having been checked, and on every later change being heard.
    checker
        .run_check("start-up".into(), Instant::now(), None)
        .await;
    // The endpoints there are now (services learn of later ones from notices).
    match worker.endpoints().await {
        Ok(eps) => println!("lanyard daemon: {} endpoints in the store", eps.len()),
        Err(e) => tracing::warn!("daemon: reading the store's endpoints: {e}"),
    }
    // Bound once the tables are checked: dockerd's first call finds a ready daemon.
    let plugin = crate::docker::activation::listener(&args.docker_socket)?;
    tokio::spawn(crate::docker::serve::run(plugin, worker.clone()));
    tokio::spawn(watch::run(first, tx.clone()));
    tokio::spawn(lease_loop(worker.clone()));
    if let Some(cfg) = dns {
        tokio::spawn(dns::run(worker.clone(), dns_events, cfg));
    }
    if let Some(g) = gc_interval {
        tokio::spawn(gc_loop(worker, g));
    }
    println!(
        "lanyard daemon: watching nftables for lanyard's tables (pid {}, check every {}s, gc {})",
        std::process::id(),
        args.interval,
        gc_interval.map_or("off".to_string(), |g| format!("every {}s", g.as_secs()))
    );
    drop(tx);
    let sig = checker.serve(&mut msgs, interval, debounce).await;
    handoff.stop();
    let sig = sig?;
    println!("lanyard daemon: stopped (signal {sig})");
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_armed_check_waits_for_quiet_but_not_forever() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut a = Armed {
            first: t0,
            last: t0,
            why: "x".into(),
            force: None,
        };
        assert_eq!(a.due(ms(20)), t0 + ms(20));
        a.last = t0 + ms(100);
        assert_eq!(a.due(ms(20)), t0 + ms(120));
        a.last = t0 + ms(1000);
        assert_eq!(a.due(ms(20)), t0 + MAX_QUIET_WAIT);
    }
}
