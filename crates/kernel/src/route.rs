//! Routes in the main table: `ip route replace` and `ip route del`.

use crate::link;
use crate::netlink::Netlink;
use crate::wire::RT_TABLE_MAIN;
use lanyard_core::op::{Netns, Op, RouteSpec};
use lanyard_core::{Error, Result};
use netlink_packet_core::{NLM_F_CREATE, NLM_F_REPLACE};
use netlink_packet_route::route::{
    RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

/// The message for `spec` through link `oif`. An add is `proto static`, `scope link`
/// without a gateway (IPv4; IPv6 routes are always universe); a delete leaves
/// protocol, scope and type open, like `ip route del`, so it matches any of them.
fn message(spec: &RouteSpec, oif: Option<u32>, delete: bool) -> RouteMessage {
    let dst = spec.dst.trunc();
    let mut m = RouteMessage::default();
    let v6 = dst.addr().is_ipv6();
    m.header.address_family = if v6 {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    };
    m.header.destination_prefix_length = dst.prefix_len();
    m.header.table = RT_TABLE_MAIN as u8;
    if delete {
        m.header.scope = RouteScope::NoWhere;
    } else {
        m.header.protocol = RouteProtocol::Static;
        m.header.kind = RouteType::Unicast;
        m.header.scope = if spec.via.is_none() && !v6 {
            RouteScope::Link
        } else {
            RouteScope::Universe
        };
    }
    if dst.prefix_len() > 0 {
        m.attributes
            .push(RouteAttribute::Destination(dst.addr().into()));
    }
    m.attributes
        .extend(spec.via.map(|g| RouteAttribute::Gateway(g.into())));
    m.attributes.extend(oif.map(RouteAttribute::Oif));
    m.attributes
        .extend(spec.src.map(|s| RouteAttribute::PrefSource(s.into())));
    m.attributes
        .extend(spec.metric.map(RouteAttribute::Priority));
    m
}

/// `ip route replace ROUTE proto static`.
pub(crate) fn replace(nl: &mut Netlink, op: &Op, netns: &Netns, spec: &RouteSpec) -> Result<()> {
    let sock = nl.need_sock(netns)?;
    let oif = match &spec.dev {
        Some(dev) => Some(link::index_of(sock, dev, op)?),
        None => None,
    };
    sock.ack(
        RouteNetlinkMessage::NewRoute(message(spec, oif, false)),
        NLM_F_CREATE | NLM_F_REPLACE,
    )
    .map_err(|e| e.for_op(op))
}

/// `ip route del ROUTE`: a missing route (`ESRCH`), device or namespace is fine.
pub(crate) fn delete(nl: &mut Netlink, op: &Op, netns: &Netns, spec: &RouteSpec) -> Result<()> {
    let Some(sock) = nl.sock(netns)? else {
        return Ok(());
    };
    let oif = match &spec.dev {
        Some(dev) => match link::index_of(sock, dev, op) {
            Ok(i) => Some(i),
            Err(Error::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(e),
        },
        None => None,
    };
    match sock.ack(RouteNetlinkMessage::DelRoute(message(spec, oif, true)), 0) {
        Err(e) if !e.is(libc::ESRCH) => Err(e.for_op(op)),
        _ => Ok(()),
    }
}
