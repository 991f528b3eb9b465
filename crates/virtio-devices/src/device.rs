//! The contract between a virtio device model and its transport.

use std::sync::Arc;

pub use crate::worker::DeviceQueue;

/// Feature bit every modern (virtio 1.x) device offers.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Guest memory as every device sees it.
pub type GuestMemory = vm_memory::GuestMemoryMmap<()>;

/// How a device tells the driver that something happened. Implemented by the transport
/// (virtio-mmio: sets a bit in InterruptStatus and raises the device's IRQ line).
pub trait VirtioInterrupt: Send + Sync {
    /// The device put buffers in a used ring.
    fn signal_used_queue(&self);
    /// The device's configuration space changed.
    fn signal_config_change(&self);
}

/// Why a device refused to start.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("driver set up {got} queues, device needs {want}")]
    QueueCount { want: usize, got: usize },
    #[error("device backend failed to start: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// A virtio device model, independent of the transport that exposes it to the guest.
pub trait VirtioDevice: Send {
    /// Virtio device ID (virtio spec 5: 4 = entropy, 19 = vsock, ...).
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits the device offers (must include VIRTIO_F_VERSION_1).
    fn avail_features(&self) -> u64;
    /// Reads device configuration space. Out-of-range reads fill `data` with zeroes.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes device configuration space. Out-of-range writes are ignored.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// The driver set DRIVER_OK: the device starts processing these queues on its own thread
    /// (never on the vCPU thread that calls this), which waits on each queue's `notify`
    /// eventfd. Nothing the guest puts in a queue may make that thread panic.
    fn activate(
        &mut self,
        mem: GuestMemory,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<DeviceQueue>,
        acked_features: u64,
    ) -> Result<(), ActivateError>;
    /// The driver reset the device (wrote 0 to Status): stop processing (join the device's
    /// thread), drop the queues.
    fn reset(&mut self);
}
