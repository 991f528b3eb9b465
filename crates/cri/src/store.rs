//! Durable records: sandboxes in `<state_dir>/sandboxes/<id>.json`, containers in
//! `<state_dir>/containers/<id>.json`, each written atomically (temporary file, fsync, rename,
//! fsync of the directory), so a crash leaves either the old or the new record, never a torn one.

use std::fs;
use std::io::Write;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::ids::is_full_id;
use crate::record::{ContainerRecord, SandboxRecord, CONTAINER_RECORD_VERSION, RECORD_VERSION};

/// A kind of durable record: where its files live and how to check one read back.
pub trait Record: Serialize + DeserializeOwned {
    /// The directory under the state dir.
    const DIR: &'static str;
    /// What the record is of ("sandbox", "container"), for messages.
    const KIND: &'static str;
    /// The record version this daemon reads.
    const VERSION: u32;
    fn id(&self) -> &str;
    fn version(&self) -> u32;
    fn created_at(&self) -> i64;
}

impl Record for SandboxRecord {
    const DIR: &'static str = "sandboxes";
    const KIND: &'static str = "sandbox";
    const VERSION: u32 = RECORD_VERSION;
    fn id(&self) -> &str {
        &self.id
    }
    fn version(&self) -> u32 {
        self.version
    }
    fn created_at(&self) -> i64 {
        self.created_at
    }
}

impl Record for ContainerRecord {
    const DIR: &'static str = "containers";
    const KIND: &'static str = "container";
    const VERSION: u32 = CONTAINER_RECORD_VERSION;
    fn id(&self) -> &str {
        &self.id
    }
    fn version(&self) -> u32 {
        self.version
    }
    fn created_at(&self) -> i64 {
        self.created_at
    }
}

/// A state-dir operation that failed; the message names the file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state dir: {op} {path}: {source}")]
    Io { op: &'static str, path: PathBuf, source: std::io::Error },
    #[error("state dir: record {path} cannot be encoded: {source}")]
    Encode { path: PathBuf, source: serde_json::Error },
}

/// A record file that could not be loaded (kept aside, reported, never fatal).
#[derive(Debug)]
pub struct BadRecord {
    pub path: PathBuf,
    pub reason: String,
}

/// The records of one kind under one state dir.
#[derive(Debug)]
pub struct Store<T = SandboxRecord> {
    dir: PathBuf,
    _kind: PhantomData<fn() -> T>,
}

impl<T> Clone for Store<T> {
    fn clone(&self) -> Self {
        Store { dir: self.dir.clone(), _kind: PhantomData }
    }
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io { op, path, source }
}

impl<T: Record> Store<T> {
    /// Opens (creating if needed) the record directory under `state_dir`.
    pub fn open(state_dir: &Path) -> Result<Store<T>, StoreError> {
        let dir = state_dir.join(T::DIR);
        fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        Ok(Store { dir, _kind: PhantomData })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path_of(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Writes `rec` atomically.
    pub fn save(&self, rec: &T) -> Result<(), StoreError> {
        let path = self.path_of(rec.id());
        let tmp = self.dir.join(format!(".{}.json.tmp", rec.id()));
        let data = serde_json::to_vec_pretty(rec)
            .map_err(|source| StoreError::Encode { path: path.clone(), source })?;
        {
            let mut f = fs::File::create(&tmp).map_err(io("create", &tmp))?;
            f.write_all(&data).map_err(io("write", &tmp))?;
            f.sync_all().map_err(io("fsync", &tmp))?;
        }
        fs::rename(&tmp, &path).map_err(io("rename", &tmp))?;
        self.sync_dir()
    }

    /// Deletes the record of `id`; no error when it is already gone.
    pub fn remove(&self, id: &str) -> Result<(), StoreError> {
        let path = self.path_of(id);
        match fs::remove_file(&path) {
            Ok(()) => self.sync_dir(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("remove", &path)(e)),
        }
    }

    fn sync_dir(&self) -> Result<(), StoreError> {
        let d = fs::File::open(&self.dir).map_err(io("open", &self.dir))?;
        d.sync_all().map_err(io("fsync", &self.dir))
    }

    /// Loads every record; unreadable ones are returned separately (and left in place).
    /// Leftover temporary files of interrupted writes are deleted.
    pub fn load_all(&self) -> Result<(Vec<T>, Vec<BadRecord>), StoreError> {
        let mut good = Vec::new();
        let mut bad = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io("read", &self.dir))? {
            let entry = entry.map_err(io("read", &self.dir))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.ends_with(".json.tmp") {
                let _ = fs::remove_file(&path);
                continue;
            }
            let Some(id) = name.strip_suffix(".json") else { continue };
            if !is_full_id(id) {
                bad.push(BadRecord { path, reason: format!("file name is not a {} ID", T::KIND) });
                continue;
            }
            match Self::read(&path) {
                Ok(rec) if rec.id() != id => bad.push(BadRecord {
                    path,
                    reason: format!("holds the record of {} {}", T::KIND, rec.id()),
                }),
                Ok(rec) if rec.version() != T::VERSION => bad.push(BadRecord {
                    path,
                    reason: format!(
                        "record version {} (this daemon reads version {})",
                        rec.version(),
                        T::VERSION
                    ),
                }),
                Ok(rec) => good.push(rec),
                Err(reason) => bad.push(BadRecord { path, reason }),
            }
        }
        good.sort_by_key(|r| r.created_at());
        Ok((good, bad))
    }

    fn read(path: &Path) -> Result<T, String> {
        let data = fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
        serde_json::from_slice(&data).map_err(|e| format!("not a valid record: {e}"))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::VmProfile;
    use crate::record::{Metadata, SandboxPhase, SecuritySummary, VmmProcess};

    pub(crate) fn sample(id: &str, name: &str) -> SandboxRecord {
        SandboxRecord {
            version: RECORD_VERSION,
            id: id.to_string(),
            metadata: Metadata {
                name: name.into(),
                uid: "uid-1".into(),
                namespace: "default".into(),
                attempt: 0,
            },
            phase: SandboxPhase::Ready,
            created_at: 1_700_000_000_000_000_000,
            stopped_at: None,
            runtime_handler: String::new(),
            profile_name: "default".into(),
            profile: VmProfile::default(),
            hostname: name.into(),
            dns: None,
            log_directory: "/var/log/pods/x".into(),
            labels: [("app".to_string(), name.to_string())].into(),
            annotations: Default::default(),
            security: SecuritySummary::default(),
            run_dir: PathBuf::from("/run/carapace/pods").join(id),
            vmm: Some(VmmProcess { pid: 42, start_time: 7 }),
            guest: Default::default(),
        }
    }

    #[test]
    fn save_load_remove_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store: Store = Store::open(dir.path()).unwrap();
        let a = sample(&"a".repeat(64), "a");
        let mut b = sample(&"b".repeat(64), "b");
        b.created_at += 1;
        store.save(&a).unwrap();
        store.save(&b).unwrap();
        b.phase = SandboxPhase::Stopped;
        store.save(&b).unwrap();
        let (recs, bad) = store.load_all().unwrap();
        assert!(bad.is_empty());
        assert_eq!(recs, vec![a.clone(), b.clone()]);
        store.remove(&a.id).unwrap();
        store.remove(&a.id).unwrap();
        let (recs, _) = store.load_all().unwrap();
        assert_eq!(recs, vec![b]);
        // Nothing but the one record file is left.
        assert_eq!(fs::read_dir(store.dir()).unwrap().count(), 1);
    }

    #[test]
    fn torn_and_foreign_files_are_reported_not_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let store: Store = Store::open(dir.path()).unwrap();
        let good = sample(&"c".repeat(64), "c");
        store.save(&good).unwrap();
        fs::write(store.dir().join(format!("{}.json", "d".repeat(64))), b"{\"version\": 1, ").unwrap();
        fs::write(store.dir().join("notanid.json"), b"{}").unwrap();
        let mut other = sample(&"e".repeat(64), "e");
        other.version = 99;
        store.save(&other).unwrap();
        let tmp = store.dir().join(format!(".{}.json.tmp", "f".repeat(64)));
        fs::write(&tmp, b"partial").unwrap();
        let (recs, bad) = store.load_all().unwrap();
        assert_eq!(recs, vec![good]);
        assert_eq!(bad.len(), 3, "{bad:?}");
        assert!(bad.iter().any(|b| b.reason.contains("version 99")));
        assert!(!tmp.exists(), "leftover temporary file not cleaned");
    }
}
