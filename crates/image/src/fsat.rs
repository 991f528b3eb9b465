//! File-system operations relative to directory file descriptors that never follow a symlink.
//!
//! Unpacking and flattening write trees whose names come from untrusted input (a registry's
//! tar, or a directory the guest can change while the host writes it). Every operation here
//! takes a directory fd that was opened without following symlinks and one plain name (no
//! `/`, not `.` or `..`) inside it, and acts on that name itself (`O_NOFOLLOW`,
//! `AT_SYMLINK_NOFOLLOW`, `linkat` without `AT_SYMLINK_FOLLOW`). A symlink planted anywhere
//! is then only ever a symlink: it is replaced or refused, never walked through.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};

/// How deep [`remove_at`] descends (guest-made trees can be arbitrarily deep).
const MAX_REMOVE_DEPTH: usize = 512;

/// A name is one path component: not empty, no `/`, not `.` or `..`.
pub(crate) fn check_name(name: &OsStr) -> io::Result<()> {
    let b = name.as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') || b.contains(&0) {
        return Err(io::Error::other(format!("bad file name {name:?}")));
    }
    Ok(())
}

/// Opens the directory `path` itself (its last component must not be a symlink).
pub(crate) fn open_dir_path(path: &Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Opens the directory `name` in `dir`; a symlink or non-directory there is an error.
pub(crate) fn open_dir(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    check_name(name)?;
    rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| not_a_dir(name, e))
}

fn not_a_dir(name: &OsStr, e: rustix::io::Errno) -> io::Error {
    if e == rustix::io::Errno::LOOP || e == rustix::io::Errno::NOTDIR {
        io::Error::other(format!("{name:?} is not a directory (a symlink is never followed)"))
    } else {
        e.into()
    }
}

/// Opens the directory at the relative `path` beneath `root`, with no symlink and no `..`
/// anywhere on the way (`openat2` RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS).
pub(crate) fn open_dir_beneath(root: BorrowedFd<'_>, path: &Path) -> io::Result<OwnedFd> {
    if path.as_os_str().is_empty() {
        return Ok(rustix::io::fcntl_dupfd_cloexec(root, 0)?);
    }
    Ok(rustix::fs::openat2(
        root,
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )?)
}

/// Walks `rel` beneath `root` one component at a time, creating missing directories (mode
/// 0755, root-owned) and refusing anything on the way that is not a real directory.
pub(crate) fn ensure_dirs(root: BorrowedFd<'_>, rel: &Path) -> io::Result<OwnedFd> {
    let mut cur = rustix::io::fcntl_dupfd_cloexec(root, 0)?;
    for c in rel.components() {
        let Component::Normal(name) = c else {
            return Err(io::Error::other(format!("bad path {}", rel.display())));
        };
        cur = match open_dir(cur.as_fd(), name) {
            Ok(fd) => fd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                match rustix::fs::mkdirat(&cur, name, Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                    Err(e) => return Err(e.into()),
                }
                open_dir(cur.as_fd(), name)?
            }
            Err(e) => return Err(e),
        };
    }
    Ok(cur)
}

/// `lstat` of `name` in `dir`; `None` when it does not exist.
pub(crate) fn lstat_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Option<rustix::fs::Stat>> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(rustix::io::Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub(crate) fn file_type(st: &rustix::fs::Stat) -> FileType {
    FileType::from_raw_mode(st.st_mode)
}

/// Removes `name` in `dir` whatever it is (a directory with its whole tree); absent is fine.
pub(crate) fn remove_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    remove_depth(dir, name, 0)
}

fn remove_depth(dir: BorrowedFd<'_>, name: &OsStr, depth: usize) -> io::Result<()> {
    check_name(name)?;
    let Some(st) = lstat_at(dir, name)? else { return Ok(()) };
    if file_type(&st) != FileType::Directory {
        return match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(e) => Err(e.into()),
        };
    }
    if depth >= MAX_REMOVE_DEPTH {
        return Err(io::Error::other(format!("directory tree deeper than {MAX_REMOVE_DEPTH}")));
    }
    let sub = open_dir(dir, name)?;
    for child in list_dir(sub.as_fd())? {
        remove_depth(sub.as_fd(), &child, depth + 1)?;
    }
    match rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The names in a directory (without `.` and `..`).
pub(crate) fn list_dir(dir: BorrowedFd<'_>) -> io::Result<Vec<OsString>> {
    let mut out = Vec::new();
    for entry in rustix::fs::Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            out.push(OsString::from_vec(name.to_vec()));
        }
    }
    Ok(out)
}

/// Creates a new regular file `name` in `dir` (it must not exist), private until its mode
/// is set.
pub(crate) fn create_file(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<File> {
    check_name(name)?;
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?;
    Ok(File::from(fd))
}

/// Opens `name` in `dir` without following it (O_PATH): a handle on exactly that inode, for
/// setting owner and mode on links, FIFOs and device nodes without opening them.
pub(crate) fn open_path(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    check_name(name)?;
    Ok(rustix::fs::openat(
        dir,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Owner of the inode behind `fd` (any kind of fd, O_PATH included; symlinks themselves).
pub(crate) fn chown_fd(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> io::Result<()> {
    let (u, g) = (rustix::fs::Uid::from_raw(uid), rustix::fs::Gid::from_raw(gid));
    Ok(rustix::fs::chownat(fd, "", Some(u), Some(g), AtFlags::EMPTY_PATH)?)
}

/// Mode of the inode behind an O_PATH fd (not a symlink): through its /proc/self/fd link,
/// which names exactly that inode (fchmod does not take O_PATH fds).
pub(crate) fn chmod_fd(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    let st = rustix::fs::fstat(fd)?;
    if file_type(&st) == FileType::Symlink {
        return Ok(());
    }
    let link = format!("/proc/self/fd/{}", fd.as_raw_fd());
    std::fs::set_permissions(link, std::fs::Permissions::from_mode(mode & 0o7777))
}

pub(crate) fn set_xattr(fd: BorrowedFd<'_>, name: &OsStr, value: &[u8]) -> io::Result<()> {
    Ok(rustix::fs::fsetxattr(fd, name, value, rustix::fs::XattrFlags::empty())?)
}

pub(crate) fn get_xattr(fd: BorrowedFd<'_>, name: &str) -> io::Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; 64 << 10];
    match rustix::fs::fgetxattr(fd, name, &mut buf[..]) {
        Ok(n) => {
            buf.truncate(n);
            Ok(Some(buf))
        }
        Err(rustix::io::Errno::NODATA) | Err(rustix::io::Errno::NOTSUP) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub(crate) fn list_xattrs(fd: BorrowedFd<'_>) -> io::Result<Vec<OsString>> {
    let mut buf = vec![0u8; 64 << 10];
    let n = match rustix::fs::flistxattr(fd, &mut buf[..]) {
        Ok(n) => n,
        Err(rustix::io::Errno::NOTSUP) => 0,
        Err(e) => return Err(e.into()),
    };
    Ok(buf[..n]
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
        .map(|n| OsString::from_vec(n.to_vec()))
        .collect())
}

/// Whether an xattr from untrusted content may be set on a host file: `user.*` and file
/// capabilities (images need them, e.g. ping); never `trusted.*` (overlayfs' own, and host
/// meaning) nor other `security.*` (LSM labels).
pub(crate) fn xattr_allowed(name: &[u8]) -> bool {
    name.starts_with(b"user.") || name == b"security.capability"
}
