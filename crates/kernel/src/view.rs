//! [`view`]: links, addresses and main-table routes of one namespace, from three
//! dumps on its socket; [`links`]: a few named links and their addresses, from one
//! get and one filtered dump per link, whatever the size of the namespace.

use crate::error::NlError;
use crate::socket::NlSocket;
use crate::wire;
use lanyard_core::kernel::View;
use lanyard_core::name::IfName;
use netlink_packet_route::address::AddressMessage;
use netlink_packet_route::link::{LinkAttribute, LinkExtentMask, LinkMessage};
use netlink_packet_route::route::RouteMessage;
use netlink_packet_route::RouteNetlinkMessage;

/// Dumps the namespace `sock` lives in.
pub(crate) fn view(sock: &mut NlSocket) -> Result<View, NlError> {
    let mut links = LinkMessage::default();
    links
        .attributes
        .push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
    let links = sock.dump(RouteNetlinkMessage::GetLink(links))?;
    sock.forget_indexes();
    let addresses = sock.dump(RouteNetlinkMessage::GetAddress(AddressMessage::default()))?;
    let mut routes = RouteMessage::default();
    // With strict checking the kernel filters by table itself; `wire::route` checks again.
    routes.header.table = wire::RT_TABLE_MAIN as u8;
    let routes = sock.dump(RouteNetlinkMessage::GetRoute(routes))?;
    let links: Vec<_> = links.iter().filter_map(|p| wire::link(p)).collect();
    for l in &links {
        sock.remember(&l.name, Some(l.index));
    }
    Ok(View {
        links,
        addresses: addresses.iter().filter_map(|p| wire::addr(p)).collect(),
        routes: routes.iter().filter_map(|p| wire::route(p)).collect(),
    })
}

/// The links called `names` in `sock`'s namespace (missing ones left out) with their
/// addresses; no routes. Each link is one `RTM_GETLINK` by name and one address dump
/// the kernel filters to its index (strict checking), so the cost does not grow with
/// the number of links, addresses and routes the namespace has.
pub(crate) fn links(sock: &mut NlSocket, names: &[IfName]) -> Result<View, NlError> {
    let mut v = View::default();
    sock.forget_indexes();
    for name in names {
        if v.link(name.as_str()).is_some() {
            continue;
        }
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        m.attributes
            .push(LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats]));
        let link = match sock.get(RouteNetlinkMessage::GetLink(m)) {
            Ok(p) => wire::link(&p).ok_or_else(|| NlError::Decode("short ifinfomsg".into()))?,
            Err(e) if e.is(libc::ENODEV) => continue,
            Err(e) => return Err(e),
        };
        sock.remember(&link.name, Some(link.index));
        let mut query = AddressMessage::default();
        query.header.index = link.index;
        let found = sock.dump(RouteNetlinkMessage::GetAddress(query))?;
        v.addresses.extend(
            found
                .iter()
                .filter_map(|p| wire::addr(p))
                .filter(|a| a.index == link.index),
        );
        v.links.push(link);
    }
    Ok(v)
}
