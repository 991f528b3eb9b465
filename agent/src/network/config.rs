//! The checked form of a `ConfigureNetworkRequest`: every field parsed and
//! bounded before anything in the guest changes.

use std::net::IpAddr;

use carapace_agent_client::pb;

use super::error::NetError;

pub const MAX_INTERFACES: usize = 8;
pub const MAX_ADDRESSES: usize = 64;
pub const MAX_ROUTES: usize = 64;
pub const MIN_MTU: u32 = 68;
pub const MAX_MTU: u32 = 65535;

/// An address with its prefix length, checked against its family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub mac: [u8; 6],
    pub name: String,
    /// None: keep the device's.
    pub mtu: Option<u32>,
    pub addresses: Vec<Cidr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// None: the default route.
    pub destination: Option<Cidr>,
    pub gateway: Option<IpAddr>,
    /// Index into [`NetConfig::interfaces`].
    pub interface: usize,
}

impl Route {
    pub fn is_ipv6(&self) -> bool {
        match (self.destination, self.gateway) {
            (Some(d), _) => d.addr.is_ipv6(),
            (None, Some(g)) => g.is_ipv6(),
            (None, None) => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    pub interfaces: Vec<Interface>,
    pub routes: Vec<Route>,
    pub hostname: String,
}

fn invalid(msg: impl Into<String>) -> NetError {
    NetError::Invalid(msg.into())
}

/// "aa:bb:cc:dd:ee:ff" (either case) as bytes; unicast only.
pub fn parse_mac(s: &str) -> Result<[u8; 6], NetError> {
    let bad = || invalid(format!("mac {s:?}: not six hex octets separated by ':'"));
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in out.iter_mut() {
        let p = parts.next().ok_or_else(bad)?;
        if p.len() != 2 {
            return Err(bad());
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    if out[0] & 1 != 0 || out == [0; 6] {
        return Err(invalid(format!("mac {s:?}: not a unicast address")));
    }
    Ok(out)
}

/// A Linux interface name: 1..=15 bytes of letters, digits, `_`, `.`, `-`
/// (stricter than the kernel, which allows anything but '/', ':' and
/// whitespace), not "." or "..", not "lo".
pub fn valid_ifname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s != "."
        && s != ".."
        && s != "lo"
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// A hostname for /etc/hosts: DNS labels of 1..=63 bytes of letters,
/// digits and '-' (not at either end), at most 253 bytes in all.
pub fn valid_hostname(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

fn parse_ip(what: &str, s: &str) -> Result<IpAddr, NetError> {
    s.parse::<IpAddr>().map_err(|_| invalid(format!("{what} {s:?}: not an IP address")))
}

fn parse_cidr(what: &str, addr: &str, prefix: u32) -> Result<Cidr, NetError> {
    let addr = parse_ip(what, addr)?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        return Err(invalid(format!("{what} {addr}/{prefix}: prefix longer than {max}")));
    }
    Ok(Cidr { addr, prefix: prefix as u8 })
}

fn unusable(a: IpAddr) -> bool {
    a.is_unspecified() || a.is_multicast() || a.is_loopback()
}

impl NetConfig {
    /// Checks and parses the request.
    pub fn parse(req: &pb::ConfigureNetworkRequest) -> Result<NetConfig, NetError> {
        if req.interfaces.is_empty() || req.interfaces.len() > MAX_INTERFACES {
            return Err(invalid(format!("interfaces: 1 to {MAX_INTERFACES} expected")));
        }
        if req.routes.len() > MAX_ROUTES {
            return Err(invalid(format!("routes: more than {MAX_ROUTES}")));
        }
        let total: usize = req.interfaces.iter().map(|i| i.addresses.len()).sum();
        if total > MAX_ADDRESSES {
            return Err(invalid(format!("interfaces.addresses: more than {MAX_ADDRESSES}")));
        }
        if !req.hostname.is_empty() && !valid_hostname(&req.hostname) {
            return Err(invalid(format!("hostname {:?}: not a DNS name", req.hostname)));
        }
        let mut interfaces: Vec<Interface> = Vec::new();
        for i in &req.interfaces {
            let mac = parse_mac(&i.mac)?;
            if !valid_ifname(&i.name) {
                return Err(invalid(format!(
                    "interface name {:?}: 1..15 of [A-Za-z0-9_.-], not \"lo\"",
                    i.name
                )));
            }
            if interfaces.iter().any(|o| o.name == i.name || o.mac == mac) {
                return Err(invalid(format!("interface {:?} / {}: given twice", i.name, i.mac)));
            }
            let mtu = match i.mtu {
                0 => None,
                m if (MIN_MTU..=MAX_MTU).contains(&m) => Some(m),
                m => {
                    return Err(invalid(format!(
                        "interface {}: mtu {m} not in {MIN_MTU}..={MAX_MTU}",
                        i.name
                    )))
                }
            };
            let mut addresses = Vec::new();
            for a in &i.addresses {
                let c = parse_cidr("address", &a.address, a.prefix_len)?;
                if unusable(c.addr) {
                    return Err(invalid(format!("address {}: not a unicast address", c.addr)));
                }
                if !addresses.contains(&c) {
                    addresses.push(c);
                }
            }
            interfaces.push(Interface { mac, name: i.name.clone(), mtu, addresses });
        }
        let mut routes = Vec::new();
        for r in &req.routes {
            let destination = if r.destination.is_empty() {
                if r.prefix_len != 0 {
                    return Err(invalid("route: default route (destination \"\") with a prefix"));
                }
                None
            } else {
                Some(parse_cidr("route destination", &r.destination, r.prefix_len)?)
            };
            let gateway = if r.gateway.is_empty() {
                None
            } else {
                let g = parse_ip("route gateway", &r.gateway)?;
                if unusable(g) {
                    return Err(invalid(format!("route gateway {g}: not a unicast address")));
                }
                Some(g)
            };
            match (destination, gateway) {
                (None, None) => {
                    return Err(invalid("route: a default route needs a gateway"));
                }
                (Some(d), Some(g)) if d.addr.is_ipv4() != g.is_ipv4() => {
                    return Err(invalid(format!(
                        "route {}/{} via {g}: mixed families",
                        d.addr, d.prefix
                    )));
                }
                _ => {}
            }
            let interface = if r.interface.is_empty() {
                if gateway.is_none() {
                    return Err(invalid("route: an on-link route (no gateway) needs an interface"));
                }
                0
            } else {
                interfaces.iter().position(|i| i.name == r.interface).ok_or_else(|| {
                    invalid(format!("route interface {:?}: not one of the interfaces", r.interface))
                })?
            };
            routes.push(Route { destination, gateway, interface });
        }
        Ok(NetConfig { interfaces, routes, hostname: req.hostname.clone() })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn request() -> pb::ConfigureNetworkRequest {
        pb::ConfigureNetworkRequest {
            interfaces: vec![pb::NetworkInterface {
                mac: "02:42:0A:58:00:04".into(),
                name: "eth0".into(),
                mtu: 1450,
                addresses: vec![
                    pb::IpAddress { address: "10.88.0.4".into(), prefix_len: 16 },
                    pb::IpAddress { address: "fd00::4".into(), prefix_len: 64 },
                ],
            }],
            routes: vec![
                pb::NetworkRoute {
                    destination: String::new(),
                    prefix_len: 0,
                    gateway: "10.88.0.1".into(),
                    interface: "eth0".into(),
                },
                pb::NetworkRoute {
                    destination: "169.254.1.1".into(),
                    prefix_len: 32,
                    gateway: String::new(),
                    interface: "eth0".into(),
                },
            ],
            hostname: "web-0".into(),
        }
    }

    #[test]
    fn a_good_request_parses() {
        let c = NetConfig::parse(&request()).unwrap();
        assert_eq!(c.interfaces[0].mac, [0x02, 0x42, 0x0a, 0x58, 0, 4]);
        assert_eq!(c.interfaces[0].mtu, Some(1450));
        assert_eq!(c.interfaces[0].addresses.len(), 2);
        assert_eq!(c.routes[0].destination, None);
        assert_eq!(c.routes[0].gateway, Some("10.88.0.1".parse().unwrap()));
        assert_eq!(c.routes[1].destination.unwrap().prefix, 32);
        assert!(!c.routes[1].is_ipv6());
    }

    #[test]
    fn bad_requests_are_invalid_argument() {
        type Edit = fn(&mut pb::ConfigureNetworkRequest);
        let cases: Vec<(&str, Edit)> = vec![
            ("no interfaces", |r| r.interfaces.clear()),
            ("too many interfaces", |r| {
                let i = r.interfaces[0].clone();
                r.interfaces = (0..9)
                    .map(|n| pb::NetworkInterface {
                        mac: format!("02:00:00:00:00:{n:02x}"),
                        name: format!("eth{n}"),
                        ..i.clone()
                    })
                    .collect();
            }),
            ("multicast mac", |r| r.interfaces[0].mac = "01:00:5e:00:00:01".into()),
            ("short mac", |r| r.interfaces[0].mac = "02:42:0a:58:00".into()),
            ("long mac", |r| r.interfaces[0].mac = "02:42:0a:58:00:04:05".into()),
            ("hex mac", |r| r.interfaces[0].mac = "02:42:0a:58:00:g4".into()),
            ("name with /", |r| r.interfaces[0].name = "a/b".into()),
            ("long name", |r| r.interfaces[0].name = "a".repeat(16)),
            ("name lo", |r| r.interfaces[0].name = "lo".into()),
            ("empty name", |r| r.interfaces[0].name.clear()),
            ("small mtu", |r| r.interfaces[0].mtu = 67),
            ("huge mtu", |r| r.interfaces[0].mtu = 65536),
            ("bad ip", |r| r.interfaces[0].addresses[0].address = "10.88.0".into()),
            ("long v4 prefix", |r| r.interfaces[0].addresses[0].prefix_len = 33),
            ("long v6 prefix", |r| r.interfaces[0].addresses[1].prefix_len = 129),
            ("multicast ip", |r| r.interfaces[0].addresses[0].address = "224.0.0.1".into()),
            ("too many addresses", |r| {
                r.interfaces[0].addresses = (0..65)
                    .map(|n| pb::IpAddress { address: format!("10.0.0.{n}"), prefix_len: 24 })
                    .collect()
            }),
            ("too many routes", |r| {
                let x = r.routes[0].clone();
                r.routes = vec![x; 65];
            }),
            ("default without gateway", |r| r.routes[0].gateway.clear()),
            ("default with prefix", |r| r.routes[0].prefix_len = 8),
            ("unknown interface", |r| r.routes[0].interface = "eth1".into()),
            ("on-link without interface", |r| r.routes[1].interface.clear()),
            ("mixed families", |r| {
                r.routes[1].gateway = "fd00::1".into();
            }),
            ("bad hostname", |r| r.hostname = "a b".into()),
            ("hostname newline", |r| r.hostname = "a\n1.2.3.4 evil".into()),
        ];
        for (what, edit) in cases {
            let mut r = request();
            edit(&mut r);
            let e = NetConfig::parse(&r).expect_err(what);
            assert!(matches!(e, NetError::Invalid(_)), "{what}: {e}");
            let s: tonic::Status = e.into();
            assert_eq!(s.code(), tonic::Code::InvalidArgument, "{what}");
        }
    }

    #[test]
    fn name_and_hostname_rules() {
        assert!(valid_ifname("eth0"));
        assert!(valid_ifname("net1.100"));
        assert!(!valid_ifname(".."));
        assert!(!valid_ifname("eth 0"));
        assert!(valid_hostname("web-0.example"));
        assert!(!valid_hostname("-a"));
        assert!(!valid_hostname("a..b"));
        assert!(!valid_hostname(&"a".repeat(64)));
    }
}
