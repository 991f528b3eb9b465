//! The CRI v1 ImageService over the store and the puller.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use k8s_cri::v1::image_service_server::ImageService;
use k8s_cri::v1::{
    FilesystemIdentifier, FilesystemUsage, Image, ImageFsInfoRequest, ImageFsInfoResponse,
    ImageSpec, ImageStatusRequest, ImageStatusResponse, Int64Value, ListImagesRequest,
    ListImagesResponse, PullImageRequest, PullImageResponse, RemoveImageRequest,
    RemoveImageResponse, UInt64Value,
};
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::auth::Credentials;
use crate::config::ImageServiceConfig;
use crate::error::{ImageError, Result};
use crate::imageconfig::ImageUser;
use crate::pull::Puller;
use crate::record::ImageRecord;
use crate::reference::ImageRef;
use crate::store::{ContainerImage, ImageStore};

/// The CRI ImageService. Cheap to clone; clones share the store.
#[derive(Clone)]
pub struct ImageServiceImpl {
    puller: Arc<Puller>,
    /// Normalised repo tags and repo digests of the configured pinned images.
    pinned: Arc<Vec<String>>,
}

impl ImageServiceImpl {
    /// Opens the store under `config.root` (reloading images pulled before a restart).
    pub fn new(config: &ImageServiceConfig) -> Result<Self> {
        let pinned = pinned_names(&config.pinned_images)?;
        let store = ImageStore::open(&config.root)?;
        Ok(ImageServiceImpl {
            puller: Arc::new(Puller::new(store, config.registries.clone(), config.limits.clone())),
            pinned: Arc::new(pinned),
        })
    }

    /// Whether kubelet must keep this image: pinned in its record or named in `pinned_images`.
    fn is_pinned(&self, rec: &ImageRecord) -> bool {
        rec.pinned || rec.repo_tags.iter().chain(&rec.repo_digests).any(|n| self.pinned.contains(n))
    }

    fn to_cri(&self, rec: &ImageRecord) -> Image {
        Image { pinned: self.is_pinned(rec), ..to_cri(rec) }
    }

    /// The store, shared with the runtime service (CreateContainer).
    pub fn store(&self) -> Arc<ImageStore> {
        self.puller.store().clone()
    }

    /// Pulls an image outside of gRPC (e.g. the sandbox image); returns the image id.
    pub async fn pull(&self, image: &str, creds: &Credentials) -> Result<String> {
        Ok(self.puller.pull(image, creds).await?.id)
    }

    /// Config and ordered layer directories of an image, for CreateContainer.
    pub fn container_image(&self, reference: &str) -> Result<Option<ContainerImage>> {
        self.puller.store().container_image(reference)
    }
}

/// The names a pinned-image reference matches: its normalised repo tag and, when it pins a
/// digest, its repo digest. A reference that does not parse is a configuration error.
fn pinned_names(refs: &[String]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for r in refs {
        let image = ImageRef::parse(r)?;
        out.extend(image.repo_tag());
        if let Some(d) = image.digest() {
            out.push(image.repo_digest(&d));
        }
    }
    Ok(out)
}

fn spec_image(spec: Option<&ImageSpec>) -> Result<&str, Status> {
    match spec.map(|s| s.image.as_str()) {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(Status::invalid_argument("image spec with a non-empty image is required")),
    }
}

fn to_cri(rec: &ImageRecord) -> Image {
    let (uid, username) = match rec.config.image_user() {
        ImageUser::None => (None, String::new()),
        ImageUser::Uid(u) => (Some(Int64Value { value: u }), String::new()),
        ImageUser::Name(n) => (None, n),
    };
    Image {
        id: rec.id.clone(),
        repo_tags: rec.repo_tags.clone(),
        repo_digests: rec.repo_digests.clone(),
        size: rec.size,
        uid,
        username,
        spec: Some(ImageSpec { image: rec.id.clone(), ..Default::default() }),
        pinned: rec.pinned,
    }
}

fn now_nanos() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

#[tonic::async_trait]
impl ImageService for ImageServiceImpl {
    async fn list_images(
        &self,
        request: Request<ListImagesRequest>,
    ) -> Result<Response<ListImagesResponse>, Status> {
        let store = self.puller.store();
        let filter = request
            .into_inner()
            .filter
            .and_then(|f| f.image)
            .map(|s| s.image)
            .filter(|s| !s.is_empty());
        let images = match filter {
            Some(f) => store.resolve(&f).iter().map(|r| self.to_cri(r)).collect(),
            None => store.list().iter().map(|r| self.to_cri(r)).collect(),
        };
        Ok(Response::new(ListImagesResponse { images }))
    }

    async fn image_status(
        &self,
        request: Request<ImageStatusRequest>,
    ) -> Result<Response<ImageStatusResponse>, Status> {
        let req = request.into_inner();
        let reference = spec_image(req.image.as_ref())?;
        let store = self.puller.store();
        let Some(rec) = store.resolve(reference) else {
            return Ok(Response::new(ImageStatusResponse::default()));
        };
        let mut info = HashMap::new();
        if req.verbose {
            let config: serde_json::Value = store
                .config_blob(&rec)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or(serde_json::Value::Null);
            let v = serde_json::json!({
                "id": rec.id,
                "manifestDigests": rec.manifest_digests,
                "layers": rec.layers,
                "imageSpec": config,
            });
            info.insert("info".to_string(), v.to_string());
        }
        Ok(Response::new(ImageStatusResponse { image: Some(self.to_cri(&rec)), info }))
    }

    async fn pull_image(
        &self,
        request: Request<PullImageRequest>,
    ) -> Result<Response<PullImageResponse>, Status> {
        let req = request.into_inner();
        let image = spec_image(req.image.as_ref())?;
        let creds = Credentials::from_cri(req.auth.as_ref());
        let rec = self.puller.pull(image, &creds).await.map_err(Status::from)?;
        Ok(Response::new(PullImageResponse { image_ref: rec.id }))
    }

    async fn remove_image(
        &self,
        request: Request<RemoveImageRequest>,
    ) -> Result<Response<RemoveImageResponse>, Status> {
        let req = request.into_inner();
        let image = spec_image(req.image.as_ref())?;
        match self.puller.store().remove(image).await.map_err(Status::from)? {
            Some(rec) => info!(image, id = %rec.id, "removed image"),
            None => info!(image, "remove: no such image"),
        }
        Ok(Response::new(RemoveImageResponse {}))
    }

    async fn image_fs_info(
        &self,
        _request: Request<ImageFsInfoRequest>,
    ) -> Result<Response<ImageFsInfoResponse>, Status> {
        let store = self.puller.store().clone();
        let usage = tokio::task::spawn_blocking(move || store.fs_usage())
            .await
            .map_err(|e| Status::internal(format!("fs usage task: {e}")))?
            .map_err(|e: ImageError| {
                warn!(error = %e, "image fs usage");
                Status::from(e)
            })?;
        let fs = FilesystemUsage {
            timestamp: now_nanos(),
            fs_id: Some(FilesystemIdentifier {
                mountpoint: self.puller.store().root().display().to_string(),
            }),
            used_bytes: Some(UInt64Value { value: usage.used_bytes }),
            inodes_used: Some(UInt64Value { value: usage.inodes_used }),
        };
        Ok(Response::new(ImageFsInfoResponse {
            image_filesystems: vec![fs],
            container_filesystems: vec![],
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_cri::v1::image_service_server::ImageServiceServer;

    #[tokio::test]
    async fn servable_and_empty_store_answers() {
        let dir = tempfile::tempdir().unwrap();
        let svc = ImageServiceImpl::new(&ImageServiceConfig {
            root: dir.path().into(),
            ..Default::default()
        })
        .unwrap();
        let _server = ImageServiceServer::new(svc.clone());
        let list = svc.list_images(Request::new(ListImagesRequest { filter: None })).await.unwrap();
        assert!(list.into_inner().images.is_empty());
        let st = svc
            .image_status(Request::new(ImageStatusRequest {
                image: Some(ImageSpec { image: "busybox".into(), ..Default::default() }),
                verbose: true,
            }))
            .await
            .unwrap()
            .into_inner();
        assert!(st.image.is_none() && st.info.is_empty());
        let err = svc.pull_image(Request::new(PullImageRequest::default())).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        let err = svc
            .pull_image(Request::new(PullImageRequest {
                image: Some(ImageSpec { image: "Bad Name".into(), ..Default::default() }),
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(svc.container_image("busybox").unwrap().is_none());
    }

    #[test]
    fn pinned_images_normalise_and_bad_ones_are_config_errors() {
        let names = pinned_names(&["busybox".into(), "registry.k8s.io/pause:3.9".into()]).unwrap();
        assert_eq!(names, vec!["docker.io/library/busybox:latest", "registry.k8s.io/pause:3.9"]);
        let d = format!("sha256:{}", "a".repeat(64));
        let names = pinned_names(&[format!("example.com/app@{d}")]).unwrap();
        assert_eq!(names, vec![format!("example.com/app@{d}")]);
        let dir = tempfile::tempdir().unwrap();
        let cfg = ImageServiceConfig {
            root: dir.path().into(),
            pinned_images: vec!["Bad Name".into()],
            ..Default::default()
        };
        let err = ImageServiceImpl::new(&cfg).err().expect("a bad pinned reference is refused");
        assert!(err.to_string().contains("Bad Name"), "{err}");
    }
}
