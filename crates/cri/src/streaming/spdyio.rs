//! A SPDY connection's I/O, shared by remote command and port forwarding: a task that encodes
//! and writes the frames queued to it (one header-compression context for the connection),
//! and a reader that decodes the peer's frames one at a time. Both are bounded: the queue has
//! [`QUEUE`] frames, a frame the peer announces may be at most [`MAX_INCOMING_FRAME`] bytes.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::spdy::{Decoder, Encoder, Frame, SpdyError};

/// Frames queued for the writer at most (senders wait beyond: backpressure).
pub const QUEUE: usize = 32;
/// The longest frame accepted from a peer (client-go writes data frames of at most 32 KiB).
pub const MAX_INCOMING_FRAME: usize = 4 << 20;
/// Queued frames are batched into writes of about this many bytes.
const BATCH: usize = 256 << 10;

/// Why reading a peer's frames stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("reading the SPDY connection: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Protocol(#[from] SpdyError),
}

/// Starts the writer of `wr`; it ends (shutting `wr` down) once every sender is dropped, or
/// when a write fails.
pub fn spawn_writer<W>(wr: W) -> (mpsc::Sender<Frame>, JoinHandle<()>)
where
    W: AsyncWrite + Send + 'static,
{
    let (tx, rx) = mpsc::channel(QUEUE);
    (tx, tokio::spawn(write_frames(wr, rx)))
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
        while buf.len() < BATCH {
            let Ok(f) = frames.try_recv() else { break };
            if let Err(e) = enc.encode(&f, &mut buf) {
                tracing::warn!(error = %e, "cannot encode a SPDY frame");
            }
        }
        if wr.write_all(&buf).await.is_err() || wr.flush().await.is_err() {
            return;
        }
    }
    let _ = wr.shutdown().await;
}

/// Decodes the frames a peer sends.
pub struct FrameReader<R> {
    rd: R,
    dec: Decoder,
    buf: Vec<u8>,
    scratch: Box<[u8]>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(rd: R) -> Self {
        FrameReader::with_buffered(rd, Vec::new())
    }

    /// For a connection of which `already` was read.
    pub fn with_buffered(rd: R, already: Vec<u8>) -> Self {
        FrameReader { rd, dec: Decoder::new(), buf: already, scratch: vec![0; 64 << 10].into() }
    }

    /// The next frame; `None` at the end of the connection.
    pub async fn next(&mut self) -> Result<Option<Frame>, ReadError> {
        loop {
            if self.buf.len() >= 8 {
                let len = u32::from_be_bytes([0, self.buf[5], self.buf[6], self.buf[7]]) as usize;
                if len > MAX_INCOMING_FRAME {
                    return Err(SpdyError::TooLong(len).into());
                }
            }
            if let Some(f) = self.dec.decode(&mut self.buf)? {
                return Ok(Some(f));
            }
            let n = self.rd.read(&mut self.scratch).await?;
            if n == 0 {
                return Ok(None);
            }
            self.buf.extend_from_slice(&self.scratch[..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_go_through_and_oversized_ones_are_refused() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let (tx, writer) = spawn_writer(a);
        let frames = vec![
            Frame::Ping { id: 1 },
            Frame::Data { stream_id: 3, flags: 0, data: vec![1; 100_000] },
            Frame::SynReply { stream_id: 3, flags: 0, headers: vec![] },
        ];
        for f in &frames {
            tx.send(f.clone()).await.unwrap();
        }
        drop(tx);
        let mut r = FrameReader::new(b);
        for f in &frames {
            assert_eq!(r.next().await.unwrap().as_ref(), Some(f));
        }
        assert!(r.next().await.unwrap().is_none());
        writer.await.unwrap();

        // A data frame header announcing 16 MiB - 1 is refused before its bytes are buffered.
        let huge: &[u8] = &[0, 0, 0, 1, 0, 0xff, 0xff, 0xff];
        let mut r = FrameReader::new(huge);
        assert!(matches!(r.next().await, Err(ReadError::Protocol(SpdyError::TooLong(_)))));
    }
}
