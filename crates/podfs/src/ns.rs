//! Mount namespaces: the one a pod's VMM gets for itself ([`enter_private`], first thing in
//! `carapace vmm`), and the daemon's way into it ([`MountNs::run`]) to attach that pod's volumes
//! there only. A volume bind that exists only where the VMM serves it pins nothing in the host's
//! namespace: a host path may be unmounted or removed by its owner while a pod uses it (the
//! kernel then detaches the pod's copy), as with a container runtime that mounts in the
//! container's namespace.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use rustix::fs::{self as rfs, Mode, OFlags};
use rustix::io::Errno;

use crate::error::{io_err, Error};
use crate::mount::unmount_exactly;
use crate::mountinfo;

/// A handle on a process's mount namespace (an open `/proc/<pid>/ns/mnt`) and its root
/// directory there (`/proc/<pid>/root`).
#[derive(Debug)]
pub struct MountNs {
    fd: OwnedFd,
    /// (device, inode) of the namespace file: equal for the same namespace.
    id: (u64, u64),
    /// The process's root, as a directory of that namespace: paths are resolved from it, not
    /// from the namespace's own root (the caller, and so the process, may run chrooted).
    root: OwnedFd,
}

impl MountNs {
    /// The mount namespace and root of process `pid`. The caller checks afterwards that `pid`
    /// is still the process it means (its start time): the handle then refers to that
    /// process's namespace, whatever happens to the PID later.
    pub fn of_process(pid: i32) -> Result<MountNs, Error> {
        let path = format!("/proc/{pid}/ns/mnt");
        let file = File::open(&path).map_err(|e| io_err("open", Path::new(&path), e))?;
        let meta = file.metadata().map_err(|e| io_err("stat", Path::new(&path), e))?;
        let root_path = format!("/proc/{pid}/root");
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let root = rfs::open(&root_path, flags, Mode::empty())
            .map_err(|e| io_err("open", Path::new(&root_path), e))?;
        Ok(MountNs { fd: file.into(), id: (meta.dev(), meta.ino()), root })
    }

    /// The directory at the absolute path `path` as the process sees it (resolved from its
    /// root, through its mount table), `O_PATH`. The path must be one the caller trusts up to
    /// its last name; what the namespace's owner mounted on the way is the caller's to check
    /// (e.g. device and inode against its own descriptor of the same directory).
    pub fn open_dir(&self, path: &Path) -> Result<OwnedFd, Error> {
        let rel = path.strip_prefix("/").map_err(|_| Error::BadPath(path.to_path_buf()))?;
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        rfs::openat(&self.root, rel, flags, Mode::empty())
            .map_err(|e| io_err("open in the VMM's mount namespace", path, e))
    }

    /// Whether this is the calling thread's own mount namespace.
    pub fn is_current(&self) -> Result<bool, Error> {
        let path = Path::new("/proc/thread-self/ns/mnt");
        let meta = std::fs::metadata(path).map_err(|e| io_err("stat", path, e))?;
        Ok((meta.dev(), meta.ino()) == self.id)
    }

    /// Runs `f` on a thread of its own that has entered this namespace (with its own root,
    /// working directory and umask: `unshare(CLONE_FS)` first, so the rest of the process stays
    /// where it is): there `move_mount` may attach to a directory of the namespace. The
    /// thread's root is then the namespace's root, which need not be the process's: `f` works
    /// through descriptors ([`MountNs::open_dir`]), not paths.
    pub fn run<R, F>(&self, f: F) -> Result<R, Error>
    where
        F: FnOnce() -> Result<R, Error> + Send,
        R: Send,
    {
        let fd = self.fd.as_raw_fd();
        std::thread::scope(|scope| {
            let worker = std::thread::Builder::new()
                .name("mount-ns".into())
                .spawn_scoped(scope, move || {
                    // SAFETY: plain system calls on this thread's own attributes and an fd
                    // that outlives the scope; no memory is shared with the kernel.
                    if unsafe { libc::unshare(libc::CLONE_FS) } != 0 {
                        let e = std::io::Error::last_os_error();
                        return Err(io_err("unshare the file system attributes of", ns_path(), e));
                    }
                    // SAFETY: as above.
                    if unsafe { libc::setns(fd, libc::CLONE_NEWNS) } != 0 {
                        let e = std::io::Error::last_os_error();
                        return Err(io_err("enter the mount namespace", ns_path(), e));
                    }
                    f()
                })
                .map_err(|e| io_err("start a thread for the mount namespace", ns_path(), e))?;
            worker.join().unwrap_or_else(|_| {
                Err(io_err("work in the mount namespace", ns_path(), std::io::ErrorKind::Other))
            })
        })
    }
}

fn ns_path() -> &'static Path {
    Path::new("ns/mnt")
}

/// Gives the calling process a mount namespace of its own: `unshare(CLONE_NEWNS)` (the process
/// must have a single thread, as `unshare` requires), every mount made private (nothing
/// propagates between it and the host's namespace in either direction), then every mount
/// below `prune_below` that is not at or below `keep` detached, so that this process pins no
/// other pod's disk or volume. Returns how many mounts it detached.
pub fn enter_private(prune_below: &Path, keep: &Path) -> Result<usize, Error> {
    // SAFETY: a system call on this process's own namespaces; no memory is shared.
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(io_err("unshare the mount namespace for", keep, e));
    }
    // SAFETY: the strings are NUL-terminated and outlive the call; no data argument.
    let r = unsafe {
        libc::mount(
            c"none".as_ptr(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err(io_err(
            "make private the mounts of",
            Path::new("/"),
            std::io::Error::last_os_error(),
        ));
    }
    let info =
        mountinfo::read().map_err(|e| io_err("read", Path::new("/proc/self/mountinfo"), e))?;
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let root = match rfs::open(prune_below, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(0),
        Err(e) => return Err(io_err("open", prune_below, e)),
    };
    let mut detached = 0;
    for m in mountinfo::mounts_under(&info, prune_below) {
        if m.point == prune_below || m.point.starts_with(keep) {
            continue;
        }
        // Through a descriptor of that very mount: other pods' guests name the directories on
        // the way.
        match unmount_exactly(root.as_fd(), prune_below, &m) {
            Ok(true) => detached += 1,
            Ok(false) => {}
            // gone with a parent already; otherwise it only stays pinned while this VMM runs
            Err(e) => tracing::debug!(point = %m.point.display(), error = %e,
                "not detached in the VMM's mount namespace"),
        }
    }
    Ok(detached)
}
