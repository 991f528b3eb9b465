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
            return Err(ActivateError::QueueCount { want: self.sizes.len(), got: queues.len() });
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

const ALL_OK: u32 = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;

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
