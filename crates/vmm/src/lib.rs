//! carapace VMM: a KVM microVM that boots an uncompressed Linux vmlinux directly in 64-bit mode,
//! with a serial console, an i8042 (reset, Ctrl+Alt+Del) and virtio-mmio devices (vsock, rng,
//! virtio-fs, virtio-net).
//!
//! ```no_run
//! use carapace_vmm::{build_vm, VmConfig};
//! let config = VmConfig::new("/var/lib/carapace/guest/vmlinux");
//! let vm = build_vm(&config)?;
//! let handle = vm.handle(); // graceful_stop() / force_stop() from another thread
//! let reason = vm.run();
//! # drop(handle); let _ = reason;
//! # Ok::<(), carapace_vmm::VmmError>(())
//! ```

pub mod arch;
pub mod bounded_log;
mod builder;
pub mod cmdline;
pub mod config;
pub mod devices;
mod error;
mod exit;
pub mod kick;
mod kvm;
pub mod layout;
pub mod loader;
pub mod memory;
mod panic;
mod probe;
mod vcpu;
mod vm;

pub use builder::build_vm;
pub use config::{
    ConfigError, MountNsConfig, NetConfig, VmConfig, VsockConfig, DEFAULT_KVM_PATH,
    DEFAULT_MEM_MIB, DEFAULT_VCPUS, MAX_MEM_MIB, MAX_VCPUS, MIN_GUEST_CID, MIN_MEM_MIB,
};
pub use config::{DEFAULT_SERIAL_LOG_MAX_BYTES, MIN_SERIAL_LOG_MAX_BYTES};
pub use error::{CmdlineError, MpTableError, VmmError};
pub use exit::ExitReason;
pub use memory::GuestMemoryMmap;
pub use panic::install_panic_abort;
pub use probe::{probe_guest_capability, ProbeReport};
pub use vm::{Vm, VmHandle};

/// virtio-fs tag of the directory shared with `--shared-dir` ([`VmConfig::shared_dir`]); the
/// agent mounts it at `carapace_guest_contract::GUEST_SHARED_DIR`.
pub use carapace_guest_contract::SHARED_FS_TAG;
