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

/// Implements [`Record`] for a record type with `id`, `version` and `created_at` fields.
macro_rules! impl_record {
    ($ty:ty, dir: $dir:literal, kind: $kind:literal, version: $version:expr) => {
        impl Record for $ty {
            const DIR: &'static str = $dir;
            const KIND: &'static str = $kind;
            const VERSION: u32 = $version;
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
    };
}

impl_record!(SandboxRecord, dir: "sandboxes", kind: "sandbox", version: RECORD_VERSION);
impl_record!(
    ContainerRecord,
    dir: "containers",
    kind: "container",
    version: CONTAINER_RECORD_VERSION
);

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
    use crate::record::{
        ContainerPhase, Metadata, MountRecord, ProcessSpec, SandboxPhase, SecuritySummary,
        VmmProcess,
    };

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
            network: None,
            vm_size: None,
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
        fs::write(store.dir().join(format!("{}.json", "d".repeat(64))), b"{\"version\": 1, ")
            .unwrap();
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

    /// A container record of pod `pod` for tests (a Created `sh` with one read-only volume).
    pub(crate) fn container(id: &str, pod: &str, name: &str) -> ContainerRecord {
        ContainerRecord {
            version: CONTAINER_RECORD_VERSION,
            id: id.into(),
            sandbox_id: pod.into(),
            name: name.into(),
            attempt: 0,
            image: "busybox:latest".into(),
            image_id: "sha256:aa".into(),
            image_ref: "registry/busybox@sha256:bb".into(),
            labels: [("app".to_string(), name.to_string())].into(),
            annotations: Default::default(),
            log_path: "/var/log/pods/x/c/0.log".into(),
            phase: ContainerPhase::Created,
            created_at: 1,
            started_at: 0,
            finished_at: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            process: ProcessSpec { args: vec!["sh".into()], uid: 5, gid: 6, ..Default::default() },
            mounts: vec![MountRecord {
                container_path: "/data".into(),
                host_path: "/srv/data".into(),
                readonly: true,
                recursive_read_only: false,
                selinux_relabel: false,
                propagation: 0,
                shared_path: PathBuf::from("/run/x/mounts/0"),
                guest_path: format!("/run/carapace/shared/{id}/mounts/0"),
            }],
            dir: PathBuf::from("/run/x"),
            resources: Some(k8s_cri::v1::LinuxContainerResources {
                memory_limit_in_bytes: 1 << 20,
                ..Default::default()
            }),
            stop_signal: String::new(),
        }
    }

    #[test]
    fn container_record_round_trip_through_the_store() {
        let d = tempfile::tempdir().unwrap();
        let store: Store<ContainerRecord> = Store::open(d.path()).unwrap();
        let mut a = container(&"a".repeat(64), &"p".repeat(0), "web");
        a.sandbox_id = "f".repeat(64);
        a.phase = ContainerPhase::Exited;
        a.exit_code = 3;
        store.save(&a).unwrap();
        let (recs, bad) = store.load_all().unwrap();
        assert!(bad.is_empty());
        assert_eq!(recs, vec![a]);
        assert!(d.path().join("containers").is_dir());
    }

    fn container_sample(id: &str, pod: &str) -> ContainerRecord {
        ContainerRecord {
            version: CONTAINER_RECORD_VERSION,
            id: id.into(),
            sandbox_id: pod.into(),
            name: "c".into(),
            attempt: 0,
            image: "busybox:latest".into(),
            image_id: "sha256:aa".into(),
            image_ref: "sha256:aa".into(),
            labels: Default::default(),
            annotations: Default::default(),
            log_path: String::new(),
            phase: ContainerPhase::Created,
            created_at: 5,
            started_at: 0,
            finished_at: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            process: ProcessSpec { args: vec!["true".into()], ..Default::default() },
            mounts: Vec::new(),
            dir: PathBuf::from("/run/x").join(id),
            resources: None,
            stop_signal: String::new(),
        }
    }

    #[test]
    fn record_file_is_the_pretty_json_named_by_its_id() {
        let dir = tempfile::tempdir().unwrap();
        let store: Store = Store::open(dir.path()).unwrap();
        let mut rec = sample(&"1".repeat(64), "one");
        store.save(&rec).unwrap();
        rec.phase = SandboxPhase::Stopped;
        store.save(&rec).unwrap();
        let path = dir.path().join("sandboxes").join(format!("{}.json", rec.id));
        assert_eq!(fs::read(&path).unwrap(), serde_json::to_vec_pretty(&rec).unwrap());
        // The overwrite went through a temporary file that is gone now.
        let names: Vec<_> =
            fs::read_dir(store.dir()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![path.file_name().unwrap().to_owned()]);
    }

    #[test]
    fn sandbox_and_container_records_live_apart_in_one_state_dir() {
        let dir = tempfile::tempdir().unwrap();
        let pods: Store = Store::open(dir.path()).unwrap();
        let ctrs: Store<ContainerRecord> = Store::open(dir.path()).unwrap();
        let pod = sample(&"2".repeat(64), "two");
        let ctr = container_sample(&"3".repeat(64), &pod.id);
        pods.save(&pod).unwrap();
        ctrs.save(&ctr).unwrap();
        assert!(dir.path().join("containers").join(format!("{}.json", ctr.id)).is_file());
        assert_eq!(pods.load_all().unwrap().0, vec![pod]);
        assert_eq!(ctrs.load_all().unwrap().0, vec![ctr.clone()]);
        // A container record under another name is reported as such (the kind is in the reason).
        fs::copy(ctrs.path_of(&ctr.id), ctrs.path_of(&"4".repeat(64))).unwrap();
        fs::write(ctrs.dir().join("x.json"), b"{}").unwrap();
        let (recs, bad) = ctrs.load_all().unwrap();
        assert_eq!(recs, vec![ctr.clone()]);
        let mut reasons: Vec<_> = bad.into_iter().map(|b| b.reason).collect();
        reasons.sort();
        assert_eq!(
            reasons,
            vec![
                "file name is not a container ID".to_string(),
                format!("holds the record of container {}", ctr.id)
            ]
        );
        ctrs.remove(&ctr.id).unwrap();
        assert!(!ctrs.path_of(&ctr.id).exists());
        assert_eq!(
            pods.load_all().unwrap().0.len(),
            1,
            "removing a container touched the sandboxes"
        );
    }
}
