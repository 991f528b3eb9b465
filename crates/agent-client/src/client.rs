//! The host-side gRPC client of the agent, over the VMM's vsock socket.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};

use crate::connect::connect_with_retry;
use crate::error::AgentClientError;
use crate::handshake::connect_once;
use crate::pb;
use crate::pb::agent_client::AgentClient as GrpcClient;

/// Default bound for one RPC (the agent answers health in microseconds; the
/// bound exists so a wedged guest cannot hang the caller).
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A connected client of one VM's agent.
///
/// Cheap to clone: clones share one HTTP/2 connection. If that connection
/// drops, the next call re-does the vsock handshake once (no retry loop).
#[derive(Clone, Debug)]
pub struct AgentClient {
    grpc: GrpcClient<Channel>,
    uds_path: PathBuf,
    port: u32,
    call_timeout: Duration,
}

impl AgentClient {
    /// Connects to the agent listening on guest vsock `port`, through the
    /// VMM's vsock Unix socket at `uds_path`. Retries (short backoff) while
    /// the socket is missing or the guest has no listener yet, until
    /// `deadline` has passed.
    pub async fn connect(
        uds_path: &Path,
        port: u32,
        deadline: Duration,
    ) -> Result<AgentClient, AgentClientError> {
        let started = tokio::time::Instant::now();
        let first = connect_with_retry(uds_path, port, deadline).await?;
        let first = Arc::new(Mutex::new(Some(first)));
        let path = uds_path.to_path_buf();
        let connector = tower::service_fn(move |_uri: tonic::transport::Uri| {
            let path = path.clone();
            // The first connection is the one made above; later ones (after
            // the connection dropped) do a single handshake attempt.
            let ready = first.lock().ok().and_then(|mut slot| slot.take());
            async move {
                let stream: UnixStream = match ready {
                    Some(s) => s,
                    None => connect_once(&path, port).await?.0,
                };
                Ok::<_, crate::handshake::HandshakeError>(TokioIo::new(stream))
            }
        });
        // The URI is required by tonic but never resolved: the connector
        // above decides where bytes go.
        let endpoint = Endpoint::from_static("http://agent.vsock");
        let setup = endpoint.connect_with_connector(connector);
        // The HTTP/2 setup shares the caller's deadline (at least 1s, so a
        // handshake that won at the last moment still gets to finish).
        let left = deadline.saturating_sub(started.elapsed()).max(Duration::from_secs(1));
        let channel = match tokio::time::timeout(left, setup).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(AgentClientError::Deadline {
                    port,
                    waited: deadline,
                    last: "HTTP/2 setup with the agent did not finish".into(),
                })
            }
        };
        tracing::debug!(path = %uds_path.display(), port, "agent channel ready");
        Ok(AgentClient {
            grpc: GrpcClient::new(channel),
            uds_path: uds_path.to_path_buf(),
            port,
            call_timeout: DEFAULT_CALL_TIMEOUT,
        })
    }

    /// Changes the bound applied to each call.
    pub fn with_call_timeout(mut self, timeout: Duration) -> AgentClient {
        self.call_timeout = timeout;
        self
    }

    /// The VMM socket this client talks through.
    pub fn uds_path(&self) -> &Path {
        &self.uds_path
    }

    /// The guest vsock port of the agent.
    pub fn port(&self) -> u32 {
        self.port
    }

    /// The generated tonic client, for RPCs without a wrapper here.
    pub fn grpc(&self) -> GrpcClient<Channel> {
        self.grpc.clone()
    }

    /// `Health`: facts about the guest.
    pub async fn health(&self) -> Result<pb::HealthResponse, AgentClientError> {
        let mut grpc = self.grpc.clone();
        let call = grpc.health(pb::HealthRequest {});
        match tokio::time::timeout(self.call_timeout, call).await {
            Ok(Ok(resp)) => Ok(resp.into_inner()),
            Ok(Err(status)) => Err(AgentClientError::rpc("Health", status)),
            Err(_) => {
                Err(AgentClientError::CallTimeout { call: "Health", timeout: self.call_timeout })
            }
        }
    }

    /// `Shutdown`: asks the guest to shut down gracefully. Returns once the
    /// agent acknowledged; the VM exits shortly after (wait for the VMM).
    pub async fn shutdown(&self) -> Result<(), AgentClientError> {
        let mut grpc = self.grpc.clone();
        let call = grpc.shutdown(pb::ShutdownRequest {});
        match tokio::time::timeout(self.call_timeout, call).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(status)) => Err(AgentClientError::rpc("Shutdown", status)),
            Err(_) => {
                Err(AgentClientError::CallTimeout { call: "Shutdown", timeout: self.call_timeout })
            }
        }
    }

    /// `ConfigureNetwork`: the pod's NICs, routes and /etc/hosts in the
    /// guest (once, before the first container).
    pub async fn configure_network(
        &self,
        req: pb::ConfigureNetworkRequest,
    ) -> Result<(), AgentClientError> {
        let mut grpc = self.grpc.clone();
        let call = grpc.configure_network(req);
        match tokio::time::timeout(self.call_timeout, call).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(status)) => Err(AgentClientError::rpc("ConfigureNetwork", status)),
            Err(_) => Err(AgentClientError::CallTimeout {
                call: "ConfigureNetwork",
                timeout: self.call_timeout,
            }),
        }
    }
}
