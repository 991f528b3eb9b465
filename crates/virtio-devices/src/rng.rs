//! virtio-entropy (device ID 4): fills the guest's write-only buffers with getrandom(2) bytes.

use std::io;
use std::sync::Arc;

use tracing::debug;
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::epoll::Epoll;

use crate::chain::{write_to, Buffers};
use crate::device::VIRTIO_F_VERSION_1;
use crate::device::{ActivateError, DeviceQueue, GuestMemory, VirtioDevice, VirtioInterrupt};
use crate::guest_warn;
use crate::worker::{DeviceThread, DeviceWorker};

/// Virtio device ID of the entropy device.
pub const VIRTIO_ID_RNG: u32 = 4;
const QUEUE_SIZE: u16 = 256;
/// At most this many random bytes per request, whatever length the guest claims.
const MAX_BYTES_PER_REQUEST: usize = 64 * 1024;

struct Active {
    mem: GuestMemory,
    interrupt: Arc<dyn VirtioInterrupt>,
    queue: Queue,
}

/// The entropy device. Once activated, its queue is served on its own thread.
pub struct Rng {
    sizes: [u16; 1],
    active: Option<DeviceThread<Active>>,
}

impl Default for Rng {
    fn default() -> Self {
        Rng::new()
    }
}

impl Rng {
    pub fn new() -> Rng {
        Rng { sizes: [QUEUE_SIZE], active: None }
    }

    /// Waits until the device thread (if any) has handled every notification sent so far.
    #[cfg(test)]
    fn settle(&self) {
        if let Some(t) = &self.active {
            t.with(|_| ());
        }
    }
}

/// Fills `buf` from the kernel's random pool.
fn fill_random(buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0usize;
    while let Some(rest) = buf.get_mut(done..) {
        if rest.is_empty() {
            break;
        }
        // SAFETY: `rest` is a valid, writable buffer of `rest.len()` bytes.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        done += usize::try_from(n).unwrap_or(0);
    }
    Ok(())
}

impl Active {
    fn process(&mut self) {
        let mut used_any = false;
        while let Some(chain) = self.queue.pop_descriptor_chain(&self.mem) {
            let head = chain.head_index();
            let written = match Buffers::collect(chain) {
                Ok(bufs) if bufs.readable.is_empty() => self.fill(&bufs),
                Ok(_) => {
                    guest_warn!("virtio-rng: request with device-readable buffers dropped");
                    0
                }
                Err(e) => {
                    guest_warn!("virtio-rng: malformed request dropped: {e}");
                    0
                }
            };
            if let Err(e) = self.queue.add_used(&self.mem, head, written) {
                guest_warn!("virtio-rng: cannot return buffer {head}: {e}");
            }
            used_any = true;
        }
        if used_any {
            self.interrupt.signal_used_queue();
        }
    }

    fn fill(&self, bufs: &Buffers) -> u32 {
        let len = Buffers::total(&bufs.writable).min(MAX_BYTES_PER_REQUEST);
        let mut random = vec![0u8; len];
        if let Err(e) = fill_random(&mut random) {
            guest_warn!("virtio-rng: getrandom failed: {e}");
            return 0;
        }
        match write_to(&self.mem, &bufs.writable, 0, &random) {
            Ok(n) => u32::try_from(n).unwrap_or(0),
            Err(e) => {
                guest_warn!("virtio-rng: {e}");
                0
            }
        }
    }
}

impl DeviceWorker for Active {
    fn queue_notified(&mut self, _index: usize) {
        self.process();
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.sizes
    }

    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        debug!("virtio-rng: ignoring config write at {offset:#x}");
    }

    fn activate(
        &mut self,
        mem: GuestMemory,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<DeviceQueue>,
        _acked_features: u64,
    ) -> Result<(), ActivateError> {
        let got = queues.len();
        let mut it = queues.into_iter();
        let (Some(DeviceQueue { queue, notify }), None) = (it.next(), it.next()) else {
            return Err(ActivateError::QueueCount { want: 1, got });
        };
        // A second activation without reset replaces the first.
        self.active = None;
        let epoll = Epoll::new().map_err(|e| ActivateError::Backend(e.into()))?;
        let active = Active { mem, interrupt, queue };
        // The thread serves buffers the driver queued before DRIVER_OK when it starts.
        let thread = DeviceThread::spawn("virtio-rng", Arc::new(epoll), active, vec![notify])
            .map_err(|e| ActivateError::Backend(e.into()))?;
        self.active = Some(thread);
        Ok(())
    }

    fn reset(&mut self) {
        // Stops and joins the thread; the queue goes with it.
        self.active = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_utils::{test_memory, CountingInterrupt, TestQueue, XorShift, F_WRITE};
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::eventfd::EventFd;

    /// An activated device, the interrupt it signals, and the eventfd notifying its queue.
    struct Driven {
        rng: Rng,
        notify: EventFd,
    }

    impl Driven {
        /// The driver's QueueNotify: signals the queue's eventfd, then waits until the device
        /// thread has handled it (so the test sees the result as a vCPU-side device did).
        fn queue_notify(&mut self, index: u16) {
            if index == 0 {
                self.notify.write(1).unwrap();
            }
            self.rng.settle();
        }
    }

    fn active_rng(tq: &TestQueue, mem: &GuestMemory) -> (Driven, Arc<CountingInterrupt>) {
        let mut rng = Rng::new();
        let int = CountingInterrupt::new();
        let (q, notify) = tq.device_queue();
        rng.activate(mem.clone(), int.clone(), vec![q], VIRTIO_F_VERSION_1).unwrap();
        rng.settle();
        (Driven { rng, notify }, int)
    }

    #[test]
    fn fills_write_only_buffers() {
        let mem = test_memory();
        let mut tq = TestQueue::new(&mem, 16);
        let (mut rng, int) = active_rng(&tq, &mem);
        tq.add_chain(&[(0x10000, 64, F_WRITE), (0x20000, 64, F_WRITE)]);
        rng.queue_notify(0);
        assert_eq!(tq.used_idx(), 1);
        assert_eq!(tq.used_elem(0), (0, 128));
        assert_eq!(int.used_count(), 1);
        let mut a = [0u8; 64];
        let mut b = [0u8; 64];
        mem.read_slice(&mut a, GuestAddress(0x10000)).unwrap();
        mem.read_slice(&mut b, GuestAddress(0x20000)).unwrap();
        // 64 random bytes all zero has probability 2^-512.
        assert_ne!(a, [0u8; 64]);
        assert_ne!(b, [0u8; 64]);
        assert_ne!(a, b);
    }

    #[test]
    fn buffers_queued_before_activation_are_served() {
        let mem = test_memory();
        let mut tq = TestQueue::new(&mem, 16);
        tq.add_chain(&[(0x10000, 16, F_WRITE)]);
        let (_rng, int) = active_rng(&tq, &mem);
        assert_eq!(tq.used_elem(0), (0, 16));
        assert_eq!(int.used_count(), 1);
    }

    #[test]
    fn readable_buffers_are_refused_and_huge_ones_capped() {
        let mem = test_memory();
        let mut tq = TestQueue::new(&mem, 16);
        let (mut rng, _) = active_rng(&tq, &mem);
        tq.add_chain(&[(0x10000, 64, 0)]);
        tq.add_chain(&[(0x100000, 4 << 20, F_WRITE)]);
        rng.queue_notify(0);
        assert_eq!(tq.used_idx(), 2);
        assert_eq!(tq.used_elem(0).1, 0);
        assert_eq!(tq.used_elem(1).1, MAX_BYTES_PER_REQUEST as u32);
    }

    #[test]
    fn wrong_queue_count_and_reset() {
        let mem = test_memory();
        let tq = TestQueue::new(&mem, 16);
        let mut rng = Rng::new();
        let int = CountingInterrupt::new();
        assert!(rng.activate(mem.clone(), int.clone(), vec![], 0).is_err());
        let two = vec![tq.device_queue().0, tq.device_queue().0];
        assert!(rng.activate(mem.clone(), int, two, 0).is_err());
        rng.settle();
        let (mut rng, _) = active_rng(&tq, &mem);
        rng.rng.reset();
        rng.queue_notify(0);
        assert!(rng.rng.active.is_none());
    }

    #[test]
    fn garbage_chains_never_panic() {
        let mem = test_memory();
        let mut tq = TestQueue::new(&mem, 32);
        let (mut rng, _) = active_rng(&tq, &mem);
        let mut r = XorShift(99);
        for round in 0..200 {
            for i in 0..32u16 {
                let addr = match r.next() % 3 {
                    0 => r.next(),
                    1 => r.next() % (17 << 20),
                    _ => 0x100000 + (r.next() % 0x1000),
                };
                tq.write_desc(
                    i,
                    addr,
                    r.next() as u32 % 0x2_0000,
                    r.next() as u16 & 7,
                    r.next() as u16,
                );
            }
            for _ in 0..(r.next() % 40) {
                tq.push_avail((r.next() % 40) as u16);
            }
            rng.queue_notify(0);
            if round % 50 == 0 {
                rng.queue_notify(3);
            }
        }
    }
}
