//! The one error type of the image service and its mapping onto gRPC status codes.

use std::io;
use std::path::Path;

/// Everything that can go wrong while pulling, storing, unpacking or looking up an image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },
    #[error("registry {registry} did not accept the credentials for {image}: {detail}")]
    Unauthenticated { registry: String, image: String, detail: String },
    #[error("image {image} not found on registry {registry}")]
    NotFound { registry: String, image: String },
    #[error("registry {registry}: {detail}")]
    Registry { registry: String, detail: String },
    #[error("{what}: content digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch { what: String, expected: String, actual: String },
    #[error("{what}: size mismatch: descriptor says {expected} bytes, got {actual}")]
    SizeMismatch { what: String, expected: u64, actual: u64 },
    #[error("image index {index} has no linux/amd64 manifest")]
    NoMatchingPlatform { index: String },
    #[error("unsupported media type {0}")]
    UnsupportedMediaType(String),
    #[error("invalid {what}: {detail}")]
    Invalid { what: String, detail: String },
    #[error("{what}: {actual} exceeds the limit of {limit} (images.limits.{setting})")]
    LimitExceeded { what: String, setting: &'static str, limit: u64, actual: String },
    #[error("layer {layer}: {detail}")]
    Unpack { layer: String, detail: String },
    #[error(
        "pulling {image} took longer than {seconds} s (images.limits.max_pull_seconds): \
         the registry is too slow or stalls"
    )]
    Deadline { image: String, seconds: u64 },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

impl ImageError {
    pub(crate) fn io_path(what: &str, path: &Path, source: io::Error) -> Self {
        ImageError::Io { context: format!("{what} {}", path.display()), source }
    }

    pub(crate) fn limit(
        what: impl Into<String>,
        setting: &'static str,
        limit: u64,
        actual: impl ToString,
    ) -> Self {
        ImageError::LimitExceeded { what: what.into(), setting, limit, actual: actual.to_string() }
    }

    pub(crate) fn invalid(what: impl Into<String>, detail: impl ToString) -> Self {
        ImageError::Invalid { what: what.into(), detail: detail.to_string() }
    }
}

impl From<ImageError> for tonic::Status {
    fn from(e: ImageError) -> Self {
        let msg = e.to_string();
        match e {
            ImageError::InvalidReference { .. } => tonic::Status::invalid_argument(msg),
            ImageError::Unauthenticated { .. } => tonic::Status::unauthenticated(msg),
            ImageError::NotFound { .. } => tonic::Status::not_found(msg),
            ImageError::Registry { .. } => tonic::Status::unavailable(msg),
            ImageError::DigestMismatch { .. }
            | ImageError::SizeMismatch { .. }
            | ImageError::Invalid { .. }
            | ImageError::Unpack { .. } => tonic::Status::data_loss(msg),
            ImageError::NoMatchingPlatform { .. } | ImageError::UnsupportedMediaType(_) => {
                tonic::Status::failed_precondition(msg)
            }
            ImageError::LimitExceeded { .. } => tonic::Status::resource_exhausted(msg),
            ImageError::Deadline { .. } => tonic::Status::deadline_exceeded(msg),
            ImageError::Io { .. } => tonic::Status::internal(msg),
        }
    }
}

pub type Result<T, E = ImageError> = std::result::Result<T, E>;
