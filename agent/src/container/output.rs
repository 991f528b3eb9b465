//! The stdio of a container's processes: ReadStdio (lent to one reader at a
//! time), WriteStdin and ResizeTty.

use std::sync::Arc;

use carapace_agent_client::pb;

use super::common::{blocking_err, lock};
use super::error::ContainerError;
use super::process::Proc;
use super::table::Containers;

impl Containers {
    /// ReadStdio: the output channel of a process (one reader at a time).
    pub fn take_output(&self, id: &str, exec_id: &str) -> Result<OutputLease, ContainerError> {
        let (_e, p) = self.proc_of(id, exec_id)?;
        let rx = p.io.take_output().ok_or_else(|| {
            ContainerError::State("output is already being read (one reader per process)".into())
        })?;
        Ok(OutputLease { rx: Some(rx), proc: p, ended: false })
    }

    /// ResizeTty: the window size of a process started with a terminal.
    pub fn resize_tty(&self, req: &pb::ResizeTtyRequest) -> Result<(), ContainerError> {
        let rows = u16::try_from(req.rows).ok().filter(|r| *r > 0);
        let cols = u16::try_from(req.cols).ok().filter(|c| *c > 0);
        let (Some(rows), Some(cols)) = (rows, cols) else {
            return Err(ContainerError::invalid(format!(
                "terminal size {}x{}: rows and cols must be 1..=65535",
                req.rows, req.cols
            )));
        };
        let (_e, p) = self.proc_of(&req.container_id, &req.exec_id)?;
        p.io.resize(rows, cols)
    }

    /// WriteStdin.
    pub async fn write_stdin(&self, req: pb::WriteStdinRequest) -> Result<(), ContainerError> {
        let (_e, p) = self.proc_of(&req.container_id, &req.exec_id)?;
        tokio::task::spawn_blocking(move || p.io.write_stdin(&req.data, req.close))
            .await
            .map_err(blocking_err)?
    }
}

/// A process's output channel lent to one ReadStdio reader. A reader that goes away before the
/// output ended (e.g. the host daemon restarted) gives the channel back, so the next reader
/// continues with what was not read yet.
pub struct OutputLease {
    rx: Option<tokio::sync::mpsc::Receiver<pb::StdioChunk>>,
    proc: Arc<Proc>,
    ended: bool,
}

impl tokio_stream::Stream for OutputLease {
    type Item = pb::StdioChunk;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<pb::StdioChunk>> {
        let this = &mut *self;
        let Some(rx) = this.rx.as_mut() else { return std::task::Poll::Ready(None) };
        match rx.poll_recv(cx) {
            std::task::Poll::Ready(None) => {
                this.ended = true;
                std::task::Poll::Ready(None)
            }
            other => other,
        }
    }
}

impl Drop for OutputLease {
    fn drop(&mut self) {
        if !self.ended {
            if let Some(rx) = self.rx.take() {
                *lock(&self.proc.io.output) = Some(rx);
            }
        }
    }
}

#[cfg(test)]
mod lease_tests {
    use super::*;
    use crate::container::stdio;
    use carapace_agent_client::pb::StdioChunk;
    use std::sync::Mutex;
    use tokio_stream::StreamExt;

    fn chunk(data: &[u8]) -> StdioChunk {
        StdioChunk { stream: 0, data: data.to_vec() }
    }

    #[tokio::test]
    async fn a_reader_that_goes_away_gives_the_output_back_one_that_read_to_the_end_does_not() {
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let io =
            stdio::ProcessIo { output: Mutex::new(Some(rx)), stdin: Mutex::new(None), tty: None };
        let p = Proc::new(1, io);
        tx.send(chunk(b"one")).await.unwrap();
        tx.send(chunk(b"two")).await.unwrap();
        let rx = p.io.take_output().unwrap();
        let mut lease = OutputLease { rx: Some(rx), proc: Arc::clone(&p), ended: false };
        assert_eq!(lease.next().await.unwrap().data, b"one");
        drop(lease);
        // The next reader continues after what the first one read.
        let rx = p.io.take_output().expect("output not given back");
        let mut lease = OutputLease { rx: Some(rx), proc: Arc::clone(&p), ended: false };
        assert_eq!(lease.next().await.unwrap().data, b"two");
        drop(tx);
        assert!(lease.next().await.is_none());
        drop(lease);
        assert!(p.io.take_output().is_none(), "an ended output was given back");
    }
}
