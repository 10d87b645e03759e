//! The `lanyard` plugin's verbs on the engine: ADD is `attach` keyed by the CNI
//! owner (a network named in the config, or made from its inline fields on first
//! use), DEL is `detach` by owner, CHECK is `check` plus a comparison with the ADD's
//! result, STATUS opens the store and the kernel, GC is `gc_owned` with the valid
//! attachments.
//!
//! With `lanyard daemon` up on the same run and state directories, ADD on a named
//! network and DEL hand their verb to it ([`crate::delegate`]), as the CLI's
//! `attach` and `detach` do: the plugin process then opens no store and no netlink
//! socket. Without a daemon (or one in another namespace, on another store, or too
//! old for the verb) they run here.

use super::conf::{NetConf, Source};
use super::error::{plain, to_cni, CHECK_FAILED, NOT_AVAILABLE, UNKNOWN_CONTAINER};
use super::result::{self, CniError, CniResult};
use super::{dirs, Invocation};
use crate::delegate::{Failed, Outcome, Verb};
use crate::Lanyard;
use lanyard_core::config::Config;
use lanyard_core::kernel::Kernel;
use lanyard_core::model::{
    AttachRequest, DetachRequest, Driver, Endpoint, EndpointState, Network, NetworkRequest,
};
use lanyard_core::owner::{EndpointRef, Owner, OwnerScope};
use lanyard_core::{Error, ErrorKind, Result};
use lanyard_engine::Engine;
use lanyard_kernel::handoff::{self, Change};
use lanyard_kernel::Netlink;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a verb keeps retrying what another process is changing right now, or a
/// store still locked after the store's own 30 s of retries (200 ADDs at once on
/// one emulated CPU starve some of them that long).
const RETRY_FOR: Duration = Duration::from_secs(90);

/// Runs `verb` of the `lanyard` plugin.
pub fn run(
    verb: super::Verb,
    inv: &Invocation,
    conf: &NetConf,
    version: &str,
) -> std::result::Result<Option<String>, CniError> {
    let fail = |e: Error| to_cni(&e, version);
    conf.refuse_unknown().map_err(fail)?;
    let name = conf.network_name().map_err(fail)?;
    let (state, run_dir) = dirs(inv, conf.state_dir.as_ref(), conf.run_dir.as_ref());
    match verb {
        super::Verb::Add => {
            let owner = owner_of(inv, &name)?;
            let netns = inv.require("CNI_NETNS")?.to_string();
            let source = conf.source().map_err(fail)?;
            let wants = conf.wants(inv.args.as_deref()).map_err(fail)?;
            let prev = conf.prev_result().map_err(fail)?;
            let mut dns = conf.dns.clone().unwrap_or_default();
            // With a daemon up, its responder answers in the container's namespace.
            if dns.nameservers.is_empty() && run_dir.join(lanyard_kernel::handoff::SOCKET).exists()
            {
                dns.nameservers.push(crate::run_dns::RESPONDER.into());
            }
            if let (Source::Named(n), true) = (&source, Path::new(&netns).is_absolute()) {
                let req = AttachRequest {
                    network: n.clone(),
                    netns: PathBuf::from(&netns),
                    ifname: Some(owner_ifname(&owner)),
                    ip: wants.ip.clone(),
                    ip6: wants.ip6.clone(),
                    mac: wants.mac.clone(),
                    publish: wants.publish.clone(),
                    owner: Some(owner.clone()),
                    ..Default::default()
                };
                let added = via_daemon(&run_dir, &state, || Verb::CniAdd(Box::new(req.clone())));
                if let Some(r) = added {
                    let (ep, net) = match r.map_err(fail)? {
                        Outcome::CniAdded(ep, net) => (ep, net),
                        other => return Err(fail(unexpected(&other))),
                    };
                    let r = result::of_endpoint(
                        &ep,
                        &host_side(&net, &ep),
                        &netns,
                        net.mtu,
                        &dns,
                        prev,
                    );
                    return Ok(Some(to_json(r.in_version(version))));
                }
            }
            let mut engine = open(&state, &run_dir).map_err(fail)?;
            let net = network_for(&mut engine, &source).map_err(fail)?;
            let req = AttachRequest {
                network: net.id.clone(),
                netns: PathBuf::from(&netns),
                ifname: Some(owner_ifname(&owner)),
                ip: wants.ip,
                ip6: wants.ip6,
                mac: wants.mac,
                publish: wants.publish,
                owner: Some(owner),
                ..Default::default()
            };
            let ep = retrying(|| attach(&mut engine, &req)).map_err(fail)?;
            notify(&run_dir, Change::Added, &ep);
            let r = result::of_endpoint(&ep, &host_side(&net, &ep), &netns, net.mtu, &dns, prev);
            Ok(Some(to_json(r.in_version(version))))
        }
        super::Verb::Del => {
            let owner = owner_of(inv, &name)?;
            let req = DetachRequest::Owner(owner.clone());
            if let Some(r) = via_daemon(&run_dir, &state, || Verb::Detach(req.clone())) {
                return match r.map_err(fail)? {
                    Outcome::Detached(_) => Ok(None),
                    other => Err(fail(unexpected(&other))),
                };
            }
            let mut engine = open(&state, &run_dir).map_err(fail)?;
            let gone =
                retrying(|| engine.detach(&DetachRequest::Owner(owner.clone()))).map_err(fail)?;
            if let Some(ep) = gone {
                notify(&run_dir, Change::Removed, &ep);
            }
            Ok(None)
        }
        super::Verb::Check => {
            let owner = owner_of(inv, &name)?;
            let netns = inv.require("CNI_NETNS")?.to_string();
            let prev = conf.prev_result().map_err(fail)?;
            let mut engine = open(&state, &run_dir).map_err(fail)?;
            check(&mut engine, &owner, &netns, prev.as_ref()).map_err(|mut e| {
                e.cni_version = version.to_string();
                e
            })?;
            Ok(None)
        }
        super::Verb::Status => {
            status(&state, &run_dir, conf).map_err(|e| {
                let mut c = to_cni(&e, version);
                c.code = NOT_AVAILABLE;
                c
            })?;
            Ok(None)
        }
        super::Verb::Gc => {
            gc(&state, &run_dir, &name, conf).map_err(fail)?;
            Ok(None)
        }
        super::Verb::Version => unreachable!("answered before the config is read"),
    }
}

/// The attachment's owner from the environment, each part checked.
pub fn owner_of(inv: &Invocation, network: &str) -> std::result::Result<Owner, CniError> {
    let owner = Owner::Cni {
        network: network.to_string(),
        container_id: inv.require("CNI_CONTAINERID")?.to_string(),
        ifname: inv.require("CNI_IFNAME")?.to_string(),
    };
    owner.validate().map_err(|e| to_cni(&e, ""))?;
    Ok(owner)
}

fn owner_ifname(o: &Owner) -> String {
    match o {
        Owner::Cni { ifname, .. } => ifname.clone(),
        Owner::Docker { .. } => String::new(),
    }
}

/// The daemon's side of a delegated ADD ([`crate::delegate::Verb::CniAdd`]): the
/// named network and the endpoint, as the local ADD finds and makes them.
pub(crate) fn add_here(
    engine: &mut Lanyard,
    mut req: AttachRequest,
) -> Result<(Endpoint, Network)> {
    let net = network_for(engine, &Source::Named(req.network.clone()))?;
    req.network = net.id.clone();
    let ep = attach(engine, &req)?;
    Ok((ep, net))
}

/// Runs `verb` in `lanyard daemon` if one is up for `run` and `state`, retrying
/// what it says to try again (as [`retrying`] does locally). `None`: no daemon
/// took it (also when one went away between tries), run it here.
fn via_daemon(run: &Path, state: &Path, verb: impl Fn() -> Verb) -> Option<Result<Outcome>> {
    let started = Instant::now();
    loop {
        let e = match crate::delegate::to_daemon_at(run, Some(state), verb())? {
            Ok(o) => return Some(Ok(o)),
            Err(Failed::Error(e)) => e,
            Err(Failed::Raw(_, message)) => Error::Other(message),
        };
        if e.kind() != ErrorKind::TryAgain || started.elapsed() >= RETRY_FOR {
            return Some(Err(e));
        }
        let jitter = u64::from(lanyard_engine::nonce() % 40);
        std::thread::sleep(Duration::from_millis(10 + jitter));
    }
}

fn unexpected(o: &Outcome) -> Error {
    Error::Other(format!("lanyard daemon answered {o:?}"))
}

/// The config file: `LANYARD_CONFIG`, else the default path.
fn config_path() -> PathBuf {
    std::env::var_os("LANYARD_CONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| lanyard_core::config::DEFAULT_PATH.into())
}

/// The engine over the store in `state` and the kernel, sharing `run/lock` with
/// every other lanyard process of this host.
pub fn open(state: &Path, run: &Path) -> Result<Lanyard> {
    // A runtime passes no LANYARD_STORE: the config file's `store` holds for the
    // plugin as for the CLI (a shared etcd store, or each host would hand out the
    // same addresses).
    let url = match std::env::var("LANYARD_STORE") {
        Ok(u) => Some(u),
        Err(_) => Config::store_of(&config_path())?,
    };
    let node = node();
    let store = crate::store::open_url(url.as_deref(), state, node.as_deref())?;
    let mut netlink = Netlink::new()?;
    netlink.hand_off_to(run.join(handoff::SOCKET));
    netlink.exits_soon();
    let kernel: Box<dyn Kernel> = Box::new(netlink);
    let engine = Engine::new(store, kernel, Config::default())
        .with_run_dir(run)
        .with_state_dir(state);
    Ok(match node {
        Some(n) => engine.with_node(&n),
        None => engine,
    })
}

/// This host's node name, as the CLI finds it: `LANYARD_NODE`, else /etc/machine-id.
fn node() -> Option<String> {
    std::env::var("LANYARD_NODE")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| {
            let id = std::fs::read_to_string("/etc/machine-id").ok()?;
            Some(id.trim().to_string()).filter(|s| !s.is_empty())
        })
}

/// Runs `f` again while another process is changing what it needs (TryAgain),
/// with short jittered sleeps, for at most [`RETRY_FOR`].
pub fn retrying<T>(mut f: impl FnMut() -> Result<T>) -> Result<T> {
    let started = Instant::now();
    loop {
        match f() {
            Err(e) if e.kind() == ErrorKind::TryAgain && started.elapsed() < RETRY_FOR => {
                let jitter = u64::from(lanyard_engine::nonce() % 40);
                std::thread::sleep(Duration::from_millis(10 + jitter));
            }
            other => return other,
        }
    }
}

/// One try of ADD's attach. The runtime never runs two operations on one
/// attachment at once (spec, section 3), so a record of this owner left *pending* or
/// *detaching* when the attach says *try again* is this process's earlier try (its
/// last store write starved) or a dead ADD or DEL: it is finished (detached) so that
/// the next try starts clean, instead of waiting for it in vain.
fn attach(engine: &mut Lanyard, req: &AttachRequest) -> Result<Endpoint> {
    let err = match engine.attach(req) {
        Err(e) if e.kind() == ErrorKind::TryAgain => e,
        other => return other,
    };
    if let Some(owner) = &req.owner {
        let r = EndpointRef::Owner(owner.clone());
        if let Ok(Some(ep)) = engine.find_endpoint(&r) {
            if matches!(ep.state, EndpointState::Pending | EndpointState::Detaching) {
                // A failure here is the next try's to see.
                let _ = engine.detach(&DetachRequest::Owner(owner.clone()));
            }
        }
    }
    Err(err)
}

/// Tells a running daemon (if any) of the change; never waits.
fn notify(run_dir: &Path, change: Change, ep: &Endpoint) {
    let path = run_dir.join(handoff::SOCKET);
    let _ = handoff::notify(&path, change, ep.network.as_str(), &ep.id);
}

/// The lanyard network the config names, or the one its inline fields describe
/// (made now if there is none of that name; reused if it has the same shape).
pub fn network_for(engine: &mut Lanyard, source: &Source) -> Result<Network> {
    let req = match source {
        Source::Named(n) => {
            return engine.network(n).map_err(|e| match e {
                Error::NotFound { .. } => Error::invalid(
                    "network",
                    n,
                    "no lanyard network of this name: make it with `lanyard network create`, \
                     or give the driver, master and ipam fields to have the plugin make it",
                ),
                other => other,
            })
        }
        Source::Inline(req) => req,
    };
    match engine.network(&req.name) {
        Ok(net) => return same_shape(&net, req).map(|()| net),
        Err(Error::NotFound { .. }) => {}
        Err(e) => return Err(e),
    }
    engine.config = Config::load(&config_path())?;
    match engine.create_network(req) {
        Ok(net) => Ok(net),
        // Another ADD made it first: use it.
        Err(e) if e.kind() == ErrorKind::Conflict => match engine.network(&req.name) {
            Ok(net) => same_shape(&net, req).map(|()| net),
            Err(_) => Err(e),
        },
        Err(e) => Err(e),
    }
}

/// A network that exists under an inline config's name must be what the config
/// describes (driver, master, mode, MTU, subnets): else the config is wrong.
fn same_shape(net: &Network, req: &NetworkRequest) -> Result<()> {
    let want = req.validate(net.id.clone(), net.created)?;
    let differs = |field: &str, have: String, wanted: String| {
        Err(Error::invalid(
            field,
            wanted,
            format!(
                "lanyard network {} exists with {field} {have}; change the config or \
                 `lanyard network rm` it",
                net.name
            ),
        ))
    };
    let show = |o: Option<String>| o.unwrap_or_else(|| "none".into());
    if want.driver != net.driver {
        return differs("driver", net.driver.to_string(), want.driver.to_string());
    }
    if want.parent != net.parent {
        return differs(
            "master",
            show(net.parent.as_ref().map(|p| p.to_string())),
            show(want.parent.as_ref().map(|p| p.to_string())),
        );
    }
    if want.macvlan_mode != net.macvlan_mode || want.ipvlan_mode != net.ipvlan_mode {
        let mode = |n: &Network| {
            show(
                n.macvlan_mode
                    .map(|m| format!("{m:?}"))
                    .or(n.ipvlan_mode.map(|m| format!("{m:?}")))
                    .map(|m| m.to_lowercase()),
            )
        };
        return differs("mode", mode(net), mode(&want));
    }
    if want.mtu.is_some() && want.mtu != net.mtu {
        return differs(
            "mtu",
            show(net.mtu.map(|m| m.to_string())),
            show(want.mtu.map(|m| m.to_string())),
        );
    }
    if !want.subnets.is_empty() {
        let key = |n: &Network| {
            n.subnets
                .iter()
                .map(|s| {
                    format!(
                        "{} gateway {} range {}",
                        s.subnet,
                        show(s.gateway.map(|g| g.to_string())),
                        show(s.ip_range.map(|r| r.to_string()))
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        // A gateway the request left out is filled in by the engine: compare
        // subnets and ranges always, gateways when given.
        for (w, h) in want.subnets.iter().zip(&net.subnets) {
            if w.subnet != h.subnet
                || w.ip_range != h.ip_range
                || (w.gateway.is_some() && w.gateway != h.gateway)
            {
                return differs("ipam", key(net), key(&want));
            }
        }
        if want.subnets.len() != net.subnets.len() {
            return differs("ipam", key(net), key(&want));
        }
    }
    Ok(())
}

/// The host-side interfaces of a bridge endpoint (the bridge, the veth's host end).
fn host_side(net: &Network, ep: &Endpoint) -> Vec<String> {
    if net.driver != Driver::Bridge {
        return vec![];
    }
    net.bridge
        .iter()
        .chain(ep.host_ifname.iter())
        .map(|n| n.to_string())
        .collect()
}

fn to_json(r: CniResult) -> String {
    serde_json::to_string(&r).unwrap_or_default()
}

/// CHECK: the endpoint exists, lives in `CNI_NETNS`, the kernel matches its record
/// (link, MAC, MTU, addresses, default routes), and the ADD's result (`prevResult`)
/// lists the same addresses on the same interface.
fn check(
    engine: &mut Lanyard,
    owner: &Owner,
    netns: &str,
    prev: Option<&CniResult>,
) -> std::result::Result<(), CniError> {
    let cni = |e: Error| to_cni(&e, "");
    let r = EndpointRef::Owner(owner.clone());
    let Some(ep) = engine.find_endpoint(&r).map_err(cni)? else {
        return Err(plain(
            UNKNOWN_CONTAINER,
            "no such attachment",
            format!("lanyard has no attachment for {owner}"),
        ));
    };
    let mut problems = vec![];
    match engine.kernel.netns_id(Path::new(netns)) {
        Ok(id) if id == ep.netns_inode => {}
        Ok(_) => problems.push(format!(
            "CNI_NETNS {netns} is not the namespace the attachment was made in ({})",
            ep.netns.display()
        )),
        Err(_) => problems.push(format!("CNI_NETNS {netns} is not there")),
    }
    if problems.is_empty() {
        problems.extend(engine.check(&r).map_err(cni)?.problems);
    }
    if let Some(prev) = prev {
        problems.extend(compare_with_result(&ep, netns, prev));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(plain(
            CHECK_FAILED,
            format!("attachment {owner} is not as added"),
            problems.join("; "),
        ))
    }
}

/// What the ADD's result says of this attachment and the record does not (or the
/// other way round): its interface in the sandbox and its addresses.
pub fn compare_with_result(ep: &Endpoint, netns: &str, prev: &CniResult) -> Vec<String> {
    let mut problems = vec![];
    let interfaces = prev.interfaces.as_deref().unwrap_or_default();
    let Some(index) = interfaces
        .iter()
        .position(|i| i.name == ep.ifname.as_str() && i.sandbox.as_deref() == Some(netns))
    else {
        return vec![format!(
            "prevResult lists no interface {} in {netns}",
            ep.ifname
        )];
    };
    let listed: Vec<&str> = prev
        .ips
        .iter()
        .filter(|ip| ip.interface == Some(index))
        .map(|ip| ip.address.as_str())
        .collect();
    for a in &ep.addresses {
        if !listed.contains(&a.to_string().as_str()) {
            problems.push(format!("prevResult lacks address {a} of {}", ep.ifname));
        }
    }
    for l in listed {
        if !ep.addresses.iter().any(|a| a.to_string() == l) {
            problems.push(format!(
                "prevResult lists address {l} on {}, which lanyard did not give it",
                ep.ifname
            ));
        }
    }
    problems
}

/// STATUS: the store opens and reads, the kernel answers, and the network the config
/// names exists (an inline one: its master exists).
fn status(state: &Path, run_dir: &Path, conf: &NetConf) -> Result<()> {
    let mut engine = open(state, run_dir)?;
    engine.networks()?;
    let host = engine.host_view()?;
    match conf.source()? {
        Source::Named(n) => {
            engine.network(&n)?;
        }
        Source::Inline(req) => {
            if engine.network(&req.name).is_err() {
                let net = req.validate("0".repeat(64), 0)?;
                if let Some(p) = &net.parent {
                    let base = p.vlan().map(|(b, _)| b.to_string());
                    let there = host.link(p.as_str()).is_some()
                        || base.is_some_and(|b| host.link(&b).is_some());
                    if !there {
                        return Err(Error::invalid("master", p, "no such interface"));
                    }
                }
            }
        }
    }
    Ok(())
}

/// GC: releases every attachment of this CNI network not in
/// `cni.dev/valid-attachments`; each failure is reported, none stops the others.
pub fn gc(state: &Path, run_dir: &Path, name: &str, conf: &NetConf) -> Result<()> {
    let valid: Vec<Owner> = conf
        .valid_attachments
        .iter()
        .flatten()
        .map(|a| Owner::Cni {
            network: name.to_string(),
            container_id: a.container_id.clone(),
            ifname: a.ifname.clone(),
        })
        .collect();
    let mut engine = open(state, run_dir)?;
    let scope = OwnerScope::Cni {
        network: name.to_string(),
    };
    for ep in engine.gc_owned(&scope, &valid)? {
        notify(run_dir, Change::Removed, &ep);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanyard_core::testing::EndpointBuilder;

    fn ep() -> Endpoint {
        EndpointBuilder::new("lan")
            .mac("02:00:00:00:00:01")
            .addr("192.0.2.130/24")
            .gateway("192.0.2.1")
            .build()
    }

    #[test]
    fn check_compares_the_add_result_with_the_record() {
        let ep = ep();
        let good = result::of_endpoint(&ep, &[], "/run/netns/c1", None, &Default::default(), None);
        assert!(compare_with_result(&ep, "/run/netns/c1", &good).is_empty());
        let mut other = good.clone();
        other.ips[0].address = "192.0.2.131/24".into();
        let p = compare_with_result(&ep, "/run/netns/c1", &other);
        assert_eq!(p.len(), 2, "{p:?}");
        let p = compare_with_result(&ep, "/run/netns/c2", &good);
        assert!(p[0].contains("no interface eth0"), "{p:?}");
    }

    #[test]
    fn an_existing_network_must_have_the_inline_shape() {
        let req = NetworkRequest {
            name: "lan".into(),
            driver: Some("macvlan".into()),
            options: vec!["parent=eth0".into()],
            subnets: vec!["192.0.2.0/24".into()],
            ..Default::default()
        };
        let mut net = req.validate("0".repeat(64), 0).unwrap();
        net.subnets[0].gateway = Some("192.0.2.1".parse().unwrap());
        same_shape(&net, &req).unwrap();
        let other = NetworkRequest {
            options: vec!["parent=eth1".into()],
            ..req.clone()
        };
        let err = same_shape(&net, &other).unwrap_err();
        assert!(
            matches!(&err, Error::Invalid { field, .. } if field == "master"),
            "{err}"
        );
        let other = NetworkRequest {
            subnets: vec!["198.51.100.0/24".into()],
            ..req
        };
        let err = same_shape(&net, &other).unwrap_err();
        assert!(
            matches!(&err, Error::Invalid { field, .. } if field == "ipam"),
            "{err}"
        );
    }
}
