//! The new mount API (open_tree, move_mount, mount_setattr) through raw system calls: libc has
//! the numbers and constants but no wrappers, rustix has no mount_setattr.

use std::ffi::CStr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// `struct mount_attr` of linux/mount.h (MOUNT_ATTR_SIZE_VER0).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

pub const OPEN_TREE_CLONE: u32 = 1;
pub const MOVE_MOUNT_F_EMPTY_PATH: u32 = 0x4;
pub const MOVE_MOUNT_T_EMPTY_PATH: u32 = 0x40;
pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub const MOUNT_ATTR_NODEV: u64 = 0x4;
pub const MOUNT_ATTR_NOEXEC: u64 = 0x8;

fn check(r: libc::c_long) -> std::io::Result<libc::c_long> {
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// `open_tree(dirfd, path, flags)`: a detached copy of the mount tree at `path` when
/// OPEN_TREE_CLONE is given.
pub fn open_tree(dirfd: BorrowedFd<'_>, path: &CStr, flags: u32) -> std::io::Result<OwnedFd> {
    let flags = flags | libc::O_CLOEXEC as u32;
    // SAFETY: the path is a NUL-terminated string that outlives the call; no memory is written.
    let r = check(unsafe {
        libc::syscall(libc::SYS_open_tree, dirfd.as_raw_fd(), path.as_ptr(), flags)
    })?;
    // SAFETY: on success the kernel returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(r as i32) })
}

/// `move_mount(from, "", to, "", F_EMPTY_PATH | T_EMPTY_PATH)`: attaches the detached tree
/// `from` onto the object `to` refers to, without any path lookup.
pub fn move_mount(from: BorrowedFd<'_>, to: BorrowedFd<'_>) -> std::io::Result<()> {
    let empty = c"";
    // SAFETY: both paths are NUL-terminated strings that outlive the call.
    check(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            from.as_raw_fd(),
            empty.as_ptr(),
            to.as_raw_fd(),
            empty.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    })?;
    Ok(())
}

/// `mount_setattr(fd, "", AT_EMPTY_PATH [| AT_RECURSIVE], {attr_set: set})`.
pub fn mount_setattr(fd: BorrowedFd<'_>, set: u64, recursive: bool) -> std::io::Result<()> {
    let attr = MountAttr { attr_set: set, attr_clr: 0, propagation: 0, userns_fd: 0 };
    let mut flags = libc::AT_EMPTY_PATH as libc::c_uint;
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    let empty = c"";
    // SAFETY: the kernel reads `size_of::<MountAttr>()` bytes of `attr`, which lives on the
    // stack for the whole call; the path is NUL-terminated.
    check(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            empty.as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    })?;
    Ok(())
}

/// Unmounts the mount whose root `fd` refers to (lazily), through its /proc/self/fd magic
/// link: the kernel resolves the link to the very object the descriptor holds, so no name in
/// the file system is looked up.
pub fn unmount_fd(fd: BorrowedFd<'_>) -> std::io::Result<()> {
    let p = std::ffi::CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: the path is NUL-terminated and outlives the call.
    let r = unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) };
    check(r as libc::c_long).map(drop)
}
