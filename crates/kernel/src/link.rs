//! Links: create (bridge, veth, macvlan, ipvlan, VLAN), delete, retire, set up, and
//! finding one by name.
//!
//! Every create is one `RTM_NEWLINK` that also sets `IFF_UP`, so no separate "up"
//! round trip is needed; links meant for a container namespace are created there
//! directly (`IFLA_NET_NS_FD`), which is much cheaper than creating and moving them.

use crate::addr;
use crate::error::NlError;
use crate::netlink::Netlink;
use crate::socket::NlSocket;
use crate::wire::{self, LinkHead};
use ipnet::IpNet;
use lanyard_core::kernel::{is_tombstone, tombstone_name, RETIRED_ALIAS};
use lanyard_core::model::{IpvlanMode, MacAddr, MacvlanMode};
use lanyard_core::name::IfName;
use lanyard_core::op::{Netns, Op};
use lanyard_core::{Error, Result};
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::link::{
    InfoBridgePort, InfoData, InfoIpVlan, InfoKind, InfoMacVlan, InfoPortData, InfoPortKind,
    InfoVeth, InfoVlan, IpVlanMode, LinkAttribute, LinkExtentMask, LinkFlags, LinkInfo,
    LinkMessage, MacVlanMode,
};
use netlink_packet_route::RouteNetlinkMessage;
use std::os::fd::AsRawFd;

/// The index and flags of the link called `name` in `sock`'s namespace, or `None`.
/// One `RTM_GETLINK` with `IFLA_IFNAME`, statistics left out.
pub(crate) fn lookup(sock: &mut NlSocket, name: &str) -> Result<Option<LinkHead>, NlError> {
    let mut m = LinkMessage::default();
    m.attributes.push(LinkAttribute::IfName(name.to_string()));
    m.attributes
        .push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
    let head = match sock.get(RouteNetlinkMessage::GetLink(m)) {
        Ok(p) => wire::link_head(&p)
            .map(Some)
            .ok_or_else(|| NlError::Decode("short ifinfomsg".into())),
        Err(e) if e.is(libc::ENODEV) => Ok(None),
        Err(e) => Err(e),
    }?;
    sock.remember(name, head.as_ref().map(|h| h.index));
    Ok(head)
}

/// The index of `name` (remembered, or looked up); [`Error::NotFound`] if there is
/// no such link.
pub(crate) fn index_of(sock: &mut NlSocket, name: &IfName, op: &Op) -> Result<u32> {
    if let Some(i) = sock.index(name.as_str()) {
        return Ok(i);
    }
    match lookup(sock, name.as_str()) {
        Ok(Some(h)) => Ok(h.index),
        Ok(None) => Err(Error::not_found("interface", name.as_str())),
        Err(e) => Err(e.for_op(op)),
    }
}

/// A link message that sets the link up.
fn up_message(name: &IfName) -> LinkMessage {
    let mut m = LinkMessage::default();
    m.header.flags = LinkFlags::Up;
    m.header.change_mask = LinkFlags::Up;
    m.attributes.push(LinkAttribute::IfName(name.to_string()));
    m
}

/// Which link type a create asks for, to name the missing module.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Bridge,
    Veth,
    Macvlan,
    Ipvlan,
    Vlan,
}

impl Kind {
    /// (what the user reads, the kernel module that provides it).
    fn names(self) -> (&'static str, &'static str) {
        match self {
            Kind::Bridge => ("bridge", "bridge"),
            Kind::Veth => ("veth", "veth"),
            Kind::Macvlan => ("macvlan", "macvlan"),
            Kind::Ipvlan => ("ipvlan", "ipvlan"),
            Kind::Vlan => ("802.1Q VLAN", "8021q"),
        }
    }
}

/// Sends a create from the host namespace. A kernel that does not know the link
/// type answers `EOPNOTSUPP` ("Unknown device type"): that is [`Error::Unsupported`].
fn create(nl: &mut Netlink, op: &Op, kind: Kind, m: LinkMessage) -> Result<()> {
    let sock = nl.host_sock()?;
    sock.ack(RouteNetlinkMessage::NewLink(m), NLM_F_CREATE | NLM_F_EXCL)
        .map_err(|e| create_error(e, op, kind))
}

/// [`create`] for a link made directly in `netns`. Kernels before 6.2 check a new
/// link's name in the *caller's* namespace, so a container's `eth0` clashes with the
/// host's own `eth0` (EEXIST) although the container has none. Then the link is made
/// under a temporary name, down, and renamed and set up inside the namespace.
fn create_child(
    nl: &mut Netlink,
    op: &Op,
    kind: Kind,
    m: LinkMessage,
    netns: &Netns,
    name: &IfName,
) -> Result<()> {
    let first = match nl.host_sock()?.ack(
        RouteNetlinkMessage::NewLink(m.clone()),
        NLM_F_CREATE | NLM_F_EXCL,
    ) {
        Ok(()) => return Ok(()),
        Err(e) if e.is(libc::EEXIST) && matches!(netns, Netns::Path(_)) => e,
        Err(e) => return Err(create_error(e, op, kind)),
    };
    if reclaim(nl, op, netns, name)? {
        // A retired link held the name; it is out of the way now.
        return nl
            .host_sock()?
            .ack(RouteNetlinkMessage::NewLink(m), NLM_F_CREATE | NLM_F_EXCL)
            .map_err(|e| create_error(e, op, kind));
    }
    let inside = lookup(nl.need_sock(netns)?, name.as_str()).map_err(|e| e.for_op(op))?;
    if inside.is_some() {
        return Err(create_error(first, op, kind)); // the namespace really has one
    }
    let tmp = format!(
        "lyn-{:08x}",
        std::process::id()
            ^ (std::time::UNIX_EPOCH
                .elapsed()
                .map(|d| d.subsec_nanos())
                .unwrap_or(0))
    );
    let mut m = m;
    m.header.flags = LinkFlags::empty();
    m.header.change_mask = LinkFlags::empty();
    m.attributes
        .retain(|a| !matches!(a, LinkAttribute::IfName(_)));
    m.attributes.push(LinkAttribute::IfName(tmp.clone()));
    nl.host_sock()?
        .ack(RouteNetlinkMessage::NewLink(m), NLM_F_CREATE | NLM_F_EXCL)
        .map_err(|e| create_error(e, op, kind))?;
    let sock = nl.need_sock(netns)?;
    let index = match lookup(sock, &tmp) {
        Ok(Some(h)) => h.index,
        Ok(None) => {
            return Err(Error::kernel(
                op.to_string(),
                format!("{tmp} vanished after its create"),
                None,
            ))
        }
        Err(e) => return Err(e.for_op(op)),
    };
    let mut r = up_message(name);
    r.header.index = index;
    if let Err(e) = sock.ack(RouteNetlinkMessage::NewLink(r), 0) {
        let mut d = LinkMessage::default();
        d.header.index = index;
        let _ = sock.ack(RouteNetlinkMessage::DelLink(d), 0);
        return Err(e.for_op(op));
    }
    Ok(())
}

fn create_error(e: NlError, op: &Op, kind: Kind) -> Error {
    let unknown_type = match &e {
        NlError::Kernel { errno, msg } if *errno == libc::EOPNOTSUPP => msg
            .as_deref()
            .is_none_or(|m| m.contains("Unknown device type")),
        _ => false,
    };
    if unknown_type {
        let (what, module) = kind.names();
        return Error::Unsupported(format!(
            "kernel has no {what} support (module {module} not available)"
        ));
    }
    e.for_op(op)
}

/// The `IFLA_NET_NS_FD` attribute for creating a link in `netns` (none for the host).
fn netns_attr(nl: &mut Netlink, netns: &Netns) -> Result<Option<LinkAttribute>> {
    Ok(match netns {
        Netns::Host => None,
        Netns::Path(_) => Some(LinkAttribute::NetNsFd(nl.need_ns(netns)?.fd.as_raw_fd())),
    })
}

/// `ip link add NAME type bridge [mtu M] up`.
pub(crate) fn create_bridge(
    nl: &mut Netlink,
    op: &Op,
    name: &IfName,
    mtu: Option<u32>,
) -> Result<()> {
    let mut m = up_message(name);
    m.attributes.extend(mtu.map(LinkAttribute::Mtu));
    m.attributes
        .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
            InfoKind::Bridge,
        )]));
    create(nl, op, Kind::Bridge, m)
}

/// What [`create_veth`] needs, borrowed from [`Op::CreateVeth`].
#[derive(Debug)]
pub(crate) struct Veth<'a> {
    pub(crate) host: &'a IfName,
    pub(crate) peer: &'a IfName,
    pub(crate) peer_netns: &'a Netns,
    pub(crate) mtu: Option<u32>,
    pub(crate) master: Option<&'a IfName>,
    pub(crate) peer_mac: Option<MacAddr>,
}

/// `ip link add HOST [mtu M] [master BR] up type veth peer name PEER netns NS
/// [address MAC] [mtu M]`: one request creates both ends, the peer directly in its
/// namespace, enslaves the host end and sets it up. The peer stays down: the kernel
/// configures the peer before the pair is joined, so asking for it up here fails with
/// `ENOTCONN`; bringing it up is the planner's separate [`Op::SetUp`].
pub(crate) fn create_veth(nl: &mut Netlink, op: &Op, v: Veth<'_>) -> Result<()> {
    let mut peer = LinkMessage::default();
    peer.attributes
        .push(LinkAttribute::IfName(v.peer.to_string()));
    peer.attributes.extend(v.mtu.map(LinkAttribute::Mtu));
    peer.attributes
        .extend(v.peer_mac.map(|m| LinkAttribute::Address(m.0.to_vec())));
    peer.attributes.extend(netns_attr(nl, v.peer_netns)?);

    let mut m = up_message(v.host);
    m.attributes.extend(v.mtu.map(LinkAttribute::Mtu));
    if let Some(master) = v.master {
        let index = index_of(nl.host_sock()?, master, op)?;
        m.attributes.push(LinkAttribute::Controller(index));
    }
    m.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::Veth),
        LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
    ]));
    match create(nl, op, Kind::Veth, m.clone()) {
        Err(Error::Kernel {
            errno: Some(libc::EEXIST),
            ..
        }) if reclaim(nl, op, v.peer_netns, v.peer)? => create(nl, op, Kind::Veth, m)?,
        other => other?,
    }
    if v.master.is_some() {
        set_hairpin(nl, op, v.host)?;
    }
    Ok(())
}

/// `ip link set NAME type bridge_slave hairpin on`: the bridge may send a frame back
/// out of the port it came in on, so an endpoint reaches its own published port
/// through the host's address (hairpin NAT). Port data is ignored on a create, so
/// this is a second request.
fn set_hairpin(nl: &mut Netlink, op: &Op, name: &IfName) -> Result<()> {
    let mut m = LinkMessage::default();
    m.attributes.push(LinkAttribute::IfName(name.to_string()));
    m.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::PortKind(InfoPortKind::Bridge),
        LinkInfo::PortData(InfoPortData::BridgePort(vec![InfoBridgePort::HairpinMode(
            true,
        )])),
    ]));
    nl.host_sock()?
        .ack(RouteNetlinkMessage::NewLink(m), 0)
        .map_err(|e| e.for_op(op))
}

/// A link on `parent` (host namespace) created up in `netns`.
fn child_of_parent(
    nl: &mut Netlink,
    op: &Op,
    netns: &Netns,
    name: &IfName,
    parent: &IfName,
    mtu: Option<u32>,
) -> Result<LinkMessage> {
    let parent = index_of(nl.host_sock()?, parent, op)?;
    let mut m = up_message(name);
    m.attributes.push(LinkAttribute::Link(parent));
    m.attributes.extend(mtu.map(LinkAttribute::Mtu));
    m.attributes.extend(netns_attr(nl, netns)?);
    Ok(m)
}

/// `ip link add NAME link PARENT netns NS [address MAC] [mtu M] up type macvlan mode M`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn create_macvlan(
    nl: &mut Netlink,
    op: &Op,
    netns: &Netns,
    name: &IfName,
    parent: &IfName,
    mode: MacvlanMode,
    mac: Option<MacAddr>,
    mtu: Option<u32>,
) -> Result<()> {
    let mut m = child_of_parent(nl, op, netns, name, parent, mtu)?;
    m.attributes
        .extend(mac.map(|m| LinkAttribute::Address(m.0.to_vec())));
    let mode = match mode {
        MacvlanMode::Bridge => MacVlanMode::Bridge,
        MacvlanMode::Private => MacVlanMode::Private,
        MacvlanMode::Vepa => MacVlanMode::Vepa,
        MacvlanMode::Passthru => MacVlanMode::Passthrough,
    };
    m.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::MacVlan),
        LinkInfo::Data(InfoData::MacVlan(vec![InfoMacVlan::Mode(mode)])),
    ]));
    match create_child(nl, op, Kind::Macvlan, m.clone(), netns, name) {
        Err(Error::Kernel {
            errno: Some(libc::EADDRINUSE),
            ..
        }) if mac.is_some() => {
            // A macvlan that is up owns its MAC on the parent. If a retired link not
            // yet reaped holds this one (a quick re-attach of the same endpoint),
            // delete it now and try once more.
            let mac = mac.unwrap_or_else(|| unreachable!("checked above"));
            if !delete_tombstones_with_mac(nl, op, netns, mac)? {
                return Err(Error::Conflict(format!(
                    "MAC address {mac} is already in use on {parent}; pick another or detach its owner"
                )));
            }
            create_child(nl, op, Kind::Macvlan, m, netns, name)
        }
        other => other,
    }
}

/// Deletes the retired links and tombstones (`lyx-…`) in `netns` that have `mac`;
/// whether there were any.
fn delete_tombstones_with_mac(
    nl: &mut Netlink,
    op: &Op,
    netns: &Netns,
    mac: MacAddr,
) -> Result<bool> {
    let sock = nl.need_sock(netns)?;
    let view = crate::view::view(sock).map_err(|e| e.for_op(op))?;
    let mut found = false;
    for l in view
        .links
        .iter()
        .filter(|l| (l.retired || is_tombstone(&l.name)) && l.mac == Some(mac))
    {
        let mut m = LinkMessage::default();
        m.header.index = l.index;
        match sock.ack(RouteNetlinkMessage::DelLink(m), 0) {
            Err(e) if !e.is(libc::ENODEV) => return Err(e.for_op(op)),
            _ => found = true,
        }
    }
    Ok(found)
}

/// `ip link add NAME link PARENT netns NS [mtu M] up type ipvlan mode M`.
pub(crate) fn create_ipvlan(
    nl: &mut Netlink,
    op: &Op,
    netns: &Netns,
    name: &IfName,
    parent: &IfName,
    mode: IpvlanMode,
    mtu: Option<u32>,
) -> Result<()> {
    let mut m = child_of_parent(nl, op, netns, name, parent, mtu)?;
    let mode = match mode {
        IpvlanMode::L2 => IpVlanMode::L2,
        IpvlanMode::L3 => IpVlanMode::L3,
        IpvlanMode::L3s => IpVlanMode::L3S,
    };
    m.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::IpVlan),
        LinkInfo::Data(InfoData::IpVlan(vec![InfoIpVlan::Mode(mode)])),
    ]));
    create_child(nl, op, Kind::Ipvlan, m, netns, name)
}

/// `ip link add NAME link PARENT up type vlan id ID`.
pub(crate) fn create_vlan(
    nl: &mut Netlink,
    op: &Op,
    name: &IfName,
    parent: &IfName,
    id: u16,
) -> Result<()> {
    let mut m = child_of_parent(nl, op, &Netns::Host, name, parent, None)?;
    m.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::Vlan),
        LinkInfo::Data(InfoData::Vlan(vec![InfoVlan::Id(id)])),
    ]));
    create(nl, op, Kind::Vlan, m)
}

/// `ip link del NAME`: a missing link (or namespace) is fine.
pub(crate) fn delete(nl: &mut Netlink, op: &Op, netns: &Netns, name: &IfName) -> Result<()> {
    let Some(sock) = nl.sock(netns)? else {
        return Ok(());
    };
    let mut m = LinkMessage::default();
    m.attributes.push(LinkAttribute::IfName(name.to_string()));
    match sock.ack(RouteNetlinkMessage::DelLink(m), 0) {
        Err(e) if !e.is(libc::ENODEV) => Err(e.for_op(op)),
        _ => Ok(()),
    }
}

/// `ip link set NAME alias "lanyard: retired"; ip addr del A dev NAME` for each of
/// `addresses` (the endpoint's own, known from the store: no dump; its IPv6
/// link-local address, which nothing else can hold, goes with the link): the
/// addresses are free when this returns; deleting the link is left to `reap`, by the
/// index returned. A missing link or namespace is fine (`None`), so is a missing
/// address.
///
/// Neither renamed nor set down: a rename waits for an RCU grace period and
/// re-registers the link's sysctls (IPv4, IPv6, neighbour tables), 10% of a detach's
/// CPU, and setting a link down waits for a grace period in `dev_close`; the delete
/// in `reap` does both anyway. Until then the link is up without addresses, keeps its
/// name (a create that needs it calls [`reclaim`]) and, on a macvlan parent, its MAC
/// ([`create_macvlan`] deals with that).
pub(crate) fn retire(
    nl: &mut Netlink,
    op: &Op,
    netns: &Netns,
    name: &IfName,
    addresses: &[IpNet],
) -> Result<Option<u32>> {
    let Some(sock) = nl.sock(netns)? else {
        return Ok(None);
    };
    let index = match lookup(sock, name.as_str()) {
        Ok(Some(h)) => h.index,
        Ok(None) => return Ok(None),
        Err(e) => return Err(e.for_op(op)),
    };
    let mut m = LinkMessage::default();
    m.header.index = index;
    m.attributes
        .push(LinkAttribute::IfAlias(RETIRED_ALIAS.to_string()));
    sock.ack(RouteNetlinkMessage::NewLink(m), 0)
        .map_err(|e| e.for_op(op))?;
    for a in addresses {
        addr::delete(sock, index, *a).map_err(|e| e.for_op(op))?;
    }
    Ok(Some(index))
}

/// Frees `name` in `netns` for a new link if a retired link ([`retire`]) holds it:
/// renames that link to a tombstone (`lyx-` and its ifindex: unique in the
/// namespace), which `reap` still deletes by index. True if it did; false if no link
/// has the name or one that is not retired does.
pub(crate) fn reclaim(nl: &mut Netlink, op: &Op, netns: &Netns, name: &IfName) -> Result<bool> {
    let sock = nl.need_sock(netns)?;
    let mut m = LinkMessage::default();
    m.attributes.push(LinkAttribute::IfName(name.to_string()));
    m.attributes
        .push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
    let found = match sock.get(RouteNetlinkMessage::GetLink(m)) {
        Ok(p) => crate::wire::link(&p),
        Err(e) if e.is(libc::ENODEV) => None,
        Err(e) => return Err(e.for_op(op)),
    };
    let Some(link) = found.filter(|l| l.retired) else {
        return Ok(false);
    };
    let tombstone = tombstone_name(link.index);
    let rename = |down: bool| {
        let mut m = LinkMessage::default();
        m.header.index = link.index;
        if down {
            m.header.change_mask = LinkFlags::Up;
        } else {
            m.attributes
                .push(LinkAttribute::IfName(tombstone.to_string()));
        }
        RouteNetlinkMessage::NewLink(m)
    };
    let renamed = match sock.ack(rename(false), 0) {
        // A kernel that does not rename a link that is up (before 6.2).
        Err(e) if e.is(libc::EBUSY) => sock
            .ack(rename(true), 0)
            .and_then(|()| sock.ack(rename(false), 0)),
        other => other,
    };
    match renamed {
        Err(e) if !e.is(libc::ENODEV) => return Err(e.for_op(op)),
        _ => {}
    }
    sock.remember(name.as_str(), None);
    Ok(true)
}

/// `ip link set NAME up`.
pub(crate) fn set_up(nl: &mut Netlink, op: &Op, netns: &Netns, name: &IfName) -> Result<()> {
    let sock = nl.need_sock(netns)?;
    match sock.ack(RouteNetlinkMessage::NewLink(up_message(name)), 0) {
        Ok(()) => Ok(()),
        Err(e) if e.is(libc::ENODEV) => Err(Error::not_found("interface", name.as_str())),
        Err(e) => Err(e.for_op(op)),
    }
}
