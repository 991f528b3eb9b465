//! Where things live under the store root, and atomic file writes.
//!
//! ```text
//! <root>/blobs/sha256/<hex>     content-addressed blobs (indexes, manifests, configs, layers)
//! <root>/layers/sha256/<hex>/   one unpacked layer per diff_id, overlayfs whiteout format
//! <root>/images/<hex>.json      one record per image, named by its id (config digest)
//! <root>/tmp/                   in-flight downloads and unpacks; emptied when the store opens
//! ```
//! Everything is made under `tmp/` and renamed into place, so a crash leaves only `tmp/` debris.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::digest::Digest;
use crate::error::{ImageError, Result};

#[derive(Debug, Clone)]
pub(crate) struct Layout {
    root: PathBuf,
}

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

impl Layout {
    /// Creates the directories and clears leftovers of an earlier crash from `tmp/`.
    pub(crate) fn open(root: &Path) -> Result<Self> {
        let l = Layout { root: root.to_path_buf() };
        let tmp = l.tmp_dir();
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(|e| ImageError::io_path("clearing", &tmp, e))?;
        }
        // Root-only: layers keep the setuid files, file capabilities and root-owned trees of
        // their images, which no other host user may reach (containerd's store is 0700 too).
        let private = |d: &Path| -> Result<()> {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(d)
                .and_then(|_| fs::set_permissions(d, fs::Permissions::from_mode(0o700)))
                .map_err(|e| ImageError::io_path("creating", d, e))
        };
        private(root)?;
        for d in [l.blobs_dir(), l.layers_dir(), l.images_dir(), tmp] {
            if let Some(p) = d.parent().filter(|p| *p != root) {
                private(p)?;
            }
            private(&d)?;
        }
        Ok(l)
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }
    pub(crate) fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs/sha256")
    }
    pub(crate) fn layers_dir(&self) -> PathBuf {
        self.root.join("layers/sha256")
    }
    pub(crate) fn images_dir(&self) -> PathBuf {
        self.root.join("images")
    }
    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }
    pub(crate) fn blob(&self, d: &Digest) -> PathBuf {
        self.blobs_dir().join(d.hex())
    }
    pub(crate) fn layer(&self, diff_id: &Digest) -> PathBuf {
        self.layers_dir().join(diff_id.hex())
    }
    pub(crate) fn record(&self, id: &Digest) -> PathBuf {
        self.images_dir().join(format!("{}.json", id.hex()))
    }

    /// A fresh path under `tmp/` (unique within this process; `tmp/` is private to one daemon).
    pub(crate) fn tmp_path(&self, hint: &str) -> PathBuf {
        let n = TMP_SEQ.fetch_add(1, Ordering::Relaxed);
        self.tmp_dir().join(format!("{hint}-{}-{n}", std::process::id()))
    }

    /// A fresh temp path that is removed (file or tree) unless [`TmpGuard::persist`]ed.
    pub(crate) fn tmp(&self, hint: &str) -> TmpGuard {
        TmpGuard { path: Some(self.tmp_path(hint)) }
    }

    /// Writes `data` to `dst` through a synced temp file and a rename.
    pub(crate) fn write_atomic(&self, dst: &Path, data: &[u8]) -> Result<()> {
        let tmp = self.tmp("write");
        (|| {
            let mut f = fs::File::create(tmp.path())?;
            f.write_all(data)?;
            f.sync_all()?;
            tmp.persist(dst)
        })()
        .map_err(|e| ImageError::io_path("writing", dst, e))
    }

    /// Stores a blob already in memory after checking its digest (no-op if present).
    pub(crate) fn put_blob(&self, d: &Digest, data: &[u8]) -> Result<()> {
        d.verify(&format!("blob {d}"), data)?;
        let dst = self.blob(d);
        if dst.exists() {
            return Ok(());
        }
        self.write_atomic(&dst, data)
    }
}

/// Owns a temp file or directory: removes it when dropped, also when the work is abandoned
/// half-way (an error, a cancelled request), unless it was renamed into place.
pub(crate) struct TmpGuard {
    path: Option<PathBuf>,
}

impl TmpGuard {
    pub(crate) fn path(&self) -> &Path {
        self.path.as_deref().unwrap_or(Path::new(""))
    }

    /// Renames the temp file or directory to `dst` and syncs `dst`'s parent directory, so the
    /// new name survives a crash. The content must have been synced before (see [`sync_fs`]).
    pub(crate) fn persist(mut self, dst: &Path) -> std::io::Result<()> {
        let path = self.path.take().unwrap_or_default();
        if let Err(e) = fs::rename(&path, dst) {
            self.path = Some(path);
            return Err(e);
        }
        match dst.parent() {
            Some(parent) => fs::File::open(parent)?.sync_all(),
            None => Ok(()),
        }
    }
}

impl Drop for TmpGuard {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            let _ = match fs::symlink_metadata(&p) {
                Ok(m) if m.is_dir() => fs::remove_dir_all(&p),
                Ok(_) => fs::remove_file(&p),
                Err(_) => Ok(()),
            };
        }
    }
}

/// Flushes every file of the filesystem holding `path` to disk (`syncfs(2)`): one call for a
/// whole unpacked layer tree instead of an fsync per file, before the tree is renamed into place.
pub(crate) fn sync_fs(path: &Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let f = fs::File::open(path)?;
    // SAFETY: syncfs only reads the descriptor, which `f` keeps open for the call.
    if unsafe { libc::syncfs(f.as_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_clears_tmp_and_put_blob_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let l = Layout::open(dir.path()).unwrap();
        fs::write(l.tmp_path("junk"), b"half").unwrap();
        let l = Layout::open(dir.path()).unwrap();
        assert_eq!(fs::read_dir(l.tmp_dir()).unwrap().count(), 0);
        for d in [dir.path().to_path_buf(), dir.path().join("blobs"), l.blobs_dir(), l.layers_dir()]
        {
            let mode = fs::metadata(&d).unwrap().permissions().mode() & 0o7777;
            assert_eq!(mode, 0o700, "{}", d.display());
        }

        let d = Digest::of(b"data");
        l.put_blob(&d, b"data").unwrap();
        assert_eq!(fs::read(l.blob(&d)).unwrap(), b"data");
        let other = Digest::of(b"other");
        assert!(l.put_blob(&other, b"not other").is_err());
        assert!(!l.blob(&other).exists());
        assert_eq!(fs::read_dir(l.tmp_dir()).unwrap().count(), 0);
    }

    #[test]
    fn tmp_guard_removes_unless_persisted() {
        let dir = tempfile::tempdir().unwrap();
        let l = Layout::open(dir.path()).unwrap();
        let t = l.tmp("d");
        fs::create_dir_all(t.path().join("a/b")).unwrap();
        drop(t);
        let t = l.tmp("f");
        fs::write(t.path(), b"x").unwrap();
        t.persist(&dir.path().join("kept")).unwrap();
        assert_eq!(fs::read_dir(l.tmp_dir()).unwrap().count(), 0);
        assert!(dir.path().join("kept").is_file());
    }
}
