//! A pod's directory ([`PodDir`]) and a container's directory being staged in it ([`Staged`]).

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::fs::{self as rfs, Mode, OFlags};
use rustix::io::Errno;

use crate::beneath::{mount_id, plain, read_file_beneath, write_file_beneath, DIR_MODE};
use crate::error::{io_err, Error};
use crate::mount::{bind_beneath, bind_with, Access, VolumeTree};
use crate::ns::MountNs;
use crate::remove::remove_beneath;

/// The guest-visible directory of a pod (the VMM's `--shared-dir`).
pub const SHARED: &str = "shared";
/// Where a container's files are made before they are exposed in [`SHARED`].
pub const STAGING: &str = "staging";
/// Mode of the pod's own directories (as kubelet's pod dirs).
pub const PRIVATE_DIR_MODE: u32 = 0o700;

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

    /// [`Staged::bind`] with the read-only mode spelled out ([`bind_with`]).
    pub fn bind_with(&self, src: &Path, rel: &Path, access: Access) -> Result<u64, Error> {
        bind_with(self.dir(), rel, src, access)
    }

    /// [`Staged::bind_with`], attached in the mount namespace `ns` (a pod VMM's; the caller's
    /// when None): the tree is copied where the volume's source is visible (here), the mount
    /// point made through the staged dir's descriptor; the staged dir is reopened by its path
    /// from the VMM's root and must be the same directory (device and inode: the namespace's
    /// owner controls its mount table); a thread in `ns` attaches the copy beneath it.
    pub fn bind_in(
        &self,
        ns: Option<&MountNs>,
        src: &Path,
        rel: &Path,
        access: Access,
    ) -> Result<u64, Error> {
        let Some(ns) = ns else { return self.bind_with(src, rel, access) };
        let tree = VolumeTree::clone_of(src, access)?;
        tree.make_mount_point(self.dir(), rel)?;
        let here = rfs::fstat(self.dir()).map_err(|e| io_err("stat", &self.path(), e))?;
        let path = self.path();
        let dir = ns.open_dir(&path)?;
        let there = rfs::fstat(&dir).map_err(|e| io_err("stat", &path, e))?;
        if (there.st_dev, there.st_ino) != (here.st_dev, here.st_ino) {
            return Err(Error::NotSameDir(path));
        }
        ns.run(move || tree.attach_beneath(dir.as_fd(), rel))
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
