//! The sandbox table: the pod sandboxes of one daemon in memory, backed by their durable
//! records, and the VM lifecycle of each (boot, stop, clean up). What a pod's containers need
//! when it stops or goes away is done by the runtime (`runtime.rs`), which owns both tables.
//! Over 600 lines on purpose: one job (the sandbox table and each pod's VM lifecycle); what
//! could move out (records, VMM processes, networking) already lives in its own module.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::sync::{Arc, Mutex, MutexGuard};

use k8s_cri::v1 as cri;

use crate::cni::CniManager;
use crate::config::Config;
use crate::error::CriError;
use crate::filters::SandboxFilter;
use crate::ids;
use crate::podnet::{self, PodNetSetup};
use crate::procfs;
use crate::record::{
    resolv_conf, Dns, Metadata, SandboxPhase, SandboxRecord, SecuritySummary, RECORD_VERSION,
};
use crate::sizing;
use crate::store::{Store, StoreError};
use crate::util::{hash_map, lock, now_nanos, sandbox_state};
use crate::validate;
use crate::vmm::{self, VmFiles};

/// One pod sandbox: `op` serializes its lifecycle operations (which may wait on the VM) while
/// `rec` can always be read at once.
pub struct Sandbox {
    op: tokio::sync::Mutex<()>,
    rec: Mutex<SandboxRecord>,
}

impl Sandbox {
    fn new(rec: SandboxRecord) -> Arc<Sandbox> {
        Arc::new(Sandbox { op: tokio::sync::Mutex::new(()), rec: Mutex::new(rec) })
    }

    /// The current record (a copy).
    pub fn record(&self) -> SandboxRecord {
        self.rec().clone()
    }

    fn rec(&self) -> MutexGuard<'_, SandboxRecord> {
        lock(&self.rec)
    }

    /// Holds off every other lifecycle operation on this sandbox while the guard lives.
    pub async fn lock_op(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.op.lock().await
    }
}

#[derive(Default)]
struct Index {
    pods: BTreeMap<String, Arc<Sandbox>>,
    /// Sandbox name (name_namespace_uid_attempt) → ID, reserved from RunPodSandbox to Remove.
    names: HashMap<String, String>,
}

/// The pod sandboxes of one daemon.
pub struct SandboxTable {
    cfg: Arc<Config>,
    store: Store,
    index: Mutex<Index>,
    /// `max_concurrent_boots` permits: held from the VMM's start to the agent's answer.
    boots: tokio::sync::Semaphore,
    /// Pod networking: set up before a pod's VM starts, torn down when it stops.
    cni: Arc<CniManager>,
}

pub(crate) fn metadata_of(rec: &SandboxRecord) -> cri::PodSandboxMetadata {
    cri::PodSandboxMetadata {
        name: rec.metadata.name.clone(),
        uid: rec.metadata.uid.clone(),
        namespace: rec.metadata.namespace.clone(),
        attempt: rec.metadata.attempt,
    }
}

/// Longest sysctl list a pod may set (the agent's bound too).
const MAX_SYSCTLS: usize = 64;

/// The pod's sysctls: only namespaced ones (the agent writes them in the pod's IPC and network
/// namespaces), well-formed values; InvalidArgument naming the field otherwise.
fn check_sysctls(linux: Option<&cri::LinuxPodSandboxConfig>) -> Result<(), CriError> {
    let Some(linux) = linux else { return Ok(()) };
    if linux.sysctls.len() > MAX_SYSCTLS {
        return Err(CriError::InvalidArgument(format!(
            "config.linux.sysctls: more than {MAX_SYSCTLS} entries"
        )));
    }
    for (name, value) in &linux.sysctls {
        if !carapace_agent_client::namespaced_sysctl(name) {
            return Err(CriError::InvalidArgument(format!(
                "config.linux.sysctls: {name:?} is not a namespaced sysctl carapace can set in \
                 the pod (kernel.shm*, kernel.msg*, kernel.sem, fs.mqueue.*, net.*)"
            )));
        }
        if !carapace_agent_client::valid_sysctl_value(value) {
            return Err(CriError::InvalidArgument(format!(
                "config.linux.sysctls: the value of {name} is malformed (printable ASCII, at \
                 most {} bytes)",
                carapace_agent_client::MAX_SYSCTL_VALUE
            )));
        }
    }
    Ok(())
}

/// Why a hostNetwork pod is refused.
pub const HOST_NETWORK_REFUSED: &str = "a VM pod cannot share the node's network namespace; use \
     a runc RuntimeClass for hostNetwork pods";

/// hostNetwork (NamespaceMode NODE for the network) cannot be had from inside a VM.
fn check_network_mode(linux: Option<&cri::LinuxPodSandboxConfig>) -> Result<(), CriError> {
    let network = linux
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref())
        .map_or(0, |n| n.network);
    if network == cri::NamespaceMode::Node as i32 {
        return Err(CriError::InvalidArgument(HOST_NETWORK_REFUSED.into()));
    }
    Ok(())
}

fn security_of(linux: Option<&cri::LinuxPodSandboxConfig>) -> SecuritySummary {
    let Some(linux) = linux else { return SecuritySummary::default() };
    let sc = linux.security_context.as_ref();
    let ns = sc.and_then(|s| s.namespace_options.as_ref());
    SecuritySummary {
        privileged: sc.is_some_and(|s| s.privileged),
        cgroup_parent: linux.cgroup_parent.clone(),
        sysctls: linux.sysctls.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        network_ns: ns.map_or(0, |n| n.network),
        pid_ns: ns.map_or(0, |n| n.pid),
        ipc_ns: ns.map_or(0, |n| n.ipc),
    }
}

fn stats_of(rec: &SandboxRecord) -> cri::PodSandboxStats {
    let ts = now_nanos();
    let live = rec.vmm.filter(procfs::is_alive);
    let cpu = live.and_then(|p| procfs::cpu_nanos(&p)).map(|n| cri::CpuUsage {
        timestamp: ts,
        usage_core_nano_seconds: Some(cri::UInt64Value { value: n }),
        usage_nano_cores: None,
    });
    let memory = live.and_then(|p| procfs::rss_bytes(&p)).map(|b| cri::MemoryUsage {
        timestamp: ts,
        working_set_bytes: Some(cri::UInt64Value { value: b }),
        rss_bytes: Some(cri::UInt64Value { value: b }),
        usage_bytes: Some(cri::UInt64Value { value: b }),
        ..Default::default()
    });
    cri::PodSandboxStats {
        attributes: Some(cri::PodSandboxAttributes {
            id: rec.id.clone(),
            metadata: Some(metadata_of(rec)),
            labels: hash_map(&rec.labels),
            annotations: hash_map(&rec.annotations),
        }),
        linux: Some(cri::LinuxPodSandboxStats {
            cpu,
            memory,
            network: None,
            process: None,
            containers: Vec::new(),
        }),
        windows: None,
    }
}

impl SandboxTable {
    /// Reloads every record from the state dir and reattaches to the VMMs that still run; a
    /// sandbox whose VMM died meanwhile is recorded as stopped. A sandbox still `Starting`
    /// belongs to a RunPodSandbox that ended with the previous daemon: nobody waits for its VM
    /// any more, so its VMM is killed (the recorded one, or the one the daemon spawned but
    /// died before recording, found by its config path) and it is recorded as stopped
    /// (NotReady; kubelet removes it and tries again). Running pods keep their network as it
    /// is (nothing is re-run); a cached CNI attachment of a sandbox that no longer exists (its
    /// RunPodSandbox or removal died with the previous daemon) is torn down (DEL, netns gone).
    pub fn open(cfg: Arc<Config>, cni: Arc<CniManager>) -> Result<SandboxTable, StoreError> {
        let store: Store = Store::open(&cfg.state_dir)?;
        let (records, bad) = store.load_all()?;
        for b in bad {
            tracing::error!(
                path = %b.path.display(),
                reason = %b.reason,
                "ignoring unreadable sandbox record"
            );
        }
        let mut index = Index::default();
        for mut rec in records {
            if rec.phase == SandboxPhase::Starting {
                let found = vmm::find_vmms(&rec.vm_config(), rec.vmm);
                for p in &found {
                    tracing::warn!(
                        id = %rec.id,
                        pid = p.pid,
                        "killing the VMM of a sandbox that was still starting when the daemon \
                         went down"
                    );
                }
                for p in vmm::kill_blocking(&found) {
                    tracing::error!(
                        id = %rec.id,
                        pid = p.pid,
                        "the VMM of an abandoned sandbox did not die after SIGKILL"
                    );
                }
            }
            let alive = rec.vmm.as_ref().is_some_and(procfs::is_alive);
            if rec.phase != SandboxPhase::Stopped && !alive {
                tracing::warn!(
                    id = %rec.id,
                    "the VM of this sandbox ended while the daemon was down"
                );
                rec.phase = SandboxPhase::Stopped;
                rec.stopped_at = Some(now_nanos());
                store.save(&rec)?;
            } else if alive {
                let pid = rec.vmm.map_or(0, |p| p.pid);
                tracing::info!(id = %rec.id, pid, "reattached to running VM");
            }
            index.names.insert(rec.sandbox_name(), rec.id.clone());
            index.pods.insert(rec.id.clone(), Sandbox::new(rec));
        }
        cfg.pods.remove_orphans(&cfg.run_dir.join("pods"), &|id| index.pods.contains_key(id));
        for id in cni.cached_sandboxes() {
            if index.pods.contains_key(&id) {
                continue;
            }
            tracing::warn!(%id, "tearing down the network of a sandbox that no longer exists");
            if let Err(e) = cni.teardown(&id) {
                tracing::error!(%id, error = %e, "cannot tear down the network of a gone sandbox");
            }
        }
        let boots = tokio::sync::Semaphore::new(cfg.max_concurrent_boots);
        Ok(SandboxTable { cfg, store, index: Mutex::new(index), boots, cni })
    }

    fn index(&self) -> MutexGuard<'_, Index> {
        lock(&self.index)
    }

    /// The sandbox an ID or unique ID prefix names.
    pub fn resolve(&self, id: &str) -> Result<Arc<Sandbox>, CriError> {
        if id.is_empty() {
            return Err(CriError::InvalidArgument("pod_sandbox_id must not be empty".into()));
        }
        let not_found = || CriError::NotFound(format!("pod sandbox {id:?} not found"));
        if !ids::is_id_or_prefix(id) {
            return Err(not_found());
        }
        let index = self.index();
        let mut hits = index.pods.range(id.to_string()..).take_while(|(k, _)| k.starts_with(id));
        let first = hits.next().ok_or_else(not_found)?;
        if hits.next().is_some() {
            return Err(CriError::InvalidArgument(format!(
                "pod sandbox ID prefix {id:?} matches more than one sandbox; give more digits"
            )));
        }
        Ok(first.1.clone())
    }

    /// The record of the sandbox an ID or unique ID prefix names.
    pub fn record(&self, id: &str) -> Result<SandboxRecord, CriError> {
        Ok(self.resolve(id)?.record())
    }

    /// Whether the sandbox is still in the table (not removed by a concurrent call).
    pub fn contains(&self, sandbox: &Sandbox) -> bool {
        self.index().pods.contains_key(&sandbox.rec().id)
    }

    /// Every sandbox's record.
    pub fn snapshot(&self) -> Vec<SandboxRecord> {
        let all: Vec<Arc<Sandbox>> = self.index().pods.values().cloned().collect();
        all.iter().map(|s| s.record()).collect()
    }

    /// RunPodSandbox: sets up the pod's network (CNI ADD, tap), boots the pod's VM with it,
    /// waits for its agent and has it configure the guest NIC. Any failure undoes everything.
    pub async fn run(&self, req: cri::RunPodSandboxRequest) -> Result<String, CriError> {
        let config = req
            .config
            .ok_or_else(|| CriError::InvalidArgument("RunPodSandbox: config is required".into()))?;
        let md = config.metadata.as_ref().ok_or_else(|| {
            CriError::InvalidArgument("RunPodSandbox: config.metadata is required".into())
        })?;
        ids::validate_metadata(&md.name, &md.namespace, &md.uid)
            .map_err(CriError::InvalidArgument)?;
        ids::validate_hostname(&config.hostname).map_err(CriError::InvalidArgument)?;
        let log_directory = if config.log_directory.is_empty() {
            String::new()
        } else {
            validate::absolute_path("log_directory", &config.log_directory)?.display().to_string()
        };
        if let Some(d) = &config.dns_config {
            validate::dns(d)?;
        }
        check_sysctls(config.linux.as_ref())?;
        check_network_mode(config.linux.as_ref())?;
        let (profile_name, profile) =
            self.cfg.profile_for_handler(&req.runtime_handler).ok_or_else(|| {
                let known: Vec<String> =
                    self.cfg.runtime_handlers.keys().map(|h| format!("{h:?}")).collect();
                CriError::InvalidArgument(format!(
                    "unknown runtime handler {:?}: this node's carapace config defines {}",
                    req.runtime_handler,
                    known.join(", ")
                ))
            })?;
        for (what, file) in [("kernel", &profile.kernel), ("initramfs", &profile.initramfs)] {
            if !file.is_file() {
                return Err(CriError::FailedPrecondition(format!(
                    "guest {what} {} of profile {profile_name:?} is missing: run \
                     `make guest-image` or fix profiles.{profile_name}.{what} in the carapace \
                     config",
                    file.display()
                )));
            }
        }
        let vm_size = sizing::pod_vm_size(profile, config.linux.as_ref())
            .map_err(|e| CriError::InvalidArgument(format!("RunPodSandbox: {e}")))?;
        let name = ids::sandbox_name(&md.name, &md.namespace, &md.uid, md.attempt);
        let id = ids::new_id().map_err(CriError::NewId)?;
        let run_dir = self.cfg.pod_run_dir(&id);
        let dns = config.dns_config.as_ref().map(|d| Dns {
            servers: d.servers.clone(),
            searches: d.searches.clone(),
            options: d.options.clone(),
        });
        let rec = SandboxRecord {
            version: RECORD_VERSION,
            id: id.clone(),
            metadata: Metadata {
                name: md.name.clone(),
                uid: md.uid.clone(),
                namespace: md.namespace.clone(),
                attempt: md.attempt,
            },
            phase: SandboxPhase::Starting,
            created_at: now_nanos(),
            stopped_at: None,
            runtime_handler: req.runtime_handler.clone(),
            profile_name: profile_name.to_string(),
            profile: profile.clone(),
            hostname: if config.hostname.is_empty() {
                ids::hostname_from_pod_name(&md.name)
            } else {
                config.hostname.clone()
            },
            dns,
            log_directory,
            labels: config.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            annotations: config.annotations.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            security: security_of(config.linux.as_ref()),
            run_dir: run_dir.clone(),
            vmm: None,
            guest: BTreeMap::new(),
            network: None,
            vm_size: Some(vm_size),
        };
        let sandbox = Sandbox::new(rec.clone());
        let _op = sandbox.lock_op().await;
        {
            let mut index = self.index();
            if let Some(other) = index.names.get(&name) {
                return Err(CriError::AlreadyExists(format!(
                    "a pod sandbox named {:?} (namespace {:?}, uid {:?}, attempt {}) already \
                     exists with ID {other}; remove it first or use another attempt number",
                    md.name, md.namespace, md.uid, md.attempt
                )));
            }
            index.names.insert(name.clone(), id.clone());
            index.pods.insert(id.clone(), sandbox.clone());
        }
        // CNI ADD outside the boot permit: plugins do not load the CPUs a boot needs.
        let booted = match podnet::setup(
            self.cni.clone(),
            rec.clone(),
            config.port_mappings.clone(),
            config.dns_config.clone(),
        )
        .await
        {
            Ok(net) => {
                let mut rec = rec;
                rec.network = net.as_ref().map(|n| n.summary.clone());
                *sandbox.rec() = rec.clone();
                match self.boots.acquire().await {
                    Ok(_permit) => self.boot(&sandbox, rec, net).await,
                    Err(_) => {
                        Err(CriError::FailedPrecondition("the daemon is shutting down".into()))
                    }
                }
            }
            Err(e) => Err(e),
        };
        match booted {
            Ok(()) => {
                tracing::info!(
                    %id,
                    name = %md.name,
                    namespace = %md.namespace,
                    "pod sandbox ready"
                );
                Ok(id)
            }
            Err(e) => {
                tracing::warn!(%id, error = %e, "pod sandbox failed to start; cleaning up");
                if let Err(c) = self.cleanup(&sandbox).await {
                    tracing::error!(%id, error = %c, "cleanup after a failed start failed");
                }
                Err(e)
            }
        }
    }

    /// Writes the pod's files, starts the VMM (with the pod's tap when it has a network), waits
    /// for the agent and sends it the network config (record saved each step).
    async fn boot(
        &self,
        sandbox: &Sandbox,
        mut rec: SandboxRecord,
        net: Option<PodNetSetup>,
    ) -> Result<(), CriError> {
        let io = |op: &str, path: &std::path::Path, e| CriError::io(op, path, e);
        std::os::unix::fs::DirBuilderExt::mode(fs::DirBuilder::new().recursive(true), 0o700)
            .create(&rec.run_dir)
            .map_err(|e| io("create the run dir", &rec.run_dir, e))?;
        // The pod's own disk on the run dir: what the guest writes in shared/ is bounded
        // (`[pods]`) and inert on the host (nosuid, nodev, noexec); staging/ and shared/ are on
        // that one mount (crates/podfs).
        let (pods, id, dir) = (self.cfg.pods.clone(), rec.id.clone(), rec.run_dir.clone());
        let disk = |source| CriError::PodDisk { id: rec.id.clone(), source };
        tokio::task::spawn_blocking(move || pods.attach(&id, &dir)).await?.map_err(disk)?;
        carapace_podfs::PodDir::open(&rec.run_dir).map_err(disk)?;
        let hostname = rec.run_dir.join("hostname");
        fs::write(&hostname, format!("{}\n", rec.hostname))
            .map_err(|e| io("write the hostname file", &hostname, e))?;
        if let Some(dns) = &rec.dns {
            let path = rec.run_dir.join("resolv.conf");
            fs::write(&path, resolv_conf(dns))
                .map_err(|e| io("write the resolv.conf", &path, e))?;
        }
        self.store.save(&rec)?;
        let (vsock, serial, log) = (rec.vsock_path(), rec.serial_log(), rec.vmm_log());
        let (shared, vm_config) = (rec.shared_dir(), rec.vm_config());
        let files = VmFiles {
            vm_config: &vm_config,
            vsock: &vsock,
            serial_log: &serial,
            vmm_log: &log,
            shared_dir: &shared,
            pod_dir: Some(&rec.run_dir),
        };
        let (vm_net, request) = match net {
            Some(n) => (Some(n.net), Some(n.request)),
            None => (None, None),
        };
        let spawned = vmm::spawn(&self.cfg, &rec.profile, rec.vm_size(), &files, vm_net.as_ref());
        // The VMM has its own copy of the tap now: with ours closed, the tap lives as long as
        // the VMM does.
        drop(vm_net);
        let p =
            spawned.map_err(|source| CriError::Vmm { context: "pod sandbox VM".into(), source })?;
        rec.vmm = Some(p);
        *sandbox.rec() = rec.clone();
        self.store.save(&rec)?;
        let health =
            vmm::wait_agent(&p, &files, self.cfg.agent_timeout).await.map_err(|source| {
                CriError::Vmm { context: "pod sandbox VM did not come up".into(), source }
            })?;
        if let Some(request) = request {
            podnet::configure_guest(&rec, request).await?;
        }
        rec.phase = SandboxPhase::Ready;
        rec.guest = BTreeMap::from([
            ("kernel_version".to_string(), health.kernel_version),
            ("agent_version".to_string(), health.agent_version),
            ("cpu_count".to_string(), health.cpu_count.to_string()),
            ("mem_total_bytes".to_string(), health.mem_total_bytes.to_string()),
        ]);
        self.store.save(&rec)?;
        *sandbox.rec() = rec;
        Ok(())
    }

    /// Stops the VM of `sandbox` (idempotent), records it as stopped and tears down its network
    /// (CNI DEL, netns removed; idempotent too: a failed DEL fails the call, to be retried).
    pub async fn stop_vm(&self, sandbox: &Sandbox) -> Result<(), CriError> {
        let rec = sandbox.record();
        let id = rec.id.clone();
        if let Some(p) = rec.vmm {
            let outcome = vmm::stop(&p, &rec.vsock_path(), self.cfg.stop_timeout).await.map_err(
                |source| CriError::Vmm {
                    context: format!("stopping pod sandbox {}", rec.id),
                    source,
                },
            )?;
            tracing::info!(id = %rec.id, ?outcome, "pod sandbox VM stopped");
        }
        if rec.phase != SandboxPhase::Stopped {
            let mut rec = rec;
            rec.phase = SandboxPhase::Stopped;
            rec.stopped_at = Some(now_nanos());
            self.store.save(&rec)?;
            *sandbox.rec() = rec;
        }
        podnet::teardown(self.cni.clone(), id).await
    }

    /// Stops the VM, deletes the pod's files and record, forgets it (the name becomes free).
    pub async fn cleanup(&self, sandbox: &Sandbox) -> Result<(), CriError> {
        self.stop_vm(sandbox).await?;
        let rec = sandbox.record();
        // Volumes are bind-mounted under the run dir: unmount them all before deleting it.
        crate::volumes::remove_tree(&rec.run_dir).map_err(|source| CriError::Remove {
            what: format!("pod sandbox {} ({})", rec.id, rec.run_dir.display()),
            source,
        })?;
        // Unmounted with the run dir above: the disk image goes now.
        self.cfg
            .pods
            .remove(&rec.id)
            .map_err(|source| CriError::PodDisk { id: rec.id.clone(), source })?;
        self.store.remove(&rec.id)?;
        let mut index = self.index();
        index.pods.remove(&rec.id);
        let name = rec.sandbox_name();
        if index.names.get(&name) == Some(&rec.id) {
            index.names.remove(&name);
        }
        Ok(())
    }

    /// PodSandboxStatus of a record, with its containers' statuses.
    pub fn status_of(
        rec: &SandboxRecord,
        verbose: bool,
        containers_statuses: Vec<cri::ContainerStatus>,
    ) -> cri::PodSandboxStatusResponse {
        let s = &rec.security;
        let status = cri::PodSandboxStatus {
            id: rec.id.clone(),
            metadata: Some(metadata_of(rec)),
            state: sandbox_state(rec) as i32,
            created_at: rec.created_at,
            network: Some(podnet::status_of(rec)),
            linux: Some(cri::LinuxPodSandboxStatus {
                namespaces: Some(cri::Namespace {
                    options: Some(cri::NamespaceOption {
                        network: s.network_ns,
                        pid: s.pid_ns,
                        ipc: s.ipc_ns,
                        ..Default::default()
                    }),
                }),
            }),
            labels: hash_map(&rec.labels),
            annotations: hash_map(&rec.annotations),
            runtime_handler: rec.runtime_handler.clone(),
        };
        let mut info = HashMap::new();
        if verbose {
            let json = serde_json::to_string(rec).unwrap_or_default();
            info.insert("info".to_string(), json);
        }
        cri::PodSandboxStatusResponse {
            status: Some(status),
            info,
            containers_statuses,
            timestamp: now_nanos(),
        }
    }

    /// ListPodSandbox.
    pub fn list(&self, filter: &SandboxFilter) -> Vec<cri::PodSandbox> {
        self.snapshot()
            .into_iter()
            .filter_map(|rec| {
                let state = sandbox_state(&rec) as i32;
                filter.matches(&rec.id, state, &rec.labels).then(|| cri::PodSandbox {
                    id: rec.id.clone(),
                    metadata: Some(metadata_of(&rec)),
                    state,
                    created_at: rec.created_at,
                    labels: hash_map(&rec.labels),
                    annotations: hash_map(&rec.annotations),
                    runtime_handler: rec.runtime_handler.clone(),
                })
            })
            .collect()
    }

    /// PodSandboxStats: the VM's CPU time and resident memory as the host sees its VMM.
    pub fn stats(&self, id: &str) -> Result<cri::PodSandboxStats, CriError> {
        Ok(stats_of(&self.record(id)?))
    }

    /// ListPodSandboxStats (ready sandboxes only, as containerd does).
    pub fn list_stats(&self, filter: &SandboxFilter) -> Vec<cri::PodSandboxStats> {
        self.snapshot()
            .iter()
            .filter(|rec| {
                let state = sandbox_state(rec) as i32;
                state == cri::PodSandboxState::SandboxReady as i32
                    && filter.matches(&rec.id, state, &rec.labels)
            })
            .map(stats_of)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_network_pods_are_refused_with_the_way_out() {
        let with = |mode: cri::NamespaceMode| cri::LinuxPodSandboxConfig {
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    network: mode as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(check_network_mode(None).is_ok());
        assert!(check_network_mode(Some(&with(cri::NamespaceMode::Pod))).is_ok());
        match check_network_mode(Some(&with(cri::NamespaceMode::Node))) {
            Err(CriError::InvalidArgument(m)) => assert!(m.contains("runc RuntimeClass"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn only_namespaced_sysctls_pass_run_pod_sandbox() {
        let linux = |kv: &[(&str, &str)]| cri::LinuxPodSandboxConfig {
            sysctls: kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Default::default()
        };
        assert!(check_sysctls(None).is_ok());
        let ok = linux(&[("kernel.shm_rmid_forced", "1"), ("fs.mqueue.msg_max", "100")]);
        assert!(check_sysctls(Some(&ok)).is_ok());
        for bad in [
            linux(&[("kernel.core_pattern", "|/x")]),
            linux(&[("vm.overcommit_memory", "1")]),
            linux(&[("net.ipv4/../../../kernel/core_pattern", "x")]),
            linux(&[("net.ipv4.ip_forward", "1\n")]),
        ] {
            match check_sysctls(Some(&bad)) {
                Err(CriError::InvalidArgument(m)) => {
                    assert!(m.contains("config.linux.sysctls"), "{m}")
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }
}
