//! Start, signal, wait, stop, update, stats and remove of a container.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use carapace_agent_client::pb;

use super::common::{blocking_err, lock, now_unix_ms};
use super::config::KILL_WAIT;
use super::entry::Entry;
use super::error::ContainerError;
use super::table::Containers;
use super::{cgroup, runtime, validate};

impl Containers {
    /// StartContainer.
    pub async fn start(&self, id: &str) -> Result<(), ContainerError> {
        let e = self.get(id)?;
        let _op = e.op.lock().await;
        if e.started.load(Ordering::SeqCst) || e.init.exited().is_some() {
            return Err(ContainerError::State(format!("container {id:?} is {}", e.state())));
        }
        let e2 = Arc::clone(&e);
        tokio::task::spawn_blocking(move || runtime::start(&mut lock(&e2.container)))
            .await
            .map_err(blocking_err)??;
        e.init.started_at_ms.store(now_unix_ms(), Ordering::SeqCst);
        e.started.store(true, Ordering::SeqCst);
        tracing::info!(id, "container started");
        Ok(())
    }

    /// SignalProcess.
    pub fn signal(&self, req: &pb::SignalProcessRequest) -> Result<(), ContainerError> {
        let sig = validate::check_signal(req.signal)?;
        let (e, p) = self.proc_of(&req.container_id, &req.exec_id)?;
        if p.exited().is_some() {
            return Err(ContainerError::State("process already exited".into()));
        }
        if req.all && req.exec_id.is_empty() {
            return signal_cgroup(&e.cgroup_dir, sig);
        }
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.pid), sig)
            .map_err(|err| ContainerError::io(format!("kill {}", p.pid), err.into()))
    }

    /// WaitProcess / WaitContainer.
    pub async fn wait(
        &self,
        id: &str,
        exec_id: &str,
    ) -> Result<pb::WaitProcessResponse, ContainerError> {
        let (_e, p) = self.proc_of(id, exec_id)?;
        Ok(p.wait().await)
    }

    /// StopContainer: `signal` to init, SIGKILL to the cgroup after `grace`.
    pub async fn stop(
        &self,
        id: &str,
        signal: i32,
        grace: Duration,
    ) -> Result<pb::WaitProcessResponse, ContainerError> {
        let sig = validate::check_signal(if signal == 0 { libc::SIGTERM } else { signal })?;
        let e = self.get(id)?;
        let _op = e.op.lock().await;
        if let Some(r) = e.init.exited() {
            return Ok(r);
        }
        if !grace.is_zero() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(e.init.pid), sig);
            if let Ok(r) = tokio::time::timeout(grace, e.init.wait()).await {
                return Ok(r);
            }
            tracing::info!(id, "grace period over; killing the container");
        }
        kill_and_wait(&e).await
    }

    /// ContainerStats.
    pub fn stats(&self, id: &str) -> Result<pb::ContainerStatsResponse, ContainerError> {
        let e = self.get(id)?;
        cgroup::stats(&e.cgroup_dir)
    }

    /// UpdateContainerResources.
    pub fn update(&self, id: &str, r: &pb::Resources) -> Result<(), ContainerError> {
        validate::check_resources(r)?;
        let e = self.get(id)?;
        cgroup::update(&e.cgroup_dir, r)
    }

    /// RemoveContainer.
    pub async fn remove(&self, id: &str, force: bool) -> Result<(), ContainerError> {
        let e = self.get(id)?;
        let _op = e.op.lock().await;
        if e.init.exited().is_none() {
            if !force {
                return Err(ContainerError::State(format!(
                    "container {id:?} is {}: stop it first or remove with force",
                    e.state()
                )));
            }
            kill_and_wait(&e).await?;
        }
        let e2 = Arc::clone(&e);
        let deleted =
            tokio::task::spawn_blocking(move || runtime::delete(&mut lock(&e2.container), true))
                .await
                .map_err(blocking_err)?;
        if let Err(err) = deleted {
            tracing::warn!(id, error = %err, "libcontainer delete failed; removing state by hand");
            let _ = std::fs::remove_dir_all(self.inner.cfg.state_root.join(id));
            let _ = std::fs::remove_dir(&e.cgroup_dir);
        }
        let _ = std::fs::remove_dir_all(&e.bundle);
        lock(&self.inner.map).remove(id);
        tracing::info!(id, "container removed");
        Ok(())
    }
}

/// SIGKILLs the container's cgroup (its init alone if that fails) and waits
/// up to [`KILL_WAIT`] for init to die.
async fn kill_and_wait(e: &Entry) -> Result<pb::WaitProcessResponse, ContainerError> {
    e.init.killed.store(true, Ordering::SeqCst);
    if let Err(err) = cgroup::kill_all(&e.cgroup_dir) {
        tracing::warn!(id = %e.id, error = %err, "cgroup.kill failed; killing init only");
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(e.init.pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    tokio::time::timeout(KILL_WAIT, e.init.wait()).await.map_err(|_| {
        ContainerError::State(format!("container {:?} did not die after SIGKILL", e.id.as_str()))
    })
}

/// Sends `sig` to every process listed in the cgroup.
fn signal_cgroup(dir: &Path, sig: nix::sys::signal::Signal) -> Result<(), ContainerError> {
    let procs = std::fs::read_to_string(dir.join("cgroup.procs"))
        .map_err(|e| ContainerError::io(format!("read {}/cgroup.procs", dir.display()), e))?;
    for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
    }
    Ok(())
}
