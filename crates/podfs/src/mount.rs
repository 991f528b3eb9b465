//! Mounts beneath a pod's directory: volumes bind-mounted through descriptors, unmounts of
//! exactly the mounts mountinfo named, and the hardening bind mount of a pod's run dir.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{self as rfs, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use crate::beneath::{mkdirs_beneath, mount_id, open_beneath, plain, split_last, DIR_MODE};
use crate::error::{io_err, Error};
use crate::{mountinfo, sys};

/// Rounds of unmounting (stacked mounts need one round each).
const UNMOUNT_ROUNDS: usize = 8;

/// How a volume may be written through its mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    ReadWrite,
    /// The volume's own mount read-only; mounts below it keep their own flags (the CRI's
    /// `readonly` without `recursive_read_only`, as runc and Kubernetes' default give it).
    ReadOnlyTop,
    /// Read-only down to every submount (`recursive_read_only`).
    ReadOnly,
}

impl From<bool> for Access {
    fn from(readonly: bool) -> Access {
        if readonly {
            Access::ReadOnly
        } else {
            Access::ReadWrite
        }
    }
}

/// [`bind_with`], read-write or recursively read-only.
pub fn bind_beneath(
    root: BorrowedFd<'_>,
    rel: &Path,
    src: &Path,
    readonly: bool,
) -> Result<u64, Error> {
    bind_with(root, rel, src, Access::from(readonly))
}

/// Bind-mounts the host path `src` (recursively, created as a directory when missing, as
/// containerd does) onto `rel` beneath `root`, made (0750 parents) as a directory or an empty
/// file to match: [`VolumeTree::clone_of`], then [`VolumeTree::attach_beneath`], both in the
/// caller's mount namespace. Returns the new mount's ID.
pub fn bind_with(
    root: BorrowedFd<'_>,
    rel: &Path,
    src: &Path,
    access: Access,
) -> Result<u64, Error> {
    let tree = VolumeTree::clone_of(src, access)?;
    tree.make_mount_point(root, rel)?;
    tree.attach_beneath(root, rel)
}

/// A detached copy of a volume's mount tree (its submounts included), flags already set, not
/// yet attached anywhere: made in the mount namespace that sees the volume's source, attachable
/// in another one (a pod VMM's, [`crate::MountNs`]).
#[derive(Debug)]
pub struct VolumeTree {
    fd: OwnedFd,
    is_dir: bool,
}

impl VolumeTree {
    /// The copy of the mount tree at the host path `src` (created as a directory when missing).
    /// It is `nosuid,nodev` on every submount too, and read-only as `access` says
    /// (`mount_setattr`, with `AT_RECURSIVE` for [`Access::ReadOnly`]), set before it is
    /// attached, so it is never visible writable.
    pub fn clone_of(src: &Path, access: Access) -> Result<VolumeTree, Error> {
        if let Err(e) = std::fs::symlink_metadata(src) {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(io_err("stat the volume", src, e));
            }
            std::fs::create_dir_all(src).map_err(|e| io_err("create the volume", src, e))?;
        }
        let csrc = std::ffi::CString::new(src.as_os_str().as_bytes())
            .map_err(|_| Error::BadPath(src.to_path_buf()))?;
        let cwd = rfs::CWD;
        let fd = sys::open_tree(cwd, &csrc, sys::OPEN_TREE_CLONE | libc::AT_RECURSIVE as u32)
            .map_err(|e| io_err("clone the mount tree of", src, e))?;
        let mut attrs = sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV;
        if access == Access::ReadOnly {
            attrs |= sys::MOUNT_ATTR_RDONLY;
        }
        sys::mount_setattr(fd.as_fd(), attrs, true)
            .map_err(|e| io_err("set nosuid,nodev[,ro] on", src, e))?;
        if access == Access::ReadOnlyTop {
            sys::mount_setattr(fd.as_fd(), sys::MOUNT_ATTR_RDONLY, false)
                .map_err(|e| io_err("set ro on", src, e))?;
        }
        let is_dir = rfs::fstat(&fd).map_err(|e| io_err("stat", src, e))?.st_mode & libc::S_IFMT
            == libc::S_IFDIR;
        Ok(VolumeTree { fd, is_dir })
    }

    /// Creates the mount point `rel` beneath `root` (0750 parents) as a directory or an empty
    /// file to match the tree, without following a symlink; an existing one is kept.
    pub fn make_mount_point(&self, root: BorrowedFd<'_>, rel: &Path) -> Result<(), Error> {
        let (dirs, name) = split_last(rel)?;
        let parent = mkdirs_beneath(root, &dirs)?;
        if self.is_dir {
            match rfs::mkdirat(&parent, name, Mode::from_raw_mode(DIR_MODE)) {
                Ok(()) | Err(Errno::EXIST) => Ok(()),
                Err(e) => Err(io_err("create the mount point", rel, e)),
            }
        } else {
            let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            match rfs::openat(&parent, name, flags, Mode::from_raw_mode(0o640)) {
                Ok(_) | Err(Errno::ISDIR) => Ok(()),
                Err(e) => Err(io_err("create the mount point", rel, e)),
            }
        }
    }

    /// Attaches the tree at the existing mount point `rel` beneath `root` (in the caller's mount
    /// namespace, which must be `root`'s). The mount point is opened without following a
    /// symlink, must be of the tree's type and not a mount point already; the tree is attached
    /// to that descriptor. Returns the new mount's ID.
    pub fn attach_beneath(self, root: BorrowedFd<'_>, rel: &Path) -> Result<u64, Error> {
        let (dirs, name) = split_last(rel)?;
        let dirs = if dirs.as_os_str().is_empty() { Path::new(".") } else { &dirs };
        let parent =
            open_beneath(root, dirs, OFlags::PATH | OFlags::DIRECTORY, 0, ResolveFlags::empty())
                .map_err(|e| io_err("open the mount point's directory", rel, e))?;
        let target =
            open_beneath(parent.as_fd(), Path::new(name), OFlags::PATH, 0, ResolveFlags::NO_XDEV)
                .map_err(|e| io_err("open the mount point", rel, e))?;
        let tst = rfs::fstat(&target).map_err(|e| io_err("stat the mount point", rel, e))?;
        if (tst.st_mode & libc::S_IFMT == libc::S_IFDIR) != self.is_dir {
            return Err(io_err("mount onto", rel, Errno::NOTDIR));
        }
        sys::move_mount(self.fd.as_fd(), target.as_fd())
            .map_err(|e| io_err("attach the volume at", rel, e))?;
        let mounted =
            open_beneath(parent.as_fd(), Path::new(name), OFlags::PATH, 0, ResolveFlags::empty())
                .map_err(|e| io_err("open the mounted volume", rel, e))?;
        mount_id(mounted.as_fd()).map_err(|e| io_err("stat the mounted volume", rel, e))
    }
}

/// Unmounts every mount at or below `rel` beneath `root` (whose own path is `root_path`),
/// deepest first, lazily. Mount points come from /proc/self/mountinfo, but each is opened
/// beneath `root` without following symlinks and unmounted through that descriptor only if it
/// is the very mount mountinfo named (same mount ID), so a guest that swaps names between the
/// two steps cannot redirect an unmount.
pub fn unmount_beneath(root: BorrowedFd<'_>, root_path: &Path, rel: &Path) -> Result<(), Error> {
    plain(rel)?;
    let dir = root_path.join(rel);
    let info =
        || mountinfo::read().map_err(|e| io_err("read", Path::new("/proc/self/mountinfo"), e));
    for _ in 0..UNMOUNT_ROUNDS {
        let mounts = mountinfo::mounts_under(&info()?, &dir);
        if mounts.is_empty() {
            return Ok(());
        }
        for m in mounts {
            match unmount_exactly(root, root_path, &m) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                Err(e) => return Err(io_err("unmount", &m.point, e)),
            }
        }
    }
    if mountinfo::mounts_under(&info()?, &dir).is_empty() {
        Ok(())
    } else {
        Err(Error::StillMounted(dir))
    }
}

/// Unmounts (lazily) the mount `m` of mountinfo, through a descriptor of its mount point
/// opened beneath `root` (whose path is `root_path`) without following a symlink, and only if
/// that descriptor is on the very mount mountinfo named (same ID): a name swapped between the
/// two steps cannot redirect it. Ok(false) when the point is gone or is another mount now.
pub(crate) fn unmount_exactly(
    root: BorrowedFd<'_>,
    root_path: &Path,
    m: &mountinfo::Mount,
) -> std::io::Result<bool> {
    let Ok(r) = m.point.strip_prefix(root_path) else { return Ok(false) };
    let Ok(fd) = open_beneath(root, r, OFlags::PATH, 0, ResolveFlags::empty()) else {
        return Ok(false);
    };
    if mount_id(fd.as_fd()).ok() != Some(m.id) {
        return Ok(false);
    }
    sys::unmount_fd(fd.as_fd()).map(|()| true)
}

/// [`unmount_beneath`] of a directory given by path whose parent is trusted.
pub fn unmount_tree(dir: &Path) -> Result<(), Error> {
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
        return Err(Error::BadPath(dir.to_path_buf()));
    };
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let pfd = match rfs::open(parent, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(io_err("open", parent, e)),
    };
    unmount_beneath(pfd.as_fd(), parent, Path::new(name))
}

/// Bind-mounts `dir` onto itself `nosuid,nodev,noexec`: nothing the guest creates below it
/// (setuid files, device nodes) has meaning on the host, and the VMM's virtio-fs server, which
/// opens files there as root, cannot open a device node. Call it once, on a pod's run dir
/// right after creating it and before the VMM starts (the VMM must open its shared dir through
/// this mount), so that `shared/` and `staging/` are on one mount.
pub fn harden(dir: &Path) -> Result<(), Error> {
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let fd = rfs::open(dir, flags, Mode::empty()).map_err(|e| io_err("open", dir, e))?;
    let tree = sys::open_tree(fd.as_fd(), c"", sys::OPEN_TREE_CLONE | libc::AT_EMPTY_PATH as u32)
        .map_err(|e| io_err("clone the mount of", dir, e))?;
    let attrs = sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV | sys::MOUNT_ATTR_NOEXEC;
    sys::mount_setattr(tree.as_fd(), attrs, false)
        .map_err(|e| io_err("set nosuid,nodev,noexec on", dir, e))?;
    sys::move_mount(tree.as_fd(), fd.as_fd()).map_err(|e| io_err("bind-mount", dir, e))
}
