//! carapace's image service: pulls OCI / Docker images from registries into a
//! content-addressed store, unpacks each layer once, and serves the CRI ImageService.
//!
//! The daemon builds one [`ImageServiceImpl`] with [`ImageServiceImpl::new`] and serves it
//! with `k8s_cri::v1::image_service_server::ImageServiceServer::new(svc)`; CreateContainer
//! asks [`ImageServiceImpl::container_image`] (or [`ImageStore::container_image`]) for an
//! image's config and layer directories.

mod auth;
mod config;
mod digest;
mod error;
mod flights;
mod fsat;
#[cfg(feature = "fuzz-hooks")]
#[doc(hidden)]
pub mod fuzz_hooks;
mod imageconfig;
mod layout;
mod manifest;
mod pull;
mod record;
mod reference;
mod registry;
mod rootfs;
mod service;
mod store;
mod unpack;

pub use auth::Credentials;
pub use config::{ImageServiceConfig, PullLimits, RegistryConfig, DEFAULT_ROOT};
pub use digest::Digest;
pub use error::ImageError;
pub use imageconfig::{ImageUser, RuntimeConfig};
pub use pull::Puller;
pub use record::{ImageRecord, LayerRecord};
pub use reference::ImageRef;
pub use rootfs::{flatten_layers, flatten_layers_at};
pub use service::ImageServiceImpl;
pub use store::{ContainerImage, FsUsage, ImageStore};
pub use unpack::OVERLAY_OPAQUE_XATTR;
