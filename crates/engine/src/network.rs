//! Network verbs: create (with pool choice and conflict checks), list, inspect,
//! remove, prune.

use crate::lock::Mode;
use crate::{new_id, now, Engine};
use ipnet::IpNet;
use lanyard_core::apply::{apply_best_effort, apply_ensure};
use lanyard_core::kernel::{Kernel, View};
use lanyard_core::model::{Driver, Network, NetworkRequest, SubnetConfig};
use lanyard_core::op::Netns;
use lanyard_core::plan;
use lanyard_core::store::Store;
use lanyard_core::{Error, Result};
use serde::Serialize;
use std::collections::BTreeMap;

/// A network with its endpoint count, for `ls` and `inspect`.
#[derive(Debug, Clone, Serialize)]
pub struct NetworkSummary {
    /// The network.
    #[serde(flatten)]
    pub network: Network,
    /// Endpoints attached.
    pub endpoints: usize,
}

/// Links owned by lanyard (their routes never count as conflicts).
fn is_lanyard_link(name: &str) -> bool {
    ["lyb-", "lys-", "lyv-", "lyx-"]
        .iter()
        .any(|p| name.starts_with(p))
}

/// Refuses a subnet that overlaps a host route or another network on the same
/// segment (parent or bridge). The parent's own connected LAN route is allowed.
fn check_conflicts(net: &Network, others: &[Network], host: &View) -> Result<()> {
    // The link whose connected route is the LAN the endpoints join: the parent, or
    // the host's own bridge of an external bridge network.
    let parent_index = net
        .parent
        .as_ref()
        .or(net.bridge.as_ref().filter(|_| net.bridge_external))
        .and_then(|p| host.link(p.as_str()))
        .map(|l| l.index);
    for sc in &net.subnets {
        let s = sc.subnet;
        for o in others {
            let same_segment = match (net.driver, o.driver) {
                (Driver::Bridge, Driver::Bridge) => true,
                _ => net.parent.is_some() && net.parent == o.parent,
            };
            if let Some(os) = o
                .subnets
                .iter()
                .find(|os| os.subnet.contains(&s) || s.contains(&os.subnet))
            {
                if same_segment {
                    return Err(Error::Conflict(format!(
                        "subnet {s} overlaps subnet {} of network {} on the same {}; pick another subnet",
                        os.subnet,
                        o.name,
                        if net.driver == Driver::Bridge { "host".to_string() } else { format!("parent {}", o.parent.as_ref().map(|p| p.as_str()).unwrap_or("")) }
                    )));
                }
            }
        }
        for r in &host.routes {
            if r.dst.prefix_len() == 0 {
                continue; // default routes overlap everything
            }
            let dev = r.oif.and_then(|i| host.link_by_index(i));
            if dev.is_some_and(|d| is_lanyard_link(&d.name)) {
                continue;
            }
            if !(r.dst.contains(&s) || s.contains(&r.dst)) {
                continue;
            }
            // The parent's own connected route: the LAN the macvlan endpoints join.
            let parents_lan =
                parent_index.is_some() && r.oif == parent_index && r.gateway.is_none();
            if parents_lan && (net.driver != Driver::Bridge || net.bridge_external) {
                continue;
            }
            let devname = dev.map(|d| d.name.clone()).unwrap_or_else(|| "?".into());
            return Err(Error::Conflict(format!(
                "subnet {s} overlaps route {}{} dev {devname} of this host; pick another subnet",
                r.dst,
                r.gateway.map(|g| format!(" via {g}")).unwrap_or_default()
            )));
        }
    }
    Ok(())
}

/// Host links the new network would use or make, against what exists and what the
/// other networks use: lanyard never takes over an interface it did not create (a
/// bridge named after the host's `eth0` or `lo`, another network's bridge), and one
/// parent carries one kind of child (the kernel refuses macvlan beside ipvlan, and
/// keeps one ipvlan mode per parent: a second mode would switch every endpoint).
/// Records whether lanyard makes the VLAN parent (and so may remove it).
fn check_links(net: &mut Network, others: &[Network], host: &View) -> Result<()> {
    if let Some(br) = &net.bridge {
        if let Some(o) = others.iter().find(|o| o.bridge.as_ref() == Some(br)) {
            return Err(Error::Conflict(format!(
                "-o bridge_name {br}: the bridge of network {}; pick another name",
                o.name
            )));
        }
        if host.link(br.as_str()).is_some() && !net.bridge_external {
            return Err(Error::invalid(
                "-o bridge_name",
                br,
                "an interface of that name exists and lanyard did not create it; pick a new name (lanyard makes the bridge)",
            ));
        }
    }
    let Some(parent) = net.parent.clone() else {
        return Ok(());
    };
    let siblings: Vec<&Network> = others
        .iter()
        .filter(|o| o.parent.as_ref() == Some(&parent))
        .collect();
    let mode = |n: &Network| format!("{:?}", n.ipvlan_mode.unwrap_or_default()).to_lowercase();
    for o in &siblings {
        let clash = match (net.driver, o.driver) {
            (Driver::Ipvlan, Driver::Ipvlan) if o.ipvlan_mode != net.ipvlan_mode => Some(format!(
                "-o ipvlan_mode: parent {parent} already carries ipvlan network {} in mode {}, and the kernel keeps one mode per parent (a second would switch every endpoint); use mode {} or another parent",
                o.name,
                mode(o),
                mode(o),
            )),
            (Driver::Ipvlan, Driver::Macvlan) | (Driver::Macvlan, Driver::Ipvlan) => Some(format!(
                "-o parent {parent}: already the parent of {} network {}, and the kernel does not put macvlan and ipvlan links on one parent",
                o.driver, o.name
            )),
            _ => None,
        };
        if let Some(why) = clash {
            return Err(Error::Conflict(why));
        }
    }
    if parent.vlan().is_some() {
        net.owns_vlan =
            host.link(parent.as_str()).is_none() || siblings.iter().any(|o| o.owns_vlan);
    }
    Ok(())
}

/// Subnets a new pool subnet must not overlap: every network's, and the host's
/// routes (not the default) and addresses.
pub(crate) fn taken_subnets(others: &[Network], host: &View) -> Vec<IpNet> {
    let mut taken: Vec<IpNet> = others
        .iter()
        .flat_map(|o| o.subnets.iter().map(|s| s.subnet))
        .collect();
    taken.extend(
        host.routes
            .iter()
            .filter(|r| r.dst.prefix_len() > 0)
            .map(|r| r.dst),
    );
    taken.extend(host.addresses.iter().map(|a| a.addr.trunc()));
    taken
}

impl<S: Store, K: Kernel> Engine<S, K> {
    /// `network create`: validate, pick pool subnets if none given, check conflicts,
    /// record, and set up host-side pieces (bridge, VLAN parent, host-access shim).
    pub fn create_network(&mut self, req: &NetworkRequest) -> Result<Network> {
        let mut net = req.validate(new_id(), now())?;
        let _lock = self.lock(Mode::Exclusive)?;
        self.check_store()?;
        let host = self.kernel.view(&Netns::Host)?;
        if let Some(p) = &net.parent {
            let base = p.vlan().map(|(b, _)| b).unwrap_or_else(|| p.clone());
            let Some(lower) = host.link(p.as_str()).or_else(|| host.link(base.as_str())) else {
                return Err(Error::invalid(
                    "-o parent",
                    p,
                    "no such interface in this namespace",
                ));
            };
            // A macvlan or ipvlan child cannot carry more than its parent.
            if let Some(mtu) = net.mtu.filter(|m| *m > lower.mtu) {
                return Err(Error::invalid(
                    "-o mtu",
                    mtu,
                    format!("is above the MTU of parent {} ({})", lower.name, lower.mtu),
                ));
            }
        }
        if let Some(br) = net.bridge.as_ref().filter(|_| net.bridge_external) {
            // Used as it is: it must be there, and be a bridge.
            match host.link(br.as_str()) {
                Some(l) if l.kind.as_deref() == Some("bridge") => {}
                Some(_) => {
                    return Err(Error::invalid("-o bridge", br, "is not a bridge"));
                }
                None => {
                    return Err(Error::invalid(
                        "-o bridge",
                        br,
                        "no such bridge on this host (bridge_external uses one that exists)",
                    ));
                }
            }
        }
        let config = self.config.clone();
        let net = self.store.write(&mut |tx| {
            let others = tx.networks()?;
            refuse_unreadable(tx, None)?;
            if others.iter().any(|o| o.name == net.name) {
                return Err(Error::Conflict(format!(
                    "network {} already exists",
                    net.name
                )));
            }
            // A DHCP network's addresses are the LAN server's: no pool subnet.
            if net.driver.has_ipam() && net.ipam.is_default() {
                let mut taken = taken_subnets(&others, &host);
                let want_v4 = !net.subnets.iter().any(|s| s.subnet.addr().is_ipv4());
                let want_v6 = net.ipv6 && !net.subnets.iter().any(|s| s.subnet.addr().is_ipv6());
                for (v6, want) in [(false, want_v4), (true, want_v6)] {
                    if !want {
                        continue;
                    }
                    let subnet = config.pick_subnet(v6, &taken).ok_or_else(|| {
                        Error::Conflict(format!(
                            "no free IPv{} subnet left in the default address pools; pass --subnet",
                            if v6 { 6 } else { 4 }
                        ))
                    })?;
                    taken.push(subnet);
                    net.subnets.push(SubnetConfig {
                        subnet,
                        gateway: lanyard_core::model::first_host(&subnet),
                        ip_range: None,
                        aux_addresses: BTreeMap::new(),
                    });
                }
            }
            check_conflicts(&net, &others, &host)?;
            check_links(&mut net, &others, &host)?;
            tx.put_network(&net)?;
            Ok(net.clone())
        })?;
        let ops = match plan::network_infra(&net, &host) {
            Ok(ops) => ops,
            Err(e) => {
                self.store.write(&mut |tx| tx.delete_network(&net.id))?;
                return Err(e);
            }
        };
        let setup = apply_ensure(&mut self.kernel, &ops).and_then(|()| {
            if net.driver == Driver::Bridge {
                self.rebuild_firewall()
            } else {
                Ok(())
            }
        });
        if let Err(e) = setup {
            // Undo what this create made (only links it records as its own), then
            // forget it: a crash in between leaves a record `network rm` finishes.
            let others: Vec<Network> = self
                .store
                .read(&mut |tx| tx.networks())?
                .into_iter()
                .filter(|o| o.id != net.id)
                .collect();
            let host = self.kernel.view(&Netns::Host)?;
            apply_best_effort(
                &mut self.kernel,
                &plan::network_teardown(&net, &others, &host),
            );
            self.store.write(&mut |tx| tx.delete_network(&net.id))?;
            return Err(e);
        }
        Ok(net)
    }

    /// All networks with endpoint counts.
    pub fn networks(&self) -> Result<Vec<NetworkSummary>> {
        self.store.read(&mut |tx| {
            let eps = tx.endpoints()?;
            Ok(tx
                .networks()?
                .into_iter()
                .map(|n| NetworkSummary {
                    endpoints: eps.iter().filter(|e| e.network_id == n.id).count(),
                    network: n,
                })
                .collect())
        })
    }

    /// One network by name or id.
    pub fn network(&self, key: &str) -> Result<Network> {
        self.store
            .read(&mut |tx| tx.network(key))?
            .ok_or_else(|| Error::not_found("network", key))
    }

    /// `network rm`: refused while endpoints are attached. Removes host-side pieces
    /// no other network shares.
    pub fn remove_network(&mut self, key: &str) -> Result<Network> {
        let _lock = self.lock(Mode::Exclusive)?;
        // An older store may not know the endpoints that use the network now.
        self.check_store()?;
        // Kernel first, record last: a crash or a failed step in between leaves the
        // network recorded, and `network rm` again (or `restore`) finishes it; gc
        // never has to guess which unrecorded links were lanyard's.
        let idle = |tx: &dyn lanyard_core::store::Tx| -> Result<Network> {
            let net = tx
                .network(key)?
                .ok_or_else(|| Error::not_found("network", key))?;
            refuse_unreadable(tx, Some(&net.id))?;
            let eps: Vec<String> = tx
                .endpoints()?
                .into_iter()
                .filter(|e| e.network_id == net.id)
                .map(|e| e.display_name())
                .collect();
            if !eps.is_empty() {
                return Err(Error::Conflict(format!(
                    "network {} has active endpoints ({}); detach them first",
                    net.name,
                    eps.join(", ")
                )));
            }
            Ok(net)
        };
        let (net, others) = self.store.read(&mut |tx| {
            let net = idle(tx)?;
            let others: Vec<Network> = tx
                .networks()?
                .into_iter()
                .filter(|o| o.id != net.id)
                .collect();
            Ok((net, others))
        })?;
        let host = self.kernel.view(&Netns::Host)?;
        let errors = apply_best_effort(
            &mut self.kernel,
            &plan::network_teardown(&net, &others, &host),
        );
        // A link already gone is what we wanted.
        if let Some(e) = errors
            .into_iter()
            .find(|e| !matches!(e, Error::NotFound { .. }))
        {
            return Err(Error::Other(format!(
                "network {}: teardown failed: {e}; the network is kept: fix the cause and run `lanyard network rm {}` again",
                net.name, net.name
            )));
        }
        self.store.write(&mut |tx| {
            let net = idle(tx)?;
            tx.delete_network(&net.id)
        })?;
        if net.driver == Driver::Bridge {
            self.rebuild_firewall().map_err(|e| {
                Error::Other(format!(
                    "network {} removed, but the firewall rebuild failed: {e}; run `lanyard restore`",
                    net.name
                ))
            })?;
        }
        Ok(net)
    }

    /// `network prune`: removes every network without endpoints.
    pub fn prune_networks(&mut self) -> Result<Vec<Network>> {
        let idle: Vec<String> = self
            .networks()?
            .into_iter()
            .filter(|s| s.endpoints == 0)
            .map(|s| s.network.id)
            .collect();
        let mut removed = vec![];
        for id in idle {
            match self.remove_network(&id) {
                Ok(n) => removed.push(n),
                Err(Error::Conflict(_) | Error::NotFound { .. }) => {} // raced with an attach or another prune
                Err(e) => return Err(e),
            }
        }
        Ok(removed)
    }
}

/// A network record that cannot be read hides its subnets, bridge and parent (create
/// could overlap it, rm take a shared shim); an endpoint record of network `net_id`
/// that cannot be read may be live on it. Either stops the verb.
fn refuse_unreadable(tx: &dyn lanyard_core::store::Tx, net_id: Option<&str>) -> Result<()> {
    let bad = tx.unreadable()?;
    let Some(u) = bad
        .iter()
        .find(|u| u.kind == "network" || (net_id.is_some() && u.network_id.as_deref() == net_id))
    else {
        return Ok(());
    };
    Err(Error::Conflict(format!(
        "{} record {} is unreadable ({}); `lanyard gc` says how to clear it",
        u.kind, u.id, u.why
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanyard_core::kernel::fake::FakeKernel;
    use lanyard_core::kernel::RouteInfo;
    use lanyard_core::op::Op;
    use lanyard_core::store::mem::MemStore;

    fn engine() -> Engine<MemStore, FakeKernel> {
        Engine::new(
            MemStore::default(),
            FakeKernel::with_eth0(&["192.0.2.2/24", "2001:db8:1::2/64"]),
            Default::default(),
        )
    }

    fn req(name: &str, driver: &str, subnet: &str, opts: &[&str]) -> NetworkRequest {
        NetworkRequest {
            name: name.into(),
            driver: Some(driver.into()),
            subnets: if subnet.is_empty() {
                vec![]
            } else {
                vec![subnet.into()]
            },
            options: opts.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn two_macvlan_networks_share_a_parent_with_different_subnets() {
        let mut e = engine();
        e.create_network(&req("a", "macvlan", "192.0.2.0/24", &["parent=eth0"]))
            .unwrap();
        e.create_network(&req("b", "macvlan", "198.51.100.0/24", &["parent=eth0"]))
            .unwrap();
        let err = e
            .create_network(&req("c", "macvlan", "198.51.100.128/25", &["parent=eth0"]))
            .unwrap_err();
        assert!(
            matches!(err, Error::Conflict(_)) && err.to_string().contains("network b"),
            "{err}"
        );
    }

    #[test]
    fn overlapping_a_host_route_is_refused_naming_the_route() {
        let mut e = engine();
        e.kernel.host.routes.push(RouteInfo {
            dst: "203.0.113.0/25".parse().unwrap(),
            gateway: Some("192.0.2.1".parse().unwrap()),
            oif: Some(2),
            src: None,
            protocol: 4,
        });
        let err = e
            .create_network(&req("a", "bridge", "203.0.113.0/24", &[]))
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("203.0.113.0/25 via 192.0.2.1 dev eth0"),
            "{err}"
        );
        // A bridge may not sit on the host's own LAN either.
        assert!(e
            .create_network(&req("b", "bridge", "192.0.2.0/24", &[]))
            .is_err());
        assert_eq!(e.networks().unwrap().len(), 0);
    }

    #[test]
    fn without_subnet_the_first_free_pool_subnet_is_picked() {
        let mut e = engine();
        e.kernel.host.routes.push(RouteInfo {
            dst: "10.89.0.0/24".parse().unwrap(),
            gateway: None,
            oif: Some(2),
            src: None,
            protocol: 2,
        });
        let a = e.create_network(&req("a", "bridge", "", &[])).unwrap();
        assert_eq!(a.subnets[0].subnet.to_string(), "10.89.1.0/24");
        let b = e.create_network(&req("b", "bridge", "", &[])).unwrap();
        assert_eq!(b.subnets[0].subnet.to_string(), "10.89.2.0/24");
    }

    #[test]
    fn duplicate_name_and_missing_parent_change_nothing() {
        let mut e = engine();
        e.create_network(&req("a", "bridge", "", &[])).unwrap();
        assert!(matches!(
            e.create_network(&req("a", "bridge", "", &[])).unwrap_err(),
            Error::Conflict(_)
        ));
        let err = e
            .create_network(&req("m", "macvlan", "192.0.2.0/24", &["parent=eth7"]))
            .unwrap_err();
        assert!(err.to_string().contains("eth7"));
        assert_eq!(e.networks().unwrap().len(), 1);
    }

    #[test]
    fn failed_setup_leaves_no_record() {
        let mut e = engine();
        e.kernel.fail_at = Some(0);
        assert!(e.create_network(&req("a", "bridge", "", &[])).is_err());
        assert!(e.networks().unwrap().is_empty());
    }

    /// A host link the administrator made (not lanyard), e.g. `eth0.10` or a bridge.
    fn admin_link(e: &mut Engine<MemStore, FakeKernel>, name: &str, kind: &str) {
        let mut l = e.kernel.host.links[1].clone();
        l.name = name.into();
        l.kind = Some(kind.into());
        l.index = 100 + e.kernel.host.links.len() as u32;
        e.kernel.host.links.push(l);
    }

    fn deleted(e: &Engine<MemStore, FakeKernel>, name: &str) -> bool {
        e.kernel
            .applied
            .iter()
            .any(|o| matches!(o, Op::DeleteLink { name: n, .. } if n.as_str() == name))
    }

    #[test]
    fn a_bridge_name_that_exists_is_refused_and_nothing_is_deleted() {
        let mut e = engine();
        for taken in ["eth0", "lo"] {
            let err = e
                .create_network(&req("x", "bridge", "", &[&format!("bridge_name={taken}")]))
                .unwrap_err();
            assert!(
                matches!(&err, Error::Invalid { field, .. } if field == "-o bridge_name"),
                "{err}"
            );
        }
        e.create_network(&req("a", "bridge", "", &["bridge_name=br-a"]))
            .unwrap();
        admin_link(&mut e, "br-a", "bridge"); // the fake does not model creation
        let err = e
            .create_network(&req("b", "bridge", "", &["bridge_name=br-a"]))
            .unwrap_err();
        assert!(
            matches!(err, Error::Conflict(_)) && err.to_string().contains("network a"),
            "{err}"
        );
        assert!(!deleted(&e, "br-a"), "a refused create deletes nothing");
        assert!(!deleted(&e, "eth0") && !deleted(&e, "lo"));
        assert_eq!(e.networks().unwrap().len(), 1);
    }

    #[test]
    fn network_rm_keeps_a_vlan_link_the_administrator_made() {
        let mut e = engine();
        admin_link(&mut e, "eth0.10", "vlan");
        e.create_network(&req("v", "macvlan", "198.51.100.0/24", &["parent=eth0.10"]))
            .unwrap();
        assert!(!e.network("v").unwrap().owns_vlan);
        e.remove_network("v").unwrap();
        assert!(!deleted(&e, "eth0.10"), "the administrator's eth0.10 stays");
        // One lanyard makes is lanyard's to remove, with the last network on it.
        let mut e = engine();
        e.create_network(&req("v", "macvlan", "198.51.100.0/24", &["parent=eth0.20"]))
            .unwrap();
        admin_link(&mut e, "eth0.20", "vlan"); // now it exists
        e.create_network(&req("w", "macvlan", "203.0.113.0/24", &["parent=eth0.20"]))
            .unwrap();
        assert!(e.network("w").unwrap().owns_vlan, "shared ownership");
        e.remove_network("v").unwrap();
        assert!(!deleted(&e, "eth0.20"), "still used by w");
        e.remove_network("w").unwrap();
        assert!(deleted(&e, "eth0.20"));
    }

    #[test]
    fn one_parent_carries_one_ipvlan_mode_and_one_kind_of_child() {
        let mut e = engine();
        e.create_network(&req(
            "l2",
            "ipvlan",
            "198.51.100.0/25",
            &["parent=eth0", "ipvlan_mode=l2"],
        ))
        .unwrap();
        let err = e
            .create_network(&req(
                "l3",
                "ipvlan",
                "198.51.100.128/25",
                &["parent=eth0", "ipvlan_mode=l3"],
            ))
            .unwrap_err();
        assert!(
            matches!(err, Error::Conflict(_))
                && err.to_string().contains("ipvlan_mode")
                && err.to_string().contains("network l2"),
            "{err}"
        );
        let err = e
            .create_network(&req("m", "macvlan", "203.0.113.0/24", &["parent=eth0"]))
            .unwrap_err();
        assert!(matches!(err, Error::Conflict(_)), "{err}");
        // The same mode is fine.
        e.create_network(&req(
            "l2b",
            "ipvlan",
            "203.0.113.0/24",
            &["parent=eth0", "ipvlan_mode=l2"],
        ))
        .unwrap();
        assert_eq!(e.networks().unwrap().len(), 2);
    }

    #[test]
    fn an_mtu_above_the_parents_is_refused() {
        let mut e = engine();
        let err = e
            .create_network(&req(
                "m",
                "macvlan",
                "198.51.100.0/24",
                &["parent=eth0", "mtu=9000"],
            ))
            .unwrap_err();
        assert!(
            matches!(&err, Error::Invalid { field, .. } if field == "-o mtu")
                && err.to_string().contains("1500"),
            "{err}"
        );
        e.create_network(&req(
            "m",
            "macvlan",
            "198.51.100.0/24",
            &["parent=eth0", "mtu=1400"],
        ))
        .unwrap();
    }
}
