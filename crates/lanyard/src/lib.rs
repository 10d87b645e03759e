//! lanyard's front ends as a library, run by two binaries built from it:
//!
//! - `lanyard` ([`main_cli`]): the CLI and the CNI plugin. It parses the command
//!   line, opens the engine (SQLite store + netlink kernel) and calls one engine
//!   verb, or hands `attach`/`detach` to a running daemon. It links neither the
//!   daemon's async runtime, HTTP and DNS servers nor the etcd client: every short
//!   call maps, relocates and unmaps only what a short call uses.
//! - `lanyardd` ([`main_full`]): the same CLI plus `lanyard daemon` and the etcd
//!   store. `lanyard` executes it (next to itself, same arguments) for a verb that
//!   needs either; it can also be run directly.
//!
//! Only this code turns errors into messages and exit codes: 0 ok, 1 error, 2
//! usage or invalid input, 3 conflict, 4 not found, 5 unsupported by this kernel, 6
//! try again (from [`lanyard_core::ErrorKind`]).
//!
//! A plain Rust `main` in each binary: the standard runtime ignores SIGPIPE (a
//! reader that went away is an error on write, not death: the daemon writes sockets
//! whose peers may hang up; `lanyard run` gives its command the default back), opens
//! /dev/null on a closed fd 0-2, and turns a panic into exit status 101.

mod argv;
mod caps;
mod cli;
mod cni;
mod daemon;
mod delegate;
mod docker;
mod doctor;
mod full;
mod info;
mod local_copy;
mod log;
mod manpage;
mod output;
mod run;
mod run_dns;
mod store;

use crate::output::out;
use clap::{CommandFactory, FromArgMatches};
use cli::{Cli, Command, EndpointCmd, GcArgs, NetworkCmd};
use lanyard_core::config::Config;
use lanyard_core::kernel::{FailAt, Kernel};
use lanyard_core::model::{DetachRequest, NetworkRequest};
use lanyard_core::{Error, Result};
use lanyard_engine::Engine;
use lanyard_kernel::handoff::Change;
use lanyard_kernel::Netlink;

/// The engine as the binary uses it.
pub type Lanyard = Engine<store::AnyStore, Box<dyn Kernel>>;

/// Test hook: `LANYARD_FAIL_AT=N` makes the N-th kernel step (0-based) fail, so lab
/// tests can check rollback on a real kernel at every step.
const FAIL_AT_ENV: &str = "LANYARD_FAIL_AT";

/// Test hook of the crash suite: `LANYARD_KILL_AT=N` makes the process kill itself
/// with SIGKILL just before the N-th kernel step (0-based), as a `kill -9` would.
const KILL_AT_ENV: &str = "LANYARD_KILL_AT";

/// A test hook's step number, if set.
fn hook(env: &str) -> Result<Option<usize>> {
    match std::env::var(env) {
        Err(_) => Ok(None),
        Ok(v) => v
            .parse()
            .map(Some)
            .map_err(|_| Error::invalid(env, v, "must be a number")),
    }
}

/// Whether a test hook that counts kernel steps is set (then no engine is kept
/// across calls: the count is per call).
pub(crate) fn test_hooks_set() -> bool {
    std::env::var_os(FAIL_AT_ENV).is_some() || std::env::var_os(KILL_AT_ENV).is_some()
}

/// `kill -9` of this process (the crash suite's hook).
fn kill_self() -> ! {
    let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    std::process::abort()
}

pub(crate) fn open(cli: &Cli) -> Result<Lanyard> {
    open_with(cli, store::open(cli)?)
}

/// The engine over `store` (the daemon keeps one open across delegated verbs) and a
/// fresh netlink kernel.
pub(crate) fn open_with(cli: &Cli, store: store::AnyStore) -> Result<Lanyard> {
    open_with_reaper(cli, store, None)
}

/// [`open_with`], with tombstones queued for `reaper` (the daemon's own reaper
/// thread) when there is one.
pub(crate) fn open_with_reaper(
    cli: &Cli,
    store: store::AnyStore,
    reaper: Option<lanyard_kernel::handoff::LocalReaper>,
) -> Result<Lanyard> {
    // Only `network create` reads the config (its default address pools): every
    // other verb is spared the file, and a broken config never blocks a detach.
    let config = match &cli.command {
        Command::Network(NetworkCmd::Create(_)) => Config::load(&cli.config)?,
        _ => Config::default(),
    };
    let mut netlink = Netlink::new()?;
    netlink.hand_off_to(cli.run_dir.join(lanyard_kernel::handoff::SOCKET));
    if let Some(r) = reaper {
        netlink.hand_off_in_process(r);
    }
    // Every verb but `run` (which outlives its detaches) and the daemon (whose
    // checks open engines of their own) exits right after it.
    if !matches!(cli.command, Command::Run(_) | Command::Daemon(_)) {
        netlink.exits_soon();
    }
    let kernel: Box<dyn Kernel> = match (hook(FAIL_AT_ENV)?, hook(KILL_AT_ENV)?) {
        (None, None) => Box::new(netlink),
        (Some(at), _) => Box::new(FailAt::new(netlink, at)),
        (None, Some(at)) => {
            let mut k = FailAt::new(netlink, at);
            k.kill = Some(kill_self);
            Box::new(k)
        }
    };
    let engine = Engine::new(store, kernel, config)
        .with_run_dir(&cli.run_dir)
        .with_state_dir(&cli.state_dir);
    Ok(match node(cli) {
        Some(n) => engine.with_node(&n),
        None => engine,
    })
}

/// This host's node name: `--node`, else /etc/machine-id (stable across host
/// renames), else none (records then count as this host's everywhere).
pub(crate) fn node(cli: &Cli) -> Option<String> {
    cli.node.clone().or_else(|| {
        let id = std::fs::read_to_string("/etc/machine-id").ok()?;
        Some(id.trim().to_string()).filter(|s| !s.is_empty())
    })
}

/// The `lanyard` binary: everything but the daemon and the etcd store, which
/// `full.rs` finds in `lanyardd`.
pub fn main_cli() {
    run()
}

/// The `lanyardd` binary: [`main_cli`] plus `lanyard daemon` and the etcd store.
pub fn main_full() {
    full::provide(full::Full {
        daemon: daemon::run,
        etcd: store::open_etcd,
    });
    run()
}

fn run() {
    cni::run_if_plugin(); // returns unless CNI_COMMAND is set or argv[0] is lanyard-ipam
    let cli = parse_args();
    log::init(matches!(cli.command, Command::Daemon(_)));
    let code = match dispatch(&cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("lanyard: {e}");
            e.exit_code()
        }
    };
    std::process::exit(code);
}

/// The command line: a plain `attach`/`detach` without clap ([`argv`]), else
/// `Cli::parse()`, without freeing clap's command tree and matches: the process
/// exits soon after, and the frees were ~6% of a short call's instructions
/// (callgrind: 70k of an attach's 1.1M). Errors, `--help` and `--version` exit
/// here, as with `parse()`.
fn parse_args() -> Cli {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let Some(cli) = argv::parse(&args, &|var| std::env::var_os(var)) {
        return cli;
    }
    if let Some(cli) = Cli::parse_hot(&args) {
        return cli;
    }
    let cmd = Box::leak(Box::new(Cli::command()));
    let parsed = cmd
        .try_get_matches_from_mut(args)
        .and_then(|m| Cli::from_arg_matches_mut(Box::leak(Box::new(m))));
    parsed.unwrap_or_else(|e| e.format(cmd).exit())
}

fn dispatch(cli: &Cli) -> Result<i32> {
    match &cli.command {
        Command::Completions { shell } => {
            clap_complete::generate(
                *shell,
                &mut Cli::command(),
                "lanyard",
                &mut std::io::stdout(),
            );
            return Ok(0);
        }
        Command::Man { dir } => return manpage::run(dir.as_deref()),
        Command::Info(f) => return info::run(cli, f.json),
        // Opens the store and kernel afresh for every check.
        Command::Daemon(d) => return (full::get()?.daemon)(cli, d),
        Command::Attach(_) | Command::Detach(_) => {
            if let Some(code) = delegated(cli)? {
                return Ok(code);
            }
        }
        _ => {}
    }
    let mut engine = open(cli)?;
    let result = verb(&mut engine, cli);
    // The process exits right after: leave closing the store, the sockets and the
    // nft context to the kernel. An SQLite connection left open at exit is as safe
    // as a crash after the last commit (that is what WAL guarantees), and closing it
    // cost ~5% of a short call (unmapping, freeing every cached page).
    std::mem::forget(engine);
    result
}

/// `attach` or `detach` run by `lanyard daemon` ([`delegate`]): its exit code, or
/// `None` when no daemon took it (the caller then runs it itself).
fn delegated(cli: &Cli) -> Result<Option<i32>> {
    use delegate::{Failed, Outcome, Verb};
    let (verb, ns, json) = match &cli.command {
        Command::Attach(a) => {
            let Some(netns) = a.ns.path() else {
                return Ok(None); // the local path words the error
            };
            // The daemon resolves nothing relative to the caller's directory.
            let Ok(netns) = std::path::absolute(&netns) else {
                return Ok(None);
            };
            let req = a.opts.request(&a.network, netns, a.ifname.clone());
            (Verb::Attach(Box::new(req)), &a.ns, a.json)
        }
        Command::Detach(d) => {
            let req = match d.ns.path().map(std::path::absolute) {
                Some(Ok(netns)) => DetachRequest::Netns {
                    network: d.target.clone(),
                    netns,
                },
                Some(Err(_)) => return Ok(None),
                None => DetachRequest::Endpoint(d.target.clone()),
            };
            (Verb::Detach(req), &d.ns, false)
        }
        _ => return Ok(None),
    };
    match delegate::to_daemon(cli, verb) {
        None => Ok(None),
        Some(Ok(Outcome::Attached(ep) | Outcome::CniAdded(ep, _))) => {
            if json {
                output::json(&ep)?;
            } else {
                out!("{}", ep.id);
            }
            Ok(Some(0))
        }
        Some(Ok(Outcome::Detached(_))) => Ok(Some(0)),
        Some(Err(Failed::Error(e))) => Err(ns.blame(e)),
        Some(Err(Failed::Raw(code, message))) => {
            eprintln!("lanyard: {message}");
            Ok(Some(code))
        }
    }
}

/// Runs the engine verb `cli` asks for.
fn verb(engine: &mut Lanyard, cli: &Cli) -> Result<i32> {
    match &cli.command {
        Command::Network(cmd) => network(engine, cmd)?,
        Command::Attach(a) => {
            let netns = a
                .ns
                .path()
                .ok_or_else(|| Error::invalid("--netns", "", "give --netns PATH or --pid PID"))?;
            let ep = engine
                .attach(&a.opts.request(&a.network, netns, a.ifname.clone()))
                .map_err(|e| a.ns.blame(e))?;
            daemon::notify(cli, Change::Added, &ep);
            daemon::lease_note(cli, &ep);
            if a.json {
                output::json(&ep)?;
            } else {
                out!("{}", ep.id);
            }
        }
        Command::Detach(d) => {
            let req = match d.ns.path() {
                Some(netns) => DetachRequest::Netns {
                    network: d.target.clone(),
                    netns,
                },
                None => DetachRequest::Endpoint(d.target.clone()),
            };
            if let Some(ep) = engine.detach(&req).map_err(|e| d.ns.blame(e))? {
                daemon::notify(cli, Change::Removed, &ep);
            }
        }
        Command::Endpoint(EndpointCmd::Ls { json }) => {
            let eps = engine.endpoints()?;
            if *json {
                output::json(&eps)?;
            } else {
                output::endpoint_table(&eps);
            }
        }
        Command::Endpoint(EndpointCmd::Inspect { endpoint, json }) => {
            let ep = engine.endpoint(endpoint)?;
            if *json {
                output::json(&ep)?;
            } else {
                output::endpoint_detail(&ep);
            }
        }
        Command::Endpoint(cmd) => return endpoint(engine, cli, cmd),
        Command::Run(r) => return run::run(engine, r, &cli.run_dir),
        Command::Restore(f) => report(engine.restore()?, f.json)?,
        Command::Doctor(f) => return doctor::run(engine, cli, f.json),
        Command::Gc(GcArgs {
            host: Some(host), ..
        }) => {
            let freed = store::forget_host(&engine.store, host, engine.node.as_deref())?;
            out!("freed {} endpoints of host {host}", freed.len());
        }
        Command::Gc(f) => {
            if f.adopt_store {
                engine.adopt_store()?;
            }
            report(engine.gc()?, f.json)?
        }
        Command::Completions { .. }
        | Command::Man { .. }
        | Command::Info(_)
        | Command::Daemon(_) => {
            unreachable!("handled above")
        }
    }
    Ok(0)
}

/// The split lifecycle's verbs (`lanyard endpoint create/plug/unplug/rm/publish/
/// unpublish/check`).
fn endpoint(engine: &mut Lanyard, cli: &Cli, cmd: &EndpointCmd) -> Result<i32> {
    use lanyard_core::owner::{EndpointRef, PlugTarget};
    let key = |k: &str| EndpointRef::Key(k.to_string());
    let print = |ep: &lanyard_core::model::Endpoint, json: bool| {
        if json {
            output::json(ep)
        } else {
            out!("{}", ep.id);
            Ok(())
        }
    };
    match cmd {
        EndpointCmd::Ls { .. } | EndpointCmd::Inspect { .. } => unreachable!("handled in verb"),
        EndpointCmd::Create {
            network,
            opts,
            json,
        } => {
            if opts.unprivileged_port_start.is_some() {
                return Err(Error::invalid(
                    "--unprivileged-port-start",
                    "",
                    "is a namespace setting: give it to `endpoint plug` or `attach`",
                ));
            }
            if let Some(r) = opts.routes.first() {
                return Err(Error::invalid(
                    "--route",
                    r,
                    "give it to `attach` or `run` (an allocated endpoint routes nothing yet)",
                ));
            }
            print(&engine.allocate(&opts.allocation(network))?, *json)?;
        }
        EndpointCmd::Plug {
            endpoint,
            ns,
            ifname,
            json,
        } => {
            let netns = ns
                .path()
                .ok_or_else(|| Error::invalid("--netns", "", "give --netns PATH or --pid PID"))?;
            let to = PlugTarget::Netns {
                netns,
                ifname: ifname.clone(),
                unprivileged_port_start: None,
            };
            let ep = engine.plug(&key(endpoint), &to)?;
            daemon::notify(cli, Change::Added, &ep);
            print(&ep, *json)?;
        }
        EndpointCmd::Unplug { endpoint } => {
            if engine.unplug(&key(endpoint))?.is_none() {
                return Err(Error::not_found("endpoint", endpoint));
            }
        }
        EndpointCmd::Rm { endpoint } => {
            if let Some(ep) = engine.release(&key(endpoint))? {
                daemon::notify(cli, Change::Removed, &ep);
            }
        }
        EndpointCmd::Publish { endpoint, publish } => {
            engine.publish(&key(endpoint), publish)?;
        }
        EndpointCmd::Unpublish { endpoint, publish } => {
            engine.unpublish(&key(endpoint), publish)?;
        }
        EndpointCmd::Check { endpoint, json } => {
            let r = engine.check(&key(endpoint))?;
            if *json {
                output::json(&r)?;
            } else {
                for p in &r.problems {
                    out!("{p}");
                }
            }
            return Ok(if r.ok() { 0 } else { 1 });
        }
    }
    Ok(0)
}

fn report(r: lanyard_engine::Report, json: bool) -> Result<()> {
    if json {
        output::json(&r)?;
    } else {
        for s in &r.restored {
            out!("restored {s}");
        }
        for s in &r.removed {
            out!("removed {s}");
        }
        for s in &r.errors {
            eprintln!("error: {s}");
        }
    }
    if r.errors.is_empty() {
        Ok(())
    } else {
        Err(Error::Other(format!("{} step(s) failed", r.errors.len())))
    }
}

fn network(engine: &mut Lanyard, cmd: &NetworkCmd) -> Result<()> {
    match cmd {
        NetworkCmd::Create(c) => {
            let net = engine.create_network(&NetworkRequest {
                name: c.name.clone(),
                driver: Some(c.driver.clone()),
                subnets: c.subnet.clone(),
                gateways: c.gateway.clone(),
                ip_ranges: c.ip_range.clone(),
                aux_addresses: c.aux_address.clone(),
                internal: c.internal,
                ipv6: c.ipv6,
                labels: c.label.clone(),
                options: c.opt.clone(),
                ipam_driver: c.ipam_driver.clone(),
            })?;
            out!("{}", net.id);
        }
        NetworkCmd::Ls { json, quiet } => {
            let nets = engine.networks()?;
            if *json {
                output::json(&nets)?;
            } else if *quiet {
                nets.iter().for_each(|n| out!("{}", n.network.name));
            } else {
                output::network_table(&nets);
            }
        }
        NetworkCmd::Inspect { networks, json } => {
            let all = engine.networks()?;
            let mut found = vec![];
            for key in networks {
                let n = engine.network(key)?;
                found.extend(all.iter().find(|s| s.network.id == n.id).cloned());
            }
            if *json {
                output::json(&found)?;
            } else {
                found.iter().for_each(output::network_detail);
            }
        }
        NetworkCmd::Rm { networks } => {
            // Each failure printed once, in order: the last one by main, which also
            // takes its exit code.
            let mut last_err: Option<Error> = None;
            for key in networks {
                match engine.remove_network(key) {
                    Ok(n) => out!("{}", n.name),
                    Err(e) => {
                        if let Some(earlier) = last_err.replace(e) {
                            eprintln!("lanyard: {earlier}");
                        }
                    }
                }
            }
            if let Some(e) = last_err {
                return Err(e);
            }
        }
        NetworkCmd::Prune { .. } => {
            for n in engine.prune_networks()? {
                out!("{}", n.name);
            }
        }
    }
    Ok(())
}
