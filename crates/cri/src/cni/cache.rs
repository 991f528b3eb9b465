//! What a pod's ADD used, kept on disk (`<state_dir>/cni/<sandbox id>.json`, 0600, written
//! atomically) so that DEL runs with the same network config and result after the conf dir
//! changed or the daemon restarted. Written before ADD (without a result) and again after it,
//! so a daemon that dies in the middle of an ADD still leaves what its DEL needs.

use std::fs;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::CniError;
use super::loader::read_bounded;
use super::runtime_config::RuntimeConfig;

/// The cache format this daemon writes and reads.
pub const CACHE_VERSION: u32 = 1;
/// The largest cache file read back (a config of at most 1 MiB plus a result of at most 1 MiB).
const MAX_CACHE_BYTES: u64 = 4 << 20;

/// Who the pod is, for `CNI_ARGS` and for messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodIdentity {
    /// The sandbox ID: `CNI_CONTAINERID`, the netns name, the cache key.
    pub sandbox_id: String,
    pub name: String,
    pub namespace: String,
    pub uid: String,
}

impl From<&crate::record::SandboxRecord> for PodIdentity {
    fn from(rec: &crate::record::SandboxRecord) -> PodIdentity {
        PodIdentity {
            sandbox_id: rec.id.clone(),
            name: rec.metadata.name.clone(),
            namespace: rec.metadata.namespace.clone(),
            uid: rec.metadata.uid.clone(),
        }
    }
}

/// One pod's cached network attachment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheEntry {
    pub version: u32,
    pub network_name: String,
    pub ifname: String,
    /// The network config list used, as JSON text (the file's bytes for a `.conflist`).
    pub config: String,
    /// Where the config came from (for messages).
    pub config_source: String,
    pub netns: PathBuf,
    /// The final result of the ADD chain; None while the ADD runs (or when it died midway).
    pub result: Option<Value>,
    pub runtime_config: RuntimeConfig,
    pub pod: PodIdentity,
}

/// The cache dir of one daemon.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    pub fn new(dir: PathBuf) -> Cache {
        Cache { dir }
    }

    pub fn path_of(&self, sandbox_id: &str) -> PathBuf {
        self.dir.join(format!("{sandbox_id}.json"))
    }

    /// Writes `entry` atomically (temporary file, fsync, rename, fsync of the dir).
    pub fn save(&self, entry: &CacheEntry) -> Result<(), CniError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(CniError::io("create", &self.dir))?;
        let path = self.path_of(&entry.pod.sandbox_id);
        let tmp = self.dir.join(format!(".{}.json.tmp", entry.pod.sandbox_id));
        let data = serde_json::to_vec(entry)
            .map_err(|e| CniError::Cache { path: path.clone(), message: e.to_string() })?;
        let _ = fs::remove_file(&tmp);
        {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(CniError::io("create", &tmp))?;
            f.write_all(&data).map_err(CniError::io("write", &tmp))?;
            f.sync_all().map_err(CniError::io("fsync", &tmp))?;
        }
        fs::rename(&tmp, &path).map_err(CniError::io("rename", &tmp))?;
        self.sync_dir()
    }

    fn sync_dir(&self) -> Result<(), CniError> {
        fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(CniError::io("fsync", &self.dir))
    }

    /// The entry of `sandbox_id`, None when there is none.
    pub fn load(&self, sandbox_id: &str) -> Result<Option<CacheEntry>, CniError> {
        let path = self.path_of(sandbox_id);
        if fs::symlink_metadata(&path).is_err_and(|e| e.kind() == ErrorKind::NotFound) {
            return Ok(None);
        }
        let bytes = read_bounded(&path, MAX_CACHE_BYTES)
            .map_err(|message| CniError::Cache { path: path.clone(), message })?;
        let entry: CacheEntry = serde_json::from_slice(&bytes)
            .map_err(|e| CniError::Cache { path: path.clone(), message: e.to_string() })?;
        if entry.version != CACHE_VERSION || entry.pod.sandbox_id != sandbox_id {
            return Err(CniError::Cache {
                path,
                message: format!(
                    "version {} for sandbox {:?}: not this daemon's entry for {sandbox_id}",
                    entry.version, entry.pod.sandbox_id
                ),
            });
        }
        Ok(Some(entry))
    }

    /// Deletes the entry of `sandbox_id`; no error when it is gone.
    pub fn remove(&self, sandbox_id: &str) -> Result<(), CniError> {
        let path = self.path_of(sandbox_id);
        match fs::remove_file(&path) {
            Ok(()) => self.sync_dir(),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(CniError::io("remove", &path)(e)),
        }
    }

    /// The sandbox IDs that have an entry (for cleanup after a restart).
    pub fn sandbox_ids(&self) -> Vec<String> {
        let Ok(rd) = fs::read_dir(&self.dir) else { return Vec::new() };
        let mut ids: Vec<String> = rd
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.'))
            .filter_map(|n| n.strip_suffix(".json").map(str::to_string))
            .collect();
        ids.sort();
        ids
    }
}

/// Whether `dir` holds the cache file of `sandbox_id` (tests and diagnostics).
pub fn exists(dir: &Path, sandbox_id: &str) -> bool {
    Cache::new(dir.to_path_buf()).path_of(sandbox_id).exists()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn entry(id: &str) -> CacheEntry {
        CacheEntry {
            version: CACHE_VERSION,
            network_name: "net".into(),
            ifname: "eth0".into(),
            config: r#"{"cniVersion":"1.0.0","name":"net","plugins":[{"type":"x"}]}"#.into(),
            config_source: "/etc/cni/net.d/10.conflist".into(),
            netns: PathBuf::from("/run/carapace/netns").join(id),
            result: Some(serde_json::json!({"cniVersion":"1.0.0"})),
            runtime_config: RuntimeConfig::default(),
            pod: PodIdentity {
                sandbox_id: id.into(),
                name: "p".into(),
                namespace: "ns".into(),
                uid: "u".into(),
            },
        }
    }

    #[test]
    fn entries_round_trip_privately_and_removal_is_idempotent() {
        let d = tempfile::tempdir().unwrap();
        let c = Cache::new(d.path().join("cni"));
        assert_eq!(c.load("a").unwrap(), None);
        c.save(&entry("a")).unwrap();
        assert_eq!(c.load("a").unwrap(), Some(entry("a")));
        assert_eq!(fs::metadata(c.path_of("a")).unwrap().mode() & 0o777, 0o600);
        assert_eq!(c.sandbox_ids(), ["a"]);
        assert!(exists(&d.path().join("cni"), "a"));
        c.remove("a").unwrap();
        c.remove("a").unwrap();
        assert_eq!(c.load("a").unwrap(), None);
    }

    #[test]
    fn a_foreign_or_broken_entry_is_an_error_not_a_guess() {
        let d = tempfile::tempdir().unwrap();
        let c = Cache::new(d.path().into());
        c.save(&entry("a")).unwrap();
        fs::copy(c.path_of("a"), c.path_of("b")).unwrap();
        assert!(c.load("b").unwrap_err().to_string().contains("not this daemon's entry"));
        fs::write(c.path_of("b"), "{").unwrap();
        assert!(c.load("b").is_err());
    }
}
