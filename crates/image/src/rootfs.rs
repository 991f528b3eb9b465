//! Flattening unpacked layers (overlayfs diff format) into one plain directory tree: the
//! rootfs of a container when it is not assembled with overlayfs. Files are copied, never
//! linked to the store, so a container cannot write into shared layers.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::unpack::OVERLAY_OPAQUE_XATTR;

/// Applies `layers` (bottom-most first) onto `dst` (created if missing): whiteouts delete,
/// opaque directories hide what lower layers had there, hard links within a layer stay links.
pub fn flatten_layers(layers: &[PathBuf], dst: &Path) -> io::Result<()> {
    fs::DirBuilder::new().recursive(true).mode(0o755).create(dst)?;
    for layer in layers {
        let mut links = HashMap::new();
        copy_attrs(layer, dst)?;
        apply_dir(layer, dst, &mut links)?;
    }
    Ok(())
}

fn is_whiteout(md: &fs::Metadata) -> bool {
    md.file_type().is_char_device() && md.rdev() == 0
}

fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn apply_dir(src: &Path, dst: &Path, links: &mut HashMap<(u64, u64), PathBuf>) -> io::Result<()> {
    for entry in fs::read_dir(src)? {
        let entry = entry?;
        let from = entry.path();
        let to = dst.join(entry.file_name());
        let md = fs::symlink_metadata(&from)?;
        if is_whiteout(&md) {
            remove_any(&to)?;
            continue;
        }
        if md.is_dir() {
            let opaque = xattr::get(&from, OVERLAY_OPAQUE_XATTR)?.is_some_and(|v| v == b"y");
            match fs::symlink_metadata(&to) {
                Ok(m) if m.is_dir() && !opaque => {}
                Ok(_) => {
                    remove_any(&to)?;
                    fs::create_dir(&to)?;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => fs::create_dir(&to)?,
                Err(e) => return Err(e),
            }
            copy_attrs(&from, &to)?;
            apply_dir(&from, &to, links)?;
            continue;
        }
        remove_any(&to)?;
        if md.nlink() > 1 {
            if let Some(first) = links.get(&(md.dev(), md.ino())) {
                fs::hard_link(first, &to)?;
                continue;
            }
            links.insert((md.dev(), md.ino()), to.clone());
        }
        let ft = md.file_type();
        if ft.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&from)?, &to)?;
        } else if ft.is_file() {
            fs::copy(&from, &to)?;
        } else {
            mknod(&to, md.mode(), md.rdev())?;
        }
        copy_attrs(&from, &to)?;
    }
    Ok(())
}

/// Owner, mode (not for symlinks) and xattrs (overlay's own excepted).
fn copy_attrs(from: &Path, to: &Path) -> io::Result<()> {
    let md = fs::symlink_metadata(from)?;
    std::os::unix::fs::lchown(to, Some(md.uid()), Some(md.gid()))?;
    if !md.file_type().is_symlink() {
        fs::set_permissions(to, fs::Permissions::from_mode(md.mode() & 0o7777))?;
        for name in xattr::list(from)? {
            if name.as_bytes().starts_with(b"trusted.overlay.") {
                continue;
            }
            if let Some(v) = xattr::get(from, &name)? {
                xattr::set(to, &name, &v)?;
            }
        }
    }
    Ok(())
}

fn mknod(path: &Path, mode: u32, dev: u64) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: c is a valid NUL-terminated path; mknod does not keep the pointer.
    if unsafe { libc::mknod(c.as_ptr(), mode as libc::mode_t, dev as libc::dev_t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whiteout(p: &Path) {
        mknod(p, libc::S_IFCHR, 0).unwrap();
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
}
