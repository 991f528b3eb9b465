//! Virtio devices of the carapace VMM and the virtio-mmio transport that exposes them.
//!
//! Everything in a queue comes from the guest, which is untrusted: malformed descriptor chains
//! and packets are errors that are logged and dropped, never panics.

pub mod device;

pub use device::{ActivateError, GuestMemory, VirtioDevice, VirtioInterrupt};
