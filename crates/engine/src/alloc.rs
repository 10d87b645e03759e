//! What an endpoint holds, decided and recorded in one store transaction: its
//! addresses, MAC, published ports, owner and node (`allocate`), and, when it goes
//! into a namespace (`attach`, `plug`), its interface name and default-route metric.
//! Shared by every verb that records an endpoint, so each decides the same way.

use crate::firewall::default_mac;
use crate::now;
use ipnet::IpNet;
use lanyard_core::ipam;
use lanyard_core::model::{
    parse_ip, Driver, Endpoint, EndpointState, MacAddr, MacvlanMode, Network, PortMapping,
};
use lanyard_core::name::{EndpointName, IfName};
use lanyard_core::owner::Owner;
use lanyard_core::plan;
use lanyard_core::store::Tx;
use lanyard_core::{Error, Result};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// The namespace this process runs in: the host, never attached.
pub(crate) const OWN_NETNS: &str = "/proc/self/ns/net";

/// `path` as every later reader (detach, gc, restore: other processes) understands
/// it: absolute, and not one of this process's own `/proc/self/…` views (an fd or
/// thread of a process that exits right after).
pub(crate) fn lasting_netns_path(path: &Path) -> Result<PathBuf> {
    let abs = std::path::absolute(path).map_err(|e| {
        Error::invalid(
            "--netns",
            path.display(),
            format!("cannot be resolved: {e}"),
        )
    })?;
    if abs.starts_with("/proc/self") || abs.starts_with("/proc/thread-self") {
        return Err(Error::invalid(
            "--netns",
            path.display(),
            "means another namespace to every other process; give /proc/PID/ns/net, \
             --pid PID or a bind mount such as /run/netns/NAME",
        ));
    }
    Ok(abs)
}

/// The checked, typed form of what an endpoint asks to hold (everything checkable
/// without state).
pub(crate) struct Wants {
    pub ip: Option<IpAddr>,
    pub ip6: Option<IpAddr>,
    pub mac: Option<MacAddr>,
    pub name: Option<EndpointName>,
    pub ports: Vec<PortMapping>,
    pub owner: Option<Owner>,
    /// Subnets behind the endpoint (`--route`).
    pub routes: Vec<IpNet>,
    /// More DNS names (`--alias`).
    pub aliases: Vec<lanyard_core::dnsname::DnsName>,
}

/// Parses the raw fields of an allocation, naming the CLI's flag on error.
pub(crate) fn parse_wants(
    ip: Option<&str>,
    ip6: Option<&str>,
    mac: Option<&str>,
    name: Option<&str>,
    publish: &[String],
    owner: Option<&Owner>,
) -> Result<Wants> {
    let ip = ip.map(|s| parse_ip("--ip", s)).transpose()?;
    if let Some(a) = ip.filter(|a| !a.is_ipv4()) {
        return Err(Error::invalid("--ip", a, "is IPv6; use --ip6"));
    }
    let ip6 = ip6.map(|s| parse_ip("--ip6", s)).transpose()?;
    if let Some(a) = ip6.filter(|a| !a.is_ipv6()) {
        return Err(Error::invalid("--ip6", a, "is IPv4; use --ip"));
    }
    if let Some(o) = owner {
        o.validate()?;
    }
    Ok(Wants {
        ip,
        ip6,
        mac: mac.map(|s| MacAddr::parse_for("--mac", s)).transpose()?,
        name: name
            .map(|n| lanyard_core::dnsname::check_endpoint_name(n).and(EndpointName::new(n)))
            .transpose()?,
        ports: parse_ports(publish)?,
        owner: owner.cloned(),
        routes: vec![],
        aliases: vec![],
    })
}

/// `--route` CIDRs (normalised), none given twice.
pub(crate) fn parse_routes(raw: &[String]) -> Result<Vec<IpNet>> {
    let mut out: Vec<IpNet> = vec![];
    for r in raw {
        let net: IpNet = r
            .parse()
            .map_err(|_| Error::invalid("--route", r, "not a CIDR subnet (e.g. 10.1.1.0/24)"))?;
        let net = net.trunc();
        if net.prefix_len() == 0 {
            return Err(Error::invalid(
                "--route",
                r,
                "a default route cannot go behind an endpoint",
            ));
        }
        if let Some(o) = out.iter().find(|o| o.contains(&net) || net.contains(*o)) {
            return Err(Error::invalid(
                "--route",
                r,
                format!("overlaps {o}, given before"),
            ));
        }
        out.push(net);
    }
    Ok(out)
}

/// Where `--route` subnets may go: the host needs a way in to the endpoint (a
/// bridge, or the shim of a network with host access), and no subnet may overlap a
/// lanyard network's or a host route (other than a default route).
pub(crate) fn check_routes(
    net: &Network,
    routes: &[IpNet],
    networks: &[Network],
    host: &lanyard_core::kernel::View,
) -> Result<()> {
    let Some(first) = routes.first() else {
        return Ok(());
    };
    if plan::host_way_in(net).is_none() {
        return Err(Error::invalid(
            "--route",
            first,
            format!(
                "network {} gives the host no way to its endpoints (no bridge, no host-access \
                 shim): nothing could route to the subnet",
                net.name
            ),
        ));
    }
    for r in routes {
        for n in networks {
            if let Some(s) = n
                .subnets
                .iter()
                .find(|s| s.subnet.contains(r) || r.contains(&s.subnet))
            {
                return Err(Error::invalid(
                    "--route",
                    r,
                    format!("overlaps subnet {} of network {}", s.subnet, n.name),
                ));
            }
        }
        for hr in host.routes.iter().filter(|hr| hr.dst.prefix_len() > 0) {
            if hr.dst.contains(r) || r.contains(&hr.dst) {
                let dev = hr
                    .oif
                    .and_then(|i| host.link_by_index(i))
                    .map_or("?".to_string(), |l| l.name.clone());
                return Err(Error::invalid(
                    "--route",
                    r,
                    format!("overlaps route {} dev {dev} of this host", hr.dst),
                ));
            }
        }
    }
    Ok(())
}

/// `-p` specs, none published twice in one request.
pub(crate) fn parse_ports(publish: &[String]) -> Result<Vec<PortMapping>> {
    let mut ports = vec![];
    for p in publish {
        for m in PortMapping::parse_spec(p)? {
            if let Some(o) = ports.iter().find(|o: &&PortMapping| o.clashes_with(&m)) {
                return Err(Error::invalid(
                    "--publish",
                    p,
                    format!("host port {} is already in this request ({o})", m.host_port),
                ));
            }
            ports.push(m);
        }
    }
    Ok(ports)
}

/// What a network allows an endpoint to ask for (no store needed).
pub(crate) fn check_wants(net: &Network, w: &Wants, raw_mac: Option<&str>) -> Result<()> {
    if matches!(net.driver, Driver::Host | Driver::None) {
        return Err(Error::invalid(
            "network",
            net.name.as_str(),
            format!(
                "{} networks have no endpoints to attach; use `lanyard run --network {}`",
                net.driver, net.driver
            ),
        ));
    }
    if let Some(first) = w.ports.first() {
        if net.driver != Driver::Bridge {
            return Err(Error::invalid(
                "--publish",
                first,
                format!(
                    "{} endpoints have their own LAN address; ports are published only on \
                     bridge networks",
                    net.driver
                ),
            ));
        }
        if net.internal {
            return Err(Error::invalid(
                "--publish",
                first,
                format!(
                    "network {} is internal: nothing reaches it from outside",
                    net.name
                ),
            ));
        }
    }
    if net.driver == Driver::Ipvlan && w.mac.is_some() {
        return Err(Error::invalid(
            "--mac",
            raw_mac.unwrap_or_default(),
            "ipvlan endpoints share the parent's MAC",
        ));
    }
    Ok(())
}

/// A namespace an endpoint being recorded goes into.
pub(crate) struct Place<'a> {
    /// Its lasting path.
    pub netns: &'a Path,
    /// Its identity.
    pub ns_id: (u64, u64),
    /// `--ifname`, else the next free `ethN`.
    pub ifname: Option<IfName>,
    /// `ethN` names the namespace itself already has (probed before the transaction).
    pub in_kernel: &'a [IfName],
    /// `net.ipv4.ip_unprivileged_port_start` inside.
    pub unprivileged_port_start: Option<u16>,
}

/// Refuses to record an endpoint of a network that changed or went since it was read
/// (a `network rm` may have committed in between: recording an endpoint of a network
/// that is gone would leave "0 networks, 1 endpoint").
pub(crate) fn recheck_network(tx: &dyn Tx, net: &Network) -> Result<()> {
    match tx.network(&net.id)? {
        Some(now) if now == *net => Ok(()),
        Some(_) => Err(Error::TryAgain(format!(
            "network {} changed while attaching; try again",
            net.name
        ))),
        None => Err(Error::not_found("network", net.name.to_string())),
    }
}

/// Puts `ep` (not yet in a namespace, or being moved into `place`) into `place`: its
/// interface name and default-route metric, decided against the namespace's other
/// endpoints. Reads only that namespace's rows.
pub(crate) fn place_in(tx: &dyn Tx, net: &Network, ep: &mut Endpoint, place: &Place) -> Result<()> {
    let same_ns: Vec<Endpoint> = tx
        .endpoints_in_netns(place.ns_id)?
        .into_iter()
        .filter(|e| e.id != ep.id)
        .collect();
    if let Some(e) = same_ns.iter().find(|e| e.network_id == net.id) {
        return Err(Error::Conflict(format!(
            "namespace {} is already on network {} (endpoint {})",
            place.netns.display(),
            net.name,
            e.display_name()
        )));
    }
    let ifname = match &place.ifname {
        Some(i) => {
            if same_ns.iter().any(|e| &e.ifname == i) {
                return Err(Error::Conflict(format!(
                    "--ifname {i}: the namespace already has an endpoint with that name"
                )));
            }
            i.clone()
        }
        None => (0..)
            .map(|n| IfName::new(&format!("eth{n}")))
            .find(|i| {
                i.as_ref().is_ok_and(|i| {
                    !same_ns.iter().any(|e| &e.ifname == i) && !place.in_kernel.contains(i)
                })
            })
            .unwrap_or_else(|| unreachable!("some ethN is free"))?,
    };
    // The lowest default-route metric no other endpoint of the namespace holds (a
    // count of them would repeat one after a detach in between). A record from
    // before metrics were stored holds what its rank gave it, at most the count.
    let route_metric = (plan::DEFAULT_ROUTE_METRIC..)
        .find(|m| {
            !same_ns.iter().enumerate().any(|(rank, e)| {
                e.route_metric
                    .unwrap_or(plan::DEFAULT_ROUTE_METRIC + rank as u32)
                    == *m
            })
        })
        .unwrap_or(plan::DEFAULT_ROUTE_METRIC);
    ep.netns = place.netns.to_path_buf();
    ep.netns_inode = place.ns_id;
    ep.ifname = ifname;
    ep.route_metric = Some(route_metric);
    ep.unprivileged_port_start = place.unprivileged_port_start;
    ep.host_link = None;
    Ok(())
}

/// Takes `ports` for endpoint `id`, refusing one another endpoint publishes.
pub(crate) fn take_ports(tx: &mut dyn Tx, ports: &[PortMapping], id: &str) -> Result<()> {
    for m in ports {
        if let Some(holder) = tx.port_holder(m)?.filter(|h| h != id) {
            let who = tx.endpoint(&holder)?.map_or(holder, |o| o.display_name());
            return Err(Error::Conflict(format!(
                "--publish {m}: host port {} is already published by endpoint {who}",
                m.host_port,
            )));
        }
    }
    for m in ports {
        tx.take_port(m, id)?;
    }
    Ok(())
}

/// Records a new endpoint of `net` holding what `w` asks for, in `place` (state
/// `Pending`: the caller wires it next) or nowhere yet (state `Allocated`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn record(
    tx: &mut dyn Tx,
    net: &Network,
    w: &Wants,
    place: Option<&Place>,
    id: &str,
    exclude: &[IpAddr],
    node: Option<&str>,
) -> Result<Endpoint> {
    recheck_network(tx, net)?;
    take_ports(tx, &w.ports, id)?;
    let mut addresses = vec![];
    let mut gateways = vec![];
    for (want, v6, field) in [(w.ip, false, "--ip"), (w.ip6, true, "--ip6")] {
        let subnets: Vec<_> = net
            .subnets
            .iter()
            .filter(|s| s.subnet.addr().is_ipv6() == v6)
            .collect();
        if subnets.is_empty() {
            if let Some(a) = want {
                return Err(Error::invalid(
                    field,
                    a,
                    format!(
                        "network {} has no IPv{} subnet",
                        net.name,
                        if v6 { 6 } else { 4 }
                    ),
                ));
            }
            continue;
        }
        let (sc, addr) = match want {
            Some(a) => {
                let sc = subnets
                    .iter()
                    .find(|s| s.subnet.contains(&a))
                    .ok_or_else(|| {
                        Error::invalid(
                            field,
                            a,
                            format!("is outside the subnets of network {}", net.name),
                        )
                    })?;
                ipam::reserve_excluding(tx, &net.id, sc, field, a, id, exclude)?;
                (*sc, a)
            }
            None => (
                subnets[0],
                ipam::allocate_excluding(tx, &net.id, subnets[0], id, exclude)?,
            ),
        };
        addresses.push(
            IpNet::new(addr, sc.subnet.prefix_len()).map_err(|e| Error::Other(e.to_string()))?,
        );
        gateways.extend(sc.gateway);
    }
    if let Some(r) = w.routes.iter().find(|r| {
        !addresses
            .iter()
            .any(|a: &IpNet| a.addr().is_ipv4() == r.addr().is_ipv4())
    }) {
        return Err(Error::invalid(
            "--route",
            r,
            "the endpoint has no address of this family to route it to",
        ));
    }
    let mac = match (w.mac, net.driver) {
        (Some(m), _) => {
            // Two links with one MAC on one LAN segment steal each other's frames.
            if let Some(holder) = tx.mac_holder(&net.id, &m)? {
                let who = tx.endpoint(&holder)?.map_or(holder, |o| o.display_name());
                return Err(Error::Conflict(format!(
                    "--mac {m}: endpoint {who} of network {} already has it",
                    net.name
                )));
            }
            Some(m)
        }
        // Known before the link exists, so the anti-spoofing guard goes in first.
        (None, Driver::Bridge) => Some(default_mac(
            id,
            addresses.iter().find_map(|a| match a.addr() {
                IpAddr::V4(v) => Some(v),
                IpAddr::V6(_) => None,
            }),
        )),
        // Chosen and stored at allocation, so a front end can report it before the
        // link exists (Docker's CreateEndpoint) and a re-made link keeps it. From the
        // random id, not the address: two hosts' endpoints on one LAN never share
        // one. A passthru macvlan takes the parent's; ipvlan shares the parent's.
        (None, Driver::Macvlan) if net.macvlan_mode != Some(MacvlanMode::Passthru) => {
            Some(default_mac(id, None))
        }
        (None, _) => None,
    };
    let mut ep = Endpoint {
        id: id.to_string(),
        name: w.name.clone(),
        network_id: net.id.clone(),
        network: net.name.clone(),
        netns: PathBuf::new(),
        netns_inode: (0, 0),
        ifname: IfName::new("eth0")?,
        host_ifname: (net.driver == Driver::Bridge).then(|| plan::veth_name(id)),
        mac,
        addresses,
        gateways,
        ports: w.ports.clone(),
        unprivileged_port_start: None,
        route_metric: None,
        state: EndpointState::Allocated,
        created: now(),
        owner: w.owner.clone(),
        node: node.map(str::to_string),
        host_link: None,
        routes: w.routes.clone(),
        lease: None,
        aliases: w.aliases.clone(),
    };
    if let Some(place) = place {
        place_in(tx, net, &mut ep, place)?;
        ep.state = EndpointState::Pending;
    }
    tx.put_endpoint(&ep)?;
    Ok(ep)
}
