//! Containers: the CRI container RPCs, carried out by the agent inside the pod's VM.
//!
//! A container's files live in the pod's shared dir (`<run_dir>/pods/<pod>/shared/<id>`), which
//! the guest sees live through virtio-fs at [`GUEST_SHARED_DIR`]: the rootfs (`rootfs/`, the
//! image's layers flattened into one copied tree) and the volumes' bind mounts (`mounts/<n>`).
//! Records are kept durably beside the sandbox records; a monitor task per started container
//! forwards its output into the CRI log file and records its exit.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use carapace_agent_client::pb;
use carapace_agent_client::{AgentClient, AGENT_VSOCK_PORT};
use k8s_cri::v1 as cri;
use tokio::sync::broadcast;

use crate::crilog::{LogWriter, Stream};
use crate::error::CriError;
use crate::ids;
use crate::merge;
use crate::procfs;
use crate::record::{
    ContainerPhase, ContainerRecord, MountRecord, ProcessSpec, SandboxRecord,
    CONTAINER_RECORD_VERSION,
};
use crate::sandboxes::{hash, now_nanos, state_of, Manager};
use crate::store::{Store, StoreError};
use crate::volumes;

/// Where the agent mounts the pod's shared dir in the guest.
pub use carapace_agent_client::GUEST_SHARED_DIR;
/// How long reaching the agent may take for one RPC.
const AGENT_CONNECT: Duration = Duration::from_secs(10);
/// Bound of one agent call that should be quick.
const AGENT_CALL: Duration = Duration::from_secs(30);
/// The most of each of stdout and stderr ExecSync returns (kubelet's limit is 16 MiB).
pub const MAX_EXEC_OUTPUT: usize = 16 << 20;
/// How long output may still arrive after a process exited (a child may hold the pipe open).
const OUTPUT_DRAIN: Duration = Duration::from_secs(2);
/// Events kept for slow GetContainerEvents readers.
const EVENT_BACKLOG: usize = 256;
/// Longest container name.
const MAX_NAME: usize = 253;

/// One container: `op` serializes its lifecycle operations; `rec` can always be read at once.
pub(crate) struct CEntry {
    op: tokio::sync::Mutex<()>,
    rec: Mutex<ContainerRecord>,
    /// The open log file while output is forwarded (ReopenContainerLog swaps it).
    log: Mutex<Option<LogWriter>>,
    monitor: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl CEntry {
    fn new(rec: ContainerRecord) -> Arc<CEntry> {
        Arc::new(CEntry {
            op: tokio::sync::Mutex::new(()),
            rec: Mutex::new(rec),
            log: Mutex::new(None),
            monitor: Mutex::new(None),
        })
    }
    fn rec(&self) -> MutexGuard<'_, ContainerRecord> {
        lock(&self.rec)
    }
}

#[derive(Default)]
struct CTable {
    by_id: BTreeMap<String, Arc<CEntry>>,
    /// `<pod id>/<name>_<attempt>` → container ID.
    names: HashMap<String, String>,
}

/// The containers of one daemon.
pub struct Containers {
    store: Store<ContainerRecord>,
    table: Mutex<CTable>,
    events: broadcast::Sender<cri::ContainerEventResponse>,
    images: OnceLock<Arc<carapace_image::ImageStore>>,
}

/// A filter over containers (CRI ContainerFilter / ContainerStatsFilter): every set field must
/// match; IDs match in full or by prefix.
#[derive(Debug, Clone, Default)]
pub struct ContainerFilter {
    pub id: String,
    pub pod_sandbox_id: String,
    /// CRI ContainerState number.
    pub state: Option<i32>,
    pub labels: HashMap<String, String>,
}

impl ContainerFilter {
    pub fn matches(&self, rec: &ContainerRecord) -> bool {
        (self.id.is_empty() || rec.id.starts_with(&self.id))
            && (self.pod_sandbox_id.is_empty() || rec.sandbox_id.starts_with(&self.pod_sandbox_id))
            && self.state.is_none_or(|s| s == cri_state(rec) as i32)
            && self.labels.iter().all(|(k, v)| rec.labels.get(k) == Some(v))
    }
}

/// The CRI state of a record.
pub fn cri_state(rec: &ContainerRecord) -> cri::ContainerState {
    match rec.phase {
        ContainerPhase::Created => cri::ContainerState::ContainerCreated,
        ContainerPhase::Running => cri::ContainerState::ContainerRunning,
        ContainerPhase::Exited => cri::ContainerState::ContainerExited,
    }
}

fn metadata(rec: &ContainerRecord) -> cri::ContainerMetadata {
    cri::ContainerMetadata { name: rec.name.clone(), attempt: rec.attempt }
}

fn image_spec(rec: &ContainerRecord) -> cri::ImageSpec {
    cri::ImageSpec {
        image: rec.image.clone(),
        user_specified_image: rec.image.clone(),
        ..Default::default()
    }
}

/// ListContainers entry of a record.
pub fn to_container(rec: &ContainerRecord) -> cri::Container {
    cri::Container {
        id: rec.id.clone(),
        pod_sandbox_id: rec.sandbox_id.clone(),
        metadata: Some(metadata(rec)),
        image: Some(image_spec(rec)),
        image_ref: rec.image_ref.clone(),
        state: cri_state(rec) as i32,
        created_at: rec.created_at,
        labels: hash(&rec.labels),
        annotations: hash(&rec.annotations),
        image_id: rec.image_id.clone(),
    }
}

/// ContainerStatus of a record.
pub fn to_status(rec: &ContainerRecord) -> cri::ContainerStatus {
    cri::ContainerStatus {
        id: rec.id.clone(),
        metadata: Some(metadata(rec)),
        state: cri_state(rec) as i32,
        created_at: rec.created_at,
        started_at: rec.started_at,
        finished_at: rec.finished_at,
        exit_code: rec.exit_code,
        image: Some(image_spec(rec)),
        image_ref: rec.image_ref.clone(),
        reason: rec.reason.clone(),
        message: rec.message.clone(),
        labels: hash(&rec.labels),
        annotations: hash(&rec.annotations),
        mounts: rec
            .mounts
            .iter()
            .filter(|m| !m.host_path.is_empty())
            .map(|m| cri::Mount {
                container_path: m.container_path.clone(),
                host_path: m.host_path.clone(),
                readonly: m.readonly,
                selinux_relabel: m.selinux_relabel,
                propagation: m.propagation,
                ..Default::default()
            })
            .collect(),
        log_path: rec.log_path.clone(),
        resources: rec
            .resources
            .clone()
            .map(|r| cri::ContainerResources { linux: Some(r), windows: None }),
        image_id: rec.image_id.clone(),
        user: Some(cri::ContainerUser {
            linux: Some(cri::LinuxContainerUser {
                uid: i64::from(rec.process.uid),
                gid: i64::from(rec.process.gid),
                supplemental_groups: rec
                    .process
                    .additional_gids
                    .iter()
                    .map(|g| i64::from(*g))
                    .collect(),
            }),
        }),
    }
}

/// The agent's cgroup limits for CRI resources.
pub fn agent_resources(r: &cri::LinuxContainerResources) -> pb::Resources {
    pb::Resources {
        cpu_quota_us: r.cpu_quota.max(0),
        cpu_period_us: u64::try_from(r.cpu_period).unwrap_or(0),
        cpu_weight: merge::cpu_weight(r.cpu_shares),
        memory_limit_bytes: r.memory_limit_in_bytes.max(0),
        pids_limit: 0,
    }
}

/// The agent's namespace mode for CRI's PID namespace mode (the VM is the node: NODE and TARGET
/// share the pod's namespace).
fn pid_mode(cri_mode: i32) -> i32 {
    match cri::NamespaceMode::try_from(cri_mode) {
        Ok(cri::NamespaceMode::Container) => pb::NamespaceMode::Container as i32,
        _ => pb::NamespaceMode::Pod as i32,
    }
}

fn agent_err(what: &str, e: impl std::fmt::Display) -> CriError {
    CriError::Internal(format!("{what}: {e}"))
}

/// A gRPC status from the agent as a CRI error with the same meaning.
fn from_status(what: &str, s: tonic::Status) -> CriError {
    let msg = format!("{what}: {}", s.message());
    match s.code() {
        tonic::Code::NotFound => CriError::NotFound(msg),
        tonic::Code::InvalidArgument => CriError::InvalidArgument(msg),
        tonic::Code::FailedPrecondition => CriError::FailedPrecondition(msg),
        tonic::Code::AlreadyExists => CriError::AlreadyExists(msg),
        tonic::Code::Unimplemented => CriError::Unimplemented(msg),
        tonic::Code::DeadlineExceeded => CriError::DeadlineExceeded(msg),
        _ => CriError::Internal(msg),
    }
}

/// Bounds a quick agent call.
async fn call<T>(
    what: &str,
    fut: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, CriError> {
    match tokio::time::timeout(AGENT_CALL, fut).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(s)) => Err(from_status(what, s)),
        Err(_) => Err(CriError::DeadlineExceeded(format!(
            "{what}: the pod's agent did not answer within {AGENT_CALL:?}"
        ))),
    }
}

/// Reaches the agent of a sandbox whose VM runs.
async fn agent_of(sb: &SandboxRecord) -> Result<AgentClient, CriError> {
    if state_of(sb) != cri::PodSandboxState::SandboxReady {
        return Err(CriError::FailedPrecondition(format!(
            "pod sandbox {} is not ready (its VM is stopped)",
            sb.id
        )));
    }
    AgentClient::connect(&sb.vsock_path(), AGENT_VSOCK_PORT, AGENT_CONNECT)
        .await
        .map_err(|e| agent_err(&format!("cannot reach the agent of pod sandbox {}", sb.id), e))
}

fn exit_of(w: &pb::WaitProcessResponse) -> (i32, String, i64) {
    // CRI reasons as containerd gives them: Completed, Error, OOMKilled (the agent's Killed,
    // a stop whose grace period ran out, is an Error exit 137 to kubelet).
    let reason = match w.exit_reason() {
        pb::ExitReason::OomKilled => "OOMKilled".to_string(),
        _ if w.exit_code == 0 => "Completed".to_string(),
        _ => "Error".to_string(),
    };
    let finished = if w.finished_at_unix_ms > 0 {
        i64::try_from(w.finished_at_unix_ms).unwrap_or(0).saturating_mul(1_000_000)
    } else {
        now_nanos()
    };
    (w.exit_code, reason, finished)
}

impl Containers {
    /// Loads the container records. Containers of sandboxes that no longer exist are dropped
    /// (their files removed); running containers of stopped VMs are recorded as exited.
    pub(crate) fn open(
        state_dir: &Path,
        sandboxes: &[SandboxRecord],
    ) -> Result<Arc<Containers>, StoreError> {
        let store: Store<ContainerRecord> = Store::open(state_dir)?;
        let (records, bad) = store.load_all()?;
        for b in bad {
            tracing::error!(path = %b.path.display(), reason = %b.reason, "ignoring unreadable container record");
        }
        let pods: HashMap<&str, &SandboxRecord> =
            sandboxes.iter().map(|s| (s.id.as_str(), s)).collect();
        let mut table = CTable::default();
        for mut rec in records {
            let Some(sb) = pods.get(rec.sandbox_id.as_str()) else {
                tracing::warn!(id = %rec.id, pod = %rec.sandbox_id, "container of a removed pod sandbox: removing it");
                if let Err(e) = volumes::remove_tree(&rec.dir) {
                    tracing::error!(id = %rec.id, error = %e, "cannot remove the container's files");
                    continue;
                }
                store.remove(&rec.id)?;
                continue;
            };
            if rec.phase == ContainerPhase::Running
                && state_of(sb) != cri::PodSandboxState::SandboxReady
            {
                tracing::warn!(id = %rec.id, "the pod VM of this running container ended while the daemon was down");
                rec.phase = ContainerPhase::Exited;
                rec.finished_at = now_nanos();
                rec.exit_code = 255;
                rec.reason = "Error".into();
                rec.message = "the pod's VM stopped while the container ran".into();
                store.save(&rec)?;
            }
            table.names.insert(rec.pod_unique_name(), rec.id.clone());
            table.by_id.insert(rec.id.clone(), CEntry::new(rec));
        }
        let (events, _) = broadcast::channel(EVENT_BACKLOG);
        let c = Arc::new(Containers {
            store,
            table: Mutex::new(table),
            events,
            images: OnceLock::new(),
        });
        // Running containers: ask the agent how they are and resume their logs.
        if tokio::runtime::Handle::try_current().is_ok() {
            let running: Vec<(Arc<CEntry>, SandboxRecord)> = lock(&c.table)
                .by_id
                .values()
                .filter(|e| e.rec().phase == ContainerPhase::Running)
                .filter_map(|e| {
                    pods.get(e.rec().sandbox_id.as_str()).map(|sb| (e.clone(), (*sb).clone()))
                })
                .collect();
            for (e, sb) in running {
                tracing::info!(id = %e.rec().id, "resuming the monitor of a running container");
                c.spawn_monitor(&e, &sb);
            }
        }
        Ok(c)
    }

    pub(crate) fn set_image_store(&self, images: Arc<carapace_image::ImageStore>) {
        if self.images.set(images).is_err() {
            tracing::warn!("the image store was set twice; keeping the first");
        }
    }

    fn table(&self) -> MutexGuard<'_, CTable> {
        lock(&self.table)
    }

    /// The container an ID or unique ID prefix names.
    fn resolve(&self, id: &str) -> Result<Arc<CEntry>, CriError> {
        if id.is_empty() {
            return Err(CriError::InvalidArgument("container_id must not be empty".into()));
        }
        let not_found = || CriError::NotFound(format!("container {id:?} not found"));
        if !ids::is_id_or_prefix(id) {
            return Err(not_found());
        }
        let table = self.table();
        let mut hits = table.by_id.range(id.to_string()..).take_while(|(k, _)| k.starts_with(id));
        let first = hits.next().ok_or_else(not_found)?;
        if hits.next().is_some() {
            return Err(CriError::InvalidArgument(format!(
                "container ID prefix {id:?} matches more than one container; give more digits"
            )));
        }
        Ok(first.1.clone())
    }

    fn snapshot(&self) -> Vec<ContainerRecord> {
        let entries: Vec<Arc<CEntry>> = self.table().by_id.values().cloned().collect();
        entries.iter().map(|e| e.rec().clone()).collect()
    }

    fn of_pod(&self, pod: &str) -> Vec<Arc<CEntry>> {
        self.table().by_id.values().filter(|e| e.rec().sandbox_id == pod).cloned().collect()
    }

    fn save(&self, e: &CEntry, rec: ContainerRecord) -> Result<(), CriError> {
        self.store.save(&rec)?;
        *e.rec() = rec;
        Ok(())
    }

    fn emit(&self, rec: &ContainerRecord, kind: cri::ContainerEventType) {
        let ev = cri::ContainerEventResponse {
            container_id: rec.id.clone(),
            container_event_type: kind as i32,
            created_at: now_nanos(),
            pod_sandbox_status: None,
            containers_statuses: if kind == cri::ContainerEventType::ContainerDeletedEvent {
                Vec::new()
            } else {
                vec![to_status(rec)]
            },
        };
        // No subscriber is fine.
        let _ = self.events.send(ev);
    }

    /// GetContainerEvents: a receiver of every event from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<cri::ContainerEventResponse> {
        self.events.subscribe()
    }

    /// Records an exit (once) and announces it.
    fn record_exit(
        &self,
        e: &CEntry,
        exit_code: i32,
        reason: &str,
        message: &str,
        finished_at: i64,
    ) {
        let mut rec = e.rec().clone();
        if rec.phase == ContainerPhase::Exited {
            return;
        }
        rec.phase = ContainerPhase::Exited;
        rec.exit_code = exit_code;
        rec.reason = reason.to_string();
        rec.message = message.to_string();
        rec.finished_at = finished_at.max(rec.started_at);
        tracing::info!(id = %rec.id, exit_code, reason, "container exited");
        if let Err(err) = self.save(e, rec.clone()) {
            tracing::error!(id = %rec.id, error = %err, "cannot save the container's exit");
            *e.rec() = rec.clone();
        }
        self.emit(&rec, cri::ContainerEventType::ContainerStoppedEvent);
    }

    /// Starts the task that forwards a running container's output to its log and records its
    /// exit.
    fn spawn_monitor(self: &Arc<Self>, e: &Arc<CEntry>, sb: &SandboxRecord) {
        let (c, e2, sb) = (self.clone(), e.clone(), sb.clone());
        let task = tokio::spawn(async move { c.monitor(&e2, &sb).await });
        if let Some(old) = lock(&e.monitor).replace(task) {
            old.abort();
        }
    }

    async fn monitor(&self, e: &Arc<CEntry>, sb: &SandboxRecord) {
        let id = e.rec().id.clone();
        let log_path = e.rec().log_path.clone();
        if !log_path.is_empty() {
            match LogWriter::open(Path::new(&log_path)) {
                Ok(w) => *lock(&e.log) = Some(w),
                Err(err) => {
                    tracing::warn!(%id, path = %log_path, error = %err, "cannot open the container log")
                }
            }
        }
        let mut attempts = 0u32;
        loop {
            let agent = match AgentClient::connect(
                &sb.vsock_path(),
                AGENT_VSOCK_PORT,
                AGENT_CONNECT,
            )
            .await
            {
                Ok(a) => a,
                Err(err) => {
                    if !sb.vmm.as_ref().is_some_and(procfs::is_alive) {
                        self.record_exit(
                            e,
                            255,
                            "Error",
                            "the pod's VM stopped while the container ran",
                            now_nanos(),
                        );
                        break;
                    }
                    attempts += 1;
                    tracing::warn!(%id, error = %err, attempts, "cannot reach the agent to follow the container");
                    if attempts >= 5 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let logs = self.forward_output(e, &agent, &id);
            let mut grpc = agent.grpc();
            let wait = grpc.wait_container(pb::WaitContainerRequest { id: id.clone() });
            tokio::pin!(logs);
            let waited = tokio::select! {
                w = wait => {
                    // The process ended: let the rest of its output arrive, for a while.
                    let _ = tokio::time::timeout(OUTPUT_DRAIN, &mut logs).await;
                    w
                }
                () = &mut logs => grpc.wait_container(pb::WaitContainerRequest { id: id.clone() }).await,
            };
            if let Some(w) = lock(&e.log).as_mut() {
                let _ = w.finish(now_nanos());
            }
            match waited {
                Ok(w) => {
                    let w = w.into_inner();
                    let (code, reason, finished) = exit_of(&w);
                    self.record_exit(e, code, &reason, "", finished);
                    break;
                }
                Err(s) if s.code() == tonic::Code::NotFound => {
                    self.record_exit(
                        e,
                        255,
                        "Error",
                        "the pod's agent no longer knows this container",
                        now_nanos(),
                    );
                    break;
                }
                Err(s) => {
                    if !sb.vmm.as_ref().is_some_and(procfs::is_alive) {
                        self.record_exit(
                            e,
                            255,
                            "Error",
                            "the pod's VM stopped while the container ran",
                            now_nanos(),
                        );
                        break;
                    }
                    attempts += 1;
                    tracing::warn!(%id, error = %s, attempts, "waiting for the container failed; retrying");
                    if attempts >= 5 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        *lock(&e.log) = None;
    }

    /// Copies the container's output into its log file until the output ends.
    async fn forward_output(&self, e: &CEntry, agent: &AgentClient, id: &str) {
        let mut grpc = agent.grpc();
        let req = pb::ReadStdioRequest { container_id: id.to_string(), exec_id: String::new() };
        let mut stream = match grpc.read_stdio(req).await {
            Ok(s) => s.into_inner(),
            Err(s) => {
                tracing::warn!(%id, error = %s.message(), "cannot read the container's output; its log will miss it");
                return std::future::pending().await;
            }
        };
        loop {
            match stream.message().await {
                Ok(Some(chunk)) => {
                    let stream_kind = if chunk.stream == pb::stdio_chunk::Stream::Stderr as i32 {
                        Stream::Stderr
                    } else {
                        Stream::Stdout
                    };
                    if let Some(w) = lock(&e.log).as_mut() {
                        if let Err(err) = w.write(now_nanos(), stream_kind, &chunk.data) {
                            tracing::warn!(%id, error = %err, "cannot write the container log");
                        }
                    }
                }
                Ok(None) => return,
                Err(s) => {
                    tracing::debug!(%id, error = %s.message(), "container output stream ended");
                    return;
                }
            }
        }
    }
}

/// Validates a CRI mount and derives its record (the bind mount is made later).
fn mount_record(i: usize, m: &cri::Mount, cid: &str, dir: &Path) -> Result<MountRecord, CriError> {
    if !m.container_path.starts_with('/') {
        return Err(CriError::InvalidArgument(format!(
            "mount {i}: container_path {:?} must be an absolute path",
            m.container_path
        )));
    }
    if m.image.as_ref().is_some_and(|s| !s.image.is_empty()) {
        return Err(CriError::InvalidArgument(format!(
            "mount {i}: image volumes are not supported by carapace yet"
        )));
    }
    if !m.host_path.starts_with('/') {
        return Err(CriError::InvalidArgument(format!(
            "mount {i}: host_path {:?} must be an absolute path",
            m.host_path
        )));
    }
    Ok(MountRecord {
        container_path: m.container_path.clone(),
        host_path: m.host_path.clone(),
        readonly: m.readonly,
        selinux_relabel: m.selinux_relabel,
        propagation: m.propagation,
        shared_path: dir.join("mounts").join(i.to_string()),
        guest_path: format!("{GUEST_SHARED_DIR}/{cid}/mounts/{i}"),
    })
}

/// The agent's security settings for a CRI security context.
fn agent_security(
    sc: Option<&cri::LinuxContainerSecurityContext>,
) -> Result<pb::Security, CriError> {
    let Some(sc) = sc else {
        return Ok(pb::Security {
            seccomp: Some(pb::Seccomp {
                kind: pb::seccomp::Kind::Unconfined as i32,
                profile_json: String::new(),
            }),
            ..Default::default()
        });
    };
    let mut caps: Vec<String> = Vec::new();
    if let Some(c) = &sc.capabilities {
        let norm = |s: &String| {
            let s = s.to_uppercase();
            if s.starts_with("CAP_") {
                s
            } else {
                format!("CAP_{s}")
            }
        };
        let all = c.add_capabilities.iter().any(|s| s.eq_ignore_ascii_case("ALL"));
        if !c.add_capabilities.is_empty() || !c.drop_capabilities.is_empty() {
            // Start from the default set, as containerd does.
            let mut set: Vec<String> = DEFAULT_CAPS.iter().map(|s| s.to_string()).collect();
            if all {
                set = ALL_CAPS.iter().map(|s| s.to_string()).collect();
            } else {
                for a in &c.add_capabilities {
                    let a = norm(a);
                    if !set.contains(&a) {
                        set.push(a);
                    }
                }
            }
            if c.drop_capabilities.iter().any(|s| s.eq_ignore_ascii_case("ALL")) {
                set.clear();
                for a in c.add_capabilities.iter().filter(|s| !s.eq_ignore_ascii_case("ALL")) {
                    set.push(norm(a));
                }
            } else {
                let drop: Vec<String> = c.drop_capabilities.iter().map(norm).collect();
                set.retain(|s| !drop.contains(s));
            }
            caps = set;
        }
    }
    let seccomp = match &sc.seccomp {
        Some(p) if p.profile_type == cri::security_profile::ProfileType::RuntimeDefault as i32 => {
            pb::Seccomp { kind: pb::seccomp::Kind::RuntimeDefault as i32, profile_json: String::new() }
        }
        Some(p) if p.profile_type == cri::security_profile::ProfileType::Localhost as i32 => {
            return Err(CriError::Unimplemented(format!(
                "localhost seccomp profile {:?}: carapace does not load profiles from host files yet",
                p.localhost_ref
            )))
        }
        _ => pb::Seccomp { kind: pb::seccomp::Kind::Unconfined as i32, profile_json: String::new() },
    };
    Ok(pb::Security {
        capabilities: caps,
        privileged: sc.privileged,
        no_new_privs: sc.no_new_privs,
        masked_paths: sc.masked_paths.clone(),
        readonly_paths: sc.readonly_paths.clone(),
        seccomp: Some(seccomp),
    })
}

// The capabilities containers get by default (the agent's default set) and every capability
// (for `add: ["ALL"]`).
use carapace_agent_client::{ALL_CAPABILITIES as ALL_CAPS, DEFAULT_CAPABILITIES as DEFAULT_CAPS};

/// The signal number of an image's STOPSIGNAL ("SIGQUIT", "QUIT", "3"); 0 (SIGTERM) when
/// empty; None when unknown.
pub fn stop_signal(s: &str) -> Option<i32> {
    let s = s.trim();
    if s.is_empty() {
        return Some(0);
    }
    if let Ok(n) = s.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let name = s.to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    Some(match name {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "TERM" => libc::SIGTERM,
        "WINCH" => libc::SIGWINCH,
        "PWR" => libc::SIGPWR,
        "STOP" => libc::SIGSTOP,
        _ => return None,
    })
}

/// Undoes a half-made container: its bind mounts and files.
fn discard(dir: &Path) {
    if let Err(e) = volumes::remove_tree(dir) {
        tracing::error!(dir = %dir.display(), error = %e, "cannot remove a failed container's files");
    }
}

impl Manager {
    fn images(&self) -> Result<Arc<carapace_image::ImageStore>, CriError> {
        self.ctrs.images.get().cloned().ok_or_else(|| {
            CriError::FailedPrecondition(
                "this daemon has no image store configured (see [images] in the config)".into(),
            )
        })
    }

    /// CreateContainer.
    pub async fn create_container(
        &self,
        req: cri::CreateContainerRequest,
    ) -> Result<String, CriError> {
        let config = req.config.ok_or_else(|| {
            CriError::InvalidArgument("CreateContainer: config is required".into())
        })?;
        let md = config.metadata.clone().unwrap_or_default();
        if md.name.is_empty() {
            return Err(CriError::InvalidArgument(
                "CreateContainer: config.metadata.name is required".into(),
            ));
        }
        if md.name.len() > MAX_NAME || md.name.chars().any(|c| c.is_control() || c == '/') {
            return Err(CriError::InvalidArgument(format!(
                "container name {:?} must be at most {MAX_NAME} bytes without '/' or control characters",
                md.name
            )));
        }
        // NotFound (or InvalidArgument) for the sandbox first, as kubelet expects.
        let sb = self.sandbox(&req.pod_sandbox_id)?;
        let image_name = config.image.as_ref().map(|i| i.image.clone()).unwrap_or_default();
        if image_name.is_empty() {
            return Err(CriError::InvalidArgument(
                "CreateContainer: config.image.image is required".into(),
            ));
        }
        if !config.devices.is_empty() || !config.cdi_devices.is_empty() {
            return Err(CriError::InvalidArgument(
                "devices are not supported by carapace (the pod runs in a VM without host devices)"
                    .into(),
            ));
        }
        if config.stdin {
            tracing::info!(name = %md.name, "stdin is kept open for attach, which carapace does not serve yet");
        }
        if state_of(&sb) != cri::PodSandboxState::SandboxReady {
            return Err(CriError::FailedPrecondition(format!(
                "pod sandbox {} is not ready: containers can only be created in a running pod",
                sb.id
            )));
        }
        let images = self.images()?;
        let image = images
            .container_image(&image_name)
            .map_err(|e| CriError::Internal(format!("image {image_name}: {e}")))?
            .ok_or_else(|| {
                CriError::NotFound(format!("image {image_name} is not present; pull it first"))
            })?;
        let image_ref = images
            .resolve(&image_name)
            .and_then(|r| r.repo_digests.first().cloned())
            .unwrap_or_else(|| image.id.clone());
        let id =
            ids::new_id().map_err(|e| CriError::Internal(format!("cannot make an ID: {e}")))?;
        let dir = sb.shared_dir().join(&id);
        let mut mounts = Vec::new();
        for (i, m) in config.mounts.iter().enumerate() {
            mounts.push(mount_record(i, m, &id, &dir)?);
        }
        let linux = config.linux.clone().unwrap_or_default();
        let sc = linux.security_context.clone();
        let log_path = if config.log_path.is_empty() || sb.log_directory.is_empty() {
            String::new()
        } else {
            Path::new(&sb.log_directory).join(&config.log_path).display().to_string()
        };
        let rec = ContainerRecord {
            version: CONTAINER_RECORD_VERSION,
            id: id.clone(),
            sandbox_id: sb.id.clone(),
            name: md.name.clone(),
            attempt: md.attempt,
            image: image_name.clone(),
            image_id: image.id.clone(),
            image_ref,
            labels: config.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            annotations: config.annotations.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            log_path,
            phase: ContainerPhase::Created,
            created_at: now_nanos(),
            started_at: 0,
            finished_at: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            process: ProcessSpec::default(),
            mounts,
            dir: dir.clone(),
            resources: linux.resources.clone(),
            stop_signal: image.config.stop_signal.clone(),
        };
        // Reserve the name (CRI: one container per name and attempt in a pod).
        let name_key = rec.pod_unique_name();
        {
            let mut t = self.ctrs.table();
            if let Some(other) = t.names.get(&name_key) {
                return Err(CriError::AlreadyExists(format!(
                    "a container named {:?} (attempt {}) already exists in pod sandbox {} with ID {other}; \
                     remove it first or use another attempt number",
                    md.name, md.attempt, sb.id
                )));
            }
            t.names.insert(name_key.clone(), id.clone());
        }
        let made = self.make_container(&sb, rec, &config, image, sc.as_ref()).await;
        match made {
            Ok(rec) if self.sandbox(&sb.id).is_err() => {
                // The pod was removed while the container was being made: undo it.
                self.ctrs.table().names.remove(&name_key);
                discard(&rec.dir);
                self.ctrs.store.remove(&rec.id)?;
                Err(CriError::NotFound(format!(
                    "pod sandbox {} was removed while the container was created",
                    sb.id
                )))
            }
            Ok(rec) => {
                let e = CEntry::new(rec.clone());
                self.ctrs.table().by_id.insert(id.clone(), e);
                self.ctrs.emit(&rec, cri::ContainerEventType::ContainerCreatedEvent);
                tracing::info!(%id, name = %md.name, pod = %sb.id, image = %image_name, "container created");
                Ok(id)
            }
            Err(err) => {
                self.ctrs.table().names.remove(&name_key);
                Err(err)
            }
        }
    }

    /// Builds the rootfs and mounts, asks the agent to create the container, saves the record.
    async fn make_container(
        &self,
        sb: &SandboxRecord,
        mut rec: ContainerRecord,
        config: &cri::ContainerConfig,
        image: carapace_image::ContainerImage,
        sc: Option<&cri::LinuxContainerSecurityContext>,
    ) -> Result<ContainerRecord, CriError> {
        let dir = rec.dir.clone();
        let result = async {
            let rootfs = dir.join("rootfs");
            let layers = image.layers.clone();
            let target = rootfs.clone();
            // A copied tree is simple and always correct; an overlay of the store's layers
            // (virtio-fs of a host overlay mount) would save the copy: a later optimisation.
            tokio::task::spawn_blocking(move || carapace_image::flatten_layers(&layers, &target))
                .await
                .map_err(|e| CriError::Internal(format!("rootfs task failed: {e}")))?
                .map_err(|e| {
                    CriError::Internal(format!(
                        "cannot build the rootfs of image {}: {e}",
                        rec.image
                    ))
                })?;
            let accounts = merge::Accounts::read(&rootfs);
            let args = merge::command(&image.config, &config.command, &config.args, &rec.image)
                .map_err(CriError::InvalidArgument)?;
            let user =
                merge::user(&image.config, sc, &accounts).map_err(CriError::InvalidArgument)?;
            rec.process = ProcessSpec {
                args,
                env: merge::env(&image.config.env, &config.envs),
                cwd: merge::working_dir(&image.config, &config.working_dir),
                uid: user.uid,
                gid: user.gid,
                additional_gids: user.additional_gids,
                tty: config.tty,
                stdin: config.stdin,
            };
            let mut agent_mounts = Vec::new();
            for m in &rec.mounts {
                volumes::bind(Path::new(&m.host_path), &m.shared_path, m.readonly).map_err(
                    |e| CriError::InvalidArgument(format!("mount {:?}: {e}", m.container_path)),
                )?;
                agent_mounts.push(pb::Mount {
                    destination: m.container_path.clone(),
                    source: m.guest_path.clone(),
                    r#type: "bind".into(),
                    options: vec![
                        "rbind".into(),
                        if m.readonly { "ro".into() } else { "rw".into() },
                    ],
                });
            }
            // The pod's hostname and DNS, unless the client mounts its own.
            let has = |p: &str| rec.mounts.iter().any(|m| m.container_path == p);
            let mut etc = Vec::new();
            if !has("/etc/hostname") {
                etc.push(("hostname", format!("{}\n", sb.hostname)));
            }
            if let Some(dns) = sb.dns.as_ref().filter(|_| !has("/etc/resolv.conf")) {
                etc.push(("resolv.conf", crate::sandboxes::resolv_conf(dns)));
            }
            for (name, text) in etc {
                let p = dir.join("etc").join(name);
                std::fs::create_dir_all(dir.join("etc"))
                    .and_then(|()| std::fs::write(&p, text))
                    .map_err(|e| {
                        CriError::Internal(format!("cannot write {}: {e}", p.display()))
                    })?;
                agent_mounts.push(pb::Mount {
                    destination: format!("/etc/{name}"),
                    source: format!("{GUEST_SHARED_DIR}/{}/etc/{name}", rec.id),
                    r#type: "bind".into(),
                    options: vec!["rbind".into(), "rw".into()],
                });
            }
            let ns = sc.and_then(|s| s.namespace_options.as_ref());
            let areq = pb::CreateContainerRequest {
                id: rec.id.clone(),
                process: Some(pb::Process {
                    args: rec.process.args.clone(),
                    env: rec.process.env.clone(),
                    cwd: rec.process.cwd.clone(),
                    user: Some(pb::User {
                        uid: rec.process.uid,
                        gid: rec.process.gid,
                        additional_gids: rec.process.additional_gids.clone(),
                    }),
                    tty: config.tty,
                    stdin: config.stdin,
                }),
                rootfs_path: format!("{GUEST_SHARED_DIR}/{}/rootfs", rec.id),
                rootfs_readonly: sc.is_some_and(|s| s.readonly_rootfs),
                mounts: agent_mounts,
                hostname: sb.hostname.clone(),
                namespaces: Some(pb::Namespaces {
                    pid: ns.map_or(pb::NamespaceMode::Pod as i32, |n| pid_mode(n.pid)),
                    ..Default::default()
                }),
                resources: rec.resources.as_ref().map(agent_resources),
                security: Some(agent_security(sc)?),
                annotations: rec.annotations.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            };
            let agent = agent_of(sb).await?;
            call("agent CreateContainer", agent.grpc().create_container(areq)).await?;
            if let Err(e) = self.ctrs.store.save(&rec) {
                let mut g = agent.grpc();
                let _ = call(
                    "agent RemoveContainer",
                    g.remove_container(pb::RemoveContainerRequest {
                        id: rec.id.clone(),
                        force: true,
                    }),
                )
                .await;
                return Err(e.into());
            }
            Ok::<_, CriError>(rec)
        }
        .await;
        if result.is_err() {
            discard(&dir);
        }
        result
    }

    fn container(&self, id: &str) -> Result<(Arc<CEntry>, SandboxRecord), CriError> {
        let e = self.ctrs.resolve(id)?;
        let pod = e.rec().sandbox_id.clone();
        let sb = self.sandbox(&pod)?;
        Ok((e, sb))
    }

    /// StartContainer.
    pub async fn start_container(&self, id: &str) -> Result<(), CriError> {
        let (e, sb) = self.container(id)?;
        let _op = e.op.lock().await;
        let mut rec = e.rec().clone();
        match rec.phase {
            ContainerPhase::Created => {}
            ContainerPhase::Running => {
                return Err(CriError::FailedPrecondition(format!(
                    "container {} is already running",
                    rec.id
                )))
            }
            ContainerPhase::Exited => {
                return Err(CriError::FailedPrecondition(format!(
                    "container {} has exited; create a new one (CRI containers start once)",
                    rec.id
                )))
            }
        }
        let agent = agent_of(&sb).await?;
        if let Err(err) = call(
            "agent StartContainer",
            agent.grpc().start_container(pb::StartContainerRequest { id: rec.id.clone() }),
        )
        .await
        {
            // containerd records a failed start as an exit with the error.
            self.ctrs.record_exit(&e, 128, "StartError", &err.to_string(), now_nanos());
            return Err(err);
        }
        rec.phase = ContainerPhase::Running;
        rec.started_at = now_nanos();
        self.ctrs.save(&e, rec.clone())?;
        self.ctrs.emit(&rec, cri::ContainerEventType::ContainerStartedEvent);
        self.ctrs.spawn_monitor(&e, &sb);
        tracing::info!(id = %rec.id, "container started");
        Ok(())
    }

    /// StopContainer: the image's stop signal (SIGTERM), SIGKILL after `timeout_s`; no error
    /// when it is not running.
    pub async fn stop_container(&self, id: &str, timeout_s: i64) -> Result<(), CriError> {
        let (e, sb) = self.container(id)?;
        let _op = e.op.lock().await;
        self.stop_locked(&e, &sb, timeout_s).await
    }

    async fn stop_locked(
        &self,
        e: &Arc<CEntry>,
        sb: &SandboxRecord,
        timeout_s: i64,
    ) -> Result<(), CriError> {
        let rec = e.rec().clone();
        if rec.phase != ContainerPhase::Running {
            return Ok(());
        }
        if state_of(sb) != cri::PodSandboxState::SandboxReady {
            self.ctrs.record_exit(
                e,
                255,
                "Error",
                "the pod's VM stopped while the container ran",
                now_nanos(),
            );
            return Ok(());
        }
        let agent = agent_of(sb).await?;
        let timeout_ms = u64::try_from(timeout_s.max(0)).unwrap_or(0).saturating_mul(1000);
        let signal = stop_signal(&rec.stop_signal).unwrap_or_else(|| {
            tracing::warn!(id = %rec.id, signal = %rec.stop_signal, "unknown stop signal of the image; using SIGTERM");
            0
        });
        let req = pb::StopContainerRequest { id: rec.id.clone(), signal, timeout_ms };
        let mut g = agent.grpc();
        // The agent kills after the grace period; allow it that long plus the normal bound.
        let limit = Duration::from_millis(timeout_ms) + AGENT_CALL;
        let w = match tokio::time::timeout(limit, g.stop_container(req)).await {
            Ok(Ok(w)) => w.into_inner(),
            Ok(Err(s)) if s.code() == tonic::Code::NotFound => {
                self.ctrs.record_exit(
                    e,
                    255,
                    "Error",
                    "the pod's agent no longer knows this container",
                    now_nanos(),
                );
                return Ok(());
            }
            Ok(Err(s)) => return Err(from_status("agent StopContainer", s)),
            Err(_) => {
                return Err(CriError::DeadlineExceeded(format!(
                    "container {} did not stop within {limit:?}",
                    rec.id
                )))
            }
        };
        let (code, reason, finished) = exit_of(&w);
        self.ctrs.record_exit(e, code, &reason, "", finished);
        Ok(())
    }

    /// RemoveContainer: kills it if it runs, deletes its files, mounts and record; no error
    /// when it is already gone.
    pub async fn remove_container(&self, id: &str) -> Result<(), CriError> {
        let (e, sb) = match self.container(id) {
            Ok(x) => x,
            Err(CriError::NotFound(_)) => return Ok(()),
            Err(err) => return Err(err),
        };
        let _op = e.op.lock().await;
        self.remove_locked(&e, &sb, true).await
    }

    async fn remove_locked(
        &self,
        e: &Arc<CEntry>,
        sb: &SandboxRecord,
        ask_agent: bool,
    ) -> Result<(), CriError> {
        let rec = e.rec().clone();
        if !self.ctrs.table().by_id.contains_key(&rec.id) {
            return Ok(()); // removed meanwhile
        }
        if ask_agent && state_of(sb) == cri::PodSandboxState::SandboxReady {
            self.stop_locked(e, sb, 0).await?;
            let agent = agent_of(sb).await?;
            let mut g = agent.grpc();
            match call(
                "agent RemoveContainer",
                g.remove_container(pb::RemoveContainerRequest { id: rec.id.clone(), force: true }),
            )
            .await
            {
                Ok(_) | Err(CriError::NotFound(_)) => {}
                Err(err) => return Err(err),
            }
        }
        if let Some(t) = lock(&e.monitor).take() {
            t.abort();
        }
        *lock(&e.log) = None;
        volumes::remove_tree(&rec.dir).map_err(|err| {
            CriError::Internal(format!("cannot remove the files of container {}: {err}", rec.id))
        })?;
        self.ctrs.store.remove(&rec.id)?;
        {
            let mut t = self.ctrs.table();
            t.by_id.remove(&rec.id);
            let key = rec.pod_unique_name();
            if t.names.get(&key) == Some(&rec.id) {
                t.names.remove(&key);
            }
        }
        self.ctrs.emit(&rec, cri::ContainerEventType::ContainerDeletedEvent);
        tracing::info!(id = %rec.id, "container removed");
        Ok(())
    }

    /// StopPodSandbox's part: kill the pod's running containers (errors are logged; the VM
    /// stop that follows ends them anyway).
    pub(crate) async fn stop_pod_containers(&self, sb: &SandboxRecord) {
        for e in self.ctrs.of_pod(&sb.id) {
            let _op = e.op.lock().await;
            if let Err(err) = self.stop_locked(&e, sb, 0).await {
                tracing::warn!(id = %e.rec().id, error = %err, "cannot stop a container of the stopping pod");
                self.ctrs.record_exit(&e, 137, "Error", "killed with its pod sandbox", now_nanos());
            }
        }
    }

    /// RemovePodSandbox's part: forget the pod's containers and delete their files.
    pub(crate) async fn remove_pod_containers(&self, sb: &SandboxRecord) -> Result<(), CriError> {
        for e in self.ctrs.of_pod(&sb.id) {
            let _op = e.op.lock().await;
            self.remove_locked(&e, sb, false).await?;
        }
        Ok(())
    }

    /// ListContainers.
    pub fn list_containers(&self, filter: &ContainerFilter) -> Vec<cri::Container> {
        self.ctrs.snapshot().iter().filter(|r| filter.matches(r)).map(to_container).collect()
    }

    /// ContainerStatus.
    pub fn container_status(
        &self,
        id: &str,
        verbose: bool,
    ) -> Result<cri::ContainerStatusResponse, CriError> {
        let e = self.ctrs.resolve(id)?;
        let rec = e.rec().clone();
        let mut info = HashMap::new();
        if verbose {
            info.insert("info".to_string(), serde_json::to_string(&rec).unwrap_or_default());
        }
        Ok(cri::ContainerStatusResponse { status: Some(to_status(&rec)), info })
    }

    /// The statuses of a pod's containers.
    pub fn pod_container_statuses(&self, pod: &str) -> Vec<cri::ContainerStatus> {
        self.ctrs.of_pod(pod).iter().map(|e| to_status(&e.rec())).collect()
    }

    /// GetContainerEvents.
    pub fn container_events(&self) -> broadcast::Receiver<cri::ContainerEventResponse> {
        self.ctrs.subscribe()
    }

    /// UpdateContainerResources.
    pub async fn update_container_resources(
        &self,
        id: &str,
        linux: Option<cri::LinuxContainerResources>,
    ) -> Result<(), CriError> {
        let (e, sb) = self.container(id)?;
        let _op = e.op.lock().await;
        let Some(r) = linux else { return Ok(()) };
        let mut rec = e.rec().clone();
        if rec.phase == ContainerPhase::Exited {
            return Err(CriError::FailedPrecondition(format!(
                "container {} has exited: its resources cannot change",
                rec.id
            )));
        }
        let agent = agent_of(&sb).await?;
        let req = pb::UpdateContainerResourcesRequest {
            id: rec.id.clone(),
            resources: Some(agent_resources(&r)),
        };
        call("agent UpdateContainerResources", agent.grpc().update_container_resources(req))
            .await?;
        rec.resources = Some(r);
        self.ctrs.save(&e, rec)
    }

    /// ReopenContainerLog: the log file was rotated; continue in a new file at the same path.
    pub fn reopen_container_log(&self, id: &str) -> Result<(), CriError> {
        let e = self.ctrs.resolve(id)?;
        let rec = e.rec().clone();
        if rec.phase != ContainerPhase::Running {
            return Err(CriError::FailedPrecondition(format!(
                "container {} is not running",
                rec.id
            )));
        }
        if let Some(w) = lock(&e.log).as_mut() {
            w.reopen().map_err(|err| {
                CriError::Internal(format!(
                    "cannot reopen the log {} of container {}: {err}",
                    rec.log_path, rec.id
                ))
            })?;
        }
        Ok(())
    }

    /// ExecSync: runs `cmd` in the container, returns its output and exit code; after
    /// `timeout_s` (0: none) the command is killed and DeadlineExceeded returned.
    pub async fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        timeout_s: i64,
    ) -> Result<cri::ExecSyncResponse, CriError> {
        if cmd.is_empty() {
            return Err(CriError::InvalidArgument("ExecSync: cmd must not be empty".into()));
        }
        let (e, sb) = self.container(id)?;
        let rec = e.rec().clone();
        if rec.phase != ContainerPhase::Running {
            return Err(CriError::FailedPrecondition(format!(
                "container {} is not running: exec needs a running container",
                rec.id
            )));
        }
        let agent = agent_of(&sb).await?;
        let p = &rec.process;
        let req = pb::ExecProcessRequest {
            container_id: rec.id.clone(),
            exec_id: String::new(),
            process: Some(pb::Process {
                args: cmd.clone(),
                env: p.env.clone(),
                cwd: p.cwd.clone(),
                user: Some(pb::User {
                    uid: p.uid,
                    gid: p.gid,
                    additional_gids: p.additional_gids.clone(),
                }),
                tty: false,
                stdin: false,
            }),
        };
        let exec_id = call("agent ExecProcess", agent.grpc().exec_process(req)).await?.exec_id;
        let mut g = agent.grpc();
        let read_req =
            pb::ReadStdioRequest { container_id: rec.id.clone(), exec_id: exec_id.clone() };
        let reader = tokio::spawn(async move {
            let mut out = (Vec::new(), Vec::new());
            let Ok(s) = g.read_stdio(read_req).await else { return out };
            let mut s = s.into_inner();
            while let Ok(Some(chunk)) = s.message().await {
                let buf = if chunk.stream == pb::stdio_chunk::Stream::Stderr as i32 {
                    &mut out.1
                } else {
                    &mut out.0
                };
                let room = MAX_EXEC_OUTPUT.saturating_sub(buf.len());
                buf.extend_from_slice(&chunk.data[..chunk.data.len().min(room)]);
            }
            out
        });
        let mut g = agent.grpc();
        let wait = g.wait_process(pb::WaitProcessRequest {
            container_id: rec.id.clone(),
            exec_id: exec_id.clone(),
        });
        let waited = if timeout_s > 0 {
            match tokio::time::timeout(Duration::from_secs(timeout_s as u64), wait).await {
                Ok(w) => w,
                Err(_) => {
                    reader.abort();
                    let mut g = agent.grpc();
                    let kill = pb::SignalProcessRequest {
                        container_id: rec.id.clone(),
                        exec_id,
                        signal: libc::SIGKILL,
                        all: false,
                    };
                    let _ = call("agent SignalProcess", g.signal_process(kill)).await;
                    return Err(CriError::DeadlineExceeded(format!(
                        "command {cmd:?} in container {} timed out after {timeout_s}s",
                        rec.id
                    )));
                }
            }
        } else {
            wait.await
        };
        let w = waited.map_err(|s| from_status("agent WaitProcess", s))?.into_inner();
        let (stdout, stderr) = match tokio::time::timeout(OUTPUT_DRAIN, reader).await {
            Ok(Ok(out)) => out,
            _ => (Vec::new(), Vec::new()),
        };
        Ok(cri::ExecSyncResponse { stdout, stderr, exit_code: w.exit_code })
    }

    /// ContainerStats of one container (CPU and memory from its cgroup in the guest while it
    /// runs; attributes only otherwise).
    pub async fn container_stats(&self, id: &str) -> Result<cri::ContainerStats, CriError> {
        let (e, sb) = self.container(id)?;
        let rec = e.rec().clone();
        let agent =
            if rec.phase == ContainerPhase::Running { agent_of(&sb).await.ok() } else { None };
        Ok(stats_of(&rec, agent.as_ref()).await)
    }

    /// ListContainerStats (containers whose pod runs).
    pub async fn list_container_stats(&self, filter: &ContainerFilter) -> Vec<cri::ContainerStats> {
        let recs: Vec<ContainerRecord> =
            self.ctrs.snapshot().into_iter().filter(|r| filter.matches(r)).collect();
        let mut agents: HashMap<String, Option<AgentClient>> = HashMap::new();
        let mut out = Vec::new();
        for rec in recs {
            let Ok(sb) = self.sandbox(&rec.sandbox_id) else { continue };
            if state_of(&sb) != cri::PodSandboxState::SandboxReady {
                continue;
            }
            if !agents.contains_key(&sb.id) {
                let a = if rec.phase == ContainerPhase::Running {
                    agent_of(&sb).await.ok()
                } else {
                    None
                };
                agents.insert(sb.id.clone(), a);
            }
            let agent = agents.get(&sb.id).and_then(|a| a.as_ref());
            out.push(
                stats_of(&rec, if rec.phase == ContainerPhase::Running { agent } else { None })
                    .await,
            );
        }
        out
    }
}

/// CRI stats of a container from the agent's cgroup figures.
pub fn cri_stats(
    rec: &ContainerRecord,
    s: Option<&pb::ContainerStatsResponse>,
) -> cri::ContainerStats {
    let attributes = Some(cri::ContainerAttributes {
        id: rec.id.clone(),
        metadata: Some(metadata(rec)),
        labels: hash(&rec.labels),
        annotations: hash(&rec.annotations),
    });
    let Some(s) = s else {
        return cri::ContainerStats { attributes, ..Default::default() };
    };
    let ts = if s.timestamp_unix_ms > 0 {
        i64::try_from(s.timestamp_unix_ms).unwrap_or(0).saturating_mul(1_000_000)
    } else {
        now_nanos()
    };
    let v = |value: u64| Some(cri::UInt64Value { value });
    cri::ContainerStats {
        attributes,
        cpu: Some(cri::CpuUsage {
            timestamp: ts,
            usage_core_nano_seconds: v(s.cpu_usage_usec.saturating_mul(1000)),
            usage_nano_cores: None,
        }),
        memory: Some(cri::MemoryUsage {
            timestamp: ts,
            working_set_bytes: v(s.memory_working_set_bytes),
            available_bytes: (s.memory_limit_bytes > 0).then(|| cri::UInt64Value {
                value: s.memory_limit_bytes.saturating_sub(s.memory_working_set_bytes),
            }),
            usage_bytes: v(s.memory_usage_bytes),
            rss_bytes: v(s.memory_anon_bytes),
            page_faults: None,
            major_page_faults: None,
        }),
        writable_layer: None,
        swap: None,
    }
}

async fn stats_of(rec: &ContainerRecord, agent: Option<&AgentClient>) -> cri::ContainerStats {
    let s = match agent {
        Some(a) => {
            let mut g = a.grpc();
            call(
                "agent ContainerStats",
                g.container_stats(pb::ContainerStatsRequest { id: rec.id.clone() }),
            )
            .await
            .map_err(|e| tracing::debug!(id = %rec.id, error = %e, "no stats from the agent"))
            .ok()
        }
        None => None,
    };
    cri_stats(rec, s.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    pub(crate) fn sample(id: &str, pod: &str, name: &str) -> ContainerRecord {
        ContainerRecord {
            version: CONTAINER_RECORD_VERSION,
            id: id.into(),
            sandbox_id: pod.into(),
            name: name.into(),
            attempt: 0,
            image: "busybox:latest".into(),
            image_id: "sha256:aa".into(),
            image_ref: "registry/busybox@sha256:bb".into(),
            labels: [("app".to_string(), name.to_string())].into(),
            annotations: Default::default(),
            log_path: "/var/log/pods/x/c/0.log".into(),
            phase: ContainerPhase::Created,
            created_at: 1,
            started_at: 0,
            finished_at: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            process: ProcessSpec { args: vec!["sh".into()], uid: 5, gid: 6, ..Default::default() },
            mounts: vec![MountRecord {
                container_path: "/data".into(),
                host_path: "/srv/data".into(),
                readonly: true,
                selinux_relabel: false,
                propagation: 0,
                shared_path: PathBuf::from("/run/x/mounts/0"),
                guest_path: format!("{GUEST_SHARED_DIR}/{id}/mounts/0"),
            }],
            dir: PathBuf::from("/run/x"),
            resources: Some(cri::LinuxContainerResources {
                memory_limit_in_bytes: 1 << 20,
                ..Default::default()
            }),
            stop_signal: String::new(),
        }
    }

    #[test]
    fn record_round_trip_through_the_store() {
        let d = tempfile::tempdir().unwrap();
        let store: Store<ContainerRecord> = Store::open(d.path()).unwrap();
        let mut a = sample(&"a".repeat(64), &"p".repeat(0), "web");
        a.sandbox_id = "f".repeat(64);
        a.phase = ContainerPhase::Exited;
        a.exit_code = 3;
        store.save(&a).unwrap();
        let (recs, bad) = store.load_all().unwrap();
        assert!(bad.is_empty());
        assert_eq!(recs, vec![a]);
        assert!(d.path().join("containers").is_dir());
    }

    fn manager_with(dir: &Path, pods: &[SandboxRecord], ctrs: &[ContainerRecord]) -> Manager {
        let text = format!("run_dir = {:?}\nstate_dir = {:?}", dir.join("r"), dir.join("s"));
        let cfg =
            Arc::new(crate::config::Config::from_toml_str(&text, Path::new("t"), None).unwrap());
        let sstore: Store = Store::open(&cfg.state_dir).unwrap();
        for p in pods {
            sstore.save(p).unwrap();
        }
        let cstore: Store<ContainerRecord> = Store::open(&cfg.state_dir).unwrap();
        for c in ctrs {
            cstore.save(c).unwrap();
        }
        Manager::open(cfg).unwrap()
    }

    #[tokio::test]
    async fn unknown_ids_get_not_found_and_removal_is_idempotent() {
        let d = tempfile::tempdir().unwrap();
        let m = manager_with(d.path(), &[], &[]);
        let unknown = "e".repeat(64);
        assert!(matches!(m.container_status(&unknown, false), Err(CriError::NotFound(_))));
        assert!(matches!(m.container_status("", false), Err(CriError::InvalidArgument(_))));
        assert!(matches!(m.container_status("../x", false), Err(CriError::NotFound(_))));
        assert!(matches!(m.start_container(&unknown).await, Err(CriError::NotFound(_))));
        assert!(matches!(m.stop_container(&unknown, 1).await, Err(CriError::NotFound(_))));
        assert!(matches!(
            m.exec_sync(&unknown, vec!["true".into()], 1).await,
            Err(CriError::NotFound(_))
        ));
        assert!(matches!(
            m.exec_sync(&unknown, vec![], 1).await,
            Err(CriError::InvalidArgument(_))
        ));
        assert!(matches!(m.container_stats(&unknown).await, Err(CriError::NotFound(_))));
        assert!(matches!(m.reopen_container_log(&unknown), Err(CriError::NotFound(_))));
        assert!(matches!(
            m.update_container_resources(&unknown, None).await,
            Err(CriError::NotFound(_))
        ));
        m.remove_container(&unknown).await.unwrap();
        assert!(m.list_containers(&ContainerFilter::default()).is_empty());
        // CreateContainer: unknown pod, missing config.
        let req = cri::CreateContainerRequest {
            pod_sandbox_id: unknown.clone(),
            config: Some(cri::ContainerConfig {
                metadata: Some(cri::ContainerMetadata { name: "c".into(), attempt: 0 }),
                ..Default::default()
            }),
            sandbox_config: None,
        };
        assert!(matches!(m.create_container(req).await, Err(CriError::NotFound(_))));
        let req = cri::CreateContainerRequest { pod_sandbox_id: unknown, ..Default::default() };
        assert!(matches!(m.create_container(req).await, Err(CriError::InvalidArgument(_))));
    }

    #[tokio::test]
    async fn reload_keeps_states_ends_containers_of_dead_vms_and_drops_orphans() {
        let d = tempfile::tempdir().unwrap();
        // A pod whose VM is long gone (a PID with the wrong start time).
        let mut pod = crate::store::tests::sample(&"b".repeat(64), "web");
        pod.vmm = Some(crate::record::VmmProcess { pid: std::process::id() as i32, start_time: 1 });
        let mut running = sample(&"a1".repeat(32), &pod.id, "server");
        running.phase = ContainerPhase::Running;
        running.started_at = 5;
        running.dir = d.path().join("c1");
        let mut done = sample(&"a2".repeat(32), &pod.id, "job");
        done.phase = ContainerPhase::Exited;
        done.exit_code = 3;
        done.dir = d.path().join("c2");
        let mut orphan = sample(&"a3".repeat(32), &"9".repeat(64), "lost");
        orphan.dir = d.path().join("c3");
        std::fs::create_dir_all(orphan.dir.join("rootfs")).unwrap();
        let m = manager_with(
            d.path(),
            &[pod.clone()],
            &[running.clone(), done.clone(), orphan.clone()],
        );
        let all = m.list_containers(&ContainerFilter::default());
        assert_eq!(all.len(), 2, "{all:?}");
        assert!(!orphan.dir.exists(), "orphan's files kept");
        let s = m.container_status(&running.id[..8], false).unwrap().status.unwrap();
        assert_eq!(s.state, cri::ContainerState::ContainerExited as i32);
        assert_eq!(s.exit_code, 255);
        assert!(s.message.contains("VM"), "{}", s.message);
        let s = m.container_status(&done.id, true).unwrap();
        assert_eq!(s.status.unwrap().exit_code, 3);
        assert!(s.info["info"].contains("\"job\""));
        // An ambiguous prefix is refused; a running-only action on an exited one is a precondition.
        assert!(matches!(m.container_status("a", false), Err(CriError::InvalidArgument(_))));
        assert!(matches!(m.start_container(&done.id).await, Err(CriError::FailedPrecondition(_))));
        assert!(matches!(
            m.exec_sync(&done.id, vec!["true".into()], 1).await,
            Err(CriError::FailedPrecondition(_))
        ));
        assert!(matches!(m.reopen_container_log(&done.id), Err(CriError::FailedPrecondition(_))));
        m.stop_container(&done.id, 1).await.unwrap(); // stopping an exited container: no error
                                                      // Remove (the pod's VM is down: no agent call) deletes record and files; idempotent.
        let mut events = m.container_events();
        m.remove_container(&done.id).await.unwrap();
        m.remove_container(&done.id).await.unwrap();
        let ev = events.try_recv().unwrap();
        assert_eq!(ev.container_id, done.id);
        assert_eq!(ev.container_event_type, cri::ContainerEventType::ContainerDeletedEvent as i32);
        assert_eq!(m.list_containers(&ContainerFilter::default()).len(), 1);
        // Removing the pod removes its remaining containers and their records.
        m.remove(&pod.id).await.unwrap();
        assert!(m.list_containers(&ContainerFilter::default()).is_empty());
        let store: Store<ContainerRecord> = Store::open(&d.path().join("s")).unwrap();
        assert!(store.load_all().unwrap().0.is_empty());
    }

    #[test]
    fn filters() {
        let mut r = sample(&"ab".repeat(32), &"cd".repeat(32), "web");
        r.phase = ContainerPhase::Running;
        let f =
            |id: &str, pod: &str, state: Option<i32>, labels: &[(&str, &str)]| ContainerFilter {
                id: id.into(),
                pod_sandbox_id: pod.into(),
                state,
                labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            };
        assert!(f("", "", None, &[]).matches(&r));
        assert!(f("abab", "cd", Some(1), &[("app", "web")]).matches(&r));
        assert!(!f("b", "", None, &[]).matches(&r));
        assert!(!f("", "x", None, &[]).matches(&r));
        assert!(!f("", "", Some(2), &[]).matches(&r));
        assert!(!f("", "", None, &[("app", "db")]).matches(&r));
        assert!(!f("", "", None, &[("tier", "web")]).matches(&r));
    }

    #[test]
    fn status_reports_state_exit_image_mounts_and_user() {
        let mut r = sample(&"a".repeat(64), &"b".repeat(64), "job");
        r.phase = ContainerPhase::Exited;
        r.started_at = 10;
        r.finished_at = 20;
        r.exit_code = 3;
        r.reason = "Error".into();
        let s = to_status(&r);
        assert_eq!(s.state, cri::ContainerState::ContainerExited as i32);
        assert_eq!((s.started_at, s.finished_at, s.exit_code), (10, 20, 3));
        assert_eq!(s.reason, "Error");
        assert_eq!(s.image.unwrap().image, "busybox:latest");
        assert_eq!(s.image_ref, "registry/busybox@sha256:bb");
        assert_eq!(s.image_id, "sha256:aa");
        assert_eq!(s.mounts.len(), 1);
        assert!(s.mounts[0].readonly);
        assert_eq!(s.log_path, "/var/log/pods/x/c/0.log");
        assert_eq!(s.user.unwrap().linux.unwrap().uid, 5);
        assert_eq!(s.resources.unwrap().linux.unwrap().memory_limit_in_bytes, 1 << 20);
        let c = to_container(&r);
        assert_eq!(c.pod_sandbox_id, "b".repeat(64));
        assert_eq!(c.state, cri::ContainerState::ContainerExited as i32);
    }

    #[test]
    fn stop_signals() {
        assert_eq!(stop_signal(""), Some(0));
        assert_eq!(stop_signal("SIGQUIT"), Some(libc::SIGQUIT));
        assert_eq!(stop_signal("quit"), Some(libc::SIGQUIT));
        assert_eq!(stop_signal("9"), Some(9));
        assert_eq!(stop_signal("99"), None);
        assert_eq!(stop_signal("SIGNOPE"), None);
    }

    #[test]
    fn exits_and_reasons() {
        let w = |code, reason: pb::ExitReason, fin| pb::WaitProcessResponse {
            exit_code: code,
            exit_reason: reason as i32,
            finished_at_unix_ms: fin,
            ..Default::default()
        };
        assert_eq!(
            exit_of(&w(0, pb::ExitReason::Unspecified, 5)),
            (0, "Completed".into(), 5_000_000)
        );
        assert_eq!(exit_of(&w(3, pb::ExitReason::Unspecified, 5)).1, "Error");
        assert_eq!(exit_of(&w(137, pb::ExitReason::OomKilled, 5)).1, "OOMKilled");
        assert_eq!(exit_of(&w(137, pb::ExitReason::Killed, 5)).1, "Error");
        assert_eq!(exit_of(&w(0, pb::ExitReason::Completed, 0)).1, "Completed");
        assert!(
            exit_of(&w(0, pb::ExitReason::Unspecified, 0)).2 > 0,
            "no finish time when the agent gave none"
        );
    }

    #[test]
    fn mounts_are_validated() {
        let dir = Path::new("/s/c");
        let m = |c: &str, h: &str| cri::Mount {
            container_path: c.into(),
            host_path: h.into(),
            ..Default::default()
        };
        let r = mount_record(2, &m("/data", "/srv"), "cid", dir).unwrap();
        assert_eq!(r.shared_path, PathBuf::from("/s/c/mounts/2"));
        assert_eq!(r.guest_path, "/run/carapace/shared/cid/mounts/2");
        assert!(matches!(
            mount_record(0, &m("data", "/srv"), "c", dir),
            Err(CriError::InvalidArgument(_))
        ));
        assert!(matches!(
            mount_record(0, &m("/data", "srv"), "c", dir),
            Err(CriError::InvalidArgument(_))
        ));
    }

    #[test]
    fn resources_and_security_map_to_the_agent() {
        let r = agent_resources(&cri::LinuxContainerResources {
            cpu_period: 100_000,
            cpu_quota: 50_000,
            cpu_shares: 1024,
            memory_limit_in_bytes: 64 << 20,
            ..Default::default()
        });
        assert_eq!(
            (r.cpu_quota_us, r.cpu_period_us, r.cpu_weight, r.memory_limit_bytes),
            (50_000, 100_000, 39, 64 << 20)
        );
        let sc = cri::LinuxContainerSecurityContext {
            capabilities: Some(cri::Capability {
                add_capabilities: vec!["NET_ADMIN".into()],
                drop_capabilities: vec!["CAP_KILL".into()],
                ..Default::default()
            }),
            seccomp: Some(cri::SecurityProfile {
                profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32,
                ..Default::default()
            }),
            ..Default::default()
        };
        let s = agent_security(Some(&sc)).unwrap();
        assert!(s.capabilities.contains(&"CAP_NET_ADMIN".to_string()));
        assert!(!s.capabilities.contains(&"CAP_KILL".to_string()));
        assert!(s.capabilities.contains(&"CAP_CHOWN".to_string()));
        assert_eq!(s.seccomp.unwrap().kind, pb::seccomp::Kind::RuntimeDefault as i32);
        let drop_all = cri::LinuxContainerSecurityContext {
            capabilities: Some(cri::Capability {
                add_capabilities: vec!["chown".into()],
                drop_capabilities: vec!["ALL".into()],
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            agent_security(Some(&drop_all)).unwrap().capabilities,
            vec!["CAP_CHOWN".to_string()]
        );
        assert_eq!(
            pid_mode(cri::NamespaceMode::Container as i32),
            pb::NamespaceMode::Container as i32
        );
        assert_eq!(pid_mode(cri::NamespaceMode::Pod as i32), pb::NamespaceMode::Pod as i32);
    }

    #[test]
    fn stats_convert_units() {
        let r = sample(&"a".repeat(64), &"b".repeat(64), "web");
        let s = cri_stats(
            &r,
            Some(&pb::ContainerStatsResponse {
                timestamp_unix_ms: 2,
                cpu_usage_usec: 7,
                memory_working_set_bytes: 100,
                memory_limit_bytes: 300,
                memory_usage_bytes: 150,
                memory_anon_bytes: 90,
                ..Default::default()
            }),
        );
        let cpu = s.cpu.unwrap();
        assert_eq!((cpu.timestamp, cpu.usage_core_nano_seconds.unwrap().value), (2_000_000, 7000));
        let m = s.memory.unwrap();
        assert_eq!(m.available_bytes.unwrap().value, 200);
        assert_eq!(m.rss_bytes.unwrap().value, 90);
        let none = cri_stats(&r, None);
        assert!(none.cpu.is_none());
        assert_eq!(none.attributes.unwrap().id, r.id);
    }
}
