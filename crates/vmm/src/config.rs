//! What a VM is made of, and the checks done before anything is created.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::VmmError;

/// Smallest guest memory carapace boots (a minimal kernel plus an initramfs need about this).
pub const MIN_MEM_MIB: u32 = 64;
/// Largest guest memory accepted (1 TiB).
pub const MAX_MEM_MIB: u32 = 1 << 20;
/// Largest vCPU count (the MP table and the APIC IDs are sized for it).
pub const MAX_VCPUS: u8 = 32;
/// Default KVM device.
pub const DEFAULT_KVM_PATH: &str = "/dev/kvm";

/// virtio-vsock device: the guest's CID and the host Unix socket it is mapped to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VsockConfig {
    pub guest_cid: u64,
    pub uds_path: PathBuf,
}

/// Everything needed to build a microVM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmConfig {
    /// Number of vCPUs, 1..=32.
    pub vcpus: u8,
    /// Guest memory in MiB, at least [`MIN_MEM_MIB`].
    pub mem_mib: u32,
    /// Uncompressed vmlinux ELF.
    pub kernel: PathBuf,
    pub initramfs: Option<PathBuf>,
    /// Appended to the built-in kernel command line.
    pub cmdline_extra: String,
    /// File receiving the guest's serial console (None = discard).
    pub serial_log: Option<PathBuf>,
    pub vsock: Option<VsockConfig>,
    /// Add a virtio-rng device.
    pub rng: bool,
    /// Host directory shared with the guest through virtio-fs under the tag
    /// [`crate::SHARED_FS_TAG`] (read-write, passthrough); no virtio-fs device when None.
    pub shared_dir: Option<PathBuf>,
    /// Interrupt every vCPU's KVM_RUN this often (hosts whose timer interrupts do not force exits).
    pub kick_interval: Option<Duration>,
    pub kvm_path: PathBuf,
}

impl VmConfig {
    /// A configuration with the defaults: 1 vCPU, 256 MiB, rng on, no vsock, no serial log.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        VmConfig {
            vcpus: 1,
            mem_mib: 256,
            kernel: kernel.into(),
            initramfs: None,
            cmdline_extra: String::new(),
            serial_log: None,
            vsock: None,
            rng: true,
            shared_dir: None,
            kick_interval: None,
            kvm_path: PathBuf::from(DEFAULT_KVM_PATH),
        }
    }

    /// Checks the configuration; the error says what is wrong and what is accepted.
    pub fn validate(&self) -> Result<(), VmmError> {
        let bad = |m: String| Err(VmmError::Config(m));
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return bad(format!("vcpus must be between 1 and {MAX_VCPUS}, got {}", self.vcpus));
        }
        if self.mem_mib < MIN_MEM_MIB {
            return bad(format!(
                "memory must be at least {MIN_MEM_MIB} MiB, got {} MiB",
                self.mem_mib
            ));
        }
        if self.mem_mib > MAX_MEM_MIB {
            return bad(format!(
                "memory must be at most {MAX_MEM_MIB} MiB, got {} MiB",
                self.mem_mib
            ));
        }
        if let Err(e) = std::fs::metadata(&self.kvm_path) {
            return bad(format!("KVM device {}: {e}", self.kvm_path.display()));
        }
        check_file("kernel", &self.kernel)?;
        if let Some(initramfs) = &self.initramfs {
            check_file("initramfs", initramfs)?;
        }
        if let Some(vsock) = &self.vsock {
            if vsock.guest_cid < 3 || vsock.guest_cid >= u64::from(u32::MAX) {
                return bad(format!(
                    "vsock guest CID must be between 3 and {}, got {}",
                    u32::MAX - 1,
                    vsock.guest_cid
                ));
            }
            if vsock.uds_path.as_os_str().is_empty() {
                return bad("vsock Unix socket path is empty".to_string());
            }
        }
        if let Some(dir) = &self.shared_dir {
            match std::fs::metadata(dir) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return bad(format!("shared directory {} is not a directory", dir.display()))
                }
                Err(e) => return bad(format!("shared directory {}: {e}", dir.display())),
            }
            if dir.to_str().is_none() {
                return bad(format!("shared directory {} is not a UTF-8 path", dir.display()));
            }
        }
        if self.cmdline_extra.contains('\0') {
            return bad("extra kernel command line contains a NUL byte".to_string());
        }
        if self.kick_interval == Some(Duration::ZERO) {
            return bad("kick interval must be greater than zero".to_string());
        }
        Ok(())
    }

    /// Guest memory in bytes.
    pub fn mem_bytes(&self) -> u64 {
        u64::from(self.mem_mib) << 20
    }
}

fn check_file(what: &str, path: &Path) -> Result<(), VmmError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(VmmError::Config(format!("{what} {} is not a regular file", path.display()))),
        Err(e) => Err(VmmError::Config(format!("{what} {}: {e}", path.display()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_with_kernel() -> (tempfile::NamedTempFile, VmConfig) {
        let kernel = tempfile::NamedTempFile::new().unwrap();
        let cfg = VmConfig::new(kernel.path());
        (kernel, cfg)
    }

    #[test]
    fn defaults_are_valid() {
        let (_k, cfg) = config_with_kernel();
        cfg.validate().unwrap();
    }

    #[test]
    fn too_little_memory_names_the_minimum() {
        let (_k, mut cfg) = config_with_kernel();
        cfg.mem_mib = 32;
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("at least 64 MiB"), "{e}");
        assert!(e.contains("32"), "{e}");
    }

    #[test]
    fn zero_vcpus_rejected() {
        let (_k, mut cfg) = config_with_kernel();
        cfg.vcpus = 0;
        assert!(cfg.validate().unwrap_err().to_string().contains("vcpus"));
        cfg.vcpus = 33;
        assert!(cfg.validate().is_err());
        cfg.vcpus = 32;
        cfg.validate().unwrap();
    }

    #[test]
    fn missing_kernel_rejected() {
        let cfg = VmConfig::new("/nonexistent/vmlinux");
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("kernel /nonexistent/vmlinux"), "{e}");
    }

    #[test]
    fn missing_initramfs_rejected() {
        let (_k, mut cfg) = config_with_kernel();
        cfg.initramfs = Some("/nonexistent/initrd".into());
        assert!(cfg.validate().unwrap_err().to_string().contains("initramfs"));
    }

    #[test]
    fn reserved_vsock_cid_rejected() {
        let (_k, mut cfg) = config_with_kernel();
        cfg.vsock = Some(VsockConfig { guest_cid: 2, uds_path: "/tmp/x.sock".into() });
        assert!(cfg.validate().unwrap_err().to_string().contains("CID"));
        cfg.vsock = Some(VsockConfig { guest_cid: 3, uds_path: "/tmp/x.sock".into() });
        cfg.validate().unwrap();
    }

    #[test]
    fn missing_kvm_device_named() {
        let (_k, mut cfg) = config_with_kernel();
        cfg.kvm_path = "/nonexistent/kvm".into();
        assert!(cfg.validate().unwrap_err().to_string().contains("/nonexistent/kvm"));
    }

    #[test]
    fn shared_dir_must_be_an_existing_directory() {
        let (k, mut cfg) = config_with_kernel();
        cfg.shared_dir = Some("/nonexistent/shared".into());
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("shared directory /nonexistent/shared"), "{e}");
        cfg.shared_dir = Some(k.path().to_path_buf());
        assert!(cfg.validate().unwrap_err().to_string().contains("not a directory"));
        let dir = tempfile::tempdir().unwrap();
        cfg.shared_dir = Some(dir.path().to_path_buf());
        cfg.validate().unwrap();
    }

    #[test]
    fn zero_kick_interval_rejected() {
        let (_k, mut cfg) = config_with_kernel();
        cfg.kick_interval = Some(Duration::ZERO);
        assert!(cfg.validate().is_err());
    }
}
