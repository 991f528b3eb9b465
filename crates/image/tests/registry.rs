//! The image service against a real `docker-registry` on 127.0.0.1 (no VM needed).

mod common;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use carapace_image::{ImageServiceConfig, ImageServiceImpl, RegistryConfig, OVERLAY_OPAQUE_XATTR};
use common::TestRegistry;
use k8s_cri::v1::image_service_server::ImageService;
use k8s_cri::v1::{
    AuthConfig, ImageFilter, ImageFsInfoRequest, ImageSpec, ImageStatusRequest, ListImagesRequest,
    PullImageRequest, RemoveImageRequest,
};
use tonic::{Code, Request};

fn service(root: &Path, registries: RegistryConfig) -> ImageServiceImpl {
    ImageServiceImpl::new(&ImageServiceConfig {
        root: root.to_path_buf(),
        registries,
        ..Default::default()
    })
    .unwrap()
}

fn insecure(reg: &TestRegistry) -> RegistryConfig {
    RegistryConfig { insecure: vec![reg.addr.clone()], ..Default::default() }
}

fn spec(image: &str) -> Option<ImageSpec> {
    Some(ImageSpec { image: image.to_string(), ..Default::default() })
}

async fn pull(
    svc: &ImageServiceImpl,
    image: &str,
    auth: Option<AuthConfig>,
) -> Result<String, tonic::Status> {
    let req = PullImageRequest { image: spec(image), auth, sandbox_config: None };
    Ok(svc.pull_image(Request::new(req)).await?.into_inner().image_ref)
}

async fn status(svc: &ImageServiceImpl, image: &str) -> Option<k8s_cri::v1::Image> {
    let req = ImageStatusRequest { image: spec(image), verbose: false };
    svc.image_status(Request::new(req)).await.unwrap().into_inner().image
}

fn dir_entries(p: &Path) -> usize {
    fs::read_dir(p).map(|d| d.count()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_by_tag_digest_and_index_and_unpacks_layers() {
    let reg = TestRegistry::start(None);
    let root = tempfile::tempdir().unwrap();
    let svc = service(root.path(), insecure(&reg));

    // Docker schema2 by tag.
    let busybox = reg.image("test/busybox:latest");
    let id = pull(&svc, &busybox, None).await.unwrap();
    let img = status(&svc, &busybox).await.expect("pulled image has a status");
    assert_eq!(img.id, id);
    assert_eq!(img.repo_tags, vec![busybox.clone()]);
    assert_eq!(
        img.repo_digests,
        vec![format!("{}/test/busybox@{}", reg.addr, reg.digest("test/busybox:latest"))]
    );
    assert!(img.size > 500_000, "size {}", img.size);
    assert!(img.uid.is_none() && img.username.is_empty());

    // OCI manifest by digest: gzip + zstd + plain layers, whiteouts, USER, ENTRYPOINT...
    let app = format!("{}/test/app@{}", reg.addr, reg.digest("test/app:1.0"));
    let app_id = pull(&svc, &app, None).await.unwrap();
    let img = status(&svc, &app).await.unwrap();
    assert_eq!(img.repo_tags, Vec::<String>::new());
    assert_eq!(img.repo_digests, vec![app.clone()]);
    assert_eq!(img.uid.map(|u| u.value), Some(1000));
    let ci = svc.container_image(&app_id).unwrap().unwrap();
    assert_eq!(ci.config.entrypoint, vec!["/bin/sh", "-c"]);
    assert_eq!(ci.config.cmd, vec!["echo hello from app"]);
    assert_eq!(ci.config.env, vec!["PATH=/bin", "FOO=bar"]);
    assert_eq!(ci.config.working_dir, "/app");
    assert_eq!(ci.config.user, "1000:1000");
    assert_eq!(ci.layers.len(), 3);
    let (base, app_layer, cleanup) = (&ci.layers[0], &ci.layers[1], &ci.layers[2]);
    assert!(base.join("bin/busybox").is_file());
    assert_eq!(fs::read_link(base.join("bin/sh")).unwrap(), Path::new("busybox"));
    assert_eq!(fs::metadata(base.join("tmp")).unwrap().mode() & 0o7777, 0o1777);
    assert_eq!(fs::metadata(base.join("home/app")).unwrap().uid(), 1000);
    let hello = fs::metadata(app_layer.join("app/hello.sh")).unwrap();
    assert_eq!(hello.ino(), fs::metadata(app_layer.join("app/hello-hard.sh")).unwrap().ino());
    assert_eq!((hello.uid(), hello.mode() & 0o7777), (1000, 0o755));
    assert_eq!(fs::metadata(app_layer.join("app/owned")).unwrap().mode() & 0o7777, 0o640);
    assert_eq!(fs::read_link(app_layer.join("app/hello-link.sh")).unwrap(), Path::new("hello.sh"));
    let wh = fs::symlink_metadata(cleanup.join("etc/motd")).unwrap();
    assert!(wh.file_type().is_char_device() && wh.rdev() == 0);
    assert_eq!(
        xattr::get(cleanup.join("data"), OVERLAY_OPAQUE_XATTR).unwrap().as_deref(),
        Some(&b"y"[..])
    );
    assert!(cleanup.join("data/new").is_file());
    // Flattened into one tree: the whiteout and the opaque dir hide the base layer's files.
    let rootfs = root.path().join("rootfs-test");
    carapace_image::flatten_layers(&ci.layers, &rootfs).unwrap();
    assert!(rootfs.join("bin/busybox").is_file());
    assert!(!rootfs.join("etc/motd").exists());
    assert!(!rootfs.join("data/old").exists() && rootfs.join("data/new").is_file());
    assert_eq!(
        fs::read_to_string(rootfs.join("app/hello-link.sh")).unwrap(),
        fs::read_to_string(app_layer.join("app/hello.sh")).unwrap()
    );
    fs::remove_dir_all(&rootfs).unwrap();

    // Multi-arch index: the linux/amd64 manifest's config is busybox's, so it is the same image.
    let multi = reg.image("test/multi:latest");
    let multi_id = pull(&svc, &multi, None).await.unwrap();
    assert_eq!(multi_id, id, "index resolved to linux/amd64");
    let img = status(&svc, &id).await.unwrap();
    assert_eq!(img.repo_tags, vec![busybox.clone(), multi.clone()]);
    assert!(img.repo_digests.contains(&format!(
        "{}/test/multi@{}",
        reg.addr,
        reg.digest("test/multi:latest")
    )));

    // The base layer is shared: 3 unpacked layers in all.
    assert_eq!(dir_entries(&root.path().join("layers/sha256")), 3);
    assert_eq!(dir_entries(&root.path().join("tmp")), 0);

    // Unknown tag: NotFound.
    let err = pull(&svc, &reg.image("test/busybox:nope"), None).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_through_mirrors() {
    let reg = TestRegistry::start(None);
    let root = tempfile::tempdir().unwrap();
    let mirror = format!("http://{}", reg.addr);
    let mut cfg = RegistryConfig::default();
    cfg.mirrors.insert("registry.k8s.io".into(), vec![mirror.clone()]);
    cfg.mirrors.insert("docker.io".into(), vec![mirror]);
    let svc = service(root.path(), cfg);

    let id = pull(&svc, "registry.k8s.io/test/busybox:latest", None).await.unwrap();
    let img = status(&svc, "registry.k8s.io/test/busybox:latest").await.unwrap();
    assert_eq!(img.id, id);
    assert_eq!(img.repo_tags, vec!["registry.k8s.io/test/busybox:latest".to_string()]);
    // Docker Hub name rules through the docker.io mirror.
    pull(&svc, "test/app:1.0", None).await.unwrap();
    assert!(status(&svc, "docker.io/test/app:1.0").await.is_some());
    // A dead mirror (nothing listens on port 1): the registry itself serves the pull.
    let mut cfg = insecure(&reg);
    cfg.mirrors.insert(reg.addr.clone(), vec!["http://127.0.0.1:1".into()]);
    let root2 = tempfile::tempdir().unwrap();
    let svc2 = service(root2.path(), cfg);
    assert_eq!(pull(&svc2, &reg.image("test/busybox:latest"), None).await.unwrap(), id);
    let layer =
        reg.manifest("test/busybox:latest")["layers"][0]["digest"].as_str().unwrap().to_string();
    assert_eq!(reg.blob_gets("test/busybox", &layer), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_right_wrong_and_missing() {
    let reg = TestRegistry::start(Some(("carapace", "s3cret")));
    let root = tempfile::tempdir().unwrap();
    let svc = service(root.path(), insecure(&reg));
    let image = reg.image("test/busybox:latest");

    let wrong =
        AuthConfig { username: "carapace".into(), password: "wrong".into(), ..Default::default() };
    let err = pull(&svc, &image, Some(wrong)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains(&reg.addr), "{}", err.message());
    let err = pull(&svc, &image, None).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");

    let right =
        AuthConfig { username: "carapace".into(), password: "s3cret".into(), ..Default::default() };
    pull(&svc, &image, Some(right)).await.unwrap();
    // The same credentials as a docker config `auth` field.
    let encoded = AuthConfig { auth: "Y2FyYXBhY2U6czNjcmV0".into(), ..Default::default() };
    pull(&svc, &reg.image("test/app:1.0"), Some(encoded)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_blob_fails_and_leaves_nothing() {
    let reg = TestRegistry::start(None);
    let manifest = reg.manifest("test/app:1.0");
    let zstd_layer = manifest["layers"][1]["digest"].as_str().unwrap().to_string();
    let file = reg.blob_file(&zstd_layer);
    let mut data = fs::read(&file).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0xff;
    fs::write(&file, data).unwrap();

    let root = tempfile::tempdir().unwrap();
    let svc = service(root.path(), insecure(&reg));
    let err = pull(&svc, &reg.image("test/app:1.0"), None).await.unwrap_err();
    assert_eq!(err.code(), Code::DataLoss, "{err:?}");
    assert!(err.message().contains(&zstd_layer), "{}", err.message());
    for d in ["blobs/sha256", "layers/sha256", "images", "tmp"] {
        assert_eq!(dir_entries(&root.path().join(d)), 0, "{d} not empty after a failed pull");
    }
    assert!(status(&svc, &reg.image("test/app:1.0")).await.is_none());
    // The store still works.
    pull(&svc, &reg.image("test/busybox:latest"), None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_pulls_fetch_each_layer_once() {
    let reg = TestRegistry::start(None);
    let root = tempfile::tempdir().unwrap();
    let svc = service(root.path(), insecure(&reg));
    let image = reg.image("test/app:1.0");
    let (a, b, c) =
        tokio::join!(pull(&svc, &image, None), pull(&svc, &image, None), pull(&svc, &image, None));
    assert_eq!(a.unwrap(), b.unwrap());
    assert!(c.is_ok());
    let manifest = reg.manifest("test/app:1.0");
    for l in manifest["layers"].as_array().unwrap() {
        let d = l["digest"].as_str().unwrap();
        assert_eq!(reg.blob_gets("test/app", d), 1, "layer {d} fetched more than once");
    }
    // A later pull finds everything in place.
    pull(&svc, &image, None).await.unwrap();
    for l in manifest["layers"].as_array().unwrap() {
        assert_eq!(reg.blob_gets("test/app", l["digest"].as_str().unwrap()), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_status_remove_fsinfo_and_restart() {
    let reg = TestRegistry::start(None);
    let root = tempfile::tempdir().unwrap();
    let busybox = reg.image("test/busybox:latest");
    let app = reg.image("test/app:1.0");
    let pinned_service = |root: &Path| {
        let config = ImageServiceConfig {
            root: root.to_path_buf(),
            registries: insecure(&reg),
            pinned_images: vec![busybox.clone()],
            limits: Default::default(),
        };
        ImageServiceImpl::new(&config).unwrap()
    };
    let svc = pinned_service(root.path());

    // Absent image: empty response, not an error.
    assert!(status(&svc, &busybox).await.is_none());
    let fs0 = svc.image_fs_info(Request::new(ImageFsInfoRequest {})).await.unwrap().into_inner();

    let bid = pull(&svc, &busybox, None).await.unwrap();
    let aid = pull(&svc, &app, None).await.unwrap();
    let list = svc
        .list_images(Request::new(ListImagesRequest { filter: None }))
        .await
        .unwrap()
        .into_inner()
        .images;
    assert_eq!(list.len(), 2);
    // Only the image named in `pinned_images` is pinned (kubelet's GC skips it).
    let pinned: Vec<_> = list.iter().filter(|i| i.pinned).map(|i| i.id.clone()).collect();
    assert_eq!(pinned, vec![bid.clone()]);
    let filter = Some(ImageFilter { image: spec(&app) });
    let list = svc
        .list_images(Request::new(ListImagesRequest { filter }))
        .await
        .unwrap()
        .into_inner()
        .images;
    assert_eq!(list.iter().map(|i| i.id.clone()).collect::<Vec<_>>(), vec![aid.clone()]);

    let verbose = svc
        .image_status(Request::new(ImageStatusRequest { image: spec(&aid), verbose: true }))
        .await
        .unwrap()
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&verbose.info["info"]).unwrap();
    assert_eq!(info["imageSpec"]["config"]["WorkingDir"], "/app");

    let fs1 = svc.image_fs_info(Request::new(ImageFsInfoRequest {})).await.unwrap().into_inner();
    let u = &fs1.image_filesystems[0];
    assert_eq!(u.fs_id.as_ref().unwrap().mountpoint, root.path().display().to_string());
    assert!(
        u.used_bytes.unwrap().value > fs0.image_filesystems[0].used_bytes.unwrap().value + 500_000
    );
    assert!(u.inodes_used.unwrap().value > 20);

    // Restart: a new service on the same root sees both images.
    drop(svc);
    let svc = pinned_service(root.path());
    assert_eq!(status(&svc, &busybox).await.unwrap().id, bid);
    assert!(status(&svc, &busybox).await.unwrap().pinned);
    assert!(!status(&svc, &aid).await.unwrap().pinned);
    assert_eq!(status(&svc, &aid).await.unwrap().repo_tags, vec![app.clone()]);

    // Remove by tag, then again (idempotent), then the other by id.
    let rm = |s: String| RemoveImageRequest { image: spec(&s) };
    svc.remove_image(Request::new(rm(busybox.clone()))).await.unwrap();
    svc.remove_image(Request::new(rm(busybox.clone()))).await.unwrap();
    assert!(status(&svc, &busybox).await.is_none());
    // The base layer is shared with app: still there.
    assert_eq!(svc.container_image(&aid).unwrap().unwrap().layers.len(), 3);
    svc.remove_image(Request::new(rm(aid.clone()))).await.unwrap();
    let list = svc
        .list_images(Request::new(ListImagesRequest { filter: None }))
        .await
        .unwrap()
        .into_inner()
        .images;
    assert!(list.is_empty());
    for d in ["blobs/sha256", "layers/sha256", "images"] {
        assert_eq!(dir_entries(&root.path().join(d)), 0, "{d} not empty after removing everything");
    }
    let err = svc.remove_image(Request::new(RemoveImageRequest { image: None })).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}
