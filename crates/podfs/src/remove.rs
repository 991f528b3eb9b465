//! Removal of a tree a guest may be changing while it goes: by descriptors, mounts first,
//! never following a symlink, never entering another mount, with bounded depth and work.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use crate::beneath::{mount_id, plain};
use crate::error::{io_err, Error};
use crate::mount::unmount_beneath;

/// Deeper directories are moved up to the top of the tree being removed, so removal holds at
/// most this many descriptors however deep a guest nests directories.
const MAX_DEPTH: usize = 64;
/// Entries removed at most in one removal: a guest that creates files as fast as they are
/// removed makes removal fail instead of spin.
const MAX_REMOVALS: u64 = 1 << 22;

/// Removes the entry `name` of the directory `parent` (path `parent_path`, for messages):
/// first every mount under it ([`unmount_beneath`]), then the tree by descriptors, never
/// following a symlink (a planted one is removed itself) and never entering another mount.
/// No error when it does not exist.
pub fn remove_beneath(
    parent: BorrowedFd<'_>,
    parent_path: &Path,
    name: &OsStr,
) -> Result<(), Error> {
    let rel = Path::new(name);
    if plain(rel)?.len() != 1 {
        return Err(Error::BadPath(rel.to_path_buf()));
    }
    unmount_beneath(parent, parent_path, rel)?;
    let path = parent_path.join(name);
    let mnt = mount_id(parent).map_err(|e| io_err("stat", parent_path, e))?;
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    for _ in 0..16 {
        let dir = match rfs::openat(parent, name, flags, Mode::empty()) {
            Ok(d) => d,
            Err(Errno::NOENT) => return Ok(()),
            Err(Errno::NOTDIR) | Err(Errno::LOOP) => {
                return match rfs::unlinkat(parent, name, AtFlags::empty()) {
                    Ok(()) | Err(Errno::NOENT) => Ok(()),
                    Err(e) => Err(io_err("remove", &path, e)),
                };
            }
            Err(e) => return Err(io_err("open", &path, e)),
        };
        if mount_id(dir.as_fd()).map_err(|e| io_err("stat", &path, e))? != mnt {
            return Err(Error::OtherMount(path));
        }
        let mut ctx = Removal { root: dir.as_fd(), mnt, path: &path, count: 0, moved: 0 };
        ctx.clear(dir.as_fd(), 0)?;
        match rfs::unlinkat(parent, name, AtFlags::REMOVEDIR) {
            Ok(()) | Err(Errno::NOENT) => return Ok(()),
            Err(Errno::NOTEMPTY) | Err(Errno::NOTDIR) => continue,
            Err(e) => return Err(io_err("remove", &path, e)),
        }
    }
    Err(Error::Busy(path))
}

/// [`remove_beneath`] of a directory given by path, for trees whose parent is trusted (the
/// parent path is resolved normally; only the last name and what is under it may be hostile).
pub fn remove_tree(dir: &Path) -> Result<(), Error> {
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
        return Err(Error::BadPath(dir.to_path_buf()));
    };
    let parent = if parent.as_os_str().is_empty() { Path::new(".") } else { parent };
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let pfd = match rfs::open(parent, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(io_err("open", parent, e)),
    };
    remove_beneath(pfd.as_fd(), parent, name)
}

/// One removal of a tree: its top directory, its mount, and the work done so far.
struct Removal<'a> {
    root: BorrowedFd<'a>,
    mnt: u64,
    path: &'a Path,
    count: u64,
    moved: u64,
}

impl Removal<'_> {
    /// Empties `dir` (at `depth` below the top).
    fn clear(&mut self, dir: BorrowedFd<'_>, depth: usize) -> Result<(), Error> {
        let dflags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        loop {
            let mut names: Vec<(OsString, FileType)> = Vec::new();
            let entries = rfs::Dir::read_from(dir).map_err(|e| io_err("list", self.path, e))?;
            for e in entries {
                let e = e.map_err(|e| io_err("list", self.path, e))?;
                let n = e.file_name().to_bytes();
                if n == b"." || n == b".." {
                    continue;
                }
                names.push((OsStr::from_bytes(n).to_os_string(), e.file_type()));
                if names.len() >= 1024 {
                    break;
                }
            }
            if names.is_empty() {
                return Ok(());
            }
            for (name, ft) in names {
                self.count += 1;
                if self.count > MAX_REMOVALS {
                    return Err(Error::Busy(self.path.to_path_buf()));
                }
                let is_dir = match ft {
                    FileType::Directory => true,
                    FileType::Unknown => rfs::statat(dir, &name, AtFlags::SYMLINK_NOFOLLOW)
                        .is_ok_and(|s| FileType::from_raw_mode(s.st_mode) == FileType::Directory),
                    _ => false,
                };
                if !is_dir {
                    match rfs::unlinkat(dir, &name, AtFlags::empty()) {
                        // A directory now (swapped): the next listing sees it as one.
                        Ok(()) | Err(Errno::NOENT) | Err(Errno::ISDIR) => {}
                        Err(e) => return Err(io_err("remove an entry of", self.path, e)),
                    }
                    continue;
                }
                let sub = match rfs::openat(dir, &name, dflags, Mode::empty()) {
                    Ok(s) => s,
                    Err(Errno::NOENT) | Err(Errno::NOTDIR) | Err(Errno::LOOP) => continue,
                    Err(e) => return Err(io_err("open an entry of", self.path, e)),
                };
                let m = mount_id(sub.as_fd()).map_err(|e| io_err("stat", self.path, e))?;
                if m != self.mnt {
                    return Err(Error::OtherMount(self.path.join(&name)));
                }
                if depth + 1 >= MAX_DEPTH {
                    // Moved up to the top; the top's listing goes on with it.
                    self.moved += 1;
                    let to = format!(".podfs-deep-{}", self.moved);
                    let flags = rfs::RenameFlags::NOREPLACE;
                    match rfs::renameat_with(dir, &name, self.root, to.as_str(), flags) {
                        Ok(()) | Err(Errno::NOENT) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(io_err("move up a deep entry of", self.path, e)),
                    }
                    continue;
                }
                self.clear(sub.as_fd(), depth + 1)?;
                match rfs::unlinkat(dir, &name, AtFlags::REMOVEDIR) {
                    Ok(()) | Err(Errno::NOENT) | Err(Errno::NOTEMPTY) | Err(Errno::NOTDIR) => {}
                    Err(e) => return Err(io_err("remove a directory of", self.path, e)),
                }
            }
        }
    }
}
