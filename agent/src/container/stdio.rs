//! Pipes or a pseudo terminal between the agent and a container process,
//! and the buffered output a host reads with `ReadStdio`.
//!
//! Without a tty each process gets a stdout and a stderr pipe (and a stdin
//! pipe when the request asks; /dev/null otherwise). With a tty the process
//! runs on a pty whose slave libcontainer creates inside the container's own
//! devpts; the master comes back to the agent over a console socket (the
//! OCI `--console-socket` protocol: one fd in an SCM_RIGHTS message). The
//! terminal's output is the process's stdout (a terminal merges the
//! streams, as in Kubernetes). A reader thread per output forwards chunks
//! into one bounded channel; when nobody reads, the channel fills and the
//! process blocks on write (back-pressure rather than unbounded memory in
//! the guest).

use std::fs::File;
use std::io::{IoSliceMut, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use carapace_agent_client::pb::stdio_chunk::Stream;
use carapace_agent_client::pb::StdioChunk;
use nix::fcntl::OFlag;
use tokio::sync::mpsc;

use super::error::ContainerError;

/// Chunks buffered per process before the process blocks on output.
pub const OUTPUT_CHUNKS: usize = 256;
const CHUNK: usize = 32 * 1024;

/// How long the agent waits for libcontainer to send a terminal's master
/// after the process was created (it is sent before create returns).
const CONSOLE_WAIT: Duration = Duration::from_secs(10);

/// What libcontainer gets for the process's stdio.
pub enum ChildStdio {
    /// The child's ends of the pipes.
    Pipes { stdin: OwnedFd, stdout: OwnedFd, stderr: OwnedFd },
    /// A unix socket the container's init connects to and sends the
    /// terminal master over.
    Console { socket: PathBuf },
}

/// The agent's ends.
pub struct ProcessIo {
    pub output: Mutex<Option<mpsc::Receiver<StdioChunk>>>,
    pub stdin: Mutex<Option<File>>,
    /// The terminal master, for resizing (tty processes only).
    pub tty: Option<OwnedFd>,
}

fn pipe() -> Result<(OwnedFd, OwnedFd), ContainerError> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| ContainerError::io("pipe2", e.into()))
}

/// Creates the pipes; the reader threads start with [`ProcessIo::start`].
pub fn create(with_stdin: bool) -> Result<(ChildStdio, AgentEnds), ContainerError> {
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let (stdin_child, stdin_agent) = if with_stdin {
        let (r, w) = pipe()?;
        (r, Some(File::from(w)))
    } else {
        let null = File::open("/dev/null").map_err(|e| ContainerError::io("open /dev/null", e))?;
        (OwnedFd::from(null), None)
    };
    Ok((
        ChildStdio::Pipes { stdin: stdin_child, stdout: out_w, stderr: err_w },
        AgentEnds::Pipes { stdout: out_r, stderr: err_r, stdin: stdin_agent },
    ))
}

/// Listens on `socket` (which must not exist; its directory must) for the
/// terminal master of a process created with `terminal: true`.
pub fn create_tty(
    socket: &Path,
    with_stdin: bool,
) -> Result<(ChildStdio, AgentEnds), ContainerError> {
    let listener = UnixListener::bind(socket)
        .map_err(|e| ContainerError::io(format!("console socket {}", socket.display()), e))?;
    Ok((
        ChildStdio::Console { socket: socket.to_path_buf() },
        AgentEnds::Console { listener, socket: socket.to_path_buf(), with_stdin },
    ))
}

/// The agent's ends before the reader threads run.
pub enum AgentEnds {
    Pipes { stdout: OwnedFd, stderr: OwnedFd, stdin: Option<File> },
    Console { listener: UnixListener, socket: PathBuf, with_stdin: bool },
}

impl AgentEnds {
    /// Starts the reader threads. Call after the child's ends were closed
    /// in the agent (pipes), or EOF never comes; after the process was
    /// created (tty), whose init has then sent the terminal master.
    pub fn start(self, name: &str) -> Result<ProcessIo, ContainerError> {
        let (tx, rx) = mpsc::channel(OUTPUT_CHUNKS);
        match self {
            AgentEnds::Pipes { stdout, stderr, stdin } => {
                spawn_reader(format!("{name}-out"), stdout, Stream::Stdout, tx.clone());
                spawn_reader(format!("{name}-err"), stderr, Stream::Stderr, tx);
                Ok(ProcessIo { output: Mutex::new(Some(rx)), stdin: Mutex::new(stdin), tty: None })
            }
            AgentEnds::Console { listener, socket, with_stdin } => {
                let master = receive_master(&listener, CONSOLE_WAIT);
                let _ = std::fs::remove_file(&socket);
                let master = master?;
                let dup = |what: &str| {
                    master.try_clone().map_err(|e| {
                        ContainerError::io(format!("dup terminal master for {what}"), e)
                    })
                };
                let stdin = if with_stdin { Some(File::from(dup("stdin")?)) } else { None };
                spawn_reader(format!("{name}-tty"), dup("output")?, Stream::Stdout, tx);
                Ok(ProcessIo {
                    output: Mutex::new(Some(rx)),
                    stdin: Mutex::new(stdin),
                    tty: Some(master),
                })
            }
        }
    }
}

/// Accepts one connection on the console socket and takes the terminal
/// master from its SCM_RIGHTS message; refuses anything that is not a tty.
pub fn receive_master(listener: &UnixListener, wait: Duration) -> Result<OwnedFd, ContainerError> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::FromRawFd;

    let err = |what: &str| ContainerError::Runtime(format!("terminal: {what}"));
    let ms = u16::try_from(wait.as_millis()).unwrap_or(u16::MAX);
    let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
    let ready = poll(&mut fds, PollTimeout::from(ms))
        .map_err(|e| ContainerError::io("poll console socket", e.into()))?;
    if ready == 0 {
        return Err(err("the container did not send its terminal in time"));
    }
    let (stream, _) =
        listener.accept().map_err(|e| ContainerError::io("accept on console socket", e))?;
    stream
        .set_read_timeout(Some(wait))
        .map_err(|e| ContainerError::io("console socket timeout", e))?;
    let mut buf = [0u8; 256];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 4]);
    let msg =
        recvmsg::<()>(stream.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)
            .map_err(|e| ContainerError::io("receive terminal master", e.into()))?;
    let mut received: Vec<OwnedFd> = Vec::new();
    for c in msg.cmsgs().map_err(|e| ContainerError::io("terminal master message", e.into()))? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            // SAFETY: the kernel installed these descriptors for this process
            // just now; each is owned exactly once, here.
            received.extend(raw.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
        }
    }
    if received.len() != 1 {
        return Err(err(&format!("expected one descriptor, got {}", received.len())));
    }
    let master = received.remove(0);
    if !nix::unistd::isatty(master.as_raw_fd()).unwrap_or(false) {
        return Err(err("the descriptor received is not a terminal"));
    }
    Ok(master)
}

fn spawn_reader(name: String, fd: OwnedFd, stream: Stream, tx: mpsc::Sender<StdioChunk>) {
    let spawned = std::thread::Builder::new().name(name).spawn(move || {
        let mut f = File::from(fd);
        let mut buf = vec![0u8; CHUNK];
        loop {
            match f.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    let chunk = StdioChunk { stream: stream as i32, data: buf[..n].to_vec() };
                    // No receiver left: keep draining so the process never
                    // blocks on a pipe nobody reads.
                    let _ = tx.blocking_send(chunk);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                // A terminal master reads EIO once the last slave fd closed.
                Err(e) if e.raw_os_error() == Some(libc::EIO) => return,
                Err(e) => {
                    tracing::debug!(error = %e, "output pipe read failed");
                    return;
                }
            }
        }
    });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start an output reader thread");
    }
}

impl ProcessIo {
    /// Takes the output channel (one reader per process).
    pub fn take_output(&self) -> Option<mpsc::Receiver<StdioChunk>> {
        self.output.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Writes to stdin (blocking); `close` drops the pipe afterwards.
    pub fn write_stdin(&self, data: &[u8], close: bool) -> Result<(), ContainerError> {
        let mut slot = self.stdin.lock().unwrap_or_else(|p| p.into_inner());
        let Some(f) = slot.as_mut() else {
            return Err(ContainerError::State(
                "stdin is not open (created without stdin, or closed)".into(),
            ));
        };
        if !data.is_empty() {
            f.write_all(data).map_err(|e| ContainerError::io("write stdin", e))?;
        }
        if close {
            *slot = None;
        }
        Ok(())
    }

    /// Sets the terminal's window size (tty processes only).
    pub fn resize(&self, rows: u16, cols: u16) -> Result<(), ContainerError> {
        let Some(master) = &self.tty else {
            return Err(ContainerError::State(
                "the process has no terminal (created without tty)".into(),
            ));
        };
        let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: TIOCSWINSZ reads one winsize from the pointer, valid for the call.
        if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) } != 0 {
            return Err(ContainerError::io("resize terminal", std::io::Error::last_os_error()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_separated_and_ends() {
        let (child, agent) = create(true).unwrap();
        let io = agent.start("t").unwrap();
        let ChildStdio::Pipes { stdin, stdout, stderr } = child else { panic!("pipes expected") };
        let mut out = File::from(stdout);
        let mut err = File::from(stderr);
        out.write_all(b"out").unwrap();
        err.write_all(b"err").unwrap();
        drop(out);
        drop(err);
        let mut rx = io.take_output().unwrap();
        assert!(io.take_output().is_none());
        let mut got = Vec::new();
        while let Some(c) = rx.blocking_recv() {
            got.push((c.stream, c.data));
        }
        got.sort();
        assert_eq!(
            got,
            vec![
                (Stream::Stdout as i32, b"out".to_vec()),
                (Stream::Stderr as i32, b"err".to_vec())
            ]
        );

        io.write_stdin(b"hi", true).unwrap();
        let mut s = String::new();
        File::from(stdin).read_to_string(&mut s).unwrap();
        assert_eq!(s, "hi");
        assert!(io.write_stdin(b"x", false).is_err());
        assert!(io.resize(24, 80).is_err(), "no terminal to resize");
    }

    /// Sends `fds` over a fresh connection to `socket`, as libcontainer's
    /// container init does with its terminal master.
    fn send_fds(socket: &Path, fds: &[std::os::fd::RawFd]) {
        use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
        let s = std::os::unix::net::UnixStream::connect(socket).unwrap();
        let iov = [std::io::IoSlice::new(b"tty")];
        sendmsg::<()>(
            s.as_raw_fd(),
            &iov,
            &[ControlMessage::ScmRights(fds)],
            MsgFlags::empty(),
            None,
        )
        .unwrap();
    }

    #[test]
    fn a_terminal_master_arrives_over_the_console_socket() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("console.sock");
        let (child, agent) = create_tty(&socket, true).unwrap();
        assert!(matches!(child, ChildStdio::Console { socket: ref s } if s == &socket));
        let pty = nix::pty::openpty(None, None).unwrap();
        send_fds(&socket, &[pty.master.as_raw_fd()]);
        drop(pty.master);
        let io = agent.start("t").unwrap();
        assert!(!socket.exists(), "the console socket is removed once used");
        io.resize(40, 120).unwrap();
        let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::ioctl(pty.slave.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) }, 0);
        assert_eq!((ws.ws_row, ws.ws_col), (40, 120));
        // What the process writes on the slave is stdout; stdin reaches the slave.
        let mut slave = File::from(pty.slave);
        slave.write_all(b"hello\n").unwrap();
        let mut rx = io.take_output().unwrap();
        let c = rx.blocking_recv().unwrap();
        assert_eq!(c.stream, Stream::Stdout as i32);
        assert!(String::from_utf8_lossy(&c.data).contains("hello"), "{:?}", c.data);
        io.write_stdin(b"typed\n", false).unwrap();
        let mut line = [0u8; 6];
        slave.read_exact(&mut line).unwrap();
        assert_eq!(&line, b"typed\n");
        drop(slave);
        // The slave is gone: the reader ends (EIO) and the channel closes.
        while rx.blocking_recv().is_some() {}
    }

    #[test]
    fn console_socket_refuses_what_is_not_one_terminal() {
        let dir = tempfile::tempdir().unwrap();
        // A pipe is not a terminal.
        let socket = dir.path().join("a.sock");
        let (_child, agent) = create_tty(&socket, false).unwrap();
        let (r, _w) = pipe().unwrap();
        send_fds(&socket, &[r.as_raw_fd()]);
        let e = agent.start("t").err().expect("a pipe is refused");
        assert!(e.to_string().contains("not a terminal"), "{e}");
        // Two descriptors.
        let socket = dir.path().join("b.sock");
        let (_child, agent) = create_tty(&socket, false).unwrap();
        let pty = nix::pty::openpty(None, None).unwrap();
        send_fds(&socket, &[pty.master.as_raw_fd(), pty.slave.as_raw_fd()]);
        assert!(agent.start("t").err().unwrap().to_string().contains("expected one"));
        // Nobody connects.
        let listener = UnixListener::bind(dir.path().join("c.sock")).unwrap();
        let e = receive_master(&listener, Duration::from_millis(50)).unwrap_err();
        assert!(e.to_string().contains("in time"), "{e}");
    }
}
