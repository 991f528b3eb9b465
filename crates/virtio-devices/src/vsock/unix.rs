//! The Unix side of the vsock device: a host client's `CONNECT <port>\n` handshake, and the
//! non-blocking connect of a guest-initiated connection to its Unix listener.

use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Instant;

use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};

/// Longest accepted `CONNECT <port>\n` line.
const MAX_CONNECT_LINE: usize = 32;

/// Why a host connection was closed before its CONNECT line was complete.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("closed before CONNECT line")]
    Closed,
    #[error("CONNECT line too long")]
    TooLong,
    #[error("hang-up before CONNECT line")]
    HangUp,
    #[error("malformed CONNECT line {0:?}")]
    Malformed(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// A host process connected to the listener and has not yet sent its whole CONNECT line.
pub struct PendingAccept {
    pub stream: UnixStream,
    line: Vec<u8>,
    /// When the host process must have sent its line.
    pub deadline: Instant,
}

impl PendingAccept {
    pub fn new(stream: UnixStream, deadline: Instant) -> PendingAccept {
        PendingAccept { stream, line: Vec::new(), deadline }
    }

    /// Reads what the host process sent (epoll said readable; `hung_up` when it also reported
    /// a hang-up or error): the guest port once the whole line is in, `None` while more must
    /// come. One byte at a time: whatever follows the newline is connection data.
    pub fn read_line(&mut self, hung_up: bool) -> Result<Option<u32>, HandshakeError> {
        loop {
            let mut byte = [0u8; 1];
            match (&self.stream).read(&mut byte) {
                Ok(0) => return Err(HandshakeError::Closed),
                Ok(_) if byte[0] == b'\n' => break,
                Ok(_) => {
                    self.line.push(byte[0]);
                    if self.line.len() > MAX_CONNECT_LINE {
                        return Err(HandshakeError::TooLong);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if hung_up {
                        return Err(HandshakeError::HangUp);
                    }
                    return Ok(None);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        match parse_connect_line(&self.line) {
            Some(port) => Ok(Some(port)),
            None => Err(HandshakeError::Malformed(String::from_utf8_lossy(&self.line).into())),
        }
    }
}

/// Parses `CONNECT <port>` (without the newline).
pub fn parse_connect_line(line: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(line).ok()?;
    let text = text.strip_suffix('\r').unwrap_or(text);
    let port = text.strip_prefix("CONNECT ")?;
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    port.parse().ok()
}

/// Connects to a Unix listener without blocking (a full backlog is a refusal, not a wait).
pub fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let fd: OwnedFd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let addr = UnixAddr::new(path)?;
    connect(fd.as_raw_fd(), &addr)?;
    Ok(UnixStream::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_line_parsing() {
        assert_eq!(parse_connect_line(b"CONNECT 52"), Some(52));
        assert_eq!(parse_connect_line(b"CONNECT 4294967295\r"), Some(u32::MAX));
        assert_eq!(parse_connect_line(b"CONNECT 4294967296"), None);
        assert_eq!(parse_connect_line(b"CONNECT "), None);
        assert_eq!(parse_connect_line(b"CONNECT -1"), None);
        assert_eq!(parse_connect_line(b"CONNECT +1"), None);
        assert_eq!(parse_connect_line(b"connect 52"), None);
        assert_eq!(parse_connect_line(b"CONNECT  52"), None);
        assert_eq!(parse_connect_line(b"\xff\xfe"), None);
    }
}
