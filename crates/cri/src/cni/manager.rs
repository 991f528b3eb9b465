//! [`CniManager`]: a pod's network from the CNI config, as containerd's CRI plugin makes it.
//! `setup` creates the pod's named netns, runs the plugin chain's ADD and caches what it used;
//! `teardown` runs DEL (in reverse) from that cache and removes the netns. Both are blocking
//! (plugins are processes): call them from `spawn_blocking`.
//!
//! Plugins run in the network namespace of the calling thread, which is where plugins such as
//! `bridge` create their host-side links: the daemon calls from the host's namespace, tests from
//! a namespace of their own.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use k8s_cri::v1 as cri;
use serde_json::Value;

use super::cache::{Cache, CacheEntry, PodIdentity, CACHE_VERSION};
use super::error::CniError;
use super::exec::{CniCommand, Invocation, PluginRunner};
use super::loader::ConfLoader;
use super::netconf::NetworkConfigList;
use super::netns;
use super::result::{CniResult, Interface, IpConfig};
use super::runtime_config::RuntimeConfig;
use crate::config::cni::CniConfig;
use crate::util::lock;

/// The pod's interface name (containerd's default).
pub const DEFAULT_IFNAME: &str = "eth0";

/// NetworkReady as the Status RPC reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkStatus {
    pub ready: bool,
    /// Why not ready (empty when ready).
    pub message: String,
}

/// The reason Status gives when the network is not ready (containerd's).
pub const NOT_READY_REASON: &str = "NetworkPluginNotReady";

/// The NetworkReady message of a daemon whose config turns pod networking off.
pub const DISABLED_MESSAGE: &str =
    "pod networking is disabled in config ([cni] enabled = false): pods get loopback only";

/// A pod's network once set up.
#[derive(Debug, Clone, PartialEq)]
pub struct PodNetwork {
    /// The pod's named netns (bind mount), where its interface (`eth0`) is.
    pub netns: PathBuf,
    pub network_name: String,
    pub ifname: String,
    /// The final result of the ADD chain.
    pub result: CniResult,
}

impl PodNetwork {
    /// The addresses on the pod's interface, IPv4 first.
    pub fn ip_configs(&self) -> Vec<IpConfig> {
        self.result.pod_ips(&self.ifname)
    }

    /// PodSandboxStatus `network.ip`: the first address (IPv4 preferred).
    pub fn primary_ip(&self) -> Option<IpAddr> {
        self.ip_configs().first().map(|c| c.address.addr)
    }

    /// PodSandboxStatus `network.additional_ips`: the other addresses.
    pub fn additional_ips(&self) -> Vec<IpAddr> {
        self.ip_configs().iter().skip(1).map(|c| c.address.addr).collect()
    }

    /// The pod's interface in the result (name, MAC, MTU, sandbox).
    pub fn interface(&self) -> Option<&Interface> {
        self.result.pod_interface(&self.ifname).and_then(|i| self.result.interfaces.get(i))
    }

    /// The MAC the plugins gave the pod's interface (what the guest NIC should use).
    pub fn mac(&self) -> Option<&str> {
        self.interface().map(|i| i.mac.as_str()).filter(|m| !m.is_empty())
    }
}

/// The pod-network part of the daemon.
#[derive(Debug)]
pub struct CniManager {
    cfg: CniConfig,
    loader: Mutex<ConfLoader>,
    runner: PluginRunner,
    cache: Cache,
}

fn check_sandbox_id(id: &str) -> Result<(), CniError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(CniError::InvalidArgument(format!("sandbox id {id:?} cannot name a network namespace")))
    }
}

fn cni_args(pod: &PodIdentity) -> Result<String, CniError> {
    for (what, v) in [("name", &pod.name), ("namespace", &pod.namespace), ("uid", &pod.uid)] {
        if v.contains([';', '=', '\0']) {
            return Err(CniError::InvalidArgument(format!(
                "pod {what} {v:?} cannot be passed in CNI_ARGS (no ';' or '=')"
            )));
        }
    }
    Ok(format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};\
         K8S_POD_UID={}",
        pod.namespace, pod.name, pod.sandbox_id, pod.uid
    ))
}

/// Plugin `i`'s stdin: its config with the list's name and version, the previous result and
/// the runtime config of the capabilities it declares.
fn plugin_conf(
    list: &NetworkConfigList,
    i: usize,
    prev: Option<&Value>,
    rc: &RuntimeConfig,
) -> Vec<u8> {
    let mut conf = list.plugins.get(i).cloned().unwrap_or_default();
    conf.insert("name".into(), Value::String(list.name.clone()));
    conf.insert("cniVersion".into(), Value::String(list.cni_version.clone()));
    conf.remove("prevResult");
    conf.remove("runtimeConfig");
    if let Some(p) = prev {
        conf.insert("prevResult".into(), p.clone());
    }
    if let Some(r) = rc.for_plugin(list, i) {
        conf.insert("runtimeConfig".into(), Value::Object(r));
    }
    serde_json::to_vec(&Value::Object(conf)).unwrap_or_default()
}

impl CniManager {
    /// The manager of a daemon with these settings; the cache is `<state_dir>/cni`.
    pub fn new(cfg: &CniConfig, state_dir: &Path) -> CniManager {
        CniManager {
            cfg: cfg.clone(),
            loader: Mutex::new(ConfLoader::new(cfg.conf_dir.clone())),
            runner: PluginRunner::new(cfg.bin_dirs.clone()),
            cache: Cache::new(state_dir.join("cni")),
        }
    }

    /// Sets how long one plugin call may take (default 60 s).
    pub fn set_plugin_timeout(&mut self, t: std::time::Duration) {
        self.runner.timeout = t;
    }

    pub fn config(&self) -> &CniConfig {
        &self.cfg
    }

    /// Where the netns of `sandbox_id` is (whether or not it exists).
    pub fn netns_path(&self, sandbox_id: &str) -> PathBuf {
        netns::netns_path(&self.cfg.netns_dir, sandbox_id)
    }

    /// The network config in use now (re-read when the conf dir changed).
    pub fn current_network(&self) -> Result<std::sync::Arc<NetworkConfigList>, CniError> {
        lock(&self.loader).current().map_err(CniError::NotReady)
    }

    /// Whether pods get a network at all (`[cni] enabled`).
    pub fn enabled(&self) -> bool {
        self.cfg.enabled
    }

    /// NetworkReady: networking is enabled and a valid network config is loaded.
    pub fn status(&self) -> NetworkStatus {
        if !self.cfg.enabled {
            return NetworkStatus { ready: false, message: DISABLED_MESSAGE.into() };
        }
        match self.current_network() {
            Ok(_) => NetworkStatus { ready: true, message: String::new() },
            Err(CniError::NotReady(m)) => NetworkStatus { ready: false, message: m },
            Err(e) => NetworkStatus { ready: false, message: e.to_string() },
        }
    }

    /// Creates the pod's netns and runs ADD of the current network's chain. On failure,
    /// whatever was set up is torn down (DEL of the chain, netns removed) before the error
    /// (with the plugin's own message) is returned.
    pub fn setup(
        &self,
        pod: &PodIdentity,
        ports: &[cri::PortMapping],
        dns: Option<&cri::DnsConfig>,
        annotations: &BTreeMap<String, String>,
    ) -> Result<PodNetwork, CniError> {
        check_sandbox_id(&pod.sandbox_id)?;
        let args = cni_args(pod)?;
        let list = self.current_network()?;
        let runtime_config = RuntimeConfig::build(ports, dns, annotations)?;
        for i in 0..list.plugins.len() {
            self.runner.find(list.plugin_type(i))?;
        }
        let netns = netns::create(&self.cfg.netns_dir, &pod.sandbox_id)?;
        let mut entry = CacheEntry {
            version: CACHE_VERSION,
            network_name: list.name.clone(),
            ifname: DEFAULT_IFNAME.into(),
            config: list.text.clone(),
            config_source: list.source.clone(),
            netns: netns.clone(),
            result: None,
            runtime_config,
            pod: pod.clone(),
        };
        if let Err(e) = self.cache.save(&entry) {
            let _ = netns::remove(&netns);
            return Err(e);
        }
        let mut partial = None;
        let added = self.add_chain(&list, &entry, &args, &mut partial).and_then(|r| {
            entry.result = Some(r.raw().clone());
            self.cache.save(&entry)?;
            Ok(r)
        });
        match added {
            Ok(result) => {
                tracing::info!(sandbox = %pod.sandbox_id, network = %list.name, "CNI ADD done");
                Ok(PodNetwork {
                    netns,
                    network_name: list.name.clone(),
                    ifname: entry.ifname,
                    result,
                })
            }
            Err(e) => {
                tracing::warn!(sandbox = %pod.sandbox_id, "CNI ADD failed ({e}): tearing down");
                // DEL gets what the chain had produced before the failure.
                entry.result = partial.map(|r: CniResult| r.raw().clone());
                if let Err(del) = self.del_chain(&list, &entry, &args, Some(&netns), true) {
                    tracing::warn!(sandbox = %pod.sandbox_id, "CNI DEL after a failed ADD: {del}");
                }
                if let Err(rm) = self.cache.remove(&pod.sandbox_id) {
                    tracing::warn!(sandbox = %pod.sandbox_id, "{rm}");
                }
                if let Err(rm) = netns::remove(&netns) {
                    tracing::warn!(sandbox = %pod.sandbox_id, "{rm}");
                }
                Err(e)
            }
        }
    }

    fn add_chain(
        &self,
        list: &NetworkConfigList,
        entry: &CacheEntry,
        args: &str,
        prev: &mut Option<CniResult>,
    ) -> Result<CniResult, CniError> {
        let inv = Invocation {
            command: CniCommand::Add,
            container_id: &entry.pod.sandbox_id,
            netns: Some(&entry.netns),
            ifname: &entry.ifname,
            args,
        };
        for i in 0..list.plugins.len() {
            let plugin = list.plugin_type(i);
            let stdin =
                plugin_conf(list, i, prev.as_ref().map(CniResult::raw), &entry.runtime_config);
            let out = self.runner.run(plugin, &inv, &stdin)?;
            if out.iter().all(u8::is_ascii_whitespace) {
                continue; // no result: the previous one stands
            }
            let r = CniResult::from_json(&out).map_err(|message| CniError::InvalidResult {
                plugin: plugin.to_string(),
                command: "ADD",
                message,
            })?;
            *prev = Some(r);
        }
        prev.clone().ok_or_else(|| CniError::InvalidResult {
            plugin: list.plugin_type(list.plugins.len().saturating_sub(1)).to_string(),
            command: "ADD",
            message: "no plugin of the chain returned a result".into(),
        })
    }

    /// DEL of every plugin, last first; every plugin is tried, the first error returned.
    fn del_chain(
        &self,
        list: &NetworkConfigList,
        entry: &CacheEntry,
        args: &str,
        netns: Option<&Path>,
        ignore_errors: bool,
    ) -> Result<(), CniError> {
        let inv = Invocation {
            command: CniCommand::Del,
            container_id: &entry.pod.sandbox_id,
            netns,
            ifname: &entry.ifname,
            args,
        };
        let prev = if list.is_pre_0_4() { None } else { entry.result.as_ref() };
        let mut first_err = None;
        for i in (0..list.plugins.len()).rev() {
            let plugin = list.plugin_type(i);
            let stdin = plugin_conf(list, i, prev, &entry.runtime_config);
            if let Err(e) = self.runner.run(plugin, &inv, &stdin) {
                if ignore_errors {
                    tracing::debug!(sandbox = %entry.pod.sandbox_id, "CNI DEL (tolerated): {e}");
                } else {
                    tracing::warn!(sandbox = %entry.pod.sandbox_id, "CNI DEL: {e}");
                }
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            Some(e) if !ignore_errors => Err(e),
            _ => Ok(()),
        }
    }

    /// CHECK of the chain (CNI 0.4.0 and later, unless the list sets `disableCheck`): whether
    /// the pod's network is still as ADD left it. Ok(()) when there is nothing to check.
    pub fn check(&self, sandbox_id: &str) -> Result<(), CniError> {
        check_sandbox_id(sandbox_id)?;
        let Some(entry) = self.cache.load(sandbox_id)? else { return Ok(()) };
        let list = NetworkConfigList::from_cached(&entry.config)?;
        if list.is_pre_0_4() || list.disable_check || entry.result.is_none() {
            return Ok(());
        }
        let args = cni_args(&entry.pod)?;
        let inv = Invocation {
            command: CniCommand::Check,
            container_id: &entry.pod.sandbox_id,
            netns: Some(&entry.netns),
            ifname: &entry.ifname,
            args: &args,
        };
        for i in 0..list.plugins.len() {
            let stdin = plugin_conf(&list, i, entry.result.as_ref(), &entry.runtime_config);
            self.runner.run(list.plugin_type(i), &inv, &stdin)?;
        }
        Ok(())
    }

    /// The network of a pod that was set up (from the cache: also after a daemon restart).
    /// None when it has none (never set up, torn down, or its ADD never finished).
    pub fn attached(&self, sandbox_id: &str) -> Result<Option<PodNetwork>, CniError> {
        check_sandbox_id(sandbox_id)?;
        let Some(entry) = self.cache.load(sandbox_id)? else { return Ok(None) };
        let Some(raw) = entry.result else { return Ok(None) };
        let path = self.cache.path_of(sandbox_id);
        let result =
            CniResult::from_value(raw).map_err(|message| CniError::Cache { path, message })?;
        Ok(Some(PodNetwork {
            netns: entry.netns,
            network_name: entry.network_name,
            ifname: entry.ifname,
            result,
        }))
    }

    /// The sandboxes with a cached network (a restarted daemon tears down those it no longer
    /// knows).
    pub fn cached_sandboxes(&self) -> Vec<String> {
        self.cache.sandbox_ids()
    }

    /// Runs DEL with the config and result the ADD used, then removes the cache entry and the
    /// netns. Idempotent: no cache entry means nothing to delete (a leftover netns is still
    /// removed). When the netns is gone, plugins get DEL without one (CNI_NETNS empty) and
    /// their errors are tolerated; otherwise a DEL error is returned and everything is kept
    /// for a retry.
    pub fn teardown(&self, sandbox_id: &str) -> Result<(), CniError> {
        check_sandbox_id(sandbox_id)?;
        let path = self.netns_path(sandbox_id);
        let entry = match self.cache.load(sandbox_id) {
            Ok(Some(e)) => e,
            Ok(None) => return netns::remove(&path),
            Err(e) => {
                // Unreadable: it cannot say what to delete. Keep it for a person to look at
                // (the error says where), rather than guessing with another config.
                return Err(e);
            }
        };
        let list = NetworkConfigList::from_cached(&entry.config)?;
        let args = cni_args(&entry.pod)?;
        let live = netns::is_netns(&entry.netns);
        let ns = live.then_some(entry.netns.as_path());
        self.del_chain(&list, &entry, &args, ns, !live)?;
        self.cache.remove(sandbox_id)?;
        netns::remove(&entry.netns)?;
        if entry.netns != path {
            netns::remove(&path)?;
        }
        tracing::info!(sandbox = %sandbox_id, network = %entry.network_name, "CNI DEL done");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cni_args_name_the_pod_and_refuse_separators() {
        let mut pod = PodIdentity {
            sandbox_id: "abc".into(),
            name: "web".into(),
            namespace: "default".into(),
            uid: "u-1".into(),
        };
        assert_eq!(
            cni_args(&pod).unwrap(),
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;\
             K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u-1"
        );
        pod.name = "a;b=c".into();
        assert!(cni_args(&pod).is_err());
        assert!(check_sandbox_id("../x").is_err());
        assert!(check_sandbox_id("").is_err());
        assert!(check_sandbox_id("abc-1_2").is_ok());
    }

    #[test]
    fn plugin_conf_sets_name_version_prev_result_and_declared_runtime_config() {
        let list = NetworkConfigList::from_conflist(
            br#"{"cniVersion":"1.0.0","name":"n","plugins":[
            {"type":"bridge","name":"ignored","prevResult":{"x":1}},
            {"type":"portmap","capabilities":{"portMappings":true}}]}"#,
            "t",
        )
        .unwrap();
        let rc = RuntimeConfig::default();
        let c0: Value = serde_json::from_slice(&plugin_conf(&list, 0, None, &rc)).unwrap();
        assert_eq!(c0["name"], "n");
        assert_eq!(c0["cniVersion"], "1.0.0");
        assert!(c0.get("prevResult").is_none() && c0.get("runtimeConfig").is_none());
        let prev = serde_json::json!({"cniVersion":"1.0.0","ips":[]});
        let c1: Value = serde_json::from_slice(&plugin_conf(&list, 1, Some(&prev), &rc)).unwrap();
        assert_eq!(c1["prevResult"], prev);
        assert_eq!(c1["runtimeConfig"]["portMappings"], serde_json::json!([]));
        assert_eq!(c1["type"], "portmap");
    }
}
