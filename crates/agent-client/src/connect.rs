//! Retrying the vsock handshake until the agent listens or a deadline passes.

use std::path::Path;
use std::time::Duration;

use tokio::net::UnixStream;
use tokio::time::Instant;

use crate::error::AgentClientError;
use crate::handshake::{connect_once, HandshakeError};

/// First pause between attempts; doubles up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(5);
/// Longest pause between attempts.
pub const MAX_BACKOFF: Duration = Duration::from_millis(100);

/// Next backoff after `current`.
pub fn next_backoff(current: Duration) -> Duration {
    (current * 2).min(MAX_BACKOFF)
}

/// Connects to guest `port` through the VMM socket at `uds_path`, retrying
/// transient failures (socket not there yet, no listener in the guest yet,
/// garbage reply) with a short backoff until `deadline` has passed since the
/// call. Returns the stream positioned after the `OK` line.
pub async fn connect_with_retry(
    uds_path: &Path,
    port: u32,
    deadline: Duration,
) -> Result<UnixStream, AgentClientError> {
    let start = Instant::now();
    let end = start + deadline;
    let mut backoff = FIRST_BACKOFF;
    let mut attempts: u32 = 0;
    loop {
        attempts = attempts.saturating_add(1);
        let remaining = end.saturating_duration_since(Instant::now());
        // Bound one attempt too: a VMM that accepts and never answers must
        // not hold us past the deadline.
        let attempt = tokio::time::timeout(
            remaining.max(Duration::from_millis(1)),
            connect_once(uds_path, port),
        )
        .await;
        let err = match attempt {
            Ok(Ok((stream, host_port))) => {
                tracing::debug!(
                    attempts,
                    host_port,
                    elapsed_ms = start.elapsed().as_millis() as u64,
                    "connected to agent"
                );
                return Ok(stream);
            }
            Ok(Err(e)) => e,
            Err(_) => HandshakeError::Closed,
        };
        if !err.is_retryable() {
            return Err(err.into());
        }
        let now = Instant::now();
        if now >= end {
            return Err(match err {
                HandshakeError::SocketMissing(p) => AgentClientError::SocketMissing(p),
                other => {
                    AgentClientError::Deadline { port, waited: deadline, last: other.to_string() }
                }
            });
        }
        tracing::trace!(attempts, error = %err, "agent not reachable yet, retrying");
        let pause = backoff.min(end.saturating_duration_since(now));
        tokio::time::sleep(pause).await;
        backoff = next_backoff(backoff);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixListener;

    #[test]
    fn backoff_grows_and_caps() {
        let mut b = FIRST_BACKOFF;
        for _ in 0..20 {
            let n = next_backoff(b);
            assert!(n >= b);
            assert!(n <= MAX_BACKOFF);
            b = n;
        }
        assert_eq!(b, MAX_BACKOFF);
    }

    #[tokio::test]
    async fn retries_until_guest_listens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            // First two connections: no guest listener yet -> VMM closes.
            for _ in 0..2 {
                let (s, _) = listener.accept().await.unwrap();
                drop(s);
            }
            // Third: garbage.
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 13];
            s.read_exact(&mut buf).await.unwrap();
            s.write_all(b"ERR no listener\n").await.unwrap();
            drop(s);
            // Fourth: the agent is there.
            let (mut s, _) = listener.accept().await.unwrap();
            s.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"CONNECT 1024\n");
            s.write_all(b"OK 1073741824\nhello").await.unwrap();
            s
        });
        let mut stream = connect_with_retry(&path, 1024, Duration::from_secs(10)).await.unwrap();
        let mut buf = [0u8; 5];
        stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn deadline_when_nobody_answers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    return;
                };
                drop(s);
            }
        });
        let t = std::time::Instant::now();
        let err = connect_with_retry(&path, 1024, Duration::from_millis(300)).await.unwrap_err();
        assert!(t.elapsed() >= Duration::from_millis(300));
        assert!(t.elapsed() < Duration::from_secs(3));
        assert!(matches!(err, AgentClientError::Deadline { port: 1024, .. }), "{err:?}");
        assert!(err.to_string().contains("agent did not answer on vsock port 1024 within 0.3s"));
    }

    #[tokio::test]
    async fn deadline_when_vmm_hangs_after_accept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vm.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let holder = tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    return;
                };
                held.push(s);
            }
        });
        let t = std::time::Instant::now();
        let err = connect_with_retry(&path, 1024, Duration::from_millis(200)).await.unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(3));
        assert!(matches!(err, AgentClientError::Deadline { .. }), "{err:?}");
        holder.abort();
    }

    #[tokio::test]
    async fn missing_socket_after_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.sock");
        let err = connect_with_retry(&path, 1024, Duration::from_millis(50)).await.unwrap_err();
        assert!(matches!(err, AgentClientError::SocketMissing(_)), "{err:?}");
    }

    #[tokio::test]
    async fn socket_appearing_late_is_picked_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("late.sock");
        let p2 = path.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let listener = UnixListener::bind(&p2).unwrap();
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 13];
            s.read_exact(&mut buf).await.unwrap();
            s.write_all(b"OK 1\n").await.unwrap();
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest).await;
        });
        connect_with_retry(&path, 1024, Duration::from_secs(5)).await.unwrap();
    }
}
