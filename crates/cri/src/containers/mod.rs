//! Containers: the container table of one daemon and the CRI container operations, carried out
//! by the agent inside the pod's VM. One file per job, like youki's libcontainer:
//!
//! * this file: [`ContainerTable`] (records in memory and on disk, names, events);
//! * [`create`]: CreateContainer (parse the request once, then build files and the agent call);
//! * [`lifecycle`]: start, stop, remove, update resources, reopen the log;
//! * [`exec`]: ExecSync; [`running`]: a running container as exec and streaming use it;
//!   [`stats`]: ContainerStats; [`monitor`]: output into the CRI log and
//!   the exit of a running container;
//! * [`convert`]: record → CRI messages and agent replies → records; [`security`]: the CRI
//!   security context → the agent's, [`seccomp`]: its seccomp profile; [`agent`]: reaching the
//!   pod's agent and bounding calls.
//!
//! A container's files live in the pod's shared dir (`<run_dir>/pods/<pod>/shared/<id>`), which
//! the guest sees live through virtio-fs (see [`create::guest_path`]): the rootfs (`rootfs/`,
//! the image's layers flattened into one copied tree) and the volumes' bind mounts
//! (`mounts/<n>`). Records are kept durably beside the sandbox records.

pub mod agent;
pub mod convert;
pub mod create;
pub mod exec;
pub mod lifecycle;
pub mod monitor;
pub mod running;
pub mod seccomp;
pub mod security;
pub mod stats;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use k8s_cri::v1 as cri;
use tokio::sync::broadcast;

use crate::crilog::LogWriter;
use crate::error::CriError;
use crate::filters::ContainerFilter;
use crate::ids;
use crate::record::{ContainerPhase, ContainerRecord, SandboxRecord};
use crate::store::{Store, StoreError};
use crate::util::{lock, now_nanos, sandbox_state};
use crate::volumes;

/// Events kept for slow GetContainerEvents readers.
const EVENT_BACKLOG: usize = 256;

/// What the container operations need from the pod sandboxes (the runtime's sandbox table).
pub trait Pods: Send + Sync {
    /// The record of the sandbox an ID or unique ID prefix names.
    fn pod(&self, id: &str) -> Result<SandboxRecord, CriError>;
}

/// One container: `op` serializes its lifecycle operations; `rec` can always be read at once.
pub struct Container {
    op: tokio::sync::Mutex<()>,
    rec: Mutex<ContainerRecord>,
    /// The open log file while output is forwarded (ReopenContainerLog swaps it).
    log: Mutex<Option<LogWriter>>,
    monitor: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The output of the running container as the monitor forwards it, for attachers.
    output: broadcast::Sender<OutputEvent>,
}

/// Output chunks an attacher may lag behind by before it is cut off.
pub const ATTACH_BACKLOG: usize = 1024;

/// What attachers of a container get from its monitor.
#[derive(Debug, Clone)]
pub enum OutputEvent {
    /// A chunk of stdout or stderr, as it went into the CRI log.
    Chunk { stderr: bool, data: Arc<[u8]> },
    /// The container exited and its output ended.
    End,
}

impl Container {
    fn new(rec: ContainerRecord) -> Arc<Container> {
        Arc::new(Container {
            op: tokio::sync::Mutex::new(()),
            rec: Mutex::new(rec),
            log: Mutex::new(None),
            monitor: Mutex::new(None),
            output: broadcast::channel(ATTACH_BACKLOG).0,
        })
    }

    fn rec(&self) -> MutexGuard<'_, ContainerRecord> {
        lock(&self.rec)
    }
}

#[derive(Default)]
struct Index {
    by_id: BTreeMap<String, Arc<Container>>,
    /// `<pod id>/<name>_<attempt>` → container ID.
    names: HashMap<String, String>,
}

/// The containers of one daemon.
pub struct ContainerTable {
    store: Store<ContainerRecord>,
    index: Mutex<Index>,
    events: broadcast::Sender<cri::ContainerEventResponse>,
    images: OnceLock<Arc<carapace_image::ImageStore>>,
}

impl ContainerTable {
    /// Loads the container records. Containers of sandboxes that no longer exist are dropped
    /// (their files removed); running containers of stopped VMs are recorded as exited. With a
    /// Tokio runtime, the monitors of running containers resume.
    pub fn open(
        state_dir: &Path,
        sandboxes: &[SandboxRecord],
    ) -> Result<Arc<ContainerTable>, StoreError> {
        let store: Store<ContainerRecord> = Store::open(state_dir)?;
        let (records, bad) = store.load_all()?;
        for b in bad {
            tracing::error!(
                path = %b.path.display(),
                reason = %b.reason,
                "ignoring unreadable container record",
            );
        }
        let pods: HashMap<&str, &SandboxRecord> =
            sandboxes.iter().map(|s| (s.id.as_str(), s)).collect();
        let mut index = Index::default();
        for mut rec in records {
            let Some(sb) = pods.get(rec.sandbox_id.as_str()) else {
                tracing::warn!(
                    id = %rec.id,
                    pod = %rec.sandbox_id,
                    "container of a removed pod sandbox: removing it",
                );
                if let Err(e) = volumes::remove_tree(&rec.dir) {
                    tracing::error!(
                        id = %rec.id,
                        error = %e,
                        "cannot remove the container's files",
                    );
                    continue;
                }
                store.remove(&rec.id)?;
                continue;
            };
            if rec.phase == ContainerPhase::Running
                && sandbox_state(sb) != cri::PodSandboxState::SandboxReady
            {
                tracing::warn!(
                    id = %rec.id,
                    "the pod VM of this running container ended while the daemon was down",
                );
                rec.phase = ContainerPhase::Exited;
                rec.finished_at = now_nanos();
                rec.exit_code = 255;
                rec.reason = "Error".into();
                rec.message = monitor::VM_STOPPED.into();
                store.save(&rec)?;
            }
            index.names.insert(rec.pod_unique_name(), rec.id.clone());
            index.by_id.insert(rec.id.clone(), Container::new(rec));
        }
        let (events, _) = broadcast::channel(EVENT_BACKLOG);
        let table = Arc::new(ContainerTable {
            store,
            index: Mutex::new(index),
            events,
            images: OnceLock::new(),
        });
        // Running containers: ask the agent how they are and resume their logs.
        if tokio::runtime::Handle::try_current().is_ok() {
            let running: Vec<(Arc<Container>, SandboxRecord)> = table
                .index()
                .by_id
                .values()
                .filter(|c| c.rec().phase == ContainerPhase::Running)
                .filter_map(|c| {
                    pods.get(c.rec().sandbox_id.as_str()).map(|sb| (c.clone(), (*sb).clone()))
                })
                .collect();
            for (c, sb) in running {
                tracing::info!(id = %c.rec().id, "resuming the monitor of a running container");
                table.spawn_monitor(&c, &sb);
            }
        }
        Ok(table)
    }

    /// The image store CreateContainer takes images from (set once by the daemon).
    pub fn set_image_store(&self, images: Arc<carapace_image::ImageStore>) {
        if self.images.set(images).is_err() {
            tracing::warn!("the image store was set twice; keeping the first");
        }
    }

    fn images(&self) -> Result<Arc<carapace_image::ImageStore>, CriError> {
        self.images.get().cloned().ok_or_else(|| {
            CriError::FailedPrecondition(
                "this daemon has no image store configured (see [images] in the config)".into(),
            )
        })
    }

    fn index(&self) -> MutexGuard<'_, Index> {
        lock(&self.index)
    }

    /// The container an ID or unique ID prefix names.
    fn resolve(&self, id: &str) -> Result<Arc<Container>, CriError> {
        if id.is_empty() {
            return Err(CriError::InvalidArgument("container_id must not be empty".into()));
        }
        let not_found = || CriError::NotFound(format!("container {id:?} not found"));
        if !ids::is_id_or_prefix(id) {
            return Err(not_found());
        }
        let index = self.index();
        let mut hits = index.by_id.range(id.to_string()..).take_while(|(k, _)| k.starts_with(id));
        let first = hits.next().ok_or_else(not_found)?;
        if hits.next().is_some() {
            return Err(CriError::InvalidArgument(format!(
                "container ID prefix {id:?} matches more than one container; give more digits"
            )));
        }
        Ok(first.1.clone())
    }

    /// The container an ID names and the record of its pod.
    fn with_pod(
        &self,
        pods: &dyn Pods,
        id: &str,
    ) -> Result<(Arc<Container>, SandboxRecord), CriError> {
        let c = self.resolve(id)?;
        let pod = c.rec().sandbox_id.clone();
        let sb = pods.pod(&pod)?;
        Ok((c, sb))
    }

    fn snapshot(&self) -> Vec<ContainerRecord> {
        let all: Vec<Arc<Container>> = self.index().by_id.values().cloned().collect();
        all.iter().map(|c| c.rec().clone()).collect()
    }

    fn of_pod(&self, pod: &str) -> Vec<Arc<Container>> {
        self.index().by_id.values().filter(|c| c.rec().sandbox_id == pod).cloned().collect()
    }

    fn save(&self, c: &Container, rec: ContainerRecord) -> Result<(), CriError> {
        self.store.save(&rec)?;
        *c.rec() = rec;
        Ok(())
    }

    fn emit(&self, rec: &ContainerRecord, kind: cri::ContainerEventType) {
        let ev = cri::ContainerEventResponse {
            container_id: rec.id.clone(),
            container_event_type: kind as i32,
            created_at: now_nanos(),
            pod_sandbox_status: None,
            containers_statuses: if kind == cri::ContainerEventType::ContainerDeletedEvent {
                Vec::new()
            } else {
                vec![convert::to_status(rec)]
            },
        };
        // No subscriber is fine.
        let _ = self.events.send(ev);
    }

    /// GetContainerEvents: a receiver of every event from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<cri::ContainerEventResponse> {
        self.events.subscribe()
    }

    /// Records an exit (once) and announces it.
    fn record_exit(
        &self,
        c: &Container,
        exit_code: i32,
        reason: &str,
        message: &str,
        finished_at: i64,
    ) {
        let mut rec = c.rec().clone();
        if rec.phase == ContainerPhase::Exited {
            return;
        }
        rec.phase = ContainerPhase::Exited;
        rec.exit_code = exit_code;
        rec.reason = reason.to_string();
        rec.message = message.to_string();
        rec.finished_at = finished_at.max(rec.started_at);
        tracing::info!(id = %rec.id, exit_code, reason, "container exited");
        if let Err(err) = self.save(c, rec.clone()) {
            tracing::error!(id = %rec.id, error = %err, "cannot save the container's exit");
            *c.rec() = rec.clone();
        }
        self.emit(&rec, cri::ContainerEventType::ContainerStoppedEvent);
    }

    /// ListContainers.
    pub fn list(&self, filter: &ContainerFilter) -> Vec<cri::Container> {
        self.snapshot().iter().filter(|r| filter.matches(r)).map(convert::to_container).collect()
    }

    /// ContainerStatus.
    pub fn status(
        &self,
        id: &str,
        verbose: bool,
    ) -> Result<cri::ContainerStatusResponse, CriError> {
        let rec = self.resolve(id)?.rec().clone();
        let mut info = HashMap::new();
        if verbose {
            info.insert("info".to_string(), serde_json::to_string(&rec).unwrap_or_default());
        }
        Ok(cri::ContainerStatusResponse { status: Some(convert::to_status(&rec)), info })
    }

    /// The statuses of a pod's containers.
    pub fn pod_statuses(&self, pod: &str) -> Vec<cri::ContainerStatus> {
        self.of_pod(pod).iter().map(|c| convert::to_status(&c.rec())).collect()
    }
}
