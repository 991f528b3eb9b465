//! The few link operations the tap wiring needs, over rtnetlink.

use std::io;

use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;

use super::netlink::Netlink;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<[u8; 6]>,
    pub mtu: u32,
    pub up: bool,
}

/// Every link of the socket's namespace.
pub fn links(nl: &mut Netlink) -> io::Result<Vec<Link>> {
    let msgs = nl.dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))?;
    let mut out = Vec::new();
    for m in msgs {
        let RouteNetlinkMessage::NewLink(m) = m else { continue };
        let mut l = Link {
            index: m.header.index,
            name: String::new(),
            mac: None,
            mtu: 0,
            up: m.header.flags.contains(LinkFlags::Up),
        };
        for a in &m.attributes {
            match a {
                LinkAttribute::IfName(n) => l.name = n.clone(),
                LinkAttribute::Mtu(v) => l.mtu = *v,
                LinkAttribute::Address(b) => l.mac = <[u8; 6]>::try_from(b.as_slice()).ok(),
                _ => {}
            }
        }
        out.push(l);
    }
    Ok(out)
}

pub fn by_name(nl: &mut Netlink, name: &str) -> io::Result<Option<Link>> {
    Ok(links(nl)?.into_iter().find(|l| l.name == name))
}

/// Sets the MTU and brings the link up.
pub fn set_mtu_up(nl: &mut Netlink, index: u32, mtu: u32) -> io::Result<()> {
    let mut m = LinkMessage::default();
    m.header.index = index;
    m.header.flags = LinkFlags::Up;
    m.header.change_mask = LinkFlags::Up;
    m.attributes.push(LinkAttribute::Mtu(mtu));
    nl.request(RouteNetlinkMessage::SetLink(m), 0)
}

pub fn mac_text(m: [u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}
