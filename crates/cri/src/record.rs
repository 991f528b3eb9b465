//! The durable record of one pod sandbox (one JSON file under the state dir).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::VmProfile;

/// Bumped when a field changes meaning; records of another version are refused with a message.
pub const RECORD_VERSION: u32 = 1;

/// Where a sandbox is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxPhase {
    /// The VMM was started; the agent has not answered yet.
    Starting,
    /// The agent answered; the VM runs.
    Ready,
    /// Stopped by request, or the VM ended on its own.
    Stopped,
}

/// The process running a sandbox's VM, identified so that a reused PID is not mistaken for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmmProcess {
    pub pid: i32,
    /// Field 22 of /proc/<pid>/stat (clock ticks since boot) when it was started.
    pub start_time: u64,
}

/// Pod metadata as kubelet sent it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    pub name: String,
    pub uid: String,
    pub namespace: String,
    pub attempt: u32,
}

/// The pod's DNS settings (written as the pod's resolv.conf).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

/// The parts of the Linux security context carapace records (the VM is the isolation boundary).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecuritySummary {
    pub privileged: bool,
    pub cgroup_parent: String,
    pub sysctls: BTreeMap<String, String>,
    /// Namespace modes as CRI numbers them (0 POD, 1 CONTAINER, 2 NODE, 3 TARGET).
    pub network_ns: i32,
    pub pid_ns: i32,
    pub ipc_ns: i32,
}

/// Everything the daemon knows about one sandbox; enough to rebuild its state after a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxRecord {
    pub version: u32,
    pub id: String,
    pub metadata: Metadata,
    pub phase: SandboxPhase,
    /// Nanoseconds since the Unix epoch.
    pub created_at: i64,
    pub stopped_at: Option<i64>,
    pub runtime_handler: String,
    pub profile_name: String,
    pub profile: VmProfile,
    pub hostname: String,
    pub dns: Option<Dns>,
    pub log_directory: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub security: SecuritySummary,
    /// This pod's runtime files: `vsock` (the VM's vsock socket), `serial.log`, `vmm.log`,
    /// `resolv.conf`, `hostname`.
    pub run_dir: PathBuf,
    pub vmm: Option<VmmProcess>,
    /// Guest facts from the agent's Health answer (kernel version, CPUs, memory).
    pub guest: BTreeMap<String, String>,
}

impl SandboxRecord {
    /// The VM's vsock Unix socket.
    pub fn vsock_path(&self) -> PathBuf {
        self.run_dir.join("vsock")
    }
    pub fn serial_log(&self) -> PathBuf {
        self.run_dir.join("serial.log")
    }
    pub fn vmm_log(&self) -> PathBuf {
        self.run_dir.join("vmm.log")
    }
    pub fn sandbox_name(&self) -> String {
        crate::ids::sandbox_name(
            &self.metadata.name,
            &self.metadata.namespace,
            &self.metadata.uid,
            self.metadata.attempt,
        )
    }
}
