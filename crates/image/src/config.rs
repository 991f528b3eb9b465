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
            r#"{"root": "/x", "registries": {"mirrors": {"registry.k8s.io": ["http://127.0.0.1:5000/", "https://mirror.example"]},
                "insecure": ["insecure.local"]}}"#,
        )
        .unwrap()
    }

    #[test]
    fn defaults() {
        let cfg: ImageServiceConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(cfg, ImageServiceConfig::default());
        assert_eq!(cfg.root, PathBuf::from(DEFAULT_ROOT));
    }
}
