//! The container operations the agent asks of youki's `libcontainer` (all
//! blocking: run them on a blocking thread).
//!
//! The two calls that create processes (create, exec) run in a
//! single-threaded runtime helper process ([`helper`](super::helper)), which
//! makes the libcontainer calls of [`youki`](super::youki): the container's
//! process ends up a child of the agent, watched by its reaper. Start and
//! delete create no process and run in the agent.

use std::path::{Path, PathBuf};

use libcontainer::container::Container;

use super::error::ContainerError;
use super::helper::{self, BuildOp, BuildRequest};
use super::seccomp::ExecSeccomp;
use super::stdio::ChildStdio;
use super::youki::{chain, runtime_err};
use crate::reaper::Reaper;

/// Creates the container from `bundle/config.json` (in a runtime helper
/// process); its process waits for [`start`]. Returns the container and
/// its init pid (watched).
pub fn create(
    reaper: &Reaper,
    id: &str,
    state_root: &Path,
    bundle: &Path,
    stdio: ChildStdio,
) -> Result<(Container, i32), ContainerError> {
    let req = BuildRequest {
        id: id.to_owned(),
        state_root: state_root.to_owned(),
        console_socket: console_socket(&stdio),
        op: BuildOp::Create { bundle: bundle.to_owned() },
    };
    let pid = helper::run(reaper, &req, stdio)?;
    match Container::load(state_root.join(id)) {
        Ok(c) => Ok((c, pid)),
        Err(e) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            Err(runtime_err("load the created container", e))
        }
    }
}

fn console_socket(stdio: &ChildStdio) -> Option<PathBuf> {
    match stdio {
        ChildStdio::Console { socket } => Some(socket.clone()),
        ChildStdio::Pipes { .. } => None,
    }
}

/// Lets the created container's process run its program.
pub fn start(container: &mut Container) -> Result<(), ContainerError> {
    container.start().map_err(|e| runtime_err("start", e))
}

/// What an exec runs.
#[derive(Debug, Clone)]
pub struct ExecOptions {
    /// The whole OCI process (a JSON file): the container's own process
    /// with the exec's args, env, cwd, user and terminal. Always a file:
    /// libcontainer 0.7 builds the process of an exec without one from
    /// oci-spec's defaults, which turn no_new_privileges on and set
    /// RLIMIT_NOFILE. With `seccomp`, its capabilities must include
    /// [`EXEC_SETUP_CAPABILITIES`](super::seccomp::EXEC_SETUP_CAPABILITIES).
    pub process_file: PathBuf,
    /// The container's seccomp filter, loaded by the exec process itself
    /// (libcontainer's exec path drops the spec's).
    pub seccomp: Option<ExecSeccomp>,
}

/// Runs one more process in a running container (in a runtime helper
/// process). Returns its pid (watched).
pub fn exec(
    reaper: &Reaper,
    id: &str,
    state_root: &Path,
    opts: ExecOptions,
    stdio: ChildStdio,
) -> Result<i32, ContainerError> {
    let req = BuildRequest {
        id: id.to_owned(),
        state_root: state_root.to_owned(),
        console_socket: console_socket(&stdio),
        op: BuildOp::Exec { process_file: opts.process_file, seccomp: opts.seccomp.map(Box::new) },
    };
    helper::run(reaper, &req, stdio)
}

/// Deletes the container's state and cgroup (it must have stopped, or
/// `force` kills what is left).
pub fn delete(container: &mut Container, force: bool) -> Result<(), ContainerError> {
    container.delete(force).map_err(|e| runtime_err("delete", e))
}

/// Best-effort cleanup after a failed create: whatever state libcontainer
/// left under `state_root/id`.
pub fn cleanup_failed(id: &str, state_root: &Path) {
    let dir = state_root.join(id);
    if let Ok(mut c) = Container::load(dir.clone()) {
        if let Err(e) = c.delete(true) {
            tracing::warn!(id, error = %chain(&e), "cleanup after failed create");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
