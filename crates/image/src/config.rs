//! Settings of the image service, as they appear in the daemon's config file.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Default root of the image store.
pub const DEFAULT_ROOT: &str = "/var/lib/carapace/images";

/// The image service's settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ImageServiceConfig {
    /// Root of the store (blobs, unpacked layers, image records).
    #[serde(default = "default_root")]
    pub root: PathBuf,
    #[serde(default)]
    pub registries: RegistryConfig,
    /// Images reported as pinned (`Image.pinned`), so kubelet's image garbage collection
    /// never removes them, the way containerd pins its sandbox image. Written as image
    /// references (`registry.k8s.io/pause:3.9`, `busybox`, `repo@sha256:...`).
    #[serde(default)]
    pub pinned_images: Vec<String>,
    /// Bounds on what a registry may make the daemon read, hold and write (`[images.limits]`).
    #[serde(default)]
    pub limits: PullLimits,
}

fn default_root() -> PathBuf {
    PathBuf::from(DEFAULT_ROOT)
}

impl Default for ImageServiceConfig {
    fn default() -> Self {
        ImageServiceConfig {
            root: default_root(),
            registries: RegistryConfig::default(),
            pinned_images: Vec::new(),
            limits: PullLimits::default(),
        }
    }
}

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Bounds on a pull. Registries are untrusted: without them a registry can make the daemon hold
/// any amount of memory (manifests, configs and tar metadata are read into memory) or fill the
/// disk (a gzip bomb). Every bound that is hit fails the pull with an error naming the setting,
/// and nothing of the failed pull stays in the store.
///
/// ```toml
/// [images.limits]
/// max_manifest_bytes = 4194304          # 4 MiB, each manifest or index
/// max_config_bytes = 4194304            # 4 MiB, the image config
/// max_layers = 128
/// max_layer_bytes = 8589934592          # 8 GiB, one compressed layer blob
/// max_layer_unpacked_bytes = 8589934592 # 8 GiB, one uncompressed layer tar
/// max_layer_entries = 1000000
/// max_tar_header_bytes = 65536          # 64 KiB, GNU long names + PAX headers of one entry
/// max_token_bytes = 1048576             # 1 MiB, a token endpoint's answer
/// max_error_body_bytes = 65536          # 64 KiB, the body of a registry's error answer
/// max_image_unpacked_bytes = 34359738368 # 32 GiB, all layers one pull unpacks
/// max_pull_seconds = 3600               # a whole pull, however slowly the registry sends
/// ```
///
/// Why these defaults: containerd and the distribution registry refuse manifests over 4 MiB
/// (real ones are a few KiB; an index with hundreds of platforms stays under 100 KiB), and a
/// config is of the same kind (history and env; large ones are tens of KiB). Docker refuses
/// images of more than 127 layers. The biggest layers in common use (CUDA, ML frameworks) are a
/// few GiB compressed and unpacked; 8 GiB leaves room while a bomb stops there. A layer of a
/// full distribution has some 10^5 entries. A path is at most 4 KiB (PATH_MAX) and the PAX
/// records of one file (path, link path, a few xattrs such as file capabilities) a few hundred
/// bytes, so 64 KiB is generous for one entry's metadata while bounding what is buffered. A
/// token answer is a JSON object with a JWT of a few KiB; an error answer is a distribution
/// error document of a few hundred bytes (only its first 512 characters are ever shown).
/// Per-layer bounds alone would let 128 layers fill a terabyte, hence the image's total; and a
/// registry that sends a byte just before each read timeout would hold a pull (and kubelet's
/// call) forever, hence a deadline for the whole pull (an hour moves 8 GiB at 2.3 MB/s).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct PullLimits {
    /// Largest manifest or image index, in bytes.
    pub max_manifest_bytes: u64,
    /// Largest image config blob, in bytes.
    pub max_config_bytes: u64,
    /// Most layers in one image.
    pub max_layers: usize,
    /// Largest compressed layer blob, in bytes (the descriptor's size must not exceed it, and
    /// no more than the descriptor's size is ever read).
    pub max_layer_bytes: u64,
    /// Largest uncompressed layer tar, in bytes (bounds the disk one layer can fill).
    pub max_layer_unpacked_bytes: u64,
    /// Most tar entries in one layer (bounds the inodes one layer can use).
    pub max_layer_entries: u64,
    /// Largest metadata (GNU long name and long link, PAX extended header) of one tar entry.
    pub max_tar_header_bytes: u64,
    /// Largest answer of a token endpoint (the bearer-token handshake), in bytes.
    pub max_token_bytes: u64,
    /// Largest body of a registry's error answer (non-200), in bytes.
    pub max_error_body_bytes: u64,
    /// Most uncompressed bytes the layers of one pull write together (layers already in the
    /// store do not count).
    pub max_image_unpacked_bytes: u64,
    /// Longest a whole pull may take, in seconds (at least 1); past it the pull fails
    /// DeadlineExceeded and leaves nothing behind.
    pub max_pull_seconds: u64,
}

impl Default for PullLimits {
    fn default() -> Self {
        PullLimits {
            max_manifest_bytes: 4 * MIB,
            max_config_bytes: 4 * MIB,
            max_layers: 128,
            max_layer_bytes: 8 * GIB,
            max_layer_unpacked_bytes: 8 * GIB,
            max_layer_entries: 1_000_000,
            max_tar_header_bytes: 64 * KIB,
            max_token_bytes: MIB,
            max_error_body_bytes: 64 * KIB,
            max_image_unpacked_bytes: 32 * GIB,
            max_pull_seconds: 3600,
        }
    }
}

/// Registry mirrors and plain-HTTP registries.
///
/// ```toml
/// [registries.mirrors]
/// "docker.io" = ["http://127.0.0.1:5000"]
/// "registry.k8s.io" = ["http://127.0.0.1:5000"]
/// [registries]
/// insecure = ["myregistry.local:5000"]
/// ```
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// Registry host (as written in image names, `docker.io` for Docker Hub) -> mirror endpoints
    /// tried in order before the registry itself. An endpoint is `host[:port]` (HTTPS) or
    /// `http://host[:port]` / `https://host[:port]`.
    #[serde(default)]
    pub mirrors: BTreeMap<String, Vec<String>>,
    /// Registry hosts (`host[:port]`) reached over plain HTTP.
    #[serde(default)]
    pub insecure: Vec<String>,
}

/// One place to fetch an image from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    /// `host[:port]`, `None` for the image's own registry.
    pub mirror: Option<String>,
}

impl RegistryConfig {
    /// Endpoints for images of `registry`: its mirrors in order, then the registry itself.
    pub(crate) fn endpoints(&self, registry: &str) -> Vec<Endpoint> {
        let mut out: Vec<Endpoint> = self
            .mirrors
            .get(registry)
            .into_iter()
            .flatten()
            .map(|m| Endpoint { mirror: Some(strip_scheme(m).to_string()) })
            .collect();
        out.push(Endpoint { mirror: None });
        out
    }

    /// Hosts to reach over plain HTTP: the insecure list plus every `http://` mirror.
    pub(crate) fn plain_http_hosts(&self) -> Vec<String> {
        let mut hosts: Vec<String> = self.insecure.clone();
        for m in self.mirrors.values().flatten() {
            if let Some(h) = m.strip_prefix("http://") {
                hosts.push(h.trim_end_matches('/').to_string());
            }
        }
        hosts.sort();
        hosts.dedup();
        hosts
    }
}

fn strip_scheme(endpoint: &str) -> &str {
    endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"))
        .unwrap_or(endpoint)
        .trim_end_matches('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_come_first_and_http_ones_are_plain() {
        let cfg: ImageServiceConfig = toml_like();
        let eps = cfg.registries.endpoints("registry.k8s.io");
        assert_eq!(
            eps,
            vec![
                Endpoint { mirror: Some("127.0.0.1:5000".into()) },
                Endpoint { mirror: Some("mirror.example".into()) },
                Endpoint { mirror: None }
            ]
        );
        assert_eq!(cfg.registries.endpoints("quay.io"), vec![Endpoint { mirror: None }]);
        assert_eq!(
            cfg.registries.plain_http_hosts(),
            vec!["127.0.0.1:5000".to_string(), "insecure.local".into()]
        );
    }

    fn toml_like() -> ImageServiceConfig {
        serde_json::from_str(
            r#"{"root": "/x", "registries": {"mirrors": {"registry.k8s.io":
                    ["http://127.0.0.1:5000/", "https://mirror.example"]},
                "insecure": ["insecure.local"]}}"#,
        )
        .unwrap()
    }

    #[test]
    fn defaults() {
        let cfg: ImageServiceConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(cfg, ImageServiceConfig::default());
        assert_eq!(cfg.root, PathBuf::from(DEFAULT_ROOT));
        assert_eq!(cfg.limits.max_manifest_bytes, 4 << 20);
    }

    #[test]
    fn limits_can_be_set_one_by_one() {
        let cfg: ImageServiceConfig =
            serde_json::from_str(r#"{"limits": {"max_layer_entries": 10}}"#).unwrap();
        assert_eq!(cfg.limits.max_layer_entries, 10);
        assert_eq!(cfg.limits.max_config_bytes, PullLimits::default().max_config_bytes);
        assert!(serde_json::from_str::<ImageServiceConfig>(r#"{"limits": {"nope": 1}}"#).is_err());
    }
}
