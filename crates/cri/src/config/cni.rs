//! The `[cni]` section of the daemon's config: where network configs, plugin binaries and the
//! pods' named network namespaces live.
//!
//! ```toml
//! [cni]
//! enabled = true                               # false: pods get loopback only (no CNI, no NIC)
//! conf_dir = "/etc/cni/net.d"                  # the first valid .conflist/.conf/.json by name
//! bin_dirs = ["/opt/cni/bin", "/usr/lib/cni"]  # searched in order for a plugin's `type`
//! # netns_dir = "<run_dir>/netns"              # one bind-mounted netns file per pod
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// containerd's default network config directory.
pub const DEFAULT_CONF_DIR: &str = "/etc/cni/net.d";
/// The upstream plugin directory, then Debian's (`containernetworking-plugins`).
pub const DEFAULT_BIN_DIRS: [&str; 2] = ["/opt/cni/bin", "/usr/lib/cni"];

/// The section as written (every key optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCniConfig {
    pub enabled: Option<bool>,
    pub conf_dir: Option<PathBuf>,
    pub bin_dirs: Option<Vec<PathBuf>>,
    pub netns_dir: Option<PathBuf>,
}

/// The validated `[cni]` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniConfig {
    /// false: no pod gets a network (NetworkReady false, "disabled in config").
    pub enabled: bool,
    pub conf_dir: PathBuf,
    pub bin_dirs: Vec<PathBuf>,
    pub netns_dir: PathBuf,
}

impl CniConfig {
    /// The defaults for a daemon whose run dir is `run_dir`.
    pub fn defaults(run_dir: &Path) -> CniConfig {
        CniConfig {
            enabled: true,
            conf_dir: PathBuf::from(DEFAULT_CONF_DIR),
            bin_dirs: DEFAULT_BIN_DIRS.iter().map(PathBuf::from).collect(),
            netns_dir: run_dir.join("netns"),
        }
    }

    /// Fills in defaults; every path must be absolute (the message names the key).
    pub fn from_raw(raw: RawCniConfig, run_dir: &Path) -> Result<CniConfig, String> {
        let d = CniConfig::defaults(run_dir);
        let c = CniConfig {
            enabled: raw.enabled.unwrap_or(d.enabled),
            conf_dir: raw.conf_dir.unwrap_or(d.conf_dir),
            bin_dirs: raw.bin_dirs.unwrap_or(d.bin_dirs),
            netns_dir: raw.netns_dir.unwrap_or(d.netns_dir),
        };
        if c.bin_dirs.is_empty() {
            return Err("cni.bin_dirs must name at least one directory".into());
        }
        let named = [("cni.conf_dir", &c.conf_dir), ("cni.netns_dir", &c.netns_dir)];
        let bins = c.bin_dirs.iter().map(|b| ("cni.bin_dirs", b));
        for (key, p) in named.into_iter().chain(bins) {
            if !p.is_absolute() {
                return Err(format!("{key} = {:?} must be an absolute path", p.display()));
            }
            if p.to_str().is_some_and(|s| s.contains(':')) && key == "cni.bin_dirs" {
                return Err(format!(
                    "{key} = {:?}: a plugin directory cannot contain ':' (CNI_PATH separator)",
                    p.display()
                ));
            }
        }
        Ok(c)
    }

    /// `CNI_PATH`: the plugin directories joined by ':'.
    pub fn cni_path(&self) -> String {
        let dirs: Vec<String> = self.bin_dirs.iter().map(|d| d.display().to_string()).collect();
        dirs.join(":")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_containerd_and_debian() {
        let c = CniConfig::from_raw(RawCniConfig::default(), Path::new("/run/x")).unwrap();
        assert_eq!(c.conf_dir, PathBuf::from("/etc/cni/net.d"));
        assert_eq!(c.cni_path(), "/opt/cni/bin:/usr/lib/cni");
        assert_eq!(c.netns_dir, PathBuf::from("/run/x/netns"));
        assert!(c.enabled);
        let off = RawCniConfig { enabled: Some(false), ..Default::default() };
        assert!(!CniConfig::from_raw(off, Path::new("/run/x")).unwrap().enabled);
    }

    #[test]
    fn relative_or_empty_paths_are_refused_naming_the_key() {
        let cases = [
            (RawCniConfig { conf_dir: Some("net.d".into()), ..Default::default() }, "conf_dir"),
            (RawCniConfig { netns_dir: Some("ns".into()), ..Default::default() }, "netns_dir"),
            (RawCniConfig { bin_dirs: Some(vec!["bin".into()]), ..Default::default() }, "bin_dirs"),
            (RawCniConfig { bin_dirs: Some(vec![]), ..Default::default() }, "bin_dirs"),
            (RawCniConfig { bin_dirs: Some(vec!["/a:b".into()]), ..Default::default() }, "':'"),
        ];
        for (raw, want) in cases {
            let e = CniConfig::from_raw(raw, Path::new("/run")).unwrap_err();
            assert!(e.contains(want), "{e}");
        }
    }
}
