//! The error of every operation beneath a pod's directory.

use std::path::{Path, PathBuf};

/// Why a file operation beneath a pod's directory failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0:?} is not a plain relative path (no root, `.` or `..`)")]
    BadPath(PathBuf),
    #[error("{0} is not a regular file")]
    NotRegular(PathBuf),
    #[error("{path} is larger than {max} bytes")]
    TooLarge { path: PathBuf, max: u64 },
    #[error("{0} is on another mount; not deleting through it")]
    OtherMount(PathBuf),
    #[error("{0} still has mounts under it after unmounting; not deleting it")]
    StillMounted(PathBuf),
    #[error("{0} keeps changing while it is removed; gave up")]
    Busy(PathBuf),
    #[error("{a} and {b} are on different mounts: a rename between them is impossible")]
    NotSameMount { a: PathBuf, b: PathBuf },
    #[error("{0} is another directory in the VMM's mount namespace than in the daemon's")]
    NotSameDir(PathBuf),
    #[error("a pod disk of {size} bytes is too small: at least {min} bytes")]
    DiskTooSmall { size: u64, min: u64 },
    #[error("mkfs.ext4 of the pod disk {image} failed ({status}): {stderr}")]
    Mkfs { image: PathBuf, status: String, stderr: String },
}

pub(crate) fn io_err(op: &'static str, path: &Path, e: impl Into<std::io::Error>) -> Error {
    Error::Io { op, path: path.to_path_buf(), source: e.into() }
}
