//! Guest to host: one tx chain (header and frame, device-readable only) checked, copied out
//! of guest memory and written to the tap as one frame.

use std::io;

use virtio_queue::DescriptorChain;

use super::header::{check_tx_header, MAX_FRAME_LEN, VNET_HDR_LEN};
use super::tap::Tap;
use crate::chain::{read_from, Buffers};
use crate::device::GuestMemory;
use crate::guest_warn;

/// Smallest frame worth sending: the Ethernet header.
const MIN_FRAME_LEN: usize = 14;

/// What became of one tx chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TxOutcome {
    Sent,
    /// Malformed or refused by the tap; the chain is returned to the guest all the same.
    Dropped,
    /// The tap has no room: the chain must go back to the ring until the tap is writable.
    Blocked,
}

/// The tx side's copy buffer.
pub(super) struct Tx {
    buf: Vec<u8>,
}

impl Tx {
    pub fn new() -> Tx {
        Tx { buf: vec![0; VNET_HDR_LEN + MAX_FRAME_LEN] }
    }

    /// Sends the frame in `chain` to `tap`.
    pub fn send<M>(
        &mut self,
        mem: &GuestMemory,
        chain: DescriptorChain<M>,
        tap: &Tap,
        acked: u64,
    ) -> TxOutcome
    where
        M: std::ops::Deref,
        M::Target: vm_memory::GuestMemory,
    {
        let head = chain.head_index();
        let bufs = match Buffers::collect(chain) {
            Ok(b) => b,
            Err(e) => {
                guest_warn!("virtio-net: malformed tx chain {head}: {e}");
                return TxOutcome::Dropped;
            }
        };
        if !bufs.writable.is_empty() {
            guest_warn!("virtio-net: tx chain {head} has device-writable buffers; dropped");
            return TxOutcome::Dropped;
        }
        let total = Buffers::total(&bufs.readable);
        if !(VNET_HDR_LEN + MIN_FRAME_LEN..=self.buf.len()).contains(&total) {
            guest_warn!("virtio-net: tx chain {head} of {total} bytes dropped");
            return TxOutcome::Dropped;
        }
        let Some(out) = self.buf.get_mut(..total) else {
            return TxOutcome::Dropped;
        };
        match read_from(mem, &bufs.readable, 0, out) {
            Ok(n) if n == total => {}
            Ok(n) => {
                guest_warn!("virtio-net: tx chain {head}: read {n} of {total} bytes; dropped");
                return TxOutcome::Dropped;
            }
            Err(e) => {
                guest_warn!("virtio-net: tx chain {head}: {e}");
                return TxOutcome::Dropped;
            }
        }
        if let Some(hdr) = out.first_chunk_mut::<VNET_HDR_LEN>() {
            if let Err(e) = check_tx_header(hdr, acked) {
                guest_warn!("virtio-net: tx frame dropped: {e}");
                return TxOutcome::Dropped;
            }
        }
        match tap.write(out) {
            Ok(_) => TxOutcome::Sent,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => TxOutcome::Blocked,
            Err(e) => {
                guest_warn!("virtio-net: tap {} refused a {total}-byte frame: {e}", tap.name());
                TxOutcome::Dropped
            }
        }
    }
}
