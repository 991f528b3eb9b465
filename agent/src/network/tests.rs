//! ConfigureNetwork's netlink work, as root, in network namespaces the
//! tests make (and remove) themselves: a veth end with a known MAC stands
//! in for the guest's virtio-net NIC.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkInfo, LinkMessage,
};
use netlink_packet_route::RouteNetlinkMessage;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use tonic::Status;

use super::config::tests::request;
use super::link::{self, Link};
use super::*;
use carapace_netlink::Netlink;

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A network namespace kept by a bind mount on a file in a temp dir.
struct TestNetns {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl TestNetns {
    fn new() -> TestNetns {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("net");
        std::fs::write(&path, b"").unwrap();
        let p = path.clone();
        std::thread::spawn(move || {
            unshare(CloneFlags::CLONE_NEWNET).unwrap();
            let src = format!("/proc/self/task/{}/ns/net", nix::unistd::gettid());
            mount(Some(src.as_str()), &p, None::<&str>, MsFlags::MS_BIND, None::<&str>).unwrap();
        })
        .join()
        .unwrap();
        TestNetns { _dir: dir, path }
    }

    /// Runs `f` on a thread inside the namespace.
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let p = self.path.clone();
        std::thread::spawn(move || {
            let f0 = std::fs::File::open(&p).unwrap();
            setns(&f0, CloneFlags::CLONE_NEWNET).unwrap();
            f()
        })
        .join()
        .unwrap()
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = umount2(&self.path, MntFlags::MNT_DETACH);
    }
}

/// `ip link add <name> address <mac> type veth peer name <peer>`, both up.
fn add_veth(name: &str, mac: [u8; 6], peer: &str) {
    let mut nl = Netlink::open().unwrap();
    let mut p = LinkMessage::default();
    p.attributes.push(LinkAttribute::IfName(peer.into()));
    let mut m = LinkMessage::default();
    m.attributes.push(LinkAttribute::IfName(name.into()));
    m.attributes.push(LinkAttribute::Address(mac.to_vec()));
    m.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::Veth),
        LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(p))),
    ]));
    nl.request(RouteNetlinkMessage::NewLink(m), NLM_F_CREATE | NLM_F_EXCL).unwrap();
    for l in link::links(&mut nl).unwrap() {
        if l.name == name || l.name == peer {
            link::set_up(&mut nl, l.index, true).unwrap();
        }
    }
}

fn links_here() -> Vec<Link> {
    link::links(&mut Netlink::open().unwrap()).unwrap()
}

const MAC: [u8; 6] = [0x02, 0x42, 0x0a, 0x58, 0x00, 0x04];

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn the_nic_is_found_by_mac_moved_renamed_addressed_and_routed() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let guest = TestNetns::new();
    let pod = TestNetns::new();
    guest.run(|| add_veth("nic0", MAC, "peer0"));

    let mut req = request();
    req.routes.insert(
        0,
        pb::NetworkRoute {
            destination: "fd00::".into(),
            prefix_len: 8,
            gateway: "fd00::1".into(),
            interface: "eth0".into(),
        },
    );
    let cfg = NetConfig::parse(&req).unwrap();
    let pod_path = pod.path.clone();
    let c2 = cfg.clone();
    guest.run(move || apply(&c2, &pod_path)).unwrap();

    // Gone from the guest's namespace, the peer stays.
    let names: Vec<String> = guest.run(links_here).into_iter().map(|l| l.name).collect();
    assert!(names.contains(&"peer0".to_owned()), "{names:?}");
    assert!(!names.contains(&"nic0".to_owned()), "{names:?}");

    let (eth0, addrs, v4, v6) = pod.run(|| {
        let mut nl = Netlink::open().unwrap();
        let eth0 = link::links(&mut nl).unwrap().into_iter().find(|l| l.name == "eth0");
        let eth0 = eth0.expect("eth0 in the pod");
        let addrs = link::addresses(&mut nl, eth0.index).unwrap();
        (eth0, addrs, link::routes(&mut nl, false).unwrap(), link::routes(&mut nl, true).unwrap())
    });
    assert_eq!(eth0.mac, Some(MAC));
    assert_eq!(eth0.mtu, 1450);
    assert!(eth0.up);
    assert!(addrs.contains(&config::Cidr { addr: ip("10.88.0.4"), prefix: 16 }), "{addrs:?}");
    assert!(addrs.contains(&config::Cidr { addr: ip("fd00::4"), prefix: 64 }), "{addrs:?}");
    let oif = Some(eth0.index);
    assert!(v4.contains(&(None, 0, Some(ip("10.88.0.1")), oif)), "{v4:?}");
    assert!(v4.contains(&(Some(ip("169.254.1.1")), 32, None, oif)), "{v4:?}");
    assert!(v4.contains(&(Some(ip("10.88.0.0")), 16, None, oif)), "{v4:?}");
    assert!(v6.contains(&(Some(ip("fd00::")), 8, Some(ip("fd00::1")), oif)), "{v6:?}");
    // No DAD: the IPv6 address is usable right away (bind succeeds).
    pod.run(|| std::net::UdpSocket::bind("[fd00::4]:0").map(|_| ())).unwrap();

    // A failed call may be repeated: the NIC is found in the pod already.
    let pod_path = pod.path.clone();
    guest.run(move || apply(&cfg, &pod_path)).unwrap();
}

#[test]
fn a_mac_no_nic_has_is_not_found() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let guest = TestNetns::new();
    let pod = TestNetns::new();
    let cfg = NetConfig::parse(&request()).unwrap();
    let p = pod.path.clone();
    let e = guest.run(move || apply(&cfg, &p)).unwrap_err();
    assert!(matches!(e, NetError::NotFound(_)), "{e}");
    let s: Status = e.into();
    assert_eq!(s.code(), tonic::Code::NotFound);
    assert!(s.message().contains("02:42:0a:58:00:04"), "{}", s.message());
}

#[test]
fn a_missing_pod_namespace_is_an_error() {
    let cfg = NetConfig::parse(&request()).unwrap();
    let e = apply(&cfg, Path::new("/nonexistent/carapace/net")).unwrap_err();
    assert!(matches!(e, NetError::Io { .. }), "{e}");
}

#[tokio::test]
async fn configure_checks_the_request_first_and_needs_a_guest() {
    let c = Containers::disabled("test");
    let d = tempfile::tempdir().unwrap();
    let hosts = d.path().join("hosts");
    let mut bad = request();
    bad.interfaces[0].name = "../x".into();
    let s: Status = configure(&c, &bad, &hosts).await.unwrap_err().into();
    assert_eq!(s.code(), tonic::Code::InvalidArgument);
    let s: Status = configure(&c, &request(), &hosts).await.unwrap_err().into();
    assert_eq!(s.code(), tonic::Code::FailedPrecondition, "{}", s.message());
    assert!(!hosts.exists());
}
