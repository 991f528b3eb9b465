//! The virtio-mmio interrupt: InterruptStatus bits plus an irqfd the VMM registered with KVM.

use std::sync::atomic::{AtomicU32, Ordering};

use tracing::warn;
use vmm_sys_util::eventfd::EventFd;

use crate::device::VirtioInterrupt;

/// InterruptStatus bit 0: the device used a buffer.
pub(crate) const INT_USED_RING: u32 = 1;
/// InterruptStatus bit 1: the device configuration changed.
pub(crate) const INT_CONFIG: u32 = 2;

/// Interrupt state shared between the transport (register reads, InterruptACK) and the device
/// (which signals from its own thread).
pub(crate) struct MmioInterrupt {
    status: AtomicU32,
    config_generation: AtomicU32,
    irq: EventFd,
}

impl MmioInterrupt {
    pub fn new(irq: EventFd) -> MmioInterrupt {
        MmioInterrupt { status: AtomicU32::new(0), config_generation: AtomicU32::new(0), irq }
    }

    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    pub fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
    }

    pub fn config_generation(&self) -> u32 {
        self.config_generation.load(Ordering::SeqCst)
    }

    fn raise(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::SeqCst);
        if let Err(e) = self.irq.write(1) {
            warn!("virtio-mmio: cannot trigger the interrupt eventfd: {e}");
        }
    }
}

impl VirtioInterrupt for MmioInterrupt {
    fn signal_used_queue(&self) {
        self.raise(INT_USED_RING);
    }

    fn signal_config_change(&self) {
        self.config_generation.fetch_add(1, Ordering::SeqCst);
        self.raise(INT_CONFIG);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_bits_writes_eventfd_and_acks() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let int = MmioInterrupt::new(irq.try_clone().unwrap());
        int.signal_used_queue();
        assert_eq!(int.status(), INT_USED_RING);
        assert_eq!(irq.read().unwrap(), 1);
        int.signal_config_change();
        assert_eq!(int.status(), INT_USED_RING | INT_CONFIG);
        assert_eq!(int.config_generation(), 1);
        int.ack(INT_USED_RING);
        assert_eq!(int.status(), INT_CONFIG);
        int.clear();
        assert_eq!(int.status(), 0);
    }
}
