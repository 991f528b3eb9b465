//! ExecProcess: a new process in a running container, with the container's
//! process settings (capabilities, seccomp) and the request's own.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use carapace_agent_client::pb;

use super::common::{blocking_err, now_unix_ms};
use super::error::ContainerError;
use super::process::Proc;
use super::table::Containers;
use super::validated::{ContainerId, ValidProcess};
use super::{runtime, seccomp, spec, stdio};

impl Containers {
    /// ExecProcess. Returns (exec id, pid).
    pub async fn exec(&self, req: pb::ExecProcessRequest) -> Result<(String, i32), ContainerError> {
        let e = self.get(&req.container_id)?;
        let p = ValidProcess::parse(req.process.as_ref())?;
        let exec_id = if req.exec_id.is_empty() {
            format!("exec-{}", self.inner.exec_seq.fetch_add(1, Ordering::SeqCst))
        } else {
            ContainerId::parse("exec id", &req.exec_id)?.to_string()
        };
        if e.state() != "running" {
            return Err(ContainerError::State(format!(
                "container {:?} is {}: exec needs a running container",
                e.id.as_str(),
                e.state()
            )));
        }
        if e.execs().contains_key(&exec_id) {
            return Err(ContainerError::AlreadyExists(format!("exec {exec_id:?}")));
        }
        let reaper = self.inner.reaper.clone();
        let state_root = self.inner.cfg.state_root.clone();
        let cid = e.id.to_string();
        let bundle = e.bundle.clone();
        let with_stdin = p.get().stdin;
        let tty = p.get().tty;
        let eid = exec_id.clone();
        let (pid, io) = tokio::task::spawn_blocking(move || {
            let spec = read_spec(&bundle)?;
            let seccomp = seccomp::ExecSeccomp::from_spec(&spec)?;
            let process_file = write_exec_process(&bundle, &spec, &eid, &p, seccomp.is_some())?;
            let opts = runtime::ExecOptions { process_file: process_file.clone(), seccomp };
            let res = if tty {
                stdio::create_tty(&bundle.join(format!("exec-{eid}.sock")), with_stdin)
            } else {
                stdio::create(with_stdin)
            }
            .and_then(|(child, agent)| {
                runtime::exec(&reaper, &cid, &state_root, opts, child).map(|pid| (pid, agent))
            });
            let _ = std::fs::remove_file(&process_file);
            let (pid, agent) = res.inspect_err(|_| {
                let _ = std::fs::remove_file(bundle.join(format!("exec-{eid}.sock")));
            })?;
            match agent.start(&format!("x-{pid}")) {
                Ok(io) => Ok::<_, ContainerError>((pid, io)),
                Err(e) => {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                    Err(e)
                }
            }
        })
        .await
        .map_err(blocking_err)??;
        let proc_ = Proc::new(pid, io);
        proc_.started_at_ms.store(now_unix_ms(), Ordering::SeqCst);
        proc_.spawn_waiter(self.inner.reaper.clone(), None);
        e.execs().insert(exec_id.clone(), proc_);
        tracing::info!(id = %e.id, exec_id = %exec_id, pid, "exec started");
        Ok((exec_id, pid))
    }
}

/// The container's config.json (the agent wrote it).
fn read_spec(bundle: &Path) -> Result<serde_json::Value, ContainerError> {
    let cfg = bundle.join("config.json");
    let text = std::fs::read(&cfg)
        .map_err(|e| ContainerError::io(format!("read {}", cfg.display()), e))?;
    serde_json::from_slice(&text)
        .map_err(|e| ContainerError::Runtime(format!("parse {}: {e}", cfg.display())))
}

/// Writes the OCI process of an exec next to the container's
/// config.json (from which it takes the container's process). `confined`:
/// the exec loads a seccomp filter itself and needs the setup capabilities.
fn write_exec_process(
    bundle: &Path,
    spec: &serde_json::Value,
    exec_id: &str,
    p: &ValidProcess,
    confined: bool,
) -> Result<PathBuf, ContainerError> {
    let mut process = spec::exec_process_json(&spec["process"], p);
    if confined {
        seccomp::with_setup_capabilities(&mut process);
    }
    let file = bundle.join(format!("exec-{exec_id}.process.json"));
    let body = serde_json::to_vec(&process)
        .map_err(|e| ContainerError::Runtime(format!("serialize process: {e}")))?;
    std::fs::write(&file, body)
        .map_err(|e| ContainerError::io(format!("write {}", file.display()), e))?;
    Ok(file)
}
