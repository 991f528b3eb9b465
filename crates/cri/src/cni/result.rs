//! A plugin's ADD result (CNI 1.0.0 and 0.4.0/0.3.x share this shape: interfaces, ips with an
//! interface index, routes, dns). The plugin is untrusted: every address is parsed, every index
//! checked; the JSON as received is kept to hand the next plugin as `prevResult`.

use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

/// An address with its prefix length, `10.0.0.2/24` or `fd00::2/64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl FromStr for IpNet {
    type Err = String;
    fn from_str(s: &str) -> Result<IpNet, String> {
        let (a, p) = s.split_once('/').ok_or_else(|| format!("{s:?} is not address/prefix"))?;
        let addr: IpAddr = a.parse().map_err(|_| format!("{a:?} is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = p
            .parse()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| format!("{s:?}: prefix {p:?} is not 0..={max}"))?;
        Ok(IpNet { addr, prefix })
    }
}

impl std::fmt::Display for IpNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Serialize for IpNet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for IpNet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<IpNet, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// An interface the plugins created or configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The netns path for interfaces inside the pod; empty for host-side ones (bridge, veth).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
}

/// One address, the interface it is on (index into `interfaces`), its gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    pub address: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub domain: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct Wire {
    #[serde(rename = "cniVersion", default)]
    cni_version: String,
    #[serde(default)]
    interfaces: Vec<Interface>,
    #[serde(default)]
    ips: Vec<IpConfig>,
    #[serde(default)]
    routes: Vec<Route>,
    #[serde(default)]
    dns: Dns,
}

/// A parsed, checked CNI result.
#[derive(Debug, Clone, PartialEq)]
pub struct CniResult {
    pub cni_version: String,
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Dns,
    raw: Value,
}

impl CniResult {
    /// Parses and checks a result object (from a plugin's stdout or the cache).
    pub fn from_value(raw: Value) -> Result<CniResult, String> {
        if !raw.is_object() {
            return Err("the result is not a JSON object".into());
        }
        if raw.get("ip4").is_some() || raw.get("ip6").is_some() {
            return Err(
                "a CNI 0.1/0.2 result (ip4/ip6) is not supported: use cniVersion 0.3.0 or later"
                    .into(),
            );
        }
        let w: Wire = serde_json::from_value(raw.clone()).map_err(|e| e.to_string())?;
        for (i, ip) in w.ips.iter().enumerate() {
            if let Some(n) = ip.interface {
                if n >= w.interfaces.len() {
                    return Err(format!(
                        "ips[{i}] names interface {n}, but the result has {} interfaces",
                        w.interfaces.len()
                    ));
                }
            }
            if let Some(gw) = ip.gateway {
                if gw.is_ipv4() != ip.address.addr.is_ipv4() {
                    return Err(format!(
                        "ips[{i}]: gateway {gw} is not of {}'s family",
                        ip.address
                    ));
                }
            }
        }
        Ok(CniResult {
            cni_version: w.cni_version,
            interfaces: w.interfaces,
            ips: w.ips,
            routes: w.routes,
            dns: w.dns,
            raw,
        })
    }

    /// Parses a plugin's stdout.
    pub fn from_json(bytes: &[u8]) -> Result<CniResult, String> {
        let v: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
        CniResult::from_value(v)
    }

    /// The result as the plugin gave it (the next plugin's `prevResult`; what the cache keeps).
    pub fn raw(&self) -> &Value {
        &self.raw
    }

    /// The index of the pod-side interface named `ifname` (in a netns), if the result has one.
    pub fn pod_interface(&self, ifname: &str) -> Option<usize> {
        self.interfaces.iter().position(|i| i.name == ifname && !i.sandbox.is_empty())
    }

    /// The addresses on the pod's `ifname`, IPv4 first (containerd's order: the first is the
    /// pod IP, the rest its additional IPs). Addresses without an interface index count as
    /// the pod's when no address names one (older plugins).
    pub fn pod_ips(&self, ifname: &str) -> Vec<IpConfig> {
        let iface = self.pod_interface(ifname);
        let any_indexed = self.ips.iter().any(|ip| ip.interface.is_some());
        let mut ips: Vec<IpConfig> = self
            .ips
            .iter()
            .filter(|ip| match (ip.interface, iface) {
                (Some(n), Some(i)) => n == i,
                (Some(_), None) => false,
                (None, _) => !any_indexed,
            })
            .cloned()
            .collect();
        ips.sort_by_key(|ip| !ip.address.addr.is_ipv4()); // stable: v4 first, order kept
        ips
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = r#"{
      "cniVersion": "1.0.0",
      "interfaces": [
        {"name": "cni0", "mac": "aa:aa:aa:aa:aa:01"},
        {"name": "veth1", "mac": "aa:aa:aa:aa:aa:02"},
        {"name": "eth0", "mac": "aa:aa:aa:aa:aa:03", "sandbox": "/run/netns/x"}],
      "ips": [
        {"address": "fd00::5/64", "gateway": "fd00::1", "interface": 2},
        {"address": "10.99.0.5/24", "gateway": "10.99.0.1", "interface": 2}],
      "routes": [{"dst": "0.0.0.0/0", "gw": "10.99.0.1"}, {"dst": "::/0"}],
      "dns": {"nameservers": ["10.96.0.10"], "search": ["svc"]}
    }"#;

    #[test]
    fn a_1_0_result_is_parsed_with_the_pod_ips_v4_first() {
        let r = CniResult::from_json(V1.as_bytes()).unwrap();
        assert_eq!(r.cni_version, "1.0.0");
        assert_eq!(r.pod_interface("eth0"), Some(2));
        assert_eq!(r.interfaces[2].mac, "aa:aa:aa:aa:aa:03");
        let ips: Vec<String> = r.pod_ips("eth0").iter().map(|i| i.address.to_string()).collect();
        assert_eq!(ips, ["10.99.0.5/24", "fd00::5/64"]);
        assert_eq!(r.routes[0].gw, Some("10.99.0.1".parse().unwrap()));
        assert_eq!(r.routes[1].dst.prefix, 0);
        assert_eq!(r.dns.nameservers, ["10.96.0.10"]);
        assert_eq!(CniResult::from_value(r.raw().clone()).unwrap(), r);
    }

    #[test]
    fn a_0_3_result_with_versions_and_no_indexes_is_read() {
        let r = CniResult::from_json(
            concat!(
                r#"{"cniVersion":"0.3.1","#,
                r#""ips":[{"version":"4","address":"10.1.0.2/16","gateway":"10.1.0.1"}]}"#
            )
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(r.pod_ips("eth0").len(), 1, "no index anywhere: the address is the pod's");
        assert!(r.interfaces.is_empty());
    }

    #[test]
    fn untrusted_results_are_checked() {
        let cases = [
            (r#"[]"#, "not a JSON object"),
            (r#"{"ips":[{"address":"10.0.0.1/24","interface":0}]}"#, "names interface 0"),
            (r#"{"ips":[{"address":"10.0.0.1/33"}]}"#, "prefix"),
            (r#"{"ips":[{"address":"10.0.0.300/24"}]}"#, "not an IP"),
            (r#"{"ips":[{"address":"10.0.0.1"}]}"#, "address/prefix"),
            (r#"{"ips":[{"address":"10.0.0.1/8","gateway":"fd00::1"}]}"#, "family"),
            (r#"{"ip4":{"ip":"10.0.0.1/8"}}"#, "0.1/0.2"),
            (r#"{"interfaces":"eth0"}"#, "invalid type"),
            ("nope", "not JSON"),
        ];
        for (text, want) in cases {
            let e = CniResult::from_json(text.as_bytes()).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
    }
}
