//! Remote command (exec, attach) as kubelet's streaming server speaks it to client-go, over
//! two transports that share the session logic ([`session`]: which streams, running the
//! [`Backend`], pumping output with backpressure, the exit status):
//! - SPDY ([`over_spdy`]): `v4.channel.k8s.io`, and v3/v2;
//! - WebSocket ([`over_ws`]): `v5.channel.k8s.io` (with the close signal), `v4.channel.k8s.io`,
//!   `channel.k8s.io` and the `base64.` variants.
//!
//! The exit status goes on the error stream: from v4 on as a `metav1.Status` JSON object
//! ([`status_message`]), before as the plain error text (nothing on success).

pub mod over_spdy;
pub mod over_ws;
pub mod protocol;
pub mod session;

pub use over_spdy::serve_spdy;
pub use over_ws::{serve_ws, WsProtocol};
pub use protocol::{
    negotiate, status_message, Flags, Protocol, Session, CLOSE_TIMEOUT, MAX_DATA_CHUNK,
    STREAM_CREATION_TIMEOUT,
};

#[cfg(test)]
mod tests;
#[cfg(test)]
mod ws_tests;
