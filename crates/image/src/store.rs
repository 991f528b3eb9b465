//! The image store: image records in memory and on disk, lookups by id / tag / digest,
//! removal and garbage collection of content no image references.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use tracing::{info, warn};

use crate::digest::Digest;
use crate::error::{ImageError, Result};
use crate::imageconfig::RuntimeConfig;
use crate::layout::Layout;
use crate::record::ImageRecord;
use crate::reference::ImageRef;

/// What CreateContainer needs from an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerImage {
    /// The image id (config digest).
    pub id: String,
    /// Entrypoint, cmd, env, working dir, user, ... from the image config.
    pub config: RuntimeConfig,
    /// Unpacked layer directories, bottom-most first (overlayfs wants them top-most first in
    /// `lowerdir=`). Whiteouts inside are in overlayfs format (0/0 char devices, opaque xattr).
    pub layers: Vec<PathBuf>,
}

/// Bytes and inodes the store uses on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsUsage {
    pub used_bytes: u64,
    pub inodes_used: u64,
}

/// Content-addressed store of images under one root directory.
pub struct ImageStore {
    pub(crate) layout: Layout,
    images: Mutex<BTreeMap<String, ImageRecord>>,
    /// Pulls hold it shared while they add content; garbage collection holds it exclusively.
    pub(crate) gc_lock: tokio::sync::RwLock<()>,
}

impl ImageStore {
    /// Opens (creating if needed) the store at `root`, reloads the image records and drops
    /// content a crash or failed pull left without an image.
    pub fn open(root: &Path) -> Result<Arc<Self>> {
        let layout = Layout::open(root)?;
        let records = ImageRecord::load_all(&layout)?;
        let images: BTreeMap<_, _> = records.into_iter().map(|r| (r.id.clone(), r)).collect();
        let store = ImageStore {
            layout,
            images: Mutex::new(images),
            gc_lock: tokio::sync::RwLock::new(()),
        };
        store.collect_garbage_locked()?;
        info!(root = %root.display(), images = store.lock().len(), "image store open");
        Ok(Arc::new(store))
    }

    pub fn root(&self) -> &Path {
        self.layout.root()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, ImageRecord>> {
        self.images.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every image, ordered by id.
    pub fn list(&self) -> Vec<ImageRecord> {
        self.lock().values().cloned().collect()
    }

    /// Finds an image by id (`sha256:<hex>` or bare hex), repo tag or repo digest, the way
    /// containerd's CRI resolves the image of a request (`busybox` means
    /// `docker.io/library/busybox:latest`).
    pub fn resolve(&self, reference: &str) -> Option<ImageRecord> {
        let images = self.lock();
        Self::resolve_in(&images, reference).cloned()
    }

    fn resolve_in<'a>(
        images: &'a BTreeMap<String, ImageRecord>,
        reference: &str,
    ) -> Option<&'a ImageRecord> {
        if let Some(r) = images.get(reference) {
            return Some(r);
        }
        if let Ok(d) = Digest::parse(&format!("sha256:{reference}")) {
            if let Some(r) = images.get(&d.to_string()) {
                return Some(r);
            }
        }
        let r = ImageRef::parse(reference).ok()?;
        match r.digest() {
            Some(d) => {
                let want = r.repo_digest(&d);
                images.values().find(|i| i.repo_digests.contains(&want))
            }
            None => {
                let want = r.repo_tag()?;
                images.values().find(|i| i.repo_tags.contains(&want))
            }
        }
    }

    /// The image config and ordered layer directories of an image, for CreateContainer.
    pub fn container_image(&self, reference: &str) -> Result<Option<ContainerImage>> {
        let Some(rec) = self.resolve(reference) else { return Ok(None) };
        let mut layers = Vec::with_capacity(rec.layers.len());
        for l in &rec.layers {
            let dir = self.layout.layer(&Digest::parse(&l.diff_id)?);
            if !dir.is_dir() {
                return Err(ImageError::Unpack {
                    layer: l.diff_id.clone(),
                    detail: format!("{} is missing", dir.display()),
                });
            }
            layers.push(dir);
        }
        Ok(Some(ContainerImage { id: rec.id, config: rec.config, layers }))
    }

    /// The raw config blob of an image (for verbose status).
    pub fn config_blob(&self, rec: &ImageRecord) -> Result<Vec<u8>> {
        let path = self.layout.blob(&rec.id_digest()?);
        fs::read(&path).map_err(|e| ImageError::io_path("reading", &path, e))
    }

    /// Records a pulled image: merges with an existing record of the same id and moves `tag`
    /// away from any other image, the way a registry tag moves.
    pub(crate) fn commit(
        &self,
        mut rec: ImageRecord,
        tag: Option<String>,
        repo_digest: String,
    ) -> Result<ImageRecord> {
        let mut images = self.lock();
        if let Some(old) = images.get(&rec.id) {
            rec.repo_tags = old.repo_tags.clone();
            rec.repo_digests = old.repo_digests.clone();
            for m in &old.manifest_digests {
                if !rec.manifest_digests.contains(m) {
                    rec.manifest_digests.push(m.clone());
                }
            }
            rec.pinned = old.pinned;
        }
        if let Some(tag) = &tag {
            for other in images.values_mut().filter(|o| o.id != rec.id && o.repo_tags.contains(tag))
            {
                other.repo_tags.retain(|t| t != tag);
                other.save(&self.layout)?;
            }
            if !rec.repo_tags.contains(tag) {
                rec.repo_tags.push(tag.clone());
            }
        }
        if !rec.repo_digests.contains(&repo_digest) {
            rec.repo_digests.push(repo_digest);
        }
        rec.save(&self.layout)?;
        images.insert(rec.id.clone(), rec.clone());
        Ok(rec)
    }

    /// Removes the image `reference` names (all its tags, as containerd does) and the content
    /// nothing else uses. Returns the removed record; `None` if there was no such image.
    pub async fn remove(&self, reference: &str) -> Result<Option<ImageRecord>> {
        let _gc = self.gc_lock.write().await;
        let removed = {
            let mut images = self.lock();
            let Some(id) = Self::resolve_in(&images, reference).map(|r| r.id.clone()) else {
                return Ok(None);
            };
            let rec = images.remove(&id);
            if let Some(r) = &rec {
                if let Err(e) = r.delete(&self.layout) {
                    images.insert(id, r.clone());
                    return Err(e);
                }
            }
            rec
        };
        self.collect_garbage_locked()?;
        Ok(removed)
    }

    /// Deletes blobs and layers no image references (waits for running pulls to finish).
    pub async fn collect_garbage(&self) -> Result<()> {
        let _gc = self.gc_lock.write().await;
        self.collect_garbage_locked()
    }

    fn collect_garbage_locked(&self) -> Result<()> {
        let (blobs, layers) = {
            let images = self.lock();
            let mut blobs = HashSet::new();
            let mut layers = HashSet::new();
            for r in images.values() {
                blobs.insert(r.id.clone());
                blobs.extend(r.manifest_digests.iter().cloned());
                for l in &r.layers {
                    blobs.insert(l.digest.clone());
                    layers.insert(l.diff_id.clone());
                }
            }
            (blobs, layers)
        };
        for (dir, keep, is_layer) in
            [(self.layout.blobs_dir(), &blobs, false), (self.layout.layers_dir(), &layers, true)]
        {
            for entry in fs::read_dir(&dir).map_err(|e| ImageError::io_path("reading", &dir, e))? {
                let entry = entry.map_err(|e| ImageError::io_path("reading", &dir, e))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if keep.contains(&format!("sha256:{name}")) {
                    continue;
                }
                let path = entry.path();
                info!(path = %path.display(), "removing unreferenced content");
                let res = if is_layer {
                    // Out of sight first, so a crash mid-delete never leaves a half layer in place.
                    let doomed = self.layout.tmp_path("gc");
                    fs::rename(&path, &doomed).and_then(|_| fs::remove_dir_all(&doomed))
                } else {
                    fs::remove_file(&path)
                };
                if let Err(e) = res {
                    warn!(path = %path.display(), error = %e, "cannot remove unreferenced content");
                }
            }
        }
        Ok(())
    }

    /// Disk usage of the whole store (hard links counted once).
    pub fn fs_usage(&self) -> Result<FsUsage> {
        let mut usage = FsUsage { used_bytes: 0, inodes_used: 0 };
        let mut seen = HashSet::new();
        let mut stack = vec![self.layout.root().to_path_buf()];
        while let Some(p) = stack.pop() {
            let md = match fs::symlink_metadata(&p) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(ImageError::io_path("stat", &p, e)),
            };
            if md.nlink() > 1 && !md.is_dir() && !seen.insert((md.dev(), md.ino())) {
                continue;
            }
            usage.used_bytes += md.blocks() * 512;
            usage.inodes_used += 1;
            if md.is_dir() {
                match fs::read_dir(&p) {
                    Ok(rd) => stack.extend(rd.filter_map(|e| e.ok()).map(|e| e.path())),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(ImageError::io_path("reading", &p, e)),
                }
            }
        }
        Ok(usage)
    }
}

#[cfg(test)]
mod tests;
