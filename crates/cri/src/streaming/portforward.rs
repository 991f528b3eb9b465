//! Port forwarding over SPDY (`portforward.k8s.io`), as kubelet serves client-go's port
//! forwarder (crictl `port-forward`; over WebSocket the same SPDY connection is tunneled:
//! see [`super::websocket::WsBytes`]). For each forwarded connection the client opens an
//! `error` stream, then a `data` stream, both with the `port` and `requestID` headers; the
//! server replies to each, and once the pair is there connects to the port in the pod
//! ([`Backend::port_forward`]). Bytes on the data stream go to the pod's connection and back;
//! the client's FIN on the data stream shuts down the connection's write side; the pod's EOF is
//! a FIN on the data stream and closes the error stream (nothing written: no error). A failure
//! is written as text on the error stream. A client's RST of the data stream (which it sends
//! once it read to EOF) drops the connection; so does the client's disconnect, for all of them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;

use super::remotecommand::{CLOSE_TIMEOUT, MAX_DATA_CHUNK, STREAM_CREATION_TIMEOUT};
use super::spdy::{Frame, FLAG_FIN, RST_CANCEL, RST_PROTOCOL_ERROR, RST_REFUSED_STREAM};
use super::spdyio::{spawn_writer, FrameReader};
use super::Backend;

/// The SPDY sub-protocol (`X-Stream-Protocol-Version`).
pub const PROTOCOL: &str = "portforward.k8s.io";
/// The WebSocket sub-protocol of client-go's SPDY-over-WebSocket tunnel.
pub const TUNNEL_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";
/// Forwarded connections (complete or waiting for their second stream) at once on one client
/// connection; more are refused.
pub const MAX_REQUESTS: usize = 256;
/// Chunks of client data queued for one pod connection at most (the client waits beyond).
const TO_POD_QUEUE: usize = 8;
/// How often requests waiting for their second stream are checked for the timeout.
const SWEEP: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Error,
    Data,
}

/// One forwarded connection.
struct Request {
    port: u16,
    error: Option<u32>,
    data: Option<u32>,
    since: Instant,
    /// Client bytes for the pod; `None` once the client closed its side.
    to_pod: Option<mpsc::Sender<Vec<u8>>>,
    /// The other end, until the forwarding starts.
    from_client: Option<mpsc::Receiver<Vec<u8>>>,
    task: Option<AbortHandle>,
    /// Whether the error stream was closed (by the forwarding or here).
    error_closed: Arc<AtomicBool>,
}

/// A SPDY stream's headers that port forwarding does not accept.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    #[error("the \"port\" header is required")]
    NoPort,
    #[error("{0:?} is not a port")]
    BadPort(String),
    #[error("the \"streamType\" header is required")]
    NoType,
    #[error("invalid stream type {0:?}")]
    BadType(String),
}

/// The (request ID, kind, port) of a stream the client opens.
fn parse_stream(f: &Frame, stream_id: u32) -> Result<(String, Kind, u16), StreamError> {
    let port = f.header("port").ok_or(StreamError::NoPort)?;
    let port = match port.parse::<u16>() {
        Ok(p) if p > 0 => p,
        _ => return Err(StreamError::BadPort(port.to_string())),
    };
    let kind = match f.header("streamtype") {
        None => return Err(StreamError::NoType),
        Some("error") => Kind::Error,
        Some("data") => Kind::Data,
        Some(t) => return Err(StreamError::BadType(t.to_string())),
    };
    // Clients older than the requestID header open error then data with consecutive IDs.
    let request = match (f.header("requestid"), kind) {
        (Some(r), _) if !r.is_empty() => r.to_string(),
        (_, Kind::Error) => stream_id.to_string(),
        (_, Kind::Data) => stream_id.wrapping_sub(2).to_string(),
    };
    Ok((request, kind, port))
}

/// Serves one upgraded port-forward connection to the pod `pod` until the client leaves; then
/// every forwarded connection is dropped.
pub async fn serve_spdy<IO>(io: IO, pod: String, backend: Arc<dyn Backend>)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (rd, wr) = tokio::io::split(io);
    let (frames, writer) = spawn_writer(wr);
    let mut reader = FrameReader::new(rd);
    let mut conn = Conn {
        frames,
        pod: pod.into(),
        backend,
        streams: HashMap::new(),
        requests: HashMap::new(),
        tasks: JoinSet::new(),
    };
    let mut sweep = tokio::time::interval(SWEEP);
    loop {
        tokio::select! {
            f = reader.next() => match f {
                Ok(Some(f)) => {
                    if !conn.handle(f).await {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "port-forward client broke the SPDY protocol");
                    break;
                }
            },
            Some(done) = conn.tasks.join_next(), if !conn.tasks.is_empty() => {
                if let Ok(request) = done {
                    conn.forget(&request);
                }
            }
            _ = sweep.tick() => conn.expire().await,
        }
    }
    // Dropping the JoinSet aborts every forwarding, which drops its pod connection; the
    // writer ends once it wrote what is queued (or the client does not take it in time).
    drop(conn);
    let abort = writer.abort_handle();
    if tokio::time::timeout(CLOSE_TIMEOUT, writer).await.is_err() {
        abort.abort();
    }
}

struct Conn {
    frames: mpsc::Sender<Frame>,
    pod: Arc<str>,
    backend: Arc<dyn Backend>,
    streams: HashMap<u32, (String, Kind)>,
    requests: HashMap<String, Request>,
    tasks: JoinSet<String>,
}

impl Conn {
    async fn send(&self, f: Frame) -> bool {
        self.frames.send(f).await.is_ok()
    }

    async fn reset(&self, stream_id: u32, status: u32) -> bool {
        self.send(Frame::RstStream { stream_id, status }).await
    }

    /// Handles one frame; false when the connection is over.
    async fn handle(&mut self, f: Frame) -> bool {
        match f {
            Frame::SynStream { stream_id, .. } => self.open(&f, stream_id).await,
            Frame::Data { stream_id, flags, data } => self.data(stream_id, flags, data).await,
            Frame::RstStream { stream_id, .. } => {
                if let Some((request, _)) = self.streams.get(&stream_id).cloned() {
                    tracing::debug!(%request, stream_id, "port-forward stream reset by the client");
                    self.close_error(&request).await;
                    self.forget(&request);
                }
                true
            }
            Frame::Ping { id } => self.send(Frame::Ping { id }).await,
            Frame::GoAway { .. } => false,
            _ => true,
        }
    }

    async fn open(&mut self, f: &Frame, stream_id: u32) -> bool {
        if self.streams.contains_key(&stream_id) {
            tracing::warn!(stream_id, "port-forward client reopened a stream");
            return self.reset(stream_id, RST_PROTOCOL_ERROR).await;
        }
        let (request, kind, port) = match parse_stream(f, stream_id) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(stream_id, error = %e, "port-forward stream refused");
                return self.reset(stream_id, RST_PROTOCOL_ERROR).await;
            }
        };
        if !self.requests.contains_key(&request) && self.requests.len() >= MAX_REQUESTS {
            tracing::warn!(stream_id, "{MAX_REQUESTS} forwarded connections at once: refused");
            return self.reset(stream_id, RST_REFUSED_STREAM).await;
        }
        let r = self.requests.entry(request.clone()).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(TO_POD_QUEUE);
            Request {
                port,
                error: None,
                data: None,
                since: Instant::now(),
                to_pod: Some(tx),
                from_client: Some(rx),
                task: None,
                error_closed: Arc::new(AtomicBool::new(false)),
            }
        });
        let slot = match kind {
            Kind::Error => &mut r.error,
            Kind::Data => &mut r.data,
        };
        if slot.is_some() {
            tracing::warn!(
                %request,
                stream_id,
                ?kind,
                "port-forward stream of a kind already there"
            );
            return self.reset(stream_id, RST_PROTOCOL_ERROR).await;
        }
        *slot = Some(stream_id);
        if kind == Kind::Data {
            r.port = port; // the data stream's port counts (as kubelet)
        }
        self.streams.insert(stream_id, (request.clone(), kind));
        if !self.send(Frame::SynReply { stream_id, flags: 0, headers: vec![] }).await {
            return false;
        }
        self.start(&request);
        true
    }

    /// Starts forwarding once a request has both streams.
    fn start(&mut self, request: &str) {
        let Some(r) = self.requests.get_mut(request) else { return };
        let (Some(error), Some(data)) = (r.error, r.data) else { return };
        let Some(from_client) = r.from_client.take() else { return };
        let f = Forward {
            request: request.to_string(),
            pod: self.pod.clone(),
            port: r.port,
            error,
            data,
            from_client,
            error_closed: r.error_closed.clone(),
            frames: self.frames.clone(),
        };
        r.task = Some(self.tasks.spawn(f.run(self.backend.clone())));
    }

    async fn data(&mut self, stream_id: u32, flags: u8, data: Vec<u8>) -> bool {
        let Some((request, Kind::Data)) = self.streams.get(&stream_id).cloned() else {
            return true; // the error stream carries nothing from the client
        };
        let Some(r) = self.requests.get_mut(&request) else { return true };
        if let Some(tx) = &r.to_pod {
            if data.is_empty() {
            } else if r.task.is_some() {
                // Waits while the pod's connection does not take it: backpressure.
                if tx.send(data).await.is_err() {
                    r.to_pod = None;
                }
            } else if tx.try_send(data).is_err() {
                // Data before the error stream, more than queued: not how clients behave.
                tracing::warn!(%request, "port-forward data before its error stream");
                let error = r.error;
                self.forget(&request);
                for id in [Some(stream_id), error].into_iter().flatten() {
                    self.reset(id, RST_PROTOCOL_ERROR).await;
                }
                return true;
            }
        }
        if flags & FLAG_FIN != 0 {
            if let Some(r) = self.requests.get_mut(&request) {
                r.to_pod = None; // the pod's connection gets a write shutdown
            }
        }
        true
    }

    /// Closes a request's error stream unless that was done.
    async fn close_error(&self, request: &str) {
        let Some(r) = self.requests.get(request) else { return };
        if let Some(id) = r.error {
            if !r.error_closed.swap(true, Ordering::SeqCst) {
                self.send(Frame::Data { stream_id: id, flags: FLAG_FIN, data: vec![] }).await;
            }
        }
    }

    /// Drops a request: its forwarding stops, its streams are unknown from now on.
    fn forget(&mut self, request: &str) {
        if let Some(r) = self.requests.remove(request) {
            if let Some(t) = r.task {
                t.abort();
            }
            for id in [r.error, r.data].into_iter().flatten() {
                self.streams.remove(&id);
            }
        }
    }

    /// Requests still without their second stream after [`STREAM_CREATION_TIMEOUT`].
    async fn expire(&mut self) {
        let late: Vec<String> = self
            .requests
            .iter()
            .filter(|(_, r)| r.task.is_none() && r.since.elapsed() >= STREAM_CREATION_TIMEOUT)
            .map(|(k, _)| k.clone())
            .collect();
        for request in late {
            tracing::warn!(%request, "port-forward request timed out waiting for its streams");
            let Some(r) = self.requests.get(&request) else { continue };
            let (error, data) = (r.error, r.data);
            if let Some(id) = error {
                let msg = format!("timed out waiting for the streams of request {request}");
                self.send(Frame::Data { stream_id: id, flags: 0, data: msg.into_bytes() }).await;
                self.close_error(&request).await;
            }
            if let Some(id) = data {
                self.reset(id, RST_CANCEL).await;
            }
            self.forget(&request);
        }
    }
}

/// The forwarding of one request, on its own task.
struct Forward {
    request: String,
    pod: Arc<str>,
    port: u16,
    error: u32,
    data: u32,
    from_client: mpsc::Receiver<Vec<u8>>,
    error_closed: Arc<AtomicBool>,
    frames: mpsc::Sender<Frame>,
}

impl Forward {
    async fn close_error(&self) {
        if !self.error_closed.swap(true, Ordering::SeqCst) {
            let fin = Frame::Data { stream_id: self.error, flags: FLAG_FIN, data: vec![] };
            let _ = self.frames.send(fin).await;
        }
    }

    /// Returns the request's ID when done.
    async fn run(mut self, backend: Arc<dyn Backend>) -> String {
        let stream = match backend.port_forward(&self.pod, self.port).await {
            Ok(s) => s,
            Err(msg) => {
                let text =
                    format!("error forwarding port {} to pod {}: {msg}", self.port, self.pod);
                tracing::info!(request = %self.request, "{text}");
                let _ = self
                    .frames
                    .send(Frame::Data { stream_id: self.error, flags: 0, data: text.into() })
                    .await;
                self.close_error().await;
                let rst = Frame::RstStream { stream_id: self.data, status: RST_CANCEL };
                let _ = self.frames.send(rst).await;
                return self.request;
            }
        };
        let (mut rd, mut wr) = tokio::io::split(stream);
        let mut from_client = std::mem::replace(&mut self.from_client, mpsc::channel(1).1);
        let up = async move {
            while let Some(d) = from_client.recv().await {
                if wr.write_all(&d).await.is_err() {
                    return; // dropping the receiver discards what the client still sends
                }
            }
            let _ = wr.shutdown().await;
        };
        let down = async {
            let mut buf = vec![0u8; MAX_DATA_CHUNK];
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => {
                        let f =
                            Frame::Data { stream_id: self.data, flags: 0, data: buf[..n].to_vec() };
                        if self.frames.send(f).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::debug!(
                            request = %self.request,
                            error = %e,
                            "reading the pod's connection"
                        );
                        break;
                    }
                }
            }
            let fin = Frame::Data { stream_id: self.data, flags: FLAG_FIN, data: vec![] };
            let _ = self.frames.send(fin).await;
            self.close_error().await;
        };
        tokio::join!(up, down);
        self.request
    }
}

#[cfg(test)]
mod tests;
