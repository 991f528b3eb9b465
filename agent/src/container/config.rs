//! Where the agent keeps container state in the guest, and its fixed waits.

use std::path::PathBuf;
use std::time::Duration;

use super::{cgroup, podns};

/// How long RemoveContainer(force) and StopContainer wait for processes
/// to die after SIGKILL.
pub const KILL_WAIT: Duration = Duration::from_secs(10);

/// Where the agent keeps container state in the guest.
#[derive(Debug, Clone)]
pub struct Config {
    /// libcontainer's state root.
    pub state_root: PathBuf,
    /// One bundle dir (config.json, hostname file) per container.
    pub bundle_root: PathBuf,
    pub cgroup_root: PathBuf,
    pub pod_ns_dir: PathBuf,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            state_root: "/run/carapace/libcontainer".into(),
            bundle_root: "/run/carapace/bundles".into(),
            cgroup_root: cgroup::CGROUP_ROOT.into(),
            pod_ns_dir: podns::POD_NS_DIR.into(),
        }
    }
}

impl Config {
    /// Every directory under `dir` (tests: a private tree instead of the guest's /run).
    #[cfg(test)]
    pub fn under(dir: &std::path::Path) -> Config {
        Config {
            state_root: dir.join("state"),
            bundle_root: dir.join("bundles"),
            cgroup_root: dir.join("cgroup"),
            pod_ns_dir: dir.join("ns"),
        }
    }
}
