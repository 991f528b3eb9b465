//! ExecSync: a command in a running container, its output collected (bounded) and its exit
//! code returned.

use std::time::Duration;

use carapace_agent_client::pb;
use k8s_cri::v1 as cri;

use super::agent::{agent_of, call};
use super::monitor::OUTPUT_DRAIN;
use super::{ContainerTable, Pods};
use crate::error::CriError;

/// The most of each of stdout and stderr ExecSync returns (kubelet's limit is 16 MiB).
pub const MAX_EXEC_OUTPUT: usize = 16 << 20;

impl ContainerTable {
    /// ExecSync: runs `cmd` in the container, returns its output and exit code; after
    /// `timeout_s` (0: none) the command is killed and DeadlineExceeded returned.
    pub async fn exec_sync(
        &self,
        pods: &dyn Pods,
        id: &str,
        cmd: Vec<String>,
        timeout_s: i64,
    ) -> Result<cri::ExecSyncResponse, CriError> {
        if cmd.is_empty() {
            return Err(CriError::InvalidArgument("ExecSync: cmd must not be empty".into()));
        }
        let rc = self.running(pods, id, "exec")?;
        let agent = agent_of(&rc.sandbox).await?;
        let req = rc.exec_request(cmd.clone(), false, false);
        let cid = &rc.container_id;
        let exec_id = call("agent ExecProcess", agent.grpc().exec_process(req)).await?.exec_id;
        let mut g = agent.grpc();
        let read_req = pb::ReadStdioRequest { container_id: cid.clone(), exec_id: exec_id.clone() };
        let reader = tokio::spawn(async move {
            let mut out = (Vec::new(), Vec::new());
            let Ok(s) = g.read_stdio(read_req).await else { return out };
            let mut s = s.into_inner();
            while let Ok(Some(chunk)) = s.message().await {
                let buf = if chunk.stream == pb::stdio_chunk::Stream::Stderr as i32 {
                    &mut out.1
                } else {
                    &mut out.0
                };
                let room = MAX_EXEC_OUTPUT.saturating_sub(buf.len());
                buf.extend_from_slice(&chunk.data[..chunk.data.len().min(room)]);
            }
            out
        });
        let mut g = agent.grpc();
        let wait = g.wait_process(pb::WaitProcessRequest {
            container_id: cid.clone(),
            exec_id: exec_id.clone(),
        });
        let waited = if timeout_s > 0 {
            match tokio::time::timeout(Duration::from_secs(timeout_s as u64), wait).await {
                Ok(w) => w,
                Err(_) => {
                    reader.abort();
                    let mut g = agent.grpc();
                    let kill = pb::SignalProcessRequest {
                        container_id: cid.clone(),
                        exec_id,
                        signal: libc::SIGKILL,
                        all: false,
                    };
                    let _ = call("agent SignalProcess", g.signal_process(kill)).await;
                    return Err(CriError::DeadlineExceeded(format!(
                        "command {cmd:?} in container {} timed out after {timeout_s}s",
                        cid
                    )));
                }
            }
        } else {
            wait.await
        };
        let w = waited
            .map_err(|source| CriError::Agent { call: "agent WaitProcess", source })?
            .into_inner();
        let (stdout, stderr) = match tokio::time::timeout(OUTPUT_DRAIN, reader).await {
            Ok(Ok(out)) => out,
            _ => (Vec::new(), Vec::new()),
        };
        Ok(cri::ExecSyncResponse { stdout, stderr, exit_code: w.exit_code })
    }
}
