//! The host end of the NIC: an already-open tap file descriptor (IFF_TAP | IFF_NO_PI |
//! IFF_VNET_HDR), opened by whoever set up the pod's network. The VMM never creates, names or
//! configures the interface; it only reads and writes frames and sets the per-fd options that
//! need no privilege (vnet header size, offloads).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::header::VNET_HDR_LEN;

/// Why a descriptor cannot back the NIC.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("file descriptor {fd} is not open")]
    NotOpen { fd: RawFd },
    #[error("file descriptor {fd} is not an attached tun/tap device (TUNGETIFF: {source})")]
    NotTun { fd: RawFd, source: io::Error },
    #[error("file descriptor {fd} is tun device {name}, not a tap (IFF_TAP)")]
    NotTap { fd: RawFd, name: String },
    #[error("tap {name} (fd {fd}) was opened without {flag}")]
    MissingFlag { fd: RawFd, name: String, flag: &'static str },
    #[error("tap {name}: {op} failed: {source}")]
    Ioctl { name: String, op: &'static str, source: io::Error },
    #[error("cannot duplicate file descriptor {fd}: {source}")]
    Dup { fd: RawFd, source: io::Error },
}

/// What TUNGETIFF says about a tun/tap descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapInfo {
    /// Interface name (in whatever network namespace the tap lives in).
    pub name: String,
    /// IFF_* flags the descriptor was opened with.
    pub flags: i32,
}

/// Reads the interface of tun/tap descriptor `fd` and checks it is a tap with IFF_VNET_HDR
/// (IFF_NO_PI is expected too but cannot be seen). Only looks at the descriptor (no ownership
/// is taken).
pub fn check_tap_fd(fd: RawFd) -> Result<TapInfo, TapError> {
    // SAFETY: F_GETFD on any integer only reads the descriptor table.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(TapError::NotOpen { fd });
    }
    // SAFETY: an all-zero ifreq is valid; TUNGETIFF writes at most one ifreq into it.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    // SAFETY: `ifr` is a valid, writable ifreq for the duration of the call.
    if unsafe { libc::ioctl(fd, libc::TUNGETIFF, &mut ifr) } < 0 {
        return Err(TapError::NotTun { fd, source: io::Error::last_os_error() });
    }
    let name: String =
        ifr.ifr_name.iter().take_while(|c| **c != 0).map(|c| char::from(*c as u8)).collect();
    // SAFETY: TUNGETIFF fills ifru_flags of the union.
    let flags = i32::from(unsafe { ifr.ifr_ifru.ifru_flags }) & 0xffff;
    if flags & libc::IFF_TAP == 0 {
        return Err(TapError::NotTap { fd, name });
    }
    // IFF_NO_PI cannot be checked: TUNGETIFF reports that bit for every tun descriptor on
    // current kernels. Without it frames would be misframed, which breaks only this NIC.
    if flags & libc::IFF_VNET_HDR == 0 {
        return Err(TapError::MissingFlag { fd, name, flag: "IFF_VNET_HDR" });
    }
    Ok(TapInfo { name, flags })
}

/// A duplicate (close-on-exec) of descriptor `fd`, owned by the caller; `fd` is left alone.
pub fn dup_fd(fd: RawFd) -> Result<OwnedFd, TapError> {
    // SAFETY: F_DUPFD_CLOEXEC creates a new descriptor and touches no memory.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if new < 0 {
        return Err(TapError::Dup { fd, source: io::Error::last_os_error() });
    }
    // SAFETY: `new` was just created by this process and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// The tap the NIC reads and writes frames through (each prefixed by the 12-byte
/// `virtio_net_hdr_v1`), non-blocking.
#[derive(Debug)]
pub struct Tap {
    fd: OwnedFd,
    name: String,
}

impl Tap {
    /// Takes over `fd` after checking it (see [`check_tap_fd`]); makes it non-blocking and sets
    /// its vnet header size to the virtio 1.x header.
    pub fn new(fd: OwnedFd) -> Result<Tap, TapError> {
        let info = check_tap_fd(fd.as_raw_fd())?;
        let tap = Tap { fd, name: info.name };
        // SAFETY: F_GETFL/F_SETFL on our descriptor touch no memory.
        let flags = unsafe { libc::fcntl(tap.raw(), libc::F_GETFL) };
        if flags < 0
            || unsafe { libc::fcntl(tap.raw(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0
        {
            return Err(tap.ioctl_error("O_NONBLOCK"));
        }
        let size = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int from the pointer.
        if unsafe { libc::ioctl(tap.raw(), libc::TUNSETVNETHDRSZ, &size) } < 0 {
            return Err(tap.ioctl_error("TUNSETVNETHDRSZ"));
        }
        Ok(tap)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn ioctl_error(&self, op: &'static str) -> TapError {
        TapError::Ioctl { name: self.name.clone(), op, source: io::Error::last_os_error() }
    }

    /// TUNSETOFFLOAD: which TUN_F_* offloads the frames read from the tap may carry.
    pub fn set_offload(&self, tun_flags: u32) -> Result<(), TapError> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        if unsafe { libc::ioctl(self.raw(), libc::TUNSETOFFLOAD, libc::c_ulong::from(tun_flags)) }
            < 0
        {
            return Err(self.ioctl_error("TUNSETOFFLOAD"));
        }
        Ok(())
    }

    /// The offload sets the tap accepts, tried from the largest down (CSUM+TSO4+TSO6, then
    /// CSUM alone); the tap is left with no offloads.
    pub fn probe_offloads(&self) -> u32 {
        let full = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;
        let accepted = [full, libc::TUN_F_CSUM]
            .into_iter()
            .find(|flags| self.set_offload(*flags).is_ok())
            .unwrap_or(0);
        if let Err(e) = self.set_offload(0) {
            tracing::warn!("virtio-net: {e}");
        }
        accepted
    }

    /// Reads one frame (header included); `WouldBlock` when none is queued.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // SAFETY: `buf` is valid and writable for `buf.len()` bytes.
            let n = unsafe { libc::read(self.raw(), buf.as_mut_ptr().cast(), buf.len()) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Writes one frame (header included); `WouldBlock` when the tap has no room.
    pub fn write(&self, frame: &[u8]) -> io::Result<usize> {
        loop {
            // SAFETY: `frame` is valid for `frame.len()` bytes.
            let n = unsafe { libc::write(self.raw(), frame.as_ptr().cast(), frame.len()) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.raw()
    }
}
