//! Port I/O bus: routes IN/OUT exits to the device that owns the port.

use std::sync::{Arc, Mutex};

use carapace_virtio_devices::lock;

pub use crate::error::PioOverlap;

/// A device on the port I/O bus; `offset` is relative to the device's base port.
pub trait PioDevice: Send {
    fn read(&mut self, offset: u16, data: &mut [u8]);
    fn write(&mut self, offset: u16, data: &[u8]);
}

struct PioRange {
    base: u16,
    len: u16,
    device: Arc<Mutex<dyn PioDevice>>,
}

impl PioRange {
    fn offset_of(&self, port: u16) -> Option<u16> {
        port.checked_sub(self.base).filter(|off| *off < self.len)
    }
}

/// The bus. Unknown ports read as 0xff and ignore writes.
#[derive(Default)]
pub struct PioBus {
    ranges: Vec<PioRange>,
}

impl PioBus {
    pub fn new() -> Self {
        PioBus::default()
    }

    /// Adds `device` at ports `base..base+len`.
    pub fn insert(
        &mut self,
        base: u16,
        len: u16,
        device: Arc<Mutex<dyn PioDevice>>,
    ) -> Result<(), PioOverlap> {
        let end = u32::from(base) + u32::from(len);
        let overlaps = self.ranges.iter().any(|r| {
            let r_end = u32::from(r.base) + u32::from(r.len);
            u32::from(base) < r_end && u32::from(r.base) < end
        });
        if len == 0 || overlaps || end > 0x1_0000 {
            return Err(PioOverlap { base, len });
        }
        self.ranges.push(PioRange { base, len, device });
        Ok(())
    }

    fn find(&self, port: u16) -> Option<(&PioRange, u16)> {
        self.ranges.iter().find_map(|r| r.offset_of(port).map(|off| (r, off)))
    }

    /// An IN from `port`; returns whether a device handled it.
    pub fn read(&self, port: u16, data: &mut [u8]) -> bool {
        match self.find(port) {
            Some((r, off)) => {
                lock(&r.device).read(off, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// An OUT to `port`; returns whether a device handled it.
    pub fn write(&self, port: u16, data: &[u8]) -> bool {
        match self.find(port) {
            Some((r, off)) => {
                lock(&r.device).write(off, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        writes: Vec<(u16, Vec<u8>)>,
    }

    impl PioDevice for Recorder {
        fn read(&mut self, offset: u16, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u16, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatches_with_offsets() {
        let dev = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = PioBus::new();
        bus.insert(0x3f8, 8, dev.clone()).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fd, &mut b));
        assert_eq!(b, [5]);
        assert!(bus.write(0x3f8, b"x"));
        assert_eq!(dev.lock().unwrap().writes, vec![(0, vec![b'x'])]);
    }

    #[test]
    fn unknown_ports_read_ff_and_ignore_writes() {
        let mut bus = PioBus::new();
        bus.insert(0x3f8, 8, Arc::new(Mutex::new(Recorder::default()))).unwrap();
        let mut b = [0u8; 4];
        assert!(!bus.read(0x3f7, &mut b));
        assert_eq!(b, [0xff; 4]);
        assert!(!bus.read(0x400, &mut b));
        assert!(!bus.write(0xffff, &[1, 2]));
        assert!(!bus.write(0, &[]));
    }

    #[test]
    fn overlaps_rejected() {
        let mut bus = PioBus::new();
        bus.insert(0x60, 5, Arc::new(Mutex::new(Recorder::default()))).unwrap();
        assert!(bus.insert(0x64, 1, Arc::new(Mutex::new(Recorder::default()))).is_err());
        assert!(bus.insert(0xfffe, 4, Arc::new(Mutex::new(Recorder::default()))).is_err());
        assert!(bus.insert(0x65, 1, Arc::new(Mutex::new(Recorder::default()))).is_ok());
    }
}
