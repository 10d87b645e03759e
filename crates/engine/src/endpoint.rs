//! Endpoint verbs: attach (allocate, record pending, plan, apply with rollback,
//! mark active), detach (idempotent; the link is retired at once and deleted off the
//! caller's path), list.

use crate::alloc::{
    check_routes, check_wants, lasting_netns_path, parse_routes, parse_wants, record, Place,
    OWN_NETNS,
};
use crate::lock::Mode;
use crate::{new_id, nonce, Engine};
use lanyard_core::apply::{apply_all, apply_best_effort, apply_ensure};
use lanyard_core::kernel::{tombstone_name, Kernel, View};
use lanyard_core::model::{
    AttachRequest, DetachRequest, Endpoint, EndpointState, IpamDriver, Network,
};
use lanyard_core::name::IfName;
use lanyard_core::op::{Netns, Op};
use lanyard_core::plan;
use lanyard_core::store::Store;
use lanyard_core::{Error, Result};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// What [`Engine::unwire`] does with the record once the kernel side is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Then {
    /// Delete it and everything it holds (`detach`, `release`).
    Forget,
    /// Keep it, with its addresses, MAC and ports, as allocated (`unplug`).
    KeepAllocated,
}

/// The host's own addresses on the network's LAN (its parent, or the host's own
/// bridge): never handed out.
pub(crate) fn excluded(net: &Network, host: &View) -> Vec<IpAddr> {
    // On the host's own bridge, the host's addresses there are on the same LAN.
    let lan_link = net
        .parent
        .as_ref()
        .or(net.bridge.as_ref().filter(|_| net.bridge_external));
    match lan_link {
        Some(parent) => plan::host_addresses(host, parent)
            .iter()
            .map(|a| a.addr())
            .collect(),
        None => vec![],
    }
}

/// What a repeated request with an owner that already has `ep` gets: `ep` itself when
/// it is what was asked (same network; same namespace, if one is given) and done;
/// else why not.
pub(crate) fn repeat_of(
    ep: &Endpoint,
    net: &Network,
    ns_id: Option<(u64, u64)>,
) -> Result<Endpoint> {
    let owner = ep.owner.as_ref().map(|o| o.to_string()).unwrap_or_default();
    if ep.network_id != net.id {
        return Err(Error::Conflict(format!(
            "{owner} already has endpoint {} on network {}",
            ep.short_id(),
            ep.network
        )));
    }
    if ns_id.is_some_and(|id| ep.netns_inode != id) {
        return Err(Error::Conflict(format!(
            "{owner} already has endpoint {} in another namespace ({})",
            ep.short_id(),
            ep.netns.display()
        )));
    }
    match ep.state {
        EndpointState::Active | EndpointState::Allocated => Ok(ep.clone()),
        EndpointState::Pending | EndpointState::Detaching => Err(Error::TryAgain(format!(
            "endpoint {} of {owner} is being {}; try again",
            ep.short_id(),
            if ep.state == EndpointState::Pending {
                "attached"
            } else {
                "detached"
            }
        ))),
    }
}

impl<S: Store, K: Kernel> Engine<S, K> {
    /// `attach`: wires a namespace into a network (allocate and plug in one go: two
    /// store transactions). On any failure, what was done is undone and the store is
    /// as before. With an owner, a repeat of an attach that is done returns its
    /// endpoint unchanged (CNI's ADD twice); one for another network or namespace is
    /// a conflict.
    pub fn attach(&mut self, req: &AttachRequest) -> Result<Endpoint> {
        let mut w = parse_wants(
            req.ip.as_deref(),
            req.ip6.as_deref(),
            req.mac.as_deref(),
            req.name.as_deref(),
            &req.publish,
            req.owner.as_ref(),
        )?;
        w.routes = parse_routes(&req.routes)?;
        w.aliases = lanyard_core::dnsname::parse_aliases(&req.aliases)?;
        let ifname = req
            .ifname
            .as_deref()
            .map(|s| IfName::parse_user("--ifname", s))
            .transpose()?;
        let _lock = self.lock(Mode::Shared)?;
        let net = self.network(&req.network)?;
        check_wants(&net, &w, req.mac.as_deref())?;
        let (netns, ns_id) = self.checked_netns(&req.netns)?;
        let in_kernel = match ifname {
            Some(_) => vec![],
            None => self.taken_eth_names(&netns)?,
        };
        let id = new_id();
        // Only the links planning looks at: a busy host's other links and routes
        // cost nothing here.
        let host = self
            .kernel
            .view_links(&Netns::Host, &plan::host_links(&net, None))?;
        let mut exclude = excluded(&net, &host);
        if !w.routes.is_empty() {
            // Only with --route: every network and the host's whole route table.
            let networks = self.store.read(&mut |tx| tx.networks())?;
            let full = self.kernel.view(&Netns::Host)?;
            check_routes(&net, &w.routes, &networks, &full)?;
        }
        let place = Place {
            netns: &netns,
            ns_id,
            ifname,
            in_kernel: &in_kernel,
            unprivileged_port_start: req.unprivileged_port_start,
        };
        let node = self.node.clone();
        // `-o arp_probe=MS` (off by default: see ARCHITECTURE.md): a `--ip` another
        // LAN host holds is refused before anything is recorded.
        let probe = crate::probe::wait_of(&net);
        if let (Some(wait), Some(IpAddr::V4(a))) = (probe, w.ip) {
            self.refuse_if_held(&net, a, wait)?;
        }
        let mut skipped = 0;
        let ep = loop {
            let recorded = self.store.write(&mut |tx| {
                if let Some(owner) = &w.owner {
                    if let Some(ep) = tx.endpoint_by_owner(owner)? {
                        return repeat_of(&ep, &net, Some(ns_id)).map(Err);
                    }
                }
                record(tx, &net, &w, Some(&place), &id, &exclude, node.as_deref()).map(Ok)
            })?;
            let ep = match recorded {
                Ok(ep) => ep,
                Err(done) => return Ok(done),
            };
            // An allocated address someone else holds is skipped: the record goes
            // and the allocation is made again without it.
            match probe.filter(|_| w.ip.is_none()) {
                Some(wait)
                    if self.held_by_other(&net, &ep, wait, &mut exclude, &mut skipped)? => {}
                _ => break ep,
            }
        };
        if let Err(e) = self.wire(&net, &ep, &host) {
            // The kernel side is rolled back; forget the pending record too. If even
            // that fails, report the first error: `gc` removes stale pending records.
            if let Err(forget) = self.store.write(&mut |tx| tx.delete_endpoint(&ep.id)) {
                tracing::warn!("endpoint {} left pending: {forget}", ep.short_id());
            }
            return Err(e);
        }
        let mut active = if net.ipam == IpamDriver::Dhcp {
            // The LAN's server gives the address: asked from inside the namespace
            // now that the link is there. No answer: the link and record go.
            // On a bridge onto the LAN, the bridge's anti-spoof guard learns the
            // leased address now (its other elements went in with the link).
            match self
                .bind_lease(&net, &ep, &host, None)
                .and_then(|bound| self.firewall_add(&net, &bound).map(|_| bound))
            {
                Ok(bound) => bound,
                Err(e) => {
                    let _ = self.unwire(&ep, Some(&net), Then::Forget);
                    return Err(e);
                }
            }
        } else {
            ep.clone()
        };
        active.state = EndpointState::Active;
        self.store.write(&mut |tx| tx.put_endpoint(&active))?;
        Ok(active)
    }

    /// `path` checked as a namespace to attach: lasting, a network namespace, not
    /// the one lanyard runs in; with its identity.
    pub(crate) fn checked_netns(&mut self, path: &Path) -> Result<(PathBuf, (u64, u64))> {
        let netns = lasting_netns_path(path)?;
        let ns_id = self.kernel.netns_id(&netns).map_err(|_| {
            Error::invalid(
                "--netns",
                path.display(),
                "no network namespace at this path",
            )
        })?;
        if !self.kernel.is_net_namespace(&netns).unwrap_or(false) {
            return Err(Error::invalid(
                "--netns",
                path.display(),
                "is not a network namespace (a path like /run/netns/NAME or /proc/PID/ns/net)",
            ));
        }
        // The namespace lanyard runs in is the host: an endpoint there would give
        // the host an address and a default route (and its detach take them away).
        if self.kernel.netns_id(Path::new(OWN_NETNS)).ok() == Some(ns_id) {
            return Err(Error::invalid(
                "--netns",
                path.display(),
                "is the namespace lanyard runs in (the host's); give a container's",
            ));
        }
        Ok((netns, ns_id))
    }

    /// The `ethN` names the namespace already has, up to the first free one: the
    /// default name is the next ethN free in the namespace itself, not only among
    /// lanyard's records (one look per name taken; a fresh namespace: one).
    pub(crate) fn taken_eth_names(&mut self, netns: &Path) -> Result<Vec<IfName>> {
        let ns = Netns::Path(netns.to_path_buf());
        let mut taken = vec![];
        for n in 0.. {
            let name = IfName::new(&format!("eth{n}"))?;
            if self
                .kernel
                .view_links(&ns, std::slice::from_ref(&name))?
                .link(name.as_str())
                .is_none()
            {
                break;
            }
            taken.push(name);
        }
        Ok(taken)
    }

    /// Plans and applies the kernel side of one endpoint (network pieces first if
    /// missing), rolling back on failure.
    pub(crate) fn wire(&mut self, net: &Network, ep: &Endpoint, host: &View) -> Result<()> {
        let mut ops = plan::network_infra(net, host)?;
        let infra_len = ops.len();
        if ep.host_link.is_some() {
            ops.extend(plan::endpoint_ops_host(net, ep, host)?);
        } else {
            // SLAAC on a DHCP network with --ipv6: stable interface ids, before the
            // link is born (it copies the namespace's defaults).
            ops.extend(crate::dhcp::slaac_ops(net, ep));
            ops.extend(plan::endpoint_ops(net, ep, host)?);
        }
        // Infra is shared with other endpoints (and maybe being made by another
        // process right now): keep it even if this endpoint fails.
        apply_ensure(&mut self.kernel, &ops[..infra_len])?;
        // Firewall elements (anti-spoofing guard, published ports) before the link.
        let fw_undo = self.firewall_add(net, ep)?;
        let wired = apply_all(&mut self.kernel, &ops[infra_len..]);
        if wired.is_err() {
            if let Some(undo) = fw_undo {
                let _ = self.kernel.apply(&undo);
            }
        }
        wired
    }

    /// `detach`: idempotent. Returns the endpoint that was removed, if any.
    pub fn detach(&mut self, req: &DetachRequest) -> Result<Option<Endpoint>> {
        let _lock = self.lock(Mode::Shared)?;
        // A namespace that is still there is found by its identity (whatever path
        // it was attached by); one that is gone, by the path it was attached by.
        let ns_id = match req {
            DetachRequest::Netns { netns, .. } => self.kernel.netns_id(netns).ok(),
            DetachRequest::Endpoint(_) | DetachRequest::Owner(_) => None,
        };
        // The endpoint and its network, marked detaching, in one transaction:
        // before any kernel step, so a store that cannot be written (read-only, full)
        // stops the detach with nothing changed, and a detach that stops half-way
        // leaves a record `gc` finishes, its addresses still held.
        let found = self.store.write(&mut |tx| {
            let found = match req {
                DetachRequest::Endpoint(key) => match tx.endpoint(key) {
                    Ok(Some(ep)) => Some((tx.network(&ep.network_id)?, ep)),
                    Ok(None) => None,
                    // A record that cannot be read: forgotten with what it holds.
                    Err(e) => match tx.forget_unreadable_endpoint(key)? {
                        Some(id) => {
                            tracing::warn!(
                                "forgot endpoint record {id}, which was unreadable; \
                                 its links, if any, were left"
                            );
                            None
                        }
                        None => return Err(e),
                    },
                },
                DetachRequest::Owner(owner) => match tx.endpoint_by_owner(owner)? {
                    Some(ep) => Some((tx.network(&ep.network_id)?, ep)),
                    None => None,
                },
                DetachRequest::Netns { network, netns } => {
                    let Some(net) = tx.network(network)? else {
                        return Ok(None);
                    };
                    let on_net = |e: &Endpoint| e.network_id == net.id;
                    let ep = match ns_id {
                        Some(id) => tx.endpoints_in_netns(id)?.into_iter().find(on_net),
                        None => tx
                            .endpoints()?
                            .into_iter()
                            .find(|e| on_net(e) && &e.netns == netns),
                    };
                    ep.map(|ep| (Some(net), ep))
                }
            };
            if let Some((_, ep)) = &found {
                if ep.state != EndpointState::Detaching {
                    let mut detaching = ep.clone();
                    detaching.state = EndpointState::Detaching;
                    tx.put_endpoint(&detaching)?;
                }
            }
            Ok(found)
        })?;
        let Some((net, ep)) = found else {
            return Ok(None);
        };
        self.unwire(&ep, net.as_ref(), Then::Forget)?;
        Ok(Some(ep))
    }

    /// Unwires and forgets one endpoint: host routes go, the link is retired (name
    /// and addresses free at once) and deleted in the background.
    pub(crate) fn remove_endpoint(&mut self, ep: &Endpoint) -> Result<()> {
        let _lock = self.lock(Mode::Shared)?;
        let net = self.store.read(&mut |tx| tx.network(&ep.network_id))?;
        self.unwire(ep, net.as_ref(), Then::Forget)
    }

    /// Takes `ep`'s kernel side away, then forgets it or keeps it allocated (`then`).
    /// `net` is the endpoint's network, already read (`None`: the network is gone,
    /// only the record is left to forget).
    pub(crate) fn unwire(
        &mut self,
        ep: &Endpoint,
        net: Option<&Network>,
        then: Then,
    ) -> Result<()> {
        let alive = ep.in_netns()
            && self
                .kernel
                .netns_id(&ep.netns)
                .is_ok_and(|id| id == ep.netns_inode);
        let mut errors = vec![];
        let mut tombstone = None;
        // An allocated endpoint has nothing in the kernel: no link, no firewall
        // element (they go at unplug and come at plug).
        let net = net.filter(|_| ep.state != EndpointState::Allocated);
        if let Some(net) = net {
            if alive {
                self.release_lease(net, ep);
            }
            self.firewall_remove(net, ep);
            let host = self
                .kernel
                .view_links(&Netns::Host, &plan::teardown_links(ep))?;
            let tomb = tombstone_name(nonce());
            let ops = plan::endpoint_teardown(net, ep, &host, alive, tomb.clone());
            let retired = ops.iter().any(|o| matches!(o, Op::RetireLink { .. }));
            errors = apply_best_effort(&mut self.kernel, &ops);
            if retired && errors.is_empty() {
                tombstone = Some(tomb);
            }
        }
        // A link in a live namespace that may still hold the addresses: keep them
        // held (the record says detaching) until a detach or `gc` gets it done.
        let failed = errors.iter().find(|e| !matches!(e, Error::NotFound { .. }));
        if let (true, Some(e)) = (alive, failed) {
            return Err(Error::Other(format!(
                "endpoint {}: detach failed: {e}; its addresses stay held until \
                 `lanyard detach` or `lanyard gc` finishes it",
                ep.display_name()
            )));
        }
        if let Some(tomb) = tombstone {
            // Deleting takes the kernel 12–30 ms (RCU); nobody needs to wait for it.
            // Handed off before the record changes: a process killed in between
            // leaves the record (detaching), which leads `gc` to the namespace and
            // the tombstone in it. (The other way round, the tombstone outlived the
            // record and nothing would ever look for it.)
            let _ = self
                .kernel
                .reap(vec![(Netns::Path(ep.netns.clone()), tomb)]);
        }
        let forgotten = match then {
            Then::Forget => self.store.write(&mut |tx| tx.delete_endpoint(&ep.id)),
            Then::KeepAllocated => {
                let mut kept = ep.clone();
                kept.state = EndpointState::Allocated;
                kept.netns = PathBuf::new();
                kept.netns_inode = (0, 0);
                kept.host_link = None;
                kept.route_metric = None;
                kept.unprivileged_port_start = None;
                self.store.write(&mut |tx| tx.put_endpoint(&kept))
            }
        };
        forgotten?;
        match errors.into_iter().next() {
            // A link already gone is what we wanted.
            Some(Error::NotFound { .. }) | None => Ok(()),
            Some(e) => Err(Error::Other(format!(
                "endpoint {} forgotten, but cleanup failed: {e}; run `lanyard gc`",
                ep.display_name()
            ))),
        }
    }

    /// All endpoints.
    pub fn endpoints(&self) -> Result<Vec<Endpoint>> {
        self.store.read(&mut |tx| tx.endpoints())
    }

    /// One endpoint by name or id.
    pub fn endpoint(&self, key: &str) -> Result<Endpoint> {
        self.store
            .read(&mut |tx| tx.endpoint(key))?
            .ok_or_else(|| Error::not_found("endpoint", key))
    }

    /// Brings up `lo` in a fresh namespace (`lanyard run`).
    pub fn loopback_up(&mut self, netns: &std::path::Path) -> Result<()> {
        self.kernel.apply(&Op::SetUp {
            netns: Netns::Path(netns.to_path_buf()),
            name: IfName::new("lo")?,
        })
    }

    /// Sets a sysctl inside a namespace (`lanyard run --network none --unprivileged-port-start`).
    pub fn kernel_sysctl(&mut self, netns: &std::path::Path, key: &str, value: &str) -> Result<()> {
        self.kernel.apply(&Op::SetSysctl {
            netns: Netns::Path(netns.to_path_buf()),
            key: key.into(),
            value: value.into(),
        })
    }

    /// The host view (for front ends that report it, e.g. doctor).
    pub fn host_view(&mut self) -> Result<View> {
        self.kernel.view(&Netns::Host)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use lanyard_core::kernel::fake::FakeKernel;
    use lanyard_core::store::mem::MemStore;
    use lanyard_core::store::Tx;
    use lanyard_core::testing::NetworkBuilder;

    pub(crate) fn engine() -> Engine<MemStore, FakeKernel> {
        let mut k = FakeKernel::with_eth0(&["192.0.2.2/24", "2001:db8:1::2/64"]);
        k.namespaces.push(("/run/netns/c1".into(), (1, 10)));
        k.namespaces.push(("/run/netns/c2".into(), (1, 11)));
        let mut e = Engine::new(MemStore::default(), k, Default::default());
        let lan = NetworkBuilder::new("lan")
            .driver("macvlan")
            .option("parent=eth0")
            .subnets(&["192.0.2.0/24", "2001:db8:1::/64"])
            .ip_range("192.0.2.128/25")
            .gateway("192.0.2.1");
        e.create_network(&lan.request()).unwrap();
        // The fake does not model links: show the shim as made, so attaches plan none.
        let mut shim = e.kernel.host.links[1].clone();
        shim.name = plan::shim_name(&IfName::new("eth0").unwrap()).to_string();
        shim.index = 9;
        e.kernel.host.links.push(shim);
        for a in ["192.0.2.2/32", "2001:db8:1::2/128"] {
            e.kernel
                .host
                .addresses
                .push(lanyard_core::kernel::AddrInfo {
                    index: 9,
                    addr: a.parse().unwrap(),
                    dad_failed: false,
                });
        }
        e
    }

    /// A bridge network `name` on 203.0.113.0/24 beside `lan`.
    pub(crate) fn add_bridge(e: &mut Engine<MemStore, FakeKernel>, name: &str) {
        let b = NetworkBuilder::new(name).subnet("203.0.113.0/24");
        e.create_network(&b.request()).unwrap();
    }

    pub(crate) fn attach(ns: &str) -> AttachRequest {
        AttachRequest {
            network: "lan".into(),
            netns: ns.into(),
            ..Default::default()
        }
    }

    /// Another process's transaction, run on the store before this one's first write.
    pub(crate) type Hook = Box<dyn FnOnce(&MemStore)>;

    /// A store whose first write lets `hook` commit on the inner store first:
    /// another process's transaction landing between this one's reads and its write.
    pub(crate) struct Interleaved {
        pub(crate) inner: MemStore,
        pub(crate) hook: std::cell::RefCell<Option<Hook>>,
    }

    impl Store for Interleaved {
        fn read<T>(&self, f: &mut dyn FnMut(&dyn Tx) -> Result<T>) -> Result<T> {
            self.inner.read(f)
        }
        fn write<T>(&self, f: &mut dyn FnMut(&mut dyn Tx) -> Result<T>) -> Result<T> {
            if let Some(hook) = self.hook.borrow_mut().take() {
                hook(&self.inner);
            }
            self.inner.write(f)
        }
    }

    #[test]
    fn attach_onto_a_network_removed_meanwhile_is_refused_and_records_nothing() {
        let e = engine();
        let mut e = Engine::new(
            Interleaved {
                inner: e.store,
                // `network rm lan` in another process: no endpoints yet, so it commits.
                hook: std::cell::RefCell::new(Some(Box::new(|s: &MemStore| {
                    s.write(&mut |tx| {
                        let id = tx.network("lan")?.expect("lan").id;
                        tx.delete_network(&id)
                    })
                    .unwrap()
                }))),
            },
            e.kernel,
            e.config,
        );
        let applied = e.kernel.applied.len();
        let err = e.attach(&attach("/run/netns/c1")).unwrap_err();
        assert!(matches!(err, Error::NotFound { .. }), "{err}");
        assert!(e
            .store
            .inner
            .read(&mut |tx| tx.networks())
            .unwrap()
            .is_empty());
        assert!(
            e.endpoints().unwrap().is_empty(),
            "no endpoint of a network that is gone"
        );
        assert_eq!(e.kernel.applied.len(), applied, "nothing wired");
    }

    #[test]
    fn attach_allocates_both_families_and_records_an_active_endpoint() {
        let mut e = engine();
        let ep = e.attach(&attach("/run/netns/c1")).unwrap();
        assert_eq!(ep.state, EndpointState::Active);
        let addrs: Vec<String> = ep.addresses.iter().map(|a| a.to_string()).collect();
        // 2001:db8:1::2 is the host's own address on the parent: skipped.
        assert_eq!(addrs, ["192.0.2.128/24", "2001:db8:1::3/64"]);
        assert_eq!(ep.ifname.as_str(), "eth0");
        // The MAC is chosen at allocation, stored, and given to the link.
        let mac = ep.mac.expect("a macvlan endpoint's MAC is stored");
        assert!(e
            .kernel
            .applied
            .iter()
            .any(|o| matches!(o, Op::CreateMacvlan { mac: Some(m), .. } if *m == mac)));
    }

    #[test]
    fn failure_at_every_kernel_step_leaves_store_and_kernel_as_before() {
        let base = {
            let mut e = engine();
            let before = e.kernel.calls;
            e.attach(&attach("/run/netns/c1")).unwrap();
            e.kernel.calls - before
        };
        assert!(base >= 5);
        for fail in 0..base {
            let mut e = engine();
            let start = e.kernel.calls;
            let applied_before = e.kernel.applied.len();
            e.kernel.fail_at = Some(start + fail);
            assert!(e.attach(&attach("/run/netns/c1")).is_err(), "step {fail}");
            assert!(
                e.endpoints().unwrap().is_empty(),
                "step {fail}: endpoint left"
            );
            let tail = &e.kernel.applied[applied_before..];
            let done: Vec<&Op> = tail.iter().filter(|o| o.inverse().is_some()).collect();
            let undone: Vec<Op> = tail
                .iter()
                .filter(|o| {
                    matches!(
                        o,
                        Op::DeleteLink { .. } | Op::DelAddress { .. } | Op::DelRoute { .. }
                    )
                })
                .cloned()
                .collect();
            let expected: Vec<Op> = done.iter().rev().filter_map(|o| o.inverse()).collect();
            assert_eq!(undone, expected, "step {fail}");
            // The addresses are free again (next-fit moves on, so check the records).
            let id = e.network("lan").unwrap().id;
            assert_eq!(
                e.store.read(&mut |tx| tx.address_count(&id)).unwrap(),
                0,
                "step {fail}"
            );
        }
    }

    #[test]
    fn static_ip_taken_is_refused_and_changes_nothing() {
        let mut e = engine();
        let mut r = attach("/run/netns/c1");
        r.ip = Some("192.0.2.200".into());
        e.attach(&r).unwrap();
        let mut r2 = attach("/run/netns/c2");
        r2.ip = Some("192.0.2.200".into());
        assert!(matches!(e.attach(&r2).unwrap_err(), Error::Conflict(_)));
        assert_eq!(e.endpoints().unwrap().len(), 1);
    }

    #[test]
    fn bad_input_is_named() {
        let mut e = engine();
        for (f, r) in [
            (
                "--mac",
                AttachRequest {
                    mac: Some("01:00:00:00:00:01".into()),
                    ..attach("/run/netns/c1")
                },
            ),
            (
                "--ip",
                AttachRequest {
                    ip: Some("2001:db8::5".into()),
                    ..attach("/run/netns/c1")
                },
            ),
            (
                "--ifname",
                AttachRequest {
                    ifname: Some("a-very-long-ifname".into()),
                    ..attach("/run/netns/c1")
                },
            ),
            ("--netns", attach("/run/netns/gone")),
            (
                "--publish",
                AttachRequest {
                    publish: vec!["x:80".into()],
                    ..attach("/run/netns/c1")
                },
            ),
        ] {
            let err = e.attach(&r).unwrap_err();
            assert!(err.to_string().contains(f), "{f}: {err}");
        }
        assert!(e.endpoints().unwrap().is_empty());
    }

    #[test]
    fn detach_is_idempotent_and_frees_the_address() {
        let mut e = engine();
        let ep = e
            .attach(&AttachRequest {
                name: Some("web".into()),
                ..attach("/run/netns/c1")
            })
            .unwrap();
        assert!(e
            .detach(&DetachRequest::Endpoint("web".into()))
            .unwrap()
            .is_some());
        assert!(e
            .detach(&DetachRequest::Endpoint("web".into()))
            .unwrap()
            .is_none());
        let again = e.attach(&attach("/run/netns/c2")).unwrap();
        assert_ne!(again.id, ep.id);
        // The link was retired then reaped (fake: deleted inline).
        assert!(e
            .kernel
            .applied
            .iter()
            .any(|o| matches!(o, Op::RetireLink { .. })));
    }

    #[test]
    fn attach_and_detach_look_at_the_planned_host_links_only() {
        let mut e = engine();
        e.kernel.full_views = 0; // creating the network looked at everything
        e.attach(&attach("/run/netns/c1")).unwrap();
        e.detach(&DetachRequest::Netns {
            network: "lan".into(),
            netns: "/run/netns/c1".into(),
        })
        .unwrap();
        assert_eq!(
            e.kernel.full_views, 0,
            "no full dump of the host on the hot path"
        );
        assert!(e
            .kernel
            .applied
            .iter()
            .any(|o| matches!(o, Op::DelRoute { .. })));
    }

    #[test]
    fn second_network_in_a_namespace_gets_eth1_and_a_higher_default_metric() {
        let mut e = engine();
        add_bridge(&mut e, "b");
        e.attach(&attach("/run/netns/c1")).unwrap();
        let ep = e
            .attach(&AttachRequest {
                network: "b".into(),
                ..attach("/run/netns/c1")
            })
            .unwrap();
        assert_eq!(ep.ifname.as_str(), "eth1");
        assert!(e.kernel.applied.iter().any(|o| matches!(o, Op::AddRoute { route, .. } if route.metric == Some(plan::DEFAULT_ROUTE_METRIC + 1))));
        assert!(
            e.attach(&attach("/run/netns/c1")).is_err(),
            "same network twice"
        );
    }

    #[test]
    fn the_host_namespace_and_paths_only_this_process_understands_are_refused() {
        let mut e = engine();
        // The namespace lanyard runs in, and another path to it.
        e.kernel
            .namespaces
            .push(("/proc/self/ns/net".into(), (1, 1)));
        e.kernel.namespaces.push(("/run/netns/host".into(), (1, 1)));
        e.kernel
            .namespaces
            .push(("/proc/self/fd/3".into(), (1, 10)));
        for (path, why) in [
            ("/run/netns/host", "the namespace lanyard runs in"),
            ("/proc/self/ns/net", "means another namespace"),
            ("/proc/self/fd/3", "means another namespace"),
        ] {
            let err = e.attach(&attach(path)).unwrap_err();
            assert!(
                matches!(&err, Error::Invalid { field, .. } if field == "--netns"),
                "{path}: {err}"
            );
            assert!(err.to_string().contains(why), "{path}: {err}");
        }
        assert!(e.endpoints().unwrap().is_empty());
        assert!(e
            .kernel
            .applied
            .iter()
            .all(|o| !matches!(o, Op::AddRoute { .. })));
    }

    /// A store that reads but refuses every write (read-only file, full disk).
    struct ReadOnly(MemStore);

    impl Store for ReadOnly {
        fn read<T>(&self, f: &mut dyn FnMut(&dyn Tx) -> Result<T>) -> Result<T> {
            self.0.read(f)
        }
        fn write<T>(&self, _: &mut dyn FnMut(&mut dyn Tx) -> Result<T>) -> Result<T> {
            Err(Error::Store("attempt to write a readonly database".into()))
        }
    }

    #[test]
    fn a_detach_that_cannot_write_the_store_changes_nothing_in_the_kernel() {
        let mut e = engine();
        e.attach(&attach("/run/netns/c1")).unwrap();
        let mut e = Engine::new(ReadOnly(e.store), e.kernel, e.config);
        let applied = e.kernel.applied.len();
        let req = DetachRequest::Endpoint(e.endpoints().unwrap()[0].id.clone());
        assert!(e.detach(&req).is_err());
        assert_eq!(
            e.kernel.applied.len(),
            applied,
            "kernel side left as it was"
        );
        assert_eq!(e.endpoints().unwrap()[0].state, EndpointState::Active);
    }

    #[test]
    fn a_failed_detach_keeps_the_address_held_until_detach_or_gc_finishes_it() {
        let steps = {
            let mut e = engine();
            e.attach(&attach("/run/netns/c1")).unwrap();
            let before = e.kernel.calls;
            e.detach(&DetachRequest::Endpoint(
                e.endpoints().unwrap()[0].id.clone(),
            ))
            .unwrap();
            e.kernel.calls - before
        };
        assert!(steps >= 2);
        for fail in 0..steps {
            for finish_by_gc in [false, true] {
                let mut e = engine();
                let mut r = attach("/run/netns/c1");
                r.ip = Some("192.0.2.200".into());
                let ep = e.attach(&r).unwrap();
                e.kernel.fail_at = Some(e.kernel.calls + fail);
                let req = DetachRequest::Endpoint(ep.id.clone());
                if e.detach(&req).is_ok() {
                    // Only the last step, deleting the tombstone, may fail unseen:
                    // the retired link already let go of the addresses.
                    assert_eq!(fail, steps - 1, "step {fail} failed unreported");
                    continue;
                }
                let left = e.endpoint(&ep.id).expect("record kept");
                assert_eq!(left.state, EndpointState::Detaching, "step {fail}");
                let mut taken = attach("/run/netns/c2");
                taken.ip = Some("192.0.2.200".into());
                let err = e.attach(&taken).unwrap_err();
                assert!(matches!(err, Error::Conflict(_)), "step {fail}: {err}");
                if finish_by_gc {
                    let report = e.gc().unwrap();
                    assert!(report.errors.is_empty(), "step {fail}: {:?}", report.errors);
                } else {
                    assert!(e.detach(&req).unwrap().is_some(), "step {fail}");
                }
                assert!(e.endpoints().unwrap().is_empty(), "step {fail}");
                e.attach(&taken).unwrap();
            }
        }
    }

    #[test]
    fn a_default_route_metric_freed_by_a_detach_is_reused_not_a_held_one() {
        let mut e = engine();
        add_bridge(&mut e, "b");
        let c = NetworkBuilder::new("c").subnet("198.51.100.0/24");
        e.create_network(&c.request()).unwrap();
        let on = |net: &str| AttachRequest {
            network: net.into(),
            ..attach("/run/netns/c1")
        };
        // The metric of each IPv4 default route added from here on, by link.
        let defaults = |e: &Engine<MemStore, FakeKernel>, from: usize| -> Vec<(String, u32)> {
            e.kernel.applied[from..]
                .iter()
                .filter_map(|o| match o {
                    Op::AddRoute { route, .. } if route.dst.to_string() == "0.0.0.0/0" => Some((
                        route.dev.as_ref().unwrap().to_string(),
                        route.metric.unwrap(),
                    )),
                    _ => None,
                })
                .collect()
        };
        e.attach(&on("lan")).unwrap(); // A: eth0
        let start = e.kernel.applied.len();
        e.attach(&on("b")).unwrap(); // B: eth1
        let b = defaults(&e, start);
        e.detach(&DetachRequest::Netns {
            network: "lan".into(),
            netns: "/run/netns/c1".into(),
        })
        .unwrap();
        let start = e.kernel.applied.len();
        e.attach(&on("c")).unwrap(); // C: eth0 again
        let c = defaults(&e, start);
        assert_eq!(b, [("eth1".to_string(), plan::DEFAULT_ROUTE_METRIC + 1)]);
        assert_eq!(
            c,
            [("eth0".to_string(), plan::DEFAULT_ROUTE_METRIC)],
            "C takes the metric A freed, not B's (a `route replace` would take B's route)"
        );
    }

    #[test]
    fn attach_and_detach_read_only_their_own_rows_and_still_find_every_clash() {
        let mut e = engine();
        add_bridge(&mut e, "br");
        // /proc/7/ns/net is c1 by another path.
        e.kernel.namespaces.push(("/proc/7/ns/net".into(), (1, 10)));
        e.kernel.namespaces.push(("/run/netns/c3".into(), (1, 12)));
        let published = |ns: &str, port: &str| AttachRequest {
            network: "br".into(),
            netns: ns.into(),
            publish: vec![port.into()],
            ..Default::default()
        };
        let scans = e.store.endpoint_scans();
        e.attach(&AttachRequest {
            name: Some("web".into()),
            ..attach("/run/netns/c1")
        })
        .unwrap();
        e.attach(&published("/run/netns/c1", "127.0.0.1:8080:80"))
            .unwrap();
        let clash = |e: &mut Engine<MemStore, FakeKernel>, r: AttachRequest| {
            let err = e.attach(&r).unwrap_err();
            assert!(matches!(err, Error::Conflict(_)), "{err}");
            err.to_string()
        };
        let m = clash(&mut e, attach("/proc/7/ns/net"));
        assert!(m.contains("already on network lan (endpoint web)"), "{m}");
        let m = clash(
            &mut e,
            AttachRequest {
                name: Some("web".into()),
                ..attach("/run/netns/c2")
            },
        );
        assert!(m.contains("endpoint name web is already in use"), "{m}");
        // All addresses (no host ip) clash with 127.0.0.1; another address or
        // protocol does not.
        let m = clash(&mut e, published("/run/netns/c2", "8080:8080"));
        assert!(
            m.contains("host port 8080 is already published by endpoint"),
            "{m}"
        );
        e.attach(&published("/run/netns/c2", "127.0.0.2:8080:80"))
            .unwrap();
        e.attach(&published("/run/netns/c3", "8080:80/udp"))
            .unwrap();
        // Detach by another path to the same namespace; the ports go with it.
        let gone = e
            .detach(&DetachRequest::Netns {
                network: "br".into(),
                netns: "/proc/7/ns/net".into(),
            })
            .unwrap()
            .expect("found by the namespace's identity");
        assert_eq!(gone.netns, std::path::Path::new("/run/netns/c1"));
        e.attach(&published("/run/netns/c1", "127.0.0.1:8080:80"))
            .unwrap();
        assert_eq!(
            e.store.endpoint_scans(),
            scans,
            "attach and detach of a namespace that is there read no other endpoint"
        );
        // A namespace that is gone is found by the path it was attached by.
        e.kernel.namespaces.retain(|(p, _)| p != "/run/netns/c3");
        assert!(e
            .detach(&DetachRequest::Netns {
                network: "br".into(),
                netns: "/run/netns/c3".into(),
            })
            .unwrap()
            .is_some());
        assert_eq!(e.endpoints().unwrap().len(), 3);
    }
}
