//! The pod's network inside the guest (issue 12): `ConfigureNetwork`.
//!
//! The host hands the guest one virtio-net NIC per pod interface, with the
//! MAC of the CNI interface it is wired to. The agent finds each NIC by
//! MAC in its own (the guest's initial) network namespace, moves it into
//! the pod's namespace ([`crate::container::podns`]; made here when no
//! container made it yet), renames it, sets its MTU and addresses (IPv6
//! without DAD, usable at once), brings it up and adds the routes, all over
//! rtnetlink ([`netlink`], [`link`]) on a thread of its own that enters the
//! pod's namespace. Then it writes the pod's hosts file ([`hosts`]), which
//! containers created afterwards get at /etc/hosts.
//!
//! A second call after a successful one is FAILED_PRECONDITION (no
//! reconfiguration of a running pod); a call that failed may be repeated:
//! NICs already moved are found in the pod's namespace, addresses and
//! routes are added with NLM_F_REPLACE.

pub mod config;
pub mod error;
pub mod hosts;
pub mod link;

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use carapace_agent_client::pb;
use nix::sched::{setns, CloneFlags};

use carapace_netlink::{mac_text, Netlink};
pub use config::NetConfig;
pub use error::NetError;

use crate::container::Containers;

/// Applies `cfg`: NICs from the calling thread's network namespace into
/// `pod_netns` (a namespace file), then everything else inside it. Runs on
/// a fresh thread (which starts in the caller's namespaces and dies with
/// the pod's entered).
pub fn apply(cfg: &NetConfig, pod_netns: &Path) -> Result<(), NetError> {
    let cfg = cfg.clone();
    let ns = pod_netns.to_path_buf();
    std::thread::spawn(move || apply_here(&cfg, &ns)).join().unwrap_or(Err(NetError::Panicked))
}

fn apply_here(cfg: &NetConfig, pod_netns: &Path) -> Result<(), NetError> {
    let nsf = File::open(pod_netns)
        .map_err(|e| NetError::io(format!("open {}", pod_netns.display()), e))?;
    let mut here = Netlink::open().map_err(NetError::nl("open netlink"))?;
    for i in &cfg.interfaces {
        if let Some(l) = link::find_by_mac(&mut here, i.mac).map_err(NetError::nl("list links"))? {
            link::move_to_netns(&mut here, l.index, nsf.as_fd())
                .map_err(NetError::nl(format!("move {} into the pod network namespace", l.name)))?;
            tracing::info!(link = %l.name, mac = %mac_text(i.mac), "NIC moved into the pod");
        }
    }
    drop(here);
    setns(&nsf, CloneFlags::CLONE_NEWNET)
        .map_err(|e| NetError::io(format!("setns {}", pod_netns.display()), e.into()))?;
    let mut pod = Netlink::open().map_err(NetError::nl("open netlink in the pod"))?;
    let mut index = Vec::new();
    for i in &cfg.interfaces {
        let l = link::find_by_mac(&mut pod, i.mac)
            .map_err(NetError::nl("list links in the pod"))?
            .ok_or_else(|| {
                NetError::NotFound(format!(
                    "no network interface with MAC {} in the guest (is the VM's virtio-net \
                     device configured with it?)",
                    mac_text(i.mac)
                ))
            })?;
        let what = |s: &str| format!("{s} ({} -> {})", l.name, i.name);
        link::set_up(&mut pod, l.index, false).map_err(NetError::nl(what("link down")))?;
        if l.name != i.name {
            link::rename(&mut pod, l.index, &i.name).map_err(NetError::nl(what("rename")))?;
        }
        if let Some(mtu) = i.mtu {
            link::set_mtu(&mut pod, l.index, mtu).map_err(NetError::nl(what("set mtu")))?;
        }
        for a in &i.addresses {
            link::add_address(&mut pod, l.index, *a)
                .map_err(NetError::nl(what(&format!("add address {}/{}", a.addr, a.prefix))))?;
        }
        link::set_up(&mut pod, l.index, true).map_err(NetError::nl(what("link up")))?;
        index.push(l.index);
    }
    for r in &cfg.routes {
        // `interface` indexes `interfaces` (NetConfig::parse), each of which
        // pushed its ifindex above.
        let (Some(&ifindex), Some(iface)) =
            (index.get(r.interface), cfg.interfaces.get(r.interface))
        else {
            return Err(NetError::Invalid("route: unknown interface".into()));
        };
        let dst =
            r.destination.map_or("default".to_owned(), |d| format!("{}/{}", d.addr, d.prefix));
        let via = r.gateway.map_or("on-link".to_owned(), |g| format!("via {g}"));
        link::add_route(&mut pod, ifindex, r.destination, r.gateway)
            .map_err(NetError::nl(format!("add route {dst} {via} dev {}", iface.name)))?;
    }
    Ok(())
}

/// ConfigureNetwork: checks the request, applies it in the pod's network
/// namespace and writes the pod's hosts file to `hosts_path`.
pub async fn configure(
    containers: &Containers,
    req: &pb::ConfigureNetworkRequest,
    hosts_path: &Path,
) -> Result<(), NetError> {
    let cfg = NetConfig::parse(req)?;
    let mut done = containers.network_lock().await;
    if *done {
        return Err(NetError::State(
            "the pod's network is already configured (ConfigureNetwork runs once per VM)".into(),
        ));
    }
    let c = containers.clone();
    let hosts: PathBuf = hosts_path.to_path_buf();
    let cfg2 = cfg.clone();
    tokio::task::spawn_blocking(move || -> Result<(), NetError> {
        let netns = c.pod_net_ns(&cfg2.hostname)?;
        apply(&cfg2, &netns)?;
        hosts::write_hosts(&hosts, &cfg2)?;
        c.set_pod_hosts(hosts);
        Ok(())
    })
    .await
    .map_err(|_| NetError::Panicked)??;
    *done = true;
    tracing::info!(
        interfaces = cfg.interfaces.len(),
        routes = cfg.routes.len(),
        "pod network configured"
    );
    Ok(())
}

#[cfg(test)]
mod tests;
