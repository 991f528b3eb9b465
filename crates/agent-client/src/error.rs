//! Errors of the host-side agent client.

use std::time::Duration;

use crate::handshake::HandshakeError;

/// Everything that can go wrong talking to the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentClientError {
    /// The VMM's vsock socket never appeared before the deadline.
    #[error("VM socket {0} does not exist: is the VM running?")]
    SocketMissing(String),
    /// The socket exists but the agent did not accept a connection in time.
    #[error(
        "agent did not answer on vsock port {port} within {}s (last error: {last})",
        .waited.as_secs_f64()
    )]
    Deadline { port: u32, waited: Duration, last: String },
    /// A handshake failure that retrying cannot fix (e.g. permission denied).
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    /// The gRPC channel could not be set up over the handshaken stream.
    #[error("cannot start gRPC over the vsock stream: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The agent answered a call with an error status, or the call failed
    /// on the wire.
    #[error("agent call {call} failed: {status}")]
    Rpc { call: &'static str, status: Box<tonic::Status> },
    /// The call did not complete in time.
    #[error("agent call {call} did not complete within {}s", .timeout.as_secs_f64())]
    CallTimeout { call: &'static str, timeout: Duration },
}

impl AgentClientError {
    pub(crate) fn rpc(call: &'static str, status: tonic::Status) -> Self {
        AgentClientError::Rpc { call, status: Box::new(status) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_works_with_anyhow_style_boxing() {
        fn assert_send_sync_static<T: Send + Sync + 'static>() {}
        assert_send_sync_static::<AgentClientError>();
    }

    #[test]
    fn messages_are_actionable() {
        let e = AgentClientError::SocketMissing("/run/vm.sock".into());
        assert_eq!(e.to_string(), "VM socket /run/vm.sock does not exist: is the VM running?");
        let e = AgentClientError::Deadline {
            port: 1024,
            waited: Duration::from_millis(2500),
            last: "closed".into(),
        };
        assert!(e.to_string().starts_with("agent did not answer on vsock port 1024 within 2.5s"));
    }
}
