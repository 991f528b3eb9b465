//! Remote command over WebSocket, as kubelet's wsstream serves it to client-go's WebSocket
//! executor (crictl `--transport websocket` offers only `v5.channel.k8s.io`). Every message
//! starts with its channel: 0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize (JSON terminal
//! sizes); the rest is the data (in the `base64.` variants: text, the channel as an ASCII
//! digit and the data in base64). v5 adds the close signal: a message `[255, channel]` from
//! the client half-closes that channel (stdin: EOF for the process). The channels are those
//! the request asked for; the server first sends an empty message on the lowest one it
//! writes (as kubelet), and at the end the status on the error channel, then a normal close
//! (the client reads its streams until then).

use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::protocol::{status_message, Protocol, Session, CLOSE_TIMEOUT};
use super::session::{self, Channel, Input, Want};
use crate::streaming::websocket::close;
use crate::streaming::Backend;

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const ERROR: u8 = 3;
pub const RESIZE: u8 = 4;
/// v5's close signal: `[CLOSE, channel]`.
pub const CLOSE: u8 = 255;

/// Messages queued for the writer at most.
const QUEUE: usize = 32;

/// The remote command WebSocket sub-protocols.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsProtocol {
    V5,
    V4,
    V4Base64,
    /// `channel.k8s.io`, also what a client offering no sub-protocol gets.
    V1,
    V1Base64,
}

impl WsProtocol {
    /// Every one served, newest first.
    pub const ALL: &[WsProtocol] = &[
        WsProtocol::V5,
        WsProtocol::V4,
        WsProtocol::V4Base64,
        WsProtocol::V1,
        WsProtocol::V1Base64,
    ];

    pub fn name(self) -> &'static str {
        match self {
            WsProtocol::V5 => "v5.channel.k8s.io",
            WsProtocol::V4 => "v4.channel.k8s.io",
            WsProtocol::V4Base64 => "v4.base64.channel.k8s.io",
            WsProtocol::V1 => "channel.k8s.io",
            WsProtocol::V1Base64 => "base64.channel.k8s.io",
        }
    }

    /// The first of the client's offers (in its order) that is served.
    pub fn negotiate<'a>(offered: impl IntoIterator<Item = &'a str>) -> Option<WsProtocol> {
        offered.into_iter().find_map(|o| Self::ALL.iter().copied().find(|p| p.name() == o))
    }

    fn base64(self) -> bool {
        matches!(self, WsProtocol::V4Base64 | WsProtocol::V1Base64)
    }

    /// How the exit status is written (v4 and later: metav1.Status; before: text).
    fn status(self) -> Protocol {
        match self {
            WsProtocol::V5 | WsProtocol::V4 | WsProtocol::V4Base64 => Protocol::V4,
            WsProtocol::V1 | WsProtocol::V1Base64 => Protocol::V3,
        }
    }
}

/// A message on `channel` in `protocol`'s encoding.
pub fn encode(protocol: WsProtocol, channel: u8, data: &[u8]) -> Message {
    if protocol.base64() {
        let mut text = String::with_capacity(1 + data.len().div_ceil(3) * 4);
        text.push(char::from(b'0' + channel));
        base64::engine::general_purpose::STANDARD.encode_string(data, &mut text);
        Message::text(text)
    } else {
        let mut b = Vec::with_capacity(1 + data.len());
        b.push(channel);
        b.extend_from_slice(data);
        Message::Binary(b.into())
    }
}

/// What a client's message is.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    Data(u8, Vec<u8>),
    /// v5: the client closed its side of a channel.
    Close(u8),
    /// Nothing to do (empty, ping, pong).
    Nothing,
    /// The client closed the connection.
    End,
}

/// A message the protocol does not allow.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum WsProtocolError {
    #[error("the close signal must name exactly one channel (got {0} bytes)")]
    CloseSignal(usize),
    #[error("base64 data on channel {0} is not valid: {1}")]
    Base64(u8, String),
    #[error("channel {0:?} is not a digit")]
    Channel(char),
}

/// Decodes one message of the client.
pub fn decode(protocol: WsProtocol, m: Message) -> Result<Incoming, WsProtocolError> {
    let bytes: Bytes = match m {
        Message::Binary(b) => b,
        Message::Text(t) => Bytes::from(t),
        Message::Close(_) => return Ok(Incoming::End),
        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => return Ok(Incoming::Nothing),
    };
    let Some((&first, rest)) = bytes.split_first() else { return Ok(Incoming::Nothing) };
    if protocol == WsProtocol::V5 && first == CLOSE {
        return match rest {
            [channel] => Ok(Incoming::Close(*channel)),
            _ => Err(WsProtocolError::CloseSignal(rest.len())),
        };
    }
    if protocol.base64() {
        let channel = first.checked_sub(b'0').filter(|c| *c <= 9);
        let channel = channel.ok_or(WsProtocolError::Channel(char::from(first)))?;
        let data = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .map_err(|e| WsProtocolError::Base64(channel, e.to_string()))?;
        return Ok(Incoming::Data(channel, data));
    }
    Ok(Incoming::Data(first, rest.to_vec()))
}

/// Serves one WebSocket connection to its end.
pub async fn serve_ws<S>(
    ws: WebSocketStream<S>,
    protocol: WsProtocol,
    session: Session,
    backend: Arc<dyn Backend>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let flags = session.flags();
    let want = Want {
        stdin: flags.stdin,
        stdout: flags.stdout,
        stderr: flags.stderr && !flags.tty,
        resize: flags.tty,
    };
    let (sink, stream) = ws.split();
    let (out, rx) = mpsc::channel::<Message>(QUEUE);
    let writer = tokio::spawn(write_messages(sink, rx));
    let (input, process) = session::pipes(want);
    let mut reader = tokio::spawn(read_messages(stream, protocol, input, out.clone()));

    // Tells the client the streams are there (as kubelet does).
    let first = if want.stdout {
        STDOUT
    } else if want.stderr {
        STDERR
    } else {
        ERROR
    };
    let _ = out.send(encode(protocol, first, &[])).await;

    let what = session.describe();
    let wrap = |c: Channel, data: Vec<u8>| {
        encode(protocol, if c == Channel::Stdout { STDOUT } else { STDERR }, &data)
    };
    let gone = async {
        let _ = (&mut reader).await;
    };
    let Some(outcome) = process.run(session, &*backend, &out, wrap, gone).await else {
        tracing::info!("streaming client disconnected before the process ended");
        reader.abort();
        drop(out);
        let _ = writer.await;
        return;
    };
    if let Some(msg) = status_message(protocol.status(), &what, &outcome) {
        let _ = out.send(encode(protocol, ERROR, &msg)).await;
    }
    let _ = out.send(close(CloseCode::Normal, "")).await;
    drop(out);
    // The client answers the close; one that does not is cut off.
    if tokio::time::timeout(CLOSE_TIMEOUT, &mut reader).await.is_err() {
        reader.abort();
    }
    let _ = writer.await;
}

type Sink<S> = SplitSink<WebSocketStream<S>, Message>;

async fn write_messages<S>(mut sink: Sink<S>, mut rx: mpsc::Receiver<Message>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    while let Some(m) = rx.recv().await {
        if sink.feed(m).await.is_err() {
            return;
        }
        while let Ok(m) = rx.try_recv() {
            if sink.feed(m).await.is_err() {
                return;
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
}

/// Reads the client's messages until it closes (or breaks the protocol: then the connection is
/// closed with a protocol error).
async fn read_messages<S>(
    mut stream: SplitStream<WebSocketStream<S>>,
    protocol: WsProtocol,
    mut input: Input,
    out: mpsc::Sender<Message>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    while let Some(m) = stream.next().await {
        let m = match m {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(error = %e, "streaming WebSocket read failed");
                return;
            }
        };
        match decode(protocol, m) {
            Ok(Incoming::Data(STDIN, data)) => input.stdin(data).await,
            Ok(Incoming::Data(RESIZE, data)) => input.resize(&data),
            Ok(Incoming::Data(channel, _)) => {
                tracing::debug!(channel, "data on a channel the client does not write: ignored")
            }
            Ok(Incoming::Close(STDIN)) => input.close_stdin(),
            Ok(Incoming::Close(RESIZE)) => input.close_resize(),
            Ok(Incoming::Close(_) | Incoming::Nothing) => {}
            Ok(Incoming::End) => {}
            Err(e) => {
                tracing::warn!(error = %e, "streaming client broke the WebSocket channel protocol");
                let _ = out.send(close(CloseCode::Protocol, &e.to_string())).await;
                return;
            }
        }
    }
}
