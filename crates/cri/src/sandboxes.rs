//! The sandbox manager: the in-memory table of pod sandboxes backed by the durable store, and
//! the lifecycle operations (run, stop, remove) on their VMs.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use k8s_cri::v1 as cri;

use crate::config::Config;
use crate::error::CriError;
use crate::filters::SandboxFilter;
use crate::ids;
use crate::procfs;
use crate::record::{Dns, Metadata, SandboxPhase, SandboxRecord, SecuritySummary, RECORD_VERSION};
use crate::store::Store;
use crate::vmm::{self, VmFiles};

/// Nanoseconds since the Unix epoch.
pub fn now_nanos() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

/// Why the daemon could not open its state.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("cannot create {path}: {source}")]
    Dir { path: std::path::PathBuf, source: std::io::Error },
    #[error("another carapace daemon already uses the state dir {0} (its lock file is held)")]
    Locked(std::path::PathBuf),
}

/// One sandbox: `op` serializes lifecycle operations (which may wait on the VM) while `rec` can
/// always be read at once.
struct Entry {
    op: tokio::sync::Mutex<()>,
    rec: Mutex<SandboxRecord>,
}

impl Entry {
    fn rec(&self) -> MutexGuard<'_, SandboxRecord> {
        self.rec.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Default)]
struct Table {
    pods: BTreeMap<String, Arc<Entry>>,
    /// Sandbox name (name_namespace_uid_attempt) → ID, reserved from RunPodSandbox to Remove.
    names: HashMap<String, String>,
}

/// The pod sandboxes of one daemon (and, in [`crate::containers`], their containers).
pub struct Manager {
    cfg: Arc<Config>,
    store: Store,
    table: Mutex<Table>,
    pub(crate) ctrs: Arc<crate::containers::Containers>,
    _lock: fs::File,
}

/// Whether a record's sandbox is ready now (CRI state number).
pub(crate) fn state_of(rec: &SandboxRecord) -> cri::PodSandboxState {
    let alive = rec.vmm.as_ref().is_some_and(procfs::is_alive);
    if rec.phase == SandboxPhase::Ready && alive {
        cri::PodSandboxState::SandboxReady
    } else {
        cri::PodSandboxState::SandboxNotready
    }
}

pub(crate) fn metadata_of(rec: &SandboxRecord) -> cri::PodSandboxMetadata {
    cri::PodSandboxMetadata {
        name: rec.metadata.name.clone(),
        uid: rec.metadata.uid.clone(),
        namespace: rec.metadata.namespace.clone(),
        attempt: rec.metadata.attempt,
    }
}

pub(crate) fn hash(m: &BTreeMap<String, String>) -> HashMap<String, String> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// resolv.conf text for the pod's DNS config.
pub fn resolv_conf(dns: &Dns) -> String {
    let mut s = String::new();
    if !dns.searches.is_empty() {
        s += &format!("search {}\n", dns.searches.join(" "));
    }
    for server in &dns.servers {
        s += &format!("nameserver {server}\n");
    }
    if !dns.options.is_empty() {
        s += &format!("options {}\n", dns.options.join(" "));
    }
    s
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

fn lock_state_dir(dir: &Path) -> Result<fs::File, OpenError> {
    let path = dir.join("daemon.lock");
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| OpenError::Dir { path: path.clone(), source })?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(OpenError::Locked(dir.to_path_buf()));
    }
    Ok(f)
}

impl Manager {
    /// Opens the state dir (taking its lock), reloads every record and reattaches to the VMMs
    /// that still run; a sandbox whose VMM died meanwhile is recorded as stopped.
    pub fn open(cfg: Arc<Config>) -> Result<Manager, OpenError> {
        for dir in [&cfg.state_dir, &cfg.run_dir.join("pods")] {
            fs::create_dir_all(dir)
                .map_err(|source| OpenError::Dir { path: dir.clone(), source })?;
        }
        let lock = lock_state_dir(&cfg.state_dir)?;
        let store: Store = Store::open(&cfg.state_dir)?;
        let (records, bad) = store.load_all()?;
        for b in bad {
            tracing::error!(path = %b.path.display(), reason = %b.reason, "ignoring unreadable sandbox record");
        }
        let mut table = Table::default();
        for mut rec in records {
            let alive = rec.vmm.as_ref().is_some_and(procfs::is_alive);
            if rec.phase != SandboxPhase::Stopped && !alive {
                tracing::warn!(id = %rec.id, "the VM of this sandbox ended while the daemon was down");
                rec.phase = SandboxPhase::Stopped;
                rec.stopped_at = Some(now_nanos());
                store.save(&rec)?;
            } else if alive {
                tracing::info!(id = %rec.id, pid = rec.vmm.map_or(0, |p| p.pid), "reattached to running VM");
            }
            table.names.insert(rec.sandbox_name(), rec.id.clone());
            table.pods.insert(
                rec.id.clone(),
                Arc::new(Entry { op: tokio::sync::Mutex::new(()), rec: Mutex::new(rec) }),
            );
        }
        let sandboxes: Vec<SandboxRecord> = table.pods.values().map(|e| e.rec().clone()).collect();
        let ctrs = crate::containers::Containers::open(&cfg.state_dir, &sandboxes)?;
        Ok(Manager { cfg, store, table: Mutex::new(table), ctrs, _lock: lock })
    }

    /// The image store CreateContainer takes images from (set once by the daemon).
    pub fn set_image_store(&self, images: Arc<carapace_image::ImageStore>) {
        self.ctrs.set_image_store(images);
    }

    /// The record of the sandbox an ID or unique ID prefix names.
    pub(crate) fn sandbox(&self, id: &str) -> Result<SandboxRecord, CriError> {
        Ok(self.resolve(id)?.rec().clone())
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The sandbox an ID or unique ID prefix names.
    fn resolve(&self, id: &str) -> Result<Arc<Entry>, CriError> {
        if id.is_empty() {
            return Err(CriError::InvalidArgument("pod_sandbox_id must not be empty".into()));
        }
        let not_found = || CriError::NotFound(format!("pod sandbox {id:?} not found"));
        if !ids::is_id_or_prefix(id) {
            return Err(not_found());
        }
        let table = self.table();
        let mut hits = table.pods.range(id.to_string()..).take_while(|(k, _)| k.starts_with(id));
        let first = hits.next().ok_or_else(not_found)?;
        if hits.next().is_some() {
            return Err(CriError::InvalidArgument(format!(
                "pod sandbox ID prefix {id:?} matches more than one sandbox; give more digits"
            )));
        }
        Ok(first.1.clone())
    }

    /// RunPodSandbox: boots the pod's VM and waits for its agent.
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
        if !config.log_directory.is_empty() && !config.log_directory.starts_with('/') {
            return Err(CriError::InvalidArgument(format!(
                "log_directory {:?} must be an absolute path",
                config.log_directory
            )));
        }
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
                    "guest {what} {} of profile {profile_name:?} is missing: run `make guest-image` \
                     or fix profiles.{profile_name}.{what} in the carapace config",
                    file.display()
                )));
            }
        }
        let name = ids::sandbox_name(&md.name, &md.namespace, &md.uid, md.attempt);
        let id =
            ids::new_id().map_err(|e| CriError::Internal(format!("cannot make an ID: {e}")))?;
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
                md.name.clone()
            } else {
                config.hostname.clone()
            },
            dns,
            log_directory: config.log_directory.clone(),
            labels: config.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            annotations: config.annotations.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            security: security_of(config.linux.as_ref()),
            run_dir: run_dir.clone(),
            vmm: None,
            guest: BTreeMap::new(),
        };
        let entry =
            Arc::new(Entry { op: tokio::sync::Mutex::new(()), rec: Mutex::new(rec.clone()) });
        let _op = entry.op.lock().await;
        {
            let mut table = self.table();
            if let Some(other) = table.names.get(&name) {
                return Err(CriError::AlreadyExists(format!(
                    "a pod sandbox named {:?} (namespace {:?}, uid {:?}, attempt {}) already exists \
                     with ID {other}; remove it first or use another attempt number",
                    md.name, md.namespace, md.uid, md.attempt
                )));
            }
            table.names.insert(name.clone(), id.clone());
            table.pods.insert(id.clone(), entry.clone());
        }
        match self.boot(&entry, rec).await {
            Ok(()) => {
                tracing::info!(%id, name = %md.name, namespace = %md.namespace, "pod sandbox ready");
                Ok(id)
            }
            Err(e) => {
                tracing::warn!(%id, error = %e, "pod sandbox failed to start; cleaning up");
                if let Err(c) = self.cleanup(&entry).await {
                    tracing::error!(%id, error = %c, "cleanup after a failed start failed");
                }
                Err(e)
            }
        }
    }

    /// Writes the pod's files, starts the VMM and waits for the agent (record saved each step).
    async fn boot(&self, entry: &Entry, mut rec: SandboxRecord) -> Result<(), CriError> {
        let internal = |what: &str, e: std::io::Error| {
            CriError::Internal(format!("cannot {what} for pod sandbox {}: {e}", rec.id))
        };
        fs::create_dir_all(&rec.run_dir).map_err(|e| internal("create its run dir", e))?;
        fs::write(rec.run_dir.join("hostname"), format!("{}\n", rec.hostname))
            .map_err(|e| internal("write its hostname file", e))?;
        if let Some(dns) = &rec.dns {
            fs::write(rec.run_dir.join("resolv.conf"), resolv_conf(dns))
                .map_err(|e| internal("write its resolv.conf", e))?;
        }
        self.store.save(&rec)?;
        let (vsock, serial, log) = (rec.vsock_path(), rec.serial_log(), rec.vmm_log());
        let shared = rec.shared_dir();
        fs::create_dir_all(&shared).map_err(|e| internal("create its shared dir", e))?;
        let files =
            VmFiles { vsock: &vsock, serial_log: &serial, vmm_log: &log, shared_dir: &shared };
        let p = vmm::spawn(&self.cfg, &rec.profile, &files)
            .map_err(|e| CriError::Internal(format!("pod sandbox VM: {e}")))?;
        rec.vmm = Some(p);
        *entry.rec() = rec.clone();
        self.store.save(&rec)?;
        let health =
            vmm::wait_agent(&p, &files, self.cfg.agent_timeout).await.map_err(|e| match e {
                vmm::VmmError::AgentTimeout { .. } => {
                    CriError::DeadlineExceeded(format!("pod sandbox VM did not come up: {e}"))
                }
                e => CriError::Internal(format!("pod sandbox VM did not come up: {e}")),
            })?;
        rec.phase = SandboxPhase::Ready;
        rec.guest = BTreeMap::from([
            ("kernel_version".to_string(), health.kernel_version),
            ("agent_version".to_string(), health.agent_version),
            ("cpu_count".to_string(), health.cpu_count.to_string()),
            ("mem_total_bytes".to_string(), health.mem_total_bytes.to_string()),
        ]);
        self.store.save(&rec)?;
        *entry.rec() = rec;
        Ok(())
    }

    /// Stops the VM of `entry` (idempotent) and records it as stopped.
    async fn stop_entry(&self, entry: &Entry) -> Result<(), CriError> {
        let rec = entry.rec().clone();
        if let Some(p) = rec.vmm {
            let outcome = vmm::stop(&p, &rec.vsock_path(), self.cfg.stop_timeout)
                .await
                .map_err(|e| CriError::Internal(format!("stopping pod sandbox {}: {e}", rec.id)))?;
            tracing::info!(id = %rec.id, ?outcome, "pod sandbox VM stopped");
        }
        if rec.phase != SandboxPhase::Stopped {
            let mut rec = rec;
            rec.phase = SandboxPhase::Stopped;
            rec.stopped_at = Some(now_nanos());
            self.store.save(&rec)?;
            *entry.rec() = rec;
        }
        Ok(())
    }

    /// Stops the VM, deletes the pod's files and record, forgets it (the name becomes free).
    async fn cleanup(&self, entry: &Entry) -> Result<(), CriError> {
        self.stop_entry(entry).await?;
        let rec = entry.rec().clone();
        // Volumes are bind-mounted under the run dir: unmount them all before deleting it.
        crate::volumes::remove_tree(&rec.run_dir).map_err(|e| {
            CriError::Internal(format!(
                "cannot remove {} of pod sandbox {}: {e}",
                rec.run_dir.display(),
                rec.id
            ))
        })?;
        self.store.remove(&rec.id)?;
        let mut table = self.table();
        table.pods.remove(&rec.id);
        let name = rec.sandbox_name();
        if table.names.get(&name) == Some(&rec.id) {
            table.names.remove(&name);
        }
        Ok(())
    }

    /// StopPodSandbox: NotFound for an unknown ID, no error when already stopped.
    pub async fn stop(&self, id: &str) -> Result<(), CriError> {
        let entry = self.resolve(id)?;
        let _op = entry.op.lock().await;
        let rec = entry.rec().clone();
        self.stop_pod_containers(&rec).await;
        self.stop_entry(&entry).await
    }

    /// RemovePodSandbox: stops the VM if needed; no error when the sandbox is already gone.
    pub async fn remove(&self, id: &str) -> Result<(), CriError> {
        let entry = match self.resolve(id) {
            Ok(e) => e,
            Err(CriError::NotFound(_)) => {
                tracing::debug!(id, "RemovePodSandbox: already removed");
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let _op = entry.op.lock().await;
        let id = entry.rec().id.clone();
        if !self.table().pods.contains_key(&id) {
            return Ok(()); // removed by a concurrent call while we waited
        }
        let rec = entry.rec().clone();
        self.stop_pod_containers(&rec).await;
        self.remove_pod_containers(&rec).await?;
        self.cleanup(&entry).await
    }

    /// PodSandboxStatus.
    pub fn status(
        &self,
        id: &str,
        verbose: bool,
    ) -> Result<cri::PodSandboxStatusResponse, CriError> {
        let entry = self.resolve(id)?;
        let rec = entry.rec().clone();
        let s = &rec.security;
        let status = cri::PodSandboxStatus {
            id: rec.id.clone(),
            metadata: Some(metadata_of(&rec)),
            state: state_of(&rec) as i32,
            created_at: rec.created_at,
            // No pod networking yet: an empty IP (kubelet then reports none).
            network: Some(cri::PodSandboxNetworkStatus::default()),
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
            labels: hash(&rec.labels),
            annotations: hash(&rec.annotations),
            runtime_handler: rec.runtime_handler.clone(),
        };
        let mut info = HashMap::new();
        if verbose {
            let json = serde_json::to_string(&rec).unwrap_or_default();
            info.insert("info".to_string(), json);
        }
        Ok(cri::PodSandboxStatusResponse {
            status: Some(status),
            info,
            containers_statuses: self.pod_container_statuses(&rec.id),
            timestamp: now_nanos(),
        })
    }

    fn snapshot(&self) -> Vec<SandboxRecord> {
        let entries: Vec<Arc<Entry>> = self.table().pods.values().cloned().collect();
        entries.iter().map(|e| e.rec().clone()).collect()
    }

    /// ListPodSandbox.
    pub fn list(&self, filter: &SandboxFilter) -> Vec<cri::PodSandbox> {
        self.snapshot()
            .into_iter()
            .filter_map(|rec| {
                let state = state_of(&rec) as i32;
                filter.matches(&rec.id, state, &rec.labels).then(|| cri::PodSandbox {
                    id: rec.id.clone(),
                    metadata: Some(metadata_of(&rec)),
                    state,
                    created_at: rec.created_at,
                    labels: hash(&rec.labels),
                    annotations: hash(&rec.annotations),
                    runtime_handler: rec.runtime_handler.clone(),
                })
            })
            .collect()
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
                labels: hash(&rec.labels),
                annotations: hash(&rec.annotations),
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

    /// PodSandboxStats: the VM's CPU time and resident memory as the host sees its VMM.
    pub fn stats(&self, id: &str) -> Result<cri::PodSandboxStats, CriError> {
        let entry = self.resolve(id)?;
        let rec = entry.rec().clone();
        Ok(Self::stats_of(&rec))
    }

    /// ListPodSandboxStats (ready sandboxes only, as containerd does).
    pub fn list_stats(&self, filter: &SandboxFilter) -> Vec<cri::PodSandboxStats> {
        self.snapshot()
            .iter()
            .filter(|rec| {
                let state = state_of(rec) as i32;
                state == cri::PodSandboxState::SandboxReady as i32
                    && filter.matches(&rec.id, state, &rec.labels)
            })
            .map(Self::stats_of)
            .collect()
    }

    /// Whether a sandbox with this ID (full) exists.
    pub fn exists(&self, id: &str) -> bool {
        self.resolve(id).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::sample;

    fn cfg(dir: &Path) -> Arc<Config> {
        let text = format!("run_dir = {:?}\nstate_dir = {:?}", dir.join("r"), dir.join("s"));
        Arc::new(Config::from_toml_str(&text, Path::new("t"), None).unwrap())
    }

    #[test]
    fn resolv_conf_format() {
        let d = Dns {
            servers: vec!["10.0.0.10".into()],
            searches: vec!["default.svc.cluster.local".into(), "svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        };
        assert_eq!(
            resolv_conf(&d),
            "search default.svc.cluster.local svc.cluster.local\nnameserver 10.0.0.10\noptions ndots:5\n"
        );
    }

    #[test]
    fn reload_marks_dead_vms_stopped_and_keeps_names_reserved() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path());
        let store: Store = Store::open(&c.state_dir).unwrap();
        // A record whose VMM is this very process (alive), and one whose VMM is long gone.
        let me = std::process::id() as i32;
        let mut live = sample(&"a".repeat(64), "live");
        live.vmm = Some(crate::record::VmmProcess {
            pid: me,
            start_time: procfs::read_stat(me).unwrap().start_time,
        });
        let mut dead = sample(&"b".repeat(64), "dead");
        dead.vmm = Some(crate::record::VmmProcess { pid: me, start_time: 1 });
        store.save(&live).unwrap();
        store.save(&dead).unwrap();
        let m = Manager::open(c.clone()).unwrap();
        let ready = SandboxFilter { state: Some(0), ..Default::default() };
        let ids: Vec<String> = m.list(&ready).into_iter().map(|p| p.id).collect();
        assert_eq!(ids, vec![live.id.clone()]);
        assert_eq!(m.list(&SandboxFilter::default()).len(), 2);
        let (recs, _) = store.load_all().unwrap();
        let dead_now = recs.iter().find(|r| r.id == dead.id).unwrap();
        assert_eq!(dead_now.phase, SandboxPhase::Stopped);
        assert!(dead_now.stopped_at.is_some());
        // Status by unique prefix; NotFound and ambiguity errors.
        let st = m.status("aaaa", true).unwrap();
        assert_eq!(st.status.unwrap().state, cri::PodSandboxState::SandboxReady as i32);
        assert!(st.info["info"].contains("\"live\""));
        assert!(matches!(m.status("c", false), Err(CriError::NotFound(_))));
        assert!(matches!(m.status("../x", false), Err(CriError::NotFound(_))));
        assert!(matches!(m.status("", false), Err(CriError::InvalidArgument(_))));
        // Stats of the live one carry CPU and memory.
        let s = m.stats(&live.id).unwrap();
        let linux = s.linux.unwrap();
        assert!(linux.cpu.is_some() && linux.memory.is_some());
        assert_eq!(m.list_stats(&SandboxFilter::default()).len(), 1);
        drop(m);
        // A second daemon on the same state dir is refused while the first holds the lock.
        let m1 = Manager::open(c.clone()).unwrap();
        let err = Manager::open(c).err().unwrap().to_string();
        assert!(err.contains("another carapace daemon"), "{err}");
        drop(m1);
    }

    #[tokio::test]
    async fn remove_of_a_stopped_sandbox_deletes_everything_and_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path());
        let store: Store = Store::open(&c.state_dir).unwrap();
        let mut rec = sample(&"d".repeat(64), "gone");
        rec.vmm = Some(crate::record::VmmProcess { pid: std::process::id() as i32, start_time: 1 });
        rec.run_dir = c.pod_run_dir(&rec.id);
        fs::create_dir_all(&rec.run_dir).unwrap();
        fs::write(rec.run_dir.join("serial.log"), "x").unwrap();
        store.save(&rec).unwrap();
        let m = Manager::open(c.clone()).unwrap();
        m.stop(&rec.id).await.unwrap();
        m.stop(&rec.id).await.unwrap();
        m.remove(&rec.id).await.unwrap();
        m.remove(&rec.id).await.unwrap();
        assert!(!rec.run_dir.exists());
        assert!(store.load_all().unwrap().0.is_empty());
        assert!(matches!(m.stop(&rec.id).await, Err(CriError::NotFound(_))));
    }
}
