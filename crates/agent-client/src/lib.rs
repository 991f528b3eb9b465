//! The host⇄agent API of carapace.
//!
//! * [`pb`]: the code generated from `proto/agent.proto` (package
//!   `carapace.agent.v1`), client and server; the guest agent implements
//!   [`pb::agent_server::Agent`].
//! * [`AgentClient`]: the host side, reaching the agent through the VMM's
//!   vsock Unix socket (`CONNECT <port>\n` / `OK <n>\n`, then gRPC).
//! * The rest of the host⇄guest contract (port, shared directory, virtio-fs
//!   tag, capability sets), defined once in `carapace-guest-contract` and
//!   re-exported here.

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

pub use carapace_guest_contract::{
    namespaced_sysctl, valid_sysctl_value, AGENT_VSOCK_PORT, ALL_CAPABILITIES,
    DEFAULT_CAPABILITIES, GUEST_SHARED_DIR, MAX_SYSCTL_VALUE, PORT_FORWARD_MAX_LINE,
    PORT_FORWARD_VSOCK_PORT, SHARED_FS_TAG,
};

/// The API version string the agent reports in `HealthResponse.api_version`.
pub const API_VERSION: &str = "carapace.agent.v1";
