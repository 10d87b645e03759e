//! lanyard's nftables firewall for bridge networks, rendered as nft script text.
//!
//! [`ruleset`] renders ONE script that atomically replaces lanyard's two tables,
//! `table inet lanyard` and `table bridge lanyard`, and touches nothing else: each
//! table is first declared (a no-op if it exists), then deleted, then defined in full,
//! all in one transaction, so it works whether or not the tables exist and never
//! leaves a half-applied state. [`element_ops`] renders the small scripts that add or
//! remove one network's, one endpoint's or one port mapping's set elements.
//!
//! # Shape
//!
//! The rules are fixed text. Everything that varies lives in named sets and maps
//! ([`NftSet`]), so publishing a port is one map element and attaching an endpoint is
//! one element per anti-spoof set; nft never rewrites or rescans rules for it.
//!
//! `table inet lanyard` (L3, routed traffic):
//! - `prerouting` (nat, dstnat) and `output` (nat, -100): a packet whose destination is
//!   an address of this host (`fib daddr type local`) jumps to `published`, which DNATs
//!   it through `dnat4` / `dnat6` (`host address . proto . port : endpoint . port`) or,
//!   for mappings without a host address, `dnat4_any` / `dnat6_any`
//!   (`proto . port : endpoint . port`). Prerouting catches LAN clients and endpoints
//!   reaching a published port through a host address (hairpin); output catches the
//!   host's own connections. `::1` is never DNATed (IPv6 has no `route_localnet`).
//! - `postrouting` (nat, srcnat), in order:
//!   hairpin: a DNATed packet leaving a bridge whose subnet (`nets4`/`nets6`) holds its
//!   source is masqueraded, so the endpoint's reply comes back through the host;
//!   loopback: a packet from `127.0.0.0/8` leaving a lanyard bridge (the host connected to
//!   `127.0.0.1:PORT`) is masqueraded — this also needs
//!   `net.ipv4.conf.<bridge>.route_localnet=1`, which the engine sets;
//!   egress: a packet from a bridge subnet leaving through a non-lanyard interface is
//!   SNATed to the network's `snat_source` (`snat4`/`snat6`) or masqueraded (`masq4`/`masq6`).
//!   Internal networks are in neither, nor are routed ones (`-o gateway_mode=routed`).
//! - `forward` (filter): routed traffic within one bridge is accepted
//!   (`same_bridge`); anything else from or to an internal bridge is dropped; DNATed
//!   traffic is accepted (a published port is public, also to other networks); from a
//!   non-lanyard interface (the LAN) to a routed network's subnet (`routed4`/`routed6`)
//!   is accepted (no NAT: the LAN reaches its endpoints by their addresses); into a
//!   lanyard bridge only replies pass (`ct state established,related`): a LAN host
//!   that routes a bridge subnet via this host reaches no unpublished port, and
//!   another lanyard bridge reaches nothing (isolation), as with Docker 28. Traffic
//!   leaving a bridge for the LAN and the host's own traffic to its endpoints (output,
//!   not forward) are not filtered.
//!
//! `table bridge lanyard` (L2, every frame an endpoint sends into its bridge):
//! - `prerouting` (filter): frames from ports not in `ports` pass untouched. A frame
//!   from a lanyard port must carry that port's MAC (`macs`); IPv4 and ARP must carry
//!   an address the port owns (`addr4`: `port . mac . address`), IPv6 likewise
//!   (`addr6`, which also holds the port's own link-local address, EUI-64 of its
//!   MAC: no other fe80::/10 source passes), except the unspecified source for DAD
//!   neighbour solicitations and MLD reports, ARP probes from `0.0.0.0`, and a DHCP
//!   client's broadcasts from `0.0.0.0` (a DHCP network onto the LAN's bridge). A
//!   Neighbour Advertisement must name as its target an address the port owns
//!   (`na6`, matched on the raw target field, `@th,64,128`), as ARP's sender is
//!   checked: no endpoint can take over another's IPv6 address in a neighbour
//!   cache. A port whose endpoint has subnets routed behind it (`--route`) may also
//!   send from those (`behind4`/`behind6`), ARP included: Linux gives an ARP request
//!   the source address of the packet that needs it, which may be one of them. All
//!   else from a lanyard port is dropped. This hook sees bridged frames with or without
//!   `br_netfilter`, which the inet hooks do not.
//!
//! Inputs are checked when built ([`BridgeNet::new`], [`BridgePort::new`]), so every
//! name and address written into the script is one nft parses as intended.

use crate::model::{Driver, Endpoint, MacAddr, Network, PortMapping, Proto};
use crate::name::{IfName, NetworkName};
use crate::{Error, Result};
use ipnet::IpNet;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv6Addr};

/// Name of both lanyard tables (`inet lanyard`, `bridge lanyard`).
pub const TABLE: &str = "lanyard";

/// The nft families lanyard owns a table in, in script order.
pub const FAMILIES: [&str; 2] = ["inet", "bridge"];

const INET_TABLE: &str = r#"table inet lanyard {
	set bridges { type ifname; }
	set internal { type ifname; }
	set same_bridge { type ifname . ifname; }
	set nets4 { type ifname . ipv4_addr; flags interval; }
	set nets6 { type ifname . ipv6_addr; flags interval; }
	set masq4 { type ipv4_addr; flags interval; }
	set masq6 { type ipv6_addr; flags interval; }
	map snat4 { type ipv4_addr : ipv4_addr; flags interval; }
	map snat6 { type ipv6_addr : ipv6_addr; flags interval; }
	set routed4 { type ifname . ipv4_addr; flags interval; }
	set routed6 { type ifname . ipv6_addr; flags interval; }
	map dnat4 { type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service; }
	map dnat4_any { type inet_proto . inet_service : ipv4_addr . inet_service; }
	map dnat6 { type ipv6_addr . inet_proto . inet_service : ipv6_addr . inet_service; }
	map dnat6_any { type inet_proto . inet_service : ipv6_addr . inet_service; }

	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		fib daddr type local jump published
	}

	chain output {
		type nat hook output priority -100; policy accept;
		fib daddr type local jump published
	}

	chain published {
		dnat ip to ip daddr . meta l4proto . th dport map @dnat4
		dnat ip to meta l4proto . th dport map @dnat4_any
		ip6 daddr != ::1 dnat ip6 to ip6 daddr . meta l4proto . th dport map @dnat6
		ip6 daddr != ::1 dnat ip6 to meta l4proto . th dport map @dnat6_any
	}

	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		ct status dnat oifname . ip saddr @nets4 masquerade
		ct status dnat oifname . ip6 saddr @nets6 masquerade
		oifname @bridges ip saddr 127.0.0.0/8 masquerade
		oifname != @bridges snat ip to ip saddr map @snat4
		oifname != @bridges ip saddr @masq4 masquerade
		oifname != @bridges snat ip6 to ip6 saddr map @snat6
		oifname != @bridges ip6 saddr @masq6 masquerade
	}

	chain forward {
		type filter hook forward priority filter; policy accept;
		iifname . oifname @same_bridge accept
		iifname @internal counter drop
		oifname @internal counter drop
		ct status dnat accept
		iifname != @bridges oifname . ip daddr @routed4 accept
		iifname != @bridges oifname . ip6 daddr @routed6 accept
		oifname @bridges ct state established,related accept
		oifname @bridges counter drop
	}
}
"#;

const BRIDGE_TABLE: &str = r#"table bridge lanyard {
	set ports { type ifname; }
	set macs { type ifname . ether_addr; }
	set addr4 { type ifname . ether_addr . ipv4_addr; }
	set addr6 { type ifname . ether_addr . ipv6_addr; }
	set na6 { typeof iifname . ether saddr . @th,64,128; }
	set behind4 { type ifname . ether_addr . ipv4_addr; flags interval; }
	set behind6 { type ifname . ether_addr . ipv6_addr; flags interval; }

	chain prerouting {
		type filter hook prerouting priority filter; policy accept;
		iifname != @ports accept
		iifname . ether saddr != @macs counter drop
		icmpv6 type nd-neighbor-advert iifname . ether saddr . @th,64,128 != @na6 counter drop
		iifname . ether saddr . ip saddr @addr4 accept
		iifname . arp saddr ether . arp saddr ip @addr4 accept
		iifname . ether saddr . ip6 saddr @addr6 accept
		iifname . ether saddr . ip saddr @behind4 accept
		iifname . arp saddr ether . arp saddr ip @behind4 accept
		iifname . ether saddr . ip6 saddr @behind6 accept
		arp saddr ip 0.0.0.0 accept
		ip saddr 0.0.0.0 ip daddr 255.255.255.255 udp sport 68 udp dport 67 accept
		ip6 saddr :: icmpv6 type { nd-neighbor-solicit, mld2-listener-report } accept
		counter drop
	}
}
"#;

/// A set or map in one of lanyard's tables. Declaration order is script order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NftSet {
    /// `inet bridges`: every lanyard bridge.
    Bridges,
    /// `inet internal`: bridges of internal networks.
    Internal,
    /// `inet same_bridge`: `bridge . bridge`, traffic routed back into its own bridge.
    SameBridge,
    /// `inet nets4`: `bridge . IPv4 subnet`, for hairpin masquerade.
    Nets4,
    /// `inet nets6`: `bridge . IPv6 subnet`.
    Nets6,
    /// `inet masq4`: IPv4 subnets masqueraded on egress.
    Masq4,
    /// `inet masq6`: IPv6 subnets masqueraded on egress.
    Masq6,
    /// `inet snat4`: IPv4 subnet → egress source address.
    Snat4,
    /// `inet snat6`: IPv6 subnet → egress source address.
    Snat6,
    /// `inet routed4`: `bridge . IPv4 subnet` of a routed network (no NAT): the LAN
    /// reaches its endpoints directly.
    Routed4,
    /// `inet routed6`: as `routed4`, IPv6.
    Routed6,
    /// `inet dnat4`: `host address . proto . port : endpoint address . port`.
    Dnat4,
    /// `inet dnat4_any`: `proto . port : endpoint address . port`, any host address.
    Dnat4Any,
    /// `inet dnat6`: as `dnat4`, IPv6.
    Dnat6,
    /// `inet dnat6_any`: as `dnat4_any`, IPv6.
    Dnat6Any,
    /// `bridge ports`: host sides of endpoint veths.
    Ports,
    /// `bridge macs`: `port . MAC` each port may send from.
    Macs,
    /// `bridge addr4`: `port . MAC . IPv4 address` each port may send from.
    Addr4,
    /// `bridge addr6`: `port . MAC . IPv6 address` each port may send from.
    Addr6,
    /// `bridge na6`: `port . MAC . IPv6 address` each port may advertise as a
    /// Neighbour Advertisement's target (the address as a 128-bit number: the set is
    /// keyed by the raw target field).
    Na6,
    /// `bridge behind4`: `port . MAC . IPv4 subnet` routed behind the port's endpoint
    /// (`--route`): sources it forwards for.
    Behind4,
    /// `bridge behind6`: as `behind4`, IPv6.
    Behind6,
}

impl NftSet {
    /// The family of the table holding it: `inet` or `bridge`.
    pub fn family(self) -> &'static str {
        match self {
            NftSet::Ports
            | NftSet::Macs
            | NftSet::Addr4
            | NftSet::Addr6
            | NftSet::Na6
            | NftSet::Behind4
            | NftSet::Behind6 => "bridge",
            _ => "inet",
        }
    }

    /// Its name inside the table.
    pub fn name(self) -> &'static str {
        match self {
            NftSet::Bridges => "bridges",
            NftSet::Internal => "internal",
            NftSet::SameBridge => "same_bridge",
            NftSet::Nets4 => "nets4",
            NftSet::Nets6 => "nets6",
            NftSet::Masq4 => "masq4",
            NftSet::Masq6 => "masq6",
            NftSet::Snat4 => "snat4",
            NftSet::Snat6 => "snat6",
            NftSet::Routed4 => "routed4",
            NftSet::Routed6 => "routed6",
            NftSet::Dnat4 => "dnat4",
            NftSet::Dnat4Any => "dnat4_any",
            NftSet::Dnat6 => "dnat6",
            NftSet::Dnat6Any => "dnat6_any",
            NftSet::Ports => "ports",
            NftSet::Macs => "macs",
            NftSet::Addr4 => "addr4",
            NftSet::Addr6 => "addr6",
            NftSet::Na6 => "na6",
            NftSet::Behind4 => "behind4",
            NftSet::Behind6 => "behind6",
        }
    }
}

/// One element of one set or map, already in nft syntax. Built only by this module,
/// from checked inputs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Element {
    set: NftSet,
    text: String,
}

impl Element {
    fn new(set: NftSet, text: String) -> Self {
        Element { set, text }
    }
    /// The set it belongs to.
    pub fn set(&self) -> NftSet {
        self.set
    }
    /// The element as nft writes it (`192.0.2.1 . tcp . 8080 : 10.88.0.2 . 80`).
    pub fn text(&self) -> &str {
        &self.text
    }
    /// The key: the text before ` : ` for maps, the whole text for sets.
    pub fn key(&self) -> &str {
        self.text.split_once(" : ").map_or(&self.text, |(k, _)| k)
    }
}

/// What [`element_ops`] does with elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// `add element`: succeeds if the same element is already there; fails if a map
    /// already holds the key with other data (a port published twice).
    Add,
    /// `add element` then `delete element` in one transaction: removes the element and
    /// succeeds also when it is already gone (idempotent detach). Fails if a map holds
    /// the key with other data, so another endpoint's mapping is never removed.
    Remove,
}

/// A bridge network as the firewall sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeNet {
    name: NetworkName,
    bridge: IfName,
    subnets: Vec<IpNet>,
    internal: bool,
    snat_source: Option<IpAddr>,
    /// Routed (no NAT) for IPv4, IPv6.
    routed: (bool, bool),
}

/// One endpoint of a bridge network: the host side of its veth, the MAC and addresses
/// it may send from, and its published ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgePort {
    host_ifname: IfName,
    mac: MacAddr,
    addresses: Vec<IpAddr>,
    ports: Vec<PortMapping>,
    /// Subnets routed behind the endpoint: it may send from them too.
    behind: Vec<IpNet>,
}

/// Everything [`ruleset`] renders.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FirewallInput {
    /// Bridge networks.
    pub networks: Vec<BridgeNet>,
    /// Endpoints of bridge networks.
    pub endpoints: Vec<BridgePort>,
}

/// Refuses interface names nft would read differently from the kernel: `"` and `\`
/// cannot be quoted, a trailing `*` is a wildcard.
fn check_nft_ifname(field: &str, name: &IfName) -> Result<()> {
    let ok = |c: char| c.is_ascii_alphanumeric() || "-_.@+".contains(c);
    match name.as_str().chars().find(|c| !ok(*c)) {
        None => Ok(()),
        Some(bad) => Err(Error::invalid(
            field,
            name,
            format!("character {bad:?} cannot be written into nft rules; rename the interface using letters, digits and -_.@+"),
        )),
    }
}

fn quoted(name: &IfName) -> String {
    format!("\"{name}\"")
}

impl BridgeNet {
    /// Checks and builds one network. `snat_source` must have the family of one of
    /// `subnets`; it replaces masquerade for subnets of that family only.
    pub fn new(
        name: NetworkName,
        bridge: IfName,
        subnets: Vec<IpNet>,
        internal: bool,
        snat_source: Option<IpAddr>,
    ) -> Result<Self> {
        check_nft_ifname("-o bridge_name", &bridge)?;
        if let Some(s) = snat_source {
            if !subnets.iter().any(|n| n.addr().is_ipv4() == s.is_ipv4()) {
                let fam = if s.is_ipv4() { "IPv4" } else { "IPv6" };
                return Err(Error::invalid(
                    "-o snat_source",
                    s,
                    format!("network {name} has no {fam} subnet to translate; give an address of a family it has"),
                ));
            }
        }
        let subnets = subnets.into_iter().map(|n| n.trunc()).collect();
        Ok(BridgeNet {
            name,
            bridge,
            subnets,
            internal,
            snat_source,
            routed: (false, false),
        })
    }

    /// Makes the network routed for IPv4 and/or IPv6 (`-o gateway_mode=routed`): its
    /// subnets of that family are not NATed, and the LAN reaches its endpoints by
    /// their own addresses (no other lanyard bridge does).
    pub fn with_routed(mut self, v4: bool, v6: bool) -> Self {
        self.routed = (v4, v6);
        self
    }

    /// The firewall view of a stored bridge network.
    pub fn from_network(net: &Network) -> Result<Self> {
        let bridge = match (net.driver, &net.bridge) {
            (Driver::Bridge, Some(b)) => b.clone(),
            _ => {
                return Err(Error::invalid(
                    "network",
                    &net.name,
                    format!(
                        "is a {} network without a bridge; only bridge networks are firewalled",
                        net.driver
                    ),
                ))
            }
        };
        let subnets = net.subnets.iter().map(|s| s.subnet).collect();
        Self::new(
            net.name.clone(),
            bridge,
            subnets,
            net.internal,
            net.snat_source,
        )
        .map(|b| b.with_routed(net.routed_v4, net.routed_v6))
    }

    /// The network's name.
    pub fn name(&self) -> &NetworkName {
        &self.name
    }

    /// The Linux bridge.
    pub fn bridge(&self) -> &IfName {
        &self.bridge
    }

    /// Its elements: the bridge in `bridges`, `same_bridge` (and `internal`), each
    /// subnet in `nets4`/`nets6` and, unless internal, in `snat4`/`snat6` or
    /// `masq4`/`masq6`.
    pub fn elements(&self) -> Vec<Element> {
        let br = quoted(&self.bridge);
        let mut out = vec![
            Element::new(NftSet::Bridges, br.clone()),
            Element::new(NftSet::SameBridge, format!("{br} . {br}")),
        ];
        if self.internal {
            out.push(Element::new(NftSet::Internal, br.clone()));
        }
        for net in &self.subnets {
            let v4 = net.addr().is_ipv4();
            let nets = if v4 { NftSet::Nets4 } else { NftSet::Nets6 };
            out.push(Element::new(nets, format!("{br} . {net}")));
            if self.internal {
                continue;
            }
            if (v4 && self.routed.0) || (!v4 && self.routed.1) {
                let set = if v4 { NftSet::Routed4 } else { NftSet::Routed6 };
                out.push(Element::new(set, format!("{br} . {net}")));
                continue;
            }
            match self.snat_source.filter(|s| s.is_ipv4() == v4) {
                Some(src) => {
                    let set = if v4 { NftSet::Snat4 } else { NftSet::Snat6 };
                    out.push(Element::new(set, format!("{net} : {src}")));
                }
                None => {
                    let set = if v4 { NftSet::Masq4 } else { NftSet::Masq6 };
                    out.push(Element::new(set, net.to_string()));
                }
            }
        }
        out
    }
}

/// The link-local address the kernel gives an interface with MAC `mac` (modified
/// EUI-64, RFC 4291 appendix A: the default `addr_gen_mode`): the only fe80::/10
/// source a bridge endpoint may send from.
pub fn link_local_of(mac: MacAddr) -> Ipv6Addr {
    let m = mac.0;
    Ipv6Addr::from([
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        m[0] ^ 0x02,
        m[1],
        m[2],
        0xff,
        0xfe,
        m[3],
        m[4],
        m[5],
    ])
}

/// The DNAT elements of one mapping to an endpoint owning `addresses` (the first
/// address of each family is the target). A mapping without a host address gets one
/// element per family the endpoint has; one with a host address, one element of that
/// family. Refuses a host address of a family the endpoint lacks, and `::1`.
pub fn mapping_elements(addresses: &[IpAddr], m: &PortMapping) -> Result<Vec<Element>> {
    let proto = m.proto.as_str();
    let target = |v4: bool| addresses.iter().find(|a| a.is_ipv4() == v4);
    let elem = |set, key: String, to: &IpAddr| {
        Element::new(
            set,
            format!(
                "{key}{proto} . {} : {to} . {}",
                m.host_port, m.container_port
            ),
        )
    };
    match m.host_ip {
        None => {
            let out: Vec<Element> = [(true, NftSet::Dnat4Any), (false, NftSet::Dnat6Any)]
                .into_iter()
                .filter_map(|(v4, set)| target(v4).map(|to| elem(set, String::new(), to)))
                .collect();
            if out.is_empty() {
                return Err(Error::invalid(
                    "--publish",
                    m,
                    "the endpoint has no address to forward to",
                ));
            }
            Ok(out)
        }
        Some(ip) if ip.is_loopback() && ip.is_ipv6() => Err(Error::invalid(
            "--publish",
            m,
            "IPv6 loopback cannot be forwarded to an endpoint; publish on another address",
        )),
        Some(ip) => {
            let set = if ip.is_ipv4() {
                NftSet::Dnat4
            } else {
                NftSet::Dnat6
            };
            let Some(to) = target(ip.is_ipv4()) else {
                let fam = if ip.is_ipv4() { "IPv4" } else { "IPv6" };
                return Err(Error::invalid(
                    "--publish",
                    m,
                    format!("the endpoint has no {fam} address; publish on an address of a family it has"),
                ));
            };
            Ok(vec![elem(set, format!("{ip} . "), to)])
        }
    }
}

impl BridgePort {
    /// Checks and builds one endpoint: the host ifname must be writable into nft
    /// rules and every mapping must have a target address ([`mapping_elements`]).
    pub fn new(
        host_ifname: IfName,
        mac: MacAddr,
        addresses: Vec<IpAddr>,
        ports: Vec<PortMapping>,
    ) -> Result<Self> {
        check_nft_ifname("host interface", &host_ifname)?;
        for m in &ports {
            mapping_elements(&addresses, m)?;
        }
        Ok(BridgePort {
            host_ifname,
            mac,
            addresses,
            ports,
            behind: vec![],
        })
    }

    /// The firewall view of a stored bridge endpoint. `mac` is the MAC its interface
    /// really has (`Endpoint::mac` is only set when the user fixed one).
    pub fn from_endpoint(ep: &Endpoint, mac: MacAddr) -> Result<Self> {
        let Some(host) = &ep.host_ifname else {
            return Err(Error::invalid(
                "endpoint",
                ep.display_name(),
                "has no host-side veth; only bridge endpoints are firewalled",
            ));
        };
        let addresses = ep.addresses.iter().map(|a| a.addr()).collect();
        Self::new(host.clone(), mac, addresses, ep.ports.clone()).map(|mut p| {
            p.behind = ep.routes.clone();
            p
        })
    }

    /// Host side of the veth pair.
    pub fn host_ifname(&self) -> &IfName {
        &self.host_ifname
    }

    /// The MAC it may send from.
    pub fn mac(&self) -> MacAddr {
        self.mac
    }

    /// The addresses it may send from.
    pub fn addresses(&self) -> &[IpAddr] {
        &self.addresses
    }

    /// Published ports.
    pub fn ports(&self) -> &[PortMapping] {
        &self.ports
    }

    /// Its anti-spoof elements: the port, `port . MAC`, `port . MAC . address` per
    /// address and, for its IPv6 addresses and its link-local one
    /// ([`link_local_of`]), `port . MAC . target` in `na6`.
    pub fn guard_elements(&self) -> Vec<Element> {
        let port = quoted(&self.host_ifname);
        let mac = self.mac;
        let mut out = vec![
            Element::new(NftSet::Ports, port.clone()),
            Element::new(NftSet::Macs, format!("{port} . {mac}")),
        ];
        let link_local = IpAddr::V6(link_local_of(mac));
        let v6 = self.addresses.iter().filter(|a| a.is_ipv6());
        for a in self.addresses.iter().filter(|a| a.is_ipv4()) {
            out.push(Element::new(NftSet::Addr4, format!("{port} . {mac} . {a}")));
        }
        for a in std::iter::once(&link_local).chain(v6.clone()) {
            out.push(Element::new(NftSet::Addr6, format!("{port} . {mac} . {a}")));
        }
        for net in &self.behind {
            let set = if net.addr().is_ipv4() {
                NftSet::Behind4
            } else {
                NftSet::Behind6
            };
            out.push(Element::new(set, format!("{port} . {mac} . {net}")));
        }
        for a in std::iter::once(&link_local).chain(v6) {
            if let IpAddr::V6(a) = a {
                let raw = u128::from(*a);
                out.push(Element::new(
                    NftSet::Na6,
                    format!("{port} . {mac} . 0x{raw:032x}"),
                ));
            }
        }
        out
    }

    /// Anti-spoof elements followed by the DNAT elements of every published port.
    pub fn elements(&self) -> Vec<Element> {
        let mut out = self.guard_elements();
        out.extend(self.port_elements());
        out
    }

    /// The elements of its published ports only (`publish`/`unpublish` on a wired
    /// endpoint: its guard stays).
    pub fn port_elements(&self) -> Vec<Element> {
        let mut out = vec![];
        for m in &self.ports {
            // Checked in `new`.
            out.extend(mapping_elements(&self.addresses, m).unwrap_or_default());
        }
        out
    }
}

impl FirewallInput {
    /// Every element of every network and endpoint, in input order.
    pub fn elements(&self) -> Vec<Element> {
        let nets = self.networks.iter().flat_map(BridgeNet::elements);
        nets.chain(self.endpoints.iter().flat_map(BridgePort::elements))
            .collect()
    }

    /// Finds what would make the script fail or shadow a mapping: a bridge or port
    /// given twice, a host port published twice, or a port published both on one
    /// address and on all of them. [`ruleset`] does not call this: nft rejects such a
    /// script as a whole, leaving the old tables in place, but without this message.
    pub fn validate(&self) -> Result<()> {
        let mut seen: HashMap<(NftSet, String), String> = HashMap::new();
        let mut note = |e: &Element, owner: String| -> Result<()> {
            match seen.insert((e.set(), e.key().to_string()), owner.clone()) {
                Some(prev) => Err(Error::Conflict(format!("{owner} clashes with {prev}"))),
                None => Ok(()),
            }
        };
        for n in &self.networks {
            note(
                &Element::new(NftSet::Bridges, quoted(&n.bridge)),
                format!("bridge {} of network {}", n.bridge, n.name),
            )?;
        }
        // Wildcard mappings, by (is IPv4, proto, host port), to catch specific ones on the same port.
        let mut any: HashMap<(bool, Proto, u16), String> = HashMap::new();
        let mut specific: Vec<(bool, Proto, u16, String)> = vec![];
        for p in &self.endpoints {
            note(
                &Element::new(NftSet::Ports, quoted(&p.host_ifname)),
                format!("endpoint port {}", p.host_ifname),
            )?;
            for m in &p.ports {
                let owner = format!("published port {m} of {}", p.host_ifname);
                for e in mapping_elements(&p.addresses, m)? {
                    note(&e, format!("{owner}; pick another host port"))?;
                }
                match m.host_ip {
                    None => {
                        for v4 in [true, false] {
                            any.insert((v4, m.proto, m.host_port), owner.clone());
                        }
                    }
                    Some(ip) => specific.push((ip.is_ipv4(), m.proto, m.host_port, owner)),
                }
            }
        }
        for (v4, proto, port, owner) in specific {
            if let Some(prev) = any.get(&(v4, proto, port)) {
                return Err(Error::Conflict(format!("{owner} clashes with {prev}, which takes every host address; pick another host port")));
            }
        }
        Ok(())
    }
}

/// Renders `elements` as `add element` commands, one per set, in [`NftSet`] order.
fn write_elements(out: &mut String, change: Change, elements: &[Element]) {
    let mut by_set: BTreeMap<NftSet, Vec<&str>> = BTreeMap::new();
    for e in elements {
        by_set.entry(e.set).or_default().push(&e.text);
    }
    for (set, texts) in by_set {
        let body = texts.join(", ");
        let (fam, name) = (set.family(), set.name());
        // Writing to a String cannot fail.
        let _ = writeln!(out, "add element {fam} {TABLE} {name} {{ {body} }}");
        if change == Change::Remove {
            let _ = writeln!(out, "delete element {fam} {TABLE} {name} {{ {body} }}");
        }
    }
}

/// The script that replaces lanyard's two tables, and only them, with the rules
/// described in the module docs and the elements of `input`, in one transaction.
///
/// Structure: `table inet lanyard` / `delete table inet lanyard` / the full inet table
/// with empty sets; the same for `bridge`; then one `add element` per non-empty set.
pub fn ruleset(input: &FirewallInput) -> String {
    let mut out = String::new();
    for (fam, body) in FAMILIES.iter().zip([INET_TABLE, BRIDGE_TABLE]) {
        let _ = writeln!(out, "table {fam} {TABLE}");
        let _ = writeln!(out, "delete table {fam} {TABLE}");
        out.push_str(body);
    }
    write_elements(&mut out, Change::Add, &input.elements());
    out
}

/// The script that applies `change` to `elements` alone, in one transaction: e.g.
/// publishing a port is `element_ops(Change::Add, &mapping_elements(&addrs, &m)?)`,
/// one line per touched set. Empty `elements` give an empty script.
pub fn element_ops(change: Change, elements: &[Element]) -> String {
    let mut out = String::new();
    write_elements(&mut out, change, elements);
    out
}

/// The script that deletes lanyard's tables and nothing else; succeeds when they are
/// already gone.
pub fn teardown() -> String {
    let mut out = String::new();
    for fam in FAMILIES {
        let _ = writeln!(out, "table {fam} {TABLE}");
        let _ = writeln!(out, "delete table {fam} {TABLE}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{bridge_net as net, bridge_port};

    fn ifname(s: &str) -> IfName {
        IfName::new(s).unwrap()
    }
    fn mac(s: &str) -> MacAddr {
        MacAddr::parse_for("mac", s).unwrap()
    }
    fn ips(v: &[&str]) -> Vec<IpAddr> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }
    fn publish(spec: &str) -> PortMapping {
        PortMapping::parse_spec(spec).unwrap().remove(0)
    }
    fn texts(v: &[Element]) -> Vec<String> {
        v.iter()
            .map(|e| format!("{} {}", e.set().name(), e.text()))
            .collect()
    }
    fn sample() -> FirewallInput {
        FirewallInput {
            networks: vec![
                net(
                    "web",
                    "lyb-web",
                    &["10.88.1.0/24", "2001:db8:1::/64"],
                    false,
                    None,
                ),
                net("db", "lyb-db", &["10.88.2.0/24"], true, None),
            ],
            endpoints: vec![bridge_port(
                "lyv-web1",
                "02:42:0a:58:01:02",
                &["10.88.1.2", "2001:db8:1::2"],
                &["8080:80", "192.0.2.1:5353:53/udp"],
            )],
        }
    }

    #[test]
    fn ruleset_replaces_both_lanyard_tables_in_one_script() {
        let s = ruleset(&sample());
        assert!(
            s.starts_with("table inet lanyard\ndelete table inet lanyard\ntable inet lanyard {\n"),
            "{s}"
        );
        assert!(
            s.contains(
                "}\ntable bridge lanyard\ndelete table bridge lanyard\ntable bridge lanyard {\n"
            ),
            "{s}"
        );
        // Only lanyard's tables are named; nothing flushes the ruleset or other tables.
        for line in s.lines().filter(|l| l.contains("table ")) {
            assert!(
                line.ends_with("table inet lanyard")
                    || line.ends_with("table bridge lanyard")
                    || line.ends_with("lanyard {"),
                "{line}"
            );
        }
        assert!(!s.contains("flush"), "{s}");
        // Elements come after both table definitions, one command per set.
        let first_elem = s.find("add element").unwrap();
        assert!(first_elem > s.find("table bridge lanyard {").unwrap());
        assert_eq!(s.matches("add element inet lanyard dnat4_any ").count(), 1);
    }

    #[test]
    fn ruleset_holds_every_element_of_the_sample() {
        let s = ruleset(&sample());
        for want in [
            r#"add element inet lanyard bridges { "lyb-web", "lyb-db" }"#,
            r#"add element inet lanyard internal { "lyb-db" }"#,
            r#"add element inet lanyard same_bridge { "lyb-web" . "lyb-web", "lyb-db" . "lyb-db" }"#,
            r#"add element inet lanyard nets4 { "lyb-web" . 10.88.1.0/24, "lyb-db" . 10.88.2.0/24 }"#,
            r#"add element inet lanyard nets6 { "lyb-web" . 2001:db8:1::/64 }"#,
            "add element inet lanyard masq4 { 10.88.1.0/24 }",
            "add element inet lanyard masq6 { 2001:db8:1::/64 }",
            "add element inet lanyard dnat4 { 192.0.2.1 . udp . 5353 : 10.88.1.2 . 53 }",
            "add element inet lanyard dnat4_any { tcp . 8080 : 10.88.1.2 . 80 }",
            "add element inet lanyard dnat6_any { tcp . 8080 : 2001:db8:1::2 . 80 }",
            r#"add element bridge lanyard ports { "lyv-web1" }"#,
            r#"add element bridge lanyard macs { "lyv-web1" . 02:42:0a:58:01:02 }"#,
            r#"add element bridge lanyard addr4 { "lyv-web1" . 02:42:0a:58:01:02 . 10.88.1.2 }"#,
            r#"add element bridge lanyard addr6 { "lyv-web1" . 02:42:0a:58:01:02 . fe80::42:aff:fe58:102, "lyv-web1" . 02:42:0a:58:01:02 . 2001:db8:1::2 }"#,
            r#"add element bridge lanyard na6 { "lyv-web1" . 02:42:0a:58:01:02 . 0xfe8000000000000000420afffe580102, "lyv-web1" . 02:42:0a:58:01:02 . 0x20010db8000100000000000000000002 }"#,
        ] {
            assert!(s.contains(want), "missing {want}\n{s}");
        }
        // The internal network is never NATed out; no empty set gets a command.
        let masq = s
            .lines()
            .filter(|l| l.contains(" masq4 ") || l.contains(" snat4 "));
        assert!(masq.into_iter().all(|l| !l.contains("10.88.2.0/24")), "{s}");
        assert!(!s.contains("add element inet lanyard snat4"), "{s}");
        assert!(!s.contains("add element inet lanyard dnat6 "), "{s}");
    }

    #[test]
    fn empty_input_is_just_the_two_tables() {
        let s = ruleset(&FirewallInput::default());
        assert!(!s.contains("add element"), "{s}");
        assert_eq!(s.matches("delete table").count(), 2);
    }

    #[test]
    fn rules_catch_what_the_docs_promise() {
        let s = ruleset(&FirewallInput::default());
        for rule in [
            "fib daddr type local jump published",
            "dnat ip to ip daddr . meta l4proto . th dport map @dnat4",
            "ct status dnat oifname . ip saddr @nets4 masquerade",
            "oifname != @bridges ip saddr @masq4 masquerade",
            "oifname != @bridges snat ip to ip saddr map @snat4",
            "iifname . oifname @same_bridge accept",
            "oifname @bridges ct state established,related accept",
            "oifname @bridges counter drop",
            "iifname . ether saddr != @macs counter drop",
            "iifname . ether saddr . ip saddr @addr4 accept",
        ] {
            assert!(s.contains(rule), "missing {rule}\n{s}");
        }
        // Internal drops come before the DNAT accept, isolation after it.
        let pos = |r: &str| s.find(r).unwrap();
        assert!(pos("iifname @internal counter drop") < pos("ct status dnat accept"));
        assert!(pos("ct status dnat accept") < pos("oifname @bridges counter drop"));
        assert!(
            pos("oifname @bridges ct state established,related accept")
                < pos("oifname @bridges counter drop")
        );
    }

    #[test]
    fn snat_source_replaces_masquerade_for_its_family_only() {
        let n = net(
            "out",
            "lyb-out",
            &["10.88.3.0/24", "2001:db8:3::/64"],
            false,
            Some("198.51.100.7"),
        );
        let t = texts(&n.elements());
        assert!(
            t.contains(&"snat4 10.88.3.0/24 : 198.51.100.7".to_string()),
            "{t:?}"
        );
        assert!(t.contains(&"masq6 2001:db8:3::/64".to_string()), "{t:?}");
        assert!(!t.iter().any(|e| e.starts_with("masq4")), "{t:?}");
    }

    #[test]
    fn a_routed_family_is_neither_masqueraded_nor_closed_to_the_lan() {
        let n = net(
            "direct",
            "lyb-direct",
            &["10.88.5.0/24", "2001:db8:5::/64"],
            false,
            None,
        )
        .with_routed(true, false);
        let t = texts(&n.elements());
        assert!(
            t.contains(&"routed4 \"lyb-direct\" . 10.88.5.0/24".to_string()),
            "{t:?}"
        );
        assert!(!t.iter().any(|e| e.starts_with("masq4")), "{t:?}");
        assert!(t.contains(&"masq6 2001:db8:5::/64".to_string()), "{t:?}");
        assert!(!t.iter().any(|e| e.starts_with("routed6")), "{t:?}");
        // Internal wins: no routed elements.
        let i = net("i", "lyb-i", &["10.88.6.0/24"], true, None).with_routed(true, true);
        assert!(!texts(&i.elements()).iter().any(|e| e.starts_with("routed")));
        // The LAN's way in comes after the internal drops and before the bridge drop.
        let s = ruleset(&FirewallInput::default());
        let pos = |r: &str| s.find(r).unwrap();
        assert!(pos("oifname @internal counter drop") < pos("@routed4 accept"));
        assert!(pos("@routed6 accept") < pos("oifname @bridges counter drop"));
    }

    #[test]
    fn snat_source_of_a_missing_family_is_refused() {
        let e = BridgeNet::new(
            NetworkName::new("v4only").unwrap(),
            ifname("lyb-v4"),
            vec!["10.88.4.0/24".parse().unwrap()],
            false,
            Some("2001:db8::7".parse().unwrap()),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("-o snat_source") && e.to_string().contains("no IPv6 subnet"),
            "{e}"
        );
    }

    #[test]
    fn internal_network_has_no_egress_elements() {
        let n = net(
            "sealed",
            "lyb-sealed",
            &["10.88.5.0/24"],
            true,
            Some("198.51.100.7"),
        );
        let t = texts(&n.elements());
        assert_eq!(
            t,
            [
                r#"bridges "lyb-sealed""#,
                r#"same_bridge "lyb-sealed" . "lyb-sealed""#,
                r#"internal "lyb-sealed""#,
                r#"nets4 "lyb-sealed" . 10.88.5.0/24"#,
            ]
        );
    }

    #[test]
    fn one_published_port_is_one_element_per_family() {
        let dual = ips(&["10.88.1.2", "2001:db8:1::2"]);
        assert_eq!(
            texts(&mapping_elements(&dual, &publish("8080:80")).unwrap()),
            [
                "dnat4_any tcp . 8080 : 10.88.1.2 . 80",
                "dnat6_any tcp . 8080 : 2001:db8:1::2 . 80"
            ]
        );
        assert_eq!(
            texts(&mapping_elements(&dual, &publish("[2001:db8::1]:443:8443")).unwrap()),
            ["dnat6 2001:db8::1 . tcp . 443 : 2001:db8:1::2 . 8443"]
        );
        let v4 = ips(&["10.88.1.2"]);
        assert_eq!(
            texts(&mapping_elements(&v4, &publish("53:53/udp")).unwrap()),
            ["dnat4_any udp . 53 : 10.88.1.2 . 53"]
        );
    }

    #[test]
    fn publishing_on_a_family_the_endpoint_lacks_is_refused() {
        let e =
            mapping_elements(&ips(&["10.88.1.2"]), &publish("[2001:db8::1]:443:443")).unwrap_err();
        assert!(
            e.to_string().contains("--publish") && e.to_string().contains("no IPv6 address"),
            "{e}"
        );
        let e = mapping_elements(&ips(&["2001:db8:1::2"]), &publish("[::1]:443:443")).unwrap_err();
        assert!(e.to_string().contains("IPv6 loopback"), "{e}");
        assert!(mapping_elements(&[], &publish("80:80")).is_err());
        assert!(BridgePort::new(
            ifname("lyv-x"),
            mac("02:00:00:00:00:01"),
            ips(&["10.88.1.2"]),
            vec![publish("[2001:db8::1]:1:1")]
        )
        .is_err());
    }

    #[test]
    fn adding_a_mapping_is_one_small_script() {
        let els = mapping_elements(&ips(&["10.88.1.2"]), &publish("192.0.2.1:8080:80")).unwrap();
        assert_eq!(
            element_ops(Change::Add, &els),
            "add element inet lanyard dnat4 { 192.0.2.1 . tcp . 8080 : 10.88.1.2 . 80 }\n"
        );
    }

    #[test]
    fn removing_a_mapping_adds_then_deletes_so_it_is_idempotent() {
        let els = mapping_elements(&ips(&["10.88.1.2"]), &publish("8080:80/udp")).unwrap();
        assert_eq!(
            element_ops(Change::Remove, &els),
            "add element inet lanyard dnat4_any { udp . 8080 : 10.88.1.2 . 80 }\n\
             delete element inet lanyard dnat4_any { udp . 8080 : 10.88.1.2 . 80 }\n"
        );
        assert_eq!(element_ops(Change::Remove, &[]), "");
    }

    #[test]
    fn attaching_an_endpoint_touches_each_guard_set_once() {
        let p = bridge_port("lyv-a1", "02:00:00:00:00:a1", &["10.88.1.5"], &[]);
        assert_eq!(
            element_ops(Change::Add, &p.elements()),
            "add element bridge lanyard ports { \"lyv-a1\" }\n\
             add element bridge lanyard macs { \"lyv-a1\" . 02:00:00:00:00:a1 }\n\
             add element bridge lanyard addr4 { \"lyv-a1\" . 02:00:00:00:00:a1 . 10.88.1.5 }\n\
             add element bridge lanyard addr6 { \"lyv-a1\" . 02:00:00:00:00:a1 . fe80::ff:fe00:a1 }\n\
             add element bridge lanyard na6 { \"lyv-a1\" . 02:00:00:00:00:a1 . 0xfe80000000000000000000fffe0000a1 }\n"
        );
    }

    #[test]
    fn the_link_local_address_is_the_macs_eui64() {
        assert_eq!(
            link_local_of(mac("02:42:0a:58:01:02")),
            "fe80::42:aff:fe58:102".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(
            link_local_of(mac("00:16:3e:aa:bb:cc")),
            "fe80::216:3eff:feaa:bbcc".parse::<Ipv6Addr>().unwrap()
        );
    }

    #[test]
    fn neighbour_advertisements_are_checked_and_no_link_local_source_passes_unchecked() {
        let s = ruleset(&FirewallInput::default());
        let pos = |r: &str| s.find(r).unwrap_or_else(|| panic!("missing {r}\n{s}"));
        let na = "icmpv6 type nd-neighbor-advert iifname . ether saddr . @th,64,128 != @na6 counter drop";
        // Before any accept of the port's own source address.
        assert!(pos(na) < pos("iifname . ether saddr . ip6 saddr @addr6 accept"));
        assert!(!s.contains("fe80::/10"), "{s}");
    }

    #[test]
    fn names_nft_cannot_quote_are_refused_at_the_edge() {
        for bad in ["a\"b", "a\\b", "ly*", "a'b", "é", "a#b", "a$b"] {
            let name = ifname(bad);
            let e = BridgePort::new(name.clone(), mac("02:00:00:00:00:01"), vec![], vec![])
                .unwrap_err();
            assert!(e.to_string().contains("nft rules"), "{bad}: {e}");
            let e = BridgeNet::new(NetworkName::new("n").unwrap(), name, vec![], false, None)
                .unwrap_err();
            assert!(e.to_string().contains("-o bridge_name"), "{bad}: {e}");
        }
    }

    /// `sample()` and a second endpoint, lyv-web2 (10.88.1.3), publishing `spec`.
    fn sample_and_web2_publishing(spec: &str) -> FirewallInput {
        let mut input = sample();
        input.endpoints.push(bridge_port(
            "lyv-web2",
            "02:42:0a:58:01:03",
            &["10.88.1.3"],
            &[spec],
        ));
        input
    }

    #[test]
    fn validate_names_both_sides_of_a_port_clash() {
        let e = sample_and_web2_publishing("8080:8000")
            .validate()
            .unwrap_err();
        assert!(matches!(e, Error::Conflict(_)), "{e}");
        assert!(
            e.to_string().contains("lyv-web2") && e.to_string().contains("lyv-web1"),
            "{e}"
        );
        assert!(sample().validate().is_ok());
    }

    #[test]
    fn validate_catches_a_specific_address_shadowed_by_all_addresses() {
        let e = sample_and_web2_publishing("192.0.2.1:8080:80")
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("every host address"), "{e}");
    }

    #[test]
    fn validate_catches_a_bridge_given_twice() {
        let mut input = sample();
        input
            .networks
            .push(net("web2", "lyb-web", &["10.88.9.0/24"], false, None));
        assert!(input
            .validate()
            .unwrap_err()
            .to_string()
            .contains("lyb-web"));
    }

    #[test]
    fn teardown_deletes_only_lanyard_tables() {
        assert_eq!(
            teardown(),
            "table inet lanyard\ndelete table inet lanyard\ntable bridge lanyard\ndelete table bridge lanyard\n"
        );
    }
}
