//! attach_tap as root, only in network namespaces the tests make (and
//! remove): a veth pair stands in for the CNI interface (`eth0`) and the
//! host end of its peer (`peer0`, in the same namespace); frames are
//! written to and read from the tap fd and an AF_PACKET socket on the peer.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkInfo, LinkMessage,
};
use netlink_packet_route::RouteNetlinkMessage;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

use super::*;

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

    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let p = self.path.clone();
        std::thread::spawn(move || {
            setns(File::open(&p).unwrap(), CloneFlags::CLONE_NEWNET).unwrap();
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

const MAC: [u8; 6] = [0x02, 0x42, 0x0a, 0x58, 0x00, 0x04];
const PEER_MAC: [u8; 6] = [0x02, 0x42, 0x0a, 0x58, 0x00, 0x01];

/// `ip link add eth0 address MAC mtu 1400 type veth peer name peer0`, up.
fn add_veth() {
    let mut nl = Netlink::open().unwrap();
    let mut p = LinkMessage::default();
    p.attributes.push(LinkAttribute::IfName("peer0".into()));
    p.attributes.push(LinkAttribute::Address(PEER_MAC.to_vec()));
    let mut m = LinkMessage::default();
    m.attributes.push(LinkAttribute::IfName("eth0".into()));
    m.attributes.push(LinkAttribute::Address(MAC.to_vec()));
    m.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::Veth),
        LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(p))),
    ]));
    nl.request(RouteNetlinkMessage::NewLink(m), NLM_F_CREATE | NLM_F_EXCL).unwrap();
    for l in link::links(&mut nl).unwrap() {
        if l.name == "eth0" || l.name == "peer0" {
            link::set_mtu_up(&mut nl, l.index, 1400).unwrap();
        }
    }
}

fn link_names() -> Vec<String> {
    link::links(&mut Netlink::open().unwrap()).unwrap().into_iter().map(|l| l.name).collect()
}

/// An AF_PACKET socket bound to `ifname` of the calling thread's netns.
fn packet_socket(ifname: &str) -> OwnedFd {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: socket(2); owned at once.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
    assert!(raw >= 0, "{}", std::io::Error::last_os_error());
    // SAFETY: a fresh fd.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let index = link::by_name(&mut Netlink::open().unwrap(), ifname).unwrap().unwrap().index;
    // SAFETY: sockaddr_ll is plain old data.
    let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sa.sll_family = libc::AF_PACKET as u16;
    sa.sll_protocol = proto;
    sa.sll_ifindex = index as i32;
    // SAFETY: bind with a sockaddr_ll of the right size.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &sa as *const libc::sockaddr_ll as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
    fd
}

fn write_all(fd: &OwnedFd, buf: &[u8]) {
    // SAFETY: write(2) from a valid buffer.
    let n = unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
    assert_eq!(n, buf.len() as isize, "{}", std::io::Error::last_os_error());
}

/// Reads packets from `fd` until one contains `needle` (Some: that packet)
/// or 5 s passed (None). Other traffic (IPv6 router solicitations of the
/// links coming up) is skipped.
fn read_until(fd: &OwnedFd, needle: &[u8]) -> Option<Vec<u8>> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = vec![0u8; 65536];
    while Instant::now() < deadline {
        let mut p = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: poll on one pollfd we own.
        if unsafe { libc::poll(&mut p, 1, 200) } <= 0 {
            continue;
        }
        // SAFETY: read(2) into our buffer.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            continue;
        }
        let pkt = &buf[..n as usize];
        if pkt.windows(needle.len()).any(|w| w == needle) {
            return Some(pkt.to_vec());
        }
    }
    None
}

/// An Ethernet frame of the local experimental EtherType 0x88b5.
fn frame(dst: [u8; 6], src: [u8; 6], payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x88, 0xb5]);
    f.extend_from_slice(payload);
    f.resize(f.len().max(60), 0);
    f
}

#[test]
fn frames_cross_between_the_tap_and_the_cni_interface_both_ways() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let ns = TestNetns::new();
    ns.run(add_veth);
    let att = attach_tap(&ns.path, "eth0").unwrap();
    assert_eq!(att.mac, "02:42:0a:58:00:04");
    assert_eq!(att.mtu, 1400);
    assert_eq!(att.tap_name, "tap0");
    let (tap, kinds_eth0, kinds_tap) = ns.run(|| {
        let mut nl = Netlink::open().unwrap();
        let tap = link::by_name(&mut nl, "tap0").unwrap().unwrap();
        let eth0 = link::by_name(&mut nl, "eth0").unwrap().unwrap();
        (
            tap.clone(),
            tc::ingress_filter_kinds(&mut nl, eth0.index).unwrap(),
            tc::ingress_filter_kinds(&mut nl, tap.index).unwrap(),
        )
    });
    assert!(tap.up);
    assert_eq!(tap.mtu, 1400);
    assert!(kinds_eth0.iter().any(|k| k == "u32"), "{kinds_eth0:?}");
    assert!(kinds_tap.iter().any(|k| k == "u32"), "{kinds_tap:?}");

    let peer = ns.run(|| packet_socket("peer0"));

    // Guest -> world: a frame written to the tap (after a zero vnet header)
    // leaves through eth0 and arrives at its peer.
    let out = frame(PEER_MAC, MAC, b"carapace guest to peer");
    let mut with_hdr = vec![0u8; tap::VNET_HDR_LEN as usize];
    with_hdr.extend_from_slice(&out);
    write_all(&att.tap, &with_hdr);
    let got = read_until(&peer, b"carapace guest to peer").expect("frame at the peer");
    assert_eq!(&got[..out.len()], &out[..]);

    // World -> guest: a frame sent into the peer arrives on eth0 and comes
    // out of the tap fd, behind its vnet header.
    let inb = frame(MAC, PEER_MAC, b"carapace peer to guest");
    write_all(&peer, &inb);
    let got = read_until(&att.tap, b"carapace peer to guest").expect("frame at the tap");
    let hdr = tap::VNET_HDR_LEN as usize;
    assert_eq!(&got[hdr..hdr + inb.len()], &inb[..]);

    // The tap lives as long as its fd.
    drop(att);
    assert!(!ns.run(link_names).contains(&"tap0".to_owned()));
}

#[test]
fn errors_name_what_is_missing_and_leave_nothing_behind() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let e = attach_tap(Path::new("/nonexistent/carapace/netns"), "eth0").unwrap_err();
    assert!(matches!(e, NetError::Netns { .. }), "{e}");
    let ns = TestNetns::new();
    let e = attach_tap(&ns.path, "eth0").unwrap_err();
    assert!(matches!(e, NetError::NoInterface { .. }), "{e}");
    assert!(e.to_string().contains("\"eth0\""), "{e}");
    assert!(matches!(attach_tap(&ns.path, "a/b"), Err(NetError::InvalidName(_))));
    // A file that is not a network namespace.
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("plain");
    std::fs::write(&f, b"").unwrap();
    assert!(matches!(attach_tap(&f, "eth0"), Err(NetError::Netns { .. })));

    // A second attach while the first tap is open fails and leaves the
    // first one's wiring alone.
    ns.run(add_veth);
    let first = attach_tap(&ns.path, "eth0").unwrap();
    let e = attach_tap(&ns.path, "eth0").unwrap_err();
    assert!(matches!(e, NetError::Tap { .. }), "{e}");
    let kinds = ns.run(|| {
        let mut nl = Netlink::open().unwrap();
        let eth0 = link::by_name(&mut nl, "eth0").unwrap().unwrap();
        tc::ingress_filter_kinds(&mut nl, eth0.index).unwrap()
    });
    assert!(kinds.iter().any(|k| k == "u32"), "{kinds:?}");
    drop(first);

    // Once the first tap is gone (its VMM exited), a new attach replaces
    // the stale wiring on eth0.
    let again = attach_tap(&ns.path, "eth0").unwrap();
    let names = ns.run(link_names);
    assert!(names.contains(&"tap0".to_owned()), "{names:?}");
    drop(again);
}
