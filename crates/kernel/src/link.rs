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
use lanyard_core::kernel::is_tombstone;
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
    pub(crate) host_mac: Option<MacAddr>,
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
    m.attributes
        .extend(v.host_mac.map(|mac| LinkAttribute::Address(mac.0.to_vec())));
    if let Some(master) = v.master {
        let index = index_of(nl.host_sock()?, master, op)?;
        m.attributes.push(LinkAttribute::Controller(index));
    }
    m.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::Veth),
        LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
    ]));
    create(nl, op, Kind::Veth, m)?;
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
            // A macvlan that is up owns its MAC on the parent. If a tombstone not yet
            // reaped holds this one (a quick re-attach of the same endpoint), delete
            // it now and try once more.
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

/// Deletes the tombstones (`lyx-…`) in `netns` that have `mac`; whether there were any.
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
        .filter(|l| is_tombstone(&l.name) && l.mac == Some(mac))
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

/// `ip link set NAME name TOMBSTONE; ip addr del A dev TOMBSTONE` for each of
/// `addresses` (the endpoint's own, known from the store: no dump, and its IPv6
/// link-local address, which nothing else can hold, goes with the tombstone): the
/// name and the addresses are free when this returns; deleting the tombstone is left
/// to `reap`. A missing link, address or namespace is fine.
///
/// The link is renamed while up, which kernels since 6.2 allow, and not set down:
/// setting a link down waits for an RCU grace period in `dev_close` (12-15 ms per
/// link measured here, against ~30 us for every other step), and the delete in `reap`
/// closes it anyway. Until then the tombstone is up without addresses and still owns
/// its MAC on a macvlan parent; [`create_macvlan`] deals with that. A kernel that
/// refuses to rename a link that is up (`EBUSY`) gets it set down first.
pub(crate) fn retire(
    nl: &mut Netlink,
    op: &Op,
    netns: &Netns,
    name: &IfName,
    tombstone: &IfName,
    addresses: &[IpNet],
) -> Result<()> {
    let Some(sock) = nl.sock(netns)? else {
        return Ok(());
    };
    let index = match lookup(sock, name.as_str()) {
        Ok(Some(h)) => h.index,
        Ok(None) => return Ok(()),
        Err(e) => return Err(e.for_op(op)),
    };
    let setlink = |down: bool, rename: bool| {
        let mut m = LinkMessage::default();
        m.header.index = index;
        if down {
            m.header.change_mask = LinkFlags::Up;
        }
        if rename {
            m.attributes
                .push(LinkAttribute::IfName(tombstone.to_string()));
        }
        RouteNetlinkMessage::NewLink(m)
    };
    match sock.ack(setlink(false, true), 0) {
        Ok(()) => {}
        Err(e) if e.is(libc::EBUSY) => {
            sock.ack(setlink(true, false), 0)
                .map_err(|e| e.for_op(op))?;
            sock.ack(setlink(false, true), 0)
                .map_err(|e| e.for_op(op))?;
        }
        Err(e) => return Err(e.for_op(op)),
    }
    // The endpoint's own addresses, known: no dump. (A missing one is fine.)
    for a in addresses {
        addr::delete(sock, index, *a).map_err(|e| e.for_op(op))?;
    }
    Ok(())
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
