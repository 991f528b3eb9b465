//! Every host-side file operation on a pod's guest-visible directory.
//!
//! The guest controls everything under `<run_dir>/pods/<pod>/shared` at every moment (virtio-fs
//! serves it read-write): any name there may be a symlink, a FIFO, a device node, or be swapped
//! for one between two system calls. So nothing here resolves a path string that passes through
//! that tree. Each operation starts from a directory descriptor the daemon opened itself (the
//! trusted root) and goes on only through descriptors: `openat2` with `RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS`, `O_NOFOLLOW`, `*at` calls relative to an
//! opened directory, `open_tree`/`move_mount` on descriptors, unmounts through the descriptor of
//! the mount itself, and removal that never crosses into another mount.
//!
//! A container's files are made in `<pod>/staging/<cid>`, beside the shared dir on the same
//! mount and invisible to the guest ([`Staged`]), then exposed in one `renameat2(...,
//! RENAME_NOREPLACE)` between the two trusted directory descriptors ([`Staged::expose`]).

pub mod mountinfo;
mod sys;

use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, ResolveFlags, StatxFlags};
use rustix::io::Errno;

/// The guest-visible directory of a pod (the VMM's `--shared-dir`).
pub const SHARED: &str = "shared";
/// Where a container's files are made before they are exposed in [`SHARED`].
pub const STAGING: &str = "staging";
/// Mode of the pod's own directories (as kubelet's pod dirs).
pub const PRIVATE_DIR_MODE: u32 = 0o700;
/// Mode of directories made inside a container's tree.
pub const DIR_MODE: u32 = 0o750;

/// Deeper directories are moved up to the top of the tree being removed, so removal holds at
/// most this many descriptors however deep a guest nests directories.
const MAX_DEPTH: usize = 64;
/// Entries removed at most in one removal: a guest that creates files as fast as they are
/// removed makes removal fail instead of spin.
const MAX_REMOVALS: u64 = 1 << 22;
/// Rounds of unmounting (stacked mounts need one round each).
const UNMOUNT_ROUNDS: usize = 8;

/// Why a file operation beneath a pod's directory failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0:?} is not a plain relative path (no root, `.` or `..`)")]
    BadPath(PathBuf),
    #[error("{0} is not a regular file")]
    NotRegular(PathBuf),
    #[error("{path} is larger than {max} bytes")]
    TooLarge { path: PathBuf, max: u64 },
    #[error("{0} is on another mount; not deleting through it")]
    OtherMount(PathBuf),
    #[error("{0} still has mounts under it after unmounting; not deleting it")]
    StillMounted(PathBuf),
    #[error("{0} keeps changing while it is removed; gave up")]
    Busy(PathBuf),
    #[error("{a} and {b} are on different mounts: a rename between them is impossible")]
    NotSameMount { a: PathBuf, b: PathBuf },
}

fn io_err(op: &'static str, path: &Path, e: impl Into<std::io::Error>) -> Error {
    Error::Io { op, path: path.to_path_buf(), source: e.into() }
}

fn resolve() -> ResolveFlags {
    ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS
}

/// The components of a relative path of plain names.
fn plain(rel: &Path) -> Result<Vec<&OsStr>, Error> {
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
fn mount_id(fd: BorrowedFd<'_>) -> Result<u64, Errno> {
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

fn split_last(rel: &Path) -> Result<(PathBuf, &OsStr), Error> {
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

/// Bind-mounts the host path `src` (recursively, created as a directory when missing, as
/// containerd does) onto `rel` beneath `root`, made (0750 parents) as a directory or an empty
/// file to match. The mount is `nosuid,nodev` on every submount too, and with `readonly`
/// recursively read-only (`mount_setattr(AT_RECURSIVE)`), set on the detached copy before it is
/// attached, so it is never visible writable. The mount point is opened without following a
/// symlink and must not be a mount point already; the tree is attached to that descriptor.
/// Returns the new mount's ID.
pub fn bind_beneath(
    root: BorrowedFd<'_>,
    rel: &Path,
    src: &Path,
    readonly: bool,
) -> Result<u64, Error> {
    let (dirs, name) = split_last(rel)?;
    if let Err(e) = std::fs::symlink_metadata(src) {
        if e.kind() != std::io::ErrorKind::NotFound {
            return Err(io_err("stat the volume", src, e));
        }
        std::fs::create_dir_all(src).map_err(|e| io_err("create the volume", src, e))?;
    }
    let csrc = std::ffi::CString::new(src.as_os_str().as_bytes())
        .map_err(|_| Error::BadPath(src.to_path_buf()))?;
    let cwd = rfs::CWD;
    let tree = sys::open_tree(cwd, &csrc, sys::OPEN_TREE_CLONE | libc::AT_RECURSIVE as u32)
        .map_err(|e| io_err("clone the mount tree of", src, e))?;
    let mut attrs = sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV;
    if readonly {
        attrs |= sys::MOUNT_ATTR_RDONLY;
    }
    sys::mount_setattr(tree.as_fd(), attrs, true)
        .map_err(|e| io_err("set nosuid,nodev[,ro] on", src, e))?;
    let is_dir = rfs::fstat(&tree).map_err(|e| io_err("stat", src, e))?.st_mode & libc::S_IFMT
        == libc::S_IFDIR;
    let parent = mkdirs_beneath(root, &dirs)?;
    if is_dir {
        match rfs::mkdirat(&parent, name, Mode::from_raw_mode(DIR_MODE)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(io_err("create the mount point", rel, e)),
        }
    } else {
        let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        match rfs::openat(&parent, name, flags, Mode::from_raw_mode(0o640)) {
            Ok(_) | Err(Errno::ISDIR) => {}
            Err(e) => return Err(io_err("create the mount point", rel, e)),
        }
    }
    let target =
        open_beneath(parent.as_fd(), Path::new(name), OFlags::PATH, 0, ResolveFlags::NO_XDEV)
            .map_err(|e| io_err("open the mount point", rel, e))?;
    let tst = rfs::fstat(&target).map_err(|e| io_err("stat the mount point", rel, e))?;
    if (tst.st_mode & libc::S_IFMT == libc::S_IFDIR) != is_dir {
        return Err(io_err("mount onto", rel, Errno::NOTDIR));
    }
    sys::move_mount(tree.as_fd(), target.as_fd())
        .map_err(|e| io_err("attach the volume at", rel, e))?;
    let mounted =
        open_beneath(parent.as_fd(), Path::new(name), OFlags::PATH, 0, ResolveFlags::empty())
            .map_err(|e| io_err("open the mounted volume", rel, e))?;
    mount_id(mounted.as_fd()).map_err(|e| io_err("stat the mounted volume", rel, e))
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
            let Ok(r) = m.point.strip_prefix(root_path) else { continue };
            let Ok(fd) = open_beneath(root, r, OFlags::PATH, 0, ResolveFlags::empty()) else {
                continue;
            };
            if mount_id(fd.as_fd()).ok() != Some(m.id) {
                continue;
            }
            match sys::unmount_fd(fd.as_fd()) {
                Ok(()) => {}
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

struct Inner {
    path: PathBuf,
    shared: OwnedFd,
    staging: OwnedFd,
}

/// A pod's directory: descriptors of its `shared/` (guest-visible) and `staging/` (not) dirs,
/// opened once from the trusted pod dir. Cheap to clone.
#[derive(Clone)]
pub struct PodDir(Arc<Inner>);

impl PodDir {
    /// Opens `<pod>/shared` and `<pod>/staging`, creating them 0700 when missing. `pod` is
    /// the daemon's own directory (the guest cannot see or change it); both must be on one
    /// mount so that [`Staged::expose`] can rename between them.
    pub fn open(pod: &Path) -> Result<PodDir, Error> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let pfd = rfs::open(pod, flags, Mode::empty()).map_err(|e| io_err("open", pod, e))?;
        let sub = |name: &str| -> Result<OwnedFd, Error> {
            let path = pod.join(name);
            match rfs::mkdirat(&pfd, name, Mode::from_raw_mode(PRIVATE_DIR_MODE)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(io_err("create", &path, e)),
            }
            rfs::openat(&pfd, name, flags | OFlags::NOFOLLOW, Mode::empty())
                .map_err(|e| io_err("open", &path, e))
        };
        let shared = sub(SHARED)?;
        let staging = sub(STAGING)?;
        let (a, b) = (mount_id(shared.as_fd()), mount_id(staging.as_fd()));
        if a.is_err() || a != b {
            return Err(Error::NotSameMount { a: pod.join(SHARED), b: pod.join(STAGING) });
        }
        Ok(PodDir(Arc::new(Inner { path: pod.to_path_buf(), shared, staging })))
    }

    /// `<pod>/shared` on the host.
    pub fn shared_path(&self) -> PathBuf {
        self.0.path.join(SHARED)
    }

    /// `<pod>/staging` on the host.
    pub fn staging_path(&self) -> PathBuf {
        self.0.path.join(STAGING)
    }

    /// The guest-visible directory.
    pub fn shared(&self) -> BorrowedFd<'_> {
        self.0.shared.as_fd()
    }

    /// A fresh staging dir (0750) for the container `name` (a leftover of the same name, from
    /// a crash, is removed first).
    pub fn stage(&self, name: &str) -> Result<Staged, Error> {
        let n = OsStr::new(name);
        if plain(Path::new(n))?.len() != 1 {
            return Err(Error::BadPath(PathBuf::from(name)));
        }
        let st = self.0.staging.as_fd();
        remove_beneath(st, &self.staging_path(), n)?;
        let path = self.staging_path().join(name);
        rfs::mkdirat(st, name, Mode::from_raw_mode(DIR_MODE))
            .map_err(|e| io_err("create", &path, e))?;
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let dir =
            rfs::openat(st, name, flags, Mode::empty()).map_err(|e| io_err("open", &path, e))?;
        Ok(Staged { pod: self.clone(), name: name.to_string(), dir, done: false })
    }

    /// Reads a guest-influenced file `rel` beneath the shared dir (see [`read_file_beneath`]).
    pub fn read_shared(&self, rel: &Path, max: u64) -> Result<Option<Vec<u8>>, Error> {
        read_file_beneath(self.shared(), rel, max)
    }

    /// Removes the container `name`'s files: `shared/<name>` and any `staging/<name>`, mounts
    /// first (see [`remove_beneath`]).
    pub fn remove(&self, name: &str) -> Result<(), Error> {
        remove_beneath(self.shared(), &self.shared_path(), OsStr::new(name))?;
        remove_beneath(self.0.staging.as_fd(), &self.staging_path(), OsStr::new(name))
    }
}

/// A container's directory being made in staging, invisible to the guest. Dropped without
/// [`Staged::expose`], it is removed (mounts first).
pub struct Staged {
    pod: PodDir,
    name: String,
    dir: OwnedFd,
    done: bool,
}

impl Staged {
    /// `<pod>/staging/<name>` on the host: path-based code (the rootfs copy) may work below
    /// it, since the guest cannot reach it (but a rootfs's own content comes from an untrusted
    /// image: read it with [`Staged::read_file`]).
    pub fn path(&self) -> PathBuf {
        self.pod.staging_path().join(&self.name)
    }

    /// The staged directory.
    pub fn dir(&self) -> BorrowedFd<'_> {
        self.dir.as_fd()
    }

    /// Creates the file `rel` below the staged dir (see [`write_file_beneath`]).
    pub fn write_file(&self, rel: &Path, data: &[u8], mode: u32) -> Result<(), Error> {
        write_file_beneath(self.dir(), rel, data, mode)
    }

    /// Reads the regular file `rel` below the staged dir (see [`read_file_beneath`]).
    pub fn read_file(&self, rel: &Path, max: u64) -> Result<Option<Vec<u8>>, Error> {
        read_file_beneath(self.dir(), rel, max)
    }

    /// Bind-mounts the host path `src` onto `rel` below the staged dir (see
    /// [`bind_beneath`]); the mount moves with the dir when it is exposed.
    pub fn bind(&self, src: &Path, rel: &Path, readonly: bool) -> Result<u64, Error> {
        bind_beneath(self.dir(), rel, src, readonly)
    }

    /// Moves the staged dir to `shared/<name>` in one `renameat2(RENAME_NOREPLACE)` between
    /// the two trusted directory descriptors: a name the guest planted there makes it fail.
    pub fn expose(mut self) -> Result<(), Error> {
        let p = &self.pod.0;
        rfs::renameat_with(
            p.staging.as_fd(),
            self.name.as_str(),
            p.shared.as_fd(),
            self.name.as_str(),
            rfs::RenameFlags::NOREPLACE,
        )
        .map_err(|e| io_err("expose", &self.pod.shared_path().join(&self.name), e))?;
        self.done = true;
        Ok(())
    }

    /// Removes the staged dir now (mounts first).
    pub fn discard(mut self) -> Result<(), Error> {
        self.done = true;
        let p = &self.pod.0;
        remove_beneath(p.staging.as_fd(), &self.pod.staging_path(), OsStr::new(&self.name))
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let p = &self.pod.0;
        if let Err(e) =
            remove_beneath(p.staging.as_fd(), &self.pod.staging_path(), OsStr::new(&self.name))
        {
            let dir = self.path();
            tracing::error!(dir = %dir.display(), error = %e, "cannot remove a staged dir");
        }
    }
}

#[cfg(test)]
mod tests;
