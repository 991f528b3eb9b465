//! Containers inside the guest (issue 3), agent side.
//!
//! [`Containers`] ([`table`]) keeps the containers of this VM (= the pod)
//! and serves the container RPCs of `proto/agent.proto` (see [`rpc`]); its
//! operations are split by job ([`create`], [`lifecycle`], [`exec`],
//! [`output`]). A CreateContainer request is parsed once into a
//! [`validated::ValidatedContainer`] before anything changes; [`spec`]
//! writes the OCI spec from it, and youki's `libcontainer` creates and runs
//! the container ([`runtime`], [`helper`]). Each container gets its own
//! mount and PID namespace and its own cgroup v2
//! (`/sys/fs/cgroup/carapace/<id>`), and joins the pod's network, IPC and
//! UTS namespaces ([`podns`]). Processes are collected by the agent's
//! [`Reaper`](crate::reaper::Reaper).

pub mod cgroup;
pub mod common;
pub mod config;
pub mod create;
pub mod entry;
pub mod error;
pub mod exec;
pub mod helper;
pub mod lifecycle;
pub mod output;
pub mod path;
pub mod podns;
pub mod process;
pub mod rpc;
pub mod runtime;
pub mod seccomp;
pub mod spec;
pub mod stdio;
pub mod table;
pub mod validate;
pub mod validated;
pub mod youki;

pub use config::Config;
pub use error::ContainerError;
pub use output::OutputLease;
pub use table::Containers;
