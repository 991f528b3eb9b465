//! Test helpers: a backend that runs a few fake commands and serves a few fake ports, a SPDY
//! client speaking as client-go does, and a WebSocket client (tungstenite's).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use k8s_cri::v1 as cri;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::spdy::{Decoder, Encoder, Frame, FLAG_FIN};
use super::{Backend, Outcome, PortStream, Stdio};

/// Commands: `cat` (stdin to stdout), `exit N` (writes "out"/"err", exits N), `hang` (never
/// ends; counts its drops), `resize` (writes the first size it gets as "WxH"), `big N` (writes
/// N bytes of stdout in one chunk), `flood` (writes stdout without end).
/// Ports: 7 echoes (until the client's FIN, then closes), 9 reads until its connection ends
/// (then counts it in `pf_closed`), 10 writes without end (counting in `written`, as `flood`
/// counts what it writes to stdout); any other port is refused.
#[derive(Default)]
pub struct FakeBackend {
    pub dropped: Arc<AtomicUsize>,
    pub pf_closed: Arc<AtomicUsize>,
    pub written: Arc<AtomicUsize>,
}

struct CountDrop(Arc<AtomicUsize>);
impl Drop for CountDrop {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl FakeBackend {
    async fn run(&self, cmd: &[String], mut io: Stdio) -> Outcome {
        match cmd.first().map(String::as_str) {
            Some("cat") => {
                let (Some(mut stdin), Some(stdout)) = (io.stdin.take(), io.stdout.take()) else {
                    return Outcome::Failed("cat needs stdin and stdout".into());
                };
                while let Some(data) = stdin.recv().await {
                    if stdout.send(data).await.is_err() {
                        return Outcome::Failed("stdout gone".into());
                    }
                }
                Outcome::Exited(0)
            }
            Some("exit") => {
                if let Some(o) = &io.stdout {
                    let _ = o.send(b"out".to_vec()).await;
                }
                if let Some(e) = &io.stderr {
                    let _ = e.send(b"err".to_vec()).await;
                }
                Outcome::Exited(cmd.get(1).and_then(|c| c.parse().ok()).unwrap_or(1))
            }
            Some("hang") => {
                let _guard = CountDrop(self.dropped.clone());
                std::future::pending::<()>().await;
                Outcome::Exited(0)
            }
            Some("resize") => {
                let (Some(mut r), Some(o)) = (io.resize.take(), io.stdout.take()) else {
                    return Outcome::Failed("resize needs a tty".into());
                };
                match r.recv().await {
                    Some(s) => {
                        let _ = o.send(format!("{}x{}", s.width, s.height).into_bytes()).await;
                        Outcome::Exited(0)
                    }
                    None => Outcome::Failed("no size".into()),
                }
            }
            Some("flood") => {
                let Some(o) = io.stdout.take() else { return Outcome::Failed("no stdout".into()) };
                let chunk = vec![b'x'; 16 << 10];
                while o.send(chunk.clone()).await.is_ok() {
                    self.written.fetch_add(chunk.len(), Ordering::SeqCst);
                }
                Outcome::Failed("stdout gone".into())
            }
            Some("big") => {
                let n = cmd.get(1).and_then(|c| c.parse().ok()).unwrap_or(0);
                if let Some(o) = &io.stdout {
                    let _ = o.send((0..n).map(|i| (i % 251) as u8).collect()).await;
                }
                Outcome::Exited(0)
            }
            _ => Outcome::Failed(format!("no such command {cmd:?}")),
        }
    }
}

#[tonic::async_trait]
impl Backend for FakeBackend {
    async fn exec(&self, req: cri::ExecRequest, io: Stdio) -> Outcome {
        self.run(&req.cmd, io).await
    }
    async fn attach(&self, _req: cri::AttachRequest, io: Stdio) -> Outcome {
        self.run(&["cat".to_string()], io).await
    }
    async fn port_forward(&self, _pod: &str, port: u16) -> Result<Box<dyn PortStream>, String> {
        let (ours, theirs) = tokio::io::duplex(64 << 10);
        match port {
            7 => {
                tokio::spawn(async move {
                    let (mut r, mut w) = tokio::io::split(theirs);
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                });
            }
            9 => {
                let closed = self.pf_closed.clone();
                tokio::spawn(async move {
                    let mut theirs = theirs;
                    let mut b = [0u8; 4096];
                    while matches!(theirs.read(&mut b).await, Ok(n) if n > 0) {}
                    closed.fetch_add(1, Ordering::SeqCst);
                });
            }
            10 => {
                let written = self.written.clone();
                tokio::spawn(async move {
                    let mut theirs = theirs;
                    let chunk = vec![b'x'; 16 << 10];
                    while theirs.write_all(&chunk).await.is_ok() {
                        written.fetch_add(chunk.len(), Ordering::SeqCst);
                    }
                });
            }
            _ => return Err(format!("connection refused: nothing listens on port {port}")),
        }
        Ok(Box::new(ours))
    }
}

pub fn exec(cmd: &[&str], stdin: bool, stderr: bool, tty: bool) -> cri::ExecRequest {
    cri::ExecRequest {
        container_id: "c1".into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty,
        stdin,
        stdout: true,
        stderr,
    }
}

/// The client end of a SPDY connection.
pub struct SpdyClient<S> {
    pub io: S,
    /// How long `recv` waits for a frame before failing the test.
    pub patience: Duration,
    enc: Encoder,
    dec: Decoder,
    buf: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> SpdyClient<S> {
    pub fn new(io: S, already_read: Vec<u8>) -> Self {
        SpdyClient {
            io,
            patience: Duration::from_secs(10),
            enc: Encoder::new(),
            dec: Decoder::new(),
            buf: already_read,
        }
    }

    pub async fn send(&mut self, f: Frame) {
        let mut out = Vec::new();
        self.enc.encode(&f, &mut out).unwrap();
        self.io.write_all(&out).await.unwrap();
        self.io.flush().await.unwrap();
    }

    pub async fn open(&mut self, id: u32, kind: &str) {
        self.open_with(id, &[("streamtype", kind)]).await;
    }

    /// Opens a stream with these headers (as client-go: `streamType`, `port`, `requestID`).
    pub async fn open_with(&mut self, id: u32, headers: &[(&str, &str)]) {
        let headers = headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
        self.send(Frame::SynStream {
            stream_id: id,
            associated_to: 0,
            priority: 0,
            flags: 0,
            headers,
        })
        .await;
    }

    pub async fn data(&mut self, id: u32, data: &[u8], fin: bool) {
        let flags = if fin { FLAG_FIN } else { 0 };
        self.send(Frame::Data { stream_id: id, flags, data: data.to_vec() }).await;
    }

    /// The next frame, None at EOF.
    pub async fn recv(&mut self) -> Option<Frame> {
        let mut scratch = vec![0u8; 16 << 10];
        loop {
            if let Some(f) = self.dec.decode(&mut self.buf).unwrap() {
                return Some(f);
            }
            let n = tokio::time::timeout(self.patience, self.io.read(&mut scratch))
                .await
                .expect("server silent")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&scratch[..n]);
        }
    }

    /// Reads until the error stream's FIN: (data per stream id in order, FINs seen, replies).
    pub async fn until_status(&mut self, error_id: u32) -> Transcript {
        let mut t = Transcript::default();
        while let Some(f) = self.recv().await {
            match f {
                Frame::SynReply { stream_id, .. } => t.replies.push(stream_id),
                Frame::Data { stream_id, flags, data } => {
                    t.data.entry(stream_id).or_default().extend_from_slice(&data);
                    if flags & FLAG_FIN != 0 {
                        t.fins.push(stream_id);
                        if stream_id == error_id {
                            return t;
                        }
                    }
                }
                other => t.other.push(other),
            }
        }
        panic!("connection ended before the status: {t:?}");
    }
}

#[derive(Debug, Default)]
pub struct Transcript {
    pub replies: Vec<u32>,
    pub data: std::collections::BTreeMap<u32, Vec<u8>>,
    pub fins: Vec<u32>,
    pub other: Vec<Frame>,
}

impl Transcript {
    pub fn text(&self, id: u32) -> String {
        String::from_utf8_lossy(self.data.get(&id).map(Vec::as_slice).unwrap_or(b"")).into_owned()
    }
}

/// The client end of a WebSocket connection, with the channel protocol's framing.
pub struct WsClient<S> {
    pub ws: tokio_tungstenite::WebSocketStream<S>,
}

/// What a WebSocket client got until the server closed.
#[derive(Debug, Default)]
pub struct WsTranscript {
    /// Each message's channel and data, in order.
    pub messages: Vec<(u8, Vec<u8>)>,
    pub close: Option<tokio_tungstenite::tungstenite::protocol::CloseFrame>,
}

impl WsTranscript {
    pub fn text(&self, channel: u8) -> String {
        let b: Vec<u8> = self
            .messages
            .iter()
            .filter(|(c, _)| *c == channel)
            .flat_map(|(_, d)| d.iter().copied())
            .collect();
        String::from_utf8_lossy(&b).into_owned()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsClient<S> {
    /// A client on a connection whose handshake is done (or skipped).
    pub async fn raw(io: S) -> Self {
        use tokio_tungstenite::tungstenite::protocol::Role;
        WsClient {
            ws: tokio_tungstenite::WebSocketStream::from_raw_socket(io, Role::Client, None).await,
        }
    }

    pub async fn send(&mut self, m: tokio_tungstenite::tungstenite::Message) {
        use futures_util::SinkExt;
        self.ws.send(m).await.unwrap();
    }

    /// Data on a channel, as client-go writes it.
    pub async fn data(&mut self, channel: u8, data: &[u8]) {
        let mut b = vec![channel];
        b.extend_from_slice(data);
        self.send(tokio_tungstenite::tungstenite::Message::binary(b)).await;
    }

    /// The next message, None at the end.
    pub async fn recv(&mut self) -> Option<tokio_tungstenite::tungstenite::Message> {
        use futures_util::StreamExt;
        tokio::time::timeout(Duration::from_secs(10), self.ws.next())
            .await
            .expect("server silent for 10 s")
            .and_then(Result::ok)
    }

    /// Reads until the server's close frame (binary messages split into channel and data).
    pub async fn until_close(&mut self) -> WsTranscript {
        use tokio_tungstenite::tungstenite::Message;
        let mut t = WsTranscript::default();
        while let Some(m) = self.recv().await {
            match m {
                Message::Binary(b) => {
                    let (c, d) = b.split_first().expect("a message without a channel");
                    t.messages.push((*c, d.to_vec()));
                }
                Message::Text(s) => {
                    let (c, d) = s.as_bytes().split_first().expect("a message without a channel");
                    t.messages.push((*c, d.to_vec()));
                }
                Message::Close(c) => {
                    t.close = c;
                    return t;
                }
                _ => {}
            }
        }
        panic!("connection ended without a close frame: {t:?}");
    }
}
