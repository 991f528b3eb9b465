//! [`Containers`]: the table of this guest's containers and the pod state
//! they share (namespaces, hosts file). The operations on it live in
//! [`super::create`], [`super::lifecycle`], [`super::exec`] and
//! [`super::output`].

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use carapace_agent_client::pb;

use super::cgroup;
use super::common::lock;
use super::config::Config;
use super::entry::Entry;
use super::error::ContainerError;
use super::podns;
use super::process::Proc;
use crate::reaper::Reaper;

pub(super) struct Inner {
    pub cfg: Config,
    pub reaper: Reaper,
    disabled: Option<&'static str>,
    pub map: Mutex<HashMap<String, Arc<Entry>>>,
    /// Ids being created (not in `map` yet).
    pub reserved: Mutex<HashSet<String>>,
    pub pod: Mutex<Option<PodState>>,
    /// The pod's /etc/hosts (written by ConfigureNetwork), bind-mounted
    /// into containers that do not mount their own.
    pub pod_hosts: Mutex<Option<PathBuf>>,
    /// Serializes ConfigureNetwork; true once one succeeded.
    network_done: tokio::sync::Mutex<bool>,
    /// PID 1 of the pod's PID namespace, made by the first POD-mode container.
    pub pod_pid: Mutex<Option<podns::PidHolder>>,
    pub exec_seq: AtomicU64,
}

/// The pod's namespaces and whether its sysctls were set in them (not yet
/// when ConfigureNetwork made them before the first container).
pub(super) struct PodState {
    pub ns: podns::PodNamespaces,
    pub sysctls_set: bool,
}

/// The containers of this guest. Cheap to clone.
#[derive(Clone)]
pub struct Containers {
    pub(super) inner: Arc<Inner>,
}

impl std::fmt::Debug for Containers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Containers").field("disabled", &self.inner.disabled).finish_non_exhaustive()
    }
}

impl Containers {
    /// Containers enabled: the agent is PID 1 of a guest and `reaper` runs.
    /// Enables the cgroup v2 controllers for containers.
    pub fn new(reaper: Reaper, cfg: Config) -> Containers {
        match cgroup::enable_controllers(&cfg.cgroup_root) {
            Ok(c) => tracing::info!(controllers = ?c, "cgroup controllers enabled for containers"),
            Err(e) => tracing::warn!(error = %e, "cannot enable cgroup controllers"),
        }
        Self::build(reaper, cfg, None)
    }

    /// Containers refused with `reason` (dev mode on a host).
    pub fn disabled(reason: &'static str) -> Containers {
        Self::build(Reaper::new(), Config::default(), Some(reason))
    }

    pub(super) fn build(reaper: Reaper, cfg: Config, disabled: Option<&'static str>) -> Containers {
        Containers {
            inner: Arc::new(Inner {
                cfg,
                reaper,
                disabled,
                map: Mutex::new(HashMap::new()),
                reserved: Mutex::new(HashSet::new()),
                pod: Mutex::new(None),
                pod_hosts: Mutex::new(None),
                network_done: tokio::sync::Mutex::new(false),
                pod_pid: Mutex::new(None),
                exec_seq: AtomicU64::new(1),
            }),
        }
    }

    pub(super) fn enabled(&self) -> Result<(), ContainerError> {
        match self.inner.disabled {
            Some(r) => Err(ContainerError::Disabled(r)),
            None => Ok(()),
        }
    }

    pub(super) fn get(&self, id: &str) -> Result<Arc<Entry>, ContainerError> {
        self.enabled()?;
        lock(&self.inner.map)
            .get(id)
            .cloned()
            .ok_or_else(|| ContainerError::NotFound(id.to_owned()))
    }

    /// A container and one of its processes: init for an empty `exec_id`.
    pub(super) fn proc_of(
        &self,
        id: &str,
        exec_id: &str,
    ) -> Result<(Arc<Entry>, Arc<Proc>), ContainerError> {
        let e = self.get(id)?;
        if exec_id.is_empty() {
            let p = Arc::clone(&e.init);
            return Ok((e, p));
        }
        let p = e.execs().get(exec_id).cloned().ok_or_else(|| ContainerError::ExecNotFound {
            container: id.to_owned(),
            exec: exec_id.to_owned(),
        })?;
        Ok((e, p))
    }

    /// The pod's network namespace file for ConfigureNetwork, made (with
    /// the IPC and UTS ones, `hostname` set) when no container made it yet;
    /// the first container's sysctls are set in it later.
    pub fn pod_net_ns(&self, hostname: &str) -> Result<PathBuf, ContainerError> {
        self.enabled()?;
        let mut pod = lock(&self.inner.pod);
        if let Some(st) = &*pod {
            return Ok(st.ns.net.clone());
        }
        let ns =
            podns::PodNamespaces::create(&self.inner.cfg.pod_ns_dir, hostname, &HashMap::new())?;
        let net = ns.net.clone();
        *pod = Some(PodState { ns, sysctls_set: false });
        Ok(net)
    }

    /// The pod's network namespace file once a container or ConfigureNetwork made it (port
    /// forwarding connects there); `None` before: the pod's processes, if any, share the
    /// agent's.
    pub fn existing_pod_net_ns(&self) -> Option<PathBuf> {
        lock(&self.inner.pod).as_ref().map(|st| st.ns.net.clone())
    }

    /// Holds ConfigureNetwork's lock; the flag says whether one succeeded.
    pub async fn network_lock(&self) -> tokio::sync::MutexGuard<'_, bool> {
        self.inner.network_done.lock().await
    }

    /// Makes containers created from now on get `path` at /etc/hosts.
    pub fn set_pod_hosts(&self, path: PathBuf) {
        *lock(&self.inner.pod_hosts) = Some(path);
    }

    /// ListContainers.
    pub fn list(&self) -> Result<Vec<pb::ContainerInfo>, ContainerError> {
        self.enabled()?;
        let mut out: Vec<pb::ContainerInfo> = lock(&self.inner.map)
            .values()
            .map(|e| {
                let mut exec_ids: Vec<String> = e.execs().keys().cloned().collect();
                exec_ids.sort();
                pb::ContainerInfo {
                    id: e.id.to_string(),
                    state: e.state().to_owned(),
                    pid: e.init.pid,
                    created_at_unix_ms: e.created_at_ms,
                    exec_ids,
                }
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }
}
