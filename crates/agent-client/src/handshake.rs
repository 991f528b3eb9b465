//! The VMM's vsock handshake: `CONNECT <port>\n` → `OK <host_port>\n`.
//!
//! The VMM implements virtio-vsock in user space and exposes it as a Unix
//! socket on the host (the scheme Firecracker made common). A host process
//! connects to that socket, names the guest port, and, if a guest process is
//! listening there, gets `OK <n>\n` back, where `n` is the host-side port the
//! VMM picked for the connection. Everything after that line is the guest's
//! byte stream, so the reply is read one byte at a time: the agent's HTTP/2
//! server may send its SETTINGS frame right behind the `OK` line.

use std::path::Path;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Longest reply line accepted ("OK " + a u32 + "\n" fits easily).
pub const MAX_REPLY_LEN: usize = 32;

/// Why one handshake attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The Unix socket path does not exist.
    #[error("VM socket {0} does not exist: is the VM running?")]
    SocketMissing(String),
    /// connect(2) on the Unix socket failed for another reason.
    #[error("cannot connect to VM socket {path}: {source}")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Reading or writing the handshake failed.
    #[error("vsock handshake I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The VMM closed the connection without answering: usually nothing
    /// listens on that guest port (yet).
    #[error("the VMM closed the connection: nothing listens on the guest port yet")]
    Closed,
    /// The VMM answered something other than `OK <n>`.
    #[error("unexpected vsock handshake reply {0:?}")]
    BadReply(String),
}

impl HandshakeError {
    /// True when trying again later can succeed (the VM may still be
    /// booting, or the agent not listening yet).
    pub fn is_retryable(&self) -> bool {
        match self {
            HandshakeError::SocketMissing(_) | HandshakeError::Closed => true,
            HandshakeError::Connect { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::WouldBlock
                    | std::io::ErrorKind::Interrupted
            ),
            HandshakeError::Io(_) | HandshakeError::BadReply(_) => true,
        }
    }
}

/// Parses one reply line (without the trailing newline). Returns the host
/// port the VMM assigned.
pub fn parse_reply(line: &[u8]) -> Result<u32, HandshakeError> {
    let text = std::str::from_utf8(line)
        .map_err(|_| HandshakeError::BadReply(String::from_utf8_lossy(line).into_owned()))?;
    let bad = || HandshakeError::BadReply(text.to_owned());
    let text_trimmed = text.strip_suffix('\r').unwrap_or(text);
    let rest = text_trimmed.strip_prefix("OK ").ok_or_else(bad)?;
    rest.trim().parse::<u32>().map_err(|_| bad())
}

/// The request line for `port`.
pub fn connect_line(port: u32) -> String {
    format!("CONNECT {port}\n")
}

/// Reads bytes up to and including the first `\n`, never past it.
async fn read_reply_line(stream: &mut UnixStream) -> Result<Vec<u8>, HandshakeError> {
    let mut line = Vec::with_capacity(MAX_REPLY_LEN);
    loop {
        let mut byte = [0u8; 1];
        let n = stream.read(&mut byte).await?;
        if n == 0 {
            return if line.is_empty() {
                Err(HandshakeError::Closed)
            } else {
                Err(HandshakeError::BadReply(String::from_utf8_lossy(&line).into_owned()))
            };
        }
        if byte[0] == b'\n' {
            return Ok(line);
        }
        line.push(byte[0]);
        if line.len() >= MAX_REPLY_LEN {
            return Err(HandshakeError::BadReply(String::from_utf8_lossy(&line).into_owned()));
        }
    }
}

/// One attempt: connect to the VMM's socket, ask for `port`, check the reply.
/// On success the returned stream is positioned right after the `OK` line.
pub async fn connect_once(uds_path: &Path, port: u32) -> Result<(UnixStream, u32), HandshakeError> {
    let mut stream = match UnixStream::connect(uds_path).await {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(HandshakeError::SocketMissing(uds_path.display().to_string()))
        }
        Err(e) => {
            return Err(HandshakeError::Connect { path: uds_path.display().to_string(), source: e })
        }
    };
    stream.write_all(connect_line(port).as_bytes()).await?;
    let line = read_reply_line(&mut stream).await?;
    let host_port = parse_reply(&line)?;
    tracing::debug!(path = %uds_path.display(), port, host_port, "vsock handshake done");
    Ok((stream, host_port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    #[test]
    fn parses_ok_reply() {
        assert_eq!(parse_reply(b"OK 1073741824").unwrap(), 1_073_741_824);
        assert_eq!(parse_reply(b"OK 5\r").unwrap(), 5);
    }

    #[test]
    fn rejects_garbage_replies() {
        for bad in [
            &b""[..],
            b"OK",
            b"OK ",
            b"ok 5",
            b"NO 5",
            b"OK -1",
            b"OK 99999999999",
            b"OK 12abc",
            b"\xff\xfe",
            b"HTTP/1.1 400 Bad Request",
        ] {
            assert!(
                matches!(parse_reply(bad), Err(HandshakeError::BadReply(_))),
                "accepted {bad:?}"
            );
        }
    }

    #[test]
    fn connect_line_format() {
        assert_eq!(connect_line(1024), "CONNECT 1024\n");
    }

    #[tokio::test]
    async fn missing_socket_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope.sock");
        let err = connect_once(&path, 1024).await.unwrap_err();
        assert!(matches!(err, HandshakeError::SocketMissing(_)));
        assert!(err.to_string().contains("is the VM running?"));
    }

    async fn serve_one(
        reply: &'static [u8],
        trailing: &'static [u8],
    ) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 13];
            s.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"CONNECT 1024\n");
            let mut all = reply.to_vec();
            all.extend_from_slice(trailing);
            s.write_all(&all).await.unwrap();
            // keep the stream open until the peer is done
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest).await;
        });
        (dir, path)
    }

    #[tokio::test]
    async fn handshake_leaves_following_bytes_in_stream() {
        let (_dir, path) = serve_one(b"OK 77\n", b"PAYLOAD").await;
        let (mut s, port) = connect_once(&path, 1024).await.unwrap();
        assert_eq!(port, 77);
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"PAYLOAD");
    }

    #[tokio::test]
    async fn eof_without_reply_is_closed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            drop(s);
        });
        let err = connect_once(&path, 1024).await.unwrap_err();
        assert!(matches!(err, HandshakeError::Closed | HandshakeError::Io(_)), "{err:?}");
        assert!(err.is_retryable());
    }

    #[tokio::test]
    async fn overlong_reply_is_rejected() {
        let (_dir, path) = serve_one(b"OK 1111111111111111111111111111111111111111\n", b"").await;
        let err = connect_once(&path, 1024).await.unwrap_err();
        assert!(matches!(err, HandshakeError::BadReply(_)), "{err:?}");
    }

    #[tokio::test]
    async fn partial_reply_then_eof_is_bad_reply() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 13];
            let _ = s.read_exact(&mut buf).await;
            let _ = s.write_all(b"OK 12").await;
        });
        let err = connect_once(&path, 1024).await.unwrap_err();
        assert!(matches!(err, HandshakeError::BadReply(_)), "{err:?}");
    }
}
