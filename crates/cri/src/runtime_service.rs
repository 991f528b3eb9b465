//! The CRI v1 RuntimeService served over gRPC.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use k8s_cri::v1 as cri;
use k8s_cri::v1::runtime_service_server::RuntimeService;
use tonic::{Request, Response, Status};

use crate::config::CgroupDriver;
use crate::error::CriError;
use crate::filters::{ContainerFilter, SandboxFilter};
use crate::hostcheck::HostCheck;
use crate::runtime::Runtime;

/// Name reported by Version.
pub const RUNTIME_NAME: &str = "carapace";
/// The CRI API version served.
pub const RUNTIME_API_VERSION: &str = "v1";
/// The RuntimeService implementation.
pub struct RuntimeServiceImpl {
    runtime: Arc<Runtime>,
    pod_cidr: Mutex<String>,
    host: Arc<HostCheck>,
}

impl RuntimeServiceImpl {
    pub fn new(runtime: Arc<Runtime>) -> RuntimeServiceImpl {
        let host = HostCheck::new(runtime.config().vmm_binary.clone());
        RuntimeServiceImpl { runtime, pod_cidr: Mutex::new(String::new()), host }
    }

    /// The pod CIDR last set by UpdateRuntimeConfig.
    pub fn pod_cidr(&self) -> String {
        self.pod_cidr.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Fills the container part of a pod's stats.
    async fn add_container_stats(&self, stats: &mut cri::PodSandboxStats) {
        let Some(pod) = stats.attributes.as_ref().map(|a| a.id.clone()) else { return };
        let filter = ContainerFilter {
            pod_sandbox_id: pod,
            state: Some(cri::ContainerState::ContainerRunning as i32),
            ..Default::default()
        };
        let containers = self.runtime.list_container_stats(&filter).await;
        if let Some(linux) = stats.linux.as_mut() {
            linux.containers = containers;
        }
    }

    /// The RuntimeReady condition: the default profile's guest image and the VMM binary exist,
    /// and this host's KVM boots a guest (`carapace check --kvm-only`, run once).
    async fn runtime_condition(&self) -> cri::RuntimeCondition {
        let cfg = self.runtime.config();
        let mut missing = Vec::new();
        if let Some((_, p)) = cfg.profile_for_handler("") {
            for f in [&p.kernel, &p.initramfs] {
                if !f.is_file() {
                    missing.push(f.display().to_string());
                }
            }
        }
        if !cfg.vmm_binary.is_file() {
            missing.push(cfg.vmm_binary.display().to_string());
        }
        let not_ready = |reason: &str, message: String| cri::RuntimeCondition {
            r#type: "RuntimeReady".into(),
            status: false,
            reason: reason.into(),
            message,
        };
        if !missing.is_empty() {
            return not_ready(
                "GuestImageMissing",
                format!(
                    "missing {}: run `make guest-image` or fix the carapace config",
                    missing.join(", ")
                ),
            );
        }
        match self.host.result().await {
            Ok(()) => cri::RuntimeCondition {
                r#type: "RuntimeReady".into(),
                status: true,
                ..Default::default()
            },
            Err(problem) => not_ready(
                "HostCannotBootGuests",
                format!("this host cannot boot pod VMs ({problem}); see `carapace check`"),
            ),
        }
    }
}

impl RuntimeServiceImpl {
    /// NetworkReady: a valid CNI network config is loaded (the conf dir is re-checked on every
    /// call, so a config written later turns it true without a restart).
    async fn network_condition(&self) -> cri::RuntimeCondition {
        let cni = self.runtime.cni().clone();
        let status = tokio::task::spawn_blocking(move || cni.status()).await.unwrap_or_else(|e| {
            crate::cni::NetworkStatus { ready: false, message: format!("CNI status check: {e}") }
        });
        network_condition_of(status)
    }
}

/// The CRI condition of a CNI status (containerd's reason when not ready).
pub fn network_condition_of(status: crate::cni::NetworkStatus) -> cri::RuntimeCondition {
    if status.ready {
        return cri::RuntimeCondition {
            r#type: "NetworkReady".into(),
            status: true,
            ..Default::default()
        };
    }
    cri::RuntimeCondition {
        r#type: "NetworkReady".into(),
        status: false,
        reason: crate::cni::NOT_READY_REASON.into(),
        message: status.message,
    }
}

fn filter_of(f: Option<cri::PodSandboxFilter>) -> SandboxFilter {
    let f = f.unwrap_or_default();
    SandboxFilter { id: f.id, state: f.state.map(|s| s.state), labels: f.label_selector }
}

/// Runs a lifecycle operation as its own task: if the client gives up (kubelet's deadline), the
/// operation still finishes or cleans up instead of being dropped halfway through.
async fn detached<T: Send + 'static>(
    op: impl std::future::Future<Output = Result<T, CriError>> + Send + 'static,
) -> Result<T, CriError> {
    tokio::spawn(op).await?
}

type EventStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<cri::ContainerEventResponse, Status>> + Send>>;

#[tonic::async_trait]
impl RuntimeService for RuntimeServiceImpl {
    async fn version(
        &self,
        _request: Request<cri::VersionRequest>,
    ) -> Result<Response<cri::VersionResponse>, Status> {
        Ok(Response::new(cri::VersionResponse {
            version: "0.1.0".into(),
            runtime_name: RUNTIME_NAME.into(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
            runtime_api_version: RUNTIME_API_VERSION.into(),
        }))
    }

    async fn run_pod_sandbox(
        &self,
        request: Request<cri::RunPodSandboxRequest>,
    ) -> Result<Response<cri::RunPodSandboxResponse>, Status> {
        let m = self.runtime.clone();
        let req = request.into_inner();
        let id = detached(async move { m.run_pod(req).await }).await?;
        Ok(Response::new(cri::RunPodSandboxResponse { pod_sandbox_id: id }))
    }

    async fn stop_pod_sandbox(
        &self,
        request: Request<cri::StopPodSandboxRequest>,
    ) -> Result<Response<cri::StopPodSandboxResponse>, Status> {
        let (m, id) = (self.runtime.clone(), request.into_inner().pod_sandbox_id);
        detached(async move { m.stop_pod(&id).await }).await?;
        Ok(Response::new(cri::StopPodSandboxResponse {}))
    }

    async fn remove_pod_sandbox(
        &self,
        request: Request<cri::RemovePodSandboxRequest>,
    ) -> Result<Response<cri::RemovePodSandboxResponse>, Status> {
        let (m, id) = (self.runtime.clone(), request.into_inner().pod_sandbox_id);
        detached(async move { m.remove_pod(&id).await }).await?;
        Ok(Response::new(cri::RemovePodSandboxResponse {}))
    }

    async fn pod_sandbox_status(
        &self,
        request: Request<cri::PodSandboxStatusRequest>,
    ) -> Result<Response<cri::PodSandboxStatusResponse>, Status> {
        let r = request.into_inner();
        Ok(Response::new(self.runtime.pod_status(&r.pod_sandbox_id, r.verbose)?))
    }

    async fn list_pod_sandbox(
        &self,
        request: Request<cri::ListPodSandboxRequest>,
    ) -> Result<Response<cri::ListPodSandboxResponse>, Status> {
        let filter = filter_of(request.into_inner().filter);
        Ok(Response::new(cri::ListPodSandboxResponse { items: self.runtime.list_pods(&filter) }))
    }

    async fn create_container(
        &self,
        request: Request<cri::CreateContainerRequest>,
    ) -> Result<Response<cri::CreateContainerResponse>, Status> {
        let m = self.runtime.clone();
        let req = request.into_inner();
        let id = detached(async move { m.create_container(req).await }).await?;
        Ok(Response::new(cri::CreateContainerResponse { container_id: id }))
    }

    async fn start_container(
        &self,
        request: Request<cri::StartContainerRequest>,
    ) -> Result<Response<cri::StartContainerResponse>, Status> {
        let (m, id) = (self.runtime.clone(), request.into_inner().container_id);
        detached(async move { m.start_container(&id).await }).await?;
        Ok(Response::new(cri::StartContainerResponse {}))
    }

    async fn stop_container(
        &self,
        request: Request<cri::StopContainerRequest>,
    ) -> Result<Response<cri::StopContainerResponse>, Status> {
        let r = request.into_inner();
        let m = self.runtime.clone();
        detached(async move { m.stop_container(&r.container_id, r.timeout).await }).await?;
        Ok(Response::new(cri::StopContainerResponse {}))
    }

    async fn remove_container(
        &self,
        request: Request<cri::RemoveContainerRequest>,
    ) -> Result<Response<cri::RemoveContainerResponse>, Status> {
        // Idempotent: removing a container that does not exist is not an error.
        let (m, id) = (self.runtime.clone(), request.into_inner().container_id);
        detached(async move { m.remove_container(&id).await }).await?;
        Ok(Response::new(cri::RemoveContainerResponse {}))
    }

    async fn list_containers(
        &self,
        request: Request<cri::ListContainersRequest>,
    ) -> Result<Response<cri::ListContainersResponse>, Status> {
        let f = request.into_inner().filter.unwrap_or_default();
        let filter = ContainerFilter {
            id: f.id,
            pod_sandbox_id: f.pod_sandbox_id,
            state: f.state.map(|s| s.state),
            labels: f.label_selector,
        };
        Ok(Response::new(cri::ListContainersResponse {
            containers: self.runtime.list_containers(&filter),
        }))
    }

    async fn container_status(
        &self,
        request: Request<cri::ContainerStatusRequest>,
    ) -> Result<Response<cri::ContainerStatusResponse>, Status> {
        let r = request.into_inner();
        Ok(Response::new(self.runtime.container_status(&r.container_id, r.verbose)?))
    }

    async fn update_container_resources(
        &self,
        request: Request<cri::UpdateContainerResourcesRequest>,
    ) -> Result<Response<cri::UpdateContainerResourcesResponse>, Status> {
        let r = request.into_inner();
        let m = self.runtime.clone();
        detached(async move { m.update_container_resources(&r.container_id, r.linux).await })
            .await?;
        Ok(Response::new(cri::UpdateContainerResourcesResponse {}))
    }

    async fn reopen_container_log(
        &self,
        request: Request<cri::ReopenContainerLogRequest>,
    ) -> Result<Response<cri::ReopenContainerLogResponse>, Status> {
        self.runtime.reopen_container_log(&request.into_inner().container_id)?;
        Ok(Response::new(cri::ReopenContainerLogResponse {}))
    }

    async fn exec_sync(
        &self,
        request: Request<cri::ExecSyncRequest>,
    ) -> Result<Response<cri::ExecSyncResponse>, Status> {
        let r = request.into_inner();
        let m = self.runtime.clone();
        let resp =
            detached(async move { m.exec_sync(&r.container_id, r.cmd, r.timeout).await }).await?;
        Ok(Response::new(resp))
    }

    async fn exec(
        &self,
        request: Request<cri::ExecRequest>,
    ) -> Result<Response<cri::ExecResponse>, Status> {
        let url = self.runtime.exec_url(request.into_inner())?;
        Ok(Response::new(cri::ExecResponse { url }))
    }

    async fn attach(
        &self,
        request: Request<cri::AttachRequest>,
    ) -> Result<Response<cri::AttachResponse>, Status> {
        let url = self.runtime.attach_url(request.into_inner())?;
        Ok(Response::new(cri::AttachResponse { url }))
    }

    async fn port_forward(
        &self,
        request: Request<cri::PortForwardRequest>,
    ) -> Result<Response<cri::PortForwardResponse>, Status> {
        let url = self.runtime.port_forward_url(request.into_inner())?;
        Ok(Response::new(cri::PortForwardResponse { url }))
    }

    async fn container_stats(
        &self,
        request: Request<cri::ContainerStatsRequest>,
    ) -> Result<Response<cri::ContainerStatsResponse>, Status> {
        let stats = self.runtime.container_stats(&request.into_inner().container_id).await?;
        Ok(Response::new(cri::ContainerStatsResponse { stats: Some(stats) }))
    }

    async fn list_container_stats(
        &self,
        request: Request<cri::ListContainerStatsRequest>,
    ) -> Result<Response<cri::ListContainerStatsResponse>, Status> {
        let f = request.into_inner().filter.unwrap_or_default();
        let filter = ContainerFilter {
            id: f.id,
            pod_sandbox_id: f.pod_sandbox_id,
            state: None,
            labels: f.label_selector,
        };
        Ok(Response::new(cri::ListContainerStatsResponse {
            stats: self.runtime.list_container_stats(&filter).await,
        }))
    }

    async fn pod_sandbox_stats(
        &self,
        request: Request<cri::PodSandboxStatsRequest>,
    ) -> Result<Response<cri::PodSandboxStatsResponse>, Status> {
        let mut stats = self.runtime.pod_stats(&request.into_inner().pod_sandbox_id)?;
        self.add_container_stats(&mut stats).await;
        Ok(Response::new(cri::PodSandboxStatsResponse { stats: Some(stats) }))
    }

    async fn list_pod_sandbox_stats(
        &self,
        request: Request<cri::ListPodSandboxStatsRequest>,
    ) -> Result<Response<cri::ListPodSandboxStatsResponse>, Status> {
        let f = request.into_inner().filter.unwrap_or_default();
        let filter = SandboxFilter { id: f.id, state: None, labels: f.label_selector };
        let mut stats = self.runtime.list_pod_stats(&filter);
        for s in &mut stats {
            self.add_container_stats(s).await;
        }
        Ok(Response::new(cri::ListPodSandboxStatsResponse { stats }))
    }

    async fn update_runtime_config(
        &self,
        request: Request<cri::UpdateRuntimeConfigRequest>,
    ) -> Result<Response<cri::UpdateRuntimeConfigResponse>, Status> {
        let cidr = request
            .into_inner()
            .runtime_config
            .and_then(|c| c.network_config)
            .map(|n| n.pod_cidr)
            .unwrap_or_default();
        if !cidr.is_empty() {
            // Kept and reported (Status verbose); the CNI config's IPAM decides pod addresses,
            // as with containerd when its config has no template.
            tracing::info!(pod_cidr = %cidr, "pod CIDR updated");
            if let Ok(mut c) = self.pod_cidr.lock() {
                *c = cidr;
            }
        }
        Ok(Response::new(cri::UpdateRuntimeConfigResponse {}))
    }

    async fn status(
        &self,
        request: Request<cri::StatusRequest>,
    ) -> Result<Response<cri::StatusResponse>, Status> {
        let network = self.network_condition().await;
        let mut info = HashMap::new();
        if request.into_inner().verbose {
            let cfg = self.runtime.config();
            let handlers: HashMap<&String, &String> = cfg.runtime_handlers.iter().collect();
            let v = serde_json::json!({
                "stateDir": cfg.state_dir,
                "runDir": cfg.run_dir,
                "vmmBinary": cfg.vmm_binary,
                "runtimeHandlers": handlers,
                "profiles": cfg.profiles,
                "podCIDR": self.pod_cidr(),
                "cni": {
                    "enabled": cfg.cni.enabled,
                    "confDir": cfg.cni.conf_dir,
                    "binDirs": cfg.cni.bin_dirs,
                    "netnsDir": cfg.cni.netns_dir,
                },
            });
            info.insert("config".to_string(), v.to_string());
        }
        let runtime_handlers = self
            .runtime
            .config()
            .runtime_handlers
            .keys()
            .map(|h| cri::RuntimeHandler {
                name: h.clone(),
                features: Some(cri::RuntimeHandlerFeatures::default()),
            })
            .collect();
        Ok(Response::new(cri::StatusResponse {
            status: Some(cri::RuntimeStatus {
                conditions: vec![self.runtime_condition().await, network],
            }),
            info,
            runtime_handlers,
            features: Some(cri::RuntimeFeatures::default()),
        }))
    }

    async fn checkpoint_container(
        &self,
        _request: Request<cri::CheckpointContainerRequest>,
    ) -> Result<Response<cri::CheckpointContainerResponse>, Status> {
        Err(CriError::Unimplemented(
            "CheckpointContainer is not supported by carapace (VM pods are not checkpointed)"
                .into(),
        )
        .into())
    }

    type GetContainerEventsStream = EventStream;

    async fn get_container_events(
        &self,
        _request: Request<cri::GetEventsRequest>,
    ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
        use tokio_stream::StreamExt;
        let rx = self.runtime.container_events();
        // A reader too slow to keep up misses events (logged), as with containerd.
        let stream = tokio_stream::wrappers::BroadcastStream::new(rx).filter_map(|r| match r {
            Ok(ev) => Some(Ok(ev)),
            Err(e) => {
                tracing::warn!(error = %e, "GetContainerEvents reader fell behind; events dropped");
                None
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_metric_descriptors(
        &self,
        _request: Request<cri::ListMetricDescriptorsRequest>,
    ) -> Result<Response<cri::ListMetricDescriptorsResponse>, Status> {
        Ok(Response::new(cri::ListMetricDescriptorsResponse {
            descriptors: crate::metrics::descriptors(),
        }))
    }

    async fn list_pod_sandbox_metrics(
        &self,
        _request: Request<cri::ListPodSandboxMetricsRequest>,
    ) -> Result<Response<cri::ListPodSandboxMetricsResponse>, Status> {
        // Ready pods only, as for ListPodSandboxStats.
        let mut pod_metrics = Vec::new();
        for mut stats in self.runtime.list_pod_stats(&SandboxFilter::default()) {
            self.add_container_stats(&mut stats).await;
            pod_metrics.push(crate::metrics::pod_metrics(&stats));
        }
        Ok(Response::new(cri::ListPodSandboxMetricsResponse { pod_metrics }))
    }

    async fn runtime_config(
        &self,
        _request: Request<cri::RuntimeConfigRequest>,
    ) -> Result<Response<cri::RuntimeConfigResponse>, Status> {
        let driver = match self.runtime.config().cgroup_driver {
            CgroupDriver::Systemd => cri::CgroupDriver::Systemd,
            CgroupDriver::Cgroupfs => cri::CgroupDriver::Cgroupfs,
        };
        Ok(Response::new(cri::RuntimeConfigResponse {
            linux: Some(cri::LinuxRuntimeConfiguration { cgroup_driver: driver as i32 }),
        }))
    }
}
