//! The virtio-vsock device: config space, activation, queue notifications.

use std::io;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, info};
use vmm_sys_util::epoll::Epoll;
use vmm_sys_util::eventfd::EventFd;

use super::muxer::{Muxer, DEFAULT_CONNECT_TIMEOUT};
use crate::device::VIRTIO_F_VERSION_1;
use crate::device::{ActivateError, DeviceQueue, GuestMemory, VirtioDevice, VirtioInterrupt};
use crate::guest_warn;
use crate::worker::{DeviceThread, WorkerError};

/// Virtio device ID of the socket device.
pub const VIRTIO_ID_VSOCK: u32 = 19;
const QUEUE_SIZE: u16 = 256;

/// Why a vsock device cannot be created.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("vsock socket path {0} is already taken")]
    SocketInUse(PathBuf),
    #[error("cannot listen on vsock socket {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
    #[error("invalid guest CID {0}: must be between 3 and 2^32-2")]
    InvalidCid(u64),
    #[error("cannot start the vsock backend: {0}")]
    Start(#[source] io::Error),
    #[error("cannot start the vsock backend: {0}")]
    Thread(#[from] WorkerError),
}

/// A virtio-vsock device whose host side is the Unix socket `uds_path`. Once activated, the
/// muxer (queues, connections, Unix sockets) lives on the device's backend thread.
pub struct Vsock {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    sizes: [u16; 3],
    connect_timeout: Duration,
    active: Option<DeviceThread<Muxer>>,
}

impl Vsock {
    /// Creates the device and listens on `uds_path` (which must not exist yet). The socket
    /// file is removed when the device is dropped.
    pub fn new(guest_cid: u64, uds_path: &Path) -> Result<Vsock, VsockError> {
        if !(3..u64::from(u32::MAX)).contains(&guest_cid) {
            return Err(VsockError::InvalidCid(guest_cid));
        }
        if uds_path.symlink_metadata().is_ok() {
            return Err(VsockError::SocketInUse(uds_path.to_path_buf()));
        }
        let listener = UnixListener::bind(uds_path).map_err(|source| {
            if source.kind() == io::ErrorKind::AddrInUse {
                VsockError::SocketInUse(uds_path.to_path_buf())
            } else {
                VsockError::Bind { path: uds_path.to_path_buf(), source }
            }
        })?;
        if let Err(source) = listener.set_nonblocking(true) {
            let _ = std::fs::remove_file(uds_path);
            return Err(VsockError::Bind { path: uds_path.to_path_buf(), source });
        }
        info!("vsock: guest cid {guest_cid}, host socket {}", uds_path.display());
        Ok(Vsock {
            guest_cid,
            uds_path: uds_path.to_path_buf(),
            listener,
            sizes: [QUEUE_SIZE; 3],
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            active: None,
        })
    }

    /// How long a host-initiated connection waits for the guest's answer (default 5 s) before
    /// its Unix stream is closed. Applies from the next activation.
    pub fn set_connect_timeout(&mut self, timeout: Duration) {
        self.connect_timeout = timeout;
    }

    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    pub fn uds_path(&self) -> &Path {
        &self.uds_path
    }

    fn start(
        &self,
        mem: GuestMemory,
        interrupt: Arc<dyn VirtioInterrupt>,
        [rx, tx, event]: [DeviceQueue; 3],
    ) -> Result<DeviceThread<Muxer>, VsockError> {
        let epoll = Arc::new(Epoll::new().map_err(VsockError::Start)?);
        let listener = self.listener.try_clone().map_err(VsockError::Start)?;
        let mut muxer = Muxer::new(
            self.guest_cid,
            self.uds_path.clone(),
            mem,
            interrupt,
            rx.queue,
            tx.queue,
            listener,
            epoll.clone(),
        )
        .map_err(VsockError::Start)?;
        muxer.set_connect_timeout(self.connect_timeout);
        let notifies: Vec<EventFd> = vec![rx.notify, tx.notify, event.notify];
        Ok(DeviceThread::spawn("vsock-backend", epoll, muxer, notifies)?)
    }

    /// Runs `f` on the backend thread with the muxer, once every notification sent so far is
    /// handled; `None` when the device is not active.
    #[cfg(test)]
    pub(crate) fn with_muxer<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Muxer) -> R + Send + 'static,
    ) -> Option<R> {
        self.active.as_ref().map(|t| t.with(f))
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.sizes
    }

    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = self.guest_cid.to_le_bytes();
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|at| config.get(at))
                .copied()
                .unwrap_or(0);
        }
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        guest_warn!("vsock: guest wrote read-only config at {offset:#x}; ignored");
    }

    fn activate(
        &mut self,
        mem: GuestMemory,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<DeviceQueue>,
        _acked_features: u64,
    ) -> Result<(), ActivateError> {
        let got = queues.len();
        let queues: [DeviceQueue; 3] =
            queues.try_into().map_err(|_| ActivateError::QueueCount { want: 3, got })?;
        // A second activation without reset replaces the first.
        self.active = None;
        // The thread handles packets the driver queued before DRIVER_OK when it starts.
        let thread =
            self.start(mem, interrupt, queues).map_err(|e| ActivateError::Backend(e.into()))?;
        self.active = Some(thread);
        debug!("vsock: activated");
        Ok(())
    }

    fn reset(&mut self) {
        // Stops the backend thread and closes every connection's Unix stream.
        self.active = None;
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        self.active = None;
        if let Err(e) = std::fs::remove_file(&self.uds_path) {
            debug!("vsock: removing {}: {e}", self.uds_path.display());
        }
    }
}
