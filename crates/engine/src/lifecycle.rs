//! The split endpoint lifecycle, for front ends whose callers drive each step:
//! `allocate` (addresses, MAC, ports; no link) → `plug` (into a namespace, or
//! host-side under a temporary name for a caller that moves the link itself) →
//! `unplug` (back to allocated) → `release` (forgotten); `publish`/`unpublish` on an
//! existing endpoint; `check` (the kernel against the record); and the caller-keyed
//! look-ups and GC by valid set. `attach`/`detach` are allocate+plug and
//! unplug+release in one go.
//!
//! Each step is one store transaction for its decision and one for its outcome, under
//! the shared lock (as attach and detach), and idempotent where a caller may repeat
//! it: an allocate with an owner that has an endpoint returns that endpoint, a plug
//! of an endpoint already plugged there returns it, unplug and release of what is
//! gone succeed.

use crate::alloc::{check_wants, parse_ports, parse_wants, place_in, record, take_ports, Place};
use crate::endpoint::{excluded, repeat_of, Then};
use crate::lock::Mode;
use crate::{new_id, Engine};
use lanyard_core::firewall::Change;
use lanyard_core::kernel::Kernel;
use lanyard_core::model::{DetachRequest, Driver, Endpoint, EndpointState, Network};
use lanyard_core::name::IfName;
use lanyard_core::op::Netns;
use lanyard_core::owner::{
    AllocateRequest, CheckReport, EndpointRef, Owner, OwnerScope, PlugTarget,
};
use lanyard_core::plan;
use lanyard_core::store::{Store, Tx};
use lanyard_core::{Error, Result};

fn find(tx: &dyn Tx, r: &EndpointRef) -> Result<Option<Endpoint>> {
    match r {
        EndpointRef::Key(k) => tx.endpoint(k),
        EndpointRef::Owner(o) => tx.endpoint_by_owner(o),
    }
}

fn not_found(r: &EndpointRef) -> Error {
    Error::not_found("endpoint", r.to_string())
}

impl<S: Store, K: Kernel> Engine<S, K> {
    /// The endpoint a caller names, if any.
    pub fn find_endpoint(&self, r: &EndpointRef) -> Result<Option<Endpoint>> {
        self.store.read(&mut |tx| find(tx, r))
    }

    /// `allocate`: records an endpoint holding addresses, a MAC and published ports,
    /// in no namespace yet (state `Allocated`). One store transaction, no kernel
    /// step. With an owner that already has an endpoint on this network, returns it.
    pub fn allocate(&mut self, req: &AllocateRequest) -> Result<Endpoint> {
        let mut w = parse_wants(
            req.ip.as_deref(),
            req.ip6.as_deref(),
            req.mac.as_deref(),
            req.name.as_deref(),
            &req.publish,
            req.owner.as_ref(),
        )?;
        w.aliases = lanyard_core::dnsname::parse_aliases(&req.aliases)?;
        let _lock = self.lock(Mode::Shared)?;
        let net = self.network(&req.network)?;
        check_wants(&net, &w, req.mac.as_deref())?;
        let host = self
            .kernel
            .view_links(&Netns::Host, &plan::host_links(&net, None))?;
        let exclude = excluded(&net, &host);
        let id = new_id();
        let node = self.node.clone();
        self.store.write(&mut |tx| {
            if let Some(owner) = &w.owner {
                if let Some(ep) = tx.endpoint_by_owner(owner)? {
                    return repeat_of(&ep, &net, None);
                }
            }
            // Docker's IPAM reserved the address it now names (RequestAddress).
            if let Some(Owner::Docker { .. }) = &w.owner {
                let wanted: Vec<_> = w.ip.iter().chain(w.ip6.iter()).copied().collect();
                crate::reserve::claim(tx, &net, &wanted)?;
            }
            record(tx, &net, &w, None, &id, &exclude, node.as_deref())
        })
    }

    /// `plug`: gives an allocated endpoint its link, in a namespace (with addresses,
    /// routes and sysctls, as `attach`) or host-side under a temporary name (the link
    /// only, for a caller that moves and configures it: Docker's Join). Plugging an
    /// endpoint again where it already is returns it; elsewhere is a conflict. On
    /// failure the kernel side is undone and the endpoint stays allocated.
    pub fn plug(&mut self, r: &EndpointRef, to: &PlugTarget) -> Result<Endpoint> {
        let _lock = self.lock(Mode::Shared)?;
        let (ep, net) = self.endpoint_and_network(r)?;
        let host = self
            .kernel
            .view_links(&Netns::Host, &plug_links(&net, to)?)?;
        // What to change in the record, decided from the kernel before the
        // transaction (namespace identity, names taken), checked again inside it.
        enum Where {
            Netns(
                std::path::PathBuf,
                (u64, u64),
                Option<IfName>,
                Vec<IfName>,
                Option<u16>,
            ),
            Host(IfName),
        }
        let target = match to {
            PlugTarget::Netns {
                netns,
                ifname,
                unprivileged_port_start,
            } => {
                let ifname = ifname
                    .as_deref()
                    .map(|s| IfName::parse_user("--ifname", s))
                    .transpose()?;
                let (path, ns_id) = self.checked_netns(netns)?;
                if ep.state == EndpointState::Active && ep.netns_inode == ns_id {
                    return Ok(ep);
                }
                let taken = match ifname {
                    Some(_) => vec![],
                    None => self.taken_eth_names(&path)?,
                };
                Where::Netns(path, ns_id, ifname, taken, *unprivileged_port_start)
            }
            PlugTarget::Host { name } => {
                let name = IfName::parse_user("InterfaceName", name)?;
                if ep.state == EndpointState::Active && ep.host_link.as_ref() == Some(&name) {
                    return Ok(ep);
                }
                if host.link(name.as_str()).is_some() {
                    return Err(Error::Conflict(format!(
                        "the host already has an interface named {name}"
                    )));
                }
                Where::Host(name)
            }
        };
        let pending = self.store.write(&mut |tx| {
            let Some(mut now) = tx.endpoint(&ep.id)? else {
                return Err(not_found(r));
            };
            match now.state {
                EndpointState::Allocated => {}
                EndpointState::Active => {
                    return Err(Error::Conflict(format!(
                        "endpoint {} is already plugged{}; unplug it first",
                        now.display_name(),
                        if now.in_netns() {
                            format!(" into {}", now.netns.display())
                        } else {
                            String::new()
                        }
                    )))
                }
                EndpointState::Pending | EndpointState::Detaching => {
                    return Err(Error::TryAgain(format!(
                        "endpoint {} is being changed by another caller; try again",
                        now.display_name()
                    )))
                }
            }
            crate::alloc::recheck_network(tx, &net)?;
            match &target {
                Where::Netns(path, ns_id, ifname, taken, unpriv) => {
                    let place = Place {
                        netns: path,
                        ns_id: *ns_id,
                        ifname: ifname.clone(),
                        in_kernel: taken,
                        unprivileged_port_start: *unpriv,
                    };
                    place_in(tx, &net, &mut now, &place)?;
                }
                Where::Host(name) => now.host_link = Some(name.clone()),
            }
            now.state = EndpointState::Pending;
            tx.put_endpoint(&now)?;
            Ok(now)
        })?;
        if let Err(e) = self.wire(&net, &pending, &host) {
            // The kernel side is rolled back; the record goes back to allocated.
            if let Err(undo) = self.store.write(&mut |tx| tx.put_endpoint(&ep)) {
                tracing::warn!("endpoint {} left pending: {undo}", ep.short_id());
            }
            return Err(e);
        }
        let mut active = pending;
        active.state = EndpointState::Active;
        self.store.write(&mut |tx| tx.put_endpoint(&active))?;
        Ok(active)
    }

    /// `unplug`: takes a plugged endpoint's link away (as `detach` does) and keeps
    /// the endpoint allocated, with its addresses, MAC and ports. `None` if there is
    /// no such endpoint; an allocated one is returned as it is.
    pub fn unplug(&mut self, r: &EndpointRef) -> Result<Option<Endpoint>> {
        let _lock = self.lock(Mode::Shared)?;
        let found = self.store.write(&mut |tx| {
            let Some(ep) = find(tx, r)? else {
                return Ok(None);
            };
            let net = tx.network(&ep.network_id)?;
            if ep.state != EndpointState::Allocated && ep.state != EndpointState::Detaching {
                let mut going = ep.clone();
                going.state = EndpointState::Detaching;
                tx.put_endpoint(&going)?;
            }
            Ok(Some((ep, net)))
        })?;
        let Some((ep, net)) = found else {
            return Ok(None);
        };
        if ep.state == EndpointState::Allocated {
            return Ok(Some(ep));
        }
        self.unwire(&ep, net.as_ref(), Then::KeepAllocated)?;
        self.find_endpoint(&EndpointRef::Key(ep.id.clone()))
    }

    /// `release`: unplugs the endpoint if it is plugged, then forgets it and frees
    /// what it holds. `None` if there was none (a second release, a DEL after a
    /// failed ADD).
    pub fn release(&mut self, r: &EndpointRef) -> Result<Option<Endpoint>> {
        let id = match self.find_endpoint(r)? {
            Some(ep) => ep.id,
            None => return Ok(None),
        };
        self.detach(&DetachRequest::Endpoint(id))
    }

    /// `publish`: adds published ports to a bridge endpoint (allocated or plugged);
    /// a plugged one gets their firewall elements at once.
    pub fn publish(&mut self, r: &EndpointRef, specs: &[String]) -> Result<Endpoint> {
        let ports = parse_ports(specs)?;
        let _lock = self.lock(Mode::Shared)?;
        let (ep, net) = self.endpoint_and_network(r)?;
        let w = crate::alloc::Wants {
            ip: None,
            ip6: None,
            mac: None,
            name: None,
            ports: ports.clone(),
            owner: None,
            routes: vec![],
            aliases: vec![],
        };
        check_wants(&net, &w, None)?;
        let new: Vec<_> = ports
            .into_iter()
            .filter(|m| !ep.ports.contains(m))
            .collect();
        if new.is_empty() {
            return Ok(ep);
        }
        let updated = self.store.write(&mut |tx| {
            let Some(mut now) = tx.endpoint(&ep.id)? else {
                return Err(not_found(r));
            };
            take_ports(tx, &new, &now.id)?;
            now.ports.extend(new.iter().copied());
            tx.put_endpoint(&now)?;
            Ok(now)
        })?;
        if updated.state == EndpointState::Active {
            if let Err(e) = self.firewall_ports(&net, &updated, &new, Change::Add) {
                // Back as it was: the ports free again.
                let _ = self.store.write(&mut |tx| rehold(tx, &ep));
                return Err(e);
            }
        }
        Ok(updated)
    }

    /// `unpublish`: removes published ports from an endpoint (all of them when
    /// `specs` is empty) and their firewall elements.
    pub fn unpublish(&mut self, r: &EndpointRef, specs: &[String]) -> Result<Endpoint> {
        let ports = parse_ports(specs)?;
        let _lock = self.lock(Mode::Shared)?;
        let (ep, net) = self.endpoint_and_network(r)?;
        let gone: Vec<_> = if specs.is_empty() {
            ep.ports.clone()
        } else {
            ep.ports
                .iter()
                .filter(|m| ports.contains(m))
                .copied()
                .collect()
        };
        if gone.is_empty() {
            return Ok(ep);
        }
        if ep.state == EndpointState::Active {
            self.firewall_ports(&net, &ep, &gone, Change::Remove)?;
        }
        self.store.write(&mut |tx| {
            let Some(mut now) = tx.endpoint(&ep.id)? else {
                return Err(not_found(r));
            };
            now.ports.retain(|m| !gone.contains(m));
            rehold(tx, &now)?;
            Ok(now)
        })
    }

    /// `check`: compares the kernel with the record of a plugged endpoint: its link
    /// (in its namespace, or host-side), MAC, MTU, addresses and default routes.
    pub fn check(&mut self, r: &EndpointRef) -> Result<CheckReport> {
        let (ep, net) = self.endpoint_and_network(r)?;
        let mut report = CheckReport::default();
        let mut problem = |p: String| report.problems.push(p);
        match ep.state {
            EndpointState::Active => {}
            EndpointState::Allocated => return Ok(report),
            s => problem(format!(
                "endpoint is {s:?}, not active: `lanyard gc` finishes it"
            )),
        }
        let (ns, name) = if let Some(h) = &ep.host_link {
            (Netns::Host, h.clone())
        } else {
            match self.kernel.netns_id(&ep.netns) {
                Ok(id) if id == ep.netns_inode => {}
                _ => {
                    problem(format!("namespace {} is gone", ep.netns.display()));
                    return Ok(report);
                }
            }
            (Netns::Path(ep.netns.clone()), ep.ifname.clone())
        };
        let view = self.kernel.view(&ns)?;
        let Some(link) = view.link(name.as_str()) else {
            problem(format!("interface {name} is missing"));
            return Ok(report);
        };
        if let (Some(want), Some(have)) = (ep.mac, link.mac) {
            if want != have {
                problem(format!(
                    "interface {name} has MAC {have}, the record {want}"
                ));
            }
        }
        if let (Some(want), have) = (net.mtu, link.mtu) {
            if want != have {
                problem(format!(
                    "interface {name} has MTU {have}, the network {want}"
                ));
            }
        }
        if !link.up {
            problem(format!("interface {name} is down"));
        }
        if ep.host_link.is_some() {
            return Ok(report);
        }
        for a in &ep.addresses {
            let held = view
                .addresses
                .iter()
                .any(|h| h.index == link.index && h.addr == *a);
            if !held {
                problem(format!("address {a} is missing on {name}"));
            }
        }
        let l3 = net.driver == Driver::Ipvlan
            && net.ipvlan_mode != Some(lanyard_core::model::IpvlanMode::L2);
        for gw in &ep.gateways {
            let there = view.routes.iter().any(|rt| {
                rt.dst.prefix_len() == 0
                    && rt.dst.addr().is_ipv4() == gw.is_ipv4()
                    && rt.oif == Some(link.index)
                    && (l3 || rt.gateway == Some(*gw))
            });
            if !there {
                problem(format!("the default route via {gw} on {name} is missing"));
            }
        }
        Ok(report)
    }

    /// The endpoints of one caller's collection, by owner key.
    pub fn owned_endpoints(&self, scope: &OwnerScope) -> Result<Vec<Endpoint>> {
        self.store.read(&mut |tx| {
            let mut out = vec![];
            for (_, id) in tx.owned(scope)? {
                out.extend(tx.endpoint(&id)?);
            }
            Ok(out)
        })
    }

    /// GC by valid set (CNI's GC, Docker's view of its endpoints): releases every
    /// endpoint of `scope` whose owner is not in `valid`, and returns them. Endpoints
    /// of other scopes, and of other hosts, are never touched.
    pub fn gc_owned(&mut self, scope: &OwnerScope, valid: &[Owner]) -> Result<Vec<Endpoint>> {
        let keep: std::collections::HashSet<String> = valid
            .iter()
            .filter(|o| &o.scope() == scope)
            .map(Owner::key)
            .collect();
        let mut freed = vec![];
        for ep in self.owned_endpoints(scope)? {
            let key = ep.owner.as_ref().map(Owner::key).unwrap_or_default();
            if keep.contains(&key) || !self.is_local(&ep) {
                continue;
            }
            if let Some(ep) = self.release(&EndpointRef::Key(ep.id.clone()))? {
                freed.push(ep);
            }
        }
        Ok(freed)
    }

    /// The endpoint a caller names and its network; not-found errors otherwise.
    fn endpoint_and_network(&self, r: &EndpointRef) -> Result<(Endpoint, Network)> {
        self.store.read(&mut |tx| {
            let ep = find(tx, r)?.ok_or_else(|| not_found(r))?;
            let net = tx
                .network(&ep.network_id)?
                .ok_or_else(|| Error::not_found("network", ep.network.to_string()))?;
            Ok((ep, net))
        })
    }
}

/// The host links a plug's planning looks at: the network's, and the temporary name.
fn plug_links(net: &Network, to: &PlugTarget) -> Result<Vec<IfName>> {
    let mut links = plan::host_links(net, None);
    if let PlugTarget::Host { name } = to {
        links.push(IfName::parse_user("InterfaceName", name)?);
    }
    Ok(links)
}

/// Holdings are per owner: frees everything `ep`'s id holds and takes back its
/// addresses and ports as `ep` records them.
fn rehold(tx: &mut dyn Tx, ep: &Endpoint) -> Result<()> {
    tx.release_addresses(&ep.id)?;
    for a in &ep.addresses {
        tx.take_address(&ep.network_id, a.addr(), &ep.id)?;
    }
    for m in &ep.ports {
        tx.take_port(m, &ep.id)?;
    }
    tx.put_endpoint(ep)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::tests::{add_bridge, engine, Interleaved};
    use lanyard_core::model::AttachRequest;
    use lanyard_core::op::Op;
    use lanyard_core::store::mem::MemStore;

    fn cni(container: &str) -> Owner {
        Owner::Cni {
            network: "lan".into(),
            container_id: container.into(),
            ifname: "eth0".into(),
        }
    }

    fn docker(ep: &str) -> Owner {
        Owner::Docker {
            network_id: "d0".into(),
            endpoint_id: ep.into(),
        }
    }

    fn alloc(owner: Option<Owner>) -> AllocateRequest {
        AllocateRequest {
            network: "lan".into(),
            owner,
            ..Default::default()
        }
    }

    #[test]
    fn allocate_holds_addresses_and_a_mac_without_a_link_and_repeats_by_owner() {
        let mut e = engine();
        let before = e.kernel.applied.len();
        let a = e.allocate(&alloc(Some(docker("e1")))).unwrap();
        assert_eq!(a.state, EndpointState::Allocated);
        assert!(!a.in_netns());
        assert!(a.mac.is_some(), "the MAC is known before any link");
        assert_eq!(a.addresses.len(), 2);
        assert_eq!(
            e.kernel.applied.len(),
            before,
            "no kernel step at allocation"
        );
        // Docker retries CreateEndpoint: the same endpoint, nothing more held.
        let again = e.allocate(&alloc(Some(docker("e1")))).unwrap();
        assert_eq!(again.id, a.id);
        assert_eq!(e.endpoints().unwrap().len(), 1);
        let other = e.allocate(&alloc(Some(docker("e2")))).unwrap();
        assert_ne!(other.addresses, a.addresses);
        let by_owner = e
            .find_endpoint(&EndpointRef::Owner(docker("e2")))
            .unwrap()
            .unwrap();
        assert_eq!(by_owner.id, other.id);
        let scope = OwnerScope::Docker {
            network_id: "d0".into(),
        };
        assert_eq!(e.owned_endpoints(&scope).unwrap().len(), 2);
    }

    #[test]
    fn releasing_an_allocated_endpoint_touches_no_kernel_state() {
        let mut e = engine();
        e.allocate(&alloc(Some(docker("e1")))).unwrap();
        let before = e.kernel.applied.len();
        let gone = e.release(&EndpointRef::Owner(docker("e1"))).unwrap();
        assert!(gone.is_some());
        assert_eq!(
            e.kernel.applied.len(),
            before,
            "{:?}",
            &e.kernel.applied[before..]
        );
        assert!(e.endpoints().unwrap().is_empty());
    }

    #[test]
    fn plug_host_side_makes_only_the_link_under_the_temporary_name_and_unplug_keeps_the_allocation()
    {
        let mut e = engine();
        let a = e.allocate(&alloc(Some(docker("e1")))).unwrap();
        let r = EndpointRef::Owner(docker("e1"));
        let to = PlugTarget::Host {
            name: "lyh-test".into(),
        };
        let before = e.kernel.applied.len();
        let p = e.plug(&r, &to).unwrap();
        assert_eq!(p.state, EndpointState::Active);
        assert_eq!(p.host_link.as_ref().map(|n| n.as_str()), Some("lyh-test"));
        let made: Vec<&Op> = e.kernel.applied[before..].iter().collect();
        assert!(made.iter().any(|o| matches!(o, Op::CreateMacvlan { netns: Netns::Host, name, mac, .. } if name.as_str() == "lyh-test" && *mac == a.mac)));
        assert!(
            !made.iter().any(|o| matches!(o, Op::AddAddress { .. })),
            "the caller addresses the link itself"
        );
        // Join again (a retry): the same endpoint, no second link.
        let n = e.kernel.applied.len();
        assert_eq!(e.plug(&r, &to).unwrap().id, p.id);
        assert_eq!(e.kernel.applied.len(), n);
        // Into a namespace while plugged host-side: a conflict.
        let ns = PlugTarget::Netns {
            netns: "/run/netns/c1".into(),
            ifname: None,
            unprivileged_port_start: None,
        };
        assert!(matches!(e.plug(&r, &ns), Err(Error::Conflict(_))));
        // Leave: the link goes, the addresses stay held.
        e.kernel.host.links.push(lanyard_core::kernel::LinkInfo {
            index: 77,
            name: "lyh-test".into(),
            kind: Some("macvlan".into()),
            mac: a.mac,
            mtu: 1500,
            up: false,
            lower_up: false,
            parent: Some(2),
            master: None,
        });
        let u = e.unplug(&r).unwrap().unwrap();
        assert_eq!(u.state, EndpointState::Allocated);
        assert_eq!(u.addresses, a.addresses);
        assert!(e.kernel.applied[n..]
            .iter()
            .any(|o| matches!(o, Op::DeleteLink { name, .. } if name.as_str() == "lyh-test")));
        // Plug again, into a namespace this time.
        let p = e.plug(&r, &ns).unwrap();
        assert!(p.in_netns());
        assert_eq!(p.ifname.as_str(), "eth0");
        assert_eq!(p.addresses, a.addresses);
        // Release: gone, addresses free, a second release is fine.
        assert!(e.release(&r).unwrap().is_some());
        assert!(e.release(&r).unwrap().is_none());
        assert!(e.endpoints().unwrap().is_empty());
        let again = e
            .allocate(&AllocateRequest {
                ip: Some(a.addresses[0].addr().to_string()),
                ..alloc(None)
            })
            .expect("the address is free again");
        assert_eq!(again.addresses[0], a.addresses[0]);
    }

    #[test]
    fn attach_with_an_owner_is_idempotent_and_detach_by_owner_finds_it() {
        let mut e = engine();
        let req = AttachRequest {
            network: "lan".into(),
            netns: "/run/netns/c1".into(),
            ifname: Some("eth0".into()),
            owner: Some(cni("c1")),
            ..Default::default()
        };
        let first = e.attach(&req).unwrap();
        let n = e.kernel.applied.len();
        let second = e.attach(&req).unwrap();
        assert_eq!(first.id, second.id);
        assert_eq!(e.kernel.applied.len(), n, "a repeated ADD changes nothing");
        // The same owner in another namespace: a conflict, nothing recorded.
        let elsewhere = AttachRequest {
            netns: "/run/netns/c2".into(),
            ..req.clone()
        };
        assert!(matches!(e.attach(&elsewhere), Err(Error::Conflict(_))));
        assert_eq!(e.endpoints().unwrap().len(), 1);
        let gone = e.detach(&DetachRequest::Owner(cni("c1"))).unwrap();
        assert_eq!(gone.map(|g| g.id), Some(first.id));
        assert!(e
            .detach(&DetachRequest::Owner(cni("c1")))
            .unwrap()
            .is_none());
    }

    #[test]
    fn gc_by_valid_set_releases_only_the_invalid_ones_of_its_scope() {
        let mut e = engine();
        for c in ["c1", "c2"] {
            e.attach(&AttachRequest {
                network: "lan".into(),
                netns: format!("/run/netns/{c}").into(),
                owner: Some(cni(c)),
                ..Default::default()
            })
            .unwrap();
        }
        let docker_ep = e.allocate(&alloc(Some(docker("e1")))).unwrap();
        let freed = e
            .gc_owned(
                &OwnerScope::Cni {
                    network: "lan".into(),
                },
                &[cni("c2")],
            )
            .unwrap();
        assert_eq!(freed.len(), 1);
        assert_eq!(freed[0].owner, Some(cni("c1")));
        let left: Vec<_> = e
            .endpoints()
            .unwrap()
            .into_iter()
            .map(|e| e.owner)
            .collect();
        assert!(left.contains(&Some(cni("c2"))));
        assert!(
            left.contains(&docker_ep.owner),
            "another scope is untouched"
        );
        assert_eq!(left.len(), 2);
    }

    #[test]
    fn another_hosts_endpoints_are_never_gc_ed_or_released_by_valid_set() {
        let mut e = engine().with_node("a");
        e.attach(&AttachRequest {
            network: "lan".into(),
            netns: "/run/netns/c1".into(),
            owner: Some(cni("c1")),
            ..Default::default()
        })
        .unwrap();
        // The same store seen from host b, where c1's namespace does not exist.
        let mut b = Engine::new(e.store, e.kernel, e.config).with_node("b");
        b.kernel.namespaces.clear();
        let report = b.gc().unwrap();
        assert!(report.removed.is_empty(), "{report:?}");
        let scope = OwnerScope::Cni {
            network: "lan".into(),
        };
        assert!(b.gc_owned(&scope, &[]).unwrap().is_empty());
        assert_eq!(b.endpoints().unwrap().len(), 1);
        assert_eq!(b.endpoints().unwrap()[0].node.as_deref(), Some("a"));
    }

    #[test]
    fn a_mac_already_on_the_network_is_refused_naming_mac() {
        let mut e = engine();
        let a = e.allocate(&alloc(None)).unwrap();
        let mac = a.mac.unwrap().to_string();
        let err = e
            .allocate(&AllocateRequest {
                mac: Some(mac.clone()),
                ..alloc(None)
            })
            .unwrap_err();
        assert!(
            matches!(&err, Error::Conflict(m) if m.contains("--mac")),
            "{err}"
        );
        assert_eq!(e.endpoints().unwrap().len(), 1);
    }

    #[test]
    fn publish_and_unpublish_change_the_ports_of_a_plugged_bridge_endpoint() {
        let mut e = engine();
        add_bridge(&mut e, "br");
        let ep = e
            .attach(&AttachRequest {
                network: "br".into(),
                netns: "/run/netns/c1".into(),
                ..Default::default()
            })
            .unwrap();
        let r = EndpointRef::Key(ep.id.clone());
        let n = e.kernel.applied.len();
        let p = e.publish(&r, &["8080:80".into()]).unwrap();
        assert_eq!(p.ports.len(), 1);
        let added = &e.kernel.applied[n..];
        assert!(added.iter().any(|o| matches!(o, Op::Nft { script, .. } if script.contains("add element") && script.contains("8080"))), "{added:?}");
        // Another endpoint cannot take the port.
        let other = e
            .allocate(&AllocateRequest {
                network: "br".into(),
                ..Default::default()
            })
            .unwrap();
        let clash = e.publish(&EndpointRef::Key(other.id.clone()), &["8080:80".into()]);
        assert!(matches!(clash, Err(Error::Conflict(_))));
        // A macvlan endpoint publishes nothing.
        let mv = e.allocate(&alloc(None)).unwrap();
        assert!(matches!(
            e.publish(&EndpointRef::Key(mv.id), &["81:80".into()]),
            Err(Error::Invalid { .. })
        ));
        let n = e.kernel.applied.len();
        let u = e.unpublish(&r, &[]).unwrap();
        assert!(u.ports.is_empty());
        assert!(e.kernel.applied[n..].iter().any(|o| matches!(o, Op::Nft { script, .. } if script.contains("delete element") && script.contains("8080"))));
        // The port is free again; the address stays held.
        e.publish(&EndpointRef::Key(other.id), &["8080:80".into()])
            .unwrap();
        let held = e
            .store
            .read(&mut |tx| tx.address_owner(&ep.network_id, ep.addresses[0].addr()))
            .unwrap();
        assert_eq!(held, Some(ep.id));
    }

    #[test]
    fn two_plugs_of_one_endpoint_interleaved_wire_it_once() {
        let mut first = engine();
        let a = first.allocate(&alloc(Some(docker("e1")))).unwrap();
        first.kernel.applied.clear();
        let id = a.id.clone();
        // Another process plugs it between this plug's reads and its transaction.
        let mut e = Engine::new(
            Interleaved {
                inner: first.store,
                hook: std::cell::RefCell::new(Some(Box::new(move |s: &MemStore| {
                    s.write(&mut |tx| {
                        let mut ep = tx.endpoint(&id)?.expect("allocated");
                        ep.state = EndpointState::Pending;
                        ep.host_link = Some(IfName::new("lyh-other")?);
                        tx.put_endpoint(&ep)
                    })
                    .unwrap()
                }))),
            },
            std::mem::take(&mut first.kernel),
            first.config,
        );
        let err = e
            .plug(
                &EndpointRef::Key(a.id.clone()),
                &PlugTarget::Host {
                    name: "lyh-mine".into(),
                },
            )
            .unwrap_err();
        assert!(matches!(err, Error::TryAgain(_)), "{err}");
        assert!(
            !e.kernel
                .applied
                .iter()
                .any(|o| matches!(o, Op::CreateMacvlan { .. })),
            "nothing wired by the plug that lost"
        );
    }
}
