//! virtio-net (device ID 1) backed by a tap file descriptor the VMM inherits.
//!
//! Queue 0 is rx, queue 1 tx; no control queue, one queue pair. Offered: VERSION_1, MAC
//! (config space), MRG_RXBUF, CSUM + HOST_TSO4/6 (the tap takes such frames whenever it has
//! IFF_VNET_HDR), and GUEST_CSUM + GUEST_TSO4/6 only as far as the tap accepts the matching
//! TUNSETOFFLOAD; on activation the tap is set to exactly what the driver acked. Every frame
//! carries the 12-byte `virtio_net_hdr_v1` both in the rings and on the tap
//! (TUNSETVNETHDRSZ), so headers pass through after a check against the acked features.
//!
//! Module map: [`tap`] (the descriptor and its ioctls), `header` (header layout, features,
//! checks), `ring` (batched used elements), `rx` / `tx` (one direction each), `worker` (the
//! device thread and flow control), `device` (the [`VirtioDevice`](crate::VirtioDevice)).

mod device;
mod header;
mod mac;
mod ring;
mod rx;
pub mod tap;
mod tx;
mod worker;

pub use device::{Net, VIRTIO_ID_NET};
pub use header::{MAX_FRAME_LEN, VNET_HDR_LEN};
pub use mac::{MacAddr, MacError};
pub use tap::{check_tap_fd, dup_fd, TapError, TapInfo};

#[cfg(test)]
mod test_tap;
#[cfg(test)]
mod tests;
