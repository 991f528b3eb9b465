//! Errors of the VMM.

use std::path::PathBuf;

use carapace_virtio_devices::{FsError, TapError, VsockError};

/// Everything that can go wrong while building or running a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("invalid VM configuration: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot open KVM device {path}: {source}")]
    OpenKvm { path: PathBuf, source: kvm_ioctls::Error },
    #[error("KVM API version {0} is not supported (need 12)")]
    KvmApiVersion(i32),
    #[error("KVM lacks a capability carapace needs: {0}")]
    KvmCapability(&'static str),
    #[error("KVM ioctl {op} failed: {source}")]
    Kvm { op: &'static str, source: kvm_ioctls::Error },
    #[error("cannot allocate guest memory: {0}")]
    GuestMemory(#[source] vm_memory::mmap::FromRangesError),
    #[error("guest memory range of {0} bytes does not fit in the host address space")]
    GuestMemoryTooLarge(u64),
    #[error("guest memory region without a host mapping: {0}")]
    GuestMemoryMapping(#[source] vm_memory::GuestMemoryError),
    #[error("cannot write the {what} to guest memory: {source}")]
    GuestMemoryWrite { what: &'static str, source: vm_memory::GuestMemoryError },
    #[error("cannot read kernel {path}: {source}")]
    KernelRead { path: PathBuf, source: std::io::Error },
    #[error("kernel {path} is not a valid vmlinux ELF: {source}")]
    KernelInvalid { path: PathBuf, source: linux_loader::loader::Error },
    #[error("cannot read initramfs {path}: {source}")]
    InitramfsRead { path: PathBuf, source: std::io::Error },
    #[error("initramfs {path} ({size} bytes) does not fit in guest memory above the kernel")]
    InitramfsTooLarge { path: PathBuf, size: u64 },
    #[error("the initramfs must lie below 4 GiB and be smaller than 4 GiB")]
    InitramfsBeyond4G,
    #[error("the guest memory map has {0} entries, more than the boot parameters hold")]
    TooManyE820Entries(usize),
    #[error("invalid kernel command line: {0}")]
    Cmdline(#[from] CmdlineError),
    #[error("cannot build the MP table: {0}")]
    MpTable(#[from] MpTableError),
    #[error("KVM refused to set MSR {0:#x}")]
    MsrRefused(u32),
    #[error("cannot build the MSR list: {0}")]
    Msrs(#[source] vmm_sys_util::fam::Error),
    #[error("cannot build CPUID: {0}")]
    Cpuid(#[source] vmm_sys_util::fam::Error),
    #[error("cannot open serial log {path}: {source}")]
    SerialLog { path: PathBuf, source: std::io::Error },
    #[error("cannot create the vsock device: {0}")]
    Vsock(#[source] VsockError),
    #[error("cannot create the virtio-fs device: {0}")]
    Fs(#[source] FsError),
    #[error("cannot create the virtio-net device: {0}")]
    Net(#[source] TapError),
    #[error("cannot create device {device}: no free virtio-mmio slot")]
    NoMmioSlot { device: &'static str },
    #[error("cannot create the virtio-mmio transport of {device}: {source}")]
    Transport { device: &'static str, source: std::io::Error },
    #[error("port I/O bus: {0}")]
    PortOverlap(#[source] PioOverlap),
    #[error("cannot set up signals: {0}")]
    Signal(#[source] vmm_sys_util::errno::Error),
    #[error("cannot start thread {name}: {source}")]
    Thread { name: String, source: std::io::Error },
    #[error("cannot create eventfd: {0}")]
    EventFd(#[source] std::io::Error),
}

impl VmmError {
    /// Shorthand for a failed KVM ioctl.
    pub(crate) fn kvm(op: &'static str, source: kvm_ioctls::Error) -> Self {
        VmmError::Kvm { op, source }
    }
}

/// Why a kernel command line cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CmdlineError {
    #[error("contains a NUL byte")]
    Nul,
    #[error("{len} bytes, the limit is {max}")]
    TooLong { len: usize, max: usize },
    #[error("command line above 4 GiB")]
    Above4G(#[source] std::num::TryFromIntError),
    #[error("command line too long")]
    LengthOverflow(#[source] std::num::TryFromIntError),
}

/// Why the MP table cannot be built or placed.
#[derive(Debug, thiserror::Error)]
pub enum MpTableError {
    #[error("no vCPUs")]
    NoVcpus,
    #[error("address {base:#x} is above 4 GiB")]
    Above4G { base: u64, source: std::num::TryFromIntError },
    #[error("table too large")]
    TooLarge(#[source] std::num::TryFromIntError),
    #[error("{len} bytes do not fit in the EBDA")]
    BeyondEbda { len: usize },
}

/// Reported when two devices would share a port.
#[derive(Debug, thiserror::Error)]
#[error("port range {base:#x}+{len} overlaps a registered device")]
pub struct PioOverlap {
    pub base: u16,
    pub len: u16,
}
