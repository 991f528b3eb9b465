//! One container of the table: its libcontainer handle, init and execs.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use libcontainer::container::Container;

use super::common::lock;
use super::process::Proc;
use super::validated::ContainerId;

pub struct Entry {
    pub id: ContainerId,
    pub created_at_ms: u64,
    pub cgroup_dir: PathBuf,
    pub bundle: PathBuf,
    pub container: Mutex<Container>,
    pub started: AtomicBool,
    pub init: Arc<Proc>,
    execs: Mutex<HashMap<String, Arc<Proc>>>,
    /// Serializes start/stop/remove of one container.
    pub op: tokio::sync::Mutex<()>,
}

impl Entry {
    pub fn new(
        id: ContainerId,
        created_at_ms: u64,
        cgroup_dir: PathBuf,
        bundle: PathBuf,
        container: Container,
        init: Arc<Proc>,
    ) -> Entry {
        Entry {
            id,
            created_at_ms,
            cgroup_dir,
            bundle,
            container: Mutex::new(container),
            started: AtomicBool::new(false),
            init,
            execs: Mutex::new(HashMap::new()),
            op: tokio::sync::Mutex::new(()),
        }
    }

    /// "created", "running" or "stopped" (the state of its init).
    pub fn state(&self) -> &'static str {
        if self.init.exited().is_some() {
            "stopped"
        } else if self.started.load(Ordering::SeqCst) {
            "running"
        } else {
            "created"
        }
    }

    /// The exec processes by exec id.
    pub fn execs(&self) -> MutexGuard<'_, HashMap<String, Arc<Proc>>> {
        lock(&self.execs)
    }
}
