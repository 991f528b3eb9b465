//! The agent's ConfigureNetworkRequest from the pieces of a CNI result, in
//! plain types (the CNI code maps its result onto them).

use std::net::IpAddr;

use carapace_agent_client::pb;

/// The interface name in the pod, in the guest as on the host (CNI_IFNAME).
pub const POD_IFNAME: &str = "eth0";

/// One IP of the CNI result (`ips[]`): address, prefix, gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodIp {
    pub address: IpAddr,
    pub prefix_len: u8,
    pub gateway: Option<IpAddr>,
}

/// One route of the CNI result (`routes[]`): `destination` None or a /0 is
/// the default route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodRoute {
    pub destination: Option<(IpAddr, u8)>,
    pub gateway: Option<IpAddr>,
}

/// The request for one NIC named [`POD_IFNAME`] with `mac` and `mtu` (the
/// CNI interface's, from [`super::TapAttachment`]). Routes as the CNI
/// libraries apply a result in a netns: a route without a gateway goes via
/// the gateway of the first IP of its family that has one, and is on-link
/// when there is none.
pub fn configure_network_request(
    ips: &[PodIp],
    routes: &[PodRoute],
    mac: &str,
    mtu: u32,
    hostname: &str,
) -> pb::ConfigureNetworkRequest {
    let mut addresses: Vec<pb::IpAddress> = Vec::new();
    for ip in ips {
        let a =
            pb::IpAddress { address: ip.address.to_string(), prefix_len: u32::from(ip.prefix_len) };
        if !addresses.contains(&a) {
            addresses.push(a);
        }
    }
    let family_gw =
        |v6: bool| ips.iter().filter(|i| i.address.is_ipv6() == v6).find_map(|i| i.gateway);
    let routes = routes
        .iter()
        .map(|r| {
            let v6 = match (r.destination, r.gateway) {
                (Some((d, _)), _) => d.is_ipv6(),
                (None, Some(g)) => g.is_ipv6(),
                (None, None) => false,
            };
            let (destination, prefix_len) = match r.destination {
                Some((_, 0)) | None => (String::new(), 0),
                Some((d, p)) => (d.to_string(), u32::from(p)),
            };
            let gateway = r.gateway.or_else(|| family_gw(v6));
            pb::NetworkRoute {
                destination,
                prefix_len,
                gateway: gateway.map(|g| g.to_string()).unwrap_or_default(),
                interface: POD_IFNAME.to_owned(),
            }
        })
        .collect();
    pb::ConfigureNetworkRequest {
        interfaces: vec![pb::NetworkInterface {
            mac: mac.to_owned(),
            name: POD_IFNAME.to_owned(),
            mtu,
            addresses,
        }],
        routes,
        hostname: hostname.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_dual_stack_result_becomes_one_nic_with_its_routes() {
        let ips = [
            PodIp { address: ip("10.88.0.4"), prefix_len: 16, gateway: Some(ip("10.88.0.1")) },
            PodIp { address: ip("fd00::4"), prefix_len: 64, gateway: Some(ip("fd00::1")) },
            PodIp { address: ip("10.88.0.4"), prefix_len: 16, gateway: None },
        ];
        let routes = [
            PodRoute { destination: Some((ip("0.0.0.0"), 0)), gateway: None },
            PodRoute { destination: Some((ip("::"), 0)), gateway: None },
            PodRoute { destination: Some((ip("10.1.0.0"), 16)), gateway: Some(ip("10.88.0.9")) },
        ];
        let r = configure_network_request(&ips, &routes, "02:42:0a:58:00:04", 1450, "web-0");
        assert_eq!(r.hostname, "web-0");
        let nic = &r.interfaces[0];
        assert_eq!(
            (nic.name.as_str(), nic.mac.as_str(), nic.mtu),
            ("eth0", "02:42:0a:58:00:04", 1450)
        );
        let addrs: Vec<(&str, u32)> =
            nic.addresses.iter().map(|a| (a.address.as_str(), a.prefix_len)).collect();
        assert_eq!(addrs, [("10.88.0.4", 16), ("fd00::4", 64)]);
        let rs: Vec<(&str, u32, &str)> = r
            .routes
            .iter()
            .map(|x| (x.destination.as_str(), x.prefix_len, x.gateway.as_str()))
            .collect();
        assert_eq!(rs, [("", 0, "10.88.0.1"), ("", 0, "fd00::1"), ("10.1.0.0", 16, "10.88.0.9")]);
        assert!(r.routes.iter().all(|x| x.interface == "eth0"));
    }

    #[test]
    fn a_route_without_any_gateway_is_on_link() {
        let ips = [PodIp { address: ip("10.88.0.4"), prefix_len: 32, gateway: None }];
        let routes = [PodRoute { destination: Some((ip("169.254.1.1"), 32)), gateway: None }];
        let r = configure_network_request(&ips, &routes, "02:00:00:00:00:01", 0, "");
        assert_eq!(r.routes[0].gateway, "");
        assert_eq!(r.routes[0].destination, "169.254.1.1");
    }
}
