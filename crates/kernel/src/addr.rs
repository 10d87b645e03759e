//! Addresses: add (`nodad`, `noprefixroute` for host prefixes, IPv4 broadcast) and
//! delete.

use crate::error::NlError;
use crate::link;
use crate::netlink::Netlink;
use crate::socket::NlSocket;
use ipnet::IpNet;
use lanyard_core::name::IfName;
use lanyard_core::op::{Netns, Op};
use lanyard_core::Result;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use std::net::IpAddr;

/// The message naming `addr` on link `index`.
fn message(index: u32, addr: IpNet) -> AddressMessage {
    let mut m = AddressMessage::default();
    m.header.index = index;
    m.header.prefix_len = addr.prefix_len();
    match addr.addr() {
        IpAddr::V4(_) => {
            m.header.family = AddressFamily::Inet;
            m.attributes.push(AddressAttribute::Local(addr.addr()));
        }
        IpAddr::V6(_) => m.header.family = AddressFamily::Inet6,
    }
    m.attributes.push(AddressAttribute::Address(addr.addr()));
    m
}

/// `ip addr add ADDR dev LINK [nodad|optimistic] [noprefixroute]`. With `nodad`, IPv6
/// skips duplicate address detection, and a host prefix (/32, /128) gets no prefix
/// route. Without it an IPv6 address is added `optimistic` (RFC 4429): usable at once
/// while DAD runs, where the link's `optimistic_dad` sysctl is on (else the kernel
/// ignores the flag and the address is tentative until DAD ends).
/// IPv4 prefixes up to /30 get their broadcast address, as `ip … brd +` would.
/// An address already there is fine.
pub(crate) fn add(
    nl: &mut Netlink,
    op: &Op,
    netns: &Netns,
    link: &IfName,
    addr: IpNet,
    nodad: bool,
) -> Result<()> {
    let sock = nl.need_sock(netns)?;
    let index = link::index_of(sock, link, op)?;
    let mut m = message(index, addr);
    let mut flags = AddressFlags::empty();
    if nodad {
        if addr.addr().is_ipv6() {
            flags |= AddressFlags::Nodad;
        }
        if addr.prefix_len() == addr.max_prefix_len() {
            flags |= AddressFlags::Noprefixroute;
        }
    } else if addr.addr().is_ipv6() {
        flags |= AddressFlags::Optimistic;
    }
    if !flags.is_empty() {
        // The header holds the low 8 bits for old kernels; IFA_FLAGS holds them all.
        m.header.flags = AddressHeaderFlags::from_bits_retain(flags.bits() as u8);
        m.attributes.push(AddressAttribute::Flags(flags));
    }
    if let IpNet::V4(v4) = addr {
        if v4.prefix_len() < 31 {
            m.attributes
                .push(AddressAttribute::Broadcast(v4.broadcast()));
        }
    }
    match sock.ack(
        RouteNetlinkMessage::NewAddress(m),
        NLM_F_CREATE | NLM_F_EXCL,
    ) {
        Err(e) if !e.is(libc::EEXIST) => Err(e.for_op(op)),
        _ => Ok(()),
    }
}

/// `ip addr del ADDR dev LINK`: a missing address, link or namespace is fine.
pub(crate) fn del(
    nl: &mut Netlink,
    op: &Op,
    netns: &Netns,
    link: &IfName,
    addr: IpNet,
) -> Result<()> {
    let Some(sock) = nl.sock(netns)? else {
        return Ok(());
    };
    let index = match link::lookup(sock, link.as_str()) {
        Ok(Some(h)) => h.index,
        Ok(None) => return Ok(()),
        Err(e) => return Err(e.for_op(op)),
    };
    delete(sock, index, addr).map_err(|e| e.for_op(op))
}

/// Deletes one address; `EADDRNOTAVAIL` (not there) is fine.
pub(crate) fn delete(sock: &mut NlSocket, index: u32, addr: IpNet) -> Result<(), NlError> {
    match sock.ack(RouteNetlinkMessage::DelAddress(message(index, addr)), 0) {
        Err(e) if !e.is(libc::EADDRNOTAVAIL) => Err(e),
        _ => Ok(()),
    }
}
