//! The `runtimeConfig` handed to plugins for the capabilities they declare, as containerd
//! builds it: `portMappings` (the pod's host ports), `dns` (the pod's DNS config) and
//! `bandwidth` (the kubernetes.io/ingress-bandwidth and egress-bandwidth annotations).

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_cri::v1 as cri;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::error::CniError;
use super::netconf::NetworkConfigList;
use super::quantity::parse_quantity;

pub const INGRESS_ANNOTATION: &str = "kubernetes.io/ingress-bandwidth";
pub const EGRESS_ANNOTATION: &str = "kubernetes.io/egress-bandwidth";
/// Kubernetes' bounds on a bandwidth annotation (bits per second).
const MIN_BANDWIDTH: u64 = 1000;
const MAX_BANDWIDTH: u64 = 1_000_000_000_000_000;
/// The burst containerd gives with a rate (bits).
const BURST: u64 = u32::MAX as u64;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    pub host_port: i32,
    pub container_port: i32,
    pub protocol: String,
    #[serde(rename = "hostIP", default, skip_serializing_if = "String::is_empty")]
    pub host_ip: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsRuntimeConfig {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub searches: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bandwidth {
    pub ingress_rate: u64,
    pub ingress_burst: u64,
    pub egress_rate: u64,
    pub egress_burst: u64,
}

/// Everything a plugin may be given as runtime config for one pod.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeConfig {
    pub port_mappings: Vec<PortMapping>,
    pub dns: DnsRuntimeConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<Bandwidth>,
}

fn protocol_name(p: i32) -> Result<&'static str, CniError> {
    match cri::Protocol::try_from(p) {
        Ok(cri::Protocol::Tcp) => Ok("tcp"),
        Ok(cri::Protocol::Udp) => Ok("udp"),
        Ok(cri::Protocol::Sctp) => Ok("sctp"),
        Err(_) => Err(CniError::InvalidArgument(format!("port_mappings: unknown protocol {p}"))),
    }
}

/// The pod's host-port mappings (mappings without a host port are not the network's business).
pub fn port_mappings(ports: &[cri::PortMapping]) -> Result<Vec<PortMapping>, CniError> {
    let mut out = Vec::new();
    for p in ports {
        if p.host_port <= 0 {
            continue;
        }
        let in_range = |v: i32| (1..=65535).contains(&v);
        if !in_range(p.host_port) || !in_range(p.container_port) {
            return Err(CniError::InvalidArgument(format!(
                "port_mappings: host port {} / container port {} must be 1..=65535",
                p.host_port, p.container_port
            )));
        }
        if !p.host_ip.is_empty() && p.host_ip.parse::<IpAddr>().is_err() {
            return Err(CniError::InvalidArgument(format!(
                "port_mappings: host_ip {:?} is not an IP address",
                p.host_ip
            )));
        }
        out.push(PortMapping {
            host_port: p.host_port,
            container_port: p.container_port,
            protocol: protocol_name(p.protocol)?.to_string(),
            host_ip: p.host_ip.clone(),
        });
    }
    Ok(out)
}

fn bandwidth_value(
    annotations: &BTreeMap<String, String>,
    key: &str,
) -> Result<Option<u64>, CniError> {
    let Some(v) = annotations.get(key) else { return Ok(None) };
    let bits = parse_quantity(v.trim())
        .map_err(|e| CniError::InvalidArgument(format!("annotation {key}: {e}")))?;
    if bits < MIN_BANDWIDTH {
        return Err(CniError::InvalidArgument(format!(
            "annotation {key}={v:?} is unreasonably small (< 1kbit)"
        )));
    }
    if bits > MAX_BANDWIDTH {
        return Err(CniError::InvalidArgument(format!(
            "annotation {key}={v:?} is unreasonably large (> 1Pbit)"
        )));
    }
    Ok(Some(bits))
}

/// The bandwidth limits of the annotations, if any.
pub fn bandwidth(annotations: &BTreeMap<String, String>) -> Result<Option<Bandwidth>, CniError> {
    let ingress = bandwidth_value(annotations, INGRESS_ANNOTATION)?;
    let egress = bandwidth_value(annotations, EGRESS_ANNOTATION)?;
    if ingress.is_none() && egress.is_none() {
        return Ok(None);
    }
    let mut b = Bandwidth::default();
    if let Some(r) = ingress {
        b.ingress_rate = r;
        b.ingress_burst = BURST;
    }
    if let Some(r) = egress {
        b.egress_rate = r;
        b.egress_burst = BURST;
    }
    Ok(Some(b))
}

impl RuntimeConfig {
    /// From the pod's request fields (checked: an InvalidArgument names the bad one).
    pub fn build(
        ports: &[cri::PortMapping],
        dns: Option<&cri::DnsConfig>,
        annotations: &BTreeMap<String, String>,
    ) -> Result<RuntimeConfig, CniError> {
        Ok(RuntimeConfig {
            port_mappings: port_mappings(ports)?,
            dns: dns
                .map(|d| DnsRuntimeConfig {
                    servers: d.servers.clone(),
                    searches: d.searches.clone(),
                    options: d.options.clone(),
                })
                .unwrap_or_default(),
            bandwidth: bandwidth(annotations)?,
        })
    }

    /// The `runtimeConfig` object for plugin `i` of `list`: only the capabilities it declares.
    pub fn for_plugin(&self, list: &NetworkConfigList, i: usize) -> Option<Map<String, Value>> {
        let mut m = Map::new();
        let mut put = |cap: &str, v: Value| {
            if list.has_capability(i, cap) {
                m.insert(cap.to_string(), v);
            }
        };
        put("portMappings", serde_json::to_value(&self.port_mappings).unwrap_or(Value::Null));
        put("dns", serde_json::to_value(&self.dns).unwrap_or(Value::Null));
        if let Some(b) = &self.bandwidth {
            put("bandwidth", serde_json::to_value(b).unwrap_or(Value::Null));
        }
        (!m.is_empty()).then_some(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pm(host: i32, container: i32, proto: cri::Protocol, ip: &str) -> cri::PortMapping {
        cri::PortMapping {
            protocol: proto as i32,
            container_port: container,
            host_port: host,
            host_ip: ip.into(),
        }
    }

    #[test]
    fn port_mappings_skip_those_without_a_host_port_and_lowercase_protocols() {
        let got = port_mappings(&[
            pm(8080, 80, cri::Protocol::Tcp, ""),
            pm(0, 81, cri::Protocol::Tcp, ""),
            pm(5353, 53, cri::Protocol::Udp, "127.0.0.1"),
        ])
        .unwrap();
        let json = serde_json::to_string(&got).unwrap();
        assert_eq!(
            json,
            concat!(
                r#"[{"hostPort":8080,"containerPort":80,"protocol":"tcp"},"#,
                r#"{"hostPort":5353,"containerPort":53,"protocol":"udp","hostIP":"127.0.0.1"}]"#
            )
        );
        assert!(port_mappings(&[pm(70000, 80, cri::Protocol::Tcp, "")]).is_err());
        assert!(port_mappings(&[pm(80, 80, cri::Protocol::Tcp, "nope")]).is_err());
    }

    #[test]
    fn bandwidth_annotations_become_bits_per_second() {
        let mut a = BTreeMap::new();
        assert_eq!(bandwidth(&a).unwrap(), None);
        a.insert(INGRESS_ANNOTATION.to_string(), "10M".to_string());
        let b = bandwidth(&a).unwrap().unwrap();
        assert_eq!((b.ingress_rate, b.ingress_burst, b.egress_rate), (10_000_000, BURST, 0));
        a.insert(EGRESS_ANNOTATION.to_string(), "1Gi".to_string());
        assert_eq!(bandwidth(&a).unwrap().unwrap().egress_rate, 1 << 30);
        for bad in ["10", "2P", "fast"] {
            a.insert(EGRESS_ANNOTATION.to_string(), bad.to_string());
            let e = bandwidth(&a).unwrap_err().to_string();
            assert!(e.contains(EGRESS_ANNOTATION), "{bad}: {e}");
        }
    }

    #[test]
    fn plugins_get_only_the_capabilities_they_declare() {
        let list = NetworkConfigList::from_conflist(
            br#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"bridge"},
            {"type":"portmap","capabilities":{"portMappings":true,"dns":false}},
            {"type":"bandwidth","capabilities":{"bandwidth":true}}]}"#,
            "t",
        )
        .unwrap();
        let dns = cri::DnsConfig { servers: vec!["10.0.0.10".into()], ..Default::default() };
        let rc = RuntimeConfig::build(
            &[pm(80, 8080, cri::Protocol::Tcp, "")],
            Some(&dns),
            &BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(rc.for_plugin(&list, 0), None);
        let p = Value::Object(rc.for_plugin(&list, 1).unwrap());
        assert_eq!(p["portMappings"][0]["hostPort"], 80);
        assert!(p.get("dns").is_none());
        assert_eq!(rc.for_plugin(&list, 2), None, "no annotation: no bandwidth");
    }
}
