//! Test helpers: in-memory guest memory and a driver-side view of a split virtqueue.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use crate::device::{DeviceQueue, GuestMemory, VirtioInterrupt};

pub const F_NEXT: u16 = 1;
pub const F_WRITE: u16 = 2;

/// 16 MiB of guest memory at address 0.
pub fn test_memory() -> GuestMemory {
    GuestMemory::from_ranges(&[(GuestAddress(0), 16 << 20)]).expect("test memory")
}

/// The driver's side of a split virtqueue living in guest memory at `base`.
pub struct TestQueue {
    mem: GuestMemory,
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    next_desc: u16,
    avail_idx: u16,
}

impl TestQueue {
    pub fn new(mem: &GuestMemory, size: u16) -> TestQueue {
        TestQueue::at(mem, 0, size)
    }

    pub fn at(mem: &GuestMemory, base: u64, size: u16) -> TestQueue {
        let desc = base;
        let avail = desc + 16 * u64::from(size);
        let used = (avail + 6 + 2 * u64::from(size) + 3) & !3;
        let tq =
            TestQueue { mem: mem.clone(), size, desc, avail, used, next_desc: 0, avail_idx: 0 };
        tq.mem.write_obj(0u16, GuestAddress(avail)).unwrap();
        tq.mem.write_obj(0u16, GuestAddress(avail + 2)).unwrap();
        tq.mem.write_obj(0u16, GuestAddress(used)).unwrap();
        tq.mem.write_obj(0u16, GuestAddress(used + 2)).unwrap();
        tq
    }

    pub fn addresses(&self) -> (u64, u64, u64) {
        (self.desc, self.avail, self.used)
    }

    /// A device-side queue configured for this ring, ready.
    pub fn queue(&self) -> Queue {
        let mut q = Queue::new(self.size).unwrap();
        q.set_size(self.size);
        q.set_desc_table_address(Some(self.desc as u32), Some((self.desc >> 32) as u32));
        q.set_avail_ring_address(Some(self.avail as u32), Some((self.avail >> 32) as u32));
        q.set_used_ring_address(Some(self.used as u32), Some((self.used >> 32) as u32));
        q.set_ready(true);
        q
    }

    /// [`Self::queue`] with a fresh notification eventfd, and the driver's end of that eventfd.
    pub fn device_queue(&self) -> (DeviceQueue, EventFd) {
        let notify = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mine = notify.try_clone().unwrap();
        (DeviceQueue { queue: self.queue(), notify }, mine)
    }

    /// Writes descriptor `index` verbatim.
    pub fn write_desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = self.desc + 16 * u64::from(index % self.size);
        self.mem.write_obj(addr, GuestAddress(at)).unwrap();
        self.mem.write_obj(len, GuestAddress(at + 8)).unwrap();
        self.mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
        self.mem.write_obj(next, GuestAddress(at + 14)).unwrap();
    }

    /// Makes `head` available to the device.
    pub fn push_avail(&mut self, head: u16) {
        let slot = self.avail + 4 + 2 * u64::from(self.avail_idx % self.size);
        self.mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem.write_obj(self.avail_idx, GuestAddress(self.avail + 2)).unwrap();
    }

    /// Adds a chain of `(addr, len, flags)` buffers; NEXT flags and links are filled in.
    pub fn add_chain(&mut self, bufs: &[(u64, u32, u16)]) -> u16 {
        let head = self.next_desc % self.size;
        for (i, (addr, len, flags)) in bufs.iter().enumerate() {
            let index = self.next_desc % self.size;
            let next = self.next_desc.wrapping_add(1) % self.size;
            let last = i + 1 == bufs.len();
            let flags = if last { *flags } else { *flags | F_NEXT };
            self.write_desc(index, *addr, *len, flags, if last { 0 } else { next });
            self.next_desc = self.next_desc.wrapping_add(1);
        }
        self.push_avail(head);
        head
    }

    pub fn used_idx(&self) -> u16 {
        self.mem.read_obj(GuestAddress(self.used + 2)).unwrap()
    }

    /// Used element `i`: (descriptor head, bytes written).
    pub fn used_elem(&self, i: u16) -> (u32, u32) {
        let at = self.used + 4 + 8 * u64::from(i % self.size);
        let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
        let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
        (id, len)
    }
}

/// Counts interrupts.
#[derive(Default)]
pub struct CountingInterrupt {
    pub used: AtomicU32,
    pub config: AtomicU32,
}

impl CountingInterrupt {
    pub fn new() -> Arc<CountingInterrupt> {
        Arc::new(CountingInterrupt::default())
    }

    pub fn used_count(&self) -> u32 {
        self.used.load(Ordering::SeqCst)
    }
}

impl VirtioInterrupt for CountingInterrupt {
    fn signal_used_queue(&self) {
        self.used.fetch_add(1, Ordering::SeqCst);
    }
    fn signal_config_change(&self) {
        self.config.fetch_add(1, Ordering::SeqCst);
    }
}

/// A tiny deterministic pseudo-random generator for fuzz-style tests.
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}
