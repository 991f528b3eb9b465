//! The pod's network on the host side (issue 12): the tap the VMM's
//! virtio-net device uses, wired to the CNI interface, and the agent's
//! ConfigureNetworkRequest.
//!
//! CNI plugins set up an interface (`eth0`, usually a veth) in the pod's
//! network namespace on the host. [`attach_tap`] creates a tap device beside
//! it in the same namespace and connects the two the way Kata's tcfilter
//! networking does: an ingress qdisc on each and a match-all u32 filter with
//! a mirred egress-redirect action each way (eth0 ingress -> tap egress,
//! tap ingress -> eth0 egress). So any CNI plugin works unmodified: frames
//! the guest sends leave through eth0 as if the pod's kernel had sent them,
//! and what arrives on eth0 goes to the guest, whose NIC has eth0's MAC and
//! IPs ([`request`]). The opened tap fd goes to the VMM, which then needs
//! neither the netns nor CAP_NET_ADMIN. The tap is not persistent: it goes
//! away with the VMM's fd (the filter on eth0 then redirects to nothing and
//! drops; CNI DEL removes eth0 with its qdisc).

pub mod link;
pub mod request;
pub mod tap;
pub mod tc;

use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::sched::{setns, CloneFlags};

use carapace_netlink::Netlink;
pub use request::{configure_network_request, PodIp, PodRoute, POD_IFNAME};

/// The tap's name inside the pod's network namespace.
pub const TAP_NAME: &str = "tap0";

/// What [`attach_tap`] made.
#[derive(Debug)]
pub struct TapAttachment {
    /// The tap (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, 12-byte vnet header),
    /// blocking and close-on-exec: clear FD_CLOEXEC (or dup it) to hand it
    /// to the VMM; the device lives as long as some fd of it is open.
    pub tap: OwnedFd,
    pub tap_name: String,
    /// The CNI interface's MAC ("aa:bb:cc:dd:ee:ff"), for the guest NIC.
    pub mac: String,
    /// The CNI interface's MTU (the tap has it too; for the guest NIC).
    pub mtu: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(
        "interface name {0:?}: not a Linux interface name (1..15 bytes, no '/', ':' or space)"
    )]
    InvalidName(String),
    #[error("network namespace {}: {source}", path.display())]
    Netns { path: PathBuf, source: std::io::Error },
    #[error(
        "no interface {name:?} in the pod's network namespace {} (did the CNI plugin create it?)",
        netns.display()
    )]
    NoInterface { name: String, netns: PathBuf },
    #[error(
        "interface {0:?} has no Ethernet MAC address: only Ethernet CNI interfaces can be wired \
         to a VM"
    )]
    NoMac(String),
    #[error("{what}: {source}")]
    Netlink { what: String, source: std::io::Error },
    #[error("create tap {name:?} (/dev/net/tun): {source}")]
    Tap { name: String, source: std::io::Error },
    #[error("the network namespace thread panicked")]
    Panicked,
}

fn nl(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NetError {
    let what = what.into();
    move |source| NetError::Netlink { what, source }
}

/// The kernel's rule for interface names (dev_valid_name).
pub fn valid_ifname(s: &str) -> bool {
    !s.is_empty()
        && s.len() < 16
        && s != "."
        && s != ".."
        && !s.bytes().any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace())
}

/// Creates the tap in the network namespace `netns` (a namespace file, as
/// the CNI code keeps it) and wires it to `cni_ifname` there. Blocks (runs
/// on a thread of its own that enters the namespace; the caller's threads
/// never change namespace): call it from `spawn_blocking`. On error nothing
/// it made is left behind.
pub fn attach_tap(netns: &Path, cni_ifname: &str) -> Result<TapAttachment, NetError> {
    if !valid_ifname(cni_ifname) {
        return Err(NetError::InvalidName(cni_ifname.to_owned()));
    }
    let ns = File::open(netns).map_err(|source| NetError::Netns { path: netns.into(), source })?;
    let (path, name) = (netns.to_path_buf(), cni_ifname.to_owned());
    std::thread::Builder::new()
        .name("netns-tap".into())
        .spawn(move || {
            setns(&ns, CloneFlags::CLONE_NEWNET)
                .map_err(|e| NetError::Netns { path: path.clone(), source: e.into() })?;
            attach_here(&path, &name)
        })
        .map_err(|e| NetError::Netns { path: netns.into(), source: e })?
        .join()
        .unwrap_or(Err(NetError::Panicked))
}

fn attach_here(netns: &Path, cni_ifname: &str) -> Result<TapAttachment, NetError> {
    let mut nl_ = Netlink::open().map_err(nl("open netlink in the pod netns"))?;
    let cni = link::by_name(&mut nl_, cni_ifname)
        .map_err(nl("list links"))?
        .ok_or_else(|| NetError::NoInterface { name: cni_ifname.into(), netns: netns.into() })?;
    let mac = cni.mac.ok_or_else(|| NetError::NoMac(cni_ifname.into()))?;
    let tap = tap::create_tap(TAP_NAME)
        .map_err(|source| NetError::Tap { name: TAP_NAME.into(), source })?;
    let tap_link = link::by_name(&mut nl_, TAP_NAME)
        .map_err(nl("list links"))?
        .ok_or_else(|| NetError::NoInterface { name: TAP_NAME.into(), netns: netns.into() })?;
    link::set_mtu_up(&mut nl_, tap_link.index, cni.mtu)
        .map_err(nl(format!("set {TAP_NAME} up with mtu {}", cni.mtu)))?;
    // The tap's qdisc and filter go with the tap (dropping `tap` on error);
    // eth0's are removed here when a later step fails.
    // A stale qdisc (of a tap whose VMM exited) is replaced: the tap above
    // could only be created because no other one of that name is open.
    tc::replace_ingress_qdisc(&mut nl_, cni.index)
        .map_err(nl(format!("add an ingress qdisc to {cni_ifname}")))?;
    let wired = (|| {
        tc::redirect_all(&mut nl_, cni.index, tap_link.index)
            .map_err(nl(format!("redirect {cni_ifname} ingress to {TAP_NAME}")))?;
        tc::add_ingress_qdisc(&mut nl_, tap_link.index)
            .map_err(nl(format!("add an ingress qdisc to {TAP_NAME}")))?;
        tc::redirect_all(&mut nl_, tap_link.index, cni.index)
            .map_err(nl(format!("redirect {TAP_NAME} ingress to {cni_ifname}")))
    })();
    if let Err(e) = wired {
        if let Err(d) = tc::del_ingress_qdisc(&mut nl_, cni.index) {
            tracing::warn!(error = %d, link = cni_ifname, "cannot remove the ingress qdisc");
        }
        return Err(e);
    }
    tracing::info!(netns = %netns.display(), cni = cni_ifname, tap = TAP_NAME, mtu = cni.mtu,
        "tap wired to the CNI interface");
    Ok(TapAttachment { tap, tap_name: TAP_NAME.into(), mac: link::mac_text(mac), mtu: cni.mtu })
}

#[cfg(test)]
mod tests;
