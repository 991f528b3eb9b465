//! Used-ring helpers the net device needs beyond `virtio-queue`: publishing several used
//! elements at once (a merged rx frame must appear whole) and honouring the driver's
//! interrupt suppression flag.

use std::sync::atomic::{fence, Ordering};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use crate::device::GuestMemory;

/// `VRING_AVAIL_F_NO_INTERRUPT`: the driver does not want an interrupt right now.
const AVAIL_F_NO_INTERRUPT: u16 = 1;

/// Writes `used` (head, length) elements into the used ring, then moves the used index past
/// all of them with one store, so the driver never sees part of the batch.
pub(super) fn publish_used(
    queue: &mut Queue,
    mem: &GuestMemory,
    used: &[(u16, u32)],
) -> Result<(), vm_memory::GuestMemoryError> {
    if used.is_empty() {
        return Ok(());
    }
    let size = queue.size();
    let base = queue.used_ring();
    let mut next = queue.next_used();
    for &(head, len) in used {
        let slot = u64::from(next.checked_rem(size).unwrap_or(0));
        let addr = base.saturating_add(4 + slot * 8);
        mem.write_obj(u32::from(head), GuestAddress(addr))?;
        mem.write_obj(len, GuestAddress(addr.saturating_add(4)))?;
        next = next.wrapping_add(1);
    }
    mem.store(next.to_le(), GuestAddress(base.saturating_add(2)), Ordering::Release)?;
    queue.set_next_used(next);
    Ok(())
}

/// Whether the driver wants an interrupt for what was just used (it sets NO_INTERRUPT while
/// it polls the ring itself). Unreadable flags count as "yes".
pub(super) fn wants_interrupt(queue: &Queue, mem: &GuestMemory) -> bool {
    // Orders the used index stores before the flags load (the driver clears the flag, then
    // re-reads the used index).
    fence(Ordering::SeqCst);
    mem.load::<u16>(GuestAddress(queue.avail_ring()), Ordering::Relaxed)
        .map(|f| u16::from_le(f) & AVAIL_F_NO_INTERRUPT == 0)
        .unwrap_or(true)
}

/// Whether the driver made buffers available that the device has not taken yet.
pub(super) fn has_available(queue: &Queue, mem: &GuestMemory) -> bool {
    queue.avail_idx(mem, Ordering::Acquire).map(|idx| idx.0 != queue.next_avail()).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_utils::{test_memory, TestQueue, F_WRITE};

    #[test]
    fn a_batch_appears_with_one_index_update() {
        let mem = test_memory();
        let mut tq = TestQueue::new(&mem, 4);
        let mut q = tq.queue();
        for _ in 0..3 {
            tq.add_chain(&[(0x10000, 64, F_WRITE)]);
        }
        assert!(has_available(&q, &mem));
        let heads: Vec<u16> =
            (0..3).map(|_| q.pop_descriptor_chain(&mem).unwrap().head_index()).collect();
        assert!(!has_available(&q, &mem));
        publish_used(&mut q, &mem, &[(heads[0], 10), (heads[1], 20), (heads[2], 30)]).unwrap();
        assert_eq!(tq.used_idx(), 3);
        assert_eq!(tq.used_elem(0), (0, 10));
        assert_eq!(tq.used_elem(2), (2, 30));
        assert!(wants_interrupt(&q, &mem));
        let (_, avail, _) = tq.addresses();
        mem.write_obj(1u16, GuestAddress(avail)).unwrap();
        assert!(!wants_interrupt(&q, &mem));
    }
}
