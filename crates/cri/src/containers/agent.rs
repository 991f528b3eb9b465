//! Reaching the pod's agent and bounding the calls made to it.

use std::time::Duration;

use carapace_agent_client::{AgentClient, AGENT_VSOCK_PORT};
use k8s_cri::v1 as cri;

use crate::error::CriError;
use crate::record::SandboxRecord;
use crate::util::sandbox_state;

/// How long reaching the agent may take for one RPC.
pub const AGENT_CONNECT: Duration = Duration::from_secs(10);
/// Bound of one agent call that should be quick.
pub const AGENT_CALL: Duration = Duration::from_secs(30);

/// Bounds a quick agent call; the agent's error keeps its code.
pub async fn call<T>(
    what: &'static str,
    fut: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, CriError> {
    match tokio::time::timeout(AGENT_CALL, fut).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(source)) => Err(CriError::Agent { call: what, source }),
        Err(_) => Err(CriError::DeadlineExceeded(format!(
            "{what}: the pod's agent did not answer within {AGENT_CALL:?}"
        ))),
    }
}

/// Connects to the agent of a pod (no readiness check: the monitor uses it to find out).
pub async fn connect(sb: &SandboxRecord) -> Result<AgentClient, CriError> {
    AgentClient::connect(&sb.vsock_path(), AGENT_VSOCK_PORT, AGENT_CONNECT)
        .await
        .map_err(|source| CriError::AgentUnreachable { pod: sb.id.clone(), source })
}

/// Reaches the agent of a sandbox whose VM runs.
pub async fn agent_of(sb: &SandboxRecord) -> Result<AgentClient, CriError> {
    if sandbox_state(sb) != cri::PodSandboxState::SandboxReady {
        return Err(CriError::FailedPrecondition(format!(
            "pod sandbox {} is not ready (its VM is stopped)",
            sb.id
        )));
    }
    connect(sb).await
}
