//! virtio-fs (device ID 26): one host directory shared into the guest, served in the VMM by
//! fuse-backend-rs's passthrough file system.
//!
//! Two queues: hiprio (FORGET, interrupts) and one request queue. The device's thread owns
//! them and wakes up on their notification eventfds (signalled by KVM, never a vCPU-side
//! call); it pops descriptor chains, hands each to the FUSE server and returns it to the used
//! ring. Everything in a chain is untrusted: a malformed chain or
//! FUSE message is returned with nothing written and logged, never a panic.
//!
//! What the guest may create on the host (no device nodes, no setuid/setgid, xattrs only in
//! `user.*`) is decided in [`policy`], which wraps the passthrough file system.

mod limits;
mod memory;
mod passthrough;
mod policy;
mod worker;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::{debug, info, warn};
use vmm_sys_util::epoll::Epoll;

use crate::device::VIRTIO_F_VERSION_1;
use crate::device::{ActivateError, DeviceQueue, GuestMemory, VirtioDevice, VirtioInterrupt};
use crate::guest_warn;
use crate::worker::DeviceThread;

pub use memory::MemoryViewError;
pub use passthrough::{SharedDirError, SharedDirProblem, FS_CACHE_TIMEOUT};
use worker::Context;
#[cfg(feature = "fuzz-hooks")]
pub(crate) use worker::Context as FuzzContext;

/// Virtio device ID of the file system device.
pub const VIRTIO_ID_FS: u32 = 26;
/// Size of the tag field of the configuration space.
pub const FS_TAG_LEN: usize = 36;
/// Request queues offered (besides the hiprio queue).
pub const FS_REQUEST_QUEUES: u32 = 1;
const QUEUE_SIZE: u16 = 1024;
const QUEUE_COUNT: usize = 1 + FS_REQUEST_QUEUES as usize;
/// Default bound on the soft RLIMIT_NOFILE the device sets (see [`Fs::with_open_file_limit`]).
pub const FS_OPEN_FILE_LIMIT: u64 = 65536;

/// Why a virtio-fs device cannot be created or started.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("virtio-fs tag {0:?} must be 1 to {FS_TAG_LEN} bytes without NUL")]
    InvalidTag(String),
    #[error(transparent)]
    SharedDir(#[from] SharedDirError),
    #[error("virtio-fs guest memory view: {0}")]
    Memory(#[from] MemoryViewError),
    #[error("virtio-fs worker thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// The file system device exposing `shared_dir` under `tag`.
pub struct Fs {
    tag: String,
    config: [u8; FS_TAG_LEN + 4],
    shared_dir: PathBuf,
    sizes: [u16; QUEUE_COUNT],
    active: Option<DeviceThread<Context>>,
}

impl Fs {
    /// Creates the device. `shared_dir` must be an existing directory with a UTF-8 path; it
    /// is resolved now (symlinks included), so the guest sees what it pointed to at creation.
    /// The open file limit is [`FS_OPEN_FILE_LIMIT`].
    pub fn new(tag: &str, shared_dir: &Path) -> Result<Fs, FsError> {
        Fs::with_open_file_limit(tag, shared_dir, FS_OPEN_FILE_LIMIT)
    }

    /// [`Fs::new`] with the process's soft RLIMIT_NOFILE set to `open_files` or the hard limit,
    /// whichever is lower. The passthrough file system holds one O_PATH descriptor per inode
    /// the guest has looked up (and one per open file), so this bounds what a guest can pin on
    /// the host: descriptors and the inode table behind them. Past it, the guest's lookups
    /// fail with EMFILE; the rest of the VMM opens no files after start-up.
    pub fn with_open_file_limit(
        tag: &str,
        shared_dir: &Path,
        open_files: u64,
    ) -> Result<Fs, FsError> {
        if tag.is_empty() || tag.len() > FS_TAG_LEN || tag.contains('\0') {
            return Err(FsError::InvalidTag(tag.to_string()));
        }
        let bad = |problem| FsError::from(SharedDirError::new(shared_dir, problem));
        let resolved = shared_dir.canonicalize().map_err(|e| bad(SharedDirProblem::Resolve(e)))?;
        if !resolved.is_dir() {
            return Err(bad(SharedDirProblem::NotADirectory));
        }
        if resolved.to_str().is_none() {
            return Err(bad(SharedDirProblem::NotUtf8));
        }
        let mut config = [0u8; FS_TAG_LEN + 4];
        if let Some(dst) = config.get_mut(..tag.len()) {
            dst.copy_from_slice(tag.as_bytes());
        }
        if let Some(dst) = config.get_mut(FS_TAG_LEN..) {
            dst.copy_from_slice(&FS_REQUEST_QUEUES.to_le_bytes());
        }
        set_open_file_limit(open_files);
        info!(tag, dir = %resolved.display(), "virtio-fs: sharing directory");
        Ok(Fs {
            tag: tag.to_string(),
            config,
            shared_dir: resolved,
            sizes: [QUEUE_SIZE; QUEUE_COUNT],
            active: None,
        })
    }

    pub fn tag(&self) -> &str {
        &self.tag
    }

    pub fn shared_dir(&self) -> &Path {
        &self.shared_dir
    }
}

/// The soft limit to set: `want`, at most the hard limit.
fn open_file_limit(want: u64, hard: u64) -> u64 {
    want.min(hard)
}

/// Sets the soft RLIMIT_NOFILE to [`open_file_limit`] (raised or lowered). Failure only costs
/// capacity, or leaves the limit the process was started with.
fn set_open_file_limit(want: u64) {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit read and write a local, initialised rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return;
        }
        let target = open_file_limit(want, lim.rlim_max);
        if lim.rlim_cur == target {
            return;
        }
        let old = lim.rlim_cur;
        lim.rlim_cur = target;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
            debug!(from = old, to = target, "virtio-fs: set the open file limit");
        } else {
            warn!("virtio-fs: cannot set the open file limit: {}", std::io::Error::last_os_error());
        }
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.sizes
    }

    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|at| self.config.get(at))
                .copied()
                .unwrap_or(0);
        }
    }

    fn write_config(&mut self, offset: u64, _data: &[u8]) {
        guest_warn!("virtio-fs: guest wrote read-only config at {offset:#x}; ignored");
    }

    fn activate(
        &mut self,
        mem: GuestMemory,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<DeviceQueue>,
        _acked_features: u64,
    ) -> Result<(), ActivateError> {
        if queues.len() != QUEUE_COUNT {
            return Err(ActivateError::QueueCount { want: QUEUE_COUNT, got: queues.len() });
        }
        // A second activation without reset replaces the first.
        self.active = None;
        let (queues, notifies): (Vec<_>, Vec<_>) =
            queues.into_iter().map(|q| (q.queue, q.notify)).unzip();
        let ctx = Context::new(&mem, &queues, &self.shared_dir, interrupt)
            .map_err(|e| ActivateError::Backend(e.into()))?;
        let epoll = Epoll::new().map_err(|e| ActivateError::Backend(e.into()))?;
        // The thread serves requests the driver queued before DRIVER_OK when it starts.
        let thread = DeviceThread::spawn("virtio-fs", Arc::new(epoll), ctx, notifies)
            .map_err(|e| ActivateError::Backend(e.into()))?;
        self.active = Some(thread);
        debug!("virtio-fs: activated");
        Ok(())
    }

    fn reset(&mut self) {
        // Stops and joins the thread; the FUSE session (open files, inodes) goes with it.
        self.active = None;
    }
}
