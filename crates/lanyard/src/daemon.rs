//! `lanyard daemon`: keeps lanyard's nftables tables in place for as long as it runs,
//! in the network namespace it was started in. Foreground; SIGTERM or SIGINT stop it,
//! SIGHUP asks for a check now.
//!
//! # How
//!
//! - **Events.** An [`NftWatch`] hears every committed nftables change in the
//!   namespace. A deletion in `inet lanyard` or `bridge lanyard` (a flush, a firewall
//!   reload, `nft delete …`), or lost events (queue overflow), arms a check; the check
//!   runs after a short debounce (`--debounce-ms`) so the rest of the transaction's
//!   announcements are in. Changes to other tables (Docker's, firewalld's) are ignored.
//! - **Check.** Cheap, and independent of the number of published ports: if the store
//!   has a bridge network, both tables must exist with every chain (holding the right
//!   number of rules) and every named set of [`firewall::ruleset`]
//!   ([`nftwatch::table_shape`]: four small nfnetlink requests per table, set elements
//!   never read). Anything missing or foreign → `Engine::rebuild_firewall`: the whole
//!   ruleset from the store, in one transaction. If the store changed while the
//!   rebuild ran (an attach or detach at that moment), it rebuilds once more.
//! - **Safety net.** The same check every `--interval` seconds, events or not, and
//!   `gc` (tombstones, endpoints whose namespace is gone, crash leftovers) every
//!   `--gc-interval` seconds.
//! - **Tombstones.** It listens on `daemon.sock` in the run directory (root only):
//!   a detach hands its retired link over there ([`handoff`]) instead of forking a
//!   worker, and a reaper thread deletes it. A second daemon on the same socket is
//!   refused; a socket left by a killed daemon is taken over. Without the daemon,
//!   detaches fork as before.
//! - **Store.** It holds one store connection open for its whole life, so every CLI
//!   call finds SQLite's WAL index ready instead of rebuilding it.
//! - **Robust.** Every check opens the store and the kernel afresh; a failing store,
//!   nft or netlink socket is logged and retried with backoff (up to
//!   [`MAX_BACKOFF`]), never fatal. Only a bad command line or an unusable signal
//!   mask stops the daemon.
//!
//! Set *elements* are not compared with the store (that would read every published
//! port on every check): an element deleted by hand (`nft delete element inet lanyard
//! …`) comes back with the next `lanyard restore` or full rebuild. Likewise a rebuild
//! that reads the store in the milliseconds between a concurrent detach removing its
//! elements and removing its record puts that endpoint's elements back (stale, until
//! the next rebuild); the store re-read after each rebuild narrows this window but
//! cannot close it without a lock shared with the CLI.

use crate::cli::{Cli, DaemonArgs};
use lanyard_core::firewall::{self, FirewallInput, FAMILIES, TABLE};
use lanyard_core::model::Driver;
use lanyard_core::store::Store;
use lanyard_core::{Error, Result};
use lanyard_kernel::handoff;
use lanyard_kernel::nftwatch::{self, NftEvent, NftWatch, TableShape};
use std::os::fd::AsFd;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::DirBuilderExt;
use std::time::{Duration, Instant};

/// Longest wait between retries of a failing check.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// First wait after a failed check.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// Rebuilds in a row while the store keeps changing under them.
const REBUILD_TRIES: usize = 3;
/// However busy nftables stays, an armed check waits no longer than this.
const MAX_QUIET_WAIT: Duration = Duration::from_millis(250);

/// A check is due: since when, when the last relevant change was heard, and why.
#[derive(Debug, Clone)]
struct Armed {
    first: Instant,
    last: Instant,
    why: String,
}

impl Armed {
    /// When to run it: once nftables has been quiet for `debounce`, at the latest
    /// [`MAX_QUIET_WAIT`] after the first change.
    fn due(&self, debounce: Duration) -> Instant {
        (self.last + debounce).min(self.first + MAX_QUIET_WAIT.max(debounce))
    }
}

/// One of lanyard's tables as the ruleset defines it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Expected {
    family: &'static str,
    number: u8,
    shape: TableShape,
}

/// The chains (with rule counts) and named sets of each of lanyard's tables, read
/// from the ruleset the engine renders, so the two never disagree.
fn expected_tables() -> Vec<Expected> {
    let script = firewall::ruleset(&FirewallInput::default());
    let mut out: Vec<Expected> = Vec::new();
    let mut chain: Option<String> = None;
    for line in script.lines().map(str::trim) {
        if let Some(fam) = FAMILIES
            .iter()
            .find(|f| line == format!("table {f} {TABLE} {{"))
        {
            out.push(Expected {
                family: fam,
                number: nftwatch::family_number(fam).unwrap_or(0),
                shape: TableShape::default(),
            });
            chain = None;
            continue;
        }
        let Some(table) = out.last_mut() else {
            continue;
        };
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["set" | "map", name, "{", ..] => {
                table.shape.sets.insert(name.to_string());
            }
            ["chain", name, "{"] => {
                table.shape.chains.insert(name.to_string(), 0);
                chain = Some(name.to_string());
            }
            ["}"] => chain = None,
            [] | ["type", ..] => {}
            _ => {
                if let Some(c) = &chain {
                    *table.shape.chains.entry(c.clone()).or_insert(0) += 1;
                }
            }
        }
    }
    out
}

/// SIGTERM, SIGINT and SIGHUP, blocked and read from a signalfd instead.
struct Signals {
    fd: OwnedFd,
}

impl Signals {
    fn new() -> Result<Signals> {
        let err = |what: &str| {
            let e = std::io::Error::last_os_error();
            Error::Other(format!("daemon: {what}: {e}"))
        };
        // SAFETY: sigset_t is plain data, initialised by sigemptyset before use; the
        // mask is changed for this (only) thread before any other thread exists.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
                libc::sigaddset(&mut set, s);
            }
            if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
                return Err(err("blocking signals"));
            }
            let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
            if fd < 0 {
                return Err(err("signalfd"));
            }
            Ok(Signals {
                fd: OwnedFd::from_raw_fd(fd),
            })
        }
    }

    /// The signals that arrived, in order.
    fn read(&self) -> Vec<i32> {
        let mut out = vec![];
        loop {
            // SAFETY: signalfd_siginfo is plain data; read writes at most its size.
            let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
            let size = std::mem::size_of::<libc::signalfd_siginfo>();
            // SAFETY: `info` is a writable buffer of `size` bytes.
            let n = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    (&mut info as *mut libc::signalfd_siginfo).cast(),
                    size,
                )
            };
            if n != size as isize {
                return out;
            }
            out.push(info.ssi_signo as i32);
        }
    }
}

/// Waits until one of `fds` is readable or `timeout` passes; returns which are.
fn poll(fds: &[RawFd], timeout: Duration) -> Vec<bool> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // Round up, so a wait never ends just before its deadline and spins.
    let ms = timeout.as_micros().div_ceil(1000);
    let ms = libc::c_int::try_from(ms).unwrap_or(libc::c_int::MAX);
    // SAFETY: `pfds` is a valid array of `pfds.len()` pollfds for the call.
    let rc = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, ms) };
    if rc <= 0 {
        return vec![false; fds.len()];
    }
    pfds.iter().map(|p| p.revents != 0).collect()
}

/// What a check found and did.
enum Outcome {
    /// No bridge network in the store: nothing to guard.
    Idle,
    /// Both tables complete.
    Fine,
    /// Rebuilt; what was wrong.
    Rebuilt(Vec<String>),
}

/// A serialisation of the store's networks and endpoints, to notice that it changed.
fn store_fingerprint(engine: &crate::Lanyard) -> Result<String> {
    let (nets, eps) = engine
        .store
        .read(&mut |tx| Ok((tx.networks()?, tx.endpoints()?)))?;
    serde_json::to_string(&(nets, eps)).map_err(|e| Error::Other(e.to_string()))
}

/// The daemon's state between wake-ups.
struct Daemon<'a> {
    cli: &'a Cli,
    expected: Vec<Expected>,
    watch: Option<NftWatch>,
    /// A check is armed.
    armed: Option<Armed>,
    /// The check after a failure waits until then.
    retry_at: Option<Instant>,
    backoff: Duration,
}

impl Daemon<'_> {
    /// (Re)subscribes to nftables events if not subscribed; a new subscription arms
    /// a check, since events may have been missed meanwhile.
    fn ensure_watch(&mut self) {
        if self.watch.is_some() {
            return;
        }
        match NftWatch::open() {
            Ok(w) => {
                self.watch = Some(w);
                self.arm("subscribed to nftables events");
            }
            Err(e) => tracing::warn!(
                "daemon: cannot subscribe to nftables events ({e}); checking every interval only, retrying"
            ),
        }
    }

    /// Arms a check (keeping the first reason), or pushes an armed one back to wait
    /// for quiet.
    fn arm(&mut self, why: &str) {
        let now = Instant::now();
        match &mut self.armed {
            Some(a) => a.last = now,
            None => {
                self.armed = Some(Armed {
                    first: now,
                    last: now,
                    why: why.into(),
                })
            }
        }
    }

    /// Reads the events queued on the watch; arms a check for any that may have
    /// taken something out of lanyard's tables.
    fn take_events(&mut self) {
        let Some(w) = self.watch.as_mut() else {
            return;
        };
        let events = match w.read() {
            Ok(ev) => ev,
            Err(e) => {
                tracing::warn!("daemon: reading nftables events failed ({e}); resubscribing");
                self.watch = None;
                self.arm("lost the nftables event socket");
                return;
            }
        };
        let mut by: Option<String> = None;
        let mut hit: Option<String> = None;
        for e in &events {
            if let NftEvent::NewGeneration { process, pid, .. } = e {
                by = Some(match (process, pid) {
                    (Some(p), Some(pid)) => format!("{p} (pid {pid})"),
                    (Some(p), None) => p.clone(),
                    _ => "an unknown process".into(),
                });
            }
            if hit.is_none()
                && self
                    .expected
                    .iter()
                    .any(|t| e.may_have_removed_from(t.number, TABLE))
            {
                hit = Some(match e {
                    NftEvent::Change { object, family, .. } => format!(
                        "a {object} of table {} {TABLE} was deleted",
                        nftwatch::family_name(*family)
                    ),
                    _ => "nftables events were lost (queue overflow)".into(),
                });
            }
        }
        if let Some(h) = hit {
            let why = match by {
                Some(b) => format!("{h} by {b}"),
                None => h,
            };
            self.arm(&why);
        }
    }

    /// Checks lanyard's tables against the ruleset; rebuilds them from the store if
    /// anything is missing.
    fn check(&mut self) -> Result<Outcome> {
        let mut engine = crate::open(self.cli)?;
        let nets = engine.store.read(&mut |tx| tx.networks())?;
        if !nets.iter().any(|n| n.driver == Driver::Bridge) {
            return Ok(Outcome::Idle);
        }
        let mut wrong = vec![];
        for t in &self.expected {
            let table = format!("table {} {TABLE}", t.family);
            match nftwatch::table_shape(t.number, TABLE) {
                Ok(None) => wrong.push(format!("{table} missing")),
                Ok(Some(seen)) => wrong.extend(
                    t.shape
                        .differences(&seen)
                        .into_iter()
                        .map(|d| format!("{table}: {d}")),
                ),
                Err(e) => {
                    return Err(Error::kernel(
                        format!("reading {table}"),
                        e.to_string(),
                        e.raw_os_error(),
                    ))
                }
            }
        }
        if wrong.is_empty() {
            return Ok(Outcome::Fine);
        }
        for _ in 0..REBUILD_TRIES {
            let before = store_fingerprint(&engine)?;
            engine.rebuild_firewall()?;
            if store_fingerprint(&engine)? == before {
                break;
            }
        }
        Ok(Outcome::Rebuilt(wrong))
    }

    /// Runs an armed or scheduled check and reports it; on failure schedules a retry.
    fn run_check(&mut self, why: &str, heard: Instant) {
        let started = Instant::now();
        match self.check() {
            Ok(outcome) => {
                self.retry_at = None;
                self.backoff = FIRST_BACKOFF;
                if let Outcome::Rebuilt(wrong) = outcome {
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
                tracing::warn!(
                    "daemon: checking lanyard's nftables tables after {why} failed: {e}; retrying in {:?}",
                    self.backoff
                );
                self.retry_at = Some(Instant::now() + self.backoff);
                self.armed.get_or_insert(Armed {
                    first: heard,
                    last: heard,
                    why: why.to_string(),
                });
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
            }
        }
    }

    fn gc(&mut self) {
        let report = crate::open(self.cli).and_then(|mut engine| engine.gc());
        match report {
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

/// The tombstone hand-off socket ([`handoff`]) and the thread deleting what
/// arrives on it.
struct HandOff {
    path: std::path::PathBuf,
}

impl HandOff {
    /// Binds `daemon.sock` in the run directory (made 0700 if missing) and starts the
    /// reaper thread. Another live daemon on the socket is an error.
    fn start(cli: &Cli) -> Result<HandOff> {
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
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || reaper(&rx))
            .map_err(|e| fail("starting the reaper thread for", e))?;
        Ok(HandOff { path })
    }

    /// Removes the socket file, so that CLI calls fork their own reapers again
    /// without trying it first.
    fn stop(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The reaper thread: deletes the tombstones handed over, in their namespaces. It
/// moves between namespaces and does nothing else. If its socket fails it ends;
/// senders then get `ECONNREFUSED` and fork their own workers.
fn reaper(rx: &handoff::Receiver) {
    loop {
        match rx.recv() {
            Ok(items) => {
                for (netns, name) in items {
                    match handoff::delete_in(netns.as_fd(), &name) {
                        Ok(()) => tracing::debug!("daemon: deleted tombstone {name}"),
                        // Deleted already (by gc), or its namespace went with it.
                        Err(e) => tracing::debug!("daemon: tombstone {name}: {e}"),
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                tracing::warn!("daemon: ignored a tombstone hand-off: {e}")
            }
            Err(e) => {
                tracing::warn!(
                    "daemon: tombstone hand-off socket failed ({e}); detaches fork their own reapers"
                );
                return;
            }
        }
    }
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
    let interval = Duration::from_secs(args.interval);
    let gc_interval = (args.gc_interval > 0).then(|| Duration::from_secs(args.gc_interval));
    let debounce = Duration::from_millis(args.debounce_ms);
    let signals = Signals::new()?;
    // Held open for the daemon's life: while one connection is open, every CLI
    // call's connection finds the WAL index ready instead of rebuilding it from
    // the WAL (a third of the cost of opening the store).
    let _store = lanyard_store::SqliteStore::open(&cli.state_dir)?;
    // After the signal mask is set (the reaper thread inherits it) and the last
    // fallible step but the first check: a daemon that fails to start leaves no
    // socket behind.
    let handoff = HandOff::start(cli)?;
    let mut d = Daemon {
        cli,
        expected: expected_tables(),
        watch: None,
        armed: None,
        retry_at: None,
        backoff: FIRST_BACKOFF,
    };
    d.ensure_watch();
    // The first check before saying so: whoever waits for the line below can rely on
    // the tables having been checked, and on every later change being heard.
    d.armed = None;
    d.run_check("start-up", Instant::now());
    let mut next_tick = Instant::now() + interval;
    let mut next_gc = gc_interval.map(|g| Instant::now() + g);
    println!(
        "lanyard daemon: watching nftables for lanyard's tables (pid {}, check every {}s, gc {})",
        std::process::id(),
        args.interval,
        gc_interval.map_or("off".to_string(), |g| format!("every {}s", g.as_secs()))
    );
    loop {
        d.ensure_watch();
        let now = Instant::now();
        let check_at = match &d.armed {
            Some(a) => a.due(debounce).max(d.retry_at.unwrap_or(now)),
            None => next_tick,
        };
        let wake = [Some(check_at), Some(next_tick), next_gc]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(next_tick);
        let mut fds = vec![signals.fd.as_raw_fd()];
        fds.extend(d.watch.as_ref().map(|w| w.as_raw_fd()));
        let ready = poll(&fds, wake.saturating_duration_since(now));
        if ready[0] {
            for sig in signals.read() {
                match sig {
                    libc::SIGHUP => d.arm("SIGHUP"),
                    _ => {
                        handoff.stop();
                        println!("lanyard daemon: stopped (signal {sig})");
                        return Ok(0);
                    }
                }
            }
        }
        if ready.get(1).copied().unwrap_or(false) {
            d.take_events();
        }
        let now = Instant::now();
        let armed_due = d
            .armed
            .as_ref()
            .is_some_and(|a| now >= a.due(debounce) && d.retry_at.is_none_or(|r| now >= r));
        if armed_due || now >= next_tick {
            let (heard, why) = d
                .armed
                .take()
                .map_or((now, "the periodic check".to_string()), |a| {
                    (a.first, a.why)
                });
            d.run_check(&why, heard);
            next_tick = Instant::now() + interval;
        }
        if let Some(g) = next_gc.filter(|g| now >= *g) {
            d.gc();
            next_gc = Some(g.max(Instant::now()) + gc_interval.unwrap_or(interval));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_tables_follow_the_ruleset() {
        let t = expected_tables();
        let fams: Vec<&str> = t.iter().map(|e| e.family).collect();
        assert_eq!(fams, ["inet", "bridge"]);
        let inet = &t[0].shape;
        assert_eq!(inet.chains.get("prerouting"), Some(&1));
        assert_eq!(inet.chains.get("published"), Some(&4));
        assert_eq!(inet.chains.get("postrouting"), Some(&7));
        assert_eq!(inet.chains.get("forward"), Some(&6));
        assert!(inet.sets.contains("dnat4_any") && inet.sets.contains("bridges"));
        assert_eq!(inet.sets.len(), 13);
        let bridge = &t[1].shape;
        assert_eq!(bridge.chains.get("prerouting"), Some(&9));
        assert_eq!(bridge.sets.len(), 4);
        assert_eq!((t[0].number, t[1].number), (1, 7));
    }

    #[test]
    fn an_armed_check_waits_for_quiet_but_not_forever() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut a = Armed {
            first: t0,
            last: t0,
            why: "x".into(),
        };
        assert_eq!(a.due(ms(20)), t0 + ms(20));
        a.last = t0 + ms(100);
        assert_eq!(a.due(ms(20)), t0 + ms(120));
        a.last = t0 + ms(1000);
        assert_eq!(a.due(ms(20)), t0 + MAX_QUIET_WAIT);
    }
}
