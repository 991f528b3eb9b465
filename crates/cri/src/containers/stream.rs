//! What the streaming server needs of a container: that it runs, its process settings and its
//! pod (to reach the agent).

use super::{ContainerTable, Pods};
use crate::error::CriError;
use crate::record::{ContainerPhase, ProcessSpec, SandboxRecord};

/// A running container a streaming session works on.
#[derive(Debug, Clone)]
pub struct StreamTarget {
    /// The full container ID (the request may have named a prefix).
    pub container_id: String,
    /// The container's process (env, cwd, user: what an exec inherits; tty/stdin: init's).
    pub process: ProcessSpec,
    pub sandbox: SandboxRecord,
}

impl ContainerTable {
    /// The container `id` names, which must be running (Exec, Attach).
    pub fn stream_target(&self, pods: &dyn Pods, id: &str) -> Result<StreamTarget, CriError> {
        let (c, sandbox) = self.with_pod(pods, id)?;
        let rec = c.rec().clone();
        if rec.phase != ContainerPhase::Running {
            return Err(CriError::FailedPrecondition(format!(
                "container {} is not running: streaming needs a running container",
                rec.id
            )));
        }
        Ok(StreamTarget { container_id: rec.id, process: rec.process, sandbox })
    }
}
