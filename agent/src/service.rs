//! The `carapace.agent.v1.Agent` gRPC service.

use std::time::Duration;

use carapace_agent_client::pb;
use carapace_agent_client::pb::agent_server::Agent;
use carapace_agent_client::pb::{HealthRequest, HealthResponse, ShutdownRequest, ShutdownResponse};
use carapace_agent_client::API_VERSION;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::container::{rpc, Containers};
use crate::sysinfo;

/// Why the agent is stopping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownReason {
    /// The host called `Shutdown`.
    Rpc,
    /// SIGINT (Ctrl+Alt+Del as PID 1) or SIGTERM.
    Signal(i32),
}

/// Sender side of the shutdown request; the first reason wins.
#[derive(Debug, Clone)]
pub struct ShutdownTrigger(watch::Sender<Option<ShutdownReason>>);

impl ShutdownTrigger {
    pub fn new() -> (ShutdownTrigger, watch::Receiver<Option<ShutdownReason>>) {
        let (tx, rx) = watch::channel(None);
        (ShutdownTrigger(tx), rx)
    }

    /// Requests shutdown. Returns false if one was already requested.
    pub fn fire(&self, reason: ShutdownReason) -> bool {
        self.0.send_if_modified(|cur| {
            if cur.is_none() {
                *cur = Some(reason);
                true
            } else {
                false
            }
        })
    }
}

/// Resolves once shutdown was requested, with the reason.
pub async fn requested(mut rx: watch::Receiver<Option<ShutdownReason>>) -> Option<ShutdownReason> {
    match rx.wait_for(|r| r.is_some()).await {
        Ok(r) => *r,
        Err(_) => None,
    }
}

/// The service state.
#[derive(Debug, Clone)]
pub struct AgentService {
    /// Guest uptime when the agent started.
    pub started_at_uptime: Duration,
    pub pid1: bool,
    pub shutdown: ShutdownTrigger,
    /// The container API (issue 3); disabled outside a guest.
    pub containers: Containers,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[tonic::async_trait]
impl Agent for AgentService {
    async fn health(
        &self,
        _req: Request<HealthRequest>,
    ) -> Result<Response<HealthResponse>, Status> {
        let facts = sysinfo::facts().map_err(|e| {
            tracing::warn!(error = %e, "health: cannot gather facts");
            Status::internal(e.to_string())
        })?;
        Ok(Response::new(HealthResponse {
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            api_version: API_VERSION.to_owned(),
            kernel_version: facts.kernel_version,
            kernel_build: facts.kernel_build,
            uptime_ms: millis(facts.uptime),
            boot_time_unix_ms: facts.boot_time_unix_ms,
            agent_start_uptime_ms: millis(self.started_at_uptime),
            mem_total_bytes: facts.memory.total_bytes,
            mem_available_bytes: facts.memory.available_bytes,
            cpu_count: facts.cpus,
            pid1: self.pid1,
        }))
    }

    async fn shutdown(
        &self,
        _req: Request<ShutdownRequest>,
    ) -> Result<Response<ShutdownResponse>, Status> {
        if self.shutdown.fire(ShutdownReason::Rpc) {
            tracing::info!("shutdown requested by the host");
        } else {
            tracing::info!("shutdown requested again; already in progress");
        }
        Ok(Response::new(ShutdownResponse {}))
    }

    async fn configure_network(
        &self,
        r: Request<pb::ConfigureNetworkRequest>,
    ) -> Result<Response<pb::ConfigureNetworkResponse>, Status> {
        let hosts = std::path::Path::new(crate::network::hosts::POD_HOSTS_FILE);
        match crate::network::configure(&self.containers, r.get_ref(), hosts).await {
            Ok(()) => Ok(Response::new(pb::ConfigureNetworkResponse {})),
            Err(e) => {
                tracing::warn!(error = %e, "configure network failed");
                Err(e.into())
            }
        }
    }

    // Containers: see crate::container::rpc.
    type ReadStdioStream = rpc::StdioStream;

    async fn create_container(
        &self,
        r: Request<pb::CreateContainerRequest>,
    ) -> Result<Response<pb::CreateContainerResponse>, Status> {
        rpc::create_container(&self.containers, r).await
    }
    async fn start_container(
        &self,
        r: Request<pb::StartContainerRequest>,
    ) -> Result<Response<pb::StartContainerResponse>, Status> {
        rpc::start_container(&self.containers, r).await
    }
    async fn exec_process(
        &self,
        r: Request<pb::ExecProcessRequest>,
    ) -> Result<Response<pb::ExecProcessResponse>, Status> {
        rpc::exec_process(&self.containers, r).await
    }
    async fn signal_process(
        &self,
        r: Request<pb::SignalProcessRequest>,
    ) -> Result<Response<pb::SignalProcessResponse>, Status> {
        rpc::signal_process(&self.containers, r).await
    }
    async fn wait_process(
        &self,
        r: Request<pb::WaitProcessRequest>,
    ) -> Result<Response<pb::WaitProcessResponse>, Status> {
        rpc::wait_process(&self.containers, r).await
    }
    async fn wait_container(
        &self,
        r: Request<pb::WaitContainerRequest>,
    ) -> Result<Response<pb::WaitProcessResponse>, Status> {
        rpc::wait_container(&self.containers, r).await
    }
    async fn stop_container(
        &self,
        r: Request<pb::StopContainerRequest>,
    ) -> Result<Response<pb::WaitProcessResponse>, Status> {
        rpc::stop_container(&self.containers, r).await
    }
    async fn container_stats(
        &self,
        r: Request<pb::ContainerStatsRequest>,
    ) -> Result<Response<pb::ContainerStatsResponse>, Status> {
        rpc::container_stats(&self.containers, r).await
    }
    async fn update_container_resources(
        &self,
        r: Request<pb::UpdateContainerResourcesRequest>,
    ) -> Result<Response<pb::UpdateContainerResourcesResponse>, Status> {
        rpc::update_resources(&self.containers, r).await
    }
    async fn remove_container(
        &self,
        r: Request<pb::RemoveContainerRequest>,
    ) -> Result<Response<pb::RemoveContainerResponse>, Status> {
        rpc::remove_container(&self.containers, r).await
    }
    async fn list_containers(
        &self,
        r: Request<pb::ListContainersRequest>,
    ) -> Result<Response<pb::ListContainersResponse>, Status> {
        rpc::list_containers(&self.containers, r).await
    }
    async fn read_stdio(
        &self,
        r: Request<pb::ReadStdioRequest>,
    ) -> Result<Response<Self::ReadStdioStream>, Status> {
        rpc::read_stdio(&self.containers, r).await
    }
    async fn resize_tty(
        &self,
        r: Request<pb::ResizeTtyRequest>,
    ) -> Result<Response<pb::ResizeTtyResponse>, Status> {
        rpc::resize_tty(&self.containers, r).await
    }

    async fn write_stdin(
        &self,
        r: Request<pb::WriteStdinRequest>,
    ) -> Result<Response<pb::WriteStdinResponse>, Status> {
        rpc::write_stdin(&self.containers, r).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn health_reports_facts() {
        let (trigger, _rx) = ShutdownTrigger::new();
        let svc = AgentService {
            started_at_uptime: Duration::from_millis(1234),
            pid1: false,
            shutdown: trigger,
            containers: Containers::disabled("test"),
        };
        let h = svc.health(Request::new(HealthRequest {})).await.unwrap().into_inner();
        assert_eq!(h.api_version, "carapace.agent.v1");
        assert_eq!(h.agent_start_uptime_ms, 1234);
        assert!(h.mem_total_bytes >= h.mem_available_bytes);
        assert!(h.cpu_count >= 1);
        assert!(!h.pid1);
    }

    #[tokio::test]
    async fn shutdown_fires_once() {
        let (trigger, rx) = ShutdownTrigger::new();
        let svc = AgentService {
            started_at_uptime: Duration::ZERO,
            pid1: false,
            shutdown: trigger.clone(),
            containers: Containers::disabled("test"),
        };
        svc.shutdown(Request::new(ShutdownRequest {})).await.unwrap();
        assert!(!trigger.fire(ShutdownReason::Signal(2)));
        assert_eq!(requested(rx).await, Some(ShutdownReason::Rpc));
    }
}
