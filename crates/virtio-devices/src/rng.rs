//! virtio-entropy (device ID 4): fills the guest's write-only buffers with getrandom(2) bytes.

use std::io;
use std::sync::Arc;

use tracing::{debug, warn};
use virtio_queue::{Queue, QueueT};

use crate::chain::{write_to, Buffers};
use crate::device::{ActivateError, GuestMemory, VirtioDevice, VirtioInterrupt};
use crate::VIRTIO_F_VERSION_1;

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

/// The entropy device.
pub struct Rng {
    sizes: [u16; 1],
    active: Option<Active>,
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
                    warn!("virtio-rng: request with device-readable buffers dropped");
                    0
                }
                Err(e) => {
                    warn!("virtio-rng: malformed request dropped: {e}");
                    0
                }
            };
            if let Err(e) = self.queue.add_used(&self.mem, head, written) {
                warn!("virtio-rng: cannot return buffer {head}: {e}");
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
            warn!("virtio-rng: getrandom failed: {e}");
            return 0;
        }
        match write_to(&self.mem, &bufs.writable, 0, &random) {
            Ok(n) => u32::try_from(n).unwrap_or(0),
            Err(e) => {
                warn!("virtio-rng: {e}");
                0
            }
        }
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
        queues: Vec<Queue>,
        _acked_features: u64,
    ) -> Result<(), ActivateError> {
        let got = queues.len();
        let mut it = queues.into_iter();
        let (Some(queue), None) = (it.next(), it.next()) else {
            return Err(ActivateError::QueueCount { want: 1, got });
        };
        let mut active = Active { mem, interrupt, queue };
        // Buffers the driver may have queued (and notified) before DRIVER_OK.
        active.process();
        self.active = Some(active);
        Ok(())
    }

    fn queue_notify(&mut self, queue_index: u16) {
        match (&mut self.active, queue_index) {
            (Some(active), 0) => active.process(),
            (None, _) => debug!("virtio-rng: notify before activation"),
            (_, i) => warn!("virtio-rng: notify for unknown queue {i}"),
        }
    }

    fn reset(&mut self) {
        self.active = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_utils::{test_memory, CountingInterrupt, TestQueue, XorShift, F_WRITE};
    use vm_memory::{Bytes, GuestAddress};

    fn active_rng(tq: &TestQueue, mem: &GuestMemory) -> (Rng, Arc<CountingInterrupt>) {
        let mut rng = Rng::new();
        let int = CountingInterrupt::new();
        rng.activate(mem.clone(), int.clone(), vec![tq.queue()], VIRTIO_F_VERSION_1).unwrap();
        (rng, int)
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
        assert!(rng.activate(mem.clone(), int, vec![tq.queue(), tq.queue()], 0).is_err());
        rng.queue_notify(0);
        let (mut rng, _) = active_rng(&tq, &mem);
        rng.reset();
        rng.queue_notify(0);
        assert!(rng.active.is_none());
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
