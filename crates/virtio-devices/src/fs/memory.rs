//! Guest memory and queues as fuse-backend-rs sees them.
//!
//! fuse-backend-rs 0.14 is built against vm-memory 0.17 and virtio-queue 0.17, the rest of carapace
//! against 0.18. The fs device therefore describes the same host mappings a second time, as a
//! vm-memory 0.17 `GuestMemoryMmap` that does not own them, and rebuilds each queue from the
//! addresses the driver programmed.

use vm_memory::{GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};
use vm_memory_fs::{GuestAddress as FsGuestAddress, GuestRegionMmap, MmapRegion};

use crate::device::GuestMemory;

/// Guest memory as a vm-memory 0.17 object.
pub(crate) type FsGuestMemory = vm_memory_fs::GuestMemoryMmap<()>;
/// A virtqueue as a virtio-queue 0.17 object.
pub(crate) type FsQueue = virtio_queue_fs::Queue;

/// Why the 0.17 view of guest memory or of a queue cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum MemoryViewError {
    #[error("guest memory region at {start:#x}: {source}")]
    HostAddress { start: u64, source: vm_memory::GuestMemoryError },
    #[error("guest memory region at {start:#x}: {source}")]
    Size { start: u64, source: std::num::TryFromIntError },
    #[error("guest memory region at {start:#x}: {source}")]
    Mapping { start: u64, source: vm_memory_fs::mmap::MmapRegionError },
    #[error("guest memory region at {start:#x}: region wraps around the address space")]
    Wraps { start: u64 },
    #[error("guest memory regions: {0}")]
    Collection(#[source] vm_memory_fs::GuestRegionCollectionError),
    #[error("queue: {0}")]
    Queue(#[source] virtio_queue_fs::Error),
}

/// A vm-memory 0.17 view of `mem`. The view borrows the mappings of `mem` without owning them:
/// it is bundled with a clone of `mem` (which keeps every mapping alive) and never handed out
/// on its own.
pub(crate) struct MemoryView {
    view: FsGuestMemory,
    // Declared after `view`: dropped last, so the mappings outlive every use of the view.
    _owner: GuestMemory,
}

impl MemoryView {
    pub fn new(mem: &GuestMemory) -> Result<MemoryView, MemoryViewError> {
        let mut regions = Vec::new();
        for region in mem.iter() {
            let start = region.start_addr().0;
            let host = region
                .get_host_address(MemoryRegionAddress(0))
                .map_err(|source| MemoryViewError::HostAddress { start, source })?;
            let size = usize::try_from(region.len())
                .map_err(|source| MemoryViewError::Size { start, source })?;
            // SAFETY: `host..host+size` is a live read-write mapping owned by `mem`. The raw
            // region does not own it (it never unmaps it), and `MemoryView` keeps a clone of
            // `mem` for as long as the view exists, so the mapping outlives every access.
            let raw = unsafe {
                MmapRegion::<()>::build_raw(
                    host,
                    size,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                )
            }
            .map_err(|source| MemoryViewError::Mapping { start, source })?;
            let region = GuestRegionMmap::new(raw, FsGuestAddress(start))
                .ok_or(MemoryViewError::Wraps { start })?;
            regions.push(region);
        }
        let view = FsGuestMemory::from_regions(regions).map_err(MemoryViewError::Collection)?;
        Ok(MemoryView { view, _owner: mem.clone() })
    }

    pub fn get(&self) -> &FsGuestMemory {
        &self.view
    }
}

/// The same queue (addresses, size, ring positions) as a virtio-queue 0.17 queue.
pub(crate) fn convert_queue(q: &virtio_queue::Queue) -> Result<FsQueue, MemoryViewError> {
    let s = q.state();
    let state = virtio_queue_fs::QueueState {
        max_size: s.max_size,
        next_avail: s.next_avail,
        next_used: s.next_used,
        event_idx_enabled: s.event_idx_enabled,
        size: s.size,
        ready: s.ready,
        desc_table: s.desc_table,
        avail_ring: s.avail_ring,
        used_ring: s.used_ring,
    };
    FsQueue::try_from(state).map_err(MemoryViewError::Queue)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_utils::{test_memory, TestQueue};
    use vm_memory::{Bytes, GuestAddress};
    use vm_memory_fs::Bytes as _;

    #[test]
    fn view_sees_and_changes_the_same_bytes() {
        let mem = test_memory();
        let view = MemoryView::new(&mem).unwrap();
        mem.write_slice(b"carapace", GuestAddress(0x1234)).unwrap();
        let mut got = [0u8; 8];
        view.get().read_slice(&mut got, FsGuestAddress(0x1234)).unwrap();
        assert_eq!(&got, b"carapace");
        view.get().write_slice(b"VIEW", FsGuestAddress(0x1234)).unwrap();
        mem.read_slice(&mut got[..4], GuestAddress(0x1234)).unwrap();
        assert_eq!(&got[..4], b"VIEW");
        // Out of range stays out of range.
        assert!(view.get().read_slice(&mut got, FsGuestAddress((16 << 20) - 4)).is_err());
    }

    #[test]
    fn view_keeps_the_memory_alive() {
        let mem = test_memory();
        let view = MemoryView::new(&mem).unwrap();
        mem.write_slice(b"alive", GuestAddress(0x10)).unwrap();
        drop(mem);
        let mut got = [0u8; 5];
        view.get().read_slice(&mut got, FsGuestAddress(0x10)).unwrap();
        assert_eq!(&got, b"alive");
    }

    #[test]
    fn queue_conversion_keeps_addresses_and_positions() {
        use virtio_queue_fs::QueueT as _;
        let mem = test_memory();
        let tq = TestQueue::at(&mem, 0x4000, 64);
        let q = tq.queue();
        let c = convert_queue(&q).unwrap();
        let (desc, avail, used) = tq.addresses();
        assert_eq!(c.desc_table(), desc);
        assert_eq!(c.avail_ring(), avail);
        assert_eq!(c.used_ring(), used);
        assert_eq!(c.size(), 64);
        assert!(c.ready());
    }
}
