//! Containers inside the guest (issue 3), agent side.
//!
//! [`Containers`] keeps the containers of this VM (= the pod) and serves
//! the container RPCs of `proto/agent.proto` (see [`rpc`]). Containers are
//! created and run by youki's `libcontainer` from an OCI spec the agent
//! writes (see [`spec`]); each gets its own mount and PID namespace and its
//! own cgroup v2 (`/sys/fs/cgroup/carapace/<id>`), and joins the pod's
//! network, IPC and UTS namespaces ([`podns`]). Processes are collected by
//! the agent's [`Reaper`].

pub mod cgroup;
pub mod error;
pub mod helper;
pub mod path;
pub mod podns;
pub mod process;
pub mod rpc;
pub mod runtime;
pub mod seccomp;
pub mod spec;
pub mod stdio;
pub mod validate;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use carapace_agent_client::pb;
use libcontainer::container::Container;
use pb::NamespaceMode;

pub use error::ContainerError;
use process::Proc;
use spec::{NamespacePlan, SpecContext};

use crate::reaper::Reaper;

/// How long RemoveContainer(force) and StopContainer wait for processes
/// to die after SIGKILL.
pub const KILL_WAIT: Duration = Duration::from_secs(10);

pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Where the agent keeps container state in the guest.
#[derive(Debug, Clone)]
pub struct Config {
    /// libcontainer's state root.
    pub state_root: PathBuf,
    /// One bundle dir (config.json, hostname file) per container.
    pub bundle_root: PathBuf,
    pub cgroup_root: PathBuf,
    pub pod_ns_dir: PathBuf,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            state_root: "/run/carapace/libcontainer".into(),
            bundle_root: "/run/carapace/bundles".into(),
            cgroup_root: cgroup::CGROUP_ROOT.into(),
            pod_ns_dir: podns::POD_NS_DIR.into(),
        }
    }
}

struct Entry {
    id: String,
    created_at_ms: u64,
    cgroup_dir: PathBuf,
    bundle: PathBuf,
    container: Mutex<Container>,
    started: AtomicBool,
    init: Arc<Proc>,
    execs: Mutex<HashMap<String, Arc<Proc>>>,
    /// Serializes start/stop/remove of one container.
    op: tokio::sync::Mutex<()>,
}

impl Entry {
    fn state(&self) -> &'static str {
        if self.init.exited().is_some() {
            "stopped"
        } else if self.started.load(Ordering::SeqCst) {
            "running"
        } else {
            "created"
        }
    }

    fn execs(&self) -> MutexGuard<'_, HashMap<String, Arc<Proc>>> {
        self.execs.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct Inner {
    cfg: Config,
    reaper: Reaper,
    disabled: Option<&'static str>,
    map: Mutex<HashMap<String, Arc<Entry>>>,
    /// Ids being created (not in `map` yet).
    reserved: Mutex<HashSet<String>>,
    pod: Mutex<Option<PodState>>,
    /// The pod's /etc/hosts (written by ConfigureNetwork), bind-mounted
    /// into containers that do not mount their own.
    pod_hosts: Mutex<Option<PathBuf>>,
    /// Serializes ConfigureNetwork; true once one succeeded.
    network_done: tokio::sync::Mutex<bool>,
    /// PID 1 of the pod's PID namespace, made by the first POD-mode container.
    pod_pid: Mutex<Option<podns::PidHolder>>,
    exec_seq: AtomicU64,
}

/// The pod's namespaces and whether its sysctls were set in them (not yet
/// when ConfigureNetwork made them before the first container).
struct PodState {
    ns: podns::PodNamespaces,
    sysctls_set: bool,
}

/// The containers of this guest. Cheap to clone.
#[derive(Clone)]
pub struct Containers {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Containers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Containers").field("disabled", &self.inner.disabled).finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn blocking_err(e: tokio::task::JoinError) -> ContainerError {
    ContainerError::Runtime(format!("worker thread failed: {e}"))
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

    fn build(reaper: Reaper, cfg: Config, disabled: Option<&'static str>) -> Containers {
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

    fn enabled(&self) -> Result<(), ContainerError> {
        match self.inner.disabled {
            Some(r) => Err(ContainerError::Disabled(r)),
            None => Ok(()),
        }
    }

    fn get(&self, id: &str) -> Result<Arc<Entry>, ContainerError> {
        self.enabled()?;
        lock(&self.inner.map)
            .get(id)
            .cloned()
            .ok_or_else(|| ContainerError::NotFound(id.to_owned()))
    }

    fn proc_of(&self, id: &str, exec_id: &str) -> Result<(Arc<Entry>, Arc<Proc>), ContainerError> {
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

    /// CreateContainer.
    pub async fn create(&self, req: pb::CreateContainerRequest) -> Result<i32, ContainerError> {
        self.enabled()?;
        validate::check_id("container id", &req.id)?;
        {
            let map = lock(&self.inner.map);
            let mut reserved = lock(&self.inner.reserved);
            if map.contains_key(&req.id) || !reserved.insert(req.id.clone()) {
                return Err(ContainerError::AlreadyExists(format!("container {:?}", req.id)));
            }
        }
        let id = req.id.clone();
        let me = self.clone();
        let r = tokio::task::spawn_blocking(move || me.create_blocking(&req))
            .await
            .map_err(blocking_err)
            .and_then(|r| r);
        let out = match r {
            Ok(entry) => {
                let pid = entry.init.pid;
                let oom_dir = entry.cgroup_dir.clone();
                entry.init.spawn_waiter(self.inner.reaper.clone(), Some(oom_dir));
                lock(&self.inner.map).insert(id.clone(), entry);
                tracing::info!(id = %id, pid, "container created");
                Ok(pid)
            }
            Err(e) => {
                tracing::warn!(id = %id, error = %e, "create container failed");
                Err(e)
            }
        };
        lock(&self.inner.reserved).remove(&id);
        out
    }

    fn pod_namespaces(
        &self,
        hostname: &str,
        sysctls: &HashMap<String, String>,
    ) -> Result<podns::PodNamespaces, ContainerError> {
        let mut pod = lock(&self.inner.pod);
        match &mut *pod {
            Some(st) => {
                if !hostname.is_empty() {
                    st.ns.set_hostname(hostname)?;
                }
                if !st.sysctls_set {
                    st.ns.apply_sysctls(sysctls)?;
                    st.sysctls_set = true;
                }
                Ok(st.ns.clone())
            }
            None => {
                let ns =
                    podns::PodNamespaces::create(&self.inner.cfg.pod_ns_dir, hostname, sysctls)?;
                *pod = Some(PodState { ns: ns.clone(), sysctls_set: true });
                Ok(ns)
            }
        }
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

    /// The pod's PID namespace, created with its holder process on first use
    /// (again if the holder died).
    fn pod_pid_ns(&self) -> Result<PathBuf, ContainerError> {
        let mut holder = lock(&self.inner.pod_pid);
        if let Some(h) = holder.as_ref().filter(|h| h.alive()) {
            return Ok(h.ns_path());
        }
        let h = podns::PidHolder::spawn(&self.inner.reaper)?;
        let path = h.ns_path();
        *holder = Some(h);
        Ok(path)
    }

    fn create_blocking(
        &self,
        req: &pb::CreateContainerRequest,
    ) -> Result<Arc<Entry>, ContainerError> {
        let cfg = &self.inner.cfg;
        let rootfs = spec::check_rootfs(&req.rootfs_path)?;
        let ns_req = req.namespaces.unwrap_or_default();
        let cgroup_path = cgroup::spec_path(&req.id);
        // Validate everything before changing anything.
        let check_ctx = SpecContext {
            rootfs: rootfs.clone(),
            namespaces: NamespacePlan::default(),
            cgroup_path: cgroup_path.clone(),
            hostname_file: None,
            hosts_file: None,
        };
        spec::build_spec(req, &check_ctx)?;
        podns::check_sysctls(&req.pod_sysctls)?;
        let shared = |m: i32| !matches!(NamespaceMode::try_from(m), Ok(NamespaceMode::Container));
        let any_shared = shared(ns_req.network) || shared(ns_req.ipc) || shared(ns_req.uts);
        let mut plan = NamespacePlan::default();
        if any_shared {
            let pod = self.pod_namespaces(&req.hostname, &req.pod_sysctls)?;
            plan.network = shared(ns_req.network).then(|| pod.net.clone());
            plan.ipc = shared(ns_req.ipc).then(|| pod.ipc.clone());
            plan.uts = shared(ns_req.uts).then(|| pod.uts.clone());
        }
        let pid_ns_pod = matches!(NamespaceMode::try_from(ns_req.pid), Ok(NamespaceMode::Pod));
        if pid_ns_pod {
            plan.pid = Some(self.pod_pid_ns()?);
        }

        let bundle = cfg.bundle_root.join(&req.id);
        let _ = std::fs::remove_dir_all(&bundle);
        std::fs::create_dir_all(&bundle)
            .map_err(|e| ContainerError::io(format!("mkdir {}", bundle.display()), e))?;
        let r = self.create_in_bundle(req, rootfs, plan, cgroup_path, &bundle);
        if r.is_err() {
            runtime::cleanup_failed(&req.id, &cfg.state_root);
            let _ = std::fs::remove_dir_all(&bundle);
        }
        r
    }

    fn create_in_bundle(
        &self,
        req: &pb::CreateContainerRequest,
        rootfs: PathBuf,
        plan: NamespacePlan,
        cgroup_path: String,
        bundle: &Path,
    ) -> Result<Arc<Entry>, ContainerError> {
        let cfg = &self.inner.cfg;
        let hostname_file = if req.hostname.is_empty() {
            None
        } else {
            let f = bundle.join("hostname");
            std::fs::write(&f, format!("{}\n", req.hostname))
                .map_err(|e| ContainerError::io(format!("write {}", f.display()), e))?;
            Some(f)
        };
        let hosts_file = lock(&self.inner.pod_hosts).clone();
        let ctx = SpecContext { rootfs, namespaces: plan, cgroup_path, hostname_file, hosts_file };
        let spec = spec::build_spec(req, &ctx)?;
        let cfg_json = bundle.join("config.json");
        let text = serde_json::to_vec_pretty(&spec)
            .map_err(|e| ContainerError::Runtime(format!("serialize spec: {e}")))?;
        std::fs::write(&cfg_json, text)
            .map_err(|e| ContainerError::io(format!("write {}", cfg_json.display()), e))?;
        std::fs::create_dir_all(&cfg.state_root)
            .map_err(|e| ContainerError::io(format!("mkdir {}", cfg.state_root.display()), e))?;

        let with_stdin = req.process.as_ref().map(|p| p.stdin).unwrap_or(false);
        let tty = req.process.as_ref().map(|p| p.tty).unwrap_or(false);
        let (child, agent) = if tty {
            stdio::create_tty(&bundle.join("console.sock"), with_stdin)?
        } else {
            stdio::create(with_stdin)?
        };
        let (container, pid) =
            runtime::create(&self.inner.reaper, &req.id, &cfg.state_root, bundle, child)?;
        let io = match agent.start(&format!("c-{pid}")) {
            Ok(io) => io,
            Err(e) => {
                // The process exists but has no terminal: it must not stay.
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                return Err(e);
            }
        };
        Ok(Arc::new(Entry {
            id: req.id.clone(),
            created_at_ms: now_unix_ms(),
            cgroup_dir: cgroup::dir(&cfg.cgroup_root, &req.id),
            bundle: bundle.to_path_buf(),
            container: Mutex::new(container),
            started: AtomicBool::new(false),
            init: Proc::new(pid, io),
            execs: Mutex::new(HashMap::new()),
            op: tokio::sync::Mutex::new(()),
        }))
    }

    /// StartContainer.
    pub async fn start(&self, id: &str) -> Result<(), ContainerError> {
        let e = self.get(id)?;
        let _op = e.op.lock().await;
        if e.started.load(Ordering::SeqCst) || e.init.exited().is_some() {
            return Err(ContainerError::State(format!("container {id:?} is {}", e.state())));
        }
        let e2 = Arc::clone(&e);
        tokio::task::spawn_blocking(move || runtime::start(&mut lock(&e2.container)))
            .await
            .map_err(blocking_err)??;
        e.init.started_at_ms.store(now_unix_ms(), Ordering::SeqCst);
        e.started.store(true, Ordering::SeqCst);
        tracing::info!(id, "container started");
        Ok(())
    }

    /// ExecProcess. Returns (exec id, pid).
    pub async fn exec(&self, req: pb::ExecProcessRequest) -> Result<(String, i32), ContainerError> {
        let e = self.get(&req.container_id)?;
        let p = validate::check_process(req.process.as_ref())?.clone();
        let exec_id = if req.exec_id.is_empty() {
            format!("exec-{}", self.inner.exec_seq.fetch_add(1, Ordering::SeqCst))
        } else {
            validate::check_id("exec id", &req.exec_id)?;
            req.exec_id.clone()
        };
        if e.state() != "running" {
            return Err(ContainerError::State(format!(
                "container {:?} is {}: exec needs a running container",
                e.id,
                e.state()
            )));
        }
        if e.execs().contains_key(&exec_id) {
            return Err(ContainerError::AlreadyExists(format!("exec {exec_id:?}")));
        }
        let reaper = self.inner.reaper.clone();
        let state_root = self.inner.cfg.state_root.clone();
        let cid = e.id.clone();
        let bundle = e.bundle.clone();
        let with_stdin = p.stdin;
        let tty = p.tty;
        let eid = exec_id.clone();
        let (pid, io) = tokio::task::spawn_blocking(move || {
            let spec = read_spec(&bundle)?;
            let seccomp = seccomp::ExecSeccomp::from_spec(&spec)?;
            let process_file = write_exec_process(&bundle, &spec, &eid, &p, seccomp.is_some())?;
            let opts = runtime::ExecOptions { process_file: process_file.clone(), seccomp };
            let res = if tty {
                stdio::create_tty(&bundle.join(format!("exec-{eid}.sock")), with_stdin)
            } else {
                stdio::create(with_stdin)
            }
            .and_then(|(child, agent)| {
                runtime::exec(&reaper, &cid, &state_root, opts, child).map(|pid| (pid, agent))
            });
            let _ = std::fs::remove_file(&process_file);
            let (pid, agent) = res.inspect_err(|_| {
                let _ = std::fs::remove_file(bundle.join(format!("exec-{eid}.sock")));
            })?;
            match agent.start(&format!("x-{pid}")) {
                Ok(io) => Ok::<_, ContainerError>((pid, io)),
                Err(e) => {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                    Err(e)
                }
            }
        })
        .await
        .map_err(blocking_err)??;
        let proc_ = Proc::new(pid, io);
        proc_.started_at_ms.store(now_unix_ms(), Ordering::SeqCst);
        proc_.spawn_waiter(self.inner.reaper.clone(), None);
        e.execs().insert(exec_id.clone(), proc_);
        tracing::info!(id = %e.id, exec_id = %exec_id, pid, "exec started");
        Ok((exec_id, pid))
    }

    /// SignalProcess.
    pub fn signal(&self, req: &pb::SignalProcessRequest) -> Result<(), ContainerError> {
        let sig = validate::check_signal(req.signal)?;
        let (e, p) = self.proc_of(&req.container_id, &req.exec_id)?;
        if p.exited().is_some() {
            return Err(ContainerError::State("process already exited".into()));
        }
        if req.all && req.exec_id.is_empty() {
            return signal_cgroup(&e.cgroup_dir, sig);
        }
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.pid), sig)
            .map_err(|err| ContainerError::io(format!("kill {}", p.pid), err.into()))
    }

    /// WaitProcess / WaitContainer.
    pub async fn wait(
        &self,
        id: &str,
        exec_id: &str,
    ) -> Result<pb::WaitProcessResponse, ContainerError> {
        let (_e, p) = self.proc_of(id, exec_id)?;
        Ok(p.wait().await)
    }

    /// StopContainer: `signal` to init, SIGKILL to the cgroup after `grace`.
    pub async fn stop(
        &self,
        id: &str,
        signal: i32,
        grace: Duration,
    ) -> Result<pb::WaitProcessResponse, ContainerError> {
        let sig = validate::check_signal(if signal == 0 { libc::SIGTERM } else { signal })?;
        let e = self.get(id)?;
        let _op = e.op.lock().await;
        if let Some(r) = e.init.exited() {
            return Ok(r);
        }
        if !grace.is_zero() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(e.init.pid), sig);
            if let Ok(r) = tokio::time::timeout(grace, e.init.wait()).await {
                return Ok(r);
            }
            tracing::info!(id, "grace period over; killing the container");
        }
        self.kill_and_wait(&e).await
    }

    async fn kill_and_wait(&self, e: &Entry) -> Result<pb::WaitProcessResponse, ContainerError> {
        e.init.killed.store(true, Ordering::SeqCst);
        if let Err(err) = cgroup::kill_all(&e.cgroup_dir) {
            tracing::warn!(id = %e.id, error = %err, "cgroup.kill failed; killing init only");
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(e.init.pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        tokio::time::timeout(KILL_WAIT, e.init.wait()).await.map_err(|_| {
            ContainerError::State(format!("container {:?} did not die after SIGKILL", e.id))
        })
    }

    /// ContainerStats.
    pub fn stats(&self, id: &str) -> Result<pb::ContainerStatsResponse, ContainerError> {
        let e = self.get(id)?;
        cgroup::stats(&e.cgroup_dir)
    }

    /// UpdateContainerResources.
    pub fn update(&self, id: &str, r: &pb::Resources) -> Result<(), ContainerError> {
        validate::check_resources(r)?;
        let e = self.get(id)?;
        cgroup::update(&e.cgroup_dir, r)
    }

    /// RemoveContainer.
    pub async fn remove(&self, id: &str, force: bool) -> Result<(), ContainerError> {
        let e = self.get(id)?;
        let _op = e.op.lock().await;
        if e.init.exited().is_none() {
            if !force {
                return Err(ContainerError::State(format!(
                    "container {id:?} is {}: stop it first or remove with force",
                    e.state()
                )));
            }
            self.kill_and_wait(&e).await?;
        }
        let e2 = Arc::clone(&e);
        let deleted =
            tokio::task::spawn_blocking(move || runtime::delete(&mut lock(&e2.container), true))
                .await
                .map_err(blocking_err)?;
        if let Err(err) = deleted {
            tracing::warn!(id, error = %err, "libcontainer delete failed; removing state by hand");
            let _ = std::fs::remove_dir_all(self.inner.cfg.state_root.join(id));
            let _ = std::fs::remove_dir(&e.cgroup_dir);
        }
        let _ = std::fs::remove_dir_all(&e.bundle);
        lock(&self.inner.map).remove(id);
        tracing::info!(id, "container removed");
        Ok(())
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
                    id: e.id.clone(),
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

    /// ReadStdio: the output channel of a process (one reader at a time).
    pub fn take_output(&self, id: &str, exec_id: &str) -> Result<OutputLease, ContainerError> {
        let (_e, p) = self.proc_of(id, exec_id)?;
        let rx = p.io.take_output().ok_or_else(|| {
            ContainerError::State("output is already being read (one reader per process)".into())
        })?;
        Ok(OutputLease { rx: Some(rx), proc: p, ended: false })
    }

    /// ResizeTty: the window size of a process started with a terminal.
    pub fn resize_tty(&self, req: &pb::ResizeTtyRequest) -> Result<(), ContainerError> {
        let rows = u16::try_from(req.rows).ok().filter(|r| *r > 0);
        let cols = u16::try_from(req.cols).ok().filter(|c| *c > 0);
        let (Some(rows), Some(cols)) = (rows, cols) else {
            return Err(ContainerError::invalid(format!(
                "terminal size {}x{}: rows and cols must be 1..=65535",
                req.rows, req.cols
            )));
        };
        let (_e, p) = self.proc_of(&req.container_id, &req.exec_id)?;
        p.io.resize(rows, cols)
    }

    /// WriteStdin.
    pub async fn write_stdin(&self, req: pb::WriteStdinRequest) -> Result<(), ContainerError> {
        let (_e, p) = self.proc_of(&req.container_id, &req.exec_id)?;
        tokio::task::spawn_blocking(move || p.io.write_stdin(&req.data, req.close))
            .await
            .map_err(blocking_err)?
    }
}

/// The container's config.json (the agent wrote it).
fn read_spec(bundle: &Path) -> Result<serde_json::Value, ContainerError> {
    let cfg = bundle.join("config.json");
    let text = std::fs::read(&cfg)
        .map_err(|e| ContainerError::io(format!("read {}", cfg.display()), e))?;
    serde_json::from_slice(&text)
        .map_err(|e| ContainerError::Runtime(format!("parse {}: {e}", cfg.display())))
}

/// Writes the OCI process of an exec next to the container's
/// config.json (from which it takes the container's process). `confined`:
/// the exec loads a seccomp filter itself and needs the setup capabilities.
fn write_exec_process(
    bundle: &Path,
    spec: &serde_json::Value,
    exec_id: &str,
    p: &pb::Process,
    confined: bool,
) -> Result<PathBuf, ContainerError> {
    let mut process = spec::exec_process_json(&spec["process"], p);
    if confined {
        seccomp::with_setup_capabilities(&mut process);
    }
    let file = bundle.join(format!("exec-{exec_id}.process.json"));
    let body = serde_json::to_vec(&process)
        .map_err(|e| ContainerError::Runtime(format!("serialize process: {e}")))?;
    std::fs::write(&file, body)
        .map_err(|e| ContainerError::io(format!("write {}", file.display()), e))?;
    Ok(file)
}

/// Sends `sig` to every process listed in the cgroup.
fn signal_cgroup(dir: &Path, sig: nix::sys::signal::Signal) -> Result<(), ContainerError> {
    let procs = std::fs::read_to_string(dir.join("cgroup.procs"))
        .map_err(|e| ContainerError::io(format!("read {}/cgroup.procs", dir.display()), e))?;
    for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
    }
    Ok(())
}

/// A process's output channel lent to one ReadStdio reader. A reader that goes away before the
/// output ended (e.g. the host daemon restarted) gives the channel back, so the next reader
/// continues with what was not read yet.
pub struct OutputLease {
    rx: Option<tokio::sync::mpsc::Receiver<pb::StdioChunk>>,
    proc: Arc<Proc>,
    ended: bool,
}

impl tokio_stream::Stream for OutputLease {
    type Item = pb::StdioChunk;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<pb::StdioChunk>> {
        let this = &mut *self;
        let Some(rx) = this.rx.as_mut() else { return std::task::Poll::Ready(None) };
        match rx.poll_recv(cx) {
            std::task::Poll::Ready(None) => {
                this.ended = true;
                std::task::Poll::Ready(None)
            }
            other => other,
        }
    }
}

impl Drop for OutputLease {
    fn drop(&mut self) {
        if !self.ended {
            if let Some(rx) = self.rx.take() {
                *lock(&self.proc.io.output) = Some(rx);
            }
        }
    }
}

#[cfg(test)]
mod lease_tests {
    use super::*;
    use carapace_agent_client::pb::StdioChunk;
    use tokio_stream::StreamExt;

    fn chunk(data: &[u8]) -> StdioChunk {
        StdioChunk { stream: 0, data: data.to_vec() }
    }

    #[tokio::test]
    async fn a_reader_that_goes_away_gives_the_output_back_one_that_read_to_the_end_does_not() {
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let io =
            stdio::ProcessIo { output: Mutex::new(Some(rx)), stdin: Mutex::new(None), tty: None };
        let p = Proc::new(1, io);
        tx.send(chunk(b"one")).await.unwrap();
        tx.send(chunk(b"two")).await.unwrap();
        let rx = p.io.take_output().unwrap();
        let mut lease = OutputLease { rx: Some(rx), proc: Arc::clone(&p), ended: false };
        assert_eq!(lease.next().await.unwrap().data, b"one");
        drop(lease);
        // The next reader continues after what the first one read.
        let rx = p.io.take_output().expect("output not given back");
        let mut lease = OutputLease { rx: Some(rx), proc: Arc::clone(&p), ended: false };
        assert_eq!(lease.next().await.unwrap().data, b"two");
        drop(tx);
        assert!(lease.next().await.is_none());
        drop(lease);
        assert!(p.io.take_output().is_none(), "an ended output was given back");
    }
}
