//! The host⇄agent API of carapace.
//!
//! * [`pb`]: the code generated from `proto/agent.proto` (package
//!   `carapace.agent.v1`), client and server; the guest agent implements
//!   [`pb::agent_server::Agent`].
//! * [`AgentClient`]: the host side, reaching the agent through the VMM's
//!   vsock Unix socket (`CONNECT <port>\n` / `OK <n>\n`, then gRPC).

pub mod client;
pub mod connect;
pub mod error;
pub mod handshake;

/// Generated protobuf/gRPC code for `carapace.agent.v1`.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("carapace.agent.v1");
}

pub use client::{AgentClient, DEFAULT_CALL_TIMEOUT};
pub use error::AgentClientError;
pub use handshake::HandshakeError;

/// The guest vsock port the agent listens on.
pub const AGENT_VSOCK_PORT: u32 = 1024;

/// Where the agent mounts the pod's shared directory (the VMM's virtio-fs device, tag
/// `carapace_vmm::SHARED_FS_TAG`) in the guest. Absent when the VM has no shared directory.
pub const GUEST_SHARED_DIR: &str = "/run/carapace/shared";

/// The API version string the agent reports in `HealthResponse.api_version`.
pub const API_VERSION: &str = "carapace.agent.v1";
