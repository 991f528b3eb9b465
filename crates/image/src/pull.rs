//! PullImage: resolve a reference on the registry (or its mirrors), select the linux/amd64
//! manifest, fetch and verify the config and layers, unpack each layer once, record the image.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use oci_client::Reference;
use tracing::{debug, info, warn};

use crate::auth::Credentials;
use crate::config::{PullLimits, RegistryConfig};
use crate::digest::Digest;
use crate::error::{ImageError, Result};
use crate::flights::Flights;
use crate::imageconfig::ConfigFile;
use crate::layout::sync_fs;
use crate::manifest::{select_linux_amd64, Descriptor, Manifest};
use crate::record::{ImageRecord, LayerRecord};
use crate::reference::ImageRef;
use crate::registry::Session;
use crate::store::ImageStore;
use crate::unpack::{unpack_layer, ImageBudget};

/// Layers fetched at once per pull.
const LAYER_CONCURRENCY: usize = 3;

/// Pulls images into a store.
pub struct Puller {
    store: Arc<ImageStore>,
    registries: RegistryConfig,
    limits: PullLimits,
    flights: Flights,
}

/// One registry endpoint as the pull talks to it.
struct Source<'a> {
    session: Session,
    oref: Reference,
    image: &'a ImageRef,
    /// `host[:port]` actually contacted (for messages).
    host: String,
}

struct Resolved {
    /// Digest of what the reference named (the index for a multi-platform image).
    top: Digest,
    /// Index and manifest blobs, to keep in the store.
    blobs: Vec<(Digest, bytes::Bytes)>,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

impl Puller {
    pub fn new(store: Arc<ImageStore>, registries: RegistryConfig, limits: PullLimits) -> Self {
        Puller { store, registries, limits, flights: Flights::default() }
    }

    pub fn store(&self) -> &Arc<ImageStore> {
        &self.store
    }

    /// Pulls `image` and returns its record. On failure nothing of this pull stays in the
    /// store (content shared with other images stays).
    pub async fn pull(&self, image: &str, creds: &Credentials) -> Result<ImageRecord> {
        let r = ImageRef::parse(image)?;
        info!(image = %r, "pulling image");
        let res = {
            let _shared = self.store.gc_lock.read().await;
            let seconds = self.limits.max_pull_seconds.max(1);
            tokio::time::timeout(Duration::from_secs(seconds), self.pull_locked(&r, creds))
                .await
                .unwrap_or_else(|_| Err(ImageError::Deadline { image: r.to_string(), seconds }))
        };
        match &res {
            Ok(rec) => info!(image = %r, id = %rec.id, "pulled image"),
            Err(e) => {
                warn!(image = %r, error = %e, "pull failed");
                if let Err(gc) = self.store.collect_garbage().await {
                    warn!(error = %gc, "cleaning up after a failed pull");
                }
            }
        }
        res
    }

    async fn pull_locked(&self, r: &ImageRef, creds: &Credentials) -> Result<ImageRecord> {
        let mut last_err = None;
        for ep in self.registries.endpoints(r.registry()) {
            let mut oref = r.inner.clone();
            if let Some(m) = &ep.mirror {
                oref.set_mirror_registry(m.clone());
            }
            let host = oref.resolve_registry().to_string();
            let plain = self.registries.plain_http_hosts().contains(&host);
            let image = r.to_string();
            let session =
                match Session::open(&host, plain, oref.repository(), &image, creds, &self.limits)
                    .await
                {
                    Ok(s) => s,
                    Err(e) => {
                        warn!(image = %r, endpoint = %host, error = %e, "cannot reach endpoint");
                        last_err = Some(e);
                        continue;
                    }
                };
            let src = Source { session, host, oref, image: r };
            match self.resolve(&src).await {
                Ok(resolved) => return self.fetch(&src, resolved).await,
                Err(e) => {
                    warn!(
                        image = %r,
                        endpoint = %src.host,
                        error = %e,
                        "cannot resolve image on endpoint"
                    );
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap_or_else(|| ImageError::NotFound {
            registry: r.registry().into(),
            image: r.to_string(),
        }))
    }

    /// Fetches the manifest the reference names and, for an index, the linux/amd64 manifest.
    async fn resolve(&self, src: &Source<'_>) -> Result<Resolved> {
        let body = self.fetch_manifest(src, &src.oref, "manifest").await?;
        let top = Digest::of(&body);
        if let Some(want) = src.image.digest() {
            want.verify(&format!("manifest {}", src.image), &body)?;
        }
        let mut blobs = vec![(top.clone(), body.clone())];
        let (config, layers) = match Manifest::parse(&body)? {
            Manifest::Image { config, layers } => (config, layers),
            Manifest::Index(entries) => {
                let entry = select_linux_amd64(&entries).ok_or_else(|| {
                    ImageError::NoMatchingPlatform { index: src.image.repo_digest(&top) }
                })?;
                let d = Digest::parse(&entry.digest)?;
                debug!(index = %top, manifest = %d, "selected linux/amd64");
                let oref = src.oref.clone_with_digest(d.to_string());
                let body = self.fetch_manifest(src, &oref, "platform manifest").await?;
                d.verify("platform manifest", &body)?;
                blobs.push((d, body.clone()));
                match Manifest::parse(&body)? {
                    Manifest::Image { config, layers } => (config, layers),
                    Manifest::Index(_) => {
                        return Err(ImageError::invalid("manifest", "index nested in an index"))
                    }
                }
            }
        };
        if layers.len() > self.limits.max_layers {
            return Err(ImageError::limit(
                format!("image {}", src.image),
                "max_layers",
                self.limits.max_layers as u64,
                format!("{} layers", layers.len()),
            ));
        }
        check_descriptor("config", &config, self.limits.max_config_bytes, "max_config_bytes")?;
        for l in &layers {
            check_descriptor("layer", l, self.limits.max_layer_bytes, "max_layer_bytes")?;
        }
        Ok(Resolved { top, blobs, config, layers })
    }

    /// GETs a manifest or index (bounded by `max_manifest_bytes`).
    async fn fetch_manifest(
        &self,
        src: &Source<'_>,
        oref: &Reference,
        what: &str,
    ) -> Result<bytes::Bytes> {
        let reference = oref.digest().or(oref.tag()).unwrap_or("latest");
        let query = oref.namespace().map(|ns| format!("?ns={ns}")).unwrap_or_default();
        src.session.manifest(reference, &query, what).await
    }

    async fn fetch(&self, src: &Source<'_>, res: Resolved) -> Result<ImageRecord> {
        let config_digest = Digest::parse(&res.config.digest)?;
        let config_bytes = self.small_blob(src, &config_digest, res.config.size).await?;
        let config = ConfigFile::parse(&config_bytes)?;
        if config.rootfs.diff_ids.len() != res.layers.len() {
            return Err(ImageError::invalid(
                "image",
                format!(
                    "{} layers in the manifest, {} diff_ids in the config",
                    res.layers.len(),
                    config.rootfs.diff_ids.len()
                ),
            ));
        }
        if !config.os.is_empty() && config.os != "linux" {
            return Err(ImageError::invalid(
                "image",
                format!("image is for {}/{}", config.os, config.architecture),
            ));
        }
        let mut layer_records = Vec::with_capacity(res.layers.len());
        for (l, diff) in res.layers.iter().zip(&config.rootfs.diff_ids) {
            let digest = Digest::parse(&l.digest)?;
            let diff_id = Digest::parse(diff)?;
            layer_records.push(LayerRecord {
                digest: digest.to_string(),
                diff_id: diff_id.to_string(),
                size: l.size,
                media_type: l.media_type.clone(),
            });
        }
        // Collected first: a lazily mapped iterator inside the stream trips the Send check.
        // Every layer runs to its end (no sibling is dropped half-way), then the first error wins.
        let budget = ImageBudget::new(self.limits.max_image_unpacked_bytes);
        let work: Vec<_> =
            layer_records.iter().map(|l| self.ensure_layer(src, l, budget.clone())).collect();
        let results: Vec<Result<()>> =
            futures_util::stream::iter(work).buffer_unordered(LAYER_CONCURRENCY).collect().await;
        results.into_iter().collect::<Result<Vec<()>>>()?;
        for (d, body) in &res.blobs {
            self.store.layout.put_blob(d, body)?;
        }
        let size = res.config.size + layer_records.iter().map(|l| l.size).sum::<u64>();
        let rec = ImageRecord {
            id: config_digest.to_string(),
            repo_tags: vec![],
            repo_digests: vec![],
            size,
            manifest_digests: res.blobs.iter().map(|(d, _)| d.to_string()).collect(),
            layers: layer_records,
            config: config.config,
            pinned: false,
        };
        self.store.commit(rec, src.image.repo_tag(), src.image.repo_digest(&res.top))
    }

    /// A config-sized blob: from the store if there, else fetched, verified and stored.
    async fn small_blob(&self, src: &Source<'_>, d: &Digest, size: u64) -> Result<Vec<u8>> {
        let _flight = self.flights.lock(&d.to_string()).await;
        let path = self.store.layout.blob(d);
        if let Ok(data) = tokio::fs::read(&path).await {
            if d.verify("stored blob", &data).is_ok() {
                return Ok(data);
            }
        }
        // The size was checked against max_config_bytes when the manifest was resolved.
        let mut data = Vec::with_capacity(size as usize);
        self.fetch_blob(src, d, size, &format!("config {d}"), &mut data).await?;
        self.store.layout.put_blob(d, &data)?;
        Ok(data)
    }

    /// Makes sure the layer is unpacked: downloads its blob (once, whoever asks) and unpacks it.
    async fn ensure_layer(
        &self,
        src: &Source<'_>,
        l: &LayerRecord,
        budget: ImageBudget,
    ) -> Result<()> {
        let digest = Digest::parse(&l.digest)?;
        let diff_id = Digest::parse(&l.diff_id)?;
        let _flight = self.flights.lock(&diff_id.to_string()).await;
        let layer_dir = self.store.layout.layer(&diff_id);
        if layer_dir.is_dir() {
            debug!(%diff_id, "layer already unpacked");
            return Ok(());
        }
        let blob = self.store.layout.blob(&digest);
        if !blob.exists() {
            self.download(src, &digest, l.size).await?;
        }
        // The blocking task owns the temp dir: if this request is cancelled it still finishes
        // (or fails) and cleans up after itself.
        let tmp = self.store.layout.tmp("layer");
        let id = diff_id.clone();
        let limits = self.limits.clone();
        tokio::task::spawn_blocking(move || {
            unpack_layer(&blob, tmp.path(), &id, &limits, &budget)?;
            sync_fs(tmp.path()).map_err(|e| ImageError::io_path("syncing", tmp.path(), e))?;
            tmp.persist(&layer_dir)
                .map_err(|e| ImageError::io_path("renaming layer to", &layer_dir, e))
        })
        .await
        .map_err(|e| ImageError::Unpack {
            layer: diff_id.to_string(),
            detail: format!("unpack task: {e}"),
        })?
    }

    /// Streams a blob to a temp file, checking size and digest, then renames it into place.
    async fn download(&self, src: &Source<'_>, d: &Digest, size: u64) -> Result<()> {
        let tmp = self.store.layout.tmp("blob");
        self.download_to(src, d, size, tmp.path()).await?;
        let dst = self.store.layout.blob(d);
        tmp.persist(&dst).map_err(|e| ImageError::io_path("renaming blob to", &dst, e))
    }

    async fn download_to(&self, src: &Source<'_>, d: &Digest, size: u64, tmp: &Path) -> Result<()> {
        let what = format!("layer blob {d} from {}", src.host);
        debug!(digest = %d, size, endpoint = %src.host, "downloading blob");
        let mut file = tokio::fs::File::create(tmp)
            .await
            .map_err(|e| ImageError::io_path("creating", tmp, e))?;
        self.fetch_blob(src, d, size, &what, &mut file).await?;
        file.sync_all().await.map_err(|e| ImageError::io_path("syncing", tmp, e))
    }

    /// Streams blob `d` into `out`, at most `size` bytes, size and digest checked.
    async fn fetch_blob<W: tokio::io::AsyncWrite + Unpin>(
        &self,
        src: &Source<'_>,
        d: &Digest,
        size: u64,
        what: &str,
        out: &mut W,
    ) -> Result<()> {
        src.session.blob(d, size, what, out).await
    }
}

/// A config or layer descriptor must give the blob's real size: 0 is only the size of the
/// empty blob (a registry that says 0 for anything else would get an unbounded read), and
/// more than the limit is refused before anything is fetched.
fn check_descriptor(what: &str, desc: &Descriptor, max: u64, setting: &'static str) -> Result<()> {
    let empty = Digest::of(b"").to_string();
    if desc.size == 0 && desc.digest != empty {
        return Err(ImageError::invalid(
            format!("{what} descriptor {}", desc.digest),
            "size 0 for a non-empty blob",
        ));
    }
    if desc.size > max {
        return Err(ImageError::limit(
            format!("{what} {}", desc.digest),
            setting,
            max,
            format!("descriptor size {} bytes", desc.size),
        ));
    }
    Ok(())
}
