//! The planner: (network, endpoint, observed host) → the kernel [`Op`]s that make it
//! so. Pure functions; the engine applies their output with rollback.
//!
//! Host access: per parent one macvlan in bridge mode in the host namespace, the
//! *shim* (`lys-<hash of parent>`). It carries the host's own LAN addresses of the
//! parent as host prefixes (/32, /128, no prefix route), so it answers ARP/NDP for
//! them towards endpoints, and no LAN address is spent on it. Each endpoint gets a
//! host route through the shim with `src` = the host's parent address; each
//! endpoint whose subnet does not hold the host's address gets an on-link route to
//! it. Routes follow endpoints as they come and go.

use crate::kernel::View;
use crate::model::{Driver, Endpoint, IpvlanMode, MacAddr, MacvlanMode, Network};
use crate::name::IfName;
use crate::op::{Netns, Op, RouteSpec};
use crate::{Error, Result};
use ipnet::IpNet;
use std::net::IpAddr;

/// Lowest metric of endpoint default routes. Each endpoint of a namespace holds its
/// own ([`Endpoint::route_metric`]), so a namespace on several networks has one
/// working default (the lowest) and the next takes over when it goes.
pub const DEFAULT_ROUTE_METRIC: u32 = 100;

/// FNV-1a, for stable short names.
fn fnv(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ b as u32).wrapping_mul(0x0100_0193)
    })
}

/// Name of the host-access shim for `parent`.
pub fn shim_name(parent: &IfName) -> IfName {
    IfName::new(&format!("lys-{:08x}", fnv(parent.as_str())))
        .unwrap_or_else(|_| unreachable!("12 bytes"))
}

/// The MAC of the host side of an endpoint's veth: `fe:ff:ff:` and three bytes of
/// the endpoint's id. A Linux bridge without a MAC of its own set takes the lowest of
/// its ports': `fe:ff:ff` (locally administered, unicast) is above any vendor's MAC
/// and almost every random one (a random veth's may start with `fe:`), so adding or
/// removing an endpoint never changes the MAC of a bridge (the host's own LAN bridge,
/// with `bridge_external`, above all: its neighbours would lose it).
pub fn host_side_mac(endpoint_id: &str) -> MacAddr {
    let mut mac = [0xfe, 0xff, 0xff, 0, 0, 0];
    for (i, b) in mac.iter_mut().skip(3).enumerate() {
        *b = endpoint_id
            .get(2 * i..2 * i + 2)
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .unwrap_or(0);
    }
    MacAddr(mac)
}

/// Name of the host side of an endpoint's veth pair.
pub fn veth_name(endpoint_id: &str) -> IfName {
    IfName::new(&format!(
        "lyv-{}",
        &endpoint_id[..11.min(endpoint_id.len())]
    ))
    .unwrap_or_else(|_| unreachable!("15 bytes"))
}

/// The parent link endpoints hang off (the VLAN link for `eth0.10`).
pub fn parent_of(net: &Network) -> Option<&IfName> {
    net.parent.as_ref()
}

/// The host's addresses on `parent` (global scope ones: not link-local).
pub fn host_addresses(host: &View, parent: &IfName) -> Vec<IpNet> {
    host.addresses_of(parent.as_str())
        .into_iter()
        .filter(|a| match a.addr() {
            IpAddr::V4(v) => !v.is_link_local(),
            IpAddr::V6(v) => (v.segments()[0] & 0xffc0) != 0xfe80,
        })
        .collect()
}

/// Whether `net` uses a host-access shim.
pub fn uses_shim(net: &Network) -> bool {
    net.host_access
        && match net.driver {
            Driver::Macvlan => net.macvlan_mode == Some(MacvlanMode::Bridge),
            // An ipvlan shim: ipvlan hands the shim frames for the host's addresses
            // it carries; still the host namespace, so nothing is lost.
            Driver::Ipvlan => net.ipvlan_mode == Some(IpvlanMode::L2),
            _ => false,
        }
}

/// The host links whose state (existence, up, addresses) the planner looks at for
/// `net` and, if given, one endpoint of it: bridge, parent, VLAN base, shim, the
/// endpoint's veth. Planning with a view of just these
/// ([`crate::kernel::Kernel::view_links`]) gives the same ops as with a full view,
/// at a cost that does not grow with the host's links and routes.
pub fn host_links(net: &Network, ep: Option<&Endpoint>) -> Vec<IfName> {
    let mut names: Vec<IfName> = vec![];
    names.extend(net.bridge.clone());
    if let Some(parent) = &net.parent {
        names.push(parent.clone());
        names.extend(parent.vlan().map(|(base, _)| base));
        if uses_shim(net) {
            names.push(shim_name(parent));
        }
    }
    names.extend(ep.and_then(|e| e.host_ifname.clone()));
    names
}

/// Ops that make the network's host-side pieces exist: the bridge with its gateway
/// addresses, the VLAN parent, the host-access shim. Only what `host` lacks.
pub fn network_infra(net: &Network, host: &View) -> Result<Vec<Op>> {
    let mut ops = vec![];
    match net.driver {
        Driver::Bridge => {
            let br = net
                .bridge
                .clone()
                .ok_or_else(|| Error::Other(format!("network {} has no bridge name", net.name)))?;
            if net.bridge_external {
                // The host's own bridge: used as it is, never made or changed.
                return match host.link(br.as_str()) {
                    Some(l) if l.kind.as_deref() == Some("bridge") => Ok(ops),
                    Some(_) => Err(Error::invalid(
                        "-o bridge",
                        &br,
                        "is not a bridge (ip -d link show it)",
                    )),
                    None => Err(Error::invalid(
                        "-o bridge",
                        &br,
                        "no such bridge on this host (bridge_external uses one that exists)",
                    )),
                };
            }
            if host.link(br.as_str()).is_none() {
                ops.push(Op::CreateBridge {
                    name: br.clone(),
                    mtu: net.mtu,
                });
            }
            let have = host.addresses_of(br.as_str());
            for sc in &net.subnets {
                if let Some(gw) = sc.gateway {
                    let addr = IpNet::new(gw, sc.subnet.prefix_len())
                        .map_err(|e| Error::Other(e.to_string()))?;
                    if !have.contains(&addr) {
                        ops.push(Op::AddAddress {
                            netns: Netns::Host,
                            link: br.clone(),
                            addr,
                            nodad: true,
                        });
                    }
                }
            }
            if host.link(br.as_str()).is_none_or(|l| !l.up) {
                ops.push(Op::SetUp {
                    netns: Netns::Host,
                    name: br.clone(),
                });
            }
            // Lets DNAT of 127.0.0.1:PORT reach endpoints (the firewall masquerades it).
            ops.push(Op::SetSysctl {
                netns: Netns::Host,
                key: format!("net.ipv4.conf.{br}.route_localnet"),
                value: "1".into(),
            });
            if !net.internal {
                ops.push(Op::SetSysctl {
                    netns: Netns::Host,
                    key: "net.ipv4.ip_forward".into(),
                    value: "1".into(),
                });
                if net.ipv6 {
                    ops.push(Op::EnableIpv6Forwarding { netns: Netns::Host });
                }
            }
        }
        Driver::Macvlan | Driver::Ipvlan => {
            let parent = net
                .parent
                .clone()
                .ok_or_else(|| Error::invalid("-o parent", "", "missing"))?;
            if let Some((base, id)) = parent.vlan() {
                if host.link(parent.as_str()).is_none() {
                    if host.link(base.as_str()).is_none() {
                        return Err(Error::invalid(
                            "-o parent",
                            &parent,
                            format!("VLAN base interface {base} does not exist"),
                        ));
                    }
                    ops.push(Op::CreateVlan {
                        name: parent.clone(),
                        parent: base,
                        id,
                    });
                }
            } else if host.link(parent.as_str()).is_none() {
                return Err(Error::invalid(
                    "-o parent",
                    &parent,
                    "no such interface in this namespace",
                ));
            }
            if uses_shim(net) {
                let shim = shim_name(&parent);
                if host.link(shim.as_str()).is_none() {
                    // A parent is either macvlan's or ipvlan's, never both (the kernel
                    // refuses), so one shim name per parent serves either kind.
                    ops.push(match net.driver {
                        Driver::Ipvlan => Op::CreateIpvlan {
                            netns: Netns::Host,
                            name: shim.clone(),
                            parent: parent.clone(),
                            mode: IpvlanMode::L2,
                            mtu: None,
                        },
                        _ => Op::CreateMacvlan {
                            netns: Netns::Host,
                            name: shim.clone(),
                            parent: parent.clone(),
                            mode: MacvlanMode::Bridge,
                            mac: None,
                            mtu: None,
                        },
                    });
                    ops.push(Op::SetSysctl {
                        netns: Netns::Host,
                        key: format!("net.ipv6.conf.{shim}.keep_addr_on_down"),
                        value: "1".into(),
                    });
                }
                let have = host.addresses_of(shim.as_str());
                for a in host_addresses(host, &parent) {
                    let addr = IpNet::new(a.addr(), a.max_prefix_len())
                        .map_err(|e| Error::Other(e.to_string()))?;
                    if !have.contains(&addr) {
                        ops.push(Op::AddAddress {
                            netns: Netns::Host,
                            link: shim.clone(),
                            addr,
                            nodad: true,
                        });
                    }
                }
                if host.link(shim.as_str()).is_none_or(|l| !l.up) {
                    ops.push(Op::SetUp {
                        netns: Netns::Host,
                        name: shim,
                    });
                }
            }
        }
        Driver::Host | Driver::None => {}
    }
    Ok(ops)
}

/// Ops that remove the network's host-side pieces, given the networks that remain
/// (a shim or VLAN shared with another network stays).
pub fn network_teardown(net: &Network, remaining: &[Network], host: &View) -> Vec<Op> {
    let mut ops = vec![];
    match net.driver {
        Driver::Bridge => {
            if let Some(br) = net.bridge.as_ref().filter(|_| !net.bridge_external) {
                if host.link(br.as_str()).is_some() {
                    ops.push(Op::DeleteLink {
                        netns: Netns::Host,
                        name: br.clone(),
                    });
                }
            }
        }
        Driver::Macvlan | Driver::Ipvlan => {
            let Some(parent) = &net.parent else {
                return ops;
            };
            let shared = |f: &dyn Fn(&Network) -> bool| {
                remaining
                    .iter()
                    .any(|o| o.id != net.id && o.parent.as_ref() == Some(parent) && f(o))
            };
            if uses_shim(net) && !shared(&uses_shim) {
                let shim = shim_name(parent);
                if host.link(shim.as_str()).is_some() {
                    ops.push(Op::DeleteLink {
                        netns: Netns::Host,
                        name: shim,
                    });
                }
            }
            if net.owns_vlan
                && parent.vlan().is_some()
                && !shared(&|_| true)
                && host.link(parent.as_str()).is_some()
            {
                ops.push(Op::DeleteLink {
                    netns: Netns::Host,
                    name: parent.clone(),
                });
            }
        }
        Driver::Host | Driver::None => {}
    }
    ops
}

/// The host link through which the host reaches a network's endpoints: the shim
/// (macvlan, ipvlan with host access) or the bridge; none otherwise.
pub fn host_way_in(net: &Network) -> Option<IfName> {
    match (net.driver, &net.parent, &net.bridge) {
        (Driver::Bridge, _, Some(br)) => Some(br.clone()),
        (_, Some(parent), _) if uses_shim(net) => Some(shim_name(parent)),
        _ => None,
    }
}

/// Host-side routes of one endpoint: shim routes to its addresses (host access),
/// then a route to each subnet behind it (`--route`) via its address of that family.
pub fn endpoint_host_routes(net: &Network, ep: &Endpoint, host: &View) -> Vec<RouteSpec> {
    let mut routes = vec![];
    if let Some(parent) = net.parent.as_ref().filter(|_| uses_shim(net)) {
        let shim = shim_name(parent);
        let host_addrs = host_addresses(host, parent);
        routes.extend(ep.addresses.iter().map(|a| {
            let src = host_addrs
                .iter()
                .find(|h| h.addr().is_ipv4() == a.addr().is_ipv4())
                .map(|h| h.addr());
            RouteSpec {
                dst: IpNet::new(a.addr(), a.max_prefix_len()).unwrap_or(*a),
                via: None,
                dev: Some(shim.clone()),
                src,
                metric: None,
            }
        }));
    }
    if let Some(dev) = host_way_in(net) {
        for r in &ep.routes {
            if let Some(a) = ep
                .addresses
                .iter()
                .find(|a| a.addr().is_ipv4() == r.addr().is_ipv4())
            {
                routes.push(RouteSpec {
                    dst: *r,
                    via: Some(a.addr()),
                    dev: Some(dev.clone()),
                    src: None,
                    metric: None,
                });
            }
        }
    }
    routes
}

/// Ops that wire `ep` into its namespace (default routes with its stored metric).
pub fn endpoint_ops(net: &Network, ep: &Endpoint, host: &View) -> Result<Vec<Op>> {
    let ns = Netns::Path(ep.netns.clone());
    let ifname = ep.ifname.clone();
    let mut ops = vec![];
    match net.driver {
        Driver::Bridge => {
            let host_if = ep
                .host_ifname
                .clone()
                .ok_or_else(|| Error::Other("bridge endpoint without veth name".into()))?;
            ops.push(Op::CreateVeth {
                host: host_if,
                peer: ifname.clone(),
                peer_netns: ns.clone(),
                mtu: net.mtu,
                master: net.bridge.clone(),
                peer_mac: ep.mac,
                host_mac: Some(host_side_mac(&ep.id)),
            });
        }
        Driver::Macvlan => {
            let parent = net
                .parent
                .clone()
                .ok_or_else(|| Error::Other("macvlan network without parent".into()))?;
            ops.push(Op::CreateMacvlan {
                netns: ns.clone(),
                name: ifname.clone(),
                parent,
                mode: net.macvlan_mode.unwrap_or_default(),
                mac: ep.mac,
                mtu: net.mtu,
            });
        }
        Driver::Ipvlan => {
            let parent = net
                .parent
                .clone()
                .ok_or_else(|| Error::Other("ipvlan network without parent".into()))?;
            // A --mac was refused before anything was recorded (engine::attach).
            ops.push(Op::CreateIpvlan {
                netns: ns.clone(),
                name: ifname.clone(),
                parent,
                mode: net.ipvlan_mode.unwrap_or_default(),
                mtu: net.mtu,
            });
        }
        Driver::Host | Driver::None => return Ok(vec![]),
    }
    if let Some(p) = ep.unprivileged_port_start {
        ops.push(Op::SetSysctl {
            netns: ns.clone(),
            key: "net.ipv4.ip_unprivileged_port_start".into(),
            value: p.to_string(),
        });
    }
    // On the LAN (macvlan, ipvlan, a bridge onto the LAN's own bridge) another host
    // may hold an IPv6 address: DAD runs, optimistic (RFC 4429) so the attach never
    // waits for it (waiting made pod start 4x slower, kubernetes#54651); a failure
    // shows as `dadfailed` on the address, which `lanyard doctor` reports. On
    // lanyard's own bridge subnets its IPAM alone hands addresses out: no DAD.
    let lan_v6 = (net.driver.needs_parent() || net.bridge_external)
        && (net.ipv6 || ep.addresses.iter().any(|a| a.addr().is_ipv6()));
    if lan_v6 {
        for key in ["optimistic_dad", "use_optimistic"] {
            ops.push(Op::SetSysctl {
                netns: ns.clone(),
                key: format!("net.ipv6.conf.{ifname}.{key}"),
                value: "1".into(),
            });
        }
    }
    for a in &ep.addresses {
        ops.push(Op::AddAddress {
            netns: ns.clone(),
            link: ifname.clone(),
            addr: *a,
            nodad: !(lan_v6 && a.addr().is_ipv6()),
        });
    }
    // macvlan and ipvlan links are born up (one RTM_NEWLINK); a veth peer is not.
    if net.driver == Driver::Bridge {
        ops.push(Op::SetUp {
            netns: ns.clone(),
            name: ifname.clone(),
        });
    }
    let l3 = net.driver == Driver::Ipvlan && net.ipvlan_mode != Some(crate::model::IpvlanMode::L2);
    for gw in &ep.gateways {
        let dst: IpNet = if gw.is_ipv4() { "0.0.0.0/0" } else { "::/0" }
            .parse()
            .unwrap_or_else(|_| unreachable!());
        ops.push(Op::AddRoute {
            netns: ns.clone(),
            route: RouteSpec {
                dst,
                // ipvlan l3: no ARP, the default route is a device route.
                via: if l3 { None } else { Some(*gw) },
                dev: Some(ifname.clone()),
                src: None,
                metric: Some(ep.route_metric.unwrap_or(DEFAULT_ROUTE_METRIC)),
            },
        });
    }
    if uses_shim(net) {
        if let Some(parent) = &net.parent {
            for h in host_addresses(host, parent) {
                let inside = ep.addresses.iter().any(|a| a.contains(&h.addr()));
                if !inside
                    && ep
                        .addresses
                        .iter()
                        .any(|a| a.addr().is_ipv4() == h.addr().is_ipv4())
                {
                    ops.push(Op::AddRoute {
                        netns: ns.clone(),
                        route: RouteSpec {
                            dst: IpNet::new(h.addr(), h.max_prefix_len()).unwrap_or(h),
                            via: None,
                            dev: Some(ifname.clone()),
                            src: None,
                            metric: None,
                        },
                    });
                }
            }
        }
    }
    for r in endpoint_host_routes(net, ep, host) {
        ops.push(Op::AddRoute {
            netns: Netns::Host,
            route: r,
        });
    }
    Ok(ops)
}

/// The host links [`endpoint_teardown`] looks at: the endpoint's own host-side veth,
/// if it has one. Its shim routes are deleted by destination and link, whatever
/// their source address, so the parent and the shim need no look.
pub fn teardown_links(ep: &Endpoint) -> Vec<IfName> {
    ep.host_ifname
        .iter()
        .chain(&ep.host_link)
        .cloned()
        .collect()
}

/// Ops that plug `ep` host-side ([`crate::owner::PlugTarget::Host`]): its link in the
/// host namespace under the temporary name `ep.host_link`, with its MAC and the
/// network's MTU, for a caller that moves, renames and addresses it itself (Docker);
/// and the host's routes to it (the shim's). No address, route or sysctl inside.
pub fn endpoint_ops_host(net: &Network, ep: &Endpoint, host: &View) -> Result<Vec<Op>> {
    let temp = ep
        .host_link
        .clone()
        .ok_or_else(|| Error::Other("host-side plug without a temporary name".into()))?;
    let mut ops = vec![];
    match net.driver {
        Driver::Bridge => ops.push(Op::CreateVeth {
            host: ep
                .host_ifname
                .clone()
                .ok_or_else(|| Error::Other("bridge endpoint without veth name".into()))?,
            peer: temp,
            peer_netns: Netns::Host,
            mtu: net.mtu,
            master: net.bridge.clone(),
            peer_mac: ep.mac,
            host_mac: Some(host_side_mac(&ep.id)),
        }),
        Driver::Macvlan => ops.push(Op::CreateMacvlan {
            netns: Netns::Host,
            name: temp,
            parent: net
                .parent
                .clone()
                .ok_or_else(|| Error::Other("macvlan network without parent".into()))?,
            mode: net.macvlan_mode.unwrap_or_default(),
            mac: ep.mac,
            mtu: net.mtu,
        }),
        Driver::Ipvlan => ops.push(Op::CreateIpvlan {
            netns: Netns::Host,
            name: temp,
            parent: net
                .parent
                .clone()
                .ok_or_else(|| Error::Other("ipvlan network without parent".into()))?,
            mode: net.ipvlan_mode.unwrap_or_default(),
            mtu: net.mtu,
        }),
        Driver::Host | Driver::None => return Ok(vec![]),
    }
    for r in endpoint_host_routes(net, ep, host) {
        ops.push(Op::AddRoute {
            netns: Netns::Host,
            route: r,
        });
    }
    Ok(ops)
}

/// Ops that unwire `ep`: host routes removed, its link retired to `tombstone` (the
/// caller reaps it later). Skips the namespace side when `netns_alive` is false.
/// `host` needs only the links of [`teardown_links`].
pub fn endpoint_teardown(
    net: &Network,
    ep: &Endpoint,
    host: &View,
    netns_alive: bool,
    tombstone: IfName,
) -> Vec<Op> {
    // `ip route del` matches a route without its source, so `host` need not hold the
    // parent's addresses: none given.
    let mut ops: Vec<Op> = endpoint_host_routes(net, ep, host)
        .into_iter()
        .map(|route| Op::DelRoute {
            netns: Netns::Host,
            route: RouteSpec { src: None, ..route },
        })
        .collect();
    if netns_alive && ep.in_netns() && !matches!(net.driver, Driver::Host | Driver::None) {
        ops.push(Op::RetireLink {
            netns: Netns::Path(ep.netns.clone()),
            name: ep.ifname.clone(),
            tombstone,
            addresses: ep.addresses.clone(),
        });
    } else if let Some(h) = ep
        .host_ifname
        .iter()
        .chain(&ep.host_link)
        .find(|h| host.link(h.as_str()).is_some())
    {
        // A veth's host end takes its peer along (wherever it is); a link plugged
        // host-side and given back by its caller is deleted by its temporary name.
        ops.push(Op::DeleteLink {
            netns: Netns::Host,
            name: h.clone(),
        });
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::fake::{ifname, FakeKernel};
    use crate::model::EndpointState;
    use crate::testing::{EndpointBuilder, NetworkBuilder, ENDPOINT_ID};

    fn net(driver: &str, opts: &[&str], subnets: &[&str]) -> Network {
        NetworkBuilder::new("lan")
            .driver(driver)
            .options(opts)
            .subnets(subnets)
            .build()
    }

    /// A pending endpoint of `net` in `/proc/1/ns/net`, with a host-side veth on a bridge.
    fn ep(net: &Network, addrs: &[&str]) -> Endpoint {
        let e = EndpointBuilder::of(net)
            .netns("/proc/1/ns/net", (1, 1))
            .addrs(addrs)
            .state(EndpointState::Pending);
        match net.driver {
            Driver::Bridge => e.host_ifname(veth_name(ENDPOINT_ID).as_str()),
            _ => e,
        }
        .build()
    }

    #[test]
    fn macvlan_endpoint_is_created_in_its_namespace_with_host_routes_through_the_shim() {
        let host = FakeKernel::with_eth0(&["192.0.2.2/24", "2001:db8:1::2/64"]).host;
        let n = net("macvlan", &["parent=eth0"], &["198.51.100.0/24"]);
        let e = ep(&n, &["198.51.100.10/24"]);
        let ops = endpoint_ops(&n, &e, &host).unwrap();
        assert!(matches!(
            &ops[0],
            Op::CreateMacvlan {
                netns: Netns::Path(_),
                ..
            }
        ));
        // Born up by its create: no separate round trip to set it up.
        assert!(!ops.iter().any(|o| matches!(o, Op::SetUp { .. })));
        let shim = shim_name(&ifname("eth0"));
        // The host reaches the endpoint through the shim, from its own LAN address.
        assert!(ops.contains(&Op::AddRoute {
            netns: Netns::Host,
            route: RouteSpec {
                dst: "198.51.100.10/32".parse().unwrap(),
                via: None,
                dev: Some(shim),
                src: Some("192.0.2.2".parse().unwrap()),
                metric: None
            }
        }));
        // The endpoint (other subnet) reaches the host on-link.
        assert!(ops.contains(&Op::AddRoute {
            netns: Netns::Path("/proc/1/ns/net".into()),
            route: RouteSpec {
                dst: "192.0.2.2/32".parse().unwrap(),
                via: None,
                dev: Some(ifname("eth0")),
                src: None,
                metric: None
            }
        }));
    }

    #[test]
    fn shim_carries_the_hosts_addresses_and_is_made_once() {
        let mut host = FakeKernel::with_eth0(&["192.0.2.2/24", "2001:db8:1::2/64"]).host;
        let n = net("macvlan", &["parent=eth0"], &["192.0.2.0/24"]);
        let ops = network_infra(&n, &host).unwrap();
        assert!(ops.iter().any(|o| matches!(
            o,
            Op::CreateMacvlan {
                netns: Netns::Host,
                ..
            }
        )));
        assert!(ops.iter().any(
            |o| matches!(o, Op::AddAddress { addr, .. } if addr.to_string() == "192.0.2.2/32")
        ));
        assert!(ops.iter().any(
            |o| matches!(o, Op::AddAddress { addr, .. } if addr.to_string() == "2001:db8:1::2/128")
        ));
        // Once the shim exists (up, addressed), nothing is left to do.
        let mut l = host.links[1].clone();
        l.name = shim_name(&ifname("eth0")).to_string();
        l.index = 9;
        host.links.push(l);
        host.addresses.push(crate::kernel::AddrInfo {
            index: 9,
            addr: "192.0.2.2/32".parse().unwrap(),
            dad_failed: false,
        });
        host.addresses.push(crate::kernel::AddrInfo {
            index: 9,
            addr: "2001:db8:1::2/128".parse().unwrap(),
            dad_failed: false,
        });
        assert_eq!(network_infra(&n, &host).unwrap(), vec![]);
    }

    #[test]
    fn shim_stays_while_another_network_uses_the_parent() {
        let host = {
            let mut h = FakeKernel::with_eth0(&["192.0.2.2/24"]).host;
            let mut l = h.links[1].clone();
            l.name = shim_name(&ifname("eth0")).to_string();
            l.index = 9;
            h.links.push(l);
            h
        };
        let a = net("macvlan", &["parent=eth0"], &["192.0.2.0/24"]);
        let mut b = net("macvlan", &["parent=eth0"], &["198.51.100.0/24"]);
        b.id = "ef".repeat(32);
        assert_eq!(
            network_teardown(&a, std::slice::from_ref(&b), &host),
            vec![]
        );
        assert_eq!(network_teardown(&a, &[], &host).len(), 1);
    }

    #[test]
    fn ipvlan_l2_gets_an_ipvlan_shim_and_l3_none() {
        let host = FakeKernel::with_eth0(&["192.0.2.2/24"]).host;
        let l2 = net("ipvlan", &["parent=eth0"], &["192.0.2.0/24"]);
        assert!(network_infra(&l2, &host).unwrap().iter().any(|o| matches!(
            o,
            Op::CreateIpvlan {
                netns: Netns::Host,
                mode: IpvlanMode::L2,
                ..
            }
        )));
        let l3 = net(
            "ipvlan",
            &["parent=eth0", "ipvlan_mode=l3"],
            &["198.51.100.0/24"],
        );
        assert!(!l3.host_access);
        assert_eq!(network_infra(&l3, &host).unwrap(), vec![]);
    }

    #[test]
    fn missing_parent_is_named() {
        let host = FakeKernel::with_eth0(&["192.0.2.2/24"]).host;
        let n = net("macvlan", &["parent=eth9"], &["192.0.2.0/24"]);
        let e = network_infra(&n, &host).unwrap_err();
        assert!(e.to_string().contains("eth9"), "{e}");
        let v = net("macvlan", &["parent=eth0.10"], &["192.0.2.0/24"]);
        assert!(matches!(
            &network_infra(&v, &host).unwrap()[0],
            Op::CreateVlan { id: 10, .. }
        ));
    }

    #[test]
    fn bridge_endpoint_gets_a_veth_on_the_bridge_and_default_route() {
        let host = FakeKernel::with_eth0(&["192.0.2.2/24"]).host;
        let n = net("bridge", &[], &["10.89.0.0/24"]);
        let e = Endpoint {
            route_metric: Some(DEFAULT_ROUTE_METRIC + 1),
            ..ep(&n, &["10.89.0.2/24"])
        };
        let ops = endpoint_ops(&n, &e, &host).unwrap();
        assert!(matches!(
            &ops[0],
            Op::CreateVeth {
                master: Some(_),
                ..
            }
        ));
        assert!(ops.iter().any(|o| matches!(o, Op::AddRoute { route, .. } if route.metric == Some(DEFAULT_ROUTE_METRIC + 1) && route.via == Some("10.89.0.1".parse().unwrap()))));
        // The veth peer is left down by its create: it is set up before its routes.
        let up = ops
            .iter()
            .position(|o| {
                matches!(
                    o,
                    Op::SetUp {
                        netns: Netns::Path(_),
                        ..
                    }
                )
            })
            .expect("peer set up");
        let route = ops
            .iter()
            .position(|o| matches!(o, Op::AddRoute { .. }))
            .expect("a route");
        assert!(up < route);
        let infra = network_infra(&n, &host).unwrap();
        assert!(matches!(&infra[0], Op::CreateBridge { .. }));
    }

    #[test]
    fn a_view_of_the_host_links_alone_plans_the_same_as_a_full_view() {
        let mut full = FakeKernel::with_eth0(&["192.0.2.2/24", "2001:db8:1::2/64"]).host;
        // A busy host: other links with addresses and routes, and a made shim.
        for (i, name) in ["docker0", "veth1", "eth1", "lys-00000000"]
            .iter()
            .enumerate()
        {
            let mut l = full.links[1].clone();
            (l.index, l.name) = (10 + i as u32, name.to_string());
            full.links.push(l);
            full.addresses.push(crate::kernel::AddrInfo {
                index: 10 + i as u32,
                addr: format!("203.0.113.{}/24", i + 1).parse().unwrap(),
                dad_failed: false,
            });
        }
        let mut shim = full.links[1].clone();
        (shim.index, shim.name) = (9, shim_name(&ifname("eth0")).to_string());
        full.links.push(shim);
        full.addresses.push(crate::kernel::AddrInfo {
            index: 9,
            addr: "192.0.2.2/32".parse().unwrap(),
            dad_failed: false,
        });
        for (n, a) in [
            (
                net("macvlan", &["parent=eth0"], &["192.0.2.0/24"]),
                "192.0.2.10/24",
            ),
            (
                net(
                    "macvlan",
                    &["parent=eth0"],
                    &["198.51.100.0/24", "2001:db8:1::/64"],
                ),
                "198.51.100.10/24",
            ),
            (
                net("macvlan", &["parent=eth0.10"], &["198.51.100.0/24"]),
                "198.51.100.10/24",
            ),
            (
                net(
                    "macvlan",
                    &["parent=eth0", "macvlan_mode=private"],
                    &["198.51.100.0/24"],
                ),
                "198.51.100.10/24",
            ),
            (
                net("ipvlan", &["parent=eth0"], &["192.0.2.0/24"]),
                "192.0.2.10/24",
            ),
            (net("bridge", &[], &["10.89.0.0/24"]), "10.89.0.2/24"),
        ] {
            let e = ep(&n, &[a]);
            let part = full.clone().only_links(&host_links(&n, Some(&e)));
            assert!(part.links.len() < full.links.len(), "{n:?}");
            assert_eq!(
                network_infra(&n, &part).ok(),
                network_infra(&n, &full).ok(),
                "{n:?}"
            );
            assert_eq!(
                endpoint_ops(&n, &e, &part).unwrap(),
                endpoint_ops(&n, &e, &full).unwrap(),
                "{n:?}"
            );
            let only = full.clone().only_links(&teardown_links(&e));
            assert!(only.links.len() <= part.links.len(), "{n:?}");
            for alive in [true, false] {
                let tomb = ifname("lyx-1");
                assert_eq!(
                    endpoint_teardown(&n, &e, &only, alive, tomb.clone()),
                    endpoint_teardown(&n, &e, &full, alive, tomb),
                    "{n:?}"
                );
            }
            assert_eq!(
                network_teardown(&n, &[], &part),
                network_teardown(&n, &[], &full),
                "{n:?}"
            );
        }
    }

    #[test]
    fn teardown_retires_the_link_and_drops_host_routes() {
        let host = FakeKernel::with_eth0(&["192.0.2.2/24"]).host;
        let n = net("macvlan", &["parent=eth0"], &["192.0.2.0/24"]);
        let e = ep(&n, &["192.0.2.10/24"]);
        let ops = endpoint_teardown(&n, &e, &host, true, ifname("lyx-1"));
        assert!(matches!(
            &ops[0],
            Op::DelRoute {
                netns: Netns::Host,
                ..
            }
        ));
        assert!(matches!(&ops[1], Op::RetireLink { .. }));
        let gone = endpoint_teardown(&n, &e, &host, false, ifname("lyx-1"));
        assert_eq!(gone.len(), 1);
    }
}
