//! The daemon's one owner of state: [`Runtime`] holds the sandbox table and the container
//! table as peers (and later the network and streaming parts), and carries out what involves
//! both: a pod's containers stop and go away with it, and each container call finds its pod.

use std::fs;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use k8s_cri::v1 as cri;
use tokio::sync::broadcast;

use crate::cni::CniManager;
use crate::config::Config;
use crate::containers::running::RunningContainer;
use crate::containers::{ContainerTable, OutputEvent, Pods};
use crate::error::CriError;
use crate::filters::{ContainerFilter, SandboxFilter};
use crate::record::{SandboxPhase, SandboxRecord};
use crate::sandboxes::SandboxTable;
use crate::streaming::{check_stdio, StreamRequest, Streaming};

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

impl Pods for SandboxTable {
    fn pod(&self, id: &str) -> Result<SandboxRecord, CriError> {
        self.record(id)
    }
}

/// The pod sandboxes and containers of one daemon.
pub struct Runtime {
    cfg: Arc<Config>,
    sandboxes: SandboxTable,
    containers: Arc<ContainerTable>,
    /// Pod networking (CNI); its cache lives in `<state_dir>/cni`.
    cni: Arc<CniManager>,
    /// The streaming server's URLs and tokens (set once by the daemon after it bound it).
    streaming: OnceLock<Arc<Streaming>>,
    _lock: fs::File,
}

impl Runtime {
    /// Opens the state dir (taking its lock), reloads every record and reattaches to the VMMs
    /// and containers that still run.
    pub fn open(cfg: Arc<Config>) -> Result<Runtime, OpenError> {
        for dir in [&cfg.state_dir, &cfg.run_dir.join("pods")] {
            fs::create_dir_all(dir)
                .map_err(|source| OpenError::Dir { path: dir.clone(), source })?;
        }
        let lock = lock_state_dir(&cfg.state_dir)?;
        let cni = Arc::new(CniManager::new(&cfg.cni, &cfg.state_dir));
        let sandboxes = SandboxTable::open(cfg.clone(), cni.clone())?;
        let containers = ContainerTable::open(&cfg.state_dir, &sandboxes.snapshot())?;
        Ok(Runtime { cfg, sandboxes, containers, cni, streaming: OnceLock::new(), _lock: lock })
    }

    /// The image store CreateContainer takes images from (set once by the daemon).
    pub fn set_image_store(&self, images: Arc<carapace_image::ImageStore>) {
        self.containers.set_image_store(images);
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Pod networking: NetworkReady (setup and teardown are the sandbox table's, `podnet.rs`).
    pub fn cni(&self) -> &Arc<CniManager> {
        &self.cni
    }

    /// RunPodSandbox: boots the pod's VM and waits for its agent.
    pub async fn run_pod(&self, req: cri::RunPodSandboxRequest) -> Result<String, CriError> {
        self.sandboxes.run(req).await
    }

    /// StopPodSandbox: its containers, then its VM; NotFound for an unknown ID, no error when
    /// already stopped.
    pub async fn stop_pod(&self, id: &str) -> Result<(), CriError> {
        let sandbox = match self.sandboxes.resolve(id) {
            Ok(s) => s,
            Err(CriError::NotFound(_)) => {
                // CRI idempotence: kubelet retries stops of sandboxes that may be gone.
                tracing::debug!(id, "StopPodSandbox: no such sandbox, nothing to stop");
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let _op = sandbox.lock_op().await;
        self.containers.stop_pod(&sandbox.record()).await;
        self.sandboxes.stop_vm(&sandbox).await
    }

    /// RemovePodSandbox: stops the VM if needed, removes its containers; no error when the
    /// sandbox is already gone.
    pub async fn remove_pod(&self, id: &str) -> Result<(), CriError> {
        let sandbox = match self.sandboxes.resolve(id) {
            Ok(s) => s,
            Err(CriError::NotFound(_)) => {
                tracing::debug!(id, "RemovePodSandbox: already removed");
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let _op = sandbox.lock_op().await;
        if !self.sandboxes.contains(&sandbox) {
            return Ok(()); // removed by a concurrent call while we waited
        }
        let rec = sandbox.record();
        self.containers.stop_pod(&rec).await;
        self.containers.remove_pod(&rec).await?;
        self.sandboxes.cleanup(&sandbox).await
    }

    /// PodSandboxStatus.
    pub fn pod_status(
        &self,
        id: &str,
        verbose: bool,
    ) -> Result<cri::PodSandboxStatusResponse, CriError> {
        let rec = self.sandboxes.record(id)?;
        let containers = self.containers.pod_statuses(&rec.id);
        Ok(SandboxTable::status_of(&rec, verbose, containers))
    }

    /// ListPodSandbox.
    pub fn list_pods(&self, filter: &SandboxFilter) -> Vec<cri::PodSandbox> {
        self.sandboxes.list(filter)
    }

    /// PodSandboxStats (without the containers' part, see [`Runtime::list_container_stats`]).
    pub fn pod_stats(&self, id: &str) -> Result<cri::PodSandboxStats, CriError> {
        self.sandboxes.stats(id)
    }

    /// ListPodSandboxStats (without the containers' part).
    pub fn list_pod_stats(&self, filter: &SandboxFilter) -> Vec<cri::PodSandboxStats> {
        self.sandboxes.list_stats(filter)
    }

    /// CreateContainer.
    pub async fn create_container(
        &self,
        req: cri::CreateContainerRequest,
    ) -> Result<String, CriError> {
        self.containers.create(&self.sandboxes, req).await
    }

    /// StartContainer.
    pub async fn start_container(&self, id: &str) -> Result<(), CriError> {
        self.containers.start(&self.sandboxes, id).await
    }

    /// StopContainer.
    pub async fn stop_container(&self, id: &str, timeout_s: i64) -> Result<(), CriError> {
        self.containers.stop(&self.sandboxes, id, timeout_s).await
    }

    /// RemoveContainer.
    pub async fn remove_container(&self, id: &str) -> Result<(), CriError> {
        self.containers.remove(&self.sandboxes, id).await
    }

    /// ListContainers.
    pub fn list_containers(&self, filter: &ContainerFilter) -> Vec<cri::Container> {
        self.containers.list(filter)
    }

    /// ContainerStatus.
    pub fn container_status(
        &self,
        id: &str,
        verbose: bool,
    ) -> Result<cri::ContainerStatusResponse, CriError> {
        self.containers.status(id, verbose)
    }

    /// GetContainerEvents.
    pub fn container_events(&self) -> broadcast::Receiver<cri::ContainerEventResponse> {
        self.containers.subscribe()
    }

    /// UpdateContainerResources.
    pub async fn update_container_resources(
        &self,
        id: &str,
        linux: Option<cri::LinuxContainerResources>,
    ) -> Result<(), CriError> {
        self.containers.update_resources(&self.sandboxes, id, linux).await
    }

    /// ReopenContainerLog.
    pub fn reopen_container_log(&self, id: &str) -> Result<(), CriError> {
        self.containers.reopen_log(id)
    }

    /// ExecSync.
    pub async fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        timeout_s: i64,
    ) -> Result<cri::ExecSyncResponse, CriError> {
        self.containers.exec_sync(&self.sandboxes, id, cmd, timeout_s).await
    }

    /// The streaming server Exec and Attach hand out URLs of (set once by the daemon).
    pub fn set_streaming(&self, streaming: Arc<Streaming>) {
        if self.streaming.set(streaming).is_err() {
            tracing::warn!("the streaming server was set twice; keeping the first");
        }
    }

    /// The streaming server, once set.
    pub fn streaming(&self) -> Option<Arc<Streaming>> {
        self.streaming.get().cloned()
    }

    fn stream_url(&self, req: StreamRequest) -> Result<String, CriError> {
        let s = self.streaming.get().ok_or_else(|| {
            CriError::FailedPrecondition("this daemon runs no streaming server".into())
        })?;
        s.url_for(req)
    }

    /// The running container a streaming session works on.
    pub fn running_container(&self, id: &str, what: &str) -> Result<RunningContainer, CriError> {
        self.containers.running(&self.sandboxes, id, what)
    }

    /// Attach: the running container and its output from now on.
    pub fn subscribe_output(
        &self,
        id: &str,
    ) -> Result<(RunningContainer, broadcast::Receiver<OutputEvent>), CriError> {
        self.containers.subscribe_output(&self.sandboxes, id)
    }

    /// The record of the sandbox `id` names.
    pub fn sandbox_record(&self, id: &str) -> Result<SandboxRecord, CriError> {
        self.sandboxes.record(id)
    }

    /// Exec: checks the request and returns the URL the client streams it through.
    pub fn exec_url(&self, mut req: cri::ExecRequest) -> Result<String, CriError> {
        if req.cmd.is_empty() {
            return Err(CriError::InvalidArgument("Exec: cmd must not be empty".into()));
        }
        check_stdio(req.stdin, req.stdout, req.stderr, req.tty)?;
        req.container_id = self.running_container(&req.container_id, "exec")?.container_id;
        self.stream_url(StreamRequest::Exec(req))
    }

    /// Attach: checks the request and returns the URL the client streams it through.
    pub fn attach_url(&self, mut req: cri::AttachRequest) -> Result<String, CriError> {
        check_stdio(req.stdin, req.stdout, req.stderr, req.tty)?;
        let rc = self.running_container(&req.container_id, "attach")?;
        if req.stdin && !rc.process.stdin {
            return Err(CriError::FailedPrecondition(format!(
                "container {} was not created with stdin: attach without stdin (no -i)",
                rc.container_id
            )));
        }
        req.container_id = rc.container_id;
        self.stream_url(StreamRequest::Attach(req))
    }

    /// PortForward: the pod must be ready; returns the URL the client streams through.
    pub fn port_forward_url(&self, mut req: cri::PortForwardRequest) -> Result<String, CriError> {
        let rec = self.sandboxes.record(&req.pod_sandbox_id)?;
        if rec.phase != SandboxPhase::Ready {
            return Err(CriError::FailedPrecondition(format!(
                "pod sandbox {} is not ready: port forwarding needs a running pod",
                rec.id
            )));
        }
        if let Some(bad) = req.port.iter().find(|p| !(1..=65535).contains(*p)) {
            return Err(CriError::InvalidArgument(format!(
                "PortForward: port {bad} is not a TCP port (1..65535)"
            )));
        }
        req.pod_sandbox_id = rec.id;
        self.stream_url(StreamRequest::PortForward(req))
    }

    /// ContainerStats.
    pub async fn container_stats(&self, id: &str) -> Result<cri::ContainerStats, CriError> {
        self.containers.stats(&self.sandboxes, id).await
    }

    /// ListContainerStats.
    pub async fn list_container_stats(&self, filter: &ContainerFilter) -> Vec<cri::ContainerStats> {
        self.containers.list_stats(&self.sandboxes, filter).await
    }
}

mod stream_backend;

#[cfg(test)]
mod tests;
