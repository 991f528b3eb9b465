//! The virtio-mmio transport, version 2 (virtio spec 1.2, 4.2.2).
//!
//! The VMM maps one transport per device slot and forwards every guest access to it with an
//! offset relative to the slot base. Register accesses must be 4 bytes wide; anything else
//! reads as zero and is ignored on write. Device configuration space starts at 0x100 and
//! accepts any width. Nothing the guest writes can make this code panic.
//!
//! The register state (features, queue setup, status) lives here, on the vCPU path. A
//! QueueNotify never runs device code: each queue has an eventfd that the VMM registers with
//! KVM as an ioeventfd (a write that KVM takes never reaches this code; one that does signals
//! the same eventfd), and on DRIVER_OK the queues and their eventfds go to the device, whose
//! own thread serves them until a reset.

use std::io;
use std::sync::Arc;

use tracing::{debug, info, warn};
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use crate::device::VIRTIO_F_VERSION_1;
use crate::device::{ActivateError, DeviceQueue, GuestMemory, VirtioDevice, VirtioInterrupt};
use crate::guest_warn;
use crate::interrupt::MmioInterrupt;

/// "virt" in little endian.
pub const MMIO_MAGIC_VALUE: u32 = 0x7472_6976;
/// virtio-mmio version 2 (the modern, non-legacy layout).
pub const MMIO_VERSION: u32 = 2;
/// VendorID reported by carapace devices ("CRPC").
pub const MMIO_VENDOR_ID: u32 = 0x4350_5243;
/// Size of one device slot (registers + configuration space).
pub const MMIO_SLOT_SIZE: u64 = 0x1000;
/// Offset of the QueueNotify register in a slot: the VMM registers each queue's notification
/// eventfd there (KVM_IOEVENTFD, 4-byte write of the queue index).
pub const QUEUE_NOTIFY_OFFSET: u64 = reg::QUEUE_NOTIFY;

/// Why the transport could not activate its device on DRIVER_OK.
#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    #[error("queue {0} has no valid size")]
    NoQueue(usize),
    #[error("queue {0} is not ready or not in guest memory")]
    QueueInvalid(usize),
    #[error("queue {index}: {source}")]
    QueueState { index: usize, source: virtio_queue::Error },
    #[error("queue {index}: cannot share its notification eventfd: {source}")]
    Notifier { index: usize, source: io::Error },
    #[error(transparent)]
    Device(#[from] ActivateError),
}

mod reg {
    pub const MAGIC_VALUE: u64 = 0x000;
    pub const VERSION: u64 = 0x004;
    pub const DEVICE_ID: u64 = 0x008;
    pub const VENDOR_ID: u64 = 0x00c;
    pub const DEVICE_FEATURES: u64 = 0x010;
    pub const DEVICE_FEATURES_SEL: u64 = 0x014;
    pub const DRIVER_FEATURES: u64 = 0x020;
    pub const DRIVER_FEATURES_SEL: u64 = 0x024;
    pub const QUEUE_SEL: u64 = 0x030;
    pub const QUEUE_NUM_MAX: u64 = 0x034;
    pub const QUEUE_NUM: u64 = 0x038;
    pub const QUEUE_READY: u64 = 0x044;
    pub const QUEUE_NOTIFY: u64 = 0x050;
    pub const INTERRUPT_STATUS: u64 = 0x060;
    pub const INTERRUPT_ACK: u64 = 0x064;
    pub const STATUS: u64 = 0x070;
    pub const QUEUE_DESC_LOW: u64 = 0x080;
    pub const QUEUE_DESC_HIGH: u64 = 0x084;
    pub const QUEUE_DRIVER_LOW: u64 = 0x090;
    pub const QUEUE_DRIVER_HIGH: u64 = 0x094;
    pub const QUEUE_DEVICE_LOW: u64 = 0x0a0;
    pub const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
    pub const SHM_SEL: u64 = 0x0ac;
    pub const SHM_LEN_LOW: u64 = 0x0b0;
    pub const SHM_LEN_HIGH: u64 = 0x0b4;
    pub const SHM_BASE_LOW: u64 = 0x0b8;
    pub const SHM_BASE_HIGH: u64 = 0x0bc;
    pub const CONFIG_GENERATION: u64 = 0x0fc;
    pub const CONFIG: u64 = 0x100;
}

/// Device status bits (virtio spec 2.1).
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    pub const FAILED: u32 = 128;
}

/// One virtio device behind a virtio-mmio register window.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemory,
    interrupt: Arc<MmioInterrupt>,
    /// One per queue the device declares; `None` when the device declared an invalid size.
    queues: Vec<Option<Queue>>,
    /// One per queue: signalled by KVM (ioeventfd) or by [`Self::write`] on QueueNotify.
    notifiers: Vec<EventFd>,
    queue_sel: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    status: u32,
    activated: bool,
}

impl MmioTransport {
    /// Wraps `device`; `irq` is the eventfd the VMM registered as the slot's irqfd. Fails only
    /// if the queues' notification eventfds cannot be created.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemory,
        irq: EventFd,
    ) -> io::Result<MmioTransport> {
        let queues = device
            .queue_max_sizes()
            .iter()
            .enumerate()
            .map(|(i, &max)| match Queue::new(max) {
                Ok(q) => Some(q),
                Err(e) => {
                    let kind = device.device_type();
                    warn!("virtio-mmio: device {kind}: queue {i} has invalid size {max}: {e}");
                    None
                }
            })
            .collect();
        let notifiers = device
            .queue_max_sizes()
            .iter()
            .map(|_| EventFd::new(libc::EFD_NONBLOCK))
            .collect::<io::Result<Vec<_>>>()?;
        Ok(MmioTransport {
            device,
            mem,
            interrupt: Arc::new(MmioInterrupt::new(irq)),
            queues,
            notifiers,
            queue_sel: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            status: 0,
            activated: false,
        })
    }

    /// The notification eventfd of each queue (index i = queue i), for the VMM to register
    /// as ioeventfds on [`QUEUE_NOTIFY_OFFSET`] with the queue index as datamatch.
    pub fn queue_notifiers(&self) -> &[EventFd] {
        &self.notifiers
    }

    /// Virtio device ID of the device behind this transport.
    pub fn device_type(&self) -> u32 {
        self.device.device_type()
    }

    /// Whether the driver brought the device up (DRIVER_OK accepted, device activated).
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    /// Guest read of `data.len()` bytes at `offset` from the slot base.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= reg::CONFIG {
            self.device.read_config(offset - reg::CONFIG, data);
            return;
        }
        data.fill(0);
        let Ok(out) = <&mut [u8; 4]>::try_from(data) else {
            debug!("virtio-mmio: ignoring non 4-byte register read at {offset:#x}");
            return;
        };
        let value = self.read_register(offset);
        *out = value.to_le_bytes();
    }

    /// Guest write of `data` at `offset` from the slot base.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= reg::CONFIG {
            if self.status & status::DRIVER == 0 {
                guest_warn!("virtio-mmio: configuration write before DRIVER status ignored");
                return;
            }
            self.device.write_config(offset - reg::CONFIG, data);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            debug!("virtio-mmio: ignoring non 4-byte register write at {offset:#x}");
            return;
        };
        self.write_register(offset, u32::from_le_bytes(bytes));
    }

    fn selected_queue(&self) -> Option<&Queue> {
        self.queues.get(usize::try_from(self.queue_sel).ok()?).and_then(Option::as_ref)
    }

    fn selected_queue_mut(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(usize::try_from(self.queue_sel).ok()?).and_then(Option::as_mut)
    }

    fn read_register(&self, offset: u64) -> u32 {
        match offset {
            reg::MAGIC_VALUE => MMIO_MAGIC_VALUE,
            reg::VERSION => MMIO_VERSION,
            reg::DEVICE_ID => self.device.device_type(),
            reg::VENDOR_ID => MMIO_VENDOR_ID,
            reg::DEVICE_FEATURES => {
                let features = self.device.avail_features();
                match self.device_features_sel {
                    0 => features as u32,
                    1 => (features >> 32) as u32,
                    _ => 0,
                }
            }
            reg::QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            reg::QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            reg::INTERRUPT_STATUS => self.interrupt.status(),
            reg::STATUS => self.status,
            // No shared memory regions: a length of all ones means "no such region".
            reg::SHM_LEN_LOW | reg::SHM_LEN_HIGH => u32::MAX,
            reg::SHM_BASE_LOW | reg::SHM_BASE_HIGH => 0,
            reg::CONFIG_GENERATION => self.interrupt.config_generation(),
            _ => {
                debug!("virtio-mmio: read of write-only or unknown register {offset:#x}");
                0
            }
        }
    }

    /// Queue registers may be written between FEATURES_OK and DRIVER_OK only.
    fn queue_config_allowed(&self, offset: u64) -> bool {
        let ok = self.status & status::FEATURES_OK != 0
            && self.status & status::DRIVER_OK == 0
            && !self.activated;
        if !ok {
            guest_warn!(
                "virtio-mmio: queue register {offset:#x} written in status {:#x}; ignored",
                self.status
            );
        }
        ok
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            reg::DEVICE_FEATURES_SEL => self.device_features_sel = value,
            reg::DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            reg::DRIVER_FEATURES => self.write_driver_features(value),
            reg::QUEUE_SEL => self.queue_sel = value,
            // Disabling a queue is always allowed: Linux does it after a reset when it tears
            // the queues down, and reads the register back expecting 0.
            reg::QUEUE_READY if value == 0 => {
                if let Some(q) = self.selected_queue_mut() {
                    q.set_ready(false);
                }
            }
            reg::QUEUE_NUM
            | reg::QUEUE_READY
            | reg::QUEUE_DESC_LOW
            | reg::QUEUE_DESC_HIGH
            | reg::QUEUE_DRIVER_LOW
            | reg::QUEUE_DRIVER_HIGH
            | reg::QUEUE_DEVICE_LOW
            | reg::QUEUE_DEVICE_HIGH => {
                if self.queue_config_allowed(offset) {
                    self.write_queue_register(offset, value);
                }
            }
            reg::QUEUE_NOTIFY => self.notify(value),
            reg::INTERRUPT_ACK => self.interrupt.ack(value),
            reg::STATUS => self.set_status(value),
            reg::SHM_SEL => {}
            _ => debug!("virtio-mmio: write to read-only or unknown register {offset:#x}"),
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        if self.status & status::DRIVER == 0 || self.status & status::FEATURES_OK != 0 {
            guest_warn!(
                "virtio-mmio: DriverFeatures written in status {:#x}; ignored",
                self.status
            );
            return;
        }
        match self.driver_features_sel {
            0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(value),
            1 => {
                self.driver_features =
                    (self.driver_features & 0xffff_ffff) | (u64::from(value) << 32)
            }
            sel => {
                if value != 0 {
                    guest_warn!(
                        "virtio-mmio: driver acked features in unknown word {sel}; ignored"
                    );
                }
            }
        }
    }

    fn write_queue_register(&mut self, offset: u64, value: u32) {
        let sel = self.queue_sel;
        let Some(q) = self.selected_queue_mut() else {
            guest_warn!("virtio-mmio: queue register {offset:#x} written for missing queue {sel}");
            return;
        };
        match offset {
            reg::QUEUE_NUM => match u16::try_from(value) {
                Ok(size) => {
                    if let Err(e) = q.try_set_size(size) {
                        guest_warn!("virtio-mmio: queue {sel}: size {value} refused: {e}");
                    }
                }
                Err(_) => guest_warn!("virtio-mmio: queue {sel}: size {value} refused"),
            },
            reg::QUEUE_READY => q.set_ready(value == 1),
            reg::QUEUE_DESC_LOW => q.set_desc_table_address(Some(value), None),
            reg::QUEUE_DESC_HIGH => q.set_desc_table_address(None, Some(value)),
            reg::QUEUE_DRIVER_LOW => q.set_avail_ring_address(Some(value), None),
            reg::QUEUE_DRIVER_HIGH => q.set_avail_ring_address(None, Some(value)),
            reg::QUEUE_DEVICE_LOW => q.set_used_ring_address(Some(value), None),
            reg::QUEUE_DEVICE_HIGH => q.set_used_ring_address(None, Some(value)),
            _ => {}
        }
    }

    fn notify(&mut self, value: u32) {
        if !self.activated {
            debug!("virtio-mmio: QueueNotify({value}) before activation ignored");
            return;
        }
        // Reached only when KVM did not take the write (no ioeventfd for it): hand it to the
        // device's thread the same way.
        let fd = usize::try_from(value).ok().and_then(|i| self.notifiers.get(i));
        match fd {
            Some(fd) => {
                if let Err(e) = fd.write(1) {
                    warn!("virtio-mmio: cannot signal queue {value}'s notification eventfd: {e}");
                }
            }
            None => guest_warn!("virtio-mmio: QueueNotify for unknown queue {value}"),
        }
    }

    fn set_status(&mut self, new: u32) {
        use status::*;
        if new == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        // The driver cannot set NEEDS_RESET; keep ours if it was set.
        let new = (new & !DEVICE_NEEDS_RESET) | (old & DEVICE_NEEDS_RESET);
        if new & old != old {
            guest_warn!(
                "virtio-mmio: status {new:#x} clears bits of {old:#x} without a reset; ignored"
            );
            return;
        }
        let added = new & !old;
        if added == 0 {
            return;
        }
        if added & FAILED != 0 {
            guest_warn!("virtio-mmio: driver marked the device FAILED");
            self.status = old | FAILED;
            return;
        }
        let in_order = (new & DRIVER == 0 || new & ACKNOWLEDGE != 0)
            && (new & FEATURES_OK == 0 || new & DRIVER != 0)
            && (new & DRIVER_OK == 0 || new & FEATURES_OK != 0);
        if !in_order {
            guest_warn!(
                "virtio-mmio: status transition {old:#x} -> {new:#x} out of order; ignored"
            );
            return;
        }
        if added & FEATURES_OK != 0 && !self.features_acceptable() {
            // The driver will read Status back, see FEATURES_OK missing and give up.
            self.status = new & !(FEATURES_OK | DRIVER_OK);
            return;
        }
        if added & DRIVER_OK != 0 {
            if let Err(e) = self.activate() {
                guest_warn!(
                    "virtio-mmio: device type {} failed to activate: {e}",
                    self.device.device_type()
                );
                self.status = new | DEVICE_NEEDS_RESET;
                self.interrupt.signal_config_change();
                return;
            }
        }
        self.status = new;
    }

    fn features_acceptable(&self) -> bool {
        let offered = self.device.avail_features();
        let unknown = self.driver_features & !offered;
        if unknown != 0 {
            guest_warn!("virtio-mmio: driver acked features {unknown:#x} that were not offered");
            return false;
        }
        if self.driver_features & VIRTIO_F_VERSION_1 == 0 {
            guest_warn!("virtio-mmio: driver did not ack VIRTIO_F_VERSION_1 (legacy driver)");
            return false;
        }
        true
    }

    fn activate(&mut self) -> Result<(), ActivationError> {
        let mut handed = Vec::with_capacity(self.queues.len());
        for (index, (slot, fd)) in self.queues.iter().zip(&self.notifiers).enumerate() {
            let q = slot.as_ref().ok_or(ActivationError::NoQueue(index))?;
            if !q.is_valid(&self.mem) {
                return Err(ActivationError::QueueInvalid(index));
            }
            let queue = Queue::try_from(q.state())
                .map_err(|source| ActivationError::QueueState { index, source })?;
            let notify =
                fd.try_clone().map_err(|source| ActivationError::Notifier { index, source })?;
            handed.push(DeviceQueue { queue, notify });
        }
        let interrupt: Arc<dyn VirtioInterrupt> = self.interrupt.clone();
        self.device.activate(self.mem.clone(), interrupt, handed, self.driver_features)?;
        self.activated = true;
        info!(
            "virtio-mmio: device type {} activated (features {:#x})",
            self.device.device_type(),
            self.driver_features
        );
        Ok(())
    }

    fn reset(&mut self) {
        if self.activated || self.status != 0 {
            debug!("virtio-mmio: device type {} reset", self.device.device_type());
        }
        self.device.reset();
        for q in self.queues.iter_mut().flatten() {
            q.reset();
        }
        self.activated = false;
        self.status = 0;
        self.queue_sel = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.interrupt.clear();
    }
}

#[cfg(test)]
mod tests;
