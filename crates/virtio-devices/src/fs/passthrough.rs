//! The passthrough file system over the shared directory, and why that directory cannot be
//! served.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fuse_backend_rs::passthrough::{CachePolicy, Config, PassthroughFs};

/// How long the guest may cache attributes and directory entries: host-side changes to an
/// already looked-up name are visible after at most this long; new names at once.
pub const FS_CACHE_TIMEOUT: Duration = Duration::from_secs(1);

/// What is wrong with a shared directory.
#[derive(Debug, thiserror::Error)]
pub enum SharedDirProblem {
    #[error("{0}")]
    Resolve(#[source] std::io::Error),
    #[error("not a directory")]
    NotADirectory,
    #[error("path is not valid UTF-8")]
    NotUtf8,
    #[error("{0}")]
    Passthrough(#[source] std::io::Error),
}

/// The shared directory `path` cannot be served.
#[derive(Debug, thiserror::Error)]
#[error("shared directory {path}: {problem}")]
pub struct SharedDirError {
    pub path: PathBuf,
    #[source]
    pub problem: SharedDirProblem,
}

impl SharedDirError {
    pub(crate) fn new(path: &Path, problem: SharedDirProblem) -> SharedDirError {
        SharedDirError { path: path.to_path_buf(), problem }
    }
}

/// A passthrough file system over `dir`: read-write, xattrs on, guest caching bounded by
/// [`FS_CACHE_TIMEOUT`] and close-to-open consistency for file data, no DAX.
pub(crate) fn passthrough_fs(dir: &Path) -> Result<PassthroughFs<()>, SharedDirError> {
    let bad = |problem| SharedDirError::new(dir, problem);
    let root_dir = dir.to_str().ok_or_else(|| bad(SharedDirProblem::NotUtf8))?.to_string();
    let config = Config {
        root_dir,
        xattr: true,
        do_import: true,
        cache_policy: CachePolicy::Auto,
        attr_timeout: FS_CACHE_TIMEOUT,
        entry_timeout: FS_CACHE_TIMEOUT,
        writeback: false,
        ..Default::default()
    };
    let fs = PassthroughFs::<()>::new(config).map_err(|e| bad(SharedDirProblem::Passthrough(e)))?;
    fs.import().map_err(|e| bad(SharedDirProblem::Passthrough(e)))?;
    Ok(fs)
}
