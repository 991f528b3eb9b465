//! The monitor of a running container: a task that copies the agent's `ReadStdio` stream into
//! the CRI log file and records the exit (`WaitContainer`). After a daemon restart it resumes:
//! the agent gives a process's output back when its reader goes away.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use carapace_agent_client::{pb, AgentClient};

use super::{agent, convert, Container, ContainerTable, OutputEvent};
use crate::crilog::{LogWriter, Stream};
use crate::procfs;
use crate::record::SandboxRecord;
use crate::util::{lock, now_nanos};

/// How long output may still arrive after a process exited (a child may hold the pipe open).
pub const OUTPUT_DRAIN: Duration = Duration::from_secs(2);
/// The exit message of a container whose pod's VM went away under it.
pub const VM_STOPPED: &str = "the pod's VM stopped while the container ran";
/// The exit message of a container the agent has forgotten.
pub const AGENT_FORGOT: &str = "the pod's agent no longer knows this container";
/// How often reaching the agent or waiting may fail before the monitor gives up.
const ATTEMPTS: u32 = 5;

impl ContainerTable {
    /// Starts the task that forwards a running container's output to its log and records its
    /// exit.
    pub(super) fn spawn_monitor(self: &Arc<Self>, c: &Arc<Container>, sb: &SandboxRecord) {
        let (table, c2, sb) = (self.clone(), c.clone(), sb.clone());
        let task = tokio::spawn(async move { table.monitor(&c2, &sb).await });
        if let Some(old) = lock(&c.monitor).replace(task) {
            old.abort();
        }
    }

    async fn monitor(&self, c: &Arc<Container>, sb: &SandboxRecord) {
        let id = c.rec().id.clone();
        let log_path = c.rec().log_path.clone();
        if !log_path.is_empty() {
            match LogWriter::open(Path::new(&log_path)) {
                Ok(w) => *lock(&c.log) = Some(w),
                Err(err) => {
                    tracing::warn!(
                        %id,
                        path = %log_path,
                        error = %err,
                        "cannot open the container log",
                    )
                }
            }
        }
        let vm_gone = || !sb.vmm.as_ref().is_some_and(procfs::is_alive);
        let mut attempts = 0u32;
        loop {
            let agent = match agent::connect(sb).await {
                Ok(a) => a,
                Err(err) => {
                    if vm_gone() {
                        self.record_exit(c, 255, "Error", VM_STOPPED, now_nanos());
                        break;
                    }
                    attempts += 1;
                    tracing::warn!(
                        %id,
                        error = %err,
                        attempts,
                        "cannot reach the agent to follow the container",
                    );
                    if attempts >= ATTEMPTS {
                        break;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let logs = forward_output(c, &agent, &id);
            let mut grpc = agent.grpc();
            let wait = grpc.wait_container(pb::WaitContainerRequest { id: id.clone() });
            tokio::pin!(logs);
            let waited = tokio::select! {
                w = wait => {
                    // The process ended: let the rest of its output arrive, for a while.
                    let _ = tokio::time::timeout(OUTPUT_DRAIN, &mut logs).await;
                    w
                }
                () = &mut logs => {
                    grpc.wait_container(pb::WaitContainerRequest { id: id.clone() }).await
                }
            };
            if let Some(w) = lock(&c.log).as_mut() {
                let _ = w.finish(now_nanos());
            }
            match waited {
                Ok(w) => {
                    let (code, reason, finished) = convert::exit_of(&w.into_inner());
                    self.record_exit(c, code, &reason, "", finished);
                    break;
                }
                Err(s) if s.code() == tonic::Code::NotFound => {
                    self.record_exit(c, 255, "Error", AGENT_FORGOT, now_nanos());
                    break;
                }
                Err(s) => {
                    if vm_gone() {
                        self.record_exit(c, 255, "Error", VM_STOPPED, now_nanos());
                        break;
                    }
                    attempts += 1;
                    tracing::warn!(
                        %id,
                        error = %s,
                        attempts,
                        "waiting for the container failed; retrying",
                    );
                    if attempts >= ATTEMPTS {
                        break;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        *lock(&c.log) = None;
        // No receivers (nobody attached) is fine.
        let _ = c.output.send(OutputEvent::End);
    }
}

/// Copies the container's output into its log file until the output ends.
async fn forward_output(c: &Container, agent: &AgentClient, id: &str) {
    let mut grpc = agent.grpc();
    let req = pb::ReadStdioRequest { container_id: id.to_string(), exec_id: String::new() };
    let mut stream = match grpc.read_stdio(req).await {
        Ok(s) => s.into_inner(),
        Err(s) => {
            tracing::warn!(
                %id,
                error = %s.message(),
                "cannot read the container's output; its log will miss it",
            );
            return std::future::pending().await;
        }
    };
    loop {
        match stream.message().await {
            Ok(Some(chunk)) => {
                let stream_kind = if chunk.stream == pb::stdio_chunk::Stream::Stderr as i32 {
                    Stream::Stderr
                } else {
                    Stream::Stdout
                };
                if let Some(w) = lock(&c.log).as_mut() {
                    if let Err(err) = w.write(now_nanos(), stream_kind, &chunk.data) {
                        tracing::warn!(%id, error = %err, "cannot write the container log");
                    }
                }
                if c.output.receiver_count() > 0 {
                    let stderr = stream_kind == Stream::Stderr;
                    let _ = c.output.send(OutputEvent::Chunk { stderr, data: chunk.data.into() });
                }
            }
            Ok(None) => return,
            Err(s) => {
                tracing::debug!(%id, error = %s.message(), "container output stream ended");
                return;
            }
        }
    }
}
