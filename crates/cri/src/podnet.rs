//! A pod's network for its lifetime (issue 12): set up before its VM starts (CNI ADD in the
//! pod's named netns, then the tap wired to the CNI interface), handed to the VM (the tap as
//! the VMM's virtio-net backend, the addresses and routes to the agent's ConfigureNetwork),
//! torn down when the pod stops or goes away (CNI DEL from the cache, netns removed; the tap
//! goes with the VMM's descriptor). What was set up is summed up in the sandbox record
//! ([`NetworkSummary`]): PodSandboxStatus reads its IPs, and a restarted daemon finds a running
//! pod's network there without re-running anything.
//!
//! With `[cni] enabled = false` a pod gets no network at all (loopback only in the guest).

use std::sync::Arc;

use carapace_agent_client::pb;
use k8s_cri::v1 as cri;

use crate::cni::{CniError, CniManager, PodIdentity, PodNetwork};
use crate::containers::agent;
use crate::error::CriError;
use crate::network::{self, PodIp, PodRoute, TapAttachment};
use crate::record::{NetworkSummary, SandboxRecord};
use crate::vmm::VmNet;

/// What RunPodSandbox hands on to the VM once the host side is set up.
#[derive(Debug)]
pub struct PodNetSetup {
    /// Goes into the sandbox record.
    pub summary: NetworkSummary,
    /// The tap for the VMM (dropped after the spawn: the VMM keeps its own copy).
    pub net: VmNet,
    /// The agent's ConfigureNetwork, sent once the agent answers.
    pub request: pb::ConfigureNetworkRequest,
}

/// The addresses of the pod's interface in the agent's terms (IPv4 first).
fn pod_ips(pn: &PodNetwork) -> Vec<PodIp> {
    pn.ip_configs()
        .iter()
        .map(|c| PodIp {
            address: c.address.addr,
            prefix_len: c.address.prefix,
            gateway: c.gateway,
        })
        .collect()
}

/// The routes of the result in the agent's terms.
fn pod_routes(pn: &PodNetwork) -> Vec<PodRoute> {
    pn.result
        .routes
        .iter()
        .map(|r| PodRoute { destination: Some((r.dst.addr, r.dst.prefix)), gateway: r.gw })
        .collect()
}

/// The record's summary and the agent's request from the CNI result and the tap.
fn plan(
    pn: &PodNetwork,
    tap_name: &str,
    mac: &str,
    mtu: u32,
    hostname: &str,
) -> (NetworkSummary, pb::ConfigureNetworkRequest) {
    let ips = pod_ips(pn);
    let request = network::configure_network_request(&ips, &pod_routes(pn), mac, mtu, hostname);
    let summary = NetworkSummary {
        network_name: pn.network_name.clone(),
        netns: pn.netns.clone(),
        ifname: pn.ifname.clone(),
        tap_name: tap_name.to_owned(),
        mac: mac.to_owned(),
        mtu,
        ips: ips.iter().map(|i| i.address.to_string()).collect(),
    };
    (summary, request)
}

/// The error of a RunPodSandbox on a node without a usable CNI config: kubelet does not start
/// pods there (NetworkReady is false), so whoever calls anyway is told how to fix it.
fn not_ready(cni: &CniManager, cause: &str) -> CriError {
    CriError::FailedPrecondition(format!(
        "pod network: no usable CNI network config ({cause}): install a .conflist in {} (the \
         network plugin's job), or set `[cni] enabled = false` in the carapace config for pods \
         without a network",
        cni.config().conf_dir.display()
    ))
}

/// Sets up the pod's network on the host: CNI ADD (the pod's netns with the plugins' `eth0`),
/// then the tap wired to it. None when networking is disabled. On error nothing is left (the
/// CNI manager undoes a failed ADD itself; a failed tap gets DEL and the netns removed) and the
/// error carries the plugin's own words. Blocks: plugins are processes.
pub fn setup_blocking(
    cni: &CniManager,
    rec: &SandboxRecord,
    ports: &[cri::PortMapping],
    dns: Option<&cri::DnsConfig>,
) -> Result<Option<PodNetSetup>, CriError> {
    if !cni.enabled() {
        return Ok(None);
    }
    let pod = PodIdentity::from(rec);
    let pn = match cni.setup(&pod, ports, dns, &rec.annotations) {
        Ok(pn) => pn,
        Err(CniError::NotReady(m)) => return Err(not_ready(cni, &m)),
        Err(e) => return Err(e.into()),
    };
    let tap: TapAttachment = match network::attach_tap(&pn.netns, &pn.ifname) {
        Ok(t) => t,
        Err(source) => {
            if let Err(e) = cni.teardown(&rec.id) {
                tracing::warn!(id = %rec.id, error = %e, "CNI teardown after a failed tap attach");
            }
            return Err(CriError::PodNic { id: rec.id.clone(), source });
        }
    };
    let (summary, request) = plan(&pn, &tap.tap_name, &tap.mac, tap.mtu, &rec.hostname);
    tracing::info!(id = %rec.id, ips = ?summary.ips, tap = %tap.tap_name, mac = %tap.mac,
        "pod network set up on the host");
    Ok(Some(PodNetSetup { summary, net: VmNet { tap: tap.tap, mac: tap.mac }, request }))
}

/// [`setup_blocking`] on a blocking thread.
pub async fn setup(
    cni: Arc<CniManager>,
    rec: SandboxRecord,
    ports: Vec<cri::PortMapping>,
    dns: Option<cri::DnsConfig>,
) -> Result<Option<PodNetSetup>, CriError> {
    tokio::task::spawn_blocking(move || setup_blocking(&cni, &rec, &ports, dns.as_ref())).await?
}

/// CNI DEL of the pod's network (from the cache) and its netns removed. Idempotent: a pod
/// without a network (or torn down already) costs a stat of its netns path.
pub async fn teardown(cni: Arc<CniManager>, id: String) -> Result<(), CriError> {
    tokio::task::spawn_blocking(move || cni.teardown(&id)).await?.map_err(CriError::from)
}

/// The agent's ConfigureNetwork: the guest NIC gets the pod's addresses, routes and /etc/hosts.
pub async fn configure_guest(
    rec: &SandboxRecord,
    request: pb::ConfigureNetworkRequest,
) -> Result<(), CriError> {
    let client = agent::connect(rec).await?;
    let mut grpc = client.grpc();
    agent::call("agent ConfigureNetwork", grpc.configure_network(request)).await?;
    Ok(())
}

/// PodSandboxStatus `network`: the first IP of the record, the others as additional IPs.
pub fn status_of(rec: &SandboxRecord) -> cri::PodSandboxNetworkStatus {
    let ips = rec.network.as_ref().map(|n| n.ips.as_slice()).unwrap_or_default();
    cri::PodSandboxNetworkStatus {
        ip: ips.first().cloned().unwrap_or_default(),
        additional_ips: ips.iter().skip(1).map(|ip| cri::PodIp { ip: ip.clone() }).collect(),
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::cni::CniResult;
    use crate::config::cni::CniConfig;

    fn pod_network(result: serde_json::Value) -> PodNetwork {
        PodNetwork {
            netns: PathBuf::from("/run/carapace/netns/abc"),
            network_name: "e2e".into(),
            ifname: "eth0".into(),
            result: CniResult::from_value(result).unwrap(),
        }
    }

    fn dual_stack() -> PodNetwork {
        pod_network(serde_json::json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "cni0", "mac": "aa:aa:aa:aa:aa:aa"},
                {"name": "veth1", "mac": "bb:bb:bb:bb:bb:bb"},
                {"name": "eth0", "mac": "02:42:0a:58:09:05", "sandbox": "/run/carapace/netns/abc"}
            ],
            "ips": [
                {"address": "fd00:88::5/64", "gateway": "fd00:88::1", "interface": 2},
                {"address": "10.88.9.5/24", "gateway": "10.88.9.1", "interface": 2},
                {"address": "10.88.9.1/24", "interface": 0}
            ],
            "routes": [
                {"dst": "0.0.0.0/0"},
                {"dst": "::/0"},
                {"dst": "10.99.0.0/16", "gw": "10.88.9.7"}
            ],
            "dns": {}
        }))
    }

    #[test]
    fn the_plan_puts_the_pods_ips_v4_first_and_routes_via_the_gateways() {
        let (summary, req) = plan(&dual_stack(), "tap0", "02:42:0a:58:09:05", 1500, "web");
        assert_eq!(summary.ips, ["10.88.9.5", "fd00:88::5"]);
        assert_eq!(
            (summary.tap_name.as_str(), summary.mac.as_str(), summary.mtu),
            ("tap0", "02:42:0a:58:09:05", 1500)
        );
        assert_eq!(summary.netns, PathBuf::from("/run/carapace/netns/abc"));
        assert_eq!((summary.network_name.as_str(), summary.ifname.as_str()), ("e2e", "eth0"));
        assert_eq!(req.hostname, "web");
        let nic = &req.interfaces[0];
        assert_eq!(
            (nic.mac.as_str(), nic.mtu, nic.name.as_str()),
            ("02:42:0a:58:09:05", 1500, "eth0")
        );
        let addrs: Vec<(&str, u32)> =
            nic.addresses.iter().map(|a| (a.address.as_str(), a.prefix_len)).collect();
        // The bridge's own address (another interface) is not the pod's.
        assert_eq!(addrs, [("10.88.9.5", 24), ("fd00:88::5", 64)]);
        let routes: Vec<(&str, u32, &str)> = req
            .routes
            .iter()
            .map(|r| (r.destination.as_str(), r.prefix_len, r.gateway.as_str()))
            .collect();
        assert_eq!(
            routes,
            [("", 0, "10.88.9.1"), ("", 0, "fd00:88::1"), ("10.99.0.0", 16, "10.88.9.7")]
        );
    }

    #[test]
    fn status_reports_the_first_ip_and_the_rest_as_additional() {
        let mut rec = crate::store::tests::sample(&"a".repeat(64), "web");
        assert_eq!(status_of(&rec), cri::PodSandboxNetworkStatus::default());
        let (summary, _) = plan(&dual_stack(), "tap0", "02:42:0a:58:09:05", 1500, "web");
        rec.network = Some(summary);
        let st = status_of(&rec);
        assert_eq!(st.ip, "10.88.9.5");
        assert_eq!(st.additional_ips, [cri::PodIp { ip: "fd00:88::5".into() }]);
    }

    #[test]
    fn records_without_a_network_field_still_load() {
        let rec = crate::store::tests::sample(&"b".repeat(64), "old");
        let mut v = serde_json::to_value(&rec).unwrap();
        v.as_object_mut().unwrap().remove("network");
        let back: SandboxRecord = serde_json::from_value(v).unwrap();
        assert_eq!(back.network, None);
        assert_eq!(back, rec);
    }

    fn manager(dir: &Path, enabled: bool) -> CniManager {
        let cfg = CniConfig {
            enabled,
            conf_dir: dir.join("net.d"),
            bin_dirs: vec![dir.join("bin")],
            netns_dir: dir.join("netns"),
        };
        CniManager::new(&cfg, &dir.join("state"))
    }

    #[test]
    fn disabled_networking_sets_up_nothing_and_says_so_in_status() {
        let dir = tempfile::tempdir().unwrap();
        let cni = manager(dir.path(), false);
        let rec = crate::store::tests::sample(&"c".repeat(64), "web");
        assert!(setup_blocking(&cni, &rec, &[], None).unwrap().is_none());
        assert!(!dir.path().join("netns").exists() && !dir.path().join("state").exists());
        let st = cni.status();
        assert!(!st.ready && st.message.contains("disabled in config"), "{st:?}");
    }

    #[test]
    fn enabled_without_a_config_fails_the_pod_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let cni = manager(dir.path(), true);
        let rec = crate::store::tests::sample(&"d".repeat(64), "web");
        match setup_blocking(&cni, &rec, &[], None) {
            Err(CriError::FailedPrecondition(m)) => {
                assert!(m.contains(&dir.path().join("net.d").display().to_string()), "{m}");
                assert!(m.contains("[cni] enabled = false"), "{m}");
            }
            other => panic!("{other:?}"),
        }
        assert!(!dir.path().join("netns").join(&rec.id).exists());
        assert!(!cni.status().ready);
    }

    #[tokio::test]
    async fn teardown_of_a_pod_without_a_network_is_a_no_op() {
        let dir = tempfile::tempdir().unwrap();
        let cni = Arc::new(manager(dir.path(), true));
        teardown(cni.clone(), "e".repeat(64)).await.unwrap();
        teardown(cni, "e".repeat(64)).await.unwrap();
    }
}
