//! A running container as ExecSync and the streaming sessions (exec, attach) need it: its full
//! ID, its process settings (what an exec inherits) and its pod (to reach the agent).

use carapace_agent_client::pb;

use tokio::sync::broadcast;

use super::{ContainerTable, OutputEvent, Pods};
use crate::error::CriError;
use crate::record::{ContainerPhase, ProcessSpec, SandboxRecord};

/// A container that was running when it was looked up.
#[derive(Debug, Clone)]
pub struct RunningContainer {
    /// The full container ID (the request may have named a prefix).
    pub container_id: String,
    /// The container's process (env, cwd, user: what an exec inherits; tty/stdin: init's).
    pub process: ProcessSpec,
    pub sandbox: SandboxRecord,
}

impl RunningContainer {
    /// The agent request that runs `cmd` in this container with its init's env, cwd and user.
    pub fn exec_request(&self, cmd: Vec<String>, tty: bool, stdin: bool) -> pb::ExecProcessRequest {
        let p = &self.process;
        pb::ExecProcessRequest {
            container_id: self.container_id.clone(),
            exec_id: String::new(),
            process: Some(pb::Process {
                args: cmd,
                env: p.env.clone(),
                cwd: p.cwd.clone(),
                user: Some(pb::User {
                    uid: p.uid,
                    gid: p.gid,
                    additional_gids: p.additional_gids.clone(),
                }),
                tty,
                stdin,
            }),
        }
    }
}

impl ContainerTable {
    /// The container `id` names, which must be running (`what`: the operation, for the error).
    pub fn running(
        &self,
        pods: &dyn Pods,
        id: &str,
        what: &str,
    ) -> Result<RunningContainer, CriError> {
        let (c, sandbox) = self.with_pod(pods, id)?;
        let rec = c.rec().clone();
        if rec.phase != ContainerPhase::Running {
            return Err(CriError::FailedPrecondition(format!(
                "container {} is not running: {what} needs a running container",
                rec.id
            )));
        }
        Ok(RunningContainer { container_id: rec.id, process: rec.process, sandbox })
    }

    /// Attach: the running container `id` names and its output from now on (ending with
    /// [`OutputEvent::End`] when it exits).
    pub fn subscribe_output(
        &self,
        pods: &dyn Pods,
        id: &str,
    ) -> Result<(RunningContainer, broadcast::Receiver<OutputEvent>), CriError> {
        let (c, _) = self.with_pod(pods, id)?;
        // Subscribed before the phase is read: an exit after the check still reaches us.
        let rx = c.output.subscribe();
        Ok((self.running(pods, id, "attach")?, rx))
    }
}
