//! The 16550 UART at 0x3f8 (COM1): the guest console, written to the serial log.
//!
//! The guest decides how much it writes, so the log is a [`BoundedLog`]: at most twice its cap
//! on disk (one rotation to `<file>.1`) plus two marker lines.

use std::io::Write;
use std::path::Path;

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::pio_bus::PioDevice;
use crate::bounded_log::BoundedLog;
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

/// Opens the serial log (created, appended to) capped at `max_bytes`, or a sink.
pub fn open_serial_output_capped(
    path: Option<&Path>,
    max_bytes: u64,
) -> Result<SerialOutput, VmmError> {
    match path {
        None => Ok(Box::new(std::io::sink())),
        Some(p) => BoundedLog::open(p, max_bytes, "serial log")
            .map(|log| Box::new(log) as SerialOutput)
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
                tracing::warn!(
                    error = %e,
                    "serial console output failed; further failures not logged"
                );
                self.write_failed = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bounded_log::MIN_CAP_BYTES as SERIAL_LOG_MIN_BYTES;
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
        let mut s = SerialPort::new(
            irq(),
            open_serial_output_capped(Some(&path), crate::DEFAULT_SERIAL_LOG_MAX_BYTES).unwrap(),
        );
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

    /// Writes `n` bytes through the UART, one register write each, as the guest does.
    fn type_bytes(s: &mut SerialPort, n: usize) {
        for i in 0..n {
            s.write(0, &[b'a' + (i % 26) as u8]);
        }
    }

    #[test]
    fn the_log_rotates_once_and_stays_within_its_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serial.log");
        let cap = SERIAL_LOG_MIN_BYTES;
        let mut s = SerialPort::new(irq(), open_serial_output_capped(Some(&path), cap).unwrap());
        type_bytes(&mut s, 10 * cap as usize + 7);
        s.write(0, b"Z");
        drop(s);
        let now = std::fs::read(&path).unwrap();
        let old = std::fs::read(dir.path().join("serial.log.1")).unwrap();
        assert!(now.len() as u64 <= cap, "{} bytes", now.len());
        assert!(old.len() as u64 <= cap, "{} bytes", old.len());
        assert!(now.starts_with(b"[carapace: serial log reached 4096 bytes; earlier output"));
        assert_eq!(now.last(), Some(&b'Z'), "the newest byte is kept");
        // Nothing else: one rotation, no .2.
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["serial.log", "serial.log.1"]);
    }

    #[test]
    fn an_existing_log_counts_towards_the_cap_and_small_caps_are_raised() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serial.log");
        std::fs::write(&path, vec![b'x'; 5000]).unwrap();
        let mut out = open_serial_output_capped(Some(&path), 10).unwrap();
        out.write_all(b"new").unwrap();
        drop(out);
        assert_eq!(std::fs::read(dir.path().join("serial.log.1")).unwrap(), vec![b'x'; 5000]);
        assert!(std::fs::read_to_string(&path).unwrap().ends_with("]\nnew"));
    }

    #[test]
    fn a_failed_rotation_drops_output_after_a_marker() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serial.log");
        // <file>.1 is a non-empty directory: the rename fails.
        std::fs::create_dir_all(dir.path().join("serial.log.1/busy")).unwrap();
        let cap = SERIAL_LOG_MIN_BYTES;
        let mut s = SerialPort::new(irq(), open_serial_output_capped(Some(&path), cap).unwrap());
        type_bytes(&mut s, 3 * cap as usize);
        drop(s);
        let log = std::fs::read_to_string(&path).unwrap();
        let marker = "[carapace: serial log cannot rotate";
        assert_eq!(log.matches(marker).count(), 1, "{log}");
        assert!(log.len() as u64 <= cap + 200, "{} bytes", log.len());
        assert!(log.trim_end().ends_with("output dropped]"));
    }

    #[test]
    fn a_symlink_at_the_log_path_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, "keep").unwrap();
        let path = dir.path().join("serial.log");
        std::os::unix::fs::symlink(&target, &path).unwrap();
        assert!(matches!(
            open_serial_output_capped(Some(&path), crate::DEFAULT_SERIAL_LOG_MAX_BYTES),
            Err(VmmError::SerialLog { .. })
        ));
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
    }

    #[test]
    fn no_log_is_a_sink() {
        let mut out = open_serial_output_capped(None, crate::DEFAULT_SERIAL_LOG_MAX_BYTES).unwrap();
        out.write_all(b"dropped").unwrap();
    }
}
