//! The objects lanyard keeps: [`Network`]s and [`Endpoint`]s, and the requests that
//! create them. Requests hold raw strings exactly as a front end received them;
//! `validate` turns them into typed objects or a field-level error.

use crate::name::{EndpointName, IfName, NetworkName};
use crate::{Error, Result};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;

/// How a network's endpoints are wired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    /// A Linux bridge on the host, veth pairs to endpoints, NAT out.
    Bridge,
    /// A macvlan per endpoint on a parent interface: own MAC, own LAN address.
    Macvlan,
    /// An ipvlan per endpoint on a parent: shares the parent's MAC (Wi-Fi parents).
    Ipvlan,
    /// The host's own namespace.
    Host,
    /// Loopback only.
    None,
}

impl Driver {
    /// All drivers, for error messages.
    pub const NAMES: &'static str = "bridge, macvlan, ipvlan, host, none";
    /// Whether endpoints of this driver hang off a parent interface.
    pub fn needs_parent(self) -> bool {
        matches!(self, Driver::Macvlan | Driver::Ipvlan)
    }
    /// Whether endpoints get addresses from IPAM.
    pub fn has_ipam(self) -> bool {
        matches!(self, Driver::Bridge | Driver::Macvlan | Driver::Ipvlan)
    }
}

impl FromStr for Driver {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "bridge" => Driver::Bridge,
            "macvlan" => Driver::Macvlan,
            "ipvlan" => Driver::Ipvlan,
            "host" => Driver::Host,
            "none" | "null" => Driver::None,
            _ => {
                return Err(Error::invalid(
                    "--driver",
                    s,
                    format!("unknown driver; known drivers: {}", Self::NAMES),
                ))
            }
        })
    }
}

impl fmt::Display for Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Driver::Bridge => "bridge",
            Driver::Macvlan => "macvlan",
            Driver::Ipvlan => "ipvlan",
            Driver::Host => "host",
            Driver::None => "none",
        })
    }
}

/// macvlan modes (`ip link add … type macvlan mode X`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum MacvlanMode {
    /// Endpoints on the same parent talk directly (the default).
    #[default]
    Bridge,
    /// No traffic between endpoints on the same parent.
    Private,
    /// Everything goes out to the switch (needs hairpin on the switch).
    Vepa,
    /// One endpoint takes over the parent.
    Passthru,
}

/// ipvlan modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum IpvlanMode {
    /// Switching at layer 2 (the default).
    #[default]
    L2,
    /// Routing at layer 3, no broadcast.
    L3,
    /// Layer 3 with conntrack (netfilter) on the host.
    L3s,
}

/// A MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// Parses `aa:bb:cc:dd:ee:ff`, naming `field` on error. Refuses multicast and zero.
    pub fn parse_for(field: &str, s: &str) -> Result<Self> {
        let parts: Vec<&str> = s.split([':', '-']).collect();
        let bad = || Error::invalid(field, s, "expected a MAC address like 02:42:c0:00:02:0a");
        if parts.len() != 6 {
            return Err(bad());
        }
        let mut b = [0u8; 6];
        for (i, p) in parts.iter().enumerate() {
            if p.len() != 2 {
                return Err(bad());
            }
            b[i] = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if b[0] & 1 == 1 {
            return Err(Error::invalid(
                field,
                s,
                "is a multicast address; the first octet must be even",
            ));
        }
        if b == [0; 6] {
            return Err(Error::invalid(
                field,
                s,
                "the all-zero address is not usable",
            ));
        }
        Ok(MacAddr(b))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}
impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}
impl TryFrom<String> for MacAddr {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        MacAddr::parse_for("mac", &s)
    }
}
impl From<MacAddr> for String {
    fn from(m: MacAddr) -> String {
        m.to_string()
    }
}

/// One subnet of a network with its IPAM settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubnetConfig {
    /// The subnet, normalised (host bits cleared).
    pub subnet: IpNet,
    /// The gateway endpoints route through (bridge: the bridge's own address).
    pub gateway: Option<IpAddr>,
    /// Addresses are handed out only from here (defaults to the whole subnet).
    pub ip_range: Option<IpNet>,
    /// Named addresses never handed out (`--aux-address host=192.0.2.5`).
    #[serde(default)]
    pub aux_addresses: BTreeMap<String, IpAddr>,
}

/// A network as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    /// 64 hex digits, unique.
    pub id: String,
    /// Unique name.
    pub name: NetworkName,
    /// How endpoints are wired.
    pub driver: Driver,
    /// Parent interface (macvlan, ipvlan); `eth0.10` means VLAN 10 on eth0.
    pub parent: Option<IfName>,
    /// macvlan mode (macvlan only).
    pub macvlan_mode: Option<MacvlanMode>,
    /// ipvlan mode (ipvlan only).
    pub ipvlan_mode: Option<IpvlanMode>,
    /// The Linux bridge's name (bridge only).
    pub bridge: Option<IfName>,
    /// IPv4 and IPv6 subnets.
    pub subnets: Vec<SubnetConfig>,
    /// No traffic leaves the network.
    pub internal: bool,
    /// IPv6 enabled.
    pub ipv6: bool,
    /// MTU for endpoints (and the bridge).
    pub mtu: Option<u32>,
    /// The host reaches endpoints through a shim (macvlan/ipvlan).
    pub host_access: bool,
    /// Egress source address (SNAT) instead of masquerade.
    pub snat_source: Option<IpAddr>,
    /// Free-form labels.
    pub labels: BTreeMap<String, String>,
    /// Options exactly as given (`-o k=v`).
    pub options: BTreeMap<String, String>,
    /// Unix seconds.
    pub created: u64,
    /// lanyard made the VLAN link `parent` (`eth0.10`) and removes it with the last
    /// network on it; a VLAN link the administrator made is never removed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub owns_vlan: bool,
    /// IPv4 is routed, not NATed (`-o gateway_mode=routed` or Docker's
    /// `com.docker.network.bridge.gateway_mode_ipv4=routed`; bridge networks).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub routed_v4: bool,
    /// IPv6 is routed, not NATed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub routed_v6: bool,
    /// Where endpoints get their addresses: lanyard's IPAM, or the LAN's DHCP server.
    #[serde(default, skip_serializing_if = "IpamDriver::is_default")]
    pub ipam: IpamDriver,
    /// The bridge is the host's own (`-o bridge=br0 -o bridge_external=true`):
    /// endpoints join the LAN through it at layer 2; lanyard never adds, changes or
    /// removes the bridge, its addresses, routes or other ports, and NATs nothing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bridge_external: bool,
}

/// Who hands out a network's addresses (`--ipam-driver`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IpamDriver {
    /// lanyard, from the network's subnets.
    #[default]
    Default,
    /// The LAN's DHCP server, per endpoint (macvlan, ipvlan).
    Dhcp,
}

impl IpamDriver {
    /// Whether this is lanyard's own IPAM.
    pub fn is_default(&self) -> bool {
        *self == IpamDriver::Default
    }
}

impl Network {
    /// The short id Docker shows (12 hex digits).
    pub fn short_id(&self) -> &str {
        &self.id[..12.min(self.id.len())]
    }
    /// The interface endpoints hang off, or the bridge for bridge networks.
    pub fn lower_link(&self) -> Option<&IfName> {
        self.parent.as_ref().or(self.bridge.as_ref())
    }
}

pub use crate::netreq::{NetworkRequest, KNOWN_OPTIONS};

/// Parses an address, naming `field` on error.
pub fn parse_ip(field: &str, s: &str) -> Result<IpAddr> {
    s.parse()
        .map_err(|_| Error::invalid(field, s, "not an IPv4 or IPv6 address"))
}

/// Parses a CIDR, naming `field`; refuses host bits set (Docker does too).
pub fn parse_cidr(field: &str, s: &str) -> Result<IpNet> {
    let net: IpNet = s
        .parse()
        .map_err(|_| Error::invalid(field, s, "not a CIDR like 192.0.2.0/24 or 2001:db8::/64"))?;
    if net.trunc() != net {
        return Err(Error::invalid(
            field,
            s,
            format!("host bits are set; did you mean {}?", net.trunc()),
        ));
    }
    Ok(net)
}

/// Whether `addr` is the network or (IPv4) broadcast address of `net`.
pub fn is_network_or_broadcast(net: &IpNet, addr: IpAddr) -> bool {
    match net {
        IpNet::V4(n) => {
            n.prefix_len() < 31
                && (addr == IpAddr::V4(n.network()) || addr == IpAddr::V4(n.broadcast()))
        }
        IpNet::V6(n) => addr == IpAddr::V6(n.network()),
    }
}

/// The first usable host address of `net` (`.1`, `::1`).
pub fn first_host(net: &IpNet) -> Option<IpAddr> {
    match net {
        IpNet::V4(n) => n.hosts().next().map(IpAddr::V4),
        // ipnet's IPv6 hosts() starts at the subnet-router anycast address (::0).
        IpNet::V6(n) => {
            (n.prefix_len() < 128).then(|| IpAddr::V6((u128::from(n.network()) + 1).into()))
        }
    }
}

/// Lifecycle of an endpoint record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointState {
    /// Holds its addresses, MAC and ports; no link anywhere yet (`allocate`, or
    /// `unplug` of a plugged one).
    Allocated,
    /// Recorded, kernel work under way (or interrupted by a crash: `gc` finishes it).
    Pending,
    /// Wired and working.
    Active,
    /// Being detached: the kernel side is going or gone, the addresses and ports
    /// stay held until it is (so none is handed out while a link still has it). A
    /// detach that failed or was killed leaves this; `detach` again or `gc` finishes.
    Detaching,
}

/// Transport protocol of a port mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Proto {
    /// The name as `-p`, nft and the stored JSON spell it: `tcp`, `udp`.
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// One published port (`-p 8080:80/tcp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PortMapping {
    /// Only this host address, or all.
    pub host_ip: Option<IpAddr>,
    /// Port on the host.
    pub host_port: u16,
    /// Port in the endpoint.
    pub container_port: u16,
    /// tcp or udp.
    pub proto: Proto,
}

impl PortMapping {
    /// Whether both cannot be published at once: same protocol and host port, and the
    /// same host address or either one bound to all addresses.
    pub fn clashes_with(&self, other: &PortMapping) -> bool {
        self.host_port == other.host_port
            && self.proto == other.proto
            && (self.host_ip.is_none() || other.host_ip.is_none() || self.host_ip == other.host_ip)
    }

    /// Parses `-p [HOSTIP:]HOSTPORT[-END]:CPORT[-END][/tcp|/udp]` into one mapping per port.
    pub fn parse_spec(s: &str) -> Result<Vec<PortMapping>> {
        let bad = |why: &str| Error::invalid("--publish", s, why.to_string());
        let (rest, proto) = match s.rsplit_once('/') {
            Some((r, "tcp")) => (r, Proto::Tcp),
            Some((r, "udp")) => (r, Proto::Udp),
            Some(_) => return Err(bad("protocol must be tcp or udp")),
            None => (s, Proto::Tcp),
        };
        // Split off the container part (after the last ':'), then the host port, then an optional IP.
        let (head, cport) = rest
            .rsplit_once(':')
            .ok_or_else(|| bad("expected HOSTPORT:CONTAINERPORT"))?;
        let (host_ip, hport) = match head.rsplit_once(':') {
            Some((ip, hp)) => {
                let ip = ip.trim_start_matches('[').trim_end_matches(']');
                (Some(parse_ip("--publish", ip)?), hp)
            }
            None => (None, head),
        };
        let range = |p: &str| -> Result<(u16, u16)> {
            let (a, b) = p.split_once('-').unwrap_or((p, p));
            let a: u16 = a
                .parse()
                .map_err(|_| bad("port is not a number from 1 to 65535"))?;
            let b: u16 = b
                .parse()
                .map_err(|_| bad("port is not a number from 1 to 65535"))?;
            if a == 0 || b < a {
                return Err(bad("port range must be ascending and start at 1 or more"));
            }
            Ok((a, b))
        };
        let (h0, h1) = range(hport)?;
        let (c0, c1) = range(cport)?;
        if h1 - h0 != c1 - c0 {
            return Err(bad("host and container ranges differ in length"));
        }
        Ok((0..=(h1 - h0))
            .map(|i| PortMapping {
                host_ip,
                host_port: h0 + i,
                container_port: c0 + i,
                proto,
            })
            .collect())
    }
}

impl fmt::Display for PortMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = self.proto.as_str();
        match self.host_ip {
            Some(IpAddr::V6(ip)) => {
                write!(f, "[{ip}]:{}->{}/{p}", self.host_port, self.container_port)
            }
            Some(ip) => write!(f, "{ip}:{}->{}/{p}", self.host_port, self.container_port),
            None => write!(f, "{}->{}/{p}", self.host_port, self.container_port),
        }
    }
}

/// An endpoint as stored: one interface of one namespace on one network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// 64 hex digits.
    pub id: String,
    /// Optional unique name (`--name`), used by `container:NAME` and detach.
    pub name: Option<EndpointName>,
    /// Network id.
    pub network_id: String,
    /// Network name, for display.
    pub network: NetworkName,
    /// Path of the namespace (e.g. /proc/PID/ns/net or /run/netns/X); empty while
    /// the endpoint is only allocated or plugged host-side.
    pub netns: PathBuf,
    /// (st_dev, st_ino) of the namespace when attached; tells a reused path apart.
    /// (0, 0) while the endpoint has no namespace.
    pub netns_inode: (u64, u64),
    /// Interface name inside the namespace.
    pub ifname: IfName,
    /// Host side of the veth pair (bridge driver).
    pub host_ifname: Option<IfName>,
    /// Fixed MAC if asked for.
    pub mac: Option<MacAddr>,
    /// Addresses with prefix length of their subnet.
    pub addresses: Vec<IpNet>,
    /// Gateways (one per family) for the default route.
    pub gateways: Vec<IpAddr>,
    /// Published ports.
    #[serde(default)]
    pub ports: Vec<PortMapping>,
    /// `net.ipv4.ip_unprivileged_port_start` in the namespace, if set.
    #[serde(default)]
    pub unprivileged_port_start: Option<u16>,
    /// Metric of the endpoint's default routes: the lowest one from
    /// [`crate::plan::DEFAULT_ROUTE_METRIC`] up that no other endpoint of the
    /// namespace holds, chosen at attach and used by every later plan (restore too),
    /// so no endpoint's `route replace` takes another's default. `None` in records
    /// written before it was stored.
    #[serde(default)]
    pub route_metric: Option<u32>,
    /// Lifecycle state.
    pub state: EndpointState,
    /// Unix seconds.
    pub created: u64,
    /// The caller's key (CNI, Docker); `None` for the CLI's endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<crate::owner::Owner>,
    /// The host this endpoint's kernel side lives on (`node` in the config, else the
    /// host name): a store shared by several hosts never makes one host's `gc` or
    /// `restore` touch another's endpoints. `None` in records from before: this host's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Plugged host-side ([`crate::owner::PlugTarget::Host`]): the link's temporary
    /// name in the host namespace, which the caller moves and renames itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_link: Option<IfName>,
    /// Subnets behind the endpoint (`--route`: a VPN server's clients): the host
    /// routes each to the endpoint's address of its family, through the shim or the
    /// bridge.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<IpNet>,
    /// On a DHCP network: the lease its address comes from (renewed by the daemon,
    /// asked for again by `restore`, released on detach).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<crate::lease::Lease>,
    /// More names (`--alias`) the endpoint answers to in the daemon's DNS responder
    /// on its network, besides its `name`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<crate::dnsname::DnsName>,
}

impl Endpoint {
    /// The namespace the endpoint is in, if it is in one (not only allocated, not
    /// plugged host-side).
    pub fn in_netns(&self) -> bool {
        self.netns_inode != (0, 0)
    }
    /// The short id (12 hex digits).
    pub fn short_id(&self) -> &str {
        &self.id[..12.min(self.id.len())]
    }
    /// Name if it has one, else the short id.
    pub fn display_name(&self) -> String {
        self.name
            .as_ref()
            .map(|n| n.to_string())
            .unwrap_or_else(|| self.short_id().to_string())
    }
}

/// Raw input of `attach`, as any front end received it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AttachRequest {
    /// Network name or id.
    pub network: String,
    /// Namespace path.
    pub netns: PathBuf,
    /// `--ifname`; default: the next free `ethN` in the namespace.
    pub ifname: Option<String>,
    /// `--ip` (IPv4).
    pub ip: Option<String>,
    /// `--ip6`.
    pub ip6: Option<String>,
    /// `--mac`.
    pub mac: Option<String>,
    /// `--name`.
    pub name: Option<String>,
    /// `-p` specs.
    pub publish: Vec<String>,
    /// `--unprivileged-port-start`.
    pub unprivileged_port_start: Option<u16>,
    /// The caller's key: an attach repeated with the same owner returns the endpoint
    /// it made (CNI's ADD), one with another network or namespace is a conflict.
    #[serde(default)]
    pub owner: Option<crate::owner::Owner>,
    /// `--route` CIDRs: subnets behind the endpoint the host routes to it.
    #[serde(default)]
    pub routes: Vec<String>,
    /// `--alias` names the endpoint also answers to in DNS on its network.
    #[serde(default)]
    pub aliases: Vec<String>,
}

/// Which endpoint to detach.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum DetachRequest {
    /// By endpoint name or id.
    Endpoint(String),
    /// By network and namespace path (+ optional ifname).
    Netns {
        /// Network name or id.
        network: String,
        /// Namespace path.
        netns: PathBuf,
    },
    /// By the caller's key (CNI's DEL, Docker's DeleteEndpoint).
    Owner(crate::owner::Owner),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_specs_parse_ranges_and_ipv6() {
        let v = PortMapping::parse_spec("8080-8081:80-81/udp").unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[1].host_port, 8081);
        assert_eq!(v[1].container_port, 81);
        let v = PortMapping::parse_spec("[2001:db8::1]:443:8443").unwrap();
        assert_eq!(v[0].host_ip, Some("2001:db8::1".parse().unwrap()));
        assert!(PortMapping::parse_spec("80").is_err());
        assert!(PortMapping::parse_spec("0:80").is_err());
        assert!(PortMapping::parse_spec("80:80/sctp").is_err());
    }

    #[test]
    fn mac_parse_refuses_multicast() {
        assert!(MacAddr::parse_for("--mac", "02:42:c0:00:02:0a").is_ok());
        assert!(MacAddr::parse_for("--mac", "01:00:5e:00:00:01").is_err());
        assert!(MacAddr::parse_for("--mac", "zz").is_err());
    }
}
