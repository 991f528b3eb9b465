//! Errors of the VMM.

use std::path::PathBuf;

/// Everything that can go wrong while building or running a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("invalid VM configuration: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot build the MSR list: {0}")]
    MsrList(String),
    #[error("cannot open KVM device {path}: {source}")]
    OpenKvm { path: PathBuf, source: kvm_ioctls::Error },
    #[error("KVM API version {0} is not supported (need 12)")]
    KvmApiVersion(i32),
    #[error("KVM lacks a capability carapace needs: {0}")]
    KvmCapability(&'static str),
    #[error("KVM ioctl {op} failed: {source}")]
    Kvm { op: &'static str, source: kvm_ioctls::Error },
    #[error("cannot allocate guest memory: {0}")]
    GuestMemory(String),
    #[error("cannot write to guest memory: {0}")]
    GuestMemoryWrite(String),
    #[error("cannot read kernel {path}: {source}")]
    KernelRead { path: PathBuf, source: std::io::Error },
    #[error("kernel {path} is not a valid vmlinux ELF: {reason}")]
    KernelInvalid { path: PathBuf, reason: String },
    #[error("cannot read initramfs {path}: {source}")]
    InitramfsRead { path: PathBuf, source: std::io::Error },
    #[error("initramfs {path} ({size} bytes) does not fit in guest memory above the kernel")]
    InitramfsTooLarge { path: PathBuf, size: u64 },
    #[error("invalid kernel command line: {0}")]
    Cmdline(String),
    #[error("cannot build the MP table: {0}")]
    MpTable(String),
    #[error("KVM refused to set MSR {0:#x}")]
    MsrRefused(u32),
    #[error("cannot build CPUID: {0}")]
    Cpuid(String),
    #[error("cannot open serial log {path}: {source}")]
    SerialLog { path: PathBuf, source: std::io::Error },
    #[error("cannot create device {device}: {reason}")]
    Device { device: &'static str, reason: String },
    #[error("cannot set up signals: {0}")]
    Signal(String),
    #[error("cannot start thread {name}: {source}")]
    Thread { name: String, source: std::io::Error },
    #[error("cannot create eventfd: {0}")]
    EventFd(std::io::Error),
}

impl VmmError {
    /// Shorthand for a failed KVM ioctl.
    pub(crate) fn kvm(op: &'static str, source: kvm_ioctls::Error) -> Self {
        VmmError::Kvm { op, source }
    }
}
