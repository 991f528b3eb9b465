//! Remote command (exec, attach) over SPDY, as kubelet's streaming server speaks it to
//! client-go (`v4.channel.k8s.io`, and v3/v2): the client opens one SPDY stream per
//! `streamType` (error, stdin, stdout, stderr, resize), the server replies to each, and once
//! every stream the request asked for is there the process runs. stdin data goes to the
//! process (the client's FIN = EOF), its output comes back as data on stdout/stderr, each
//! closed (FIN) at the end, then the exit status is written on the error stream: v4 as a
//! `metav1.Status` JSON object, v2/v3 as the plain error text (nothing on success).

use std::sync::Arc;
use std::time::Duration;

use k8s_cri::v1 as cri;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use super::spdy::{Decoder, Encoder, Frame, FLAG_FIN, RST_PROTOCOL_ERROR};
use super::{Backend, Outcome, Stdio, TermSize};

/// How long the client may take to open the streams it asked for (kubelet: 30 s).
pub const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the client may take to close the connection after the exit status was sent.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Output is sent in data frames of at most this many bytes.
pub const MAX_DATA_CHUNK: usize = 32 << 10;
/// The most a resize stream may buffer without a newline.
const MAX_RESIZE_LINE: usize = 4096;

/// The remote command protocol versions, oldest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Protocol {
    V2,
    V3,
    V4,
    /// WebSocket only: v4 plus the close signal for stdin.
    V5,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::V2 => "v2.channel.k8s.io",
            Protocol::V3 => "v3.channel.k8s.io",
            Protocol::V4 => "v4.channel.k8s.io",
            Protocol::V5 => "v5.channel.k8s.io",
        }
    }

    pub fn from_name(name: &str) -> Option<Protocol> {
        [Protocol::V2, Protocol::V3, Protocol::V4, Protocol::V5]
            .into_iter()
            .find(|p| p.name() == name)
    }
}

/// The first protocol in the client's order of preference that the server also supports.
pub fn negotiate<'a>(
    offered: impl IntoIterator<Item = &'a str>,
    supported: &[Protocol],
) -> Option<Protocol> {
    offered
        .into_iter()
        .flat_map(|v| v.split(','))
        .filter_map(|v| Protocol::from_name(v.trim()))
        .find(|p| supported.contains(p))
}

/// A streaming session's request.
#[derive(Debug, Clone)]
pub enum Session {
    Exec(cri::ExecRequest),
    Attach(cri::AttachRequest),
}

/// Which streams a session has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flags {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

impl Session {
    pub fn flags(&self) -> Flags {
        match self {
            Session::Exec(r) => {
                Flags { stdin: r.stdin, stdout: r.stdout, stderr: r.stderr, tty: r.tty }
            }
            Session::Attach(r) => {
                Flags { stdin: r.stdin, stdout: r.stdout, stderr: r.stderr, tty: r.tty }
            }
        }
    }

    /// What the status message names.
    fn describe(&self) -> String {
        match self {
            Session::Exec(r) => format!("command {:?}", r.cmd),
            Session::Attach(r) => format!("attach to container {}", r.container_id),
        }
    }

    pub async fn run(self, backend: &dyn Backend, io: Stdio) -> Outcome {
        match self {
            Session::Exec(r) => backend.exec(r, io).await,
            Session::Attach(r) => backend.attach(r, io).await,
        }
    }
}

/// The error stream's message for an outcome (None: nothing to write).
pub fn status_message(protocol: Protocol, what: &str, outcome: &Outcome) -> Option<Vec<u8>> {
    let v = match (protocol >= Protocol::V4, outcome) {
        (true, Outcome::Exited(0)) => serde_json::json!({"metadata": {}, "status": "Success"}),
        (true, Outcome::Exited(code)) => serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": format!(
                "command terminated with non-zero exit code: error executing {what}, \
                 exit code {code}"
            ),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
        (true, Outcome::Failed(msg)) => serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("Internal error occurred: {msg}"),
            "reason": "InternalError",
            "details": {"causes": [{"message": msg}]},
            "code": 500,
        }),
        (false, Outcome::Exited(0)) => return None,
        (false, Outcome::Exited(code)) => {
            return Some(
                format!("command terminated with non-zero exit code: exit status {code}")
                    .into_bytes(),
            )
        }
        (false, Outcome::Failed(msg)) => return Some(msg.clone().into_bytes()),
    };
    Some(v.to_string().into_bytes())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Error,
    Stdin,
    Stdout,
    Stderr,
    Resize,
}

impl Kind {
    fn of(name: &str) -> Option<Kind> {
        Some(match name {
            "error" => Kind::Error,
            "stdin" => Kind::Stdin,
            "stdout" => Kind::Stdout,
            "stderr" => Kind::Stderr,
            "resize" => Kind::Resize,
            _ => return None,
        })
    }
}

/// The SPDY stream IDs of a session's streams.
#[derive(Debug, Default, Clone, Copy)]
struct Streams {
    error: Option<u32>,
    stdin: Option<u32>,
    stdout: Option<u32>,
    stderr: Option<u32>,
    resize: Option<u32>,
}

impl Streams {
    fn slot(&mut self, k: Kind) -> &mut Option<u32> {
        match k {
            Kind::Error => &mut self.error,
            Kind::Stdin => &mut self.stdin,
            Kind::Stdout => &mut self.stdout,
            Kind::Stderr => &mut self.stderr,
            Kind::Resize => &mut self.resize,
        }
    }

    fn complete(&self, f: Flags, p: Protocol) -> bool {
        let has = |want: bool, s: Option<u32>| !want || s.is_some();
        has(true, self.error)
            && has(f.stdin, self.stdin)
            && has(f.stdout, self.stdout)
            && has(f.stderr && !f.tty, self.stderr)
            && has(f.tty && p >= Protocol::V3, self.resize)
    }
}

/// Serves one upgraded SPDY connection to its end.
pub async fn serve_spdy<IO>(io: IO, protocol: Protocol, session: Session, backend: Arc<dyn Backend>)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let flags = session.flags();
    let (rd, wr) = tokio::io::split(io);
    let (frames, frames_rx) = mpsc::channel::<Frame>(32);
    let writer = tokio::spawn(write_frames(wr, frames_rx));
    let (ready_tx, ready_rx) = oneshot::channel();
    let (stdin_tx, stdin_rx) = mpsc::channel::<Vec<u8>>(8);
    let (resize_tx, resize_rx) = mpsc::channel::<TermSize>(4);
    let reader_state = ReaderState {
        frames: frames.clone(),
        flags,
        protocol,
        streams: Streams::default(),
        kinds: Vec::new(),
        ready: Some(ready_tx),
        stdin: flags.stdin.then_some(stdin_tx),
        resize: Some(resize_tx),
        resize_buf: Vec::new(),
    };
    let mut reader = tokio::spawn(read_frames(rd, reader_state));

    let streams = tokio::select! {
        r = ready_rx => match r {
            Ok(s) => s,
            Err(_) => return, // the client left before opening its streams
        },
        () = tokio::time::sleep(STREAM_CREATION_TIMEOUT) => {
            tracing::warn!("streaming client did not open its streams in time");
            reader.abort();
            return;
        }
    };

    let forward = |id: Option<u32>| {
        id.map(|id| {
            let (tx, mut rx) = mpsc::channel::<Vec<u8>>(8);
            let frames = frames.clone();
            let task = tokio::spawn(async move {
                while let Some(data) = rx.recv().await {
                    for chunk in data.chunks(MAX_DATA_CHUNK) {
                        let f = Frame::Data { stream_id: id, flags: 0, data: chunk.to_vec() };
                        if frames.send(f).await.is_err() {
                            return;
                        }
                    }
                }
            });
            (tx, task)
        })
    };
    let (stdout, out_task) = forward(streams.stdout).unzip();
    let (stderr, err_task) = forward(streams.stderr).unzip();
    let io = Stdio {
        stdin: streams.stdin.map(|_| stdin_rx),
        stdout,
        stderr,
        resize: streams.resize.map(|_| resize_rx),
    };
    let what = session.describe();
    let outcome = tokio::select! {
        o = session.run(&*backend, io) => o,
        _ = &mut reader => {
            // Dropping the session's future stops the process (the backend's duty).
            tracing::info!("streaming client disconnected before the process ended");
            writer.abort();
            return;
        }
    };
    for task in [out_task, err_task].into_iter().flatten() {
        let _ = task.await;
    }
    for id in [streams.stdout, streams.stderr].into_iter().flatten() {
        let _ = frames.send(Frame::Data { stream_id: id, flags: FLAG_FIN, data: vec![] }).await;
    }
    if let Some(id) = streams.error {
        if let Some(msg) = status_message(protocol, &what, &outcome) {
            let _ = frames.send(Frame::Data { stream_id: id, flags: 0, data: msg }).await;
        }
        let _ = frames.send(Frame::Data { stream_id: id, flags: FLAG_FIN, data: vec![] }).await;
    }
    drop(frames);
    // The client closes the connection once it has the status; a client that does not is cut
    // off (closing while it still sends could reset the connection before it read the status).
    if tokio::time::timeout(CLOSE_TIMEOUT, &mut reader).await.is_err() {
        reader.abort();
    }
    let _ = writer.await;
}

async fn write_frames<W: AsyncWrite>(wr: W, mut frames: mpsc::Receiver<Frame>) {
    let mut wr = std::pin::pin!(wr);
    let mut enc = Encoder::new();
    let mut buf = Vec::new();
    while let Some(f) = frames.recv().await {
        buf.clear();
        if let Err(e) = enc.encode(&f, &mut buf) {
            tracing::warn!(error = %e, "cannot encode a SPDY frame");
            continue;
        }
        // Batch what is already queued into one write.
        while let Ok(f) = frames.try_recv() {
            if enc.encode(&f, &mut buf).is_err() || buf.len() > 256 << 10 {
                break;
            }
        }
        if wr.write_all(&buf).await.is_err() {
            return;
        }
    }
    let _ = wr.flush().await;
    let _ = wr.shutdown().await;
}

struct ReaderState {
    frames: mpsc::Sender<Frame>,
    flags: Flags,
    protocol: Protocol,
    streams: Streams,
    kinds: Vec<(u32, Kind)>,
    ready: Option<oneshot::Sender<Streams>>,
    stdin: Option<mpsc::Sender<Vec<u8>>>,
    resize: Option<mpsc::Sender<TermSize>>,
    resize_buf: Vec<u8>,
}

/// Reads the client's frames until the connection ends (EOF, GOAWAY or a protocol error).
async fn read_frames<R: AsyncRead>(rd: R, mut st: ReaderState) {
    let mut rd = std::pin::pin!(rd);
    let mut dec = Decoder::new();
    let mut buf = Vec::new();
    let mut scratch = vec![0u8; 64 << 10];
    loop {
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(f)) => {
                    if !st.handle(f).await {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "streaming client broke the SPDY protocol");
                    return;
                }
            }
        }
        match rd.read(&mut scratch).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&scratch[..n]),
        }
    }
}

impl ReaderState {
    /// Handles one frame; false when the connection is over.
    async fn handle(&mut self, f: Frame) -> bool {
        match f {
            Frame::SynStream { stream_id, .. } => {
                let kind = f.header("streamtype").and_then(Kind::of);
                let slot = kind.map(|k| self.streams.slot(k));
                match (kind, slot) {
                    (Some(k), Some(slot)) if slot.is_none() => {
                        *slot = Some(stream_id);
                        self.kinds.push((stream_id, k));
                        let reply = Frame::SynReply { stream_id, flags: 0, headers: vec![] };
                        if self.frames.send(reply).await.is_err() {
                            return false;
                        }
                    }
                    _ => {
                        tracing::warn!(?kind, stream_id, "unexpected or repeated SPDY stream");
                        let rst = Frame::RstStream { stream_id, status: RST_PROTOCOL_ERROR };
                        let _ = self.frames.send(rst).await;
                        return true;
                    }
                }
                if self.streams.complete(self.flags, self.protocol) {
                    if let Some(tx) = self.ready.take() {
                        let _ = tx.send(self.streams);
                    }
                }
            }
            Frame::Data { stream_id, flags, data } => {
                let kind = self.kinds.iter().find(|(id, _)| *id == stream_id).map(|(_, k)| *k);
                let fin = flags & FLAG_FIN != 0;
                match kind {
                    Some(Kind::Stdin) => {
                        if let Some(tx) = &self.stdin {
                            if !data.is_empty() && tx.send(data).await.is_err() {
                                self.stdin = None;
                            }
                        }
                        if fin {
                            self.stdin = None; // EOF for the process
                        }
                    }
                    Some(Kind::Resize) => {
                        self.resize_data(&data);
                        if fin {
                            self.resize = None;
                        }
                    }
                    _ => {}
                }
            }
            Frame::RstStream { stream_id, .. } if Some(stream_id) == self.streams.stdin => {
                self.stdin = None;
            }
            Frame::Ping { id } => {
                if self.frames.send(Frame::Ping { id }).await.is_err() {
                    return false;
                }
            }
            Frame::GoAway { .. } => return false,
            _ => {}
        }
        true
    }

    /// Resize events: JSON objects, one per line (Go's json.Encoder).
    fn resize_data(&mut self, data: &[u8]) {
        self.resize_buf.extend_from_slice(data);
        while let Some(nl) = self.resize_buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.resize_buf.drain(..=nl).collect();
            match serde_json::from_slice::<TermSize>(&line) {
                Ok(size) => {
                    if let Some(tx) = &self.resize {
                        // A burst of resizes may drop some: the last one counts.
                        let _ = tx.try_send(size);
                    }
                }
                Err(e) => tracing::debug!(error = %e, "bad terminal size from the client"),
            }
        }
        if self.resize_buf.len() > MAX_RESIZE_LINE {
            self.resize_buf.clear();
        }
    }
}

#[cfg(test)]
mod tests;
