//! Manifests and indexes as served by registries (OCI and Docker schema 2), and the choice of
//! the linux/amd64 manifest in a multi-platform index.

use serde::Deserialize;

use crate::error::ImageError;

pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub(crate) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub(crate) const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub(crate) const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Accept header of manifest requests.
pub(crate) const ACCEPTED: &[&str] = &[OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST];

const LAYER_TYPES: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar.zstd",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
];

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub platform: Option<Platform>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
}

#[derive(Debug, Clone, Deserialize)]
struct Document {
    #[serde(rename = "schemaVersion")]
    schema_version: i64,
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

/// A parsed manifest-endpoint response.
#[derive(Debug, Clone)]
pub(crate) enum Manifest {
    Index(Vec<Descriptor>),
    Image { config: Descriptor, layers: Vec<Descriptor> },
}

impl Manifest {
    /// Parses `body`; `content_type` is the response's media type when known.
    pub(crate) fn parse(body: &[u8]) -> Result<Self, ImageError> {
        let doc: Document =
            serde_json::from_slice(body).map_err(|e| ImageError::invalid("manifest", e))?;
        if doc.schema_version != 2 {
            return Err(ImageError::UnsupportedMediaType(format!(
                "manifest schema version {} (only schema 2 / OCI are supported)",
                doc.schema_version
            )));
        }
        let is_index = match doc.media_type.as_deref() {
            Some(OCI_INDEX) | Some(DOCKER_LIST) => true,
            Some(OCI_MANIFEST) | Some(DOCKER_MANIFEST) => false,
            Some(other) => return Err(ImageError::UnsupportedMediaType(other.to_string())),
            None => doc.config.is_none() && !doc.manifests.is_empty(),
        };
        if is_index {
            return Ok(Manifest::Index(doc.manifests));
        }
        let config =
            doc.config.ok_or_else(|| ImageError::invalid("manifest", "no config descriptor"))?;
        if doc.layers.is_empty() {
            return Err(ImageError::invalid("manifest", "no layers"));
        }
        for l in &doc.layers {
            if !LAYER_TYPES.contains(&l.media_type.as_str()) {
                return Err(ImageError::UnsupportedMediaType(format!(
                    "layer {}: {}",
                    l.digest, l.media_type
                )));
            }
        }
        Ok(Manifest::Image { config, layers: doc.layers })
    }
}

/// The linux/amd64 entry of an index (the first one, as containerd picks).
pub(crate) fn select_linux_amd64(entries: &[Descriptor]) -> Option<&Descriptor> {
    entries.iter().find(|d| {
        d.platform.as_ref().is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
            && (d.media_type.is_empty()
                || d.media_type == OCI_MANIFEST
                || d.media_type == DOCKER_MANIFEST)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    #[test]
    fn index_selects_linux_amd64() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[
            {{"mediaType":"{OCI_MANIFEST}","digest":"{D1}","size":1,
              "platform":{{"architecture":"arm64","os":"linux"}}}},
            {{"mediaType":"{OCI_MANIFEST}","digest":"{D2}","size":1,
              "platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#
        );
        let Manifest::Index(entries) = Manifest::parse(body.as_bytes()).unwrap() else {
            panic!("not an index")
        };
        assert_eq!(select_linux_amd64(&entries).unwrap().digest, D2);
        assert!(select_linux_amd64(&entries[..1]).is_none());
    }

    #[test]
    fn docker_schema2_manifest() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}",
            "config":{{"mediaType":"application/vnd.docker.container.image.v1+json",
                       "digest":"{D1}","size":5}},
            "layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip",
                        "digest":"{D2}","size":7}}]}}"#
        );
        let Manifest::Image { config, layers } = Manifest::parse(body.as_bytes()).unwrap() else {
            panic!("not an image")
        };
        assert_eq!(config.digest, D1);
        assert_eq!(layers[0].size, 7);
    }

    #[test]
    fn refuses_schema1_unknown_layers_and_junk() {
        assert!(Manifest::parse(br#"{"schemaVersion":1,"fsLayers":[]}"#).is_err());
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}",
            "config":{{"digest":"{D1}","size":5}},
            "layers":[{{"mediaType":"application/vnd.wasm.content.layer.v1+wasm",
                        "digest":"{D2}","size":7}}]}}"#
        );
        assert!(matches!(
            Manifest::parse(body.as_bytes()),
            Err(ImageError::UnsupportedMediaType(_))
        ));
        assert!(Manifest::parse(b"<html>").is_err());
    }
}
