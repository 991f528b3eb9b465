//! Errors of pod networking. A plugin's own error (`{"code","msg","details"}`) is kept whole so
//! that RunPodSandbox fails with the plugin's words.

use std::path::PathBuf;

/// An error a CNI plugin reported on stdout (CNI spec "Error" object).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl std::fmt::Display for PluginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (CNI error code {})", self.msg, self.code)?;
        if !self.details.is_empty() {
            write!(f, ": {}", self.details)?;
        }
        Ok(())
    }
}

/// Why a pod's network could not be set up, torn down or configured.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// No usable network config (NetworkReady is false for the same reason).
    #[error("CNI network not ready: {0}")]
    NotReady(String),
    /// A network config file or cached config is not valid CNI.
    #[error("CNI config {source_name}: {message}")]
    InvalidConfig { source_name: String, message: String },
    #[error("CNI plugin {plugin:?} not found in {dirs}")]
    PluginNotFound { plugin: String, dirs: String },
    #[error("CNI plugin {plugin} ({command}) failed: {error}")]
    Plugin { plugin: String, command: &'static str, error: PluginError },
    /// The plugin failed without a CNI error object (crash, signal, garbage on stdout).
    #[error("CNI plugin {plugin} ({command}) failed: {message}")]
    PluginFailed { plugin: String, command: &'static str, message: String },
    #[error("CNI plugin {plugin} ({command}) did not finish within {secs} s and was killed")]
    Timeout { plugin: String, command: &'static str, secs: u64 },
    #[error("CNI plugin {plugin} ({command}): invalid result: {message}")]
    InvalidResult { plugin: String, command: &'static str, message: String },
    /// A pod annotation or request field cannot be turned into a CNI runtime config.
    #[error("{0}")]
    InvalidArgument(String),
    #[error("cannot {op} {}: {source}", path.display())]
    Io { op: &'static str, path: PathBuf, source: std::io::Error },
    #[error("cannot run CNI plugin {plugin}: {source}")]
    Spawn { plugin: String, source: std::io::Error },
    #[error("network namespace {}: {op}: {source}", path.display())]
    Netns { op: &'static str, path: PathBuf, source: nix::Error },
    #[error("CNI cache {}: {message}", path.display())]
    Cache { path: PathBuf, message: String },
}

impl CniError {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| CniError::Io { op, path, source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plugin_error_shows_its_message_and_details() {
        let e = CniError::Plugin {
            plugin: "bridge".into(),
            command: "ADD",
            error: PluginError { code: 11, msg: "no luck".into(), details: "try again".into() },
        };
        let s = e.to_string();
        assert!(s.contains("bridge") && s.contains("ADD"), "{s}");
        assert!(s.contains("no luck") && s.contains("try again") && s.contains("11"), "{s}");
    }
}
