//! Reaching a file beneath a trusted directory descriptor: `openat2` with `RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS`, directories made one `O_NOFOLLOW` name at a
//! time, files read and written only when they are what they must be.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, ResolveFlags, StatxFlags};
use rustix::io::Errno;

use crate::error::{io_err, Error};

/// Mode of directories made inside a container's tree.
pub const DIR_MODE: u32 = 0o750;

fn resolve() -> ResolveFlags {
    ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS
}

/// The components of a relative path of plain names.
pub(crate) fn plain(rel: &Path) -> Result<Vec<&OsStr>, Error> {
    let mut out = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(n) => out.push(n),
            _ => return Err(Error::BadPath(rel.to_path_buf())),
        }
    }
    if out.is_empty() {
        return Err(Error::BadPath(rel.to_path_buf()));
    }
    Ok(out)
}

/// `openat2(root, rel, flags | O_NOFOLLOW | O_CLOEXEC, RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
/// RESOLVE_NO_MAGICLINKS [| extra])`: no symlink anywhere on the way (not even the last
/// component), never above `root`. Retries EAGAIN (a concurrent rename seen by the kernel).
pub fn open_beneath(
    root: BorrowedFd<'_>,
    rel: &Path,
    flags: OFlags,
    mode: u32,
    extra: ResolveFlags,
) -> Result<OwnedFd, Errno> {
    let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut tries = 0;
    loop {
        match rfs::openat2(root, rel, flags, Mode::from_raw_mode(mode), resolve() | extra) {
            Err(Errno::AGAIN) if tries < 64 => tries += 1,
            r => return r,
        }
    }
}

/// The mount ID of the object `fd` refers to.
pub(crate) fn mount_id(fd: BorrowedFd<'_>) -> Result<u64, Errno> {
    Ok(rfs::statx(fd, "", AtFlags::EMPTY_PATH, StatxFlags::MNT_ID)?.stx_mnt_id)
}

/// Opens (creating 0750 where missing) the directories of `rel` beneath `root`, one name at a
/// time with `O_NOFOLLOW`; returns the last one.
pub fn mkdirs_beneath(root: BorrowedFd<'_>, rel: &Path) -> Result<OwnedFd, Error> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut cur = rfs::openat(root, ".", flags, Mode::empty())
        .map_err(|e| io_err("open", Path::new("."), e))?;
    if rel.as_os_str().is_empty() {
        return Ok(cur);
    }
    for name in plain(rel)? {
        match rfs::mkdirat(&cur, name, Mode::from_raw_mode(DIR_MODE)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(io_err("create the directory", rel, e)),
        }
        cur = rfs::openat(&cur, name, flags, Mode::empty())
            .map_err(|e| io_err("open the directory", rel, e))?;
    }
    Ok(cur)
}

pub(crate) fn split_last(rel: &Path) -> Result<(PathBuf, &OsStr), Error> {
    let parts = plain(rel)?;
    let (last, dirs) = parts.split_last().ok_or_else(|| Error::BadPath(rel.to_path_buf()))?;
    Ok((dirs.iter().collect(), last))
}

/// Reads the regular file `rel` beneath `root`, at most `max` bytes: `None` when it does not
/// exist. A symlink anywhere on the way, a FIFO, a device or a directory is an error, and
/// nothing but a regular file is ever opened for reading (it is opened `O_PATH` first, checked
/// with fstat, then reopened through its descriptor, `O_NONBLOCK`).
pub fn read_file_beneath(
    root: BorrowedFd<'_>,
    rel: &Path,
    max: u64,
) -> Result<Option<Vec<u8>>, Error> {
    plain(rel)?;
    let fd = match open_beneath(root, rel, OFlags::PATH, 0, ResolveFlags::empty()) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(None),
        Err(e) => return Err(io_err("open", rel, e)),
    };
    let st = rfs::fstat(&fd).map_err(|e| io_err("stat", rel, e))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(Error::NotRegular(rel.to_path_buf()));
    }
    if st.st_size < 0 || st.st_size as u64 > max {
        return Err(Error::TooLarge { path: rel.to_path_buf(), max });
    }
    let magic = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
    let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    let file =
        rfs::open(magic.as_str(), flags, Mode::empty()).map_err(|e| io_err("reopen", rel, e))?;
    let mut buf = Vec::new();
    std::fs::File::from(file)
        .take(max + 1)
        .read_to_end(&mut buf)
        .map_err(|e| io_err("read", rel, e))?;
    if buf.len() as u64 > max {
        return Err(Error::TooLarge { path: rel.to_path_buf(), max });
    }
    Ok(Some(buf))
}

/// Creates the file `rel` beneath `root` (parents 0750 as needed) with `mode` and `data`;
/// refuses a name that exists already (`O_CREAT | O_EXCL | O_NOFOLLOW`), so a planted symlink
/// or file is never written through.
pub fn write_file_beneath(
    root: BorrowedFd<'_>,
    rel: &Path,
    data: &[u8],
    mode: u32,
) -> Result<(), Error> {
    let (dirs, name) = split_last(rel)?;
    let parent = mkdirs_beneath(root, &dirs)?;
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rfs::openat(&parent, name, flags, Mode::from_raw_mode(mode))
        .map_err(|e| io_err("create", rel, e))?;
    std::fs::File::from(fd).write_all(data).map_err(|e| io_err("write", rel, e))
}
