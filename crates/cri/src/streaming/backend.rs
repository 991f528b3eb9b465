//! The daemon's [`Backend`]: streamed processes run through the pod's agent (ExecProcess,
//! ReadStdio, WriteStdin, ResizeTty, WaitProcess). A session whose client goes away drops the
//! future, and [`KillOnDrop`] then kills the exec in the guest, so nothing is left behind.

use std::pin::pin;

use carapace_agent_client::pb;
use carapace_agent_client::pb::agent_client::AgentClient as AgentServiceClient;
use k8s_cri::v1 as cri;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::transport::Channel;

use super::{Backend, Outcome, PortStream, Stdio};
use crate::containers::agent::{agent_of, call};
use crate::containers::monitor::OUTPUT_DRAIN;
use crate::error::CriError;
use crate::runtime::Runtime;

#[tonic::async_trait]
impl Backend for Runtime {
    async fn exec(&self, req: cri::ExecRequest, io: Stdio) -> Outcome {
        match exec_in_guest(self, req, io).await {
            Ok(code) => Outcome::Exited(code),
            Err(e) => Outcome::Failed(e.to_string()),
        }
    }

    async fn attach(&self, _req: cri::AttachRequest, _io: Stdio) -> Outcome {
        Outcome::Failed("attach is not implemented yet".into())
    }

    async fn port_forward(&self, _pod: &str, _port: u16) -> Result<Box<dyn PortStream>, String> {
        Err("port forwarding is not implemented yet".into())
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
    let t = rt.stream_target(&req.container_id)?;
    let agent = agent_of(&t.sandbox).await?;
    let p = &t.process;
    let exec_req = pb::ExecProcessRequest {
        container_id: t.container_id.clone(),
        exec_id: String::new(),
        process: Some(pb::Process {
            args: req.cmd.clone(),
            env: p.env.clone(),
            cwd: p.cwd.clone(),
            user: Some(pb::User {
                uid: p.uid,
                gid: p.gid,
                additional_gids: p.additional_gids.clone(),
            }),
            tty: req.tty,
            stdin: req.stdin && io.stdin.is_some(),
        }),
    };
    let exec_id = call("agent ExecProcess", agent.grpc().exec_process(exec_req)).await?.exec_id;
    tracing::debug!(container = %t.container_id, exec = %exec_id, cmd = ?req.cmd, "exec started");
    let mut kill = KillOnDrop {
        grpc: agent.grpc(),
        container_id: t.container_id.clone(),
        exec_id: exec_id.clone(),
        armed: true,
    };
    let code = follow(agent.grpc(), &t.container_id, &exec_id, io).await?;
    kill.armed = false;
    Ok(code)
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
    let ids = (container_id.to_string(), exec_id.to_string());

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

    // Stdin: each chunk as it comes, then close (EOF) when the client closed its stdin.
    let _stdin = stdin.map(|mut rx| {
        let mut g = grpc.clone();
        let ids = ids.clone();
        AbortOnDrop(tokio::spawn(async move {
            let write = |data: Vec<u8>, close: bool| pb::WriteStdinRequest {
                container_id: ids.0.clone(),
                exec_id: ids.1.clone(),
                data,
                close,
            };
            while let Some(data) = rx.recv().await {
                if let Err(e) = call("agent WriteStdin", g.write_stdin(write(data, false))).await {
                    tracing::debug!(error = %e, "stdin of an exec no longer taken");
                    return;
                }
            }
            let _ = call("agent WriteStdin", g.write_stdin(write(Vec::new(), true))).await;
        }))
    });

    // Terminal resizes.
    let _resize = resize.map(|mut rx| {
        let mut g = grpc.clone();
        let ids = ids.clone();
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
                    tracing::debug!(error = %e, "cannot resize the exec's terminal");
                }
            }
        }))
    });

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
                        if tx.send(chunk.data).await.is_err() {
                            return Err(CriError::FailedPrecondition(
                                "the streaming client went away".into(),
                            ));
                        }
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
