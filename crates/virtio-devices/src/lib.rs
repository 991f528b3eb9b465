//! Virtio devices of the carapace VMM (vsock, rng, virtio-fs, net) and the virtio-mmio transport
//! that exposes them. Each activated device works on its own thread (see [`worker`]).
//!
//! Everything in a queue comes from the guest, which is untrusted: malformed descriptor chains
//! and packets are errors that are logged and dropped, never panics.

mod chain;
pub mod device;
pub mod fs;
#[cfg(feature = "fuzz-hooks")]
#[doc(hidden)]
pub mod fuzz_hooks;
mod interrupt;
pub mod log_limit;
pub mod mmio;
pub mod net;
pub mod rng;
pub mod sync;
pub mod vsock;
pub mod worker;

#[doc(hidden)]
pub use tracing as __tracing;

#[cfg(any(test, feature = "fuzz-hooks"))]
#[cfg_attr(not(test), allow(dead_code))]
mod test_utils;

pub use device::{
    ActivateError, DeviceQueue, GuestMemory, VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1,
};
pub use fs::{Fs, FsError};
pub use mmio::{MmioTransport, QUEUE_NOTIFY_OFFSET};
pub use net::{MacAddr, Net, TapError};
pub use rng::Rng;
pub use sync::lock;
pub use vsock::{Vsock, VsockError};
