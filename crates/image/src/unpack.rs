//! Unpacking one layer tar (gzip, zstd or plain) into its own directory.
//!
//! The directory keeps the layer as a diff in overlayfs format, so it can be stacked as an
//! overlayfs lower dir: an OCI whiteout `.wh.NAME` becomes a 0/0 character device `NAME`, an
//! opaque marker `.wh..wh..opq` becomes the `trusted.overlay.opaque=y` xattr on its directory.
//! Ownership, permissions, mtimes, xattrs, symlinks, hard links and device nodes are kept
//! (this needs root, as the daemon is). The uncompressed stream is hashed and must match the
//! diff_id from the image config.

use std::ffi::CString;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use tar::EntryType;
use tracing::debug;

use crate::digest::{Digest, HashingReader};
use crate::error::{ImageError, Result};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// The xattr overlayfs reads to treat a directory as opaque.
pub const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// Unpacks the layer blob at `blob` into `dst` (which must not exist yet) and checks that the
/// uncompressed tar hashes to `diff_id`. Returns the uncompressed size. On error `dst` may hold
/// a partial tree: the caller unpacks into a temp dir and removes it.
pub(crate) fn unpack_layer(blob: &Path, dst: &Path, diff_id: &Digest) -> Result<u64> {
    let err = |detail: String| ImageError::Unpack { layer: diff_id.to_string(), detail };
    let file = File::open(blob).map_err(|e| ImageError::io_path("opening", blob, e))?;
    let reader =
        decompressor(BufReader::with_capacity(1 << 16, file)).map_err(|e| err(e.to_string()))?;
    fs::DirBuilder::new()
        .mode(0o755)
        .create(dst)
        .map_err(|e| ImageError::io_path("creating", dst, e))?;

    let mut hashing = HashingReader::new(reader);
    unpack_tar(&mut hashing, dst).map_err(|e| err(e.to_string()))?;
    let (actual, size) =
        hashing.finish().map_err(|e| err(format!("reading after the tar end: {e}")))?;
    if &actual != diff_id {
        return Err(ImageError::DigestMismatch {
            what: "uncompressed layer (diff_id)".into(),
            expected: diff_id.to_string(),
            actual: actual.to_string(),
        });
    }
    debug!(%diff_id, size, dst = %dst.display(), "layer unpacked");
    Ok(size)
}

/// Picks the decompressor from the stream's magic bytes (media types lie more often than magic).
fn decompressor<R: BufRead + 'static>(mut r: R) -> io::Result<Box<dyn Read>> {
    let head = r.fill_buf()?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::bufread::MultiGzDecoder::new(r)))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        let d = ruzstd::decoding::StreamingDecoder::new(r)
            .map_err(|e| io::Error::other(format!("zstd: {e}")))?;
        Ok(Box::new(d))
    } else {
        Ok(Box::new(r))
    }
}

fn unpack_tar<R: Read>(r: R, dst: &Path) -> io::Result<()> {
    let mut ar = tar::Archive::new(r);
    ar.set_preserve_permissions(true);
    ar.set_preserve_ownerships(true);
    ar.set_unpack_xattrs(true);
    ar.set_preserve_mtime(true);
    ar.set_overwrite(true);
    for entry in ar.entries()? {
        let mut entry = entry?;
        let raw = entry.path()?.into_owned();
        let rel = clean_relative(&raw)?;
        let Some(name) = rel.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            // The layer's root ("./"): take its mode and owner.
            let h = entry.header();
            fs::set_permissions(dst, fs::Permissions::from_mode(h.mode()? & 0o7777))?;
            std::os::unix::fs::lchown(dst, Some(h.uid()? as u32), Some(h.gid()? as u32))?;
            continue;
        };
        let parent_rel = rel.parent().unwrap_or(Path::new(""));
        if name == OPAQUE_MARKER {
            let dir = ensure_dir(dst, parent_rel)?;
            xattr::set(&dir, OVERLAY_OPAQUE_XATTR, b"y")?;
            continue;
        }
        if let Some(target) = name.strip_prefix(WHITEOUT_PREFIX) {
            if target.starts_with(WHITEOUT_PREFIX)
                || target.is_empty()
                || target == "."
                || target == ".."
            {
                // Other AUFS metadata (.wh..wh.plnk, ...): nothing to do for an overlay diff.
                continue;
            }
            let path = ensure_dir(dst, parent_rel)?.join(target);
            remove_any(&path)?;
            mknod(&path, libc::S_IFCHR, 0, 0)?;
            continue;
        }
        let kind = entry.header().entry_type();
        if matches!(kind, EntryType::Char | EntryType::Block | EntryType::Fifo) {
            let h = entry.header();
            let path = ensure_dir(dst, parent_rel)?.join(&name);
            remove_any(&path)?;
            let (fmt, major, minor) = match kind {
                EntryType::Char => {
                    (libc::S_IFCHR, h.device_major()?.unwrap_or(0), h.device_minor()?.unwrap_or(0))
                }
                EntryType::Block => {
                    (libc::S_IFBLK, h.device_major()?.unwrap_or(0), h.device_minor()?.unwrap_or(0))
                }
                _ => (libc::S_IFIFO, 0, 0),
            };
            let mode = h.mode()? & 0o7777;
            mknod(&path, fmt | mode, major, minor)?;
            std::os::unix::fs::lchown(&path, Some(h.uid()? as u32), Some(h.gid()? as u32))?;
            fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
            continue;
        }
        // Parents created here so that no symlink in the path is followed out of the layer.
        ensure_dir(dst, parent_rel)?;
        if !entry.unpack_in(dst)? {
            return Err(io::Error::other(format!(
                "entry {} points outside the layer",
                raw.display()
            )));
        }
    }
    Ok(())
}

/// `./a/b`, `/a/b` and `a/b` -> `a/b`; any `..` is refused.
fn clean_relative(p: &Path) -> io::Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(io::Error::other(format!(
                    "entry path {} leaves the layer",
                    p.display()
                )))
            }
        }
    }
    Ok(out)
}

/// Creates the directories of `rel` under `root` one at a time, refusing to walk through
/// anything that is not a real directory (a symlink there could point out of the layer).
fn ensure_dir(root: &Path, rel: &Path) -> io::Result<PathBuf> {
    let mut cur = root.to_path_buf();
    for c in rel.components() {
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(io::Error::other(format!("{} is not a directory", cur.display()))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::DirBuilder::new().mode(0o755).create(&cur)?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(cur)
}

fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn mknod(path: &Path, mode: libc::mode_t, major: u32, minor: u32) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: c is a valid NUL-terminated path; mknod does not keep the pointer.
    let rc = unsafe { libc::mknod(c.as_ptr(), mode, libc::makedev(major, minor)) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests;
