//! [`view`]: links, addresses and main-table routes of one namespace, from three
//! dumps on its socket.

use crate::error::NlError;
use crate::socket::NlSocket;
use crate::wire;
use lanyard_core::kernel::View;
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
    let addresses = sock.dump(RouteNetlinkMessage::GetAddress(AddressMessage::default()))?;
    let mut routes = RouteMessage::default();
    // With strict checking the kernel filters by table itself; `wire::route` checks again.
    routes.header.table = wire::RT_TABLE_MAIN as u8;
    let routes = sock.dump(RouteNetlinkMessage::GetRoute(routes))?;
    Ok(View {
        links: links.iter().filter_map(|p| wire::link(p)).collect(),
        addresses: addresses.iter().filter_map(|p| wire::addr(p)).collect(),
        routes: routes.iter().filter_map(|p| wire::route(p)).collect(),
    })
}
