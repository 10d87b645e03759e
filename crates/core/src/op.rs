//! Kernel steps ([`Op`]) the planner emits and the kernel layer applies. Every step
//! that creates something knows its inverse, so a failed attach rolls back and an
//! interrupted one can be finished by `gc`.

use crate::model::{IpvlanMode, MacAddr, MacvlanMode};
use crate::name::IfName;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

/// Which network namespace an op acts in.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Netns {
    /// The namespace lanyard runs in ("the host").
    Host,
    /// A namespace by path (`/proc/PID/ns/net`, `/run/netns/NAME`).
    Path(PathBuf),
}

impl fmt::Display for Netns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Netns::Host => f.write_str("host"),
            Netns::Path(p) => write!(f, "{}", p.display()),
        }
    }
}

/// A route as lanyard installs it (main table, protocol static).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RouteSpec {
    /// Destination.
    pub dst: IpNet,
    /// Next hop.
    pub via: Option<IpAddr>,
    /// Output interface.
    pub dev: Option<IfName>,
    /// Preferred source address.
    pub src: Option<IpAddr>,
    /// Metric (priority).
    pub metric: Option<u32>,
}

impl fmt::Display for RouteSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.dst)?;
        if let Some(v) = self.via {
            write!(f, " via {v}")?;
        }
        if let Some(d) = &self.dev {
            write!(f, " dev {d}")?;
        }
        if let Some(s) = self.src {
            write!(f, " src {s}")?;
        }
        if let Some(m) = self.metric {
            write!(f, " metric {m}")?;
        }
        Ok(())
    }
}

/// One kernel step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// `ip link add NAME type bridge [mtu M]` (and set it up).
    CreateBridge {
        /// Bridge name.
        name: IfName,
        /// MTU.
        mtu: Option<u32>,
    },
    /// `ip link add HOST type veth peer name PEER netns NS`, host side enslaved to
    /// `master` and set up; the peer is left down (the kernel refuses it up before the
    /// pair is joined): a `SetUp` follows.
    CreateVeth {
        /// Host-side name.
        host: IfName,
        /// Name inside the namespace.
        peer: IfName,
        /// Where the peer is created.
        peer_netns: Netns,
        /// MTU for both ends.
        mtu: Option<u32>,
        /// Bridge to enslave the host side to.
        master: Option<IfName>,
        /// MAC of the peer.
        peer_mac: Option<MacAddr>,
        /// MAC of the host end (a bridge takes the lowest MAC of its ports unless
        /// one was set: a high one never changes the bridge's).
        host_mac: Option<MacAddr>,
    },
    /// `ip link add NAME link PARENT netns NS type macvlan mode M` (and set it up) —
    /// created directly in the target namespace (IFLA_NET_NS_FD), which avoids a
    /// costly move.
    CreateMacvlan {
        /// Namespace to create it in.
        netns: Netns,
        /// Final name.
        name: IfName,
        /// Parent, in the host namespace.
        parent: IfName,
        /// Mode.
        mode: MacvlanMode,
        /// Fixed MAC.
        mac: Option<MacAddr>,
        /// MTU.
        mtu: Option<u32>,
    },
    /// `ip link add NAME link PARENT netns NS type ipvlan mode M` (and set it up).
    CreateIpvlan {
        /// Namespace to create it in.
        netns: Netns,
        /// Final name.
        name: IfName,
        /// Parent, in the host namespace.
        parent: IfName,
        /// Mode.
        mode: IpvlanMode,
        /// MTU.
        mtu: Option<u32>,
    },
    /// `ip link add NAME link PARENT type vlan id ID` (and set it up).
    CreateVlan {
        /// e.g. `eth0.10`.
        name: IfName,
        /// e.g. `eth0`.
        parent: IfName,
        /// 1..=4094.
        id: u16,
    },
    /// `ip link del NAME` (missing link is not an error).
    DeleteLink {
        /// Namespace.
        netns: Netns,
        /// Link.
        name: IfName,
    },
    /// Detach fast path: rename to `tombstone` and delete `addresses` from it (no
    /// set-down: that alone costs the kernel 12–15 ms). The name and those addresses
    /// are free at once; the tombstone is deleted later, off the caller's path, with
    /// whatever else it carries (its IPv6 link-local address).
    RetireLink {
        /// Namespace.
        netns: Netns,
        /// Current name.
        name: IfName,
        /// New name (`lyx-…`).
        tombstone: IfName,
        /// Addresses to free at once (the endpoint's own).
        addresses: Vec<IpNet>,
    },
    /// `ip link set NAME up`.
    SetUp {
        /// Namespace.
        netns: Netns,
        /// Link.
        name: IfName,
    },
    /// `ip addr add ADDR dev LINK [nodad]`.
    AddAddress {
        /// Namespace.
        netns: Netns,
        /// Link.
        link: IfName,
        /// Address with prefix length.
        addr: IpNet,
        /// Skip IPv6 duplicate address detection; also `noprefixroute` when the
        /// prefix is a host prefix.
        nodad: bool,
    },
    /// `ip addr del ADDR dev LINK`.
    DelAddress {
        /// Namespace.
        netns: Netns,
        /// Link.
        link: IfName,
        /// Address with prefix length.
        addr: IpNet,
    },
    /// `ip route replace ROUTE`.
    AddRoute {
        /// Namespace.
        netns: Netns,
        /// The route.
        route: RouteSpec,
    },
    /// `ip route del ROUTE` (missing route is not an error).
    DelRoute {
        /// Namespace.
        netns: Netns,
        /// The route.
        route: RouteSpec,
    },
    /// One nftables transaction in the host namespace (lanyard's own tables only),
    /// e.g. the elements of one endpoint. `undo` is the script that reverses it.
    Nft {
        /// nft script, applied atomically.
        script: String,
        /// Reverse script, if any.
        undo: Option<String>,
    },
    /// `sysctl -w KEY=VALUE` inside the namespace (key as under /proc/sys, dotted).
    SetSysctl {
        /// Namespace.
        netns: Netns,
        /// e.g. `net.ipv4.ip_forward`.
        key: String,
        /// Value.
        value: String,
    },
    /// Turns IPv6 forwarding on in the namespace (`net.ipv6.conf.all.forwarding=1`)
    /// if it is off, first setting `accept_ra=2` on every interface lanyard did not
    /// create whose `accept_ra` is 1, so the uplink keeps taking router
    /// advertisements (a forwarding interface ignores them at 1). Does nothing when
    /// forwarding is already on: then it is not lanyard that turns it on.
    EnableIpv6Forwarding {
        /// Namespace.
        netns: Netns,
    },
}

impl Op {
    /// The op that undoes this one, if there is one to run.
    pub fn inverse(&self) -> Option<Op> {
        Some(match self {
            Op::CreateBridge { name, .. } | Op::CreateVlan { name, .. } => Op::DeleteLink {
                netns: Netns::Host,
                name: name.clone(),
            },
            Op::CreateVeth { host, .. } => Op::DeleteLink {
                netns: Netns::Host,
                name: host.clone(),
            },
            Op::CreateMacvlan { netns, name, .. } | Op::CreateIpvlan { netns, name, .. } => {
                Op::DeleteLink {
                    netns: netns.clone(),
                    name: name.clone(),
                }
            }
            Op::AddAddress {
                netns, link, addr, ..
            } => Op::DelAddress {
                netns: netns.clone(),
                link: link.clone(),
                addr: *addr,
            },
            Op::AddRoute { netns, route } => Op::DelRoute {
                netns: netns.clone(),
                route: route.clone(),
            },
            Op::Nft {
                undo: Some(undo), ..
            } => Op::Nft {
                script: undo.clone(),
                undo: None,
            },
            Op::Nft { undo: None, .. } => return None,
            Op::RetireLink { .. }
            | Op::DeleteLink { .. }
            | Op::SetUp { .. }
            | Op::DelAddress { .. }
            | Op::DelRoute { .. }
            | Op::SetSysctl { .. }
            | Op::EnableIpv6Forwarding { .. } => return None,
        })
    }
}

impl fmt::Display for Op {
    /// The `ip` command that does the same, for logs and `--dry-run`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ns = |n: &Netns| match n {
            Netns::Host => String::new(),
            Netns::Path(p) => format!(" [netns {}]", p.display()),
        };
        match self {
            Op::CreateBridge { name, mtu } => write!(
                f,
                "ip link add {name} type bridge{}",
                mtu.map(|m| format!(" mtu {m}")).unwrap_or_default()
            ),
            Op::CreateVeth {
                host,
                peer,
                peer_netns,
                master,
                ..
            } => write!(
                f,
                "ip link add {host} type veth peer name {peer} netns {peer_netns}{}",
                master
                    .as_ref()
                    .map(|m| format!(" master {m}"))
                    .unwrap_or_default()
            ),
            Op::CreateMacvlan {
                netns,
                name,
                parent,
                mode,
                ..
            } => write!(
                f,
                "ip link add {name} link {parent} netns {netns} type macvlan mode {}",
                format!("{mode:?}").to_lowercase()
            ),
            Op::CreateIpvlan {
                netns,
                name,
                parent,
                mode,
                ..
            } => write!(
                f,
                "ip link add {name} link {parent} netns {netns} type ipvlan mode {}",
                format!("{mode:?}").to_lowercase()
            ),
            Op::CreateVlan { name, parent, id } => {
                write!(f, "ip link add {name} link {parent} type vlan id {id}")
            }
            Op::DeleteLink { netns, name } => write!(f, "ip link del {name}{}", ns(netns)),
            Op::RetireLink {
                netns,
                name,
                tombstone,
                addresses,
            } => {
                write!(f, "ip link set {name} name {tombstone}")?;
                for a in addresses {
                    write!(f, "; ip addr del {a} dev {tombstone}")?;
                }
                write!(f, "{}", ns(netns))
            }
            Op::SetUp { netns, name } => write!(f, "ip link set {name} up{}", ns(netns)),
            Op::AddAddress {
                netns,
                link,
                addr,
                nodad,
            } => write!(
                f,
                "ip addr add {addr} dev {link}{}{}",
                if *nodad { " nodad" } else { "" },
                ns(netns)
            ),
            Op::DelAddress { netns, link, addr } => {
                write!(f, "ip addr del {addr} dev {link}{}", ns(netns))
            }
            Op::AddRoute { netns, route } => write!(f, "ip route replace {route}{}", ns(netns)),
            Op::DelRoute { netns, route } => write!(f, "ip route del {route}{}", ns(netns)),
            Op::SetSysctl { netns, key, value } => {
                write!(f, "sysctl -w {key}={value}{}", ns(netns))
            }
            Op::EnableIpv6Forwarding { netns } => write!(
                f,
                "sysctl -w net.ipv6.conf.IF.accept_ra=2 (where 1) net.ipv6.conf.all.forwarding=1{}",
                ns(netns)
            ),
            Op::Nft { script, .. } => {
                let first = script.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
                let more = script.lines().filter(|l| !l.trim().is_empty()).count() > 1;
                write!(f, "nft '{}'{}", first.trim(), if more { " …" } else { "" })
            }
        }
    }
}
