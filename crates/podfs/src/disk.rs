//! A pod's own disk: a sparse ext4 image file (in the daemon's data dir, not in RAM) attached
//! to a loop device and mounted `nosuid,nodev,noexec` on the pod's run dir, so that everything
//! the pod and its guest write there (`shared/`, `staging/`, logs) is bounded by the image's
//! size: a guest that fills its shared dir gets ENOSPC and the host keeps its memory and disk.
//!
//! The file system's blocks are written only by the host kernel (the guest reaches files
//! through virtio-fs, never the image), so the image's metadata is not guest input. The loop
//! device is attached with `LO_FLAGS_AUTOCLEAR`: it detaches itself when its mount goes (and
//! at once if mounting fails), so an unmount is the whole teardown and nothing can leak a loop
//! device; the image file is then deleted.

use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use rustix::fs::{self as rfs, Mode, OFlags};
use rustix::io::Errno;
use rustix::mount::{self as rmount, MountFlags};

use crate::error::{io_err, Error};
use crate::pod::PRIVATE_DIR_MODE;

/// Smallest disk a pod may get (ext4 with room for a small rootfs copy and the logs).
pub const MIN_DISK_BYTES: u64 = 16 << 20;
/// Where mkfs.ext4 is looked for (then `$PATH`).
const MKFS_PATHS: [&str; 2] = ["/usr/sbin/mkfs.ext4", "/sbin/mkfs.ext4"];
/// Attempts to win a free loop device against other users of /dev/loop-control.
const LOOP_ATTEMPTS: usize = 16;

// linux/loop.h
const LOOP_SET_FD: libc::c_ulong = 0x4C00;
const LOOP_CLR_FD: libc::c_ulong = 0x4C01;
const LOOP_SET_STATUS64: libc::c_ulong = 0x4C04;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LO_FLAGS_AUTOCLEAR: u32 = 4;

/// `struct loop_info64`.
#[repr(C)]
struct LoopInfo64 {
    device: u64,
    inode: u64,
    rdevice: u64,
    offset: u64,
    sizelimit: u64,
    number: u32,
    encrypt_type: u32,
    encrypt_key_size: u32,
    flags: u32,
    file_name: [u8; 64],
    crypt_name: [u8; 64],
    encrypt_key: [u8; 32],
    init: [u64; 2],
}

/// `struct loop_config`.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

fn loop_info(image: &Path) -> LoopInfo64 {
    let mut file_name = [0u8; 64];
    let name = image.as_os_str().as_bytes();
    let n = name.len().min(63);
    file_name[..n].copy_from_slice(&name[..n]);
    LoopInfo64 {
        device: 0,
        inode: 0,
        rdevice: 0,
        offset: 0,
        sizelimit: 0,
        number: 0,
        encrypt_type: 0,
        encrypt_key_size: 0,
        flags: LO_FLAGS_AUTOCLEAR,
        file_name,
        crypt_name: [0; 64],
        encrypt_key: [0; 32],
        init: [0; 2],
    }
}

fn ioctl(fd: BorrowedFd<'_>, req: libc::c_ulong, arg: usize) -> Result<libc::c_int, Errno> {
    // SAFETY: each request's argument is either an integer or a pointer to a live, properly
    // laid out struct of linux/loop.h that the kernel only reads.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req, arg) };
    if r < 0 {
        Err(Errno::from_raw_os_error(std::io::Error::last_os_error().raw_os_error().unwrap_or(0)))
    } else {
        Ok(r)
    }
}

/// Attaches `image` to a free loop device (autoclear) and returns the device's path and an open
/// descriptor of it (closing it without a mount on the device detaches it).
fn attach(image: &Path, file: BorrowedFd<'_>) -> Result<(PathBuf, OwnedFd), Error> {
    let ctl_path = Path::new("/dev/loop-control");
    let rw = OFlags::RDWR | OFlags::CLOEXEC;
    let ctl = rfs::open(ctl_path, rw, Mode::empty()).map_err(|e| io_err("open", ctl_path, e))?;
    let mut last = Errno::BUSY;
    for _ in 0..LOOP_ATTEMPTS {
        let n = ioctl(ctl.as_fd(), LOOP_CTL_GET_FREE, 0)
            .map_err(|e| io_err("get a free loop device from", ctl_path, e))?;
        let dev = PathBuf::from(format!("/dev/loop{n}"));
        let fd = match rfs::open(&dev, rw, Mode::empty()) {
            Ok(fd) => fd,
            Err(e) => return Err(io_err("open", &dev, e)),
        };
        let cfg = LoopConfig {
            fd: file.as_raw_fd() as u32,
            block_size: 0,
            info: loop_info(image),
            reserved: [0; 8],
        };
        match ioctl(fd.as_fd(), LOOP_CONFIGURE, &cfg as *const LoopConfig as usize) {
            Ok(_) => return Ok((dev, fd)),
            Err(Errno::BUSY) => last = Errno::BUSY,
            Err(Errno::INVAL) | Err(Errno::NOTTY) => {
                // A kernel before 5.8: attach, then set autoclear.
                match ioctl(fd.as_fd(), LOOP_SET_FD, file.as_raw_fd() as usize) {
                    Ok(_) => {}
                    Err(Errno::BUSY) => {
                        last = Errno::BUSY;
                        continue;
                    }
                    Err(e) => return Err(io_err("attach a loop device to", image, e)),
                }
                let info = loop_info(image);
                if let Err(e) =
                    ioctl(fd.as_fd(), LOOP_SET_STATUS64, &info as *const LoopInfo64 as usize)
                {
                    let _ = ioctl(fd.as_fd(), LOOP_CLR_FD, 0);
                    return Err(io_err("set autoclear on the loop device of", image, e));
                }
                return Ok((dev, fd));
            }
            Err(e) => return Err(io_err("attach a loop device to", image, e)),
        }
    }
    Err(io_err("attach a loop device to", image, last))
}

fn mkfs_binary() -> PathBuf {
    for p in MKFS_PATHS {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    PathBuf::from("mkfs.ext4")
}

/// Makes the image file `image` (new, 0600, sparse) of `size` bytes holding an empty ext4
/// (no journal: the pod's files do not outlive the pod; no blocks reserved for root, since
/// the daemon and the VMM are root). On failure nothing is left.
pub fn create_image(image: &Path, size: u64) -> Result<(), Error> {
    if size < MIN_DISK_BYTES {
        return Err(Error::DiskTooSmall { size, min: MIN_DISK_BYTES });
    }
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rfs::open(image, flags, Mode::from_raw_mode(0o600))
        .map_err(|e| io_err("create the pod disk image", image, e))?;
    let made = (|| {
        rfs::ftruncate(&fd, size).map_err(|e| io_err("size the pod disk image", image, e))?;
        drop(fd);
        let mkfs = mkfs_binary();
        let out = Command::new(&mkfs)
            .args(["-q", "-F", "-m", "0", "-O", "^has_journal", "-E"])
            .arg("root_owner=0:0,nodiscard,lazy_itable_init=1")
            .arg(image)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| io_err("run", &mkfs, e))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            return Err(Error::Mkfs {
                image: image.to_path_buf(),
                status: out.status.to_string(),
                stderr: stderr.chars().take(1000).collect(),
            });
        }
        Ok(())
    })();
    if made.is_err() {
        let _ = std::fs::remove_file(image);
    }
    made
}

/// Mounts the ext4 `image` on the trusted directory `at`, `nosuid,nodev,noexec,noatime`, and
/// makes its root 0700 (ext4's `lost+found` is removed). On failure nothing stays attached.
pub fn mount_image(image: &Path, at: &Path) -> Result<(), Error> {
    let flags = OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let file = rfs::open(image, flags, Mode::empty()).map_err(|e| io_err("open", image, e))?;
    let (dev, dev_fd) = attach(image, file.as_fd())?;
    let mflags = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC | MountFlags::NOATIME;
    rmount::mount(&dev, at, "ext4", mflags, c"errors=remount-ro")
        .map_err(|e| io_err("mount the pod disk on", at, e))?;
    // The mount holds the device now; with autoclear it detaches when the mount goes.
    drop(dev_fd);
    drop(file);
    let dflags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fixed = rfs::open(at, dflags, Mode::empty())
        .and_then(|root| {
            rfs::fchmod(&root, Mode::from_raw_mode(PRIVATE_DIR_MODE))?;
            match rfs::unlinkat(&root, "lost+found", rfs::AtFlags::REMOVEDIR) {
                Ok(()) | Err(Errno::NOENT) => Ok(()),
                Err(e) => Err(e),
            }
        })
        .map_err(|e| io_err("prepare the pod disk at", at, e));
    if fixed.is_err() {
        let _ = rmount::unmount(at, rmount::UnmountFlags::DETACH | rmount::UnmountFlags::NOFOLLOW);
    }
    fixed
}

/// A pod's disk: makes `image` of `size` bytes and mounts it on `at` (see [`create_image`],
/// [`mount_image`]). On failure the image is deleted and nothing is mounted.
pub fn attach_disk(image: &Path, at: &Path, size: u64) -> Result<(), Error> {
    create_image(image, size)?;
    if let Err(e) = mount_image(image, at) {
        let _ = std::fs::remove_file(image);
        return Err(e);
    }
    Ok(())
}

/// Deletes the image file of a pod's disk (its mount must be gone: unmount the pod's dir
/// first). No error when it does not exist.
pub fn remove_image(image: &Path) -> Result<(), Error> {
    match std::fs::remove_file(image) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("delete the pod disk image", image, e)),
    }
}

/// The pod IDs of the images in `dir` (files named `<id>.img`), for orphan cleanup.
pub fn images_in(dir: &Path) -> Result<Vec<String>, Error> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("list", dir, e)),
    };
    let mut ids = Vec::new();
    for e in entries {
        let e = e.map_err(|e| io_err("list", dir, e))?;
        let name = e.file_name();
        let p = Path::new(&name);
        if p.extension() == Some(OsStr::new("img")) {
            if let Some(stem) = p.file_stem().and_then(|s| s.to_str()) {
                ids.push(stem.to_string());
            }
        }
    }
    ids.sort();
    Ok(ids)
}

#[cfg(test)]
#[path = "disk_tests.rs"]
mod tests;
