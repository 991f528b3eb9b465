//! The 16550 UART at 0x3f8 (COM1): the guest console, written to the serial log.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::pio_bus::PioDevice;
use crate::error::VmmError;

/// First port of COM1.
pub const COM1_BASE: u16 = 0x3f8;
/// Number of UART registers.
pub const COM_PORT_LEN: u16 = 8;

/// Raises an interrupt by writing to an EventFd registered as a KVM irqfd.
pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// Where the console goes.
pub type SerialOutput = Box<dyn Write + Send>;

/// Opens the serial log (created, appended to) or a sink when there is none.
pub fn open_serial_output(path: Option<&Path>) -> Result<SerialOutput, VmmError> {
    match path {
        None => Ok(Box::new(std::io::sink())),
        Some(p) => OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .map(|f| Box::new(f) as SerialOutput)
            .map_err(|source| VmmError::SerialLog { path: p.to_path_buf(), source }),
    }
}

/// COM1 on the port I/O bus.
pub struct SerialPort {
    uart: Serial<EventFdTrigger, NoEvents, SerialOutput>,
    write_failed: bool,
}

impl SerialPort {
    /// `irq` must already be registered as the irqfd of the serial GSI.
    pub fn new(irq: EventFd, out: SerialOutput) -> Self {
        SerialPort { uart: Serial::new(EventFdTrigger(irq), out), write_failed: false }
    }
}

impl PioDevice for SerialPort {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        data.fill(0xff);
        if let (Some(first), Ok(off)) = (data.first_mut(), u8::try_from(offset)) {
            if offset < COM_PORT_LEN {
                *first = self.uart.read(off);
            }
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        let (Some(value), Ok(off)) = (data.first(), u8::try_from(offset)) else { return };
        if offset >= COM_PORT_LEN {
            return;
        }
        if let Err(e) = self.uart.write(off, *value) {
            if !self.write_failed {
                tracing::warn!(error = %e, "serial console output failed; further failures not logged");
                self.write_failed = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn irq() -> EventFd {
        EventFd::new(libc::EFD_NONBLOCK).unwrap()
    }

    #[test]
    fn writes_reach_the_output() {
        let out = Shared::default();
        let mut s = SerialPort::new(irq(), Box::new(out.clone()));
        for b in b"hello\n" {
            s.write(0, &[*b]);
        }
        assert_eq!(&*out.0.lock().unwrap(), b"hello\n");
    }

    #[test]
    fn writes_reach_the_log_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serial.log");
        let mut s = SerialPort::new(irq(), open_serial_output(Some(&path)).unwrap());
        for b in b"Linux version 6.1" {
            s.write(0, &[*b]);
        }
        drop(s);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "Linux version 6.1");
    }

    #[test]
    fn line_status_says_transmitter_empty() {
        let mut s = SerialPort::new(irq(), Box::new(std::io::sink()));
        let mut lsr = [0u8];
        s.read(5, &mut lsr);
        assert_eq!(lsr[0] & 0x60, 0x60);
    }

    #[test]
    fn interrupt_raised_when_enabled() {
        let fd = irq();
        let probe = fd.try_clone().unwrap();
        let mut s = SerialPort::new(fd, Box::new(std::io::sink()));
        s.write(1, &[0x02]); // IER: THR empty interrupt
        s.write(0, b"a");
        assert!(probe.read().unwrap() >= 1);
    }

    #[test]
    fn odd_accesses_do_not_panic() {
        let mut s = SerialPort::new(irq(), Box::new(std::io::sink()));
        s.write(0, &[]);
        s.write(9, &[1]);
        s.read(0, &mut []);
        let mut b = [0u8; 4];
        s.read(300, &mut b);
        assert_eq!(b, [0xff; 4]);
    }

    #[test]
    fn no_log_is_a_sink() {
        let mut out = open_serial_output(None).unwrap();
        out.write_all(b"dropped").unwrap();
    }
}
