//! Which store the binary runs on: SQLite in `--state-dir` (the default), or an
//! etcd cluster several hosts share (`--store etcd://HOST:PORT[,…]`, or `store =
//! "etcd://…"` in the config file). The etcd client (and its small runtime) is made
//! only when an etcd store is chosen.
//!
//! On a shared store each host keeps `meta/alive/NODE` bound to an etcd lease,
//! renewed by `lanyard daemon` ([`heartbeat`]); `lanyard gc --host NODE`
//! ([`forget_host`]) frees a dead host's endpoints and addresses and refuses while
//! that key lives. The heartbeat thread also frees, now and then, the endpoints of
//! every host that once held a lease (`meta/leased/NODE`) and lost it.
//!
//! On etcd, what every transaction saw of networks and this host's endpoints goes
//! into this host's local copy ([`crate::local_copy`]); the read-only verbs
//! ([`reads_only`]) answer from it while the cluster is unreachable, and say so.

use crate::cli::{Cli, Command, EndpointCmd, NetworkCmd};
use crate::local_copy::{CopyFile, Fallback};
use lanyard_core::store::{Store, Tx};
use lanyard_core::{Error, Result};
use lanyard_store::SqliteStore;
use lanyard_store_etcd::{EtcdStore, EtcdUrl};
use std::cell::OnceCell;
use std::path::Path;
use std::time::Duration;

/// How long a host's lease lives without renewal: after this, other hosts take it
/// for dead and free its addresses. `LANYARD_LEASE_TTL` (seconds) overrides it.
pub const LEASE_TTL: Duration = Duration::from_secs(30);

/// The lease's time to live: [`LEASE_TTL`], or `LANYARD_LEASE_TTL` seconds.
fn lease_ttl() -> Duration {
    std::env::var("LANYARD_LEASE_TTL")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(LEASE_TTL)
}

/// The store the binary runs on.
#[derive(Debug)]
pub enum AnyStore {
    /// One host: `STATE_DIR/state.db`.
    Sqlite(SqliteStore),
    /// Several hosts: an etcd cluster, and this host's local copy of it.
    Etcd(Box<Shared>),
}

impl Store for AnyStore {
    fn read<T>(&self, f: &mut dyn FnMut(&dyn Tx) -> Result<T>) -> Result<T> {
        match self {
            AnyStore::Sqlite(s) => s.read(f),
            AnyStore::Etcd(s) => s.read(f),
        }
    }

    fn write<T>(&self, f: &mut dyn FnMut(&mut dyn Tx) -> Result<T>) -> Result<T> {
        match self {
            AnyStore::Sqlite(s) => s.write(f),
            AnyStore::Etcd(s) => s.write(f),
        }
    }
}

impl AnyStore {
    /// When a read-only verb answers from the local copy (the cluster being out of
    /// reach): why, and the copy's time.
    pub fn fallback(&self) -> Option<&Fallback> {
        match self {
            AnyStore::Etcd(s) => s.down.get(),
            AnyStore::Sqlite(_) => None,
        }
    }
}

/// An etcd store with this host's local copy: every transaction's records go
/// into the copy; a read-only verb whose cluster is unreachable reads the copy.
#[derive(Debug)]
pub struct Shared {
    /// `None`: the cluster was unreachable when opened (`down` is set).
    etcd: Option<Box<dyn SharedStore>>,
    /// This host's copy.
    copy: CopyFile,
    /// Whether reads may answer from the copy (a read-only verb).
    reads_may_fall_back: bool,
    /// The copy, once the cluster turned out unreachable: later reads go to it.
    down: OnceCell<Fallback>,
}

/// The etcd store as an object: `lanyard` names no etcd code, so the linker leaves
/// the etcd client out of it (only `lanyardd` makes one: [`crate::full`]). One
/// dynamic call per transaction.
pub trait SharedStore: std::fmt::Debug + Send {
    /// [`Store::read`], its result kept by the closure.
    fn read_dyn(&self, f: &mut dyn FnMut(&dyn Tx) -> Result<()>) -> Result<()>;
    /// [`Store::write`], its result kept by the closure.
    fn write_dyn(&self, f: &mut dyn FnMut(&mut dyn Tx) -> Result<()>) -> Result<()>;
    /// What the last transaction saw ([`EtcdStore::take_seen`]).
    fn take_seen(&self) -> Option<lanyard_store_etcd::Seen>;
}

impl SharedStore for EtcdStore {
    fn read_dyn(&self, f: &mut dyn FnMut(&dyn Tx) -> Result<()>) -> Result<()> {
        self.read(f)
    }

    fn write_dyn(&self, f: &mut dyn FnMut(&mut dyn Tx) -> Result<()>) -> Result<()> {
        self.write(f)
    }

    fn take_seen(&self) -> Option<lanyard_store_etcd::Seen> {
        EtcdStore::take_seen(self)
    }
}

/// [`SharedStore::read_dyn`] with a result.
fn read_shared<T>(s: &dyn SharedStore, f: &mut dyn FnMut(&dyn Tx) -> Result<T>) -> Result<T> {
    let mut out = None;
    s.read_dyn(&mut |tx| {
        out = Some(f(tx)?);
        Ok(())
    })?;
    kept(out)
}

/// [`SharedStore::write_dyn`] with a result.
fn write_shared<T>(s: &dyn SharedStore, f: &mut dyn FnMut(&mut dyn Tx) -> Result<T>) -> Result<T> {
    let mut out = None;
    s.write_dyn(&mut |tx| {
        out = Some(f(tx)?);
        Ok(())
    })?;
    kept(out)
}

/// The result a closure left in `out` (a transaction that succeeded ran it).
fn kept<T>(out: Option<T>) -> Result<T> {
    out.ok_or_else(|| Error::Other("store: a transaction ended without running".into()))
}

impl Shared {
    fn read<T>(&self, f: &mut dyn FnMut(&dyn Tx) -> Result<T>) -> Result<T> {
        if let Some(fb) = self.down.get() {
            return fb.read(f);
        }
        let Some(etcd) = &self.etcd else {
            return Err(Error::Unreachable("etcd: not connected".into()));
        };
        match read_shared(etcd.as_ref(), f) {
            Ok(v) => {
                self.keep_copy(etcd.as_ref());
                Ok(v)
            }
            Err(Error::Unreachable(why)) if self.reads_may_fall_back => {
                match self.fall_back(&why) {
                    Some(fb) => fb.read(f),
                    None => Err(Error::Unreachable(why)),
                }
            }
            Err(e) => Err(e),
        }
    }

    fn write<T>(&self, f: &mut dyn FnMut(&mut dyn Tx) -> Result<T>) -> Result<T> {
        if let Some(fb) = self.down.get() {
            return fb.write(f);
        }
        let Some(etcd) = &self.etcd else {
            return Err(Error::Unreachable("etcd: not connected".into()));
        };
        let v = write_shared(etcd.as_ref(), f)?;
        self.keep_copy(etcd.as_ref());
        Ok(v)
    }

    /// Merges what the last transaction saw into the copy; a failure only warns
    /// (the cluster has the state; the copy is for when it is out of reach).
    fn keep_copy(&self, etcd: &dyn SharedStore) {
        if let Some(seen) = etcd.take_seen() {
            if let Err(e) = self.copy.merge(&seen) {
                tracing::warn!("{e}");
            }
        }
    }

    /// Switches to the local copy, if there is one, saying so on stderr.
    fn fall_back(&self, why: &str) -> Option<&Fallback> {
        let copy = match self.copy.load() {
            Ok(c) => c?,
            Err(e) => {
                tracing::warn!("{e}");
                return None;
            }
        };
        let fb = self.down.get_or_init(|| Fallback::new(&copy, why));
        eprintln!("lanyard: {}", fb.notice());
        Some(fb)
    }
}

/// Whether `cmd` only reads the store, so that it may answer from the local copy
/// while a shared store is unreachable: listings, inspections, `endpoint check`
/// and `doctor`.
pub fn reads_only(cmd: &Command) -> bool {
    matches!(
        cmd,
        Command::Network(NetworkCmd::Ls { .. } | NetworkCmd::Inspect { .. })
            | Command::Endpoint(
                EndpointCmd::Ls { .. } | EndpointCmd::Inspect { .. } | EndpointCmd::Check { .. }
            )
            | Command::Doctor(_)
    )
}

/// The members of the etcd store `cli` names, if it names one (nothing is opened:
/// `lanyard info` answers while the cluster is down).
pub fn etcd_members(cli: &Cli) -> Option<String> {
    let url = match &cli.store {
        Some(s) => s.clone(),
        None => lanyard_core::config::Config::store_of(&cli.config).ok()??,
    };
    EtcdUrl::parse(&url).ok().map(|u| u.endpoints.join(","))
}

/// The store `cli` names: `--store`/`LANYARD_STORE`, else the config file's
/// `store`, else SQLite in `--state-dir`.
pub fn open(cli: &Cli) -> Result<AnyStore> {
    let from_config;
    let url = match &cli.store {
        Some(s) => Some(s.as_str()),
        None => {
            from_config = lanyard_core::config::Config::store_of(&cli.config)?;
            from_config.as_deref()
        }
    };
    let node = crate::node(cli);
    open_shared(
        url,
        &cli.state_dir,
        node.as_deref(),
        reads_only(&cli.command),
    )
}

/// Opens the etcd store at `url` for host `node`, observing what its transactions
/// see (the full build's [`crate::full::Full::etcd`]).
pub fn open_etcd(url: &str, node: Option<&str>) -> Result<Box<dyn SharedStore>> {
    Ok(Box::new(EtcdStore::open(url)?.with_node(node).observing()))
}

/// The store `url` names (`None` or `sqlite`: SQLite in `state_dir`), for host
/// `node` (an etcd store then finds namespaces among that host's endpoints only).
pub fn open_url(url: Option<&str>, state_dir: &Path, node: Option<&str>) -> Result<AnyStore> {
    open_shared(url, state_dir, node, false)
}

/// [`open_url`]; with `reads_only`, an unreachable etcd store answers reads from
/// this host's local copy, if it has one.
fn open_shared(
    url: Option<&str>,
    state_dir: &Path,
    node: Option<&str>,
    reads_only: bool,
) -> Result<AnyStore> {
    match url {
        None | Some("sqlite") => Ok(AnyStore::Sqlite(SqliteStore::open(state_dir)?)),
        Some(u) if EtcdUrl::is_etcd(u) => {
            let parsed = EtcdUrl::parse(u)?;
            // The host's own marker of the store's identity, and its local copy,
            // live in the state dir.
            private_dir(state_dir)?;
            let copy = CopyFile::new(
                state_dir,
                &format!("{}{}", parsed.endpoints.join(","), parsed.prefix),
                node,
            );
            let shared = Shared {
                etcd: None,
                copy,
                reads_may_fall_back: reads_only,
                down: OnceCell::new(),
            };
            let etcd = match (crate::full::get()?.etcd)(u, node) {
                Ok(s) => s,
                Err(Error::Unreachable(why)) if reads_only => {
                    shared.fall_back(&why).ok_or(Error::Unreachable(why))?;
                    return Ok(AnyStore::Etcd(Box::new(shared)));
                }
                Err(e) => return Err(e),
            };
            Ok(AnyStore::Etcd(Box::new(Shared {
                etcd: Some(etcd),
                ..shared
            })))
        }
        Some(u) => Err(Error::invalid(
            "--store",
            u,
            "must be sqlite or etcd://HOST:PORT[,HOST:PORT…]",
        )),
    }
}

/// Creates `dir` (mode 0700) if missing.
fn private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| {
            Error::Other(format!(
                "creating the state directory {}: {e}",
                dir.display()
            ))
        })
}

fn alive_key(node: &str) -> String {
    format!("alive/{node}")
}

fn leased_key(node: &str) -> String {
    format!("leased/{node}")
}

/// Frees every endpoint record of `node` (another host, dead) and what it held:
/// one transaction per endpoint, each refused if `node` holds a live lease by then
/// (it reads the lease key, so a host that comes back mid-sweep stops it). The
/// kernel side is that host's and is not touched. The ids freed.
pub fn forget_host(store: &AnyStore, node: &str, me: Option<&str>) -> Result<Vec<String>> {
    if !matches!(store, AnyStore::Etcd(_)) {
        return Err(Error::invalid(
            "--host",
            node,
            "only a store several hosts share has other hosts' endpoints (--store etcd://…)",
        ));
    }
    if me == Some(node) {
        return Err(Error::invalid(
            "--host",
            node,
            "is this host: `lanyard gc` without --host cleans up after it",
        ));
    }
    let ids: Vec<String> = store.read(&mut |tx| {
        Ok(tx
            .endpoints()?
            .into_iter()
            .filter(|e| e.node.as_deref() == Some(node))
            .map(|e| e.id)
            .collect())
    })?;
    let mut freed = vec![];
    for id in ids {
        let gone = store.write(&mut |tx| {
            if tx.meta(&alive_key(node))?.is_some() {
                return Err(Error::Conflict(format!(
                    "host {node} holds a live lease (its lanyard daemon is running): \
                     its addresses stay its own"
                )));
            }
            match tx.endpoint(&id)? {
                Some(e) if e.node.as_deref() == Some(node) => {
                    tx.delete_endpoint(&id)?;
                    Ok(true)
                }
                _ => Ok(false),
            }
        })?;
        if gone {
            freed.push(id);
        }
    }
    Ok(freed)
}

/// The hosts with endpoints in the store that once held a lease and hold none now.
fn dead_hosts(store: &AnyStore, me: &str) -> Result<Vec<String>> {
    store.read(&mut |tx| {
        let mut nodes: Vec<String> = tx.endpoints()?.into_iter().filter_map(|e| e.node).collect();
        nodes.sort();
        nodes.dedup();
        let mut dead = vec![];
        for n in nodes.into_iter().filter(|n| n != me) {
            if tx.meta(&leased_key(&n))?.is_some() && tx.meta(&alive_key(&n))?.is_none() {
                dead.push(n);
            }
        }
        Ok(dead)
    })
}

/// `lanyard daemon` on a shared store: a thread that keeps this host's lease alive
/// (renewed every third of its time to live, [`LEASE_TTL`]) and, every `sweep` (if not zero), frees
/// the endpoints of hosts whose lease expired. Nothing for SQLite or without a
/// node name. Failures are logged and retried; the thread ends with the process.
pub fn heartbeat(cli: &Cli, sweep: Duration) {
    let Some(node) = crate::node(cli) else {
        return;
    };
    let url = match &cli.store {
        Some(s) => Some(s.clone()),
        None => lanyard_core::config::Config::store_of(&cli.config)
            .ok()
            .flatten(),
    };
    let Some(url) = url.filter(|u| EtcdUrl::is_etcd(u)) else {
        return;
    };
    let state_dir = cli.state_dir.clone();
    let spawned = std::thread::Builder::new()
        .name("etcd-lease".into())
        .spawn(move || beat(&url, &node, &state_dir, sweep));
    if let Err(e) = spawned {
        tracing::warn!("etcd lease thread not started: {e}");
    }
}

/// How often the daemon lists every network and endpoint into this host's local
/// copy (what other hosts changed comes in so; this host's own changes are merged
/// as they are made).
const COPY_REFRESH: Duration = Duration::from_secs(60);

fn beat(url: &str, node: &str, state_dir: &Path, sweep: Duration) {
    let ttl = lease_ttl();
    let mut lease = None;
    let mut last_sweep = std::time::Instant::now();
    let mut last_refresh: Option<std::time::Instant> = None;
    loop {
        let r = EtcdStore::open(url).and_then(|s| -> Result<()> {
            loop {
                let ok = match lease {
                    Some(id) => s.keep_alive(id)?,
                    None => false,
                };
                if !ok {
                    let id = s.lease_key(&format!("meta/{}", alive_key(node)), ttl)?;
                    s.write(&mut |tx| tx.set_meta(&leased_key(node), Some("1")))?;
                    tracing::info!("etcd: host {node} holds lease {id:x}");
                    lease = Some(id);
                }
                if last_refresh.is_none_or(|t| t.elapsed() >= COPY_REFRESH) {
                    last_refresh = Some(std::time::Instant::now());
                    let store = open_shared(Some(url), state_dir, Some(node), false)?;
                    store.read(&mut |tx| {
                        tx.networks()?;
                        tx.endpoints()?;
                        Ok(())
                    })?;
                }
                if !sweep.is_zero() && last_sweep.elapsed() >= sweep {
                    last_sweep = std::time::Instant::now();
                    let store = open_shared(Some(url), state_dir, Some(node), false)?;
                    for dead in dead_hosts(&store, node)? {
                        let freed = forget_host(&store, &dead, Some(node))?;
                        tracing::info!(
                            "etcd: host {dead} lost its lease; freed its {} endpoints",
                            freed.len()
                        );
                    }
                }
                std::thread::sleep(ttl / 3);
            }
        });
        if let Err(e) = r {
            tracing::warn!("etcd lease of host {node}: {e}; retrying");
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn only_verbs_that_read_may_answer_from_the_local_copy() {
        let verb = |args: &str| {
            let cli = Cli::try_parse_from(format!("lanyard {args}").split(' ')).unwrap();
            reads_only(&cli.command)
        };
        for args in [
            "network ls",
            "network inspect lan",
            "endpoint ls --json",
            "endpoint inspect e1",
            "endpoint check e1",
            "doctor",
        ] {
            assert!(verb(args), "{args}");
        }
        for args in [
            "attach lan --netns /run/netns/c",
            "detach e1",
            "network create lan",
            "network rm lan",
            "endpoint rm e1",
            "gc",
            "restore",
        ] {
            assert!(!verb(args), "{args}");
        }
    }
}
