//! Virtio devices of the carapace VMM (vsock, rng, virtio-fs) and the virtio-mmio transport that exposes them.
//!
//! Everything in a queue comes from the guest, which is untrusted: malformed descriptor chains
//! and packets are errors that are logged and dropped, never panics.

mod chain;
pub mod device;
pub mod fs;
mod interrupt;
pub mod mmio;
pub mod rng;
pub mod vsock;

#[cfg(test)]
mod test_utils;

pub use device::{ActivateError, GuestMemory, VirtioDevice, VirtioInterrupt};
pub use fs::{Fs, FsError};
pub use mmio::MmioTransport;
pub use rng::Rng;
pub use vsock::{Vsock, VsockError};

/// Feature bit every modern (virtio 1.x) device offers.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
