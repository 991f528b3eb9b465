//! Test fixture: a real tap in a network namespace the test makes for itself (a thread
//! unshares CLONE_NEWNET, opens /dev/net/tun there and exits; the descriptors keep the
//! namespace alive and it vanishes with them), plus a packet socket on that tap to see and
//! make the host side's traffic.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// Name of the tap inside its namespace.
pub const TAP_NAME: &str = "cptap0";
/// EtherType the tests' frames carry (IEEE local experimental).
pub const TEST_ETHERTYPE: u16 = 0x88b5;

pub struct TestTap {
    /// The /dev/net/tun descriptor (what the device gets).
    pub tap: OwnedFd,
    /// AF_PACKET socket bound to the tap's interface.
    pub packet: OwnedFd,
}

fn check(rc: libc::c_int, what: &str) -> io::Result<libc::c_int> {
    if rc < 0 {
        let e = io::Error::last_os_error();
        Err(io::Error::new(e.kind(), format!("{what}: {e}")))
    } else {
        Ok(rc)
    }
}

fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: an all-zero ifreq is valid.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    ifr
}

fn open_tun_here(flags: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain open(2) of a NUL-terminated path.
    let fd = check(
        unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) },
        "open /dev/net/tun",
    )?;
    // SAFETY: fd was just opened and is ours.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut ifr = ifreq(TAP_NAME);
    ifr.ifr_ifru.ifru_flags = flags as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one ifreq.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut ifr) }, "TUNSETIFF")?;
    Ok(fd)
}

fn in_new_netns<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    std::thread::spawn(move || {
        // SAFETY: unshare affects only this thread, which exits right after `f`.
        check(unsafe { libc::unshare(libc::CLONE_NEWNET) }, "unshare(CLONE_NEWNET)")?;
        f()
    })
    .join()
    .map_err(|_| io::Error::other("netns thread panicked"))?
}

/// A tun/tap descriptor opened with `flags` in a fresh namespace (for validation tests).
pub fn open_tun(flags: i32) -> OwnedFd {
    in_new_netns(move || open_tun_here(flags)).expect("tun in a new netns")
}

/// A tap (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR), up, with a packet socket on it.
pub fn test_tap() -> TestTap {
    in_new_netns(|| {
        // No IPv6 on the tap: no router solicitations or MLD reports on the wire.
        let _ = std::fs::write("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1");
        let tap = open_tun_here(libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR)?;
        // SAFETY: socket(2) with constant arguments.
        let ctl = check(
            unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) },
            "socket",
        )?;
        // SAFETY: ctl was just created and is ours.
        let ctl = unsafe { OwnedFd::from_raw_fd(ctl) };
        let mut ifr = ifreq(TAP_NAME);
        // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS/SIOCGIFINDEX read and write one ifreq.
        unsafe {
            check(libc::ioctl(ctl.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr), "SIOCGIFFLAGS")?;
            ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            check(libc::ioctl(ctl.as_raw_fd(), libc::SIOCSIFFLAGS, &mut ifr), "SIOCSIFFLAGS")?;
        }
        let mut ifr = ifreq(TAP_NAME);
        // SAFETY: as above.
        check(unsafe { libc::ioctl(ctl.as_raw_fd(), libc::SIOCGIFINDEX, &mut ifr) }, "index")?;
        // SAFETY: SIOCGIFINDEX filled ifru_ifindex.
        let ifindex = unsafe { ifr.ifr_ifru.ifru_ifindex };
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: socket(2) with constant arguments.
        let packet = check(
            unsafe {
                libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto.into())
            },
            "socket(AF_PACKET)",
        )?;
        // SAFETY: packet was just created and is ours.
        let packet = unsafe { OwnedFd::from_raw_fd(packet) };
        // SAFETY: an all-zero sockaddr_ll is valid.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = ifindex;
        let len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: `sll` is a valid sockaddr_ll of `len` bytes.
        check(
            unsafe { libc::bind(packet.as_raw_fd(), (&raw const sll).cast(), len) },
            "bind(AF_PACKET)",
        )?;
        let tv = libc::timeval { tv_sec: 0, tv_usec: 200_000 };
        // SAFETY: SO_RCVTIMEO reads one timeval.
        check(
            unsafe {
                libc::setsockopt(
                    packet.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    (&raw const tv).cast(),
                    std::mem::size_of::<libc::timeval>() as libc::socklen_t,
                )
            },
            "SO_RCVTIMEO",
        )?;
        Ok(TestTap { tap, packet })
    })
    .expect("test tap in a new netns")
}

impl TestTap {
    /// A duplicate of the tap descriptor for the device.
    pub fn tap_fd(&self) -> OwnedFd {
        self.tap.try_clone().expect("dup tap")
    }

    /// Transmits `frame` on the tap's interface: it comes out of the tap descriptor.
    pub fn send(&self, frame: &[u8]) {
        // SAFETY: `frame` is valid for its length.
        let n =
            unsafe { libc::send(self.packet.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(n, frame.len() as isize, "send: {}", io::Error::last_os_error());
    }

    /// The next frame of the test EtherType the interface received (what was written to the
    /// tap descriptor), waiting up to `limit`.
    pub fn recv_test_frame(&self, limit: Duration) -> Option<Vec<u8>> {
        let deadline = std::time::Instant::now() + limit;
        let mut buf = vec![0u8; 70000];
        while std::time::Instant::now() < deadline {
            let fd: RawFd = self.packet.as_raw_fd();
            // SAFETY: `buf` is valid and writable for its length.
            let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n >= 14 {
                let frame = &buf[..n as usize];
                if u16::from_be_bytes([frame[12], frame[13]]) == TEST_ETHERTYPE {
                    return Some(frame.to_vec());
                }
            }
        }
        None
    }
}

/// An Ethernet frame of `len` bytes (at least 14) with the test EtherType and a payload
/// pattern seeded by `seed`.
pub fn test_frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f = vec![0u8; len.max(14)];
    f[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x02]);
    f[12..14].copy_from_slice(&TEST_ETHERTYPE.to_be_bytes());
    for (i, b) in f.iter_mut().enumerate().skip(14) {
        *b = seed.wrapping_add(i as u8);
    }
    f
}
