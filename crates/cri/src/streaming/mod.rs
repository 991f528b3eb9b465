//! The streaming server: Exec, Attach (and later PortForward) as kubelet's CRI streaming
//! library serves them for containerd. The CRI call validates the request and answers with a
//! URL on this server holding a random single-use token ([`token`]); the client (kubectl via
//! the API server, crictl) then connects there and upgrades the HTTP/1.1 connection
//! ([`server`]) to SPDY/3.1 ([`spdy`], [`remotecommand`]) or WebSocket, over which the
//! process's stdin, stdout, stderr, terminal resizes and exit status travel. The process
//! itself runs through the pod's agent (the runtime's `stream_backend`).

pub mod portforward;
pub mod remotecommand;
pub mod server;
pub mod spdy;
pub mod spdyio;
#[cfg(test)]
mod testutil;
pub mod tls;
pub mod token;
pub mod websocket;

use std::net::SocketAddr;
use std::time::Duration;

use k8s_cri::v1 as cri;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

pub use crate::config::streaming::StreamingConfig;
use crate::error::CriError;
pub use token::{StreamRequest, TokenStore};

/// How long a URL handed out by Exec/Attach/PortForward stays valid unused (kubelet: 1 min).
pub const TOKEN_TTL: Duration = Duration::from_secs(60);

/// The URLs of one streaming server and its pending tokens.
pub struct Streaming {
    /// `http://<addr>:<port>` (`https://` with TLS) as clients reach it.
    base: String,
    tokens: TokenStore,
}

impl Streaming {
    /// For a plain HTTP server listening on `addr`.
    pub fn new(addr: SocketAddr) -> Streaming {
        Streaming::with_scheme("http", addr)
    }

    /// For a server listening on `addr` with TLS.
    pub fn new_tls(addr: SocketAddr) -> Streaming {
        Streaming::with_scheme("https", addr)
    }

    fn with_scheme(scheme: &str, addr: SocketAddr) -> Streaming {
        Streaming { base: format!("{scheme}://{addr}"), tokens: TokenStore::new(TOKEN_TTL) }
    }

    pub fn tokens(&self) -> &TokenStore {
        &self.tokens
    }

    /// A URL for `req` (already validated), valid once within [`TOKEN_TTL`].
    pub fn url_for(&self, req: StreamRequest) -> Result<String, CriError> {
        let kind = req.kind();
        let token = self.tokens.insert(req)?;
        Ok(format!("{}/{kind}/{token}", self.base))
    }
}

/// The flags common to Exec and Attach, checked as kubelet does.
pub fn check_stdio(stdin: bool, stdout: bool, stderr: bool, tty: bool) -> Result<(), CriError> {
    if !stdin && !stdout && !stderr {
        return Err(CriError::InvalidArgument("one of stdin, stdout or stderr must be set".into()));
    }
    if tty && stderr {
        return Err(CriError::InvalidArgument(
            "tty and stderr cannot both be set (a terminal has one output stream)".into(),
        ));
    }
    Ok(())
}

/// A terminal size as the resize stream sends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct TermSize {
    #[serde(rename = "Width")]
    pub width: u16,
    #[serde(rename = "Height")]
    pub height: u16,
}

/// The process's side of one streaming session; `None` for a stream the client did not ask for.
/// `stdin` ends (all senders dropped) when the client closes stdin.
pub struct Stdio {
    pub stdin: Option<mpsc::Receiver<Vec<u8>>>,
    pub stdout: Option<mpsc::Sender<Vec<u8>>>,
    pub stderr: Option<mpsc::Sender<Vec<u8>>>,
    pub resize: Option<mpsc::Receiver<TermSize>>,
}

/// How a streamed process ended, as the error stream reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Exited(i32),
    /// The process could not be run or followed (the message says why).
    Failed(String),
}

/// A byte stream to a TCP port inside a pod (port forwarding): reads are what the pod's
/// server sent, writes go to it, shutting down the write side is the client's FIN.
pub trait PortStream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> PortStream for T {}

/// What runs the processes of streaming sessions (the daemon: through the pod's agent).
/// Dropping the future of a call (the client went away) must stop what it started.
#[tonic::async_trait]
pub trait Backend: Send + Sync + 'static {
    async fn exec(&self, req: cri::ExecRequest, io: Stdio) -> Outcome;
    async fn attach(&self, req: cri::AttachRequest, io: Stdio) -> Outcome;
    /// A new connection to `localhost:<port>` in the pod's network namespace; the error is a
    /// message for the client's error stream (e.g. connection refused, pod not running).
    async fn port_forward(
        &self,
        pod_sandbox_id: &str,
        port: u16,
    ) -> Result<Box<dyn PortStream>, String>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdio_flags_are_checked_as_kubelet_does() {
        assert!(check_stdio(false, false, false, false).is_err());
        assert!(check_stdio(true, true, true, true).is_err());
        check_stdio(true, true, false, true).unwrap();
        check_stdio(false, true, true, false).unwrap();
        check_stdio(true, false, false, false).unwrap();
    }

    #[test]
    fn tls_urls_are_https() {
        let s = Streaming::new_tls("127.0.0.1:4242".parse().unwrap());
        assert!(s.base.starts_with("https://127.0.0.1:4242"));
    }

    #[test]
    fn urls_carry_the_kind_and_a_token() {
        let s = Streaming::new("127.0.0.1:4242".parse().unwrap());
        let url = s
            .url_for(StreamRequest::Exec(cri::ExecRequest {
                container_id: "c".into(),
                cmd: vec!["true".into()],
                stdout: true,
                ..Default::default()
            }))
            .unwrap();
        let token = url.strip_prefix("http://127.0.0.1:4242/exec/").unwrap();
        assert!(s.tokens().take("exec", token).is_ok());
    }
}
