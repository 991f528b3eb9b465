//! What a guest may create in the host file system through virtio-fs.
//!
//! The passthrough file system runs as host root and creates exactly what the guest asks for.
//! [`HostSafeFs`] wraps it and refuses or strips everything that would mean something to the
//! host rather than to the guest:
//! - **Device nodes**: MKNOD of a character or block device is refused with EPERM, and so is a
//!   RENAME_WHITEOUT (it leaves a 0:0 character device behind). FIFOs and sockets are allowed:
//!   the server never opens anything but regular files and directories (fuse-backend-rs refuses
//!   the rest with EBADF), and host code must not open guest-made names anyway (the rule of the
//!   trust boundary), so they are inert on the host. Regular files through MKNOD are allowed.
//! - **setuid/setgid**: stripped from the mode of CREATE, MKNOD and MKDIR and from SETATTR's
//!   mode (chmod). S_ISGID stays allowed on directories (group inheritance, no privilege);
//!   S_ISUID never is. A file that already carries either bit (an image's `/usr/bin/su` copied
//!   into the share) loses both when the guest opens it for writing or truncates it: the host
//!   kernel keeps the bits when root writes, so without this a guest could put its own code in
//!   a setuid-root host file. The guest's FUSE `killpriv` flags are not relied on.
//! - **xattrs**: SETXATTR and REMOVEXATTR are allowed only in the `user.` namespace; anything
//!   else (`security.capability` = file capabilities, `trusted.*`, `security.*`, POSIX ACLs in
//!   `system.*`) gets EOPNOTSUPP. Reads (GETXATTR, LISTXATTR) pass through: they change nothing
//!   on the host and an image's file capabilities (e.g. `ping`) keep working in the guest. An
//!   overlayfs upper directory on virtio-fs inside the guest is therefore unsupported (it needs
//!   `trusted.overlay.*` and whiteout devices).
//!
//! Opening existing files never follows a symlink: fuse-backend-rs looks names up one component
//! at a time with O_NOFOLLOW, `..` of the root is the root, and OPEN of a symlink's node is
//! refused (only regular files and directories are opened), see the tests.

use std::ffi::CStr;
use std::io;
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{stat64, statvfs64, CreateIn};
use fuse_backend_rs::abi::virtio_fs::RemovemappingOne;
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileLock, FileSystem, FsOptions, GetxattrReply, IoctlData,
    ListxattrReply, OpenOptions, SetattrValid, ZeroCopyReader, ZeroCopyWriter,
};
use fuse_backend_rs::transport::FsCacheReqHandler;
use tracing::debug;

use super::limits::{note_fds, note_full};

/// Bits that carry privilege on a file.
const SUID_SGID: u32 = libc::S_ISUID | libc::S_ISGID;

/// The mode a new non-directory gets: no setuid, no setgid.
fn file_mode(mode: u32) -> u32 {
    mode & !SUID_SGID
}

/// The mode a new directory gets: no setuid (S_ISGID is group inheritance only).
fn dir_mode(mode: u32) -> u32 {
    mode & !libc::S_ISUID
}

/// Whether a MKNOD of this mode is allowed: regular files, FIFOs and sockets only.
fn mknod_allowed(mode: u32) -> bool {
    matches!(mode & libc::S_IFMT, 0 | libc::S_IFREG | libc::S_IFIFO | libc::S_IFSOCK)
}

/// Whether the guest may set or remove the xattr `name` on a host file.
fn xattr_settable(name: &CStr) -> bool {
    name.to_bytes().starts_with(b"user.")
}

/// Whether OPEN/CREATE flags can change the file's contents.
fn writes(flags: u32) -> bool {
    let flags = flags as i32;
    flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0
}

fn is_regular(mode: u32) -> bool {
    mode & libc::S_IFMT == libc::S_IFREG
}

fn eperm() -> io::Error {
    io::Error::from_raw_os_error(libc::EPERM)
}

fn eopnotsupp() -> io::Error {
    io::Error::from_raw_os_error(libc::EOPNOTSUPP)
}

/// A [`FileSystem`] that delegates to `F` under the rules of the module documentation.
pub(crate) struct HostSafeFs<F> {
    inner: F,
}

impl<F: FileSystem> HostSafeFs<F> {
    pub fn new(inner: F) -> Self {
        HostSafeFs { inner }
    }

    /// Clears setuid/setgid of a regular file about to be written; returns the mode it has now.
    fn kill_priv(&self, ctx: &Context, inode: u64, mode: u32) -> io::Result<u32> {
        if !is_regular(mode) || mode & SUID_SGID == 0 {
            return Ok(mode);
        }
        let mut attr = zeroed_stat();
        attr.st_mode = file_mode(mode);
        self.inner.setattr(ctx, F::Inode::from(inode), attr, None, SetattrValid::MODE)?;
        debug!(inode, "virtio-fs: cleared setuid/setgid of a file opened for writing");
        Ok(file_mode(mode))
    }

    /// [`Self::kill_priv`] after looking the mode up.
    fn kill_priv_of(&self, ctx: &Context, inode: u64) -> io::Result<()> {
        let (st, _) = self.inner.getattr(ctx, F::Inode::from(inode), None)?;
        self.kill_priv(ctx, inode, st.st_mode).map(|_| ())
    }
}

/// An all-zero `stat64` (plain old data: every field is an integer).
fn zeroed_stat() -> stat64 {
    // SAFETY: stat64 is a C struct of integers, for which all-zero bytes are a valid value.
    unsafe { std::mem::zeroed() }
}

impl<F: FileSystem> FileSystem for HostSafeFs<F> {
    type Inode = F::Inode;
    type Handle = F::Handle;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        self.inner.init(capable)
    }

    fn destroy(&self) {
        self.inner.destroy()
    }

    fn lookup(&self, ctx: &Context, parent: Self::Inode, name: &CStr) -> io::Result<Entry> {
        note_fds("lookup", self.inner.lookup(ctx, parent, name))
    }

    fn forget(&self, ctx: &Context, inode: Self::Inode, count: u64) {
        self.inner.forget(ctx, inode, count)
    }

    fn batch_forget(&self, ctx: &Context, requests: Vec<(Self::Inode, u64)>) {
        self.inner.batch_forget(ctx, requests)
    }

    fn getattr(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Option<Self::Handle>,
    ) -> io::Result<(stat64, Duration)> {
        self.inner.getattr(ctx, inode, handle)
    }

    fn setattr(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        mut attr: stat64,
        handle: Option<Self::Handle>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        let ino: u64 = inode.into();
        if valid.contains(SetattrValid::MODE) {
            let (st, _) = self.inner.getattr(ctx, F::Inode::from(ino), None)?;
            attr.st_mode = if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                dir_mode(attr.st_mode)
            } else {
                file_mode(attr.st_mode)
            };
        } else if valid.contains(SetattrValid::SIZE) {
            self.kill_priv_of(ctx, ino)?;
        }
        self.inner.setattr(ctx, F::Inode::from(ino), attr, handle, valid)
    }

    fn readlink(&self, ctx: &Context, inode: Self::Inode) -> io::Result<Vec<u8>> {
        self.inner.readlink(ctx, inode)
    }

    fn symlink(
        &self,
        ctx: &Context,
        linkname: &CStr,
        parent: Self::Inode,
        name: &CStr,
    ) -> io::Result<Entry> {
        note_fds("symlink", self.inner.symlink(ctx, linkname, parent, name))
    }

    fn mknod(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        name: &CStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        if !mknod_allowed(mode) {
            debug!(mode, rdev, "virtio-fs: refused MKNOD of a device node");
            return Err(eperm());
        }
        note_fds("mknod", self.inner.mknod(ctx, inode, name, file_mode(mode), rdev, umask))
    }

    fn mkdir(
        &self,
        ctx: &Context,
        parent: Self::Inode,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        note_fds("mkdir", self.inner.mkdir(ctx, parent, name, dir_mode(mode), umask))
    }

    fn unlink(&self, ctx: &Context, parent: Self::Inode, name: &CStr) -> io::Result<()> {
        self.inner.unlink(ctx, parent, name)
    }

    fn rmdir(&self, ctx: &Context, parent: Self::Inode, name: &CStr) -> io::Result<()> {
        self.inner.rmdir(ctx, parent, name)
    }

    fn rename(
        &self,
        ctx: &Context,
        olddir: Self::Inode,
        oldname: &CStr,
        newdir: Self::Inode,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        if flags & libc::RENAME_WHITEOUT != 0 {
            return Err(eperm());
        }
        self.inner.rename(ctx, olddir, oldname, newdir, newname, flags)
    }

    fn link(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        newparent: Self::Inode,
        newname: &CStr,
    ) -> io::Result<Entry> {
        note_fds("link", self.inner.link(ctx, inode, newparent, newname))
    }

    fn open(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Option<Self::Handle>, OpenOptions, Option<u32>)> {
        let ino: u64 = inode.into();
        if writes(flags) {
            self.kill_priv_of(ctx, ino)?;
        }
        note_fds("open", self.inner.open(ctx, F::Inode::from(ino), flags, fuse_flags))
    }

    fn create(
        &self,
        ctx: &Context,
        parent: Self::Inode,
        name: &CStr,
        mut args: CreateIn,
    ) -> io::Result<(Entry, Option<Self::Handle>, OpenOptions, Option<u32>)> {
        args.mode = file_mode(args.mode);
        let (mut entry, handle, opts, passthrough) =
            note_fds("create", note_full("create", self.inner.create(ctx, parent, name, args)))?;
        // Without O_EXCL an existing file is opened: it may be an image's setuid file.
        if writes(args.flags) {
            entry.attr.st_mode = self.kill_priv(ctx, entry.inode, entry.attr.st_mode)?;
        }
        Ok((entry, handle, opts, passthrough))
    }

    #[allow(clippy::too_many_arguments)]
    fn read(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        flags: u32,
    ) -> io::Result<usize> {
        self.inner.read(ctx, inode, handle, w, size, offset, lock_owner, flags)
    }

    #[allow(clippy::too_many_arguments)]
    fn write(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        delayed_write: bool,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<usize> {
        // A handle that can write was opened through open()/create(), which cleared the bits,
        // and the guest cannot set them again: no check per write.
        let r = self.inner.write(
            ctx,
            inode,
            handle,
            r,
            size,
            offset,
            lock_owner,
            delayed_write,
            flags,
            fuse_flags,
        );
        note_full("write", r)
    }

    fn flush(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        lock_owner: u64,
    ) -> io::Result<()> {
        self.inner.flush(ctx, inode, handle, lock_owner)
    }

    fn fsync(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        datasync: bool,
        handle: Self::Handle,
    ) -> io::Result<()> {
        self.inner.fsync(ctx, inode, datasync, handle)
    }

    fn fallocate(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        note_full("fallocate", self.inner.fallocate(ctx, inode, handle, mode, offset, length))
    }

    #[allow(clippy::too_many_arguments)]
    fn release(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        flags: u32,
        handle: Self::Handle,
        flush: bool,
        flock_release: bool,
        lock_owner: Option<u64>,
    ) -> io::Result<()> {
        self.inner.release(ctx, inode, flags, handle, flush, flock_release, lock_owner)
    }

    fn statfs(&self, ctx: &Context, inode: Self::Inode) -> io::Result<statvfs64> {
        self.inner.statfs(ctx, inode)
    }

    fn setxattr(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        if !xattr_settable(name) {
            debug!(?name, "virtio-fs: refused SETXATTR outside user.*");
            return Err(eopnotsupp());
        }
        self.inner.setxattr(ctx, inode, name, value, flags)
    }

    fn getxattr(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        self.inner.getxattr(ctx, inode, name, size)
    }

    fn listxattr(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        size: u32,
    ) -> io::Result<ListxattrReply> {
        self.inner.listxattr(ctx, inode, size)
    }

    fn removexattr(&self, ctx: &Context, inode: Self::Inode, name: &CStr) -> io::Result<()> {
        if !xattr_settable(name) {
            return Err(eopnotsupp());
        }
        self.inner.removexattr(ctx, inode, name)
    }

    fn opendir(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        flags: u32,
    ) -> io::Result<(Option<Self::Handle>, OpenOptions)> {
        note_fds("opendir", self.inner.opendir(ctx, inode, flags))
    }

    fn readdir(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.inner.readdir(ctx, inode, handle, size, offset, add_entry)
    }

    fn readdirplus(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        note_fds("readdirplus", self.inner.readdirplus(ctx, inode, handle, size, offset, add_entry))
    }

    fn fsyncdir(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        datasync: bool,
        handle: Self::Handle,
    ) -> io::Result<()> {
        self.inner.fsyncdir(ctx, inode, datasync, handle)
    }

    fn releasedir(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        flags: u32,
        handle: Self::Handle,
    ) -> io::Result<()> {
        self.inner.releasedir(ctx, inode, flags, handle)
    }

    #[allow(clippy::too_many_arguments)]
    fn setupmapping(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        foffset: u64,
        len: u64,
        flags: u64,
        moffset: u64,
        vu_req: &mut dyn FsCacheReqHandler,
    ) -> io::Result<()> {
        self.inner.setupmapping(ctx, inode, handle, foffset, len, flags, moffset, vu_req)
    }

    fn removemapping(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        requests: Vec<RemovemappingOne>,
        vu_req: &mut dyn FsCacheReqHandler,
    ) -> io::Result<()> {
        self.inner.removemapping(ctx, inode, requests, vu_req)
    }

    fn access(&self, ctx: &Context, inode: Self::Inode, mask: u32) -> io::Result<()> {
        self.inner.access(ctx, inode, mask)
    }

    fn lseek(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        self.inner.lseek(ctx, inode, handle, offset, whence)
    }

    fn getlk(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<FileLock> {
        self.inner.getlk(ctx, inode, handle, owner, lock, flags)
    }

    fn setlk(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<()> {
        self.inner.setlk(ctx, inode, handle, owner, lock, flags)
    }

    fn setlkw(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<()> {
        self.inner.setlkw(ctx, inode, handle, owner, lock, flags)
    }

    #[allow(clippy::too_many_arguments)]
    fn ioctl(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        flags: u32,
        cmd: u32,
        data: IoctlData,
        out_size: u32,
    ) -> io::Result<IoctlData<'_>> {
        self.inner.ioctl(ctx, inode, handle, flags, cmd, data, out_size)
    }

    fn bmap(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        block: u64,
        blocksize: u32,
    ) -> io::Result<u64> {
        self.inner.bmap(ctx, inode, block, blocksize)
    }

    fn poll(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        khandle: Self::Handle,
        flags: u32,
        events: u32,
    ) -> io::Result<u32> {
        self.inner.poll(ctx, inode, handle, khandle, flags, events)
    }

    fn notify_reply(&self) -> io::Result<()> {
        self.inner.notify_reply()
    }

    fn id_remap(&self, ctx: &mut Context) -> io::Result<()> {
        self.inner.id_remap(ctx)
    }
}
