//! What both remote command transports share: the pipes between the client's streams and the
//! process ([`pipes`]), feeding the client's stdin and terminal sizes to it ([`Input`], which
//! waits while the process has not taken what it got: backpressure up to the client), and
//! running it while its output goes to the transport's writer ([`Process::run`]).

use std::future::Future;

use tokio::sync::mpsc;

use super::protocol::{Session, MAX_DATA_CHUNK};
use crate::streaming::{Backend, Outcome, Stdio, TermSize};

/// Chunks of stdin (and of output) queued between the transport and the process at most.
const PIPE: usize = 8;
/// Terminal sizes queued at most (a burst beyond drops some: the last one counts).
const RESIZES: usize = 4;
/// The most a resize stream may buffer without a whole JSON object.
const MAX_RESIZE_BUF: usize = 4096;

/// Which streams the client has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Want {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub resize: bool,
}

/// The transport's side of the client's input.
pub struct Input {
    stdin: Option<mpsc::Sender<Vec<u8>>>,
    resize: Option<mpsc::Sender<TermSize>>,
    resize_buf: Vec<u8>,
}

/// The process's side, until it runs.
pub struct Process {
    stdio: Stdio,
    stdout: Option<mpsc::Receiver<Vec<u8>>>,
    stderr: Option<mpsc::Receiver<Vec<u8>>>,
}

/// Which output stream a chunk is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    Stdout,
    Stderr,
}

/// The pipes of a session with the streams `want`.
pub fn pipes(want: Want) -> (Input, Process) {
    let (stdin_tx, stdin_rx) = want.stdin.then(|| mpsc::channel(PIPE)).unzip();
    let (resize_tx, resize_rx) = want.resize.then(|| mpsc::channel(RESIZES)).unzip();
    let (stdout_tx, stdout_rx) = want.stdout.then(|| mpsc::channel(PIPE)).unzip();
    let (stderr_tx, stderr_rx) = want.stderr.then(|| mpsc::channel(PIPE)).unzip();
    let input = Input { stdin: stdin_tx, resize: resize_tx, resize_buf: Vec::new() };
    let stdio = Stdio { stdin: stdin_rx, stdout: stdout_tx, stderr: stderr_tx, resize: resize_rx };
    (input, Process { stdio, stdout: stdout_rx, stderr: stderr_rx })
}

impl Input {
    /// Hands stdin bytes to the process, waiting while it has not taken the earlier ones.
    pub async fn stdin(&mut self, data: Vec<u8>) {
        if data.is_empty() {
            return;
        }
        if let Some(tx) = &self.stdin {
            if tx.send(data).await.is_err() {
                self.stdin = None; // the process does not read stdin any more
            }
        }
    }

    /// The client closed stdin: EOF for the process.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Bytes of the resize stream: JSON objects `{"Width":W,"Height":H}` (Go's json.Encoder
    /// writes one per line; a transport may split or join them anywhere).
    pub fn resize(&mut self, data: &[u8]) {
        self.resize_buf.extend_from_slice(data);
        let mut sizes = serde_json::Deserializer::from_slice(&self.resize_buf).into_iter();
        let mut used = 0;
        loop {
            match sizes.next() {
                Some(Ok(size)) => {
                    used = sizes.byte_offset();
                    if let Some(tx) = &self.resize {
                        let _ = tx.try_send(size);
                    }
                }
                Some(Err(e)) if e.is_eof() => break,
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "bad terminal size from the client");
                    used = self.resize_buf.len();
                    break;
                }
                None => {
                    used = self.resize_buf.len();
                    break;
                }
            }
        }
        self.resize_buf.drain(..used);
        if self.resize_buf.len() > MAX_RESIZE_BUF {
            tracing::debug!("terminal size too long: dropped");
            self.resize_buf.clear();
        }
    }

    pub fn close_resize(&mut self) {
        self.resize = None;
    }
}

async fn recv(rx: &mut Option<mpsc::Receiver<Vec<u8>>>) -> Option<Vec<u8>> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

impl Process {
    /// Runs `session`; each chunk of its output (at most [`MAX_DATA_CHUNK`] bytes) is queued
    /// on `out` as `wrap(channel, bytes)`, waiting while the queue is full. The outcome once
    /// the process ended and all its output is queued; `None` (the process's future dropped,
    /// which stops it) if `gone` completes first or the writer is gone.
    pub async fn run<M>(
        self,
        session: Session,
        backend: &dyn Backend,
        out: &mpsc::Sender<M>,
        wrap: impl Fn(Channel, Vec<u8>) -> M,
        gone: impl Future<Output = ()>,
    ) -> Option<Outcome> {
        let Process { stdio, mut stdout, mut stderr } = self;
        let run = session.run(backend, stdio);
        let mut run = std::pin::pin!(run);
        let mut gone = std::pin::pin!(gone);
        let mut outcome = None;
        loop {
            if outcome.is_some() && stdout.is_none() && stderr.is_none() {
                return outcome;
            }
            let (channel, data) = tokio::select! {
                o = &mut run, if outcome.is_none() => {
                    outcome = Some(o);
                    continue;
                }
                d = recv(&mut stdout) => match d {
                    Some(d) => (Channel::Stdout, d),
                    None => {
                        stdout = None;
                        continue;
                    }
                },
                d = recv(&mut stderr) => match d {
                    Some(d) => (Channel::Stderr, d),
                    None => {
                        stderr = None;
                        continue;
                    }
                },
                () = &mut gone => return None,
            };
            for chunk in data.chunks(MAX_DATA_CHUNK) {
                if out.send(wrap(channel, chunk.to_vec())).await.is_err() {
                    return None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn resize_objects_are_parsed_wherever_they_are_split() {
        let (mut input, mut p) = pipes(Want { resize: true, ..Default::default() });
        let mut rx = p.stdio.resize.take().unwrap();
        input.resize(br#"{"Width":80,"Hei"#);
        input.resize(b"ght\":24}\n{\"Width\":1,\"Height\":2}");
        assert_eq!(rx.recv().await, Some(TermSize { width: 80, height: 24 }));
        assert_eq!(rx.recv().await, Some(TermSize { width: 1, height: 2 }));
        // Garbage is dropped, what follows still counts.
        input.resize(b"]]]\n");
        input.resize(br#"{"Width":3,"Height":4}"#);
        assert_eq!(rx.recv().await, Some(TermSize { width: 3, height: 4 }));
        // An endless object is cut off.
        input.resize(b"{\"Width\":");
        input.resize(&[b' '; 2 * MAX_RESIZE_BUF]);
        assert!(input.resize_buf.is_empty());
        input.close_resize();
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn stdin_waits_for_the_process_and_ends_with_close() {
        let (mut input, mut p) = pipes(Want { stdin: true, ..Default::default() });
        let mut rx = p.stdio.stdin.take().unwrap();
        for i in 0..PIPE {
            input.stdin(vec![i as u8]).await;
        }
        // The pipe is full: the next chunk waits until the process reads.
        {
            let more = input.stdin(vec![99]);
            tokio::pin!(more);
            assert!(futures_util::FutureExt::now_or_never(&mut more).is_none());
            assert_eq!(rx.recv().await, Some(vec![0]));
            more.await;
        }
        input.close_stdin();
        let mut got = Vec::new();
        while let Some(d) = rx.recv().await {
            got.extend(d);
        }
        assert_eq!(got.len(), PIPE);
        assert_eq!(got.last(), Some(&99));
    }
}
