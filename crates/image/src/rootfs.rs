//! Flattening unpacked layers (overlayfs diff format) into one plain directory tree: the
//! rootfs of a container when it is not assembled with overlayfs. Files are copied, never
//! linked to the store, so a container cannot write into shared layers.
//!
//! The destination is where the guest will see the rootfs, so it may change under the copy:
//! every step works on directory fds opened without following symlinks and on single names
//! inside them (see [`crate::fsat`]). A symlink or FIFO planted in the destination is replaced
//! or refused, never followed or opened; the worst a racing guest gets is a broken rootfs of
//! its own. Device nodes are not copied (the unpacker never creates them; older stores may
//! hold some).

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

use crate::fsat;
use crate::unpack::OVERLAY_OPAQUE_XATTR;

/// Applies `layers` (bottom-most first) onto `dst` (created if missing): whiteouts delete,
/// opaque directories hide what lower layers had there, hard links within a layer stay links.
/// `dst`'s parent must be a directory the guest cannot change (`dst` itself is opened without
/// following a symlink); below `dst` nothing is trusted.
pub fn flatten_layers(layers: &[PathBuf], dst: &Path) -> io::Result<()> {
    match fs::DirBuilder::new().mode(0o755).create(dst) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::DirBuilder::new().recursive(true).mode(0o755).create(dst)?
        }
        Err(e) => return Err(e),
    }
    let dst = fsat::open_dir_path(dst)?;
    flatten_layers_at(layers, dst.as_fd())
}

/// [`flatten_layers`] onto an already open destination directory.
pub fn flatten_layers_at(layers: &[PathBuf], dst: BorrowedFd<'_>) -> io::Result<()> {
    for layer in layers {
        let src = fsat::open_dir_path(layer)?;
        let mut links = HashMap::new();
        copy_attrs(src.as_fd(), dst, false)?;
        apply_dir(src.as_fd(), dst, dst, Path::new(""), &mut links)?;
    }
    Ok(())
}

fn is_whiteout(st: &rustix::fs::Stat) -> bool {
    fsat::file_type(st) == FileType::CharacterDevice && st.st_rdev == 0
}

/// Copies the directory `src` onto `dst` (`rel` is `dst`'s path beneath `root`).
fn apply_dir(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    root: BorrowedFd<'_>,
    rel: &Path,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> io::Result<()> {
    for name in fsat::list_dir(src)? {
        fsat::check_name(&name)?;
        let Some(st) = fsat::lstat_at(src, &name)? else { continue };
        if is_whiteout(&st) {
            fsat::remove_at(dst, &name)?;
            continue;
        }
        let ft = fsat::file_type(&st);
        if ft == FileType::Directory {
            let from = fsat::open_dir(src, &name)?;
            let opaque =
                fsat::get_xattr(from.as_fd(), OVERLAY_OPAQUE_XATTR)?.is_some_and(|v| v == b"y");
            match fsat::lstat_at(dst, &name)? {
                Some(d) if fsat::file_type(&d) == FileType::Directory && !opaque => {}
                other => {
                    if other.is_some() {
                        fsat::remove_at(dst, &name)?;
                    }
                    rustix::fs::mkdirat(dst, &name, Mode::from_raw_mode(0o700))?;
                }
            }
            let to = fsat::open_dir(dst, &name)?;
            copy_attrs(from.as_fd(), to.as_fd(), false)?;
            apply_dir(from.as_fd(), to.as_fd(), root, &rel.join(&name), links)?;
            continue;
        }
        if matches!(ft, FileType::CharacterDevice | FileType::BlockDevice | FileType::Socket) {
            continue;
        }
        fsat::remove_at(dst, &name)?;
        let key = (st.st_dev, st.st_ino);
        if st.st_nlink > 1 {
            if let Some(first) = links.get(&key) {
                hard_link(root, first, dst, &name)?;
                continue;
            }
            links.insert(key, rel.join(&name));
        }
        match ft {
            FileType::Symlink => {
                let target = rustix::fs::readlinkat(src, &name, Vec::new())?;
                rustix::fs::symlinkat(target.as_c_str(), dst, &name)?;
                let from = fsat::open_path(src, &name)?;
                let to = fsat::open_path(dst, &name)?;
                copy_attrs(from.as_fd(), to.as_fd(), true)?;
            }
            FileType::RegularFile => {
                let mut from = fs::File::from(rustix::fs::openat(
                    src,
                    &name,
                    OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )?);
                let mut to = fsat::create_file(dst, &name)?;
                io::copy(&mut from, &mut to)?;
                copy_attrs(from.as_fd(), to.as_fd(), false)?;
            }
            FileType::Fifo => {
                rustix::fs::mknodat(dst, &name, FileType::Fifo, Mode::from_raw_mode(0o600), 0)?;
                let from = fsat::open_path(src, &name)?;
                let to = fsat::open_path(dst, &name)?;
                copy_attrs(from.as_fd(), to.as_fd(), true)?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// Links `name` in `dir` to the earlier copy at `first` (beneath `root`, no symlink followed).
fn hard_link(
    root: BorrowedFd<'_>,
    first: &Path,
    dir: BorrowedFd<'_>,
    name: &OsStr,
) -> io::Result<()> {
    let (Some(parent), Some(fname)) = (first.parent(), first.file_name()) else {
        return Err(io::Error::other("hard link to the root"));
    };
    let pfd: OwnedFd = fsat::open_dir_beneath(root, parent)?;
    rustix::fs::linkat(&pfd, fname, dir, name, AtFlags::empty())?;
    Ok(())
}

/// Owner, mode (not for symlinks) and the xattrs an image may carry (overlay's own are not
/// copied). `path_fds`: both are O_PATH fds (symlinks, FIFOs), which carry no xattrs here.
fn copy_attrs(from: BorrowedFd<'_>, to: BorrowedFd<'_>, path_fds: bool) -> io::Result<()> {
    let st = rustix::fs::fstat(from)?;
    fsat::chown_fd(to, st.st_uid, st.st_gid)?;
    if fsat::file_type(&st) == FileType::Symlink {
        return Ok(());
    }
    if path_fds {
        return fsat::chmod_fd(to, st.st_mode);
    }
    rustix::fs::fchmod(to, Mode::from_raw_mode(st.st_mode & 0o7777))?;
    let names: Vec<OsString> = fsat::list_xattrs(from)?;
    for name in names {
        if !fsat::xattr_allowed(name.as_encoded_bytes()) {
            continue;
        }
        let Some(n) = name.to_str() else { continue };
        if let Some(v) = fsat::get_xattr(from, n)? {
            fsat::set_xattr(to, &name, &v)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn whiteout(p: &Path) {
        let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: c is a valid NUL-terminated path; mknod does not keep the pointer.
        assert_eq!(unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR, 0) }, 0);
    }

    #[test]
    fn whiteouts_opaque_dirs_links_and_owners() {
        let t = tempfile::tempdir().unwrap();
        let (l1, l2, out) = (t.path().join("l1"), t.path().join("l2"), t.path().join("out"));
        for d in ["etc", "data/sub", "keep"] {
            fs::create_dir_all(l1.join(d)).unwrap();
        }
        fs::write(l1.join("etc/motd"), "hi").unwrap();
        fs::write(l1.join("data/sub/old"), "old").unwrap();
        fs::write(l1.join("keep/file"), "v1").unwrap();
        fs::write(l1.join("replaced"), "file").unwrap();
        std::os::unix::fs::lchown(l1.join("keep/file"), Some(1000), Some(1000)).unwrap();

        fs::create_dir_all(l2.join("etc")).unwrap();
        fs::create_dir_all(l2.join("data")).unwrap();
        fs::create_dir_all(l2.join("replaced")).unwrap();
        whiteout(&l2.join("etc/motd"));
        xattr::set(l2.join("data"), OVERLAY_OPAQUE_XATTR, b"y").unwrap();
        fs::write(l2.join("data/new"), "new").unwrap();
        fs::write(l2.join("a"), "same").unwrap();
        fs::hard_link(l2.join("a"), l2.join("b")).unwrap();
        std::os::unix::fs::symlink("a", l2.join("link")).unwrap();
        fs::set_permissions(l2.join("a"), fs::Permissions::from_mode(0o4750)).unwrap();

        flatten_layers(&[l1.clone(), l2.clone()], &out).unwrap();
        assert!(!out.join("etc/motd").exists() && out.join("etc").is_dir());
        assert!(!out.join("data/sub").exists());
        assert_eq!(fs::read_to_string(out.join("data/new")).unwrap(), "new");
        assert!(xattr::get(out.join("data"), OVERLAY_OPAQUE_XATTR).unwrap().is_none());
        assert_eq!(fs::metadata(out.join("keep/file")).unwrap().uid(), 1000);
        assert!(out.join("replaced").is_dir());
        let a = fs::metadata(out.join("a")).unwrap();
        assert_eq!(a.ino(), fs::metadata(out.join("b")).unwrap().ino());
        assert_ne!(
            a.ino(),
            fs::metadata(l2.join("a")).unwrap().ino(),
            "copied, not linked to the store"
        );
        assert_eq!(a.mode() & 0o7777, 0o4750);
        assert_eq!(fs::read_link(out.join("link")).unwrap(), Path::new("a"));
    }

    #[test]
    fn device_nodes_and_host_xattrs_are_not_copied() {
        let t = tempfile::tempdir().unwrap();
        let (l1, out) = (t.path().join("l1"), t.path().join("out"));
        fs::create_dir_all(&l1).unwrap();
        let c = std::ffi::CString::new(l1.join("null").as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: c is a valid NUL-terminated path; mknod does not keep the pointer.
        let rc = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) };
        assert_eq!(rc, 0);
        fs::write(l1.join("f"), "x").unwrap();
        xattr::set(l1.join("f"), "trusted.carapace", b"1").unwrap();
        xattr::set(l1.join("f"), "user.carapace", b"2").unwrap();
        flatten_layers(&[l1], &out).unwrap();
        assert!(fs::symlink_metadata(out.join("null")).is_err());
        assert!(xattr::get(out.join("f"), "trusted.carapace").unwrap().is_none());
        assert_eq!(xattr::get(out.join("f"), "user.carapace").unwrap().as_deref(), Some(&b"2"[..]));
    }

    #[test]
    fn symlinks_in_the_destination_are_replaced_not_followed() {
        // What the guest may have planted in its rootfs before a copy: symlinks to host paths
        // at names the layers use, and a FIFO where a file goes.
        let t = tempfile::tempdir().unwrap();
        let victim = t.path().join("victim");
        fs::create_dir_all(&victim).unwrap();
        fs::write(victim.join("passwd"), "host").unwrap();
        let (l1, out) = (t.path().join("l1"), t.path().join("out"));
        fs::create_dir_all(l1.join("etc")).unwrap();
        fs::create_dir_all(l1.join("var")).unwrap();
        fs::write(l1.join("etc/passwd"), "image").unwrap();
        fs::write(l1.join("var/log"), "image").unwrap();
        fs::set_permissions(l1.join("var/log"), fs::Permissions::from_mode(0o4755)).unwrap();
        fs::create_dir_all(out.join("var")).unwrap();
        std::os::unix::fs::symlink(&victim, out.join("etc")).unwrap();
        std::os::unix::fs::symlink(victim.join("passwd"), out.join("var/log")).unwrap();
        flatten_layers(&[l1], &out).unwrap();
        assert_eq!(fs::read_to_string(victim.join("passwd")).unwrap(), "host");
        assert_eq!(fs::metadata(victim.join("passwd")).unwrap().mode() & 0o7000, 0);
        assert!(fs::symlink_metadata(out.join("etc")).unwrap().is_dir());
        assert_eq!(fs::read_to_string(out.join("etc/passwd")).unwrap(), "image");
        assert_eq!(fs::read_to_string(out.join("var/log")).unwrap(), "image");
    }

    #[test]
    fn a_symlink_destination_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let victim = t.path().join("victim");
        fs::create_dir_all(&victim).unwrap();
        let l1 = t.path().join("l1");
        fs::create_dir_all(&l1).unwrap();
        fs::write(l1.join("f"), "x").unwrap();
        std::os::unix::fs::symlink(&victim, t.path().join("out")).unwrap();
        assert!(flatten_layers(&[l1], &t.path().join("out")).is_err());
        assert!(!victim.join("f").exists());
    }
}
