//! Keeping kernel and store in step: `restore` (after a reboot or when pieces went
//! missing) re-plans every network and endpoint from the store; `gc` forgets
//! endpoints whose namespace is gone, finishes attaches a crash interrupted, and
//! deletes links lanyard left behind (tombstones, orphaned bridges and shims).

use crate::lock::Mode;
use crate::{now, Engine};
use lanyard_core::apply::{apply_all, apply_best_effort, apply_ensure};
use lanyard_core::kernel::{is_tombstone, Kernel};
use lanyard_core::model::{Endpoint, EndpointState, Network};
use lanyard_core::op::{Netns, Op};
use lanyard_core::plan;
use lanyard_core::store::{Store, Unreadable};
use lanyard_core::Result;
use serde::Serialize;

/// Without the cross-process lock, a pending record older than this belongs to an
/// attach that died.
pub const PENDING_GRACE_SECS: u64 = 60;

/// What `restore` or `gc` did.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// Things brought back or checked fine ("network lan: bridge lyb-…").
    pub restored: Vec<String>,
    /// Things removed.
    pub removed: Vec<String>,
    /// Failures (the verb keeps going past them).
    pub errors: Vec<String>,
}

impl<S: Store, K: Kernel> Engine<S, K> {
    fn netns_alive(&mut self, ep: &Endpoint) -> bool {
        ep.in_netns()
            && self
                .kernel
                .netns_id(&ep.netns)
                .is_ok_and(|id| id == ep.netns_inode)
    }

    /// `restore`: brings back bridges, VLAN parents, shims, host routes and every
    /// endpoint whose namespace still exists; forgets the others.
    pub fn restore(&mut self) -> Result<Report> {
        let _lock = self.lock(Mode::Exclusive)?;
        self.check_store()?;
        let mut report = Report::default();
        let (networks, endpoints, bad) = self
            .store
            .read(&mut |tx| Ok((tx.networks()?, tx.endpoints()?, tx.unreadable()?)))?;
        report_unreadable(&bad, &mut report);
        self.ensure_networks(&networks, &mut report)?;
        for ep in &endpoints {
            // Another host's endpoint (a shared store) is that host's to restore.
            if !self.is_local(ep) {
                continue;
            }
            let Some(net) = networks.iter().find(|n| n.id == ep.network_id) else {
                self.forget(ep, &mut report, "its network is gone");
                continue;
            };
            // Only allocated, or plugged host-side: its caller holds the link (Docker
            // moves it, and joins again after a reboot).
            if ep.state == EndpointState::Allocated
                || (!ep.in_netns() && ep.state == EndpointState::Active)
            {
                continue;
            }
            if !self.netns_alive(ep) {
                self.forget(ep, &mut report, "its namespace is gone");
                continue;
            }
            if ep.state == EndpointState::Detaching {
                self.forget(ep, &mut report, "a detach was interrupted");
                continue;
            }
            match self.restore_endpoint(net, ep) {
                Ok(true) => {
                    report
                        .restored
                        .push(format!("endpoint {} on {}", ep.display_name(), net.name))
                }
                Ok(false) => {}
                Err(e) => report
                    .errors
                    .push(format!("endpoint {}: {e}", ep.display_name())),
            }
            // A DHCP endpoint asks for its address again (INIT-REBOOT).
            if let (Some(lease), true) = (&ep.lease, ep.state == EndpointState::Active) {
                match self.rebind_from_scratch(net, ep, Some(lease.address)) {
                    Ok(Some((what, _))) => report
                        .restored
                        .push(format!("endpoint {}: {what}", ep.display_name())),
                    Ok(None) => {}
                    Err(e) => report
                        .errors
                        .push(format!("endpoint {}: DHCP: {e}", ep.display_name())),
                }
            }
        }
        if networks
            .iter()
            .any(|n| n.driver == lanyard_core::model::Driver::Bridge)
        {
            match self.rebuild_firewall() {
                Ok(()) => report
                    .restored
                    .push("nftables tables inet/bridge lanyard".into()),
                Err(e) => report.errors.push(format!("firewall: {e}")),
            }
        }
        Ok(report)
    }

    /// Makes every network's host-side pieces exist (what a killed `network create`
    /// or `network rm` left half done, or a reboot took). Reports a network only when
    /// a piece was missing (the sysctls every plan sets again do not count). Whether
    /// a bridge network was repaired (its firewall elements need a rebuild).
    fn ensure_networks(&mut self, networks: &[Network], report: &mut Report) -> Result<bool> {
        let mut bridge_repaired = false;
        for net in networks {
            let host = self.kernel.view(&Netns::Host)?;
            let missing = |ops: &[Op]| {
                ops.iter()
                    .filter(|o| !matches!(o, Op::SetSysctl { .. }))
                    .count()
            };
            match plan::network_infra(net, &host)
                .and_then(|ops| apply_ensure(&mut self.kernel, &ops).map(|_| missing(&ops)))
            {
                Ok(0) => {}
                Ok(n) => {
                    bridge_repaired |= net.driver == lanyard_core::model::Driver::Bridge;
                    report
                        .restored
                        .push(format!("network {}: {n} host-side steps", net.name))
                }
                Err(e) => report.errors.push(format!("network {}: {e}", net.name)),
            }
        }
        Ok(bridge_repaired)
    }

    /// Re-wires one endpoint if its link or host side is missing. Ok(true) if it
    /// had to do anything beyond refreshing host routes.
    fn restore_endpoint(&mut self, net: &Network, ep: &Endpoint) -> Result<bool> {
        let host = self.kernel.view(&Netns::Host)?;
        let inside = self.kernel.view(&Netns::Path(ep.netns.clone()))?;
        let link_ok = inside.link(ep.ifname.as_str()).is_some();
        let host_side_ok = match (
            &ep.host_ifname,
            net.bridge.as_ref().and_then(|b| host.link(b.as_str())),
        ) {
            (Some(v), Some(br)) => host
                .link(v.as_str())
                .is_some_and(|l| l.master == Some(br.index)),
            (Some(_), None) => false,
            (None, _) => true,
        };
        if link_ok && host_side_ok {
            let ops: Vec<Op> = plan::endpoint_host_routes(net, ep, &host)
                .into_iter()
                .map(|route| Op::AddRoute {
                    netns: Netns::Host,
                    route,
                })
                .collect();
            apply_all(&mut self.kernel, &ops)?;
            return Ok(false);
        }
        if link_ok {
            let ops = plan::endpoint_teardown(
                net,
                ep,
                &host,
                true,
                lanyard_core::kernel::tombstone_name(crate::nonce()),
            );
            for op in &ops {
                if let Op::RetireLink {
                    netns, tombstone, ..
                } = op
                {
                    self.kernel.apply(op)?;
                    self.kernel.apply(&Op::DeleteLink {
                        netns: netns.clone(),
                        name: tombstone.clone(),
                    })?;
                }
            }
        }
        if let Some(v) = &ep.host_ifname {
            self.kernel.apply(&Op::DeleteLink {
                netns: Netns::Host,
                name: v.clone(),
            })?;
        }
        let host = self.kernel.view(&Netns::Host)?;
        let mut ops = plan::endpoint_ops(net, ep, &host)?;
        // A DHCP endpoint's classless routes (option 121) come from its lease.
        if let Some(lease) = &ep.lease {
            ops.extend(crate::dhcp::lease_routes(ep, lease));
        }
        apply_all(&mut self.kernel, &ops)?;
        Ok(true)
    }

    fn forget(&mut self, ep: &Endpoint, report: &mut Report, why: &str) {
        match self.remove_endpoint(ep) {
            Ok(()) => report
                .removed
                .push(format!("endpoint {} ({why})", ep.display_name())),
            Err(e) => report
                .errors
                .push(format!("endpoint {}: {e}", ep.display_name())),
        }
    }

    /// `gc`: reports records it cannot read, forgets endpoints whose namespace is gone (freeing their addresses),
    /// removes pending records a crash left, frees address reservations no endpoint
    /// claimed in time, deletes tombstones and orphaned links.
    pub fn gc(&mut self) -> Result<Report> {
        let _lock = self.lock(Mode::Exclusive)?;
        self.check_store()?;
        let mut report = Report::default();
        let (networks, endpoints, bad) = self
            .store
            .read(&mut |tx| Ok((tx.networks()?, tx.endpoints()?, tx.unreadable()?)))?;
        report_unreadable(&bad, &mut report);
        // A `lyv-` veth may be an unreadable endpoint's: none is taken for a stray.
        let all_endpoints_known = !bad.iter().any(|u| u.kind == "endpoint");
        for ep in &endpoints {
            if !self.is_local(ep) {
                // Another host's: its gc (or `gc --host`) decides.
            } else if !networks.iter().any(|n| n.id == ep.network_id) {
                self.forget(ep, &mut report, "its network is gone");
            } else if ep.in_netns() && !self.netns_alive(ep) {
                self.forget(ep, &mut report, "its namespace is gone");
            } else if ep.state == EndpointState::Detaching {
                self.forget(ep, &mut report, "a detach was interrupted");
            } else if ep.state == EndpointState::Pending
                // Holding the lock exclusively, gc runs while no attach of this host
                // is under way (each holds it shared until it is done): a pending
                // record is a dead attach's. Without a run dir, wait out the grace.
                && (self.locks.dir().is_some()
                    || now().saturating_sub(ep.created) > PENDING_GRACE_SECS)
            {
                self.forget(ep, &mut report, "an attach was interrupted");
            }
        }
        // Addresses reserved for an endpoint that never came (Docker's IPAM).
        match self.free_stale_reservations(crate::reserve::reservation_max_age()) {
            Ok(freed) => report.removed.extend(freed),
            Err(e) => report.errors.push(format!("reservations: {e}")),
        }
        if self.ensure_networks(&networks, &mut report)? {
            if let Err(e) = self.rebuild_firewall() {
                report.errors.push(format!("firewall: {e}"));
            }
        }
        let host = self.kernel.view(&Netns::Host)?;
        let remaining = self.endpoints()?;
        let live_veths: Vec<String> = remaining
            .iter()
            .filter_map(|e| e.host_ifname.as_ref().map(|h| h.to_string()))
            .collect();
        let mut ops = vec![];
        // Only what lanyard's own verbs leave: a tombstone is a retired endpoint link
        // (macvlan, ipvlan or veth), a stray `lyv-` the host side of a veth whose
        // record is gone. Bridges, shims and VLAN links are removed by `network rm`
        // (kernel first, record last), never guessed from a name: an administrator's
        // bridge called `lyx-0000` or `lyb-lab` is not lanyard's.
        for l in &host.links {
            let kind = l.kind.as_deref();
            let endpoint_kind = matches!(kind, Some("macvlan" | "ipvlan" | "veth"));
            let stray_veth = all_endpoints_known
                && l.name.starts_with("lyv-")
                && kind == Some("veth")
                && !live_veths.contains(&l.name);
            if (is_tombstone(&l.name) && endpoint_kind) || stray_veth {
                if let Ok(name) = lanyard_core::name::IfName::new(&l.name) {
                    ops.push(Op::DeleteLink {
                        netns: Netns::Host,
                        name,
                    });
                    report.removed.push(format!("link {}", l.name));
                }
            }
        }
        // Tombstones a reaper missed inside the endpoints' namespaces (a detach or a
        // daemon killed before the delete): one look at each live namespace of the
        // endpoints read above, those just forgotten included (a detach killed before
        // its hand-off left its record, detaching, and the tombstone).
        let mut seen = vec![];
        for ep in &endpoints {
            if seen.contains(&ep.netns_inode) || !self.netns_alive(ep) {
                continue;
            }
            seen.push(ep.netns_inode);
            let netns = Netns::Path(ep.netns.clone());
            let inside = match self.kernel.view(&netns) {
                Ok(v) => v,
                Err(e) => {
                    report
                        .errors
                        .push(format!("namespace {}: {e}", ep.netns.display()));
                    continue;
                }
            };
            for l in &inside.links {
                let endpoint_kind =
                    matches!(l.kind.as_deref(), Some("macvlan" | "ipvlan" | "veth"));
                if is_tombstone(&l.name) && endpoint_kind {
                    if let Ok(name) = lanyard_core::name::IfName::new(&l.name) {
                        ops.push(Op::DeleteLink {
                            netns: netns.clone(),
                            name,
                        });
                        report
                            .removed
                            .push(format!("link {} in {}", l.name, ep.netns.display()));
                    }
                }
            }
        }
        for e in apply_best_effort(&mut self.kernel, &ops) {
            report.errors.push(e.to_string());
        }
        Ok(report)
    }
}

/// Each record that cannot be read, as an error with the way out. An endpoint's keeps
/// its addresses held (its link may be live) until `detach ID` forgets it.
fn report_unreadable(bad: &[Unreadable], report: &mut Report) {
    for u in bad {
        report.errors.push(match u.kind {
            "endpoint" => format!(
                "endpoint record {} is unreadable ({}): left alone, its addresses held; \
                 `lanyard detach {}` forgets it (its links, if any, stay: check its container first)",
                u.id, u.why, u.id
            ),
            _ => format!(
                "{} record {} is unreadable ({}): network create and rm stop until state.db is \
                 restored from a backup or the row deleted",
                u.kind, u.id, u.why
            ),
        });
    }
}

#[cfg(test)]
mod tests {
    use crate::Engine;
    use lanyard_core::kernel::fake::FakeKernel;
    use lanyard_core::model::AttachRequest;
    use lanyard_core::op::Op;
    use lanyard_core::store::mem::MemStore;
    use lanyard_core::store::Store;
    use lanyard_core::testing::NetworkBuilder;

    #[test]
    fn gc_forgets_endpoints_whose_namespace_is_gone_and_frees_their_address() {
        let mut k = FakeKernel::with_eth0(&["192.0.2.2/24"]);
        k.namespaces.push(("/run/netns/c1".into(), (1, 10)));
        let mut e = Engine::new(MemStore::default(), k, Default::default());
        let b = NetworkBuilder::new("b").subnet("203.0.113.0/24");
        e.create_network(&b.request()).unwrap();
        let ep = e
            .attach(&AttachRequest {
                network: "b".into(),
                netns: "/run/netns/c1".into(),
                ..Default::default()
            })
            .unwrap();
        e.kernel.namespaces.clear();
        let r = e.gc().unwrap();
        assert_eq!(r.removed.len(), 1, "{r:?}");
        assert!(e.endpoints().unwrap().is_empty());
        let owner = e
            .store
            .read(&mut |tx| tx.address_owner(&ep.network_id, ep.addresses[0].addr()))
            .unwrap();
        assert_eq!(owner, None);
    }

    #[test]
    fn restore_recreates_missing_network_pieces() {
        let mut e = Engine::new(
            MemStore::default(),
            FakeKernel::with_eth0(&["192.0.2.2/24"]),
            Default::default(),
        );
        let m = NetworkBuilder::new("m")
            .driver("macvlan")
            .option("parent=eth0")
            .subnet("192.0.2.0/24");
        e.create_network(&m.request()).unwrap();
        let n = e.kernel.applied.len();
        e.restore().unwrap();
        // The fake host never shows the shim, so restore plans it again.
        assert!(e.kernel.applied[n..]
            .iter()
            .any(|o| matches!(o, Op::CreateMacvlan { .. })));
    }

    #[test]
    fn gc_deletes_tombstones_but_never_a_link_it_did_not_make() {
        let mut e = Engine::new(
            MemStore::default(),
            FakeKernel::with_eth0(&["192.0.2.2/24"]),
            Default::default(),
        );
        for (i, (name, kind)) in [
            ("lyx-0000", "bridge"),      // an administrator's bridge
            ("lyb-lab", "bridge"),       // another one, in lanyard's style
            ("lys-00000000", "macvlan"), // a shim no network records
            ("lyx-1234abcd", "macvlan"), // a retired endpoint link
        ]
        .into_iter()
        .enumerate()
        {
            let mut l = e.kernel.host.links[1].clone();
            l.name = name.into();
            l.kind = Some(kind.into());
            l.index = 50 + i as u32;
            e.kernel.host.links.push(l);
        }
        e.gc().unwrap();
        let deleted: Vec<String> = e
            .kernel
            .applied
            .iter()
            .filter_map(|o| match o {
                Op::DeleteLink { name, .. } => Some(name.to_string()),
                _ => None,
            })
            .collect();
        assert_eq!(deleted, ["lyx-1234abcd"]);
    }
}
