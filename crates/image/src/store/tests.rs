use super::*;
use crate::record::LayerRecord;

fn record(config: &[u8], layer: &[u8], tag: &str) -> ImageRecord {
    let id = Digest::of(config);
    ImageRecord {
        id: id.to_string(),
        repo_tags: vec![],
        repo_digests: vec![],
        size: 1,
        manifest_digests: vec![],
        layers: vec![LayerRecord {
            digest: Digest::of(layer).to_string(),
            diff_id: Digest::of(layer).to_string(),
            size: layer.len() as u64,
            media_type: "application/vnd.oci.image.layer.v1.tar".into(),
        }],
        config: RuntimeConfig { user: tag.into(), ..Default::default() },
        pinned: false,
    }
}

fn put(store: &ImageStore, config: &[u8], layer: &[u8]) {
    store.layout.put_blob(&Digest::of(config), config).unwrap();
    store.layout.put_blob(&Digest::of(layer), layer).unwrap();
    fs::create_dir_all(store.layout.layer(&Digest::of(layer))).unwrap();
}

#[tokio::test]
async fn commit_resolve_remove_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path()).unwrap();
    put(&store, b"cfg-a", b"shared");
    put(&store, b"cfg-b", b"shared");
    let md = Digest::of(b"manifest-a");
    let a = store
        .commit(
            record(b"cfg-a", b"shared", "a"),
            Some("docker.io/library/busybox:latest".into()),
            format!("docker.io/library/busybox@{md}"),
        )
        .unwrap();
    assert_eq!(store.resolve("busybox").unwrap().id, a.id);
    assert_eq!(store.resolve("docker.io/library/busybox:latest").unwrap().id, a.id);
    assert_eq!(store.resolve(&a.id).unwrap().id, a.id);
    assert_eq!(store.resolve(a.id.trim_start_matches("sha256:")).unwrap().id, a.id);
    assert_eq!(store.resolve(&format!("busybox@{md}")).unwrap().id, a.id);
    assert!(store.resolve("busybox:other").is_none());
    assert!(store.resolve("sha256:nothex").is_none());

    // The tag moves to b; a keeps its digest.
    let b = store
        .commit(
            record(b"cfg-b", b"shared", "b"),
            Some("docker.io/library/busybox:latest".into()),
            concat!(
                "docker.io/library/busybox@sha256:",
                "0000000000000000000000000000000000000000000000000000000000000000"
            )
            .into(),
        )
        .unwrap();
    assert_eq!(store.resolve("busybox").unwrap().id, b.id);
    assert!(store.resolve(&a.id).unwrap().repo_tags.is_empty());

    let ci = store.container_image("busybox").unwrap().unwrap();
    assert_eq!(ci.layers, vec![store.layout.layer(&Digest::of(b"shared"))]);
    assert_eq!(ci.config.user, "b");

    // Restart: a new instance sees the same images.
    drop(store);
    let store = ImageStore::open(dir.path()).unwrap();
    assert_eq!(store.list().len(), 2);
    assert_eq!(store.resolve("busybox").unwrap().id, b.id);

    // Removing a keeps the shared layer, removing b frees everything; removing twice is fine.
    assert!(store.remove(&a.id).await.unwrap().is_some());
    assert!(store.layout.blob(&Digest::of(b"shared")).exists());
    assert!(!store.layout.blob(&Digest::of(b"cfg-a")).exists());
    assert!(store.remove("busybox").await.unwrap().is_some());
    assert!(store.remove("busybox").await.unwrap().is_none());
    assert_eq!(fs::read_dir(store.layout.blobs_dir()).unwrap().count(), 0);
    assert_eq!(fs::read_dir(store.layout.layers_dir()).unwrap().count(), 0);
    assert!(store.list().is_empty());
}

#[test]
fn open_collects_orphans_and_usage_counts() {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path()).unwrap();
    put(&store, b"orphan-cfg", b"orphan-layer");
    let before = store.fs_usage().unwrap();
    assert!(before.inodes_used >= 8, "{before:?}");
    drop(store);
    let store = ImageStore::open(dir.path()).unwrap();
    assert_eq!(fs::read_dir(store.layout.blobs_dir()).unwrap().count(), 0);
    assert_eq!(fs::read_dir(store.layout.layers_dir()).unwrap().count(), 0);
    assert!(store.fs_usage().unwrap().inodes_used < before.inodes_used);
}
