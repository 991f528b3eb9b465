//! The calls into youki's `libcontainer` (all blocking: run them on a
//! blocking thread).
//!
//! libcontainer clones an intermediate process (a child of the agent, which
//! it waits for itself) and the container's process as the intermediate's
//! sibling, so every container and exec process is a direct child of the
//! agent. Both calls that create processes therefore run under
//! [`Reaper::lock`](crate::reaper::Reaper::lock): the reaper cannot steal
//! the intermediate's status from libcontainer, and the new pid is watched
//! before the reaper may collect it.

use std::path::{Path, PathBuf};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::syscall::syscall::SyscallType;

use super::error::ContainerError;
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

/// Creates the container from `bundle/config.json`; its process waits for
/// [`start`]. Returns the container and its init pid (watched).
pub fn create(
    reaper: &Reaper,
    id: &str,
    state_root: &Path,
    bundle: &Path,
    stdio: ChildStdio,
) -> Result<(Container, i32), ContainerError> {
    let b = builder(id, state_root, stdio)?;
    let mut guard = reaper.lock();
    let container = b
        .as_init(bundle)
        .with_systemd(false)
        .with_detach(true)
        .with_no_pivot(root_is_initramfs())
        .build()
        .map_err(|e| runtime_err("create", e))?;
    let pid = container
        .pid()
        .ok_or_else(|| ContainerError::Runtime("create: libcontainer reported no pid".into()))?
        .as_raw();
    guard.watch(pid);
    drop(guard);
    Ok((container, pid))
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

/// Runs one more process in a running container. Returns its pid (watched).
pub fn exec(
    reaper: &Reaper,
    id: &str,
    state_root: &Path,
    opts: ExecOptions,
    stdio: ChildStdio,
) -> Result<i32, ContainerError> {
    let mut b = builder(id, state_root, stdio)?;
    if let Some(x) = opts.seccomp {
        b = b.with_executor(x);
    }
    let t = b.as_tenant().with_detach(true).with_process(Some(opts.process_file));
    let mut guard = reaper.lock();
    let pid = t.build().map_err(|e| runtime_err("exec", e))?.as_raw();
    guard.watch(pid);
    drop(guard);
    Ok(pid)
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
