//! A tap device from /dev/net/tun in the calling thread's network namespace.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// The virtio-net header the VMM reads and writes in front of every frame
/// (`struct virtio_net_hdr_v1`, with `num_buffers`: 12 bytes).
pub const VNET_HDR_LEN: i32 = 12;

/// Creates the tap `name` (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, vnet header of
/// [`VNET_HDR_LEN`] bytes). Not persistent: the device goes away when the
/// last fd of it is closed. The fd is blocking and close-on-exec.
pub fn create_tap(name: &str) -> io::Result<OwnedFd> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "tap name: 1..15 bytes"));
    }
    // SAFETY: open(2) of a constant NUL-terminated path; the fd is owned at once.
    let raw = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: raw is a fresh fd nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, b) in name.bytes().enumerate() {
        ifr.ifr_name[i] = b as libc::c_char;
    }
    ifr.ifr_ifru.ifru_flags =
        (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes the ifreq we own.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut ifr) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let len: libc::c_int = VNET_HDR_LEN;
    // SAFETY: TUNSETVNETHDRSZ reads the int we own.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETVNETHDRSZ, &len) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}
