//! `lanyard doctor`: finds what stops lanyard's networks from working and says how
//! to fix each. Read-only: it changes nothing (the fixes are other verbs).
//!
//! What the [`Kernel`] trait does not read (nftables tables, sysctls, whether a link
//! is wireless, ARP answers on the LAN, whether the daemon is up) comes through
//! [`Inspect`], which the binary implements and tests fake.

use crate::drift::{self, TableReader};
use crate::Engine;
use lanyard_core::kernel::{Kernel, View};
use lanyard_core::model::{Driver, Endpoint, EndpointState, IpamDriver, MacAddr, Network};
use lanyard_core::name::IfName;
use lanyard_core::op::Netns;
use lanyard_core::plan;
use lanyard_core::store::Store;
use lanyard_core::Result;
use serde::Serialize;
use std::net::{IpAddr, Ipv4Addr};

/// What the kernel trait does not read, for doctor.
pub trait Inspect: TableReader {
    /// A sysctl of the host namespace (`net.ipv4.ip_forward`), trimmed.
    fn sysctl(&mut self, key: &str) -> Result<String>;
    /// Whether link `name` of the host is a wireless interface.
    fn is_wireless(&mut self, name: &str) -> bool;
    /// For each (host link, IPv4 address): the MAC of another LAN host that answers
    /// an ARP probe for the address sent from that link, if any (probes all sent
    /// first, then one bounded wait).
    fn arp_holders(&mut self, probes: &[(IfName, Ipv4Addr)]) -> Result<Vec<Option<MacAddr>>>;
    /// Whether `lanyard daemon` answers on its socket.
    fn daemon_running(&mut self) -> bool;
}

/// One problem found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Which check found it (`host-access`, `wireless-parent`, `parent-down`,
    /// `route-overlap`, `firewall`, `namespace-gone`, `duplicate-address`,
    /// `forwarding`, `daemon`, `reservation`).
    pub check: &'static str,
    /// What it is about (`network lan`, `endpoint web`).
    pub subject: String,
    /// What is wrong.
    pub problem: String,
    /// What to do.
    pub fix: String,
}

fn finding(check: &'static str, subject: String, problem: String, fix: &str) -> Finding {
    Finding {
        check,
        subject,
        problem,
        fix: fix.to_string(),
    }
}

impl<S: Store, K: Kernel> Engine<S, K> {
    /// Runs every check; an empty list means nothing wrong was found.
    pub fn doctor(&mut self, inspect: &mut dyn Inspect) -> Result<Vec<Finding>> {
        let (networks, endpoints) = self
            .store
            .read(&mut |tx| Ok((tx.networks()?, tx.endpoints()?)))?;
        let host = self.kernel.view(&Netns::Host)?;
        let mut out = vec![];
        for net in &networks {
            let subject = format!("network {}", net.name);
            check_parent(net, &host, inspect, &subject, &mut out);
            check_host_access(net, &endpoints, &host, &subject, &mut out);
            check_route_overlap(net, &host, &subject, &mut out);
        }
        for ep in &endpoints {
            if !self.is_local(ep) {
                continue;
            }
            let gone = ep.in_netns()
                && self
                    .kernel
                    .netns_id(&ep.netns)
                    .map_or(true, |id| id != ep.netns_inode);
            if gone {
                out.push(finding(
                    "namespace-gone",
                    format!("endpoint {}", ep.display_name()),
                    format!(
                        "its namespace {} is gone; its addresses stay held",
                        ep.netns.display()
                    ),
                    "lanyard gc",
                ));
            } else if ep.in_netns() && ep.addresses.iter().any(|a| a.addr().is_ipv6()) {
                self.check_dad(ep, &mut out);
            }
        }
        check_duplicates(&networks, &endpoints, inspect, &mut out)?;
        self.check_reservations(&mut out)?;
        let bridged: Vec<&Network> = networks
            .iter()
            .filter(|n| n.driver == Driver::Bridge && !n.bridge_external)
            .collect();
        if !bridged.is_empty() {
            for problem in drift::compare(&drift::expected_tables(), inspect)? {
                out.push(finding(
                    "firewall",
                    "nftables".into(),
                    problem,
                    "lanyard restore (and keep `lanyard daemon` running: it rebuilds them)",
                ));
            }
            let v4 = bridged.iter().any(|n| !n.internal);
            let v6 = bridged.iter().any(|n| !n.internal && n.ipv6);
            for (needed, key) in [
                (v4, "net.ipv4.ip_forward"),
                (v6, "net.ipv6.conf.all.forwarding"),
            ] {
                if needed && inspect.sysctl(key).ok().as_deref() != Some("1") {
                    out.push(finding(
                        "forwarding",
                        key.into(),
                        format!("{key} is off: bridge networks cannot reach beyond the host"),
                        "lanyard restore (or sysctl -w KEY=1, and check what turned it off)",
                    ));
                }
            }
        }
        if networks.iter().any(|n| n.ipam == IpamDriver::Dhcp) && !inspect.daemon_running() {
            out.push(finding(
                "daemon",
                "lanyard daemon".into(),
                "DHCP networks exist but the daemon is not running: leases are not renewed".into(),
                "start lanyard daemon (systemctl start lanyard)",
            ));
        }
        Ok(out)
    }
}

impl<S: Store, K: Kernel> Engine<S, K> {
    /// Addresses Docker's IPAM reserved that no endpoint claimed within the bound:
    /// `gc` frees them, so one seen here means gc has not run since.
    fn check_reservations(&mut self, out: &mut Vec<Finding>) -> Result<()> {
        let max_age = crate::reserve::reservation_max_age();
        let now = crate::now();
        let stale = self
            .store
            .read(&mut |tx| crate::reserve::stale_reservations(tx, max_age, now))?;
        for r in stale {
            let when = match r.since {
                Some(t) => format!("{} s ago", now.saturating_sub(t)),
                None => "by an older lanyard".into(),
            };
            out.push(finding(
                "reservation",
                format!("network {}", r.network),
                format!(
                    "address {} was reserved for a Docker endpoint {when} and no endpoint \
                     claimed it (dockerd stopped between RequestAddress and \
                     CreateEndpoint?): nobody can have it until gc frees it",
                    r.addr
                ),
                "lanyard gc (lanyard daemon runs it every minute: is it running?)",
            ));
        }
        Ok(())
    }

    /// IPv6 addresses of `ep` whose duplicate address detection failed: another LAN
    /// host holds them (DAD runs optimistic, after the attach has returned).
    fn check_dad(&mut self, ep: &Endpoint, out: &mut Vec<Finding>) {
        let Ok(view) = self.kernel.view(&Netns::Path(ep.netns.clone())) else {
            return;
        };
        let Some(link) = view.link(ep.ifname.as_str()) else {
            return;
        };
        for a in view.addresses.iter().filter(|a| a.index == link.index) {
            if a.dad_failed && ep.addresses.contains(&a.addr) {
                out.push(finding(
                    "duplicate-address",
                    format!("endpoint {}", ep.display_name()),
                    format!(
                        "{} failed duplicate address detection: another host on the LAN \
                         holds it, and the endpoint cannot use it",
                        a.addr.addr()
                    ),
                    "lanyard detach, then attach with another --ip6 (find the holder with \
                     `ip -6 neigh` on the LAN)",
                ));
            }
        }
    }
}

/// A macvlan/ipvlan parent that is missing, down, without carrier, or wireless.
fn check_parent(
    net: &Network,
    host: &View,
    inspect: &mut dyn Inspect,
    subject: &str,
    out: &mut Vec<Finding>,
) {
    let Some(parent) = &net.parent else {
        return;
    };
    let Some(link) = host.link(parent.as_str()) else {
        out.push(finding(
            "parent-down",
            subject.into(),
            format!("parent {parent} does not exist"),
            "bring the interface back, or recreate the network on another parent",
        ));
        return;
    };
    if !link.up {
        out.push(finding(
            "parent-down",
            subject.into(),
            format!("parent {parent} is down"),
            &format!("ip link set {parent} up"),
        ));
    } else if !link.lower_up {
        out.push(finding(
            "parent-down",
            subject.into(),
            format!("parent {parent} has no carrier (cable, switch port, Wi-Fi association)"),
            "check the link; endpoints are cut off until it is back",
        ));
    }
    if net.driver == Driver::Macvlan && inspect.is_wireless(parent.as_str()) {
        out.push(finding(
            "wireless-parent",
            subject.into(),
            format!(
                "parent {parent} is wireless: access points drop frames from MACs that did \
                 not associate, so macvlan endpoints get no traffic"
            ),
            "recreate the network with -d ipvlan (endpoints share the parent's MAC)",
        ));
    }
}

/// The shim missing or down, or an endpoint's host route missing.
fn check_host_access(
    net: &Network,
    endpoints: &[Endpoint],
    host: &View,
    subject: &str,
    out: &mut Vec<Finding>,
) {
    let Some(parent) = net.parent.as_ref().filter(|_| plan::uses_shim(net)) else {
        return;
    };
    let shim = plan::shim_name(parent);
    let Some(link) = host.link(shim.as_str()) else {
        out.push(finding(
            "host-access",
            subject.into(),
            format!("host access is on but its shim {shim} is missing: the host cannot reach the endpoints"),
            "lanyard restore",
        ));
        return;
    };
    if !link.up {
        out.push(finding(
            "host-access",
            subject.into(),
            format!("the host-access shim {shim} is down"),
            "lanyard restore",
        ));
    }
    for ep in endpoints
        .iter()
        .filter(|e| e.network_id == net.id && e.state == EndpointState::Active && e.in_netns())
    {
        for want in plan::endpoint_host_routes(net, ep, host) {
            let there = host
                .routes
                .iter()
                .any(|r| r.dst == want.dst && r.oif == Some(link.index) && r.gateway == want.via);
            if !there {
                out.push(finding(
                    "host-access",
                    format!("endpoint {}", ep.display_name()),
                    format!("the host route {} dev {shim} is missing", want.dst),
                    "lanyard restore",
                ));
            }
        }
    }
}

/// A host route (not lanyard's, not the parent's own LAN) overlapping a subnet.
fn check_route_overlap(net: &Network, host: &View, subject: &str, out: &mut Vec<Finding>) {
    let lan_link = net
        .parent
        .as_ref()
        .or(net.bridge.as_ref())
        .and_then(|l| host.link(l.as_str()))
        .map(|l| l.index);
    for sc in &net.subnets {
        for r in host.routes.iter().filter(|r| r.dst.prefix_len() > 0) {
            if r.oif.is_some() && r.oif == lan_link {
                continue;
            }
            let dev = r.oif.and_then(|i| host.link_by_index(i));
            if dev.is_some_and(|d| d.name.starts_with("ly")) {
                continue;
            }
            if r.dst.contains(&sc.subnet) || sc.subnet.contains(&r.dst) {
                out.push(finding(
                    "route-overlap",
                    subject.into(),
                    format!(
                        "subnet {} overlaps the host's route {}{}: traffic to some endpoints goes there instead",
                        sc.subnet,
                        r.dst,
                        dev.map(|d| format!(" dev {}", d.name)).unwrap_or_default()
                    ),
                    "remove or narrow that route, or recreate the network on another subnet",
                ));
            }
        }
    }
}

/// Another LAN host answering ARP for an endpoint's address.
fn check_duplicates(
    networks: &[Network],
    endpoints: &[Endpoint],
    inspect: &mut dyn Inspect,
    out: &mut Vec<Finding>,
) -> Result<()> {
    let mut probes = vec![];
    let mut whose = vec![];
    for ep in endpoints
        .iter()
        .filter(|e| e.state == EndpointState::Active)
    {
        let Some(net) = networks.iter().find(|n| n.id == ep.network_id) else {
            continue;
        };
        let Some(parent) = net.parent.clone() else {
            continue;
        };
        for a in &ep.addresses {
            if let IpAddr::V4(v4) = a.addr() {
                probes.push((parent.clone(), v4));
                whose.push(ep);
            }
        }
    }
    if probes.is_empty() {
        return Ok(());
    }
    let holders = inspect.arp_holders(&probes)?;
    for (((_, addr), ep), holder) in probes.iter().zip(whose).zip(holders) {
        if let Some(mac) = holder.filter(|m| Some(*m) != ep.mac) {
            out.push(finding(
                "duplicate-address",
                format!("endpoint {}", ep.display_name()),
                format!("{addr} is also held by another LAN host ({mac})"),
                "find that host (its MAC), or move the endpoint to a free address; \
                 keep lanyard's --ip-range out of the DHCP server's pool",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drift::Shape;
    use crate::endpoint::tests::{add_bridge, engine};
    use lanyard_core::model::AttachRequest;

    /// Everything fine unless told otherwise.
    #[derive(Default)]
    struct Fake {
        tables_gone: bool,
        wireless: bool,
        forwarding_off: bool,
        holder: Option<MacAddr>,
    }

    impl TableReader for Fake {
        fn table(&mut self, family: &str, _: &str) -> Result<Option<Shape>> {
            if self.tables_gone {
                return Ok(None);
            }
            let want = drift::expected_tables();
            Ok(want
                .into_iter()
                .find(|t| t.family == family)
                .map(|t| t.shape))
        }
    }

    impl Inspect for Fake {
        fn sysctl(&mut self, _: &str) -> Result<String> {
            Ok(if self.forwarding_off { "0" } else { "1" }.into())
        }
        fn is_wireless(&mut self, _: &str) -> bool {
            self.wireless
        }
        fn arp_holders(&mut self, probes: &[(IfName, Ipv4Addr)]) -> Result<Vec<Option<MacAddr>>> {
            Ok(probes.iter().map(|_| self.holder).collect())
        }
        fn daemon_running(&mut self) -> bool {
            true
        }
    }

    fn checks(f: &[Finding]) -> Vec<&str> {
        f.iter().map(|f| f.check).collect()
    }

    #[test]
    fn a_healthy_lab_has_no_findings_and_each_fault_is_named_with_its_fix() {
        let mut e = engine();
        add_bridge(&mut e, "br");
        let ep = e
            .attach(&AttachRequest {
                network: "lan".into(),
                netns: "/run/netns/c1".into(),
                ..Default::default()
            })
            .unwrap();
        // The fake kernel records ops, not state: show the host routes as made.
        let net = e.network("lan").unwrap();
        let view = e.kernel.host.clone();
        for r in plan::endpoint_host_routes(&net, &ep, &view) {
            e.kernel.host.routes.push(lanyard_core::kernel::RouteInfo {
                dst: r.dst,
                gateway: r.via,
                oif: Some(9),
                src: r.src,
                protocol: 4,
            });
        }
        assert_eq!(e.doctor(&mut Fake::default()).unwrap(), vec![]);

        let f = e
            .doctor(&mut Fake {
                tables_gone: true,
                wireless: true,
                forwarding_off: true,
                holder: Some(MacAddr([2, 0, 0, 0, 0, 0x77])),
            })
            .unwrap();
        let c = checks(&f);
        for want in [
            "wireless-parent",
            "firewall",
            "forwarding",
            "duplicate-address",
        ] {
            assert!(c.contains(&want), "{want}: {f:#?}");
        }
        assert!(f.iter().all(|f| !f.fix.is_empty()));
        let dup = f.iter().find(|f| f.check == "duplicate-address").unwrap();
        assert!(dup.problem.contains("02:00:00:00:00:77"), "{dup:?}");

        // A Docker reservation 11 minutes old that no endpoint claimed.
        let old = format!(
            "reserved:{}:192.0.2.150@{}",
            &net.id[..12],
            crate::now() - 660
        );
        let a: IpAddr = "192.0.2.150".parse().unwrap();
        e.store
            .write(&mut |tx| tx.take_address(&net.id, a, &old))
            .unwrap();
        let f = e.doctor(&mut Fake::default()).unwrap();
        assert_eq!(checks(&f), ["reservation"], "{f:#?}");
        assert!(f[0].problem.contains("192.0.2.150"), "{f:#?}");
        e.gc().unwrap();
        assert_eq!(e.doctor(&mut Fake::default()).unwrap(), vec![]);

        // The shim's route gone, then the namespace gone.
        e.kernel.host.routes.clear();
        e.kernel.namespaces.clear();
        let c2 = e.doctor(&mut Fake::default()).unwrap();
        let c = checks(&c2);
        assert!(
            c.contains(&"host-access") && c.contains(&"namespace-gone"),
            "{c2:#?}"
        );
    }
}
