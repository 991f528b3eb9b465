//! StartContainer, StopContainer, RemoveContainer (also for a whole pod), and the changes to a
//! container that exists: UpdateContainerResources, ReopenContainerLog.

use std::sync::Arc;
use std::time::Duration;

use carapace_agent_client::pb;
use k8s_cri::v1 as cri;

use super::agent::{agent_of, call, AGENT_CALL};
use super::monitor::{AGENT_FORGOT, VM_STOPPED};
use super::{convert, Container, ContainerTable, Pods};
use crate::error::CriError;
use crate::record::{ContainerPhase, SandboxRecord};
use crate::sizing;
use crate::util::{lock, now_nanos, sandbox_state};
use crate::volumes;

impl ContainerTable {
    /// StartContainer.
    pub async fn start(self: &Arc<Self>, pods: &dyn Pods, id: &str) -> Result<(), CriError> {
        let (c, sb) = self.with_pod(pods, id)?;
        let _op = c.op.lock().await;
        let mut rec = c.rec().clone();
        match rec.phase {
            ContainerPhase::Created => {}
            ContainerPhase::Running => {
                return Err(CriError::FailedPrecondition(format!(
                    "container {} is already running",
                    rec.id
                )))
            }
            ContainerPhase::Exited => {
                return Err(CriError::FailedPrecondition(format!(
                    "container {} has exited; create a new one (CRI containers start once)",
                    rec.id
                )))
            }
        }
        let agent = agent_of(&sb).await?;
        if let Err(err) = call(
            "agent StartContainer",
            agent.grpc().start_container(pb::StartContainerRequest { id: rec.id.clone() }),
        )
        .await
        {
            // containerd records a failed start as an exit with the error.
            self.record_exit(&c, 128, "StartError", &err.to_string(), now_nanos());
            return Err(err);
        }
        rec.phase = ContainerPhase::Running;
        rec.started_at = now_nanos();
        self.save(&c, rec.clone())?;
        self.emit(&rec, cri::ContainerEventType::ContainerStartedEvent);
        self.spawn_monitor(&c, &sb);
        tracing::info!(id = %rec.id, "container started");
        Ok(())
    }

    /// StopContainer: the image's stop signal (SIGTERM), SIGKILL after `timeout_s`; no error
    /// when it is not running or not known at all (CRI idempotence).
    pub async fn stop(&self, pods: &dyn Pods, id: &str, timeout_s: i64) -> Result<(), CriError> {
        let (c, sb) = match self.with_pod(pods, id) {
            Ok(x) => x,
            Err(CriError::NotFound(_)) => {
                tracing::debug!(id, "StopContainer: no such container, nothing to stop");
                return Ok(());
            }
            Err(err) => return Err(err),
        };
        let _op = c.op.lock().await;
        self.stop_locked(&c, &sb, timeout_s).await
    }

    async fn stop_locked(
        &self,
        c: &Arc<Container>,
        sb: &SandboxRecord,
        timeout_s: i64,
    ) -> Result<(), CriError> {
        let rec = c.rec().clone();
        if rec.phase != ContainerPhase::Running {
            return Ok(());
        }
        if sandbox_state(sb) != cri::PodSandboxState::SandboxReady {
            self.record_exit(c, 255, "Error", VM_STOPPED, now_nanos());
            return Ok(());
        }
        let agent = agent_of(sb).await?;
        let timeout_ms = u64::try_from(timeout_s.max(0)).unwrap_or(0).saturating_mul(1000);
        let signal = convert::stop_signal(&rec.stop_signal).unwrap_or_else(|| {
            tracing::warn!(
                id = %rec.id,
                signal = %rec.stop_signal,
                "unknown stop signal of the image; using SIGTERM",
            );
            0
        });
        let req = pb::StopContainerRequest { id: rec.id.clone(), signal, timeout_ms };
        let mut g = agent.grpc();
        // The agent kills after the grace period; allow it that long plus the normal bound.
        let limit = Duration::from_millis(timeout_ms) + AGENT_CALL;
        let w = match tokio::time::timeout(limit, g.stop_container(req)).await {
            Ok(Ok(w)) => w.into_inner(),
            Ok(Err(s)) if s.code() == tonic::Code::NotFound => {
                self.record_exit(c, 255, "Error", AGENT_FORGOT, now_nanos());
                return Ok(());
            }
            Ok(Err(source)) => return Err(CriError::Agent { call: "agent StopContainer", source }),
            Err(_) => {
                return Err(CriError::DeadlineExceeded(format!(
                    "container {} did not stop within {limit:?}",
                    rec.id
                )))
            }
        };
        let (code, reason, finished) = convert::exit_of(&w);
        self.record_exit(c, code, &reason, "", finished);
        Ok(())
    }

    /// RemoveContainer: kills it if it runs, deletes its files, mounts and record; no error
    /// when it is already gone.
    pub async fn remove(&self, pods: &dyn Pods, id: &str) -> Result<(), CriError> {
        let (c, sb) = match self.with_pod(pods, id) {
            Ok(x) => x,
            Err(CriError::NotFound(_)) => return Ok(()),
            Err(err) => return Err(err),
        };
        let _op = c.op.lock().await;
        self.remove_locked(&c, &sb, true).await
    }

    async fn remove_locked(
        &self,
        c: &Arc<Container>,
        sb: &SandboxRecord,
        ask_agent: bool,
    ) -> Result<(), CriError> {
        let rec = c.rec().clone();
        if !self.index().by_id.contains_key(&rec.id) {
            return Ok(()); // removed meanwhile
        }
        if ask_agent && sandbox_state(sb) == cri::PodSandboxState::SandboxReady {
            self.stop_locked(c, sb, 0).await?;
            let agent = agent_of(sb).await?;
            let mut g = agent.grpc();
            let req = pb::RemoveContainerRequest { id: rec.id.clone(), force: true };
            match call("agent RemoveContainer", g.remove_container(req)).await {
                Ok(_) => {}
                Err(err) if err.is_not_found() => {}
                Err(err) => return Err(err),
            }
        }
        if let Some(t) = lock(&c.monitor).take() {
            t.abort();
        }
        *lock(&c.log) = None;
        volumes::remove_tree(&rec.dir)
            .map_err(|source| CriError::Remove { what: format!("container {}", rec.id), source })?;
        self.store.remove(&rec.id)?;
        {
            let mut index = self.index();
            index.by_id.remove(&rec.id);
            let key = rec.pod_unique_name();
            if index.names.get(&key) == Some(&rec.id) {
                index.names.remove(&key);
            }
        }
        self.emit(&rec, cri::ContainerEventType::ContainerDeletedEvent);
        tracing::info!(id = %rec.id, "container removed");
        Ok(())
    }

    /// StopPodSandbox's part: kill the pod's running containers (errors are logged; the VM
    /// stop that follows ends them anyway).
    pub async fn stop_pod(&self, sb: &SandboxRecord) {
        for c in self.of_pod(&sb.id) {
            let _op = c.op.lock().await;
            if let Err(err) = self.stop_locked(&c, sb, 0).await {
                tracing::warn!(
                    id = %c.rec().id,
                    error = %err,
                    "cannot stop a container of the stopping pod",
                );
                self.record_exit(&c, 137, "Error", "killed with its pod sandbox", now_nanos());
            }
        }
    }

    /// RemovePodSandbox's part: forget the pod's containers and delete their files.
    pub async fn remove_pod(&self, sb: &SandboxRecord) -> Result<(), CriError> {
        for c in self.of_pod(&sb.id) {
            let _op = c.op.lock().await;
            self.remove_locked(&c, sb, false).await?;
        }
        Ok(())
    }

    /// UpdateContainerResources.
    pub async fn update_resources(
        &self,
        pods: &dyn Pods,
        id: &str,
        linux: Option<cri::LinuxContainerResources>,
    ) -> Result<(), CriError> {
        let (c, sb) = self.with_pod(pods, id)?;
        let _op = c.op.lock().await;
        let Some(r) = linux else { return Ok(()) };
        let mut rec = c.rec().clone();
        if rec.phase == ContainerPhase::Exited {
            return Err(CriError::FailedPrecondition(format!(
                "container {} has exited: its resources cannot change",
                rec.id
            )));
        }
        // A running VM does not grow: resources beyond it are refused (see crate::sizing).
        let what = format!("container {:?} (UpdateContainerResources)", rec.name);
        sizing::check_container_fits(&what, &r, sb.vm_size(), &sb.profile)?;
        let agent = agent_of(&sb).await?;
        let req = pb::UpdateContainerResourcesRequest {
            id: rec.id.clone(),
            resources: Some(convert::agent_resources(&r)),
        };
        call("agent UpdateContainerResources", agent.grpc().update_container_resources(req))
            .await?;
        rec.resources = Some(r);
        self.save(&c, rec)
    }

    /// ReopenContainerLog: the log file was rotated; continue in a new file at the same path.
    pub fn reopen_log(&self, id: &str) -> Result<(), CriError> {
        let c = self.resolve(id)?;
        let rec = c.rec().clone();
        if rec.phase != ContainerPhase::Running {
            return Err(CriError::FailedPrecondition(format!(
                "container {} is not running",
                rec.id
            )));
        }
        if let Some(w) = lock(&c.log).as_mut() {
            w.reopen().map_err(|source| {
                CriError::io(
                    format!("reopen the log of container {}", rec.id),
                    rec.log_path.clone(),
                    source,
                )
            })?;
        }
        Ok(())
    }
}
