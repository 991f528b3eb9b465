//! i8042 keyboard controller at ports 0x60/0x64: enough of it for the Linux driver to probe,
//! the guest's reset command (0xfe = reset the machine) and Ctrl+Alt+Del injection (how the
//! VMM asks the guest to shut down cleanly).
//!
//! vm-superio's I8042Device only knows the reset command, hence this small model.

use std::collections::VecDeque;

use vmm_sys_util::eventfd::EventFd;

use super::pio_bus::PioDevice;

/// First port (data); the command/status register is at offset 4 (port 0x64).
pub const I8042_BASE: u16 = 0x60;
/// Ports 0x60..=0x64 (0x61 is the PIT's speaker port, handled by KVM).
pub const I8042_LEN: u16 = 5;
const DATA_OFFSET: u16 = 0;
const COMMAND_OFFSET: u16 = 4;

// Status register.
const SB_OUT_FULL: u8 = 0x01;
const SB_SYSTEM: u8 = 0x04;
const SB_LAST_WAS_COMMAND: u8 = 0x08;
const SB_KBD_UNLOCKED: u8 = 0x10;

// Controller configuration byte.
const CB_KBD_INT: u8 = 0x01;
const CB_POST_OK: u8 = 0x04;
const CB_KBD_DISABLED: u8 = 0x10;
const CB_TRANSLATE: u8 = 0x40;

// Controller commands.
const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_KBD_DISABLE: u8 = 0xad;
const CMD_KBD_ENABLE: u8 = 0xae;
const CMD_READ_INPUT: u8 = 0xc0;
const CMD_READ_OUTPUT: u8 = 0xd0;
const CMD_WRITE_OUTPUT: u8 = 0xd1;
const CMD_WRITE_KBD_OUT: u8 = 0xd2;
const CMD_WRITE_AUX_OUT: u8 = 0xd3;
const CMD_WRITE_AUX: u8 = 0xd4;
/// Pulse output lines (0xf0..0xff); bit 0 clear pulses the CPU reset line (0xfe).
const CMD_PULSE_MASK: u8 = 0xf0;

const SELF_TEST_OK: u8 = 0x55;
const KBD_TEST_OK: u8 = 0x00;
const KBD_ACK: u8 = 0xfa;
const KBD_ECHO: u8 = 0xee;
const KBD_RESET: u8 = 0xff;
const KBD_BAT_OK: u8 = 0xaa;
const KBD_GET_ID: u8 = 0xf2;

const BUFFER_LIMIT: usize = 32;

/// Ctrl, Alt, Del pressed then released, scan code set 2 (controller not translating).
const CAD_SET2: &[u8] = &[0x14, 0x11, 0xe0, 0x71, 0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14];
/// The same in scan code set 1 (controller translating).
const CAD_SET1: &[u8] = &[0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d];

/// What the controller does when the guest resets the machine.
pub type ResetCallback = Box<dyn Fn() + Send>;

/// The controller.
pub struct I8042 {
    control: u8,
    status_cmd: bool,
    output_port: u8,
    pending: Option<u8>,
    buffer: VecDeque<u8>,
    /// The guest's driver has configured the controller (written the configuration byte);
    /// before that, key presses would be flushed by its probe.
    driver_ready: bool,
    irq: EventFd,
    on_reset: ResetCallback,
}

impl I8042 {
    /// `irq` must already be registered as the irqfd of GSI 1.
    pub fn new(irq: EventFd, on_reset: ResetCallback) -> Self {
        I8042 {
            control: CB_KBD_INT | CB_POST_OK,
            status_cmd: false,
            output_port: 0x01,
            pending: None,
            buffer: VecDeque::new(),
            driver_ready: false,
            irq,
            on_reset,
        }
    }

    fn status(&self) -> u8 {
        let mut s = SB_SYSTEM | SB_KBD_UNLOCKED;
        if !self.buffer.is_empty() {
            s |= SB_OUT_FULL;
        }
        if self.status_cmd {
            s |= SB_LAST_WAS_COMMAND;
        }
        s
    }

    fn raise_irq(&self) {
        if self.control & CB_KBD_INT != 0 && !self.buffer.is_empty() {
            if let Err(e) = self.irq.write(1) {
                tracing::warn!(error = %e, "i8042: cannot raise the keyboard interrupt");
            }
        }
    }

    /// Queues bytes as the controller's own answer (no interrupt).
    fn reply(&mut self, bytes: &[u8]) {
        for b in bytes {
            if self.buffer.len() < BUFFER_LIMIT {
                self.buffer.push_back(*b);
            }
        }
    }

    /// Queues bytes as coming from the keyboard (interrupt when it becomes readable).
    fn queue_from_keyboard(&mut self, bytes: &[u8]) -> bool {
        if self.control & CB_KBD_DISABLED != 0 {
            return false;
        }
        let was_empty = self.buffer.is_empty();
        if self.buffer.len() + bytes.len() > BUFFER_LIMIT {
            return false;
        }
        self.buffer.extend(bytes.iter().copied());
        if was_empty {
            self.raise_irq();
        }
        true
    }

    /// Presses and releases Ctrl+Alt+Del. Returns false if the guest is not listening: its
    /// driver has not configured the controller yet, the keyboard is disabled or the buffer is
    /// full. The caller may try again later.
    pub fn trigger_ctrl_alt_del(&mut self) -> bool {
        if !self.driver_ready {
            return false;
        }
        let codes = if self.control & CB_TRANSLATE != 0 { CAD_SET1 } else { CAD_SET2 };
        self.queue_from_keyboard(codes)
    }

    fn command(&mut self, cmd: u8) {
        self.status_cmd = true;
        match cmd {
            CMD_READ_CTR => self.reply(&[self.control]),
            CMD_WRITE_CTR | CMD_WRITE_OUTPUT | CMD_WRITE_KBD_OUT | CMD_WRITE_AUX_OUT
            | CMD_WRITE_AUX => self.pending = Some(cmd),
            CMD_SELF_TEST => self.reply(&[SELF_TEST_OK]),
            CMD_KBD_TEST => self.reply(&[KBD_TEST_OK]),
            CMD_KBD_DISABLE => self.control |= CB_KBD_DISABLED,
            CMD_KBD_ENABLE => self.control &= !CB_KBD_DISABLED,
            CMD_READ_INPUT => self.reply(&[0x00]),
            CMD_READ_OUTPUT => self.reply(&[self.output_port]),
            c if c & CMD_PULSE_MASK == CMD_PULSE_MASK => {
                if c & 1 == 0 {
                    tracing::info!("guest reset through the i8042");
                    (self.on_reset)();
                }
            }
            other => tracing::debug!(command = other, "i8042: command ignored"),
        }
    }

    fn data(&mut self, value: u8) {
        self.status_cmd = false;
        match self.pending.take() {
            Some(CMD_WRITE_CTR) => {
                self.control = value;
                self.driver_ready = true;
            }
            Some(CMD_WRITE_OUTPUT) => {
                self.output_port = value;
                if value & 1 == 0 {
                    tracing::info!("guest reset through the i8042 output port");
                    (self.on_reset)();
                }
            }
            Some(CMD_WRITE_KBD_OUT) => {
                self.queue_from_keyboard(&[value]);
            }
            Some(_) => {}
            None => self.keyboard_command(value),
        }
    }

    /// A byte for the keyboard itself: acknowledge like a PS/2 keyboard does.
    fn keyboard_command(&mut self, value: u8) {
        let answer: &[u8] = match value {
            KBD_ECHO => &[KBD_ECHO],
            KBD_RESET => &[KBD_ACK, KBD_BAT_OK],
            KBD_GET_ID => &[KBD_ACK, 0xab, 0x83],
            _ => &[KBD_ACK],
        };
        self.queue_from_keyboard(answer);
    }

    fn read_data(&mut self) -> u8 {
        let value = self.buffer.pop_front().unwrap_or(0);
        if !self.buffer.is_empty() {
            // The driver reads one byte per interrupt.
            self.raise_irq();
        }
        value
    }
}

impl PioDevice for I8042 {
    fn read(&mut self, offset: u16, data: &mut [u8]) {
        data.fill(0xff);
        let value = match offset {
            DATA_OFFSET => self.read_data(),
            COMMAND_OFFSET => self.status(),
            _ => return,
        };
        if let Some(first) = data.first_mut() {
            *first = value;
        }
    }

    fn write(&mut self, offset: u16, data: &[u8]) {
        let Some(value) = data.first().copied() else { return };
        match offset {
            DATA_OFFSET => self.data(value),
            COMMAND_OFFSET => self.command(value),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn device() -> (I8042, EventFd, Arc<AtomicUsize>) {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let probe = irq.try_clone().unwrap();
        let resets = Arc::new(AtomicUsize::new(0));
        let r = resets.clone();
        let dev = I8042::new(
            irq,
            Box::new(move || {
                r.fetch_add(1, Ordering::SeqCst);
            }),
        );
        (dev, probe, resets)
    }

    fn inb(d: &mut I8042, off: u16) -> u8 {
        let mut b = [0u8];
        d.read(off, &mut b);
        b[0]
    }

    /// What the Linux driver does at probe: write the configuration byte.
    fn configure(d: &mut I8042, ctr: u8) {
        d.write(4, &[CMD_WRITE_CTR]);
        d.write(0, &[ctr]);
    }

    fn drain(d: &mut I8042) -> Vec<u8> {
        let mut v = Vec::new();
        while inb(d, 4) & SB_OUT_FULL != 0 {
            v.push(inb(d, 0));
        }
        v
    }

    #[test]
    fn reset_command_calls_back() {
        let (mut d, _, resets) = device();
        d.write(4, &[0xfe]);
        assert_eq!(resets.load(Ordering::SeqCst), 1);
        d.write(4, &[0xff]); // pulse nothing
        assert_eq!(resets.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn linux_probe_sequence() {
        let (mut d, _, _) = device();
        d.write(4, &[CMD_SELF_TEST]);
        assert_eq!(drain(&mut d), vec![0x55]);
        d.write(4, &[CMD_READ_CTR]);
        let ctr = drain(&mut d)[0];
        assert_eq!(ctr & CB_TRANSLATE, 0, "no translation: the driver uses direct mode");
        d.write(4, &[CMD_WRITE_CTR]);
        d.write(0, &[ctr | CB_KBD_DISABLED]);
        d.write(4, &[CMD_READ_CTR]);
        assert_eq!(drain(&mut d), vec![ctr | CB_KBD_DISABLED]);
        d.write(4, &[CMD_KBD_TEST]);
        assert_eq!(drain(&mut d), vec![0x00]);
    }

    #[test]
    fn ctrl_alt_del_waits_for_the_driver() {
        let (mut d, irq, _) = device();
        assert!(!d.trigger_ctrl_alt_del());
        assert!(irq.read().is_err(), "no interrupt before the driver is there");
        configure(&mut d, CB_KBD_INT | CB_POST_OK);
        assert!(d.trigger_ctrl_alt_del());
    }

    #[test]
    fn ctrl_alt_del_set2_with_interrupts() {
        let (mut d, irq, _) = device();
        configure(&mut d, CB_KBD_INT | CB_POST_OK);
        assert!(d.trigger_ctrl_alt_del());
        assert_eq!(irq.read().unwrap(), 1);
        assert_eq!(drain(&mut d), CAD_SET2.to_vec());
        // one more interrupt per remaining byte after each read
        assert_eq!(irq.read().unwrap() as usize, CAD_SET2.len() - 1);
    }

    #[test]
    fn ctrl_alt_del_translated() {
        let (mut d, _, _) = device();
        configure(&mut d, CB_KBD_INT | CB_POST_OK | CB_TRANSLATE);
        assert!(d.trigger_ctrl_alt_del());
        assert_eq!(drain(&mut d), CAD_SET1.to_vec());
    }

    #[test]
    fn disabled_keyboard_gets_nothing() {
        let (mut d, _, _) = device();
        configure(&mut d, CB_KBD_INT | CB_POST_OK);
        d.write(4, &[CMD_KBD_DISABLE]);
        assert!(!d.trigger_ctrl_alt_del());
        d.write(4, &[CMD_KBD_ENABLE]);
        assert!(d.trigger_ctrl_alt_del());
    }

    #[test]
    fn keyboard_acks_and_odd_accesses() {
        let (mut d, _, _) = device();
        d.write(0, &[0xf4]);
        assert_eq!(drain(&mut d), vec![KBD_ACK]);
        d.write(0, &[]);
        d.write(2, &[1]);
        let mut b = [0u8; 2];
        d.read(3, &mut b);
        assert_eq!(b, [0xff, 0xff]);
        assert_eq!(inb(&mut d, 0), 0, "empty buffer reads 0");
        d.read(0, &mut []);
    }

    #[test]
    fn buffer_is_bounded() {
        let (mut d, _, _) = device();
        configure(&mut d, CB_KBD_INT | CB_POST_OK);
        for _ in 0..10 {
            d.trigger_ctrl_alt_del();
        }
        assert!(d.buffer.len() <= BUFFER_LIMIT);
    }
}
