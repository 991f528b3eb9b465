//! virtio-vsock (device ID 19) implemented in user space and mapped to Unix sockets.
//!
//! Host side, the scheme Firecracker made common:
//! - host-initiated: connect to the device's Unix socket, write `CONNECT <port>\n`, read back
//!   `OK <local port>\n`, then the stream is the connection to the guest's `<port>`;
//! - guest-initiated: a guest connection to CID 2 port P is relayed to the Unix socket
//!   `<uds_path>_<P>`.

mod connection;
mod device;
mod muxer;
pub mod packet;
mod unix;

pub use device::{Vsock, VsockError, VIRTIO_ID_VSOCK};
#[cfg(feature = "fuzz-hooks")]
pub(crate) use muxer::Muxer;
pub use muxer::FIRST_LOCAL_PORT;

#[cfg(test)]
mod tests;
