//! Reading the kernel's answers: `rtattr` iteration and the few fields lanyard needs
//! from `ifinfomsg`, `ifaddrmsg` and `rtmsg` messages, into the core's
//! [`LinkInfo`], [`AddrInfo`] and [`RouteInfo`].
//!
//! Hand-parsed on purpose: only the attributes lanyard uses are looked at, so
//! attributes the typed crate does not know (or decodes wrongly) cannot fail a dump,
//! and a dump of many links skips their statistics cheaply.

use crate::socket::align4;
use ipnet::IpNet;
use lanyard_core::kernel::{AddrInfo, LinkInfo, RouteInfo};
use lanyard_core::model::MacAddr;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

// Attribute numbers from <linux/if_link.h>, <linux/if_addr.h>, <linux/rtnetlink.h>.
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_LINK: u16 = 5;
const IFLA_MASTER: u16 = 10;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_FLAGS: u16 = 8;
/// `ifa_flags`: IPv6 duplicate address detection failed.
const IFA_F_DADFAILED: u32 = 0x08;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_PREFSRC: u16 = 7;
const RTA_TABLE: u16 = 15;
/// Strips `NLA_F_NESTED` and `NLA_F_NET_BYTEORDER` from an attribute type.
const NLA_TYPE_MASK: u16 = 0x3fff;
/// `RT_TABLE_MAIN`.
pub(crate) const RT_TABLE_MAIN: u32 = 254;
/// `RTN_UNICAST`.
const RTN_UNICAST: u8 = 1;
/// `RTM_F_CLONED`: a cache entry, not a route.
const RTM_F_CLONED: u32 = 0x200;
const IFF_UP: u32 = 1;
const IFF_LOWER_UP: u32 = 1 << 16;

/// Iterates over the `rtattr`s in `buf` as (type, value). Stops at the first
/// malformed one.
pub(crate) fn attrs(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        if rest.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
        let kind = u16::from_ne_bytes([rest[2], rest[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > rest.len() {
            return None;
        }
        let value = &rest[4..len];
        rest = &rest[align4(len).min(rest.len())..];
        Some((kind, value))
    })
}

/// A NUL-terminated (or not) attribute string.
pub(crate) fn string(v: &[u8]) -> String {
    let end = v.iter().position(|&b| b == 0).unwrap_or(v.len());
    String::from_utf8_lossy(&v[..end]).into_owned()
}

fn u32_of(v: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(v.get(..4)?.try_into().ok()?))
}

fn ip_of(v: &[u8]) -> Option<IpAddr> {
    match v.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(v).ok()?))),
        16 => Some(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(v).ok()?))),
        _ => None,
    }
}

/// `ifinfomsg`'s index and flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LinkHead {
    /// ifindex.
    pub index: u32,
    /// `IFF_*` flags.
    pub flags: u32,
}

/// Reads the `ifinfomsg` at the start of an `RTM_NEWLINK` payload.
pub(crate) fn link_head(p: &[u8]) -> Option<LinkHead> {
    if p.len() < 16 {
        return None;
    }
    Some(LinkHead {
        index: u32_of(&p[4..8])?,
        flags: u32_of(&p[8..12])?,
    })
}

/// Decodes an `RTM_NEWLINK` payload.
pub(crate) fn link(p: &[u8]) -> Option<LinkInfo> {
    let head = link_head(p)?;
    let mut l = LinkInfo {
        index: head.index,
        name: String::new(),
        kind: None,
        mac: None,
        mtu: 0,
        up: head.flags & IFF_UP != 0,
        lower_up: head.flags & IFF_LOWER_UP != 0,
        parent: None,
        master: None,
    };
    for (kind, v) in attrs(&p[16..]) {
        match kind {
            IFLA_IFNAME => l.name = string(v),
            IFLA_MTU => l.mtu = u32_of(v).unwrap_or(0),
            IFLA_LINK => l.parent = u32_of(v).filter(|&i| i != 0),
            IFLA_MASTER => l.master = u32_of(v).filter(|&i| i != 0),
            IFLA_ADDRESS => {
                l.mac = <[u8; 6]>::try_from(v)
                    .ok()
                    .filter(|m| m.iter().any(|&b| b != 0))
                    .map(MacAddr)
            }
            IFLA_LINKINFO => {
                l.kind = attrs(v)
                    .find(|(k, _)| *k == IFLA_INFO_KIND)
                    .map(|(_, v)| string(v))
            }
            _ => {}
        }
    }
    Some(l)
}

/// Decodes an `RTM_NEWADDR` payload.
pub(crate) fn addr(p: &[u8]) -> Option<AddrInfo> {
    if p.len() < 8 {
        return None;
    }
    let prefix = p[1];
    // ifa_flags (low 8 bits), superseded by IFA_FLAGS when present.
    let mut flags = u32::from(p[2]);
    let index = u32_of(&p[4..8])?;
    let (mut local, mut address) = (None, None);
    for (kind, v) in attrs(&p[8..]) {
        match kind {
            IFA_LOCAL => local = ip_of(v),
            IFA_ADDRESS => address = ip_of(v),
            IFA_FLAGS => flags = u32_of(v).unwrap_or(flags),
            _ => {}
        }
    }
    // IPv4 puts the interface's own address in IFA_LOCAL (IFA_ADDRESS is the peer on
    // point-to-point links); IPv6 only sends IFA_ADDRESS.
    let ip = local.or(address)?;
    Some(AddrInfo {
        index,
        addr: IpNet::new(ip, prefix).ok()?,
        dad_failed: flags & IFA_F_DADFAILED != 0,
    })
}

/// Decodes an `RTM_NEWROUTE` payload if it is a main-table unicast route.
pub(crate) fn route(p: &[u8]) -> Option<RouteInfo> {
    if p.len() < 12 {
        return None;
    }
    let (family, dst_len, table, protocol, kind) = (p[0], p[1], p[4], p[5], p[7]);
    let flags = u32_of(&p[8..12])?;
    if kind != RTN_UNICAST || flags & RTM_F_CLONED != 0 {
        return None;
    }
    let mut table = u32::from(table);
    let (mut dst, mut gateway, mut oif, mut src) = (None, None, None, None);
    for (k, v) in attrs(&p[12..]) {
        match k {
            RTA_DST => dst = ip_of(v),
            RTA_GATEWAY => gateway = ip_of(v),
            RTA_OIF => oif = u32_of(v),
            RTA_PREFSRC => src = ip_of(v),
            RTA_TABLE => table = u32_of(v).unwrap_or(table),
            _ => {}
        }
    }
    if table != RT_TABLE_MAIN {
        return None;
    }
    let dst = match (dst, family as i32) {
        (Some(ip), _) => ip,
        (None, libc::AF_INET) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        (None, libc::AF_INET6) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        _ => return None,
    };
    Some(RouteInfo {
        dst: IpNet::new(dst, dst_len).ok()?,
        gateway,
        oif,
        src,
        protocol,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
        a.extend_from_slice(&kind.to_ne_bytes());
        a.extend_from_slice(value);
        while a.len() % 4 != 0 {
            a.push(0);
        }
        a
    }

    #[test]
    fn default_route_without_dst_decodes_as_slash_zero() {
        let mut p = vec![libc::AF_INET as u8, 0, 0, 0, 254, 4, 0, RTN_UNICAST];
        p.extend_from_slice(&0u32.to_ne_bytes());
        p.extend(attr(RTA_GATEWAY, &[192, 0, 2, 1]));
        p.extend(attr(RTA_OIF, &7u32.to_ne_bytes()));
        let r = route(&p).expect("route");
        assert_eq!(r.dst, "0.0.0.0/0".parse::<IpNet>().unwrap());
        assert_eq!(r.gateway, Some("192.0.2.1".parse().unwrap()));
        assert_eq!(r.oif, Some(7));
        assert_eq!(r.protocol, 4);
    }

    #[test]
    fn local_table_routes_are_left_out() {
        let mut p = vec![libc::AF_INET as u8, 32, 0, 0, 255, 2, 254, 2];
        p.extend_from_slice(&0u32.to_ne_bytes());
        assert!(route(&p).is_none());
    }

    #[test]
    fn link_with_nested_kind_and_zero_mac() {
        let mut p = vec![0u8; 16];
        p[4..8].copy_from_slice(&3u32.to_ne_bytes());
        p[8..12].copy_from_slice(&(IFF_UP | IFF_LOWER_UP).to_ne_bytes());
        p.extend(attr(IFLA_IFNAME, b"br0\0"));
        p.extend(attr(IFLA_ADDRESS, &[0; 6]));
        p.extend(attr(IFLA_LINKINFO, &attr(IFLA_INFO_KIND, b"bridge\0")));
        let l = link(&p).expect("link");
        assert_eq!(
            (l.index, l.name.as_str(), l.kind.as_deref()),
            (3, "br0", Some("bridge"))
        );
        assert!(l.up && l.lower_up);
        assert_eq!(l.mac, None);
    }
}
