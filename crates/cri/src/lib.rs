//! carapace's CRI v1 daemon (`carapace serve`): the RuntimeService, where every pod sandbox is
//! a microVM run by a detached `carapace vmm` process, with durable per-sandbox records.
//!
//! * [`config`]: the TOML configuration (runtime handlers → VM profiles).
//! * [`runtime`]: the one owner of the daemon's state, holding [`sandboxes`] (the sandbox
//!   table and VM lifecycle) and [`containers`] (the container table and the container RPCs
//!   through the pod's agent) as peers; [`store`] and [`record`]: the durable records.
//! * [`vmm`]: starting, reaching and stopping a pod's VM; [`procfs`]: PID-reuse-safe liveness;
//!   [`hostcheck`]: whether this KVM boots guests (RuntimeReady).
//! * [`merge`]: image config + CRI config → process; [`crilog`]: CRI log files; [`volumes`]:
//!   host volumes into the VM; [`filters`]: List* filters; [`util`]: shared small helpers;
//!   [`validate`]: checks of path-like and line-like request fields.
//! * [`pod_disk`]: each pod's own disk (bounds its shared dir); [`sizing`]: a pod's VM size
//!   from its resources, and containers checked against it.
//! * [`cni`]: pod networking (CNI config, netns, plugin ADD/DEL, cache).
//! * [`network`]: the pod's tap in its netns, wired to the CNI interface by tc redirects; the
//!   agent's ConfigureNetworkRequest from the CNI result.
//! * [`podnet`]: a pod's network for its lifetime (CNI, tap, the agent's ConfigureNetwork,
//!   teardown), as the sandbox table drives it.
//! * [`streaming`]: the streaming server (Exec, Attach over SPDY and WebSocket).
//! * [`runtime_service`]: the gRPC service; [`server`]: socket, signals, serving.

pub mod client;
pub mod cni;
pub mod config;
pub mod containers;
pub mod crilog;
pub mod error;
pub mod filters;
pub mod hostcheck;
pub mod ids;
pub mod merge;
pub mod metrics;
pub mod network;
pub mod pod_disk;
pub mod podnet;
pub mod procfs;
pub mod record;
pub mod runtime;
pub mod runtime_service;
pub mod sandboxes;
pub mod server;
pub mod sizing;
pub mod store;
pub mod streaming;
pub mod util;
pub mod validate;
pub mod vmm;
pub mod volumes;

pub use config::{Config, ConfigError, DEFAULT_CONFIG_PATH};
pub use error::CriError;
pub use server::{serve_blocking, Daemon, ServeError};

/// The CRI types and clients (re-exported so callers use the same version).
pub use k8s_cri;
pub use tonic;
