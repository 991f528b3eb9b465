//! The daemon's [`Backend`]: streamed processes run through the pod's agent (ExecProcess,
//! ReadStdio, WriteStdin, ResizeTty, WaitProcess); attach follows the container's output as its
//! monitor forwards it into the CRI log; port forwarding opens one vsock connection per
//! forwarded TCP connection to the agent's port-forward listener. A session whose client goes
//! away drops the future, and [`KillOnDrop`] then kills the exec in the guest, so nothing is
//! left behind.

use std::pin::pin;
use std::time::Duration;

use carapace_agent_client::connect::connect_with_retry;
use carapace_agent_client::pb;
use carapace_agent_client::pb::agent_client::AgentClient as AgentServiceClient;
use carapace_agent_client::{PORT_FORWARD_MAX_LINE, PORT_FORWARD_VSOCK_PORT};
use k8s_cri::v1 as cri;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::containers::agent::{agent_of, call};
use crate::containers::monitor::OUTPUT_DRAIN;
use crate::containers::OutputEvent;
use crate::error::CriError;
use crate::runtime::Runtime;
use crate::streaming::{Backend, Outcome, PortStream, Stdio, TermSize};
use crate::util::sandbox_state;

/// How long reaching the agent's port-forward listener and its answer may take.
pub const PORT_FORWARD_SETUP: Duration = Duration::from_secs(10);

#[tonic::async_trait]
impl Backend for Runtime {
    async fn exec(&self, req: cri::ExecRequest, io: Stdio) -> Outcome {
        match exec_in_guest(self, req, io).await {
            Ok(code) => Outcome::Exited(code),
            Err(e) => Outcome::Failed(e.to_string()),
        }
    }

    async fn attach(&self, req: cri::AttachRequest, io: Stdio) -> Outcome {
        match attach_in_guest(self, req, io).await {
            Ok(()) => Outcome::Exited(0),
            Err(e) => Outcome::Failed(e.to_string()),
        }
    }

    async fn port_forward(&self, pod: &str, port: u16) -> Result<Box<dyn PortStream>, String> {
        open_forward(self, pod, port).await.map_err(|e| e.to_string())
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// SIGKILLs an exec in the guest when dropped, unless it is known to have exited.
struct KillOnDrop {
    grpc: AgentServiceClient<Channel>,
    container_id: String,
    exec_id: String,
    armed: bool,
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let mut grpc = self.grpc.clone();
        let req = pb::SignalProcessRequest {
            container_id: self.container_id.clone(),
            exec_id: self.exec_id.clone(),
            signal: libc::SIGKILL,
            all: false,
        };
        tracing::info!(
            container = %req.container_id,
            exec = %req.exec_id,
            "streaming client went away: killing its exec",
        );
        rt.spawn(async move {
            if let Err(e) = call("agent SignalProcess", grpc.signal_process(req)).await {
                tracing::warn!(error = %e, "cannot kill an abandoned exec");
            }
        });
    }
}

async fn exec_in_guest(rt: &Runtime, req: cri::ExecRequest, io: Stdio) -> Result<i32, CriError> {
    let rc = rt.running_container(&req.container_id, "exec")?;
    let agent = agent_of(&rc.sandbox).await?;
    let exec_req = rc.exec_request(req.cmd.clone(), req.tty, req.stdin && io.stdin.is_some());
    let exec_id = call("agent ExecProcess", agent.grpc().exec_process(exec_req)).await?.exec_id;
    tracing::debug!(container = %rc.container_id, exec = %exec_id, cmd = ?req.cmd, "exec started");
    let mut kill = KillOnDrop {
        grpc: agent.grpc(),
        container_id: rc.container_id.clone(),
        exec_id: exec_id.clone(),
        armed: true,
    };
    let code = follow(agent.grpc(), &rc.container_id, &exec_id, io).await?;
    kill.armed = false;
    Ok(code)
}

/// The process a stdin or resize pump talks to: (container, exec; empty = the init process).
type ProcessIds = (String, String);

/// Stdin: each chunk as it comes; when the client closed its stdin, closes the process's too
/// if `close_at_end` (an exec; an attach to a `stdin_once` container).
fn pump_stdin(
    mut g: AgentServiceClient<Channel>,
    ids: ProcessIds,
    mut rx: mpsc::Receiver<Vec<u8>>,
    close_at_end: bool,
) -> AbortOnDrop {
    AbortOnDrop(tokio::spawn(async move {
        let write = |data: Vec<u8>, close: bool| pb::WriteStdinRequest {
            container_id: ids.0.clone(),
            exec_id: ids.1.clone(),
            data,
            close,
        };
        while let Some(data) = rx.recv().await {
            if let Err(e) = call("agent WriteStdin", g.write_stdin(write(data, false))).await {
                tracing::debug!(error = %e, "stdin of the process is no longer taken");
                return;
            }
        }
        if close_at_end {
            let _ = call("agent WriteStdin", g.write_stdin(write(Vec::new(), true))).await;
        }
    }))
}

/// Terminal resizes, as they come (a 0 width or height is ignored, as kubelet does).
fn pump_resize(
    mut g: AgentServiceClient<Channel>,
    ids: ProcessIds,
    mut rx: mpsc::Receiver<TermSize>,
) -> AbortOnDrop {
    AbortOnDrop(tokio::spawn(async move {
        while let Some(size) = rx.recv().await {
            if size.width == 0 || size.height == 0 {
                continue;
            }
            let req = pb::ResizeTtyRequest {
                container_id: ids.0.clone(),
                exec_id: ids.1.clone(),
                rows: size.height.into(),
                cols: size.width.into(),
            };
            if let Err(e) = call("agent ResizeTty", g.resize_tty(req)).await {
                tracing::debug!(error = %e, "cannot resize the process's terminal");
            }
        }
    }))
}

fn client_gone() -> CriError {
    CriError::FailedPrecondition("the streaming client went away".into())
}

/// Pumps a running exec's stdio and waits for its exit; the output that is still on its way
/// when it exited is forwarded as long as it keeps coming ([`OUTPUT_DRAIN`] between chunks).
async fn follow(
    grpc: AgentServiceClient<Channel>,
    container_id: &str,
    exec_id: &str,
    io: Stdio,
) -> Result<i32, CriError> {
    let Stdio { stdin, stdout, stderr, resize } = io;
    let ids: ProcessIds = (container_id.to_string(), exec_id.to_string());

    // Output: ReadStdio into a channel this task forwards from.
    let (chunk_tx, mut chunks) = mpsc::channel::<pb::StdioChunk>(8);
    let mut g = grpc.clone();
    let read_req = pb::ReadStdioRequest { container_id: ids.0.clone(), exec_id: ids.1.clone() };
    let _reader = AbortOnDrop(tokio::spawn(async move {
        let mut s = match g.read_stdio(read_req).await {
            Ok(s) => s.into_inner(),
            Err(e) => {
                tracing::warn!(error = %e, "agent ReadStdio failed");
                return;
            }
        };
        while let Ok(Some(chunk)) = s.message().await {
            if chunk_tx.send(chunk).await.is_err() {
                return;
            }
        }
    }));
    let _stdin = stdin.map(|rx| pump_stdin(grpc.clone(), ids.clone(), rx, true));
    let _resize = resize.map(|rx| pump_resize(grpc.clone(), ids.clone(), rx));

    let mut g = grpc.clone();
    let mut wait = pin!(g.wait_process(pb::WaitProcessRequest {
        container_id: ids.0.clone(),
        exec_id: ids.1.clone(),
    }));
    let mut exit: Option<i32> = None;
    let mut out_done = false;
    let mut drain_until = Instant::now();
    while exit.is_none() || !out_done {
        tokio::select! {
            w = &mut wait, if exit.is_none() => {
                let w = w.map_err(|source| CriError::Agent { call: "agent WaitProcess", source })?;
                exit = Some(w.into_inner().exit_code);
                drain_until = Instant::now() + OUTPUT_DRAIN;
            }
            c = chunks.recv(), if !out_done => match c {
                Some(chunk) => {
                    let to = if chunk.stream == pb::stdio_chunk::Stream::Stderr as i32 {
                        stderr.as_ref()
                    } else {
                        stdout.as_ref()
                    };
                    if let Some(tx) = to {
                        tx.send(chunk.data).await.map_err(|_| client_gone())?;
                    }
                    drain_until = Instant::now() + OUTPUT_DRAIN;
                }
                None => out_done = true,
            },
            () = tokio::time::sleep_until(drain_until), if exit.is_some() && !out_done => {
                tracing::debug!(exec = %ids.1, "output still open after the exit: not waiting");
                out_done = true;
            }
        }
    }
    Ok(exit.unwrap_or(-1))
}

/// Attach: the container's output from now on (as it goes into the CRI log) to the client,
/// the client's stdin and resizes to the container's init, until the container exits or the
/// client goes away. Several attachers may follow one container at once.
async fn attach_in_guest(rt: &Runtime, req: cri::AttachRequest, io: Stdio) -> Result<(), CriError> {
    let (rc, mut output) = rt.subscribe_output(&req.container_id)?;
    let Stdio { stdin, stdout, stderr, resize } = io;
    let agent = agent_of(&rc.sandbox).await?;
    let ids: ProcessIds = (rc.container_id.clone(), String::new());
    let _stdin = stdin
        .filter(|_| rc.process.stdin)
        .map(|rx| pump_stdin(agent.grpc(), ids.clone(), rx, rc.process.stdin_once));
    let _resize =
        resize.filter(|_| rc.process.tty).map(|rx| pump_resize(agent.grpc(), ids.clone(), rx));
    loop {
        match output.recv().await {
            Ok(OutputEvent::Chunk { stderr: is_err, data }) => {
                // A terminal has one output stream.
                let to = if is_err && !rc.process.tty { stderr.as_ref() } else { stdout.as_ref() };
                if let Some(tx) = to {
                    tx.send(data.to_vec()).await.map_err(|_| client_gone())?;
                }
            }
            Ok(OutputEvent::End) | Err(broadcast::error::RecvError::Closed) => return Ok(()),
            Err(broadcast::error::RecvError::Lagged(n)) => {
                return Err(CriError::FailedPrecondition(format!(
                    "this attach fell {n} output chunks behind container {} and was cut off \
                     (its log has everything); attach again",
                    rc.container_id
                )))
            }
        }
    }
}

/// Why a port forward could not be opened (the text goes to the client's error stream).
#[derive(Debug, thiserror::Error)]
enum ForwardError {
    #[error(transparent)]
    Pod(#[from] CriError),
    #[error("cannot reach the port forwarder of pod {pod}: {source}")]
    Connect { pod: String, source: carapace_agent_client::AgentClientError },
    #[error("port forward to pod {pod}: {what}")]
    Io { pod: String, what: String },
    #[error("pod {pod}: {reason}")]
    Refused { pod: String, reason: String },
}

/// A guest's text made safe to show: printable ASCII only, bounded.
fn printable(raw: &[u8]) -> String {
    raw.iter()
        .take(PORT_FORWARD_MAX_LINE)
        .map(|&b| if (0x20..0x7f).contains(&b) { b as char } else { '?' })
        .collect()
}

async fn open_forward(
    rt: &Runtime,
    pod: &str,
    port: u16,
) -> Result<Box<dyn PortStream>, ForwardError> {
    let rec = rt.sandbox_record(pod)?;
    if sandbox_state(&rec) != cri::PodSandboxState::SandboxReady {
        return Err(CriError::FailedPrecondition(format!(
            "pod sandbox {} is not ready (its VM is stopped)",
            rec.id
        ))
        .into());
    }
    let io = |what: String| ForwardError::Io { pod: rec.id.clone(), what };
    let mut s = connect_with_retry(&rec.vsock_path(), PORT_FORWARD_VSOCK_PORT, PORT_FORWARD_SETUP)
        .await
        .map_err(|source| ForwardError::Connect { pod: rec.id.clone(), source })?;
    let answer = tokio::time::timeout(PORT_FORWARD_SETUP, async {
        s.write_all(format!("PORT {port}\n").as_bytes()).await?;
        // Byte by byte up to the newline: what follows belongs to the forwarded stream.
        let mut line = Vec::new();
        loop {
            let b = s.read_u8().await?;
            if b == b'\n' || line.len() >= PORT_FORWARD_MAX_LINE {
                return Ok::<_, std::io::Error>(line);
            }
            line.push(b);
        }
    })
    .await
    .map_err(|_| io(format!("the agent did not answer within {PORT_FORWARD_SETUP:?}")))?
    .map_err(|e| io(format!("the agent's answer ended early: {e}")))?;
    match answer.as_slice() {
        b"OK" => Ok(Box::new(s)),
        a => match a.strip_prefix(b"ERR ") {
            Some(reason) => Err(ForwardError::Refused { pod: rec.id, reason: printable(reason) }),
            None => Err(io(format!("unexpected answer from the agent: {:?}", printable(a)))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_text_is_made_printable_and_bounded() {
        assert_eq!(printable(b"connection refused"), "connection refused");
        assert_eq!(printable(b"a\x1b[2Jb\n\xff"), "a?[2Jb??");
        assert_eq!(printable(&vec![b'x'; 10_000]).len(), PORT_FORWARD_MAX_LINE);
    }
}
