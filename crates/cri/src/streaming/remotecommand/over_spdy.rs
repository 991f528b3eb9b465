//! Remote command over SPDY: the client opens one SPDY stream per `streamType` (error, stdin,
//! stdout, stderr, resize), the server replies to each, and once every stream the request
//! asked for is there the process runs. stdin data goes to the process (the client's FIN =
//! EOF), its output comes back as data on stdout/stderr, each closed (FIN) at the end, then the
//! exit status is written on the error stream and the error stream is closed.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};

use super::protocol::{
    status_message, Flags, Protocol, Session, CLOSE_TIMEOUT, STREAM_CREATION_TIMEOUT,
};
use super::session::{self, Channel, Input, Want};
use crate::streaming::spdy::{Frame, FLAG_FIN, RST_PROTOCOL_ERROR};
use crate::streaming::spdyio::{spawn_writer, FrameReader};
use crate::streaming::Backend;

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
    let (frames, writer) = spawn_writer(wr);
    let (ready_tx, ready_rx) = oneshot::channel();
    // Every stream the client may open; those it does not stay unused.
    let (input, process) = session::pipes(Want {
        stdin: flags.stdin,
        stdout: flags.stdout,
        stderr: flags.stderr && !flags.tty,
        resize: flags.tty,
    });
    let reader_state = ReaderState {
        frames: frames.clone(),
        flags,
        protocol,
        streams: Streams::default(),
        kinds: Vec::new(),
        ready: Some(ready_tx),
        input,
    };
    let mut reader = tokio::spawn(read_frames(FrameReader::new(rd), reader_state));

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

    let what = session.describe();
    let wrap = |c: Channel, data: Vec<u8>| {
        let id = match c {
            Channel::Stdout => streams.stdout,
            Channel::Stderr => streams.stderr,
        };
        // A stream asked for is open: `complete` checked it.
        Frame::Data { stream_id: id.unwrap_or(0), flags: 0, data }
    };
    let gone = async {
        let _ = (&mut reader).await;
    };
    let Some(outcome) = process.run(session, &*backend, &frames, wrap, gone).await else {
        // Dropping the session's future stopped the process (the backend's duty).
        tracing::info!("streaming client disconnected before the process ended");
        reader.abort();
        writer.abort();
        return;
    };
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

struct ReaderState {
    frames: mpsc::Sender<Frame>,
    flags: Flags,
    protocol: Protocol,
    streams: Streams,
    kinds: Vec<(u32, Kind)>,
    ready: Option<oneshot::Sender<Streams>>,
    input: Input,
}

/// Reads the client's frames until the connection ends (EOF, GOAWAY or a protocol error).
async fn read_frames<R: AsyncRead + Unpin>(mut rd: FrameReader<R>, mut st: ReaderState) {
    loop {
        match rd.next().await {
            Ok(Some(f)) => {
                if !st.handle(f).await {
                    return;
                }
            }
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "streaming client broke the SPDY protocol");
                return;
            }
        }
    }
}

impl ReaderState {
    /// Handles one frame; false when the connection is over.
    async fn handle(&mut self, f: Frame) -> bool {
        match f {
            Frame::SynStream { stream_id, .. } => {
                let kind = f.header("streamtype").and_then(Kind::of);
                let known = self.kinds.iter().any(|(id, _)| *id == stream_id);
                let slot = kind.map(|k| self.streams.slot(k));
                match (kind, slot) {
                    (Some(k), Some(slot)) if slot.is_none() && !known => {
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
                        self.input.stdin(data).await;
                        if fin {
                            self.input.close_stdin();
                        }
                    }
                    Some(Kind::Resize) => {
                        self.input.resize(&data);
                        if fin {
                            self.input.close_resize();
                        }
                    }
                    _ => {}
                }
            }
            Frame::RstStream { stream_id, .. } if Some(stream_id) == self.streams.stdin => {
                self.input.close_stdin();
            }
            Frame::Ping { id } if self.frames.send(Frame::Ping { id }).await.is_err() => {
                return false;
            }
            Frame::GoAway { .. } => return false,
            _ => {}
        }
        true
    }
}
