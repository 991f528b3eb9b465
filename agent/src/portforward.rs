//! Port forwarding: each forwarded TCP connection is its own vsock connection from the host
//! (port [`PORT_FORWARD_VSOCK_PORT`]). The host names the port in one line; the agent connects
//! to `localhost:<port>` inside the pod's network namespace (from a short-lived thread that
//! entered it: the socket stays in the namespace it was made in), answers, and then copies
//! bytes both ways until both directions ended. Half-closes are passed on, so a client that
//! finished sending still gets the whole answer.

use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream as StdTcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use carapace_agent_client::{PORT_FORWARD_MAX_LINE, PORT_FORWARD_VSOCK_PORT};
use nix::sched::{setns, CloneFlags};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::container::Containers;

/// How long the host may take to send its request line.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting to the pod's port may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a forwarded connection could not be set up; the text goes back to the host.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("bad port forward request: {0}")]
    Request(String),
    #[error("cannot enter the pod's network namespace {path}: {source}")]
    Netns { path: PathBuf, source: io::Error },
    #[error("cannot connect to localhost:{port} in the pod: {source}")]
    Connect { port: u16, source: io::Error },
    #[error("the connecting thread failed")]
    Thread,
}

/// Parses `PORT <n>` (without the newline).
pub fn parse_request(line: &[u8]) -> Result<u16, ForwardError> {
    let text = std::str::from_utf8(line)
        .map_err(|_| ForwardError::Request("the request line is not UTF-8".into()))?;
    let n = text
        .strip_prefix("PORT ")
        .ok_or_else(|| ForwardError::Request(format!("expected `PORT <n>`, got {text:?}")))?;
    match n.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(ForwardError::Request(format!("{n:?} is not a TCP port (1..65535)"))),
    }
}

/// Reads one line of at most [`PORT_FORWARD_MAX_LINE`] bytes, byte by byte (nothing past the
/// newline is consumed: it belongs to the forwarded stream).
pub async fn read_line<R: AsyncRead + Unpin>(r: &mut R) -> Result<Vec<u8>, ForwardError> {
    let mut line = Vec::new();
    loop {
        let b = r
            .read_u8()
            .await
            .map_err(|e| ForwardError::Request(format!("the request line ended early: {e}")))?;
        if b == b'\n' {
            return Ok(line);
        }
        if line.len() + 1 >= PORT_FORWARD_MAX_LINE {
            return Err(ForwardError::Request("the request line is too long".into()));
        }
        line.push(b);
    }
}

/// Connects to `localhost:<port>` (IPv4, then IPv6, as containerd does) from a thread inside
/// `netns` (or the agent's own namespace for `None`).
pub async fn connect_in(netns: Option<PathBuf>, port: u16) -> Result<TcpStream, ForwardError> {
    let std = tokio::task::spawn_blocking(move || {
        std::thread::spawn(move || connect_here(netns.as_deref(), port))
            .join()
            .unwrap_or(Err(ForwardError::Thread))
    })
    .await
    .map_err(|_| ForwardError::Thread)??;
    std.set_nonblocking(true).map_err(|source| ForwardError::Connect { port, source })?;
    TcpStream::from_std(std).map_err(|source| ForwardError::Connect { port, source })
}

fn connect_here(netns: Option<&Path>, port: u16) -> Result<StdTcpStream, ForwardError> {
    if let Some(path) = netns {
        let f = File::open(path)
            .map_err(|source| ForwardError::Netns { path: path.to_path_buf(), source })?;
        setns(&f, CloneFlags::CLONE_NEWNET)
            .map_err(|e| ForwardError::Netns { path: path.to_path_buf(), source: e.into() })?;
    }
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    match StdTcpStream::connect_timeout(&v4, CONNECT_TIMEOUT) {
        Ok(s) => Ok(s),
        Err(first) => {
            let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
            StdTcpStream::connect_timeout(&v6, CONNECT_TIMEOUT)
                .map_err(|_| ForwardError::Connect { port, source: first })
        }
    }
}

/// Serves one forwarded connection from the host: handshake, then bytes both ways.
pub async fn handle<S>(mut host: S, containers: Containers)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let port = match tokio::time::timeout(REQUEST_TIMEOUT, read_line(&mut host)).await {
        Ok(Ok(line)) => parse_request(&line),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ForwardError::Request("no request line in time".into())),
    };
    let tcp = match port {
        Ok(port) => connect_in(containers.existing_pod_net_ns(), port).await,
        Err(e) => Err(e),
    };
    let mut tcp = match tcp {
        Ok(t) => t,
        Err(e) => {
            tracing::info!(error = %e, "port forward refused");
            let mut msg = format!("ERR {e}");
            msg.truncate(PORT_FORWARD_MAX_LINE - 1);
            msg = msg.replace('\n', " ");
            msg.push('\n');
            let _ = host.write_all(msg.as_bytes()).await;
            let _ = host.shutdown().await;
            return;
        }
    };
    if host.write_all(b"OK\n").await.is_err() {
        return;
    }
    match tokio::io::copy_bidirectional(&mut host, &mut tcp).await {
        Ok((up, down)) => tracing::debug!(up, down, "port forward connection ended"),
        Err(e) => tracing::debug!(error = %e, "port forward connection ended with an error"),
    }
}

/// Accepts forwarded connections on vsock until the task is aborted.
pub fn spawn_vsock_listener(containers: Containers) -> io::Result<tokio::task::JoinHandle<()>> {
    let addr = tokio_vsock::VsockAddr::new(tokio_vsock::VMADDR_CID_ANY, PORT_FORWARD_VSOCK_PORT);
    let listener = tokio_vsock::VsockListener::bind(addr)?;
    tracing::info!(port = PORT_FORWARD_VSOCK_PORT, "serving port forwarding on vsock");
    Ok(tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((s, _)) => {
                    tokio::spawn(handle(s, containers.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "port forward accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_parsed_strictly() {
        assert_eq!(parse_request(b"PORT 8080").unwrap(), 8080);
        for bad in [&b"PORT 0"[..], b"PORT 65536", b"PORT -1", b"PORT", b"port 80", b"\xff"] {
            assert!(parse_request(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[tokio::test]
    async fn a_long_or_cut_line_is_refused() {
        let long = vec![b'x'; PORT_FORWARD_MAX_LINE * 2];
        assert!(read_line(&mut &long[..]).await.is_err());
        assert!(read_line(&mut &b"PORT 80"[..]).await.is_err());
        let mut r = &b"PORT 80\nrest"[..];
        assert_eq!(read_line(&mut r).await.unwrap(), b"PORT 80");
        assert_eq!(r, b"rest");
    }

    /// A forwarded connection end to end over an in-memory "vsock": request, OK, the echo
    /// server's answer after the client's half-close; a closed port gets ERR.
    #[tokio::test]
    async fn forwards_bytes_and_half_closes() {
        let server = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = server.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = server.accept().await.unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap();
            s.write_all(&got).await.unwrap();
            s.write_all(b"!").await.unwrap();
        });
        let containers = Containers::disabled("test");
        let (mut host, guest) = tokio::io::duplex(1024);
        tokio::spawn(handle(guest, containers.clone()));
        host.write_all(format!("PORT {port}\nhello").as_bytes()).await.unwrap();
        host.shutdown().await.unwrap();
        let mut got = Vec::new();
        host.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"OK\nhello!");

        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed_port = closed.local_addr().unwrap().port();
        drop(closed);
        let (mut host, guest) = tokio::io::duplex(1024);
        tokio::spawn(handle(guest, containers));
        host.write_all(format!("PORT {closed_port}\n").as_bytes()).await.unwrap();
        let mut got = String::new();
        host.read_to_string(&mut got).await.unwrap();
        assert!(got.starts_with("ERR cannot connect to localhost:"), "{got}");
        assert!(got.ends_with('\n') && got.len() <= PORT_FORWARD_MAX_LINE, "{got}");
    }
}
