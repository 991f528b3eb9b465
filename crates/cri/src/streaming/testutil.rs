//! Test helpers: a backend that runs a few fake commands, and a SPDY client speaking as
//! client-go does.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use k8s_cri::v1 as cri;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::spdy::{Decoder, Encoder, Frame, FLAG_FIN};
use super::{Backend, Outcome, PortStream, Stdio};

/// Commands: `cat` (stdin to stdout), `exit N` (writes "out"/"err", exits N), `hang` (never
/// ends; counts its drops), `resize` (writes the first size it gets as "WxH").
#[derive(Default)]
pub struct FakeBackend {
    pub dropped: Arc<AtomicUsize>,
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
    /// Port 7 echoes what it gets (until the client's FIN, then closes); any other port is
    /// refused.
    async fn port_forward(&self, _pod: &str, port: u16) -> Result<Box<dyn PortStream>, String> {
        if port != 7 {
            return Err(format!("connection refused: nothing listens on port {port}"));
        }
        let (ours, theirs) = tokio::io::duplex(64 << 10);
        tokio::spawn(async move {
            let (mut r, mut w) = tokio::io::split(theirs);
            let _ = tokio::io::copy(&mut r, &mut w).await;
            let _ = w.shutdown().await;
        });
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
    enc: Encoder,
    dec: Decoder,
    buf: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> SpdyClient<S> {
    pub fn new(io: S, already_read: Vec<u8>) -> Self {
        SpdyClient { io, enc: Encoder::new(), dec: Decoder::new(), buf: already_read }
    }

    pub async fn send(&mut self, f: Frame) {
        let mut out = Vec::new();
        self.enc.encode(&f, &mut out).unwrap();
        self.io.write_all(&out).await.unwrap();
    }

    pub async fn open(&mut self, id: u32, kind: &str) {
        let headers = vec![("streamtype".to_string(), kind.to_string())];
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
            let n = tokio::time::timeout(Duration::from_secs(10), self.io.read(&mut scratch))
                .await
                .expect("server silent for 10 s")
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
