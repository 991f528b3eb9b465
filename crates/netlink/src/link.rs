//! The links of a socket's namespace.

use std::io;

use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;

use crate::socket::Netlink;

/// A link of the socket's namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<[u8; 6]>,
    pub mtu: u32,
    pub up: bool,
}

fn link_of(m: &LinkMessage) -> Link {
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
    l
}

/// Every link of the namespace.
pub fn links(nl: &mut Netlink) -> io::Result<Vec<Link>> {
    let msgs = nl.dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))?;
    Ok(msgs
        .iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(link_of(l)),
            _ => None,
        })
        .collect())
}

/// The link named `name`, if any.
pub fn by_name(nl: &mut Netlink, name: &str) -> io::Result<Option<Link>> {
    Ok(links(nl)?.into_iter().find(|l| l.name == name))
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn mac_text(m: [u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_are_lowercase_colon_separated() {
        assert_eq!(mac_text([0x02, 0, 0xab, 0x10, 0xff, 7]), "02:00:ab:10:ff:07");
    }
}
