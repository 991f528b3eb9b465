//! Host to guest: one frame read from the tap, copied into as many of the guest's rx chains
//! as it needs (one without VIRTIO_NET_F_MRG_RXBUF), published together with `num_buffers`
//! set in the first.

use virtio_queue::{Queue, QueueT};

use super::header::{
    check_rx_header, F_MRG_RXBUF, MAX_FRAME_LEN, NUM_BUFFERS_OFFSET, VNET_HDR_LEN,
};
use super::ring::publish_used;
use crate::chain::{write_to, Buffer, Buffers};
use crate::device::GuestMemory;
use crate::guest_warn;

/// What became of the pending frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Delivery {
    /// In the guest's buffers.
    Delivered,
    /// The guest has too few buffers right now; the frame stays pending and every chain taken
    /// for it was given back.
    NoBuffers,
    /// Thrown away (malformed, or larger than the guest's buffers can ever hold); `used`
    /// says whether chains were returned to the guest on the way.
    Dropped { used: bool },
}

/// The rx side's state: at most one frame waiting for guest buffers.
pub(super) struct Rx {
    frame: Vec<u8>,
    pending: usize,
    bad: Vec<(u16, u32)>,
    good: Vec<(u16, u32)>,
    first: Vec<Buffer>,
}

impl Rx {
    pub fn new() -> Rx {
        Rx {
            frame: vec![0; VNET_HDR_LEN + MAX_FRAME_LEN],
            pending: 0,
            bad: Vec::new(),
            good: Vec::new(),
            first: Vec::new(),
        }
    }

    pub fn has_pending(&self) -> bool {
        self.pending > 0
    }

    /// Where the next frame is read to.
    pub fn buffer(&mut self) -> &mut [u8] {
        &mut self.frame
    }

    /// The first `len` bytes of [`Self::buffer`] are a frame to deliver.
    pub fn set_pending(&mut self, len: usize) {
        self.pending = len.min(self.frame.len());
    }

    /// Tries to put the pending frame into `queue`'s chains.
    pub fn deliver(&mut self, mem: &GuestMemory, queue: &mut Queue, acked: u64) -> Delivery {
        let len = std::mem::take(&mut self.pending);
        let Some(hdr) = self.frame.first_chunk_mut::<VNET_HDR_LEN>() else {
            return Delivery::Dropped { used: false };
        };
        if len < VNET_HDR_LEN {
            guest_warn!("virtio-net: {len}-byte read from the tap dropped");
            return Delivery::Dropped { used: false };
        }
        if let Err(e) = check_rx_header(hdr, acked) {
            guest_warn!("virtio-net: frame from the tap dropped: {e}");
            return Delivery::Dropped { used: false };
        }
        let max_chains = if acked & F_MRG_RXBUF != 0 { usize::from(queue.size()) } else { 1 };
        self.bad.clear();
        self.good.clear();
        let mut popped: u16 = 0;
        let mut off = 0usize;
        let frame = self.frame.get(..len).unwrap_or(&[]);
        while off < len {
            if self.good.len() >= max_chains || popped >= queue.size() {
                guest_warn!(
                    "virtio-net: {len}-byte frame does not fit in {} rx buffers; dropped",
                    self.good.len()
                );
                self.bad.extend(self.good.iter().map(|&(head, _)| (head, 0)));
                let used = !self.bad.is_empty();
                if let Err(e) = publish_used(queue, mem, &self.bad) {
                    guest_warn!("virtio-net: cannot return rx buffers: {e}");
                }
                return Delivery::Dropped { used };
            }
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                queue.set_next_avail(queue.next_avail().wrapping_sub(popped));
                self.pending = len;
                return Delivery::NoBuffers;
            };
            popped += 1;
            let head = chain.head_index();
            let bufs = match Buffers::collect(chain) {
                Ok(b) if b.readable.is_empty() && Buffers::total(&b.writable) >= VNET_HDR_LEN => b,
                Ok(_) => {
                    guest_warn!(
                        "virtio-net: rx chain {head} is read-only or shorter than the header"
                    );
                    self.bad.push((head, 0));
                    continue;
                }
                Err(e) => {
                    guest_warn!("virtio-net: malformed rx chain {head}: {e}");
                    self.bad.push((head, 0));
                    continue;
                }
            };
            match write_to(mem, &bufs.writable, 0, frame.get(off..).unwrap_or(&[])) {
                Ok(n) => {
                    if self.good.is_empty() {
                        self.first.clear();
                        self.first.extend_from_slice(&bufs.writable);
                    }
                    self.good.push((head, u32::try_from(n).unwrap_or(0)));
                    off += n;
                }
                Err(e) => {
                    guest_warn!("virtio-net: rx chain {head}: {e}");
                    self.bad.push((head, 0));
                }
            }
        }
        let count = u16::try_from(self.good.len()).unwrap_or(u16::MAX);
        if let Err(e) = write_to(mem, &self.first, NUM_BUFFERS_OFFSET, &count.to_le_bytes()) {
            guest_warn!("virtio-net: cannot write num_buffers: {e}");
        }
        self.bad.extend_from_slice(&self.good);
        if let Err(e) = publish_used(queue, mem, &self.bad) {
            guest_warn!("virtio-net: cannot return rx buffers: {e}");
        }
        Delivery::Delivered
    }
}
