//! Unpacking one layer tar (gzip, zstd or plain) into its own directory.
//!
//! The directory keeps the layer as a diff in overlayfs format, so it can be stacked as an
//! overlayfs lower dir: an OCI whiteout `.wh.NAME` becomes a 0/0 character device `NAME`, an
//! opaque marker `.wh..wh..opq` becomes the `trusted.overlay.opaque=y` xattr on its directory.
//! Ownership, permissions, mtimes, `user.*` and file-capability xattrs, symlinks, hard links
//! and FIFOs are kept (this needs root, as the daemon is); device nodes are skipped. The
//! uncompressed stream is hashed and must match the diff_id from the image config.

use std::cell::Cell;
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rustix::fs::{AtFlags, FileType, Mode, Timespec, Timestamps};
use tar::EntryType;
use tracing::debug;

use crate::config::PullLimits;
use crate::digest::{Digest, HashingReader};
use crate::error::{ImageError, Result};
use crate::fsat;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// The xattr overlayfs reads to treat a directory as opaque.
pub const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";
/// Header blocks and padding the tar reader reads around one entry's metadata.
const HEADER_SLACK: u64 = 16 << 10;
/// Longest entry path or link target (Linux' PATH_MAX).
const MAX_PATH: usize = 4096;

/// Which bound a layer hit (kept beside the io error, which the tar reader may rewrap).
type Hit = Rc<Cell<Option<(&'static str, u64)>>>;

/// Unpacks the layer blob at `blob` into `dst` (which must not exist yet) and checks that the
/// uncompressed tar hashes to `diff_id`. Returns the uncompressed size. On error `dst` may hold
/// a partial tree: the caller unpacks into a temp dir and removes it.
///
/// Every name is created relative to the fd of its parent directory, which was opened without
/// following symlinks, so a symlink an earlier entry planted (`etc -> /etc`) is never walked
/// through; hard link targets resolve beneath the layer the same way. Device nodes (other than
/// overlayfs whiteouts) are skipped, as rootless unpackers do: the host never gets one from a
/// registry. The uncompressed size, the entry count and each entry's metadata are bounded by
/// `limits`.
pub(crate) fn unpack_layer(
    blob: &Path,
    dst: &Path,
    diff_id: &Digest,
    limits: &PullLimits,
    image: &ImageBudget,
) -> Result<u64> {
    let err = |detail: String| ImageError::Unpack { layer: diff_id.to_string(), detail };
    let file = File::open(blob).map_err(|e| ImageError::io_path("opening", blob, e))?;
    let reader =
        decompressor(BufReader::with_capacity(1 << 16, file)).map_err(|e| err(e.to_string()))?;
    fs::DirBuilder::new()
        .mode(0o755)
        .create(dst)
        .map_err(|e| ImageError::io_path("creating", dst, e))?;

    let hit: Hit = Rc::default();
    let limited = Limited {
        inner: reader,
        left: limits.max_layer_unpacked_bytes,
        limit: limits.max_layer_unpacked_bytes,
        image: image.clone(),
        hit: hit.clone(),
    };
    let mut hashing = HashingReader::new(limited);
    let res = unpack_tar(&mut hashing, dst, limits, &hit);
    let res = res.and_then(|_| {
        hashing.finish().map_err(|e| io::Error::other(format!("reading after the tar end: {e}")))
    });
    if let Some((setting, limit)) = hit.get() {
        let actual = match setting {
            "max_layer_entries" => "the number of tar entries",
            "max_tar_header_bytes" => "the metadata (long name, PAX header) of one tar entry",
            "max_image_unpacked_bytes" => "the uncompressed layers of the image together",
            _ => "the uncompressed tar",
        };
        return Err(ImageError::limit(format!("layer {diff_id}"), setting, limit, actual));
    }
    let (actual, size) = res.map_err(|e| err(e.to_string()))?;
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

/// What the layers one pull unpacks may write together (`max_image_unpacked_bytes`), shared
/// by the layers' unpack tasks. Layers already in the store cost nothing.
#[derive(Debug, Clone)]
pub(crate) struct ImageBudget {
    left: Arc<AtomicU64>,
    limit: u64,
}

impl ImageBudget {
    pub(crate) fn new(limit: u64) -> Self {
        ImageBudget { left: Arc::new(AtomicU64::new(limit)), limit }
    }

    /// Takes `n` bytes; false (and nothing taken) when fewer are left.
    fn take(&self, n: u64) -> bool {
        self.left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |l| l.checked_sub(n)).is_ok()
    }
}

/// Fails the read once more than `limit` bytes came through (the uncompressed-size bound), or
/// once the image's budget is spent.
struct Limited<R> {
    inner: R,
    left: u64,
    limit: u64,
    image: ImageBudget,
    hit: Hit,
}

impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // One byte more than allowed is asked for, to tell "exactly the limit" from "more".
        let want =
            buf.len().min(usize::try_from(self.left.saturating_add(1)).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n as u64 > self.left {
            self.hit.set(Some(("max_layer_unpacked_bytes", self.limit)));
            return Err(io::Error::other(format!(
                "uncompressed layer larger than {} bytes",
                self.limit
            )));
        }
        if !self.image.take(n as u64) {
            self.hit.set(Some(("max_image_unpacked_bytes", self.image.limit)));
            return Err(io::Error::other(format!(
                "uncompressed layers of the image larger than {} bytes",
                self.image.limit
            )));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// What the tar reader may read before the next entry is handed out: its metadata (long
/// names, PAX headers, which the tar crate reads into memory) is bounded this way.
struct Budget<R> {
    inner: R,
    left: Rc<Cell<u64>>,
    limit: u64,
    hit: Hit,
}

impl<R: Read> Read for Budget<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.left.get();
        if left == 0 {
            self.hit.set(Some(("max_tar_header_bytes", self.limit)));
            return Err(io::Error::other(format!(
                "tar entry metadata (long name or PAX header) larger than {} bytes",
                self.limit
            )));
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.left.set(left - n as u64);
        Ok(n)
    }
}

fn unpack_tar<R: Read>(r: R, dst: &Path, limits: &PullLimits, hit: &Hit) -> io::Result<()> {
    let meta_budget = limits.max_tar_header_bytes.saturating_add(HEADER_SLACK);
    let left = Rc::new(Cell::new(meta_budget));
    let budget = Budget {
        inner: r,
        left: left.clone(),
        limit: limits.max_tar_header_bytes,
        hit: hit.clone(),
    };
    let root = fsat::open_dir_path(dst)?;
    let mut ar = tar::Archive::new(budget);
    let mut dir_times = Vec::new();
    let mut count = 0u64;
    let mut entries = ar.entries()?;
    loop {
        left.set(meta_budget);
        let Some(entry) = entries.next() else { break };
        left.set(u64::MAX);
        let mut entry = entry?;
        count += 1;
        if count > limits.max_layer_entries {
            hit.set(Some(("max_layer_entries", limits.max_layer_entries)));
            return Err(io::Error::other("too many entries"));
        }
        apply_entry(root.as_fd(), &mut entry, &mut dir_times)?;
        // The rest of the data (of a skipped entry) is read here, not under the metadata budget.
        io::copy(&mut entry, &mut io::sink())?;
    }
    // Directory mtimes last: creating their entries changed them.
    for (rel, mtime) in dir_times {
        if let Ok(fd) = fsat::open_dir_beneath(root.as_fd(), &rel) {
            rustix::fs::futimens(&fd, &times(mtime))?;
        }
    }
    Ok(())
}

fn times(mtime: u64) -> Timestamps {
    let t = Timespec { tv_sec: mtime.min(i64::MAX as u64) as i64, tv_nsec: 0 };
    Timestamps { last_access: t, last_modification: t }
}

/// Owner and mode through an fd on exactly the new inode (mode after owner: chown clears
/// setuid).
fn owner_mode(fd: BorrowedFd<'_>, uid: u64, gid: u64, mode: u32) -> io::Result<()> {
    let id = |v: u64| u32::try_from(v).map_err(|_| io::Error::other(format!("bad id {v}")));
    fsat::chown_fd(fd, id(uid)?, id(gid)?)?;
    fsat::chmod_fd(fd, mode)
}

fn apply_entry<R: Read>(
    root: BorrowedFd<'_>,
    entry: &mut tar::Entry<'_, R>,
    dir_times: &mut Vec<(PathBuf, u64)>,
) -> io::Result<()> {
    let raw = entry.path()?.into_owned();
    if raw.as_os_str().len() > MAX_PATH {
        return Err(io::Error::other(format!("entry path longer than {MAX_PATH} bytes")));
    }
    let rel = clean_relative(&raw)?;
    let h = entry.header().clone();
    let kind = h.entry_type();
    if matches!(kind, EntryType::XGlobalHeader | EntryType::XHeader) {
        return Ok(());
    }
    let (mode, uid, gid, mtime) = (h.mode()? & 0o7777, h.uid()?, h.gid()?, h.mtime()?);
    let Some(name) = rel.file_name().map(OsStr::to_os_string) else {
        // The layer's root ("./"): take its mode and owner.
        if kind == EntryType::Directory {
            owner_mode(root, uid, gid, mode)?;
        }
        return Ok(());
    };
    let parent_rel = rel.parent().unwrap_or(Path::new(""));
    let parent = fsat::ensure_dirs(root, parent_rel)?;
    let parent = parent.as_fd();
    let name_s = name.to_string_lossy();
    if name_s == OPAQUE_MARKER {
        fsat::set_xattr(parent, OsStr::new(OVERLAY_OPAQUE_XATTR), b"y")?;
        return Ok(());
    }
    if let Some(target) = name_s.strip_prefix(WHITEOUT_PREFIX) {
        if target.starts_with(WHITEOUT_PREFIX) || fsat::check_name(OsStr::new(target)).is_err() {
            // Other AUFS metadata (.wh..wh.plnk, ...): nothing to do for an overlay diff.
            return Ok(());
        }
        let target = OsStr::new(target);
        fsat::remove_at(parent, target)?;
        return whiteout(parent, target);
    }
    let xattrs = pax_xattrs(entry)?;
    match kind {
        EntryType::Directory => {
            match fsat::lstat_at(parent, &name)? {
                Some(st) if fsat::file_type(&st) == FileType::Directory => {}
                other => {
                    if other.is_some() {
                        fsat::remove_at(parent, &name)?;
                    }
                    rustix::fs::mkdirat(parent, &name, Mode::from_raw_mode(0o700))?;
                }
            }
            let fd = fsat::open_dir(parent, &name)?;
            owner_mode(fd.as_fd(), uid, gid, mode)?;
            set_xattrs(fd.as_fd(), &xattrs)?;
            dir_times.push((rel, mtime));
        }
        EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
            fsat::remove_at(parent, &name)?;
            let mut f = fsat::create_file(parent, &name)?;
            io::copy(entry, &mut f)?;
            owner_mode(f.as_fd(), uid, gid, mode)?;
            set_xattrs(f.as_fd(), &xattrs)?;
            rustix::fs::futimens(&f, &times(mtime))?;
        }
        EntryType::Symlink => {
            let target = entry
                .link_name()?
                .ok_or_else(|| {
                    io::Error::other(format!("symlink {} has no target", raw.display()))
                })?
                .into_owned();
            if target.as_os_str().len() > MAX_PATH {
                return Err(io::Error::other("symlink target too long"));
            }
            fsat::remove_at(parent, &name)?;
            // The target is only data in the link: nothing here ever follows it.
            rustix::fs::symlinkat(&target, parent, &name)?;
            let fd = fsat::open_path(parent, &name)?;
            let id = |v: u64| u32::try_from(v).map_err(|_| io::Error::other("bad id"));
            fsat::chown_fd(fd.as_fd(), id(uid)?, id(gid)?)?;
        }
        EntryType::Link => {
            let target = entry
                .link_name()?
                .ok_or_else(|| io::Error::other(format!("link {} has no target", raw.display())))?
                .into_owned();
            // Relative to the layer root also when written absolute; never with `..`.
            let target = clean_relative(&target)?;
            let Some(tname) = target.file_name() else {
                return Err(io::Error::other("hard link to the layer root"));
            };
            let tdir = fsat::open_dir_beneath(root, target.parent().unwrap_or(Path::new("")))
                .map_err(|e| io::Error::other(format!("hard link target {target:?}: {e}")))?;
            if target == rel {
                return Ok(());
            }
            fsat::remove_at(parent, &name)?;
            // No AT_SYMLINK_FOLLOW: a symlink target is linked as the symlink itself.
            rustix::fs::linkat(&tdir, tname, parent, &name, AtFlags::empty())
                .map_err(|e| io::Error::other(format!("hard link to {target:?}: {e}")))?;
        }
        EntryType::Fifo => {
            fsat::remove_at(parent, &name)?;
            rustix::fs::mknodat(parent, &name, FileType::Fifo, Mode::from_raw_mode(0o600), 0)?;
            let fd = fsat::open_path(parent, &name)?;
            owner_mode(fd.as_fd(), uid, gid, mode)?;
        }
        EntryType::Char | EntryType::Block => {
            let (major, minor) = (h.device_major()?.unwrap_or(0), h.device_minor()?.unwrap_or(0));
            if kind == EntryType::Char && major == 0 && minor == 0 {
                // Already an overlayfs whiteout.
                fsat::remove_at(parent, &name)?;
                return whiteout(parent, &name);
            }
            debug!(path = %raw.display(), major, minor, "skipping a device node in a layer");
        }
        other => {
            debug!(path = %raw.display(), kind = ?other, "skipping an unsupported tar entry");
        }
    }
    Ok(())
}

/// An overlayfs whiteout: a 0/0 character device (it cannot be opened: no driver has 0/0).
fn whiteout(parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    rustix::fs::mknodat(parent, name, FileType::CharacterDevice, Mode::empty(), 0)?;
    Ok(())
}

/// The `SCHILY.xattr.*` records of the entry's PAX header that may land on a host file.
fn pax_xattrs<R: Read>(entry: &mut tar::Entry<'_, R>) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    let Some(exts) = entry.pax_extensions()? else { return Ok(out) };
    for ext in exts {
        let ext = ext?;
        let Some(name) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") else { continue };
        if fsat::xattr_allowed(name) {
            out.push((name.to_vec(), ext.value_bytes().to_vec()));
        } else {
            debug!(xattr = %String::from_utf8_lossy(name), "dropping an xattr from a layer");
        }
    }
    Ok(out)
}

fn set_xattrs(fd: BorrowedFd<'_>, xattrs: &[(Vec<u8>, Vec<u8>)]) -> io::Result<()> {
    for (name, value) in xattrs {
        fsat::set_xattr(fd, OsStr::from_bytes(name), value)?;
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

#[cfg(test)]
mod tests;
