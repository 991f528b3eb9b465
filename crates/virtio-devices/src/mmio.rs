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

use crate::device::{ActivateError, DeviceQueue, GuestMemory, VirtioDevice, VirtioInterrupt};
use crate::guest_warn;
use crate::interrupt::MmioInterrupt;
use crate::VIRTIO_F_VERSION_1;

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
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::test_utils::{test_memory, TestQueue, XorShift};

    #[derive(Default)]
    struct Record {
        activations: u32,
        resets: u32,
        /// The notification eventfds the device got on activation.
        notify_fds: Vec<EventFd>,
        acked: u64,
        config: [u8; 8],
        interrupt: Option<Arc<dyn VirtioInterrupt>>,
    }

    impl Record {
        /// The queues notified since the last call, in index order.
        fn notifies(&self) -> Vec<u16> {
            let mut out = Vec::new();
            for (i, fd) in self.notify_fds.iter().enumerate() {
                if fd.read().is_ok() {
                    out.push(i as u16);
                }
            }
            out
        }
    }

    struct FakeDevice {
        sizes: Vec<u16>,
        record: Arc<Mutex<Record>>,
        fail: bool,
    }

    impl VirtioDevice for FakeDevice {
        fn device_type(&self) -> u32 {
            42
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &self.sizes
        }
        fn avail_features(&self) -> u64 {
            VIRTIO_F_VERSION_1 | 0b101
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            let rec = self.record.lock().unwrap();
            for (i, b) in data.iter_mut().enumerate() {
                *b = usize::try_from(offset)
                    .ok()
                    .and_then(|o| rec.config.get(o + i))
                    .copied()
                    .unwrap_or(0);
            }
        }
        fn write_config(&mut self, offset: u64, data: &[u8]) {
            let mut rec = self.record.lock().unwrap();
            for (i, b) in data.iter().enumerate() {
                if let Some(slot) = rec.config.get_mut(offset as usize + i) {
                    *slot = *b;
                }
            }
        }
        fn activate(
            &mut self,
            _mem: GuestMemory,
            interrupt: Arc<dyn VirtioInterrupt>,
            queues: Vec<DeviceQueue>,
            acked_features: u64,
        ) -> Result<(), ActivateError> {
            if self.fail {
                return Err(ActivateError::Backend("nope".into()));
            }
            if queues.len() != self.sizes.len() {
                return Err(ActivateError::QueueCount {
                    want: self.sizes.len(),
                    got: queues.len(),
                });
            }
            let mut rec = self.record.lock().unwrap();
            rec.activations += 1;
            rec.acked = acked_features;
            rec.interrupt = Some(interrupt);
            rec.notify_fds = queues.into_iter().map(|q| q.notify).collect();
            Ok(())
        }
        fn reset(&mut self) {
            self.record.lock().unwrap().resets += 1;
        }
    }

    fn transport(fail: bool) -> (MmioTransport, Arc<Mutex<Record>>, EventFd, GuestMemory) {
        let record = Arc::new(Mutex::new(Record::default()));
        let dev = FakeDevice { sizes: vec![16, 8], record: record.clone(), fail };
        let mem = test_memory();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let t = MmioTransport::new(Box::new(dev), mem.clone(), irq.try_clone().unwrap()).unwrap();
        (t, record, irq, mem)
    }

    fn r(t: &mut MmioTransport, off: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn w(t: &mut MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    fn negotiate(t: &mut MmioTransport, features: u64) {
        w(t, reg::STATUS, status::ACKNOWLEDGE);
        w(t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        w(t, reg::DRIVER_FEATURES_SEL, 0);
        w(t, reg::DRIVER_FEATURES, features as u32);
        w(t, reg::DRIVER_FEATURES_SEL, 1);
        w(t, reg::DRIVER_FEATURES, (features >> 32) as u32);
        w(t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK);
    }

    fn setup_queues(t: &mut MmioTransport, mem: &GuestMemory) {
        for (i, (base, size)) in [(0x1000u64, 16u16), (0x4000, 8)].iter().enumerate() {
            let tq = TestQueue::at(mem, *base, *size);
            let (d, a, u) = tq.addresses();
            w(t, reg::QUEUE_SEL, i as u32);
            w(t, reg::QUEUE_NUM, u32::from(*size));
            w(t, reg::QUEUE_DESC_LOW, d as u32);
            w(t, reg::QUEUE_DESC_HIGH, 0);
            w(t, reg::QUEUE_DRIVER_LOW, a as u32);
            w(t, reg::QUEUE_DRIVER_HIGH, 0);
            w(t, reg::QUEUE_DEVICE_LOW, u as u32);
            w(t, reg::QUEUE_DEVICE_HIGH, 0);
            w(t, reg::QUEUE_READY, 1);
        }
    }

    const ALL_OK: u32 =
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;

    #[test]
    fn identification_registers() {
        let (mut t, _, _, _) = transport(false);
        assert_eq!(r(&mut t, reg::MAGIC_VALUE), 0x7472_6976);
        assert_eq!(r(&mut t, reg::VERSION), 2);
        assert_eq!(r(&mut t, reg::DEVICE_ID), 42);
        assert_eq!(r(&mut t, reg::VENDOR_ID), MMIO_VENDOR_ID);
        w(&mut t, reg::QUEUE_SEL, 1);
        assert_eq!(r(&mut t, reg::QUEUE_NUM_MAX), 8);
        w(&mut t, reg::QUEUE_SEL, 7);
        assert_eq!(r(&mut t, reg::QUEUE_NUM_MAX), 0);
        w(&mut t, reg::DEVICE_FEATURES_SEL, 0);
        assert_eq!(r(&mut t, reg::DEVICE_FEATURES), 0b101);
        w(&mut t, reg::DEVICE_FEATURES_SEL, 1);
        assert_eq!(r(&mut t, reg::DEVICE_FEATURES), 1);
        w(&mut t, reg::DEVICE_FEATURES_SEL, 9);
        assert_eq!(r(&mut t, reg::DEVICE_FEATURES), 0);
    }

    #[test]
    fn driver_brings_device_up_and_notifies() {
        let (mut t, rec, irq, mem) = transport(false);
        negotiate(&mut t, VIRTIO_F_VERSION_1 | 1);
        assert_eq!(r(&mut t, reg::STATUS) & status::FEATURES_OK, status::FEATURES_OK);
        setup_queues(&mut t, &mem);
        w(&mut t, reg::QUEUE_SEL, 0);
        assert_eq!(r(&mut t, reg::QUEUE_READY), 1);
        w(&mut t, reg::STATUS, ALL_OK);
        assert_eq!(r(&mut t, reg::STATUS), ALL_OK);
        assert!(t.is_activated());
        {
            let rec = rec.lock().unwrap();
            assert_eq!(rec.activations, 1);
            assert_eq!(rec.acked, VIRTIO_F_VERSION_1 | 1);
        }
        w(&mut t, reg::QUEUE_NOTIFY, 1);
        w(&mut t, reg::QUEUE_NOTIFY, 5);
        assert_eq!(rec.lock().unwrap().notifies(), vec![1]);

        // The device raises an interrupt; the driver reads and acks it.
        let int = rec.lock().unwrap().interrupt.clone().unwrap();
        int.signal_used_queue();
        assert_eq!(irq.read().unwrap(), 1);
        assert_eq!(r(&mut t, reg::INTERRUPT_STATUS), 1);
        w(&mut t, reg::INTERRUPT_ACK, 1);
        assert_eq!(r(&mut t, reg::INTERRUPT_STATUS), 0);
        int.signal_config_change();
        assert_eq!(r(&mut t, reg::CONFIG_GENERATION), 1);

        // Queue registers are frozen after DRIVER_OK, except for disabling.
        w(&mut t, reg::QUEUE_SEL, 0);
        w(&mut t, reg::QUEUE_NUM, 2);
        assert_eq!(t.queues[0].as_ref().unwrap().size(), 16);
        w(&mut t, reg::QUEUE_READY, 0);
        assert_eq!(r(&mut t, reg::QUEUE_READY), 0);
    }

    #[test]
    fn feature_negotiation_refuses_unoffered_or_legacy() {
        let (mut t, _, _, _) = transport(false);
        negotiate(&mut t, VIRTIO_F_VERSION_1 | 0b10);
        assert_eq!(r(&mut t, reg::STATUS) & status::FEATURES_OK, 0);
        w(&mut t, reg::STATUS, 0);
        negotiate(&mut t, 1);
        assert_eq!(r(&mut t, reg::STATUS) & status::FEATURES_OK, 0);
        w(&mut t, reg::STATUS, 0);
        negotiate(&mut t, VIRTIO_F_VERSION_1 | 0b100);
        assert_ne!(r(&mut t, reg::STATUS) & status::FEATURES_OK, 0);
        // DriverFeatures are frozen once FEATURES_OK is set.
        w(&mut t, reg::DRIVER_FEATURES_SEL, 0);
        w(&mut t, reg::DRIVER_FEATURES, 0b10);
        assert_eq!(t.driver_features, VIRTIO_F_VERSION_1 | 0b100);
    }

    #[test]
    fn out_of_order_status_is_refused() {
        let (mut t, rec, _, _) = transport(false);
        w(&mut t, reg::STATUS, status::DRIVER);
        assert_eq!(r(&mut t, reg::STATUS), 0);
        w(&mut t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK);
        assert_eq!(r(&mut t, reg::STATUS), 0);
        w(&mut t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        w(&mut t, reg::STATUS, status::ACKNOWLEDGE);
        assert_eq!(r(&mut t, reg::STATUS), status::ACKNOWLEDGE | status::DRIVER);
        assert_eq!(rec.lock().unwrap().activations, 0);
    }

    #[test]
    fn driver_ok_with_unready_queues_needs_reset() {
        let (mut t, rec, _, _) = transport(false);
        negotiate(&mut t, VIRTIO_F_VERSION_1);
        w(&mut t, reg::STATUS, ALL_OK);
        assert_ne!(r(&mut t, reg::STATUS) & status::DEVICE_NEEDS_RESET, 0);
        assert!(!t.is_activated());
        assert_eq!(rec.lock().unwrap().activations, 0);
        assert_eq!(r(&mut t, reg::INTERRUPT_STATUS), 2);
        w(&mut t, reg::QUEUE_NOTIFY, 0);
        assert!(rec.lock().unwrap().notifies().is_empty());
    }

    #[test]
    fn activation_failure_needs_reset() {
        let (mut t, _, _, mem) = transport(true);
        negotiate(&mut t, VIRTIO_F_VERSION_1);
        setup_queues(&mut t, &mem);
        w(&mut t, reg::STATUS, ALL_OK);
        assert_ne!(r(&mut t, reg::STATUS) & status::DEVICE_NEEDS_RESET, 0);
        assert!(!t.is_activated());
    }

    #[test]
    fn reset_clears_everything() {
        let (mut t, rec, _, mem) = transport(false);
        negotiate(&mut t, VIRTIO_F_VERSION_1);
        setup_queues(&mut t, &mem);
        w(&mut t, reg::STATUS, ALL_OK);
        assert!(t.is_activated());
        w(&mut t, reg::STATUS, 0);
        assert_eq!(r(&mut t, reg::STATUS), 0);
        assert!(!t.is_activated());
        assert_eq!(rec.lock().unwrap().resets, 1);
        w(&mut t, reg::QUEUE_SEL, 0);
        assert_eq!(r(&mut t, reg::QUEUE_READY), 0);
        assert_eq!(t.driver_features, 0);
        // Linux's teardown after reset: disable each queue and read it back.
        w(&mut t, reg::QUEUE_READY, 0);
        assert_eq!(r(&mut t, reg::QUEUE_READY), 0);
        // And it comes back up again.
        negotiate(&mut t, VIRTIO_F_VERSION_1);
        setup_queues(&mut t, &mem);
        w(&mut t, reg::STATUS, ALL_OK);
        assert_eq!(rec.lock().unwrap().activations, 2);
    }

    #[test]
    fn odd_sized_accesses_and_config_space() {
        let (mut t, rec, _, _) = transport(false);
        let mut b = [0xffu8; 2];
        t.read(reg::MAGIC_VALUE, &mut b);
        assert_eq!(b, [0, 0]);
        t.write(reg::STATUS, &[1, 0]);
        assert_eq!(r(&mut t, reg::STATUS), 0);
        // Config writes need DRIVER.
        t.write(0x100, &[7]);
        assert_eq!(rec.lock().unwrap().config[0], 0);
        w(&mut t, reg::STATUS, status::ACKNOWLEDGE);
        w(&mut t, reg::STATUS, status::ACKNOWLEDGE | status::DRIVER);
        t.write(0x101, &[7, 8]);
        let mut c = [0u8; 3];
        t.read(0x100, &mut c);
        assert_eq!(c, [0, 7, 8]);
        let mut far = [1u8; 8];
        t.read(0xfff, &mut far);
        assert_eq!(far, [0; 8]);
    }

    #[test]
    fn transport_is_send() {
        fn assert_send<T: Send>() {}
        assert_send::<MmioTransport>();
    }

    #[test]
    fn rng_through_the_transport() {
        use crate::test_utils::F_WRITE;
        use std::os::fd::AsRawFd;
        use vm_memory::{Bytes, GuestAddress};
        let mem = test_memory();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut t =
            MmioTransport::new(Box::new(crate::Rng::new()), mem.clone(), irq.try_clone().unwrap())
                .unwrap();
        assert_eq!(r(&mut t, reg::DEVICE_ID), 4);
        negotiate(&mut t, VIRTIO_F_VERSION_1);
        let mut tq = TestQueue::at(&mem, 0x1000, 64);
        let (d, a, u) = tq.addresses();
        w(&mut t, reg::QUEUE_SEL, 0);
        assert_eq!(r(&mut t, reg::QUEUE_NUM_MAX), 256);
        assert_eq!(r(&mut t, reg::QUEUE_READY), 0);
        w(&mut t, reg::QUEUE_NUM, 64);
        w(&mut t, reg::QUEUE_DESC_LOW, d as u32);
        w(&mut t, reg::QUEUE_DRIVER_LOW, a as u32);
        w(&mut t, reg::QUEUE_DEVICE_LOW, u as u32);
        w(&mut t, reg::QUEUE_READY, 1);
        w(&mut t, reg::STATUS, ALL_OK);
        assert_eq!(r(&mut t, reg::STATUS), ALL_OK);
        tq.add_chain(&[(0x20_0000, 32, F_WRITE)]);
        w(&mut t, reg::QUEUE_NOTIFY, 0);
        // The device's thread serves the queue, then raises the interrupt; wait for that.
        let mut pfd = libc::pollfd { fd: irq.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: poll(2) on one valid pollfd that lives across the call.
        assert_eq!(unsafe { libc::poll(&mut pfd, 1, 5000) }, 1, "no interrupt in 5 s");
        assert_eq!(tq.used_idx(), 1);
        assert_eq!(tq.used_elem(0), (0, 32));
        let mut out = [0u8; 32];
        mem.read_slice(&mut out, GuestAddress(0x20_0000)).unwrap();
        assert_ne!(out, [0u8; 32]);
        assert_eq!(r(&mut t, reg::INTERRUPT_STATUS), 1);
        assert_eq!(irq.read().unwrap(), 1);
    }

    #[test]
    fn random_register_traffic_never_panics() {
        let (mut t, _, _, _) = transport(false);
        let mut rng = XorShift(0x1234_5678_9abc_def1);
        for _ in 0..20000 {
            let off = rng.next() % 0x140;
            let len = [0usize, 1, 2, 4, 8][(rng.next() % 5) as usize];
            let mut buf = vec![0u8; len];
            if rng.next() & 1 == 0 {
                t.read(off, &mut buf);
            } else {
                for b in buf.iter_mut() {
                    *b = rng.next() as u8;
                }
                if off == reg::STATUS && rng.next() & 3 == 0 {
                    buf = (ALL_OK).to_le_bytes().to_vec();
                }
                t.write(off & !3, &buf);
            }
        }
    }
}
