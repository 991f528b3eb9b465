//! rtnetlink for carapace's two network setups: the daemon wiring a pod's tap in the pod's
//! network namespace on the host, and the agent configuring the guest NIC. [`Netlink`] is one
//! synchronous socket in the network namespace of the thread that opened it; [`link`] lists
//! that namespace's links.

pub mod link;
mod socket;

pub use link::{by_name, links, mac_text, Link};
pub use socket::Netlink;
