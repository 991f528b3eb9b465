//! The calls into youki's `libcontainer` (all blocking: run them on a
//! blocking thread).
//!
//! The two calls that create processes (create, exec) run in a
//! single-threaded runtime helper process ([`helper`](super::helper)): the
//! container's process ends up a child of the agent, watched by its reaper.
//! Start and delete create no process and run in the agent.

use std::path::{Path, PathBuf};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::syscall::syscall::SyscallType;

use super::error::ContainerError;
use super::helper::{self, BuildOp, BuildRequest};
use super::seccomp::ExecSeccomp;
use super::stdio::ChildStdio;
use crate::reaper::Reaper;

/// Renders a libcontainer error with its whole source chain: the useful
/// part (e.g. "executable 'x' not found in $PATH") is often a source.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        let m = src.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = src.source();
    }
    s
}

fn runtime_err(what: &str, e: libcontainer::error::LibcontainerError) -> ContainerError {
    classify(what, &chain(&e))
}

/// A missing program is the caller's mistake, not the runtime's: it gets
/// its own error (NOT_FOUND) with libcontainer's message.
pub fn classify(what: &str, msg: &str) -> ContainerError {
    if let Some(i) = msg.find("executable '") {
        return ContainerError::ExecutableNotFound(msg[i..].to_owned());
    }
    ContainerError::Runtime(format!("{what}: {msg}"))
}

fn builder(
    id: &str,
    state_root: &Path,
    stdio: ChildStdio,
) -> Result<ContainerBuilder, ContainerError> {
    let b = ContainerBuilder::new(id.to_owned(), SyscallType::default())
        .with_root_path(state_root)
        .map_err(|e| runtime_err("state root", e))?;
    Ok(match stdio {
        ChildStdio::Pipes { stdin, stdout, stderr } => {
            b.with_stdin(stdin).with_stdout(stdout).with_stderr(stderr)
        }
        ChildStdio::Console { socket } => b.with_console_socket(Some(socket)),
    })
}

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

/// [`create`]'s libcontainer call, in the helper process. Returns the init
/// pid or the error with its sources.
pub fn create_here(
    id: &str,
    state_root: &Path,
    bundle: &Path,
    stdio: ChildStdio,
) -> Result<i32, String> {
    let b = builder(id, state_root, stdio).map_err(|e| e.to_string())?;
    let container = b
        .as_init(bundle)
        .with_systemd(false)
        .with_detach(true)
        .with_no_pivot(root_is_initramfs())
        .build()
        .map_err(|e| chain(&e))?;
    container.pid().map(|p| p.as_raw()).ok_or_else(|| "libcontainer reported no pid".to_owned())
}

/// Whether the guest's `/` is the initial ramfs: pivot_root(2) refuses to
/// move it (EINVAL), so containers then enter their rootfs with MS_MOVE +
/// chroot instead (as `runc --no-pivot`). Until the agent switches root to a
/// real filesystem at boot, that is the case in every guest.
pub fn root_is_initramfs() -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|m| mountinfo_root_is_rootfs(&m))
        .unwrap_or(false)
}

/// The fstype of the mount at `/` (the last one listed wins) is `rootfs`.
pub fn mountinfo_root_is_rootfs(mountinfo: &str) -> bool {
    let mut root_fs = None;
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else { continue };
        if fields.get(4) == Some(&"/") {
            root_fs = fields.get(sep + 1).copied();
        }
    }
    root_fs == Some("rootfs")
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

/// [`exec`]'s libcontainer call, in the helper process.
pub fn exec_here(
    id: &str,
    state_root: &Path,
    process_file: PathBuf,
    seccomp: Option<ExecSeccomp>,
    stdio: ChildStdio,
) -> Result<i32, String> {
    let mut b = builder(id, state_root, stdio).map_err(|e| e.to_string())?;
    if let Some(x) = seccomp {
        b = b.with_executor(x);
    }
    let t = b.as_tenant().with_detach(true).with_process(Some(process_file));
    t.build().map(|p| p.as_raw()).map_err(|e| chain(&e))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn detects_initramfs_root() {
        let initramfs = "1 1 0:2 / / rw shared:1 - rootfs rootfs rw,size=117k\n20 1 0:19 / /proc rw - proc proc rw\n";
        assert!(mountinfo_root_is_rootfs(initramfs));
        let disk = "25 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n";
        assert!(!mountinfo_root_is_rootfs(disk));
        assert!(!mountinfo_root_is_rootfs(""));
    }

    #[test]
    fn missing_executables_are_their_own_error() {
        let e = classify(
            "exec",
            "failed: error in executing process : executable '/x' not found in $PATH",
        );
        assert_eq!(e.to_string(), "executable '/x' not found in $PATH");
        assert!(matches!(classify("start", "boom"), ContainerError::Runtime(_)));
    }

    #[test]
    fn chains_sources() {
        let e = Outer(std::io::Error::other("executable 'x' not found in $PATH"));
        assert_eq!(chain(&e), "outer: executable 'x' not found in $PATH");
    }
}
