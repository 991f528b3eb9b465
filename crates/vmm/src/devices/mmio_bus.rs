//! MMIO bus: virtio-mmio slots at fixed 4 KiB windows from the start of the MMIO gap.

use std::sync::{Arc, Mutex};

use crate::layout::{MMIO_GAP_START, VIRTIO_MMIO_SLOT_SIZE};
use carapace_virtio_devices::lock;

/// A device on the MMIO bus; `offset` is relative to the device's slot base.
pub trait MmioDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Slot i covers `MMIO_GAP_START + i * 0x1000 .. + 0x1000`.
#[derive(Default)]
pub struct MmioBus {
    slots: Vec<Arc<Mutex<dyn MmioDevice>>>,
}

impl MmioBus {
    pub fn new() -> Self {
        MmioBus::default()
    }

    /// Adds a device in the next slot; returns its slot index.
    pub fn push(&mut self, device: Arc<Mutex<dyn MmioDevice>>) -> usize {
        self.slots.push(device);
        self.slots.len() - 1
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    fn find(&self, addr: u64) -> Option<(&Arc<Mutex<dyn MmioDevice>>, u64)> {
        let rel = addr.checked_sub(MMIO_GAP_START)?;
        let slot = usize::try_from(rel / VIRTIO_MMIO_SLOT_SIZE).ok()?;
        self.slots.get(slot).map(|d| (d, rel % VIRTIO_MMIO_SLOT_SIZE))
    }

    /// A guest read at `addr`; unknown addresses read as all ones. Returns whether handled.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some((d, off)) => {
                lock(d).read(off, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// A guest write at `addr`; unknown addresses are ignored. Returns whether handled.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr) {
            Some((d, off)) => {
                lock(d).write(off, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(u8, Vec<(u64, Vec<u8>)>);
    impl MmioDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(self.0.wrapping_add(offset as u8));
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.1.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn routes_by_slot() {
        let a = Arc::new(Mutex::new(Echo(0x10, vec![])));
        let b = Arc::new(Mutex::new(Echo(0x20, vec![])));
        let mut bus = MmioBus::new();
        assert_eq!(bus.push(a.clone()), 0);
        assert_eq!(bus.push(b.clone()), 1);
        let mut d = [0u8; 4];
        assert!(bus.read(0xd000_0004, &mut d));
        assert_eq!(d, [0x14; 4]);
        assert!(bus.read(0xd000_1000, &mut d));
        assert_eq!(d, [0x20; 4]);
        assert!(bus.write(0xd000_1050, &[1, 0, 0, 0]));
        assert_eq!(b.lock().unwrap().1, vec![(0x50, vec![1, 0, 0, 0])]);
    }

    #[test]
    fn outside_slots_reads_ones() {
        let mut bus = MmioBus::new();
        bus.push(Arc::new(Mutex::new(Echo(0, vec![]))));
        let mut d = [0u8; 2];
        assert!(!bus.read(0xd000_2000, &mut d));
        assert_eq!(d, [0xff, 0xff]);
        assert!(!bus.read(0x1000, &mut d));
        assert!(!bus.write(u64::MAX, &[0]));
    }
}
