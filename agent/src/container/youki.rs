//! The libcontainer calls that create processes (made in the runtime helper
//! process, see [`super::helper`]) and how their errors read.

use std::path::{Path, PathBuf};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;

use super::error::ContainerError;
use super::seccomp::ExecSeccomp;
use super::stdio::ChildStdio;

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

/// A libcontainer error as a [`ContainerError`] (see [`classify`]).
pub fn runtime_err(what: &str, e: libcontainer::error::LibcontainerError) -> ContainerError {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn detects_initramfs_root() {
        let initramfs = "1 1 0:2 / / rw shared:1 - rootfs rootfs rw,size=117k\n\
                         20 1 0:19 / /proc rw - proc proc rw\n";
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
