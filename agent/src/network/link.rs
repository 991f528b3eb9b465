//! rtnetlink operations on links, addresses and routes, each in the network
//! namespace of the [`Netlink`] socket it is given.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, BorrowedFd};

use netlink_packet_core::{NLM_F_CREATE, NLM_F_REPLACE};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressScope,
};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::config::Cidr;
use carapace_netlink::Netlink;
pub use carapace_netlink::{links, Link};

/// The link with this MAC, if any.
pub fn find_by_mac(nl: &mut Netlink, mac: [u8; 6]) -> io::Result<Option<Link>> {
    Ok(links(nl)?.into_iter().find(|l| l.mac == Some(mac)))
}

fn set_link(nl: &mut Netlink, index: u32, f: impl FnOnce(&mut LinkMessage)) -> io::Result<()> {
    let mut m = LinkMessage::default();
    m.header.index = index;
    f(&mut m);
    nl.request(RouteNetlinkMessage::SetLink(m), 0)
}

/// Moves the link into the network namespace `netns` (an open namespace file).
pub fn move_to_netns(nl: &mut Netlink, index: u32, netns: BorrowedFd<'_>) -> io::Result<()> {
    set_link(nl, index, |m| m.attributes.push(LinkAttribute::NetNsFd(netns.as_raw_fd())))
}

/// Brings the link up or down.
pub fn set_up(nl: &mut Netlink, index: u32, up: bool) -> io::Result<()> {
    set_link(nl, index, |m| {
        m.header.flags = if up { LinkFlags::Up } else { LinkFlags::empty() };
        m.header.change_mask = LinkFlags::Up;
    })
}

/// Renames the link (it must be down).
pub fn rename(nl: &mut Netlink, index: u32, name: &str) -> io::Result<()> {
    set_link(nl, index, |m| m.attributes.push(LinkAttribute::IfName(name.to_owned())))
}

pub fn set_mtu(nl: &mut Netlink, index: u32, mtu: u32) -> io::Result<()> {
    set_link(nl, index, |m| m.attributes.push(LinkAttribute::Mtu(mtu)))
}

/// Adds (or replaces) an address; IPv6 ones without duplicate address
/// detection, so they are usable at once.
pub fn add_address(nl: &mut Netlink, index: u32, a: Cidr) -> io::Result<()> {
    let mut m = AddressMessage::default();
    m.header.index = index;
    m.header.prefix_len = a.prefix;
    m.header.scope = AddressScope::Universe;
    match a.addr {
        IpAddr::V4(_) => {
            m.header.family = AddressFamily::Inet;
            m.attributes.push(AddressAttribute::Local(a.addr));
            m.attributes.push(AddressAttribute::Address(a.addr));
        }
        IpAddr::V6(_) => {
            m.header.family = AddressFamily::Inet6;
            m.header.flags = AddressHeaderFlags::Nodad;
            m.attributes.push(AddressAttribute::Address(a.addr));
            m.attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
    }
    nl.request(RouteNetlinkMessage::NewAddress(m), NLM_F_CREATE | NLM_F_REPLACE)
}

/// `addr` with the host bits beyond `prefix` cleared.
pub fn network_of(c: Cidr) -> IpAddr {
    match c.addr {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let mask = if c.prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(c.prefix)) };
            IpAddr::V4((bits & mask).into())
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let mask = if c.prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(c.prefix)) };
            IpAddr::V6((bits & mask).into())
        }
    }
}

/// Adds (or replaces) a route in the main table: via `gateway`, or on-link
/// (scope link) without one; `destination` None is the default route of the
/// gateway's family.
pub fn add_route(
    nl: &mut Netlink,
    index: u32,
    destination: Option<Cidr>,
    gateway: Option<IpAddr>,
) -> io::Result<()> {
    let v6 = destination.map(|d| d.addr.is_ipv6()).or(gateway.map(|g| g.is_ipv6()));
    let mut m = RouteMessage::default();
    m.header.address_family =
        if v6 == Some(true) { AddressFamily::Inet6 } else { AddressFamily::Inet };
    m.header.table = RouteHeader::RT_TABLE_MAIN;
    m.header.protocol = RouteProtocol::Boot;
    m.header.kind = RouteType::Unicast;
    m.header.scope = if gateway.is_some() { RouteScope::Universe } else { RouteScope::Link };
    if let Some(d) = destination {
        m.header.destination_prefix_length = d.prefix;
        m.attributes.push(RouteAttribute::Destination(RouteAddress::from(network_of(d))));
    }
    if let Some(g) = gateway {
        m.attributes.push(RouteAttribute::Gateway(RouteAddress::from(g)));
    }
    m.attributes.push(RouteAttribute::Oif(index));
    nl.request(RouteNetlinkMessage::NewRoute(m), NLM_F_CREATE | NLM_F_REPLACE)
}

/// The addresses of the link (for tests and logs).
pub fn addresses(nl: &mut Netlink, index: u32) -> io::Result<Vec<Cidr>> {
    let msgs = nl.dump(RouteNetlinkMessage::GetAddress(AddressMessage::default()))?;
    let mut out = Vec::new();
    for m in msgs {
        if let RouteNetlinkMessage::NewAddress(a) = m {
            if a.header.index != index {
                continue;
            }
            let addr = a.attributes.iter().find_map(|x| match x {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let addr = addr.or_else(|| {
                a.attributes.iter().find_map(|x| match x {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })
            });
            if let Some(addr) = addr {
                out.push(Cidr { addr, prefix: a.header.prefix_len });
            }
        }
    }
    Ok(out)
}

/// A route of the main table: (destination or None for default, prefix,
/// gateway, output interface).
pub type RouteInfo = (Option<IpAddr>, u8, Option<IpAddr>, Option<u32>);

/// The main-table routes of one family (for tests and logs).
pub fn routes(nl: &mut Netlink, v6: bool) -> io::Result<Vec<RouteInfo>> {
    let mut q = RouteMessage::default();
    q.header.address_family = if v6 { AddressFamily::Inet6 } else { AddressFamily::Inet };
    let msgs = nl.dump(RouteNetlinkMessage::GetRoute(q))?;
    let mut out = Vec::new();
    for m in msgs {
        let RouteNetlinkMessage::NewRoute(r) = m else { continue };
        if r.header.table != RouteHeader::RT_TABLE_MAIN {
            continue;
        }
        let ip = |a: &RouteAddress| match a {
            RouteAddress::Inet(v) => Some(IpAddr::V4(*v)),
            RouteAddress::Inet6(v) => Some(IpAddr::V6(*v)),
            _ => None,
        };
        let (mut dst, mut gw, mut oif) = (None, None, None);
        for a in &r.attributes {
            match a {
                RouteAttribute::Destination(d) => dst = ip(d),
                RouteAttribute::Gateway(g) => gw = ip(g),
                RouteAttribute::Oif(i) => oif = Some(*i),
                _ => {}
            }
        }
        out.push((dst, r.header.destination_prefix_length, gw, oif));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_clear_host_bits() {
        let c = |s: &str, p| Cidr { addr: s.parse().unwrap(), prefix: p };
        assert_eq!(network_of(c("10.88.3.4", 16)), "10.88.0.0".parse::<IpAddr>().unwrap());
        assert_eq!(network_of(c("10.88.3.4", 0)), "0.0.0.0".parse::<IpAddr>().unwrap());
        assert_eq!(network_of(c("10.88.3.4", 32)), "10.88.3.4".parse::<IpAddr>().unwrap());
        assert_eq!(network_of(c("fd00::1:4", 112)), "fd00::1:0".parse::<IpAddr>().unwrap());
        assert_eq!(network_of(c("fd00::4", 128)), "fd00::4".parse::<IpAddr>().unwrap());
    }
}
