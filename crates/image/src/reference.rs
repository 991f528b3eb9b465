//! Image references: normalisation (`busybox` -> `docker.io/library/busybox:latest`) and the
//! strings stored as repo tags and repo digests.

use oci_client::Reference;

use crate::digest::Digest;
use crate::error::ImageError;

/// A parsed, normalised image reference.
#[derive(Debug, Clone)]
pub struct ImageRef {
    pub(crate) inner: Reference,
}

impl ImageRef {
    /// Parses a reference the way Docker and containerd do: the default registry is
    /// `docker.io`, one-component names get `library/`, no tag and no digest means `:latest`.
    pub fn parse(s: &str) -> Result<Self, ImageError> {
        let bad =
            |reason: String| ImageError::InvalidReference { reference: s.to_string(), reason };
        if s.is_empty() {
            return Err(bad("empty".into()));
        }
        let inner: Reference = s.parse().map_err(|e: oci_client::ParseError| bad(e.to_string()))?;
        if inner.repository().bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(bad("repository name must be lowercase".into()));
        }
        if let Some(d) = inner.digest() {
            Digest::parse(d).map_err(|e| bad(e.to_string()))?;
        }
        Ok(ImageRef { inner })
    }

    pub fn registry(&self) -> &str {
        self.inner.registry()
    }

    pub fn repository(&self) -> &str {
        self.inner.repository()
    }

    /// `registry/repository`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry(), self.repository())
    }

    /// The digest if the reference pins one.
    pub fn digest(&self) -> Option<Digest> {
        self.inner.digest().and_then(|d| Digest::parse(d).ok())
    }

    /// `registry/repository:tag` unless the reference is by digest only.
    pub fn repo_tag(&self) -> Option<String> {
        match (self.inner.tag(), self.inner.digest()) {
            (Some(t), _) => Some(format!("{}:{t}", self.name())),
            (None, Some(_)) => None,
            (None, None) => Some(format!("{}:latest", self.name())),
        }
    }

    /// `registry/repository@digest`.
    pub fn repo_digest(&self, digest: &Digest) -> String {
        format!("{}@{digest}", self.name())
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn short_names_go_to_docker_hub_library() {
        let r = ImageRef::parse("busybox").unwrap();
        assert_eq!(r.registry(), "docker.io");
        assert_eq!(r.repository(), "library/busybox");
        assert_eq!(r.repo_tag().unwrap(), "docker.io/library/busybox:latest");
        let r = ImageRef::parse("user/app:1.0").unwrap();
        assert_eq!(r.repo_tag().unwrap(), "docker.io/user/app:1.0");
    }

    #[test]
    fn registries_with_ports_and_digests() {
        let r = ImageRef::parse(&format!("127.0.0.1:5000/test/busybox@{D}")).unwrap();
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.repo_tag(), None);
        assert_eq!(r.digest().unwrap().to_string(), D);
        assert_eq!(r.repo_digest(&r.digest().unwrap()), format!("127.0.0.1:5000/test/busybox@{D}"));
        let r = ImageRef::parse("registry.k8s.io/pause:3.9").unwrap();
        assert_eq!(r.repo_tag().unwrap(), "registry.k8s.io/pause:3.9");
    }

    #[test]
    fn refuses_garbage() {
        for bad in ["", "UPPER/case", "a b", "busybox@sha256:abc", "busybox@md5:0123"] {
            assert!(ImageRef::parse(bad).is_err(), "{bad}");
        }
    }
}
