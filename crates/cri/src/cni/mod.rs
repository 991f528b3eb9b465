//! Pod networking on the host, as containerd's CRI plugin does it with CNI: the network config
//! from the conf dir ([`loader`], [`netconf`]), a named netns per pod ([`netns`]), the plugin
//! chain's ADD/DEL ([`exec`], [`runtime_config`], [`result`]) and the on-disk record of what an
//! ADD used ([`cache`]), put together by [`manager::CniManager`].

pub mod cache;
pub mod error;
pub mod exec;
pub mod loader;
pub mod manager;
pub mod netconf;
pub mod netns;
pub mod quantity;
pub mod result;
pub mod runtime_config;

#[cfg(test)]
mod plugin_tests;

pub use crate::config::cni::CniConfig;
pub use cache::PodIdentity;
pub use error::{CniError, PluginError};
pub use manager::{
    CniManager, NetworkStatus, PodNetwork, DEFAULT_IFNAME, DISABLED_MESSAGE, NOT_READY_REASON,
};
pub use result::{CniResult, Interface, IpConfig, IpNet};
