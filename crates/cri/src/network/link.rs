//! The link operation the tap wiring needs beyond listing (`carapace_netlink::link`).

use std::io;

use carapace_netlink::Netlink;
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;

pub use carapace_netlink::{by_name, links, mac_text, Link};

/// Sets the MTU and brings the link up.
pub fn set_mtu_up(nl: &mut Netlink, index: u32, mtu: u32) -> io::Result<()> {
    let mut m = LinkMessage::default();
    m.header.index = index;
    m.header.flags = LinkFlags::Up;
    m.header.change_mask = LinkFlags::Up;
    m.attributes.push(LinkAttribute::Mtu(mtu));
    nl.request(RouteNetlinkMessage::SetLink(m), 0)
}
