//! Pipes between the agent and a container process, and the buffered
//! output a host reads with `ReadStdio`.
//!
//! Each process gets a stdout and a stderr pipe (and a stdin pipe when the
//! request asks; /dev/null otherwise). A reader thread per output pipe
//! forwards chunks into one bounded channel; when nobody reads, the
//! channel fills and the process blocks on write (back-pressure rather than
//! unbounded memory in the guest).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::sync::Mutex;

use carapace_agent_client::pb::stdio_chunk::Stream;
use carapace_agent_client::pb::StdioChunk;
use nix::fcntl::OFlag;
use tokio::sync::mpsc;

use super::error::ContainerError;

/// Chunks buffered per process before the process blocks on output.
pub const OUTPUT_CHUNKS: usize = 256;
const CHUNK: usize = 32 * 1024;

/// The child's ends of the pipes, handed to libcontainer.
pub struct ChildStdio {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// The agent's ends.
pub struct ProcessIo {
    pub output: Mutex<Option<mpsc::Receiver<StdioChunk>>>,
    pub stdin: Mutex<Option<File>>,
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
        ChildStdio { stdin: stdin_child, stdout: out_w, stderr: err_w },
        AgentEnds { stdout: out_r, stderr: err_r, stdin: stdin_agent },
    ))
}

/// The agent's ends before the reader threads run.
pub struct AgentEnds {
    stdout: OwnedFd,
    stderr: OwnedFd,
    stdin: Option<File>,
}

impl AgentEnds {
    /// Starts the reader threads. Call after the child's ends were closed
    /// in the agent, or EOF never comes.
    pub fn start(self, name: &str) -> ProcessIo {
        let (tx, rx) = mpsc::channel(OUTPUT_CHUNKS);
        spawn_reader(format!("{name}-out"), self.stdout, Stream::Stdout, tx.clone());
        spawn_reader(format!("{name}-err"), self.stderr, Stream::Stderr, tx);
        ProcessIo {
            output: Mutex::new(Some(rx)),
            stdin: Mutex::new(self.stdin),
        }
    }
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
            return Err(ContainerError::State("stdin is not open (created without stdin, or closed)".into()));
        };
        if !data.is_empty() {
            f.write_all(data).map_err(|e| ContainerError::io("write stdin", e))?;
        }
        if close {
            *slot = None;
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
        let io = agent.start("t");
        let mut out = File::from(child.stdout);
        let mut err = File::from(child.stderr);
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
        assert_eq!(got, vec![(Stream::Stdout as i32, b"out".to_vec()), (Stream::Stderr as i32, b"err".to_vec())]);

        io.write_stdin(b"hi", true).unwrap();
        let mut s = String::new();
        File::from(child.stdin).read_to_string(&mut s).unwrap();
        assert_eq!(s, "hi");
        assert!(io.write_stdin(b"x", false).is_err());
    }
}
