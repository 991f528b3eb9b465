//! Image records: what the store knows about one image, kept as JSON under `images/`.

use std::fs;

use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::digest::Digest;
use crate::error::{ImageError, Result};
use crate::imageconfig::RuntimeConfig;
use crate::layout::Layout;

/// One layer of an image, bottom-most first in [`ImageRecord::layers`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// Digest of the blob as served (compressed).
    pub digest: String,
    /// Digest of the uncompressed tar (names the unpacked directory).
    pub diff_id: String,
    pub size: u64,
    pub media_type: String,
}

/// An image in the store. Its id is the digest of its config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub id: String,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    /// Bytes of content: config plus compressed layers.
    pub size: u64,
    /// Index and manifest blobs that belong to this image.
    pub manifest_digests: Vec<String>,
    pub layers: Vec<LayerRecord>,
    pub config: RuntimeConfig,
    #[serde(default)]
    pub pinned: bool,
}

impl ImageRecord {
    pub(crate) fn id_digest(&self) -> Result<Digest> {
        Digest::parse(&self.id)
    }

    /// Loads every record; unreadable ones are logged and skipped (their content is collected).
    pub(crate) fn load_all(layout: &Layout) -> Result<Vec<ImageRecord>> {
        let dir = layout.images_dir();
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(|e| ImageError::io_path("reading", &dir, e))? {
            let path = entry.map_err(|e| ImageError::io_path("reading", &dir, e))?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            match fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<ImageRecord>(&b).map_err(|e| e.to_string()))
            {
                Ok(r) if r.id_digest().is_ok() => out.push(r),
                Ok(r) => {
                    warn!(path = %path.display(), id = %r.id, "image record with a bad id, ignored")
                }
                Err(e) => {
                    warn!(path = %path.display(), error = %e, "unreadable image record, ignored")
                }
            }
        }
        Ok(out)
    }

    pub(crate) fn save(&self, layout: &Layout) -> Result<()> {
        let id = self.id_digest()?;
        let data =
            serde_json::to_vec_pretty(self).map_err(|e| ImageError::invalid("image record", e))?;
        layout.write_atomic(&layout.record(&id), &data)
    }

    pub(crate) fn delete(&self, layout: &Layout) -> Result<()> {
        let path = layout.record(&self.id_digest()?);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(ImageError::io_path("removing", &path, e))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample(id: &Digest) -> ImageRecord {
        ImageRecord {
            id: id.to_string(),
            repo_tags: vec!["docker.io/library/busybox:latest".into()],
            repo_digests: vec![],
            size: 42,
            manifest_digests: vec![],
            layers: vec![],
            config: RuntimeConfig { user: "1000".into(), ..Default::default() },
            pinned: false,
        }
    }

    #[test]
    fn save_load_delete_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let l = Layout::open(dir.path()).unwrap();
        let r = sample(&Digest::of(b"config"));
        r.save(&l).unwrap();
        fs::write(l.images_dir().join("broken.json"), b"{").unwrap();
        assert_eq!(ImageRecord::load_all(&l).unwrap(), vec![r.clone()]);
        r.delete(&l).unwrap();
        r.delete(&l).unwrap();
        assert!(ImageRecord::load_all(&l).unwrap().is_empty());
    }
}
