//! What a VM is made of, and the checks done before anything is created.
//!
//! [`VmConfig`] is also the contract between the CRI daemon and `carapace vmm`: the daemon
//! writes it as JSON ([`VmConfig::to_json`]) into the pod's run dir, `carapace vmm --config`
//! reads it back ([`VmConfig::from_json_file`]); both check it with the same limits.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Smallest guest memory carapace boots (a minimal kernel plus an initramfs need about this).
pub const MIN_MEM_MIB: u32 = 64;
/// Largest guest memory accepted (1 TiB).
pub const MAX_MEM_MIB: u32 = 1 << 20;
/// Largest vCPU count (the MP table and the APIC IDs are sized for it).
pub const MAX_VCPUS: u8 = 32;
/// Default KVM device.
pub const DEFAULT_KVM_PATH: &str = "/dev/kvm";
/// Default vCPU count and guest memory.
pub const DEFAULT_VCPUS: u8 = 1;
pub const DEFAULT_MEM_MIB: u32 = 256;
/// Default time the guest gets to shut down after a stop request.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Default cap of the serial log file (one rotation keeps as much again in `<file>.1`).
pub const DEFAULT_SERIAL_LOG_MAX_BYTES: u64 = 1 << 20;
/// Smallest serial log cap accepted: room for the marker lines.
pub const MIN_SERIAL_LOG_MAX_BYTES: u64 = crate::bounded_log::MIN_CAP_BYTES;
/// Default cap of the VMM's own log (`vmm_log`; rotated once like the serial log).
pub const DEFAULT_VMM_LOG_MAX_BYTES: u64 = 1 << 20;
/// Smallest VMM log cap accepted: room for the marker lines.
pub const MIN_VMM_LOG_MAX_BYTES: u64 = crate::bounded_log::MIN_CAP_BYTES;
/// Default and highest rate of guest-triggered warnings, per second and call site.
pub const DEFAULT_GUEST_WARNINGS_PER_SECOND: u32 =
    carapace_virtio_devices::log_limit::GUEST_WARNINGS_PER_SECOND;
pub const MAX_GUEST_WARNINGS_PER_SECOND: u32 =
    carapace_virtio_devices::log_limit::MAX_GUEST_WARNINGS_PER_SECOND;
/// Default, smallest and largest open file limit of a VMM with a shared directory (virtio-fs
/// holds one descriptor per inode the guest knows; the VMM itself needs a few dozen).
pub const DEFAULT_SHARED_DIR_MAX_OPEN_FILES: u64 = carapace_virtio_devices::fs::FS_OPEN_FILE_LIMIT;
pub const MIN_SHARED_DIR_MAX_OPEN_FILES: u64 = 1024;
pub const MAX_SHARED_DIR_MAX_OPEN_FILES: u64 = 1 << 20;
/// The smallest guest CID (0-2 are reserved).
pub const MIN_GUEST_CID: u64 = 3;

/// A configuration that cannot be used; the text names the setting and what is accepted.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("vcpus must be between 1 and {max}, got {got}")]
    VcpusOutOfRange { got: u8, max: u8 },
    #[error("memory must be at least {min} MiB, got {got} MiB")]
    MemoryTooSmall { got: u32, min: u32 },
    #[error("memory must be at most {max} MiB, got {got} MiB")]
    MemoryTooLarge { got: u32, max: u32 },
    #[error("KVM device {}: {source}", path.display())]
    KvmDevice { path: PathBuf, source: std::io::Error },
    #[error("KVM device path {} contains a NUL byte", path.display())]
    KvmPathNul { path: PathBuf },
    #[error("{what} {}: {source}", path.display())]
    FileUnreadable { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{what} {} is not a regular file", path.display())]
    NotAFile { what: &'static str, path: PathBuf },
    #[error("vsock guest CID must be between {MIN_GUEST_CID} and {}, got {got}", u32::MAX - 1)]
    VsockCid { got: u64 },
    #[error("vsock Unix socket path is empty")]
    VsockPathEmpty,
    #[error("shared directory {}: {source}", path.display())]
    SharedDirUnreadable { path: PathBuf, source: std::io::Error },
    #[error("shared directory {} is not a directory", path.display())]
    SharedDirNotADirectory { path: PathBuf },
    #[error("shared directory {} is not a UTF-8 path", path.display())]
    SharedDirNotUtf8 { path: PathBuf },
    #[error("extra kernel command line contains a NUL byte")]
    CmdlineNul,
    #[error("kick interval must be greater than zero")]
    ZeroKickInterval,
    #[error("serial log cap must be at least {min} bytes, got {got}")]
    SerialLogCapTooSmall { got: u64, min: u64 },
    #[error("VMM log cap must be at least {min} bytes, got {got}")]
    VmmLogCapTooSmall { got: u64, min: u64 },
    #[error("guest warnings per second must be between 1 and {max}, got {got}")]
    GuestWarningsOutOfRange { got: u32, max: u32 },
    #[error("shared dir open file limit must be between {min} and {max}, got {got}")]
    OpenFilesOutOfRange { got: u64, min: u64, max: u64 },
    #[error(
        "mount_ns: {} must be absolute and at or below {}",
        keep.display(),
        prune_below.display()
    )]
    MountNsKeep { keep: PathBuf, prune_below: PathBuf },
    #[error("net: invalid mac: {0}")]
    NetMac(#[source] carapace_virtio_devices::net::MacError),
    #[error("net: tap fd must be 3 or above (0-2 are stdin, stdout, stderr), got {got}")]
    NetFdReserved { got: i32 },
    #[error("net: {0}")]
    NetTap(#[source] carapace_virtio_devices::TapError),
    #[error("cannot read VM config file {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("VM config file {}: {source}", path.display())]
    Parse { path: PathBuf, source: serde_json::Error },
}

impl ConfigError {
    /// The [`VmConfig`] field at fault (the daemon names its own config key after it).
    pub fn field(&self) -> &'static str {
        match self {
            ConfigError::VcpusOutOfRange { .. } => "vcpus",
            ConfigError::MemoryTooSmall { .. } | ConfigError::MemoryTooLarge { .. } => "mem_mib",
            ConfigError::KvmDevice { .. } | ConfigError::KvmPathNul { .. } => "kvm_path",
            ConfigError::FileUnreadable { what, .. } | ConfigError::NotAFile { what, .. } => what,
            ConfigError::VsockCid { .. } | ConfigError::VsockPathEmpty => "vsock",
            ConfigError::SharedDirUnreadable { .. }
            | ConfigError::SharedDirNotADirectory { .. }
            | ConfigError::SharedDirNotUtf8 { .. } => "shared_dir",
            ConfigError::MountNsKeep { .. } => "mount_ns",
            ConfigError::CmdlineNul => "cmdline_extra",
            ConfigError::ZeroKickInterval => "kick_interval_ms",
            ConfigError::SerialLogCapTooSmall { .. } => "serial_log_max_bytes",
            ConfigError::VmmLogCapTooSmall { .. } => "vmm_log_max_bytes",
            ConfigError::GuestWarningsOutOfRange { .. } => "guest_warnings_per_second",
            ConfigError::OpenFilesOutOfRange { .. } => "shared_dir_max_open_files",
            ConfigError::NetMac(_) | ConfigError::NetFdReserved { .. } | ConfigError::NetTap(_) => {
                "net"
            }
            ConfigError::Read { .. } | ConfigError::Parse { .. } => "file",
        }
    }
}

/// virtio-vsock device: the guest's CID and the host Unix socket it is mapped to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    pub guest_cid: u64,
    pub uds_path: PathBuf,
}

/// A mount namespace of the VMM's own, entered before it opens anything: a private copy of the
/// caller's (no propagation either way) in which every mount below `prune_below` that is not at
/// or below `keep` is detached, so the VMM pins no other pod's disk or volume. The daemon
/// attaches the pod's volumes in this namespace only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountNsConfig {
    /// The pods' root directory (absolute).
    pub prune_below: PathBuf,
    /// This pod's directory, below `prune_below`.
    pub keep: PathBuf,
}

/// virtio-net device: a tap descriptor this process inherited and the guest NIC's MAC.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// Open descriptor of a tap (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR), 3 or above; the VMM
    /// neither names nor configures the interface.
    pub tap_fd: i32,
    /// Unicast MAC address, "aa:bb:cc:dd:ee:ff".
    pub mac: String,
}

impl NetConfig {
    /// The MAC address, checked.
    pub fn mac_addr(&self) -> Result<carapace_virtio_devices::MacAddr, ConfigError> {
        self.mac.parse().map_err(ConfigError::NetMac)
    }
}

/// Everything needed to build a microVM (and, for `carapace vmm`, how long a stop may take).
/// As JSON, durations are whole milliseconds (`kick_interval_ms`, `stop_timeout_ms`) and
/// every field but `kernel` may be left out (the defaults of [`VmConfig::new`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Number of vCPUs, 1..=32.
    #[serde(default = "default_vcpus")]
    pub vcpus: u8,
    /// Guest memory in MiB, at least [`MIN_MEM_MIB`].
    #[serde(default = "default_mem_mib")]
    pub mem_mib: u32,
    /// Uncompressed vmlinux ELF.
    pub kernel: PathBuf,
    #[serde(default)]
    pub initramfs: Option<PathBuf>,
    /// Appended to the built-in kernel command line.
    #[serde(default)]
    pub cmdline_extra: String,
    /// File receiving the guest's serial console (None = discard).
    #[serde(default)]
    pub serial_log: Option<PathBuf>,
    /// Cap of the serial log file in bytes (at least [`MIN_SERIAL_LOG_MAX_BYTES`]): past it
    /// the file is rotated once to `<file>.1`, so the guest's console takes at most twice
    /// this on the host.
    #[serde(default = "default_serial_log_max_bytes")]
    pub serial_log_max_bytes: u64,
    /// File the VMM's own log (tracing lines, errors) goes to, capped at `vmm_log_max_bytes`
    /// and rotated once to `<file>.1` like the serial log; stdout and stderr are pointed at the
    /// current file (so a panic message lands there too). None: stderr as it is, uncapped.
    #[serde(default)]
    pub vmm_log: Option<PathBuf>,
    /// Cap of `vmm_log` in bytes (at least [`MIN_VMM_LOG_MAX_BYTES`]).
    #[serde(default = "default_vmm_log_max_bytes")]
    pub vmm_log_max_bytes: u64,
    /// Warnings a guest can trigger (malformed register writes, chains, packets) logged per
    /// second and call site, 1..=[`MAX_GUEST_WARNINGS_PER_SECOND`]; the rest are counted.
    #[serde(default = "default_guest_warnings_per_second")]
    pub guest_warnings_per_second: u32,
    /// Soft RLIMIT_NOFILE of a VMM serving `shared_dir`: bounds the host descriptors (one per
    /// inode the guest looked up) a guest can pin; past it its lookups fail with EMFILE.
    #[serde(default = "default_shared_dir_max_open_files")]
    pub shared_dir_max_open_files: u64,
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
    /// Add a virtio-rng device.
    #[serde(default = "yes")]
    pub rng: bool,
    /// Host directory shared with the guest through virtio-fs under the tag
    /// [`carapace_guest_contract::SHARED_FS_TAG`] (read-write, passthrough); no virtio-fs device
    /// when None.
    #[serde(default)]
    pub shared_dir: Option<PathBuf>,
    /// virtio-net NIC on an inherited tap; no NIC when None.
    #[serde(default)]
    pub net: Option<NetConfig>,
    /// Run in a mount namespace of its own; the caller's when None.
    #[serde(default)]
    pub mount_ns: Option<MountNsConfig>,
    /// Interrupt every vCPU's KVM_RUN this often (hosts whose timer interrupts do not force exits).
    #[serde(default, rename = "kick_interval_ms", with = "opt_millis")]
    pub kick_interval: Option<Duration>,
    #[serde(default = "default_kvm_path")]
    pub kvm_path: PathBuf,
    /// After a stop request (SIGTERM), how long the guest gets to shut down before the VM is
    /// stopped by force.
    #[serde(default = "default_stop_timeout", rename = "stop_timeout_ms", with = "millis")]
    pub stop_timeout: Duration,
}

fn default_vcpus() -> u8 {
    DEFAULT_VCPUS
}
fn default_mem_mib() -> u32 {
    DEFAULT_MEM_MIB
}
fn default_serial_log_max_bytes() -> u64 {
    DEFAULT_SERIAL_LOG_MAX_BYTES
}
fn default_vmm_log_max_bytes() -> u64 {
    DEFAULT_VMM_LOG_MAX_BYTES
}
fn default_guest_warnings_per_second() -> u32 {
    DEFAULT_GUEST_WARNINGS_PER_SECOND
}
fn default_shared_dir_max_open_files() -> u64 {
    DEFAULT_SHARED_DIR_MAX_OPEN_FILES
}
fn yes() -> bool {
    true
}
fn default_kvm_path() -> PathBuf {
    PathBuf::from(DEFAULT_KVM_PATH)
}
fn default_stop_timeout() -> Duration {
    DEFAULT_STOP_TIMEOUT
}

/// A duration as whole milliseconds.
mod millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

/// An optional duration as whole milliseconds (null or absent: none).
mod opt_millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}

impl VmConfig {
    /// A configuration with the defaults: 1 vCPU, 256 MiB, rng on, no vsock, no serial log.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        VmConfig {
            vcpus: DEFAULT_VCPUS,
            mem_mib: DEFAULT_MEM_MIB,
            kernel: kernel.into(),
            initramfs: None,
            cmdline_extra: String::new(),
            serial_log: None,
            serial_log_max_bytes: DEFAULT_SERIAL_LOG_MAX_BYTES,
            vmm_log: None,
            vmm_log_max_bytes: DEFAULT_VMM_LOG_MAX_BYTES,
            guest_warnings_per_second: DEFAULT_GUEST_WARNINGS_PER_SECOND,
            shared_dir_max_open_files: DEFAULT_SHARED_DIR_MAX_OPEN_FILES,
            vsock: None,
            rng: true,
            shared_dir: None,
            net: None,
            mount_ns: None,
            kick_interval: None,
            kvm_path: PathBuf::from(DEFAULT_KVM_PATH),
            stop_timeout: DEFAULT_STOP_TIMEOUT,
        }
    }

    /// Checks the values alone (no file is looked at): vCPUs, memory, vsock CID, command line,
    /// kick interval, serial log cap. Anyone who writes a config for `carapace vmm` can check it
    /// with this.
    pub fn validate_limits(&self) -> Result<(), ConfigError> {
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(ConfigError::VcpusOutOfRange { got: self.vcpus, max: MAX_VCPUS });
        }
        if self.mem_mib < MIN_MEM_MIB {
            return Err(ConfigError::MemoryTooSmall { got: self.mem_mib, min: MIN_MEM_MIB });
        }
        if self.mem_mib > MAX_MEM_MIB {
            return Err(ConfigError::MemoryTooLarge { got: self.mem_mib, max: MAX_MEM_MIB });
        }
        if let Some(vsock) = &self.vsock {
            if vsock.guest_cid < MIN_GUEST_CID || vsock.guest_cid >= u64::from(u32::MAX) {
                return Err(ConfigError::VsockCid { got: vsock.guest_cid });
            }
            if vsock.uds_path.as_os_str().is_empty() {
                return Err(ConfigError::VsockPathEmpty);
            }
        }
        if let Some(net) = &self.net {
            net.mac_addr()?;
            if net.tap_fd < 3 {
                return Err(ConfigError::NetFdReserved { got: net.tap_fd });
            }
        }
        if let Some(ns) = &self.mount_ns {
            if !ns.prune_below.is_absolute() || !ns.keep.starts_with(&ns.prune_below) {
                return Err(ConfigError::MountNsKeep {
                    keep: ns.keep.clone(),
                    prune_below: ns.prune_below.clone(),
                });
            }
        }
        if self.cmdline_extra.contains('\0') {
            return Err(ConfigError::CmdlineNul);
        }
        if self.kick_interval == Some(Duration::ZERO) {
            return Err(ConfigError::ZeroKickInterval);
        }
        if self.serial_log_max_bytes < MIN_SERIAL_LOG_MAX_BYTES {
            return Err(ConfigError::SerialLogCapTooSmall {
                got: self.serial_log_max_bytes,
                min: MIN_SERIAL_LOG_MAX_BYTES,
            });
        }
        if self.vmm_log_max_bytes < MIN_VMM_LOG_MAX_BYTES {
            return Err(ConfigError::VmmLogCapTooSmall {
                got: self.vmm_log_max_bytes,
                min: MIN_VMM_LOG_MAX_BYTES,
            });
        }
        let rate = self.guest_warnings_per_second;
        if rate == 0 || rate > MAX_GUEST_WARNINGS_PER_SECOND {
            return Err(ConfigError::GuestWarningsOutOfRange {
                got: rate,
                max: MAX_GUEST_WARNINGS_PER_SECOND,
            });
        }
        let files = self.shared_dir_max_open_files;
        if !(MIN_SHARED_DIR_MAX_OPEN_FILES..=MAX_SHARED_DIR_MAX_OPEN_FILES).contains(&files) {
            return Err(ConfigError::OpenFilesOutOfRange {
                got: files,
                min: MIN_SHARED_DIR_MAX_OPEN_FILES,
                max: MAX_SHARED_DIR_MAX_OPEN_FILES,
            });
        }
        Ok(())
    }

    /// Checks the configuration: the limits, then the KVM device, the kernel and initramfs
    /// files, the shared directory and the NIC's tap descriptor; the error says what is wrong
    /// and what is accepted.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_limits()?;
        if let Err(source) = std::fs::metadata(&self.kvm_path) {
            return Err(ConfigError::KvmDevice { path: self.kvm_path.clone(), source });
        }
        check_file("kernel", &self.kernel)?;
        if let Some(initramfs) = &self.initramfs {
            check_file("initramfs", initramfs)?;
        }
        if let Some(dir) = &self.shared_dir {
            let path = dir.clone();
            match std::fs::metadata(dir) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => return Err(ConfigError::SharedDirNotADirectory { path }),
                Err(source) => return Err(ConfigError::SharedDirUnreadable { path, source }),
            }
            if dir.to_str().is_none() {
                return Err(ConfigError::SharedDirNotUtf8 { path: dir.clone() });
            }
        }
        if let Some(net) = &self.net {
            carapace_virtio_devices::net::check_tap_fd(net.tap_fd).map_err(ConfigError::NetTap)?;
        }
        Ok(())
    }

    /// Guest memory in bytes.
    pub fn mem_bytes(&self) -> u64 {
        u64::from(self.mem_mib) << 20
    }

    /// The JSON text `carapace vmm --config` reads.
    pub fn to_json(&self) -> String {
        // Cannot fail: every field is a plain value or a path (non-UTF-8 bytes are replaced).
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Reads a config written by [`VmConfig::to_json`] (or by hand); not yet validated.
    pub fn from_json_file(path: &Path) -> Result<VmConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        serde_json::from_str(&text)
            .map_err(|source| ConfigError::Parse { path: path.to_path_buf(), source })
    }
}

fn check_file(what: &'static str, path: &Path) -> Result<(), ConfigError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(ConfigError::NotAFile { what, path: path.to_path_buf() }),
        Err(source) => Err(ConfigError::FileUnreadable { what, path: path.to_path_buf(), source }),
    }
}

#[cfg(test)]
mod tests;
