//! The carapace guest agent as a library: the pieces `carapace-agent`
//! (src/main.rs) is assembled from, public so later container code and
//! tests can reuse them.

pub mod args;
pub mod console;
pub mod container;
pub mod mounts;
pub mod network;
pub mod portforward;
pub mod power;
pub mod reaper;
pub mod serve;
pub mod service;
pub mod sysinfo;
