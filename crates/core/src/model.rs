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

fn parse_mode<T: for<'de> Deserialize<'de>>(field: &str, v: &str, allowed: &str) -> Result<T> {
    serde_json::from_value(serde_json::Value::String(v.to_string()))
        .map_err(|_| Error::invalid(field, v, format!("unknown mode; use one of {allowed}")))
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

/// Raw input of `network create`, as any front end received it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NetworkRequest {
    /// `NAME`.
    pub name: String,
    /// `--driver`, default bridge.
    pub driver: Option<String>,
    /// `--subnet`, repeatable.
    pub subnets: Vec<String>,
    /// `--gateway`, repeatable; each matched to the subnet containing it.
    pub gateways: Vec<String>,
    /// `--ip-range`, repeatable; each matched to the subnet containing it.
    pub ip_ranges: Vec<String>,
    /// `--aux-address NAME=IP`, repeatable.
    pub aux_addresses: Vec<String>,
    /// `--internal`.
    pub internal: bool,
    /// `--ipv6`.
    pub ipv6: bool,
    /// `--label k=v`.
    pub labels: Vec<String>,
    /// `-o k=v`.
    pub options: Vec<String>,
}

/// Options `-o` accepts.
pub const KNOWN_OPTIONS: &[&str] = &[
    "parent",
    "macvlan_mode",
    "ipvlan_mode",
    "mtu",
    "host_access",
    "snat_source",
    "bridge_name",
];

fn split_kv<'a>(field: &str, s: &'a str) -> Result<(&'a str, &'a str)> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k, v)),
        _ => Err(Error::invalid(field, s, "expected KEY=VALUE")),
    }
}

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

impl NetworkRequest {
    /// Checks everything that can be checked without the store or the kernel and
    /// returns the network to record. `subnets` may still be empty (pool allocation
    /// happens in the engine); `id` and `created` are filled in by the caller.
    pub fn validate(&self, id: String, created: u64) -> Result<Network> {
        let name = NetworkName::new(&self.name)?;
        if matches!(name.as_str(), "host" | "none") {
            return Err(Error::invalid(
                "network name",
                name.as_str(),
                "is reserved: `--network host` and `--network none` mean no lanyard network",
            ));
        }
        let driver: Driver = self.driver.as_deref().unwrap_or("bridge").parse()?;

        let mut options = BTreeMap::new();
        for o in &self.options {
            let (k, v) = split_kv("--opt", o)?;
            if !KNOWN_OPTIONS.contains(&k) {
                return Err(Error::invalid(
                    "--opt",
                    o,
                    format!(
                        "unknown option {k:?}; known options: {}",
                        KNOWN_OPTIONS.join(", ")
                    ),
                ));
            }
            options.insert(k.to_string(), v.to_string());
        }
        let mut labels = BTreeMap::new();
        for l in &self.labels {
            let (k, v) = split_kv("--label", l)?;
            labels.insert(k.to_string(), v.to_string());
        }

        let parent = match options.get("parent") {
            Some(p) => Some(IfName::parse_user("-o parent", p)?),
            None => None,
        };
        if driver.needs_parent() && parent.is_none() {
            return Err(Error::invalid(
                "-o parent",
                "",
                format!("the {driver} driver needs a parent interface: add -o parent=eth0"),
            ));
        }
        if !driver.needs_parent() && parent.is_some() {
            return Err(Error::invalid(
                "-o parent",
                options["parent"].clone(),
                format!("the {driver} driver takes no parent interface"),
            ));
        }
        let macvlan_mode = match (driver, options.get("macvlan_mode")) {
            (Driver::Macvlan, Some(m)) => Some(parse_mode(
                "-o macvlan_mode",
                m,
                "bridge, private, vepa, passthru",
            )?),
            (Driver::Macvlan, None) => Some(MacvlanMode::Bridge),
            (_, Some(m)) => {
                return Err(Error::invalid(
                    "-o macvlan_mode",
                    m,
                    format!("only for the macvlan driver, not {driver}"),
                ))
            }
            _ => None,
        };
        let ipvlan_mode = match (driver, options.get("ipvlan_mode")) {
            (Driver::Ipvlan, Some(m)) => Some(parse_mode("-o ipvlan_mode", m, "l2, l3, l3s")?),
            (Driver::Ipvlan, None) => Some(IpvlanMode::L2),
            (_, Some(m)) => {
                return Err(Error::invalid(
                    "-o ipvlan_mode",
                    m,
                    format!("only for the ipvlan driver, not {driver}"),
                ))
            }
            _ => None,
        };
        let mtu = match options.get("mtu") {
            Some(m) => {
                let v: u32 = m
                    .parse()
                    .map_err(|_| Error::invalid("-o mtu", m, "not a number"))?;
                if !(68..=65535).contains(&v) {
                    return Err(Error::invalid("-o mtu", m, "must be between 68 and 65535"));
                }
                Some(v)
            }
            None => None,
        };
        // Host access needs a shim beside the endpoints: macvlan bridge mode or ipvlan.
        let shim_possible = matches!(macvlan_mode, Some(MacvlanMode::Bridge))
            || matches!(ipvlan_mode, Some(IpvlanMode::L2));
        let host_access = match options.get("host_access").map(String::as_str) {
            None => shim_possible,
            Some("on" | "true" | "1") if shim_possible => true,
            Some("on" | "true" | "1") => {
                return Err(Error::invalid(
                    "-o host_access",
                    "on",
                    "needs macvlan_mode=bridge or ipvlan_mode=l2 (other modes keep the host out by design)",
                ))
            }
            Some("off" | "false" | "0") => false,
            Some(v) => return Err(Error::invalid("-o host_access", v, "use on or off")),
        };
        let snat_source = match options.get("snat_source") {
            Some(s) if driver == Driver::Bridge => Some(parse_ip("-o snat_source", s)?),
            Some(s) => {
                return Err(Error::invalid(
                    "-o snat_source",
                    s,
                    "only bridge networks are NATed",
                ))
            }
            None => None,
        };
        let bridge = match (driver, options.get("bridge_name")) {
            (Driver::Bridge, Some(b)) => Some(IfName::parse_user("-o bridge_name", b)?),
            (Driver::Bridge, None) => {
                Some(IfName::new(&format!("lyb-{}", &id[..11.min(id.len())]))?)
            }
            (_, Some(b)) => {
                return Err(Error::invalid(
                    "-o bridge_name",
                    b,
                    "only for the bridge driver",
                ))
            }
            _ => None,
        };

        if !driver.has_ipam() {
            for (field, list) in [
                ("--subnet", &self.subnets),
                ("--gateway", &self.gateways),
                ("--ip-range", &self.ip_ranges),
                ("--aux-address", &self.aux_addresses),
            ] {
                if let Some(v) = list.first() {
                    return Err(Error::invalid(
                        field,
                        v,
                        format!("the {driver} driver has no addresses to manage"),
                    ));
                }
            }
        }

        let mut subnets: Vec<SubnetConfig> = Vec::new();
        for s in &self.subnets {
            let subnet = parse_cidr("--subnet", s)?;
            crate::subnet::check("--subnet", s, &subnet)?;
            if let Some(o) = subnets
                .iter()
                .find(|c| c.subnet.contains(&subnet) || subnet.contains(&c.subnet))
            {
                return Err(Error::invalid(
                    "--subnet",
                    s,
                    format!("overlaps --subnet {}", o.subnet),
                ));
            }
            subnets.push(SubnetConfig {
                subnet,
                gateway: None,
                ip_range: None,
                aux_addresses: BTreeMap::new(),
            });
        }
        let find = |field: &str,
                    v: &str,
                    addr: IpAddr,
                    subnets: &mut Vec<SubnetConfig>|
         -> Result<usize> {
            subnets
                .iter()
                .position(|c| c.subnet.contains(&addr))
                .ok_or_else(|| {
                    Error::invalid(
                        field,
                        v,
                        if subnets.is_empty() {
                            "needs a --subnet to belong to".to_string()
                        } else {
                            format!(
                                "is outside every --subnet ({})",
                                subnets
                                    .iter()
                                    .map(|c| c.subnet.to_string())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            )
                        },
                    )
                })
        };
        for g in &self.gateways {
            let addr = parse_ip("--gateway", g)?;
            let i = find("--gateway", g, addr, &mut subnets)?;
            let c = &mut subnets[i];
            if c.gateway.is_some() {
                return Err(Error::invalid(
                    "--gateway",
                    g,
                    format!("subnet {} already has a gateway", c.subnet),
                ));
            }
            if is_network_or_broadcast(&c.subnet, addr) {
                return Err(Error::invalid(
                    "--gateway",
                    g,
                    format!("is the network or broadcast address of {}", c.subnet),
                ));
            }
            c.gateway = Some(addr);
        }
        for r in &self.ip_ranges {
            let range = parse_cidr("--ip-range", r)?;
            let i = subnets
                .iter()
                .position(|c| c.subnet.contains(&range))
                .ok_or_else(|| Error::invalid("--ip-range", r, "is not inside any --subnet"))?;
            if subnets[i].ip_range.is_some() {
                return Err(Error::invalid(
                    "--ip-range",
                    r,
                    format!("subnet {} already has an ip-range", subnets[i].subnet),
                ));
            }
            subnets[i].ip_range = Some(range);
        }
        for a in &self.aux_addresses {
            let (k, v) = split_kv("--aux-address", a)?;
            let addr = parse_ip("--aux-address", v)?;
            let i = find("--aux-address", a, addr, &mut subnets)?;
            if subnets[i]
                .aux_addresses
                .insert(k.to_string(), addr)
                .is_some()
            {
                return Err(Error::invalid(
                    "--aux-address",
                    a,
                    format!("name {k:?} given twice"),
                ));
            }
        }
        let has_v6 = subnets.iter().any(|c| c.subnet.addr().is_ipv6());
        if has_v6 && !self.ipv6 {
            return Err(Error::invalid(
                "--subnet",
                subnets
                    .iter()
                    .find(|c| c.subnet.addr().is_ipv6())
                    .map(|c| c.subnet.to_string())
                    .unwrap_or_default(),
                "is IPv6; add --ipv6",
            ));
        }
        for c in &mut subnets {
            if c.gateway.is_none() {
                c.gateway = first_host(&c.subnet);
            }
        }
        for c in &subnets {
            check_room(c)?;
        }
        if let (Some(m), true) = (mtu, self.ipv6) {
            if m < 1280 {
                return Err(Error::invalid(
                    "-o mtu",
                    m,
                    "is below 1280, the least IPv6 allows (--ipv6 is on)",
                ));
            }
        }

        Ok(Network {
            id,
            name,
            driver,
            parent,
            macvlan_mode,
            ipvlan_mode,
            bridge,
            subnets,
            internal: self.internal,
            ipv6: self.ipv6,
            mtu,
            host_access: driver.needs_parent() && host_access,
            snat_source,
            labels,
            options,
            created,
            owns_vlan: false,
        })
    }
}

/// An aux address may not be the gateway, and an ip-range must hold an address
/// for endpoints beside the gateway and aux addresses.
fn check_room(c: &SubnetConfig) -> Result<()> {
    if let Some((k, a)) = c.aux_addresses.iter().find(|(_, a)| Some(**a) == c.gateway) {
        return Err(Error::invalid(
            "--aux-address",
            format!("{k}={a}"),
            "is the subnet's gateway",
        ));
    }
    let Some(range) = c.ip_range else {
        return Ok(());
    };
    // Only a small range can be all taken; count up to a few addresses.
    let usable = range
        .hosts()
        .take(8)
        .filter(|a| {
            c.subnet.contains(a)
                && !is_network_or_broadcast(&c.subnet, *a)
                && Some(*a) != c.gateway
                && !c.aux_addresses.values().any(|x| x == a)
        })
        .count();
    if usable == 0 {
        return Err(Error::invalid(
            "--ip-range",
            range,
            "holds no address for endpoints (only the gateway, aux addresses, or the network/broadcast address)",
        ));
    }
    Ok(())
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
    /// Path of the namespace (e.g. /proc/PID/ns/net or /run/netns/X).
    pub netns: PathBuf,
    /// (st_dev, st_ino) of the namespace when attached; tells a reused path apart.
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
}

impl Endpoint {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(f: impl FnOnce(&mut NetworkRequest)) -> Result<Network> {
        let mut r = NetworkRequest {
            name: "lan".into(),
            ..Default::default()
        };
        f(&mut r);
        r.validate(
            "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef".into(),
            0,
        )
    }

    fn field_of(e: Error) -> String {
        match e {
            Error::Invalid { field, .. } => field,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn reserved_names_loopback_parents_and_roomless_ranges_are_refused_naming_the_field() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        type Case = (&'static str, Box<dyn FnOnce(&mut NetworkRequest)>);
        let cases: Vec<Case> = vec![
            ("network name", Box::new(|r| r.name = "host".into())),
            ("network name", Box::new(|r| r.name = "none".into())),
            (
                "-o parent",
                Box::new(move |r| {
                    r.driver = Some("macvlan".into());
                    r.options = s(&["parent=lo"]);
                }),
            ),
            (
                "-o bridge_name",
                Box::new(move |r| r.options = s(&["bridge_name=all"])),
            ),
            (
                "-o bridge_name",
                Box::new(move |r| r.options = s(&["bridge_name=br%d"])),
            ),
            (
                "--subnet",
                Box::new(move |r| r.subnets = s(&["127.0.0.0/8"])),
            ),
            (
                "--subnet",
                Box::new(move |r| r.subnets = s(&["192.0.2.0/31"])),
            ),
            (
                "--subnet",
                Box::new(move |r| {
                    r.ipv6 = true;
                    r.subnets = s(&["::ffff:192.0.2.0/120"]);
                }),
            ),
            (
                "-o mtu",
                Box::new(move |r| {
                    r.ipv6 = true;
                    r.subnets = s(&["2001:db8::/64"]);
                    r.options = s(&["mtu=1000"]);
                }),
            ),
            (
                "--aux-address",
                Box::new(move |r| {
                    r.subnets = s(&["192.0.2.0/24"]);
                    r.aux_addresses = s(&["gw=192.0.2.1"]);
                }),
            ),
            (
                "--ip-range",
                Box::new(move |r| {
                    r.subnets = s(&["192.0.2.0/24"]);
                    r.gateways = s(&["192.0.2.1"]);
                    r.ip_ranges = s(&["192.0.2.1/32"]);
                }),
            ),
        ];
        for (field, f) in cases {
            let err = req(f).unwrap_err();
            let msg = err.to_string();
            assert_eq!(field_of(err), field, "{msg}");
        }
    }

    #[test]
    fn bad_cidr_names_subnet() {
        assert_eq!(
            field_of(req(|r| r.subnets = vec!["192.0.2.0/33".into()]).unwrap_err()),
            "--subnet"
        );
        assert_eq!(
            field_of(req(|r| r.subnets = vec!["192.0.2.1/24".into()]).unwrap_err()),
            "--subnet"
        );
    }

    #[test]
    fn gateway_outside_subnet_is_refused() {
        let e = req(|r| {
            r.subnets = vec!["192.0.2.0/24".into()];
            r.gateways = vec!["198.51.100.1".into()];
        })
        .unwrap_err();
        assert!(e.to_string().contains("outside every --subnet"), "{e}");
    }

    #[test]
    fn ip_range_and_aux_outside_subnet_are_refused() {
        let e = req(|r| {
            r.subnets = vec!["192.0.2.0/24".into()];
            r.ip_ranges = vec!["198.51.100.0/25".into()];
        });
        assert_eq!(field_of(e.unwrap_err()), "--ip-range");
        let e = req(|r| {
            r.subnets = vec!["192.0.2.0/24".into()];
            r.aux_addresses = vec!["host=198.51.100.9".into()];
        });
        assert_eq!(field_of(e.unwrap_err()), "--aux-address");
    }

    #[test]
    fn macvlan_without_parent_is_refused() {
        let e = req(|r| r.driver = Some("macvlan".into())).unwrap_err();
        assert_eq!(field_of(e), "-o parent");
    }

    #[test]
    fn unknown_driver_and_option_are_refused() {
        assert_eq!(
            field_of(req(|r| r.driver = Some("overlay".into())).unwrap_err()),
            "--driver"
        );
        assert_eq!(
            field_of(req(|r| r.options = vec!["colour=blue".into()]).unwrap_err()),
            "--opt"
        );
    }

    #[test]
    fn macvlan_defaults_to_bridge_mode_with_host_access() {
        let n = req(|r| {
            r.driver = Some("macvlan".into());
            r.options = vec!["parent=eth0".into()];
            r.subnets = vec!["192.0.2.0/24".into()];
        })
        .unwrap();
        assert_eq!(n.macvlan_mode, Some(MacvlanMode::Bridge));
        assert!(n.host_access);
        assert_eq!(n.subnets[0].gateway, Some("192.0.2.1".parse().unwrap()));
    }

    #[test]
    fn host_access_on_in_private_mode_is_refused() {
        let e = req(|r| {
            r.driver = Some("macvlan".into());
            r.options = vec![
                "parent=eth0".into(),
                "macvlan_mode=private".into(),
                "host_access=on".into(),
            ];
        });
        assert_eq!(field_of(e.unwrap_err()), "-o host_access");
    }

    #[test]
    fn ipv6_subnet_needs_ipv6_flag() {
        assert!(req(|r| r.subnets = vec!["2001:db8:1::/64".into()]).is_err());
        assert!(req(|r| {
            r.subnets = vec!["2001:db8:1::/64".into()];
            r.ipv6 = true;
        })
        .is_ok());
    }

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
