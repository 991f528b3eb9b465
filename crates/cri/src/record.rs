//! The durable record of one pod sandbox (one JSON file under the state dir).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::VmProfile;
use crate::sizing::VmSize;

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

/// resolv.conf text for the pod's DNS config.
pub fn resolv_conf(dns: &Dns) -> String {
    let mut s = String::new();
    if !dns.searches.is_empty() {
        s += &format!("search {}\n", dns.searches.join(" "));
    }
    for server in &dns.servers {
        s += &format!("nameserver {server}\n");
    }
    if !dns.options.is_empty() {
        s += &format!("options {}\n", dns.options.join(" "));
    }
    s
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

/// The pod's network as RunPodSandbox set it up (CNI ADD, the tap, the guest NIC): what
/// PodSandboxStatus reports and what the restarted daemon knows without re-running anything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSummary {
    /// The CNI network's name.
    pub network_name: String,
    /// The pod's named network namespace (bind mount) on the host.
    pub netns: PathBuf,
    /// The CNI interface in that namespace (`eth0`).
    pub ifname: String,
    /// The tap wired to it, which the VMM holds.
    pub tap_name: String,
    /// The guest NIC's MAC (the CNI interface's).
    pub mac: String,
    pub mtu: u32,
    /// The pod's IPs: the first is `network.ip` (IPv4 preferred), the rest `additional_ips`.
    pub ips: Vec<String>,
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
    /// The pod's network; None without one (`[cni] enabled = false`, or a record of a daemon
    /// from before pod networking).
    #[serde(default)]
    pub network: Option<NetworkSummary>,
    /// This pod's VM size (from its resources, [`crate::sizing`]); None in records of a daemon
    /// from before sizing: the profile's.
    #[serde(default)]
    pub vm_size: Option<VmSize>,
}

impl SandboxRecord {
    /// The size of this pod's VM.
    pub fn vm_size(&self) -> VmSize {
        self.vm_size.unwrap_or_else(|| self.profile.default_size())
    }
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
    /// The VM's config as `carapace vmm --config` reads it.
    pub fn vm_config(&self) -> PathBuf {
        self.run_dir.join("vm.json")
    }
    /// The directory shared into the guest (virtio-fs), seen there at `/run/carapace/shared`.
    pub fn shared_dir(&self) -> PathBuf {
        self.run_dir.join("shared")
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

/// Bumped when a container record field changes meaning.
pub const CONTAINER_RECORD_VERSION: u32 = 1;

/// Where a container is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContainerPhase {
    Created,
    Running,
    Exited,
}

/// The process a container runs (after merging the image config with the CRI config).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessSpec {
    pub args: Vec<String>,
    /// "KEY=value" entries.
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub tty: bool,
    pub stdin: bool,
    /// CRI `stdin_once`: the first attacher's end of stdin closes the container's.
    #[serde(default)]
    pub stdin_once: bool,
}

/// One mount of a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountRecord {
    /// Inside the container.
    pub container_path: String,
    /// On the host, as the client gave it (empty for files the daemon provides).
    pub host_path: String,
    pub readonly: bool,
    /// With `readonly`: read-only in the volume's submounts too (else they keep their flags).
    #[serde(default)]
    pub recursive_read_only: bool,
    pub selinux_relabel: bool,
    /// CRI MountPropagation number.
    pub propagation: i32,
    /// Where the host path is bind-mounted under the pod's shared dir (unmounted on removal).
    pub shared_path: PathBuf,
    /// The same place as the guest sees it.
    pub guest_path: String,
}

/// Everything the daemon knows about one container; enough to rebuild its state after a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub version: u32,
    pub id: String,
    pub sandbox_id: String,
    pub name: String,
    pub attempt: u32,
    /// The image as the client named it.
    pub image: String,
    /// The image's ID (config digest).
    pub image_id: String,
    /// A repo digest of the image when known, else its ID.
    pub image_ref: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// Full path of the CRI log file; empty: no log.
    pub log_path: String,
    pub phase: ContainerPhase,
    /// Nanoseconds since the Unix epoch; 0 when it did not happen.
    pub created_at: i64,
    pub started_at: i64,
    pub finished_at: i64,
    pub exit_code: i32,
    pub reason: String,
    pub message: String,
    pub process: ProcessSpec,
    pub mounts: Vec<MountRecord>,
    /// `<pod shared dir>/<id>` on the host: the rootfs and the mount points.
    pub dir: PathBuf,
    /// The last resources set (CreateContainer or UpdateContainerResources).
    pub resources: Option<k8s_cri::v1::LinuxContainerResources>,
    /// The image's STOPSIGNAL ("SIGQUIT", "3"; empty: SIGTERM).
    #[serde(default)]
    pub stop_signal: String,
}

impl ContainerRecord {
    /// The name unique within a pod (CRI: name + attempt).
    pub fn pod_unique_name(&self) -> String {
        format!("{}/{}_{}", self.sandbox_id, self.name, self.attempt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_format() {
        let d = Dns {
            servers: vec!["10.0.0.10".into()],
            searches: vec!["default.svc.cluster.local".into(), "svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        };
        assert_eq!(
            resolv_conf(&d),
            "search default.svc.cluster.local svc.cluster.local\nnameserver 10.0.0.10\n\
             options ndots:5\n"
        );
    }
}
