//! The virtio-fs device thread's work: FUSE requests from the queues to the passthrough file
//! system.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::Arc;

use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::passthrough::PassthroughFs;
use fuse_backend_rs::transport::{Reader, VirtioFsWriter};
use tracing::error;
use virtio_queue_fs::{DescriptorChain, QueueT};

use super::memory::{convert_queue, FsGuestMemory, FsQueue, MemoryView, MemoryViewError};
use super::passthrough::{passthrough_fs, SharedDirError};
use super::policy::HostSafeFs;
use crate::device::{GuestMemory, VirtioInterrupt};
use crate::guest_warn;
use crate::worker::DeviceWorker;

/// Why the device thread's context cannot be built.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ContextError {
    #[error("virtio-fs guest memory view: {0}")]
    Memory(#[from] MemoryViewError),
    #[error(transparent)]
    SharedDir(#[from] SharedDirError),
}

/// The file system the guest talks to.
pub(crate) type SharedFs = HostSafeFs<PassthroughFs<()>>;

/// Everything the device thread needs: memory view, queues, FUSE server, interrupt.
pub(crate) struct Context {
    queues: Vec<FsQueue>,
    server: Server<SharedFs>,
    interrupt: Arc<dyn VirtioInterrupt>,
    memory: MemoryView,
}

impl Context {
    pub fn new(
        mem: &GuestMemory,
        queues: &[virtio_queue::Queue],
        shared_dir: &Path,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<Context, ContextError> {
        let memory = MemoryView::new(mem)?;
        let queues = queues.iter().map(convert_queue).collect::<Result<Vec<_>, _>>()?;
        let server = Server::new(HostSafeFs::new(passthrough_fs(shared_dir)?));
        Ok(Context { queues, server, interrupt, memory })
    }

    /// Serves every available request of every queue; one interrupt if anything was used.
    pub fn process_all(&mut self) {
        let mem = self.memory.get();
        let mut used_any = false;
        for (index, queue) in self.queues.iter_mut().enumerate() {
            used_any |= process_queue(&self.server, mem, queue, index);
        }
        if used_any {
            self.interrupt.signal_used_queue();
        }
    }
}

/// Serves the available requests of one queue; returns whether any buffer was used.
fn process_queue(
    server: &Server<SharedFs>,
    mem: &FsGuestMemory,
    queue: &mut FsQueue,
    index: usize,
) -> bool {
    let mut used_any = false;
    while let Some(chain) = queue.pop_descriptor_chain(mem) {
        let head = chain.head_index();
        let written = handle_chain(server, mem, chain, index);
        if let Err(e) = queue.add_used(mem, head, written) {
            guest_warn!("virtio-fs: queue {index}: cannot return buffer {head}: {e}");
        }
        used_any = true;
    }
    used_any
}

/// One FUSE request; returns the number of bytes written into the chain's writable buffers.
fn handle_chain(
    server: &Server<SharedFs>,
    mem: &FsGuestMemory,
    chain: DescriptorChain<&FsGuestMemory>,
    index: usize,
) -> u32 {
    let reader = match Reader::from_descriptor_chain(mem, chain.clone()) {
        Ok(r) => r,
        Err(e) => {
            guest_warn!("virtio-fs: queue {index}: malformed request dropped: {e}");
            return 0;
        }
    };
    let writer = match VirtioFsWriter::new(mem, chain) {
        Ok(w) => w,
        Err(e) => {
            guest_warn!("virtio-fs: queue {index}: malformed reply buffers, request dropped: {e}");
            return 0;
        }
    };
    // The FUSE server is hardened against hostile messages; a panic in it must still not take
    // the VMM down: the request is dropped and the device keeps serving.
    let result =
        catch_unwind(AssertUnwindSafe(|| server.handle_message(reader, writer.into(), None, None)));
    match result {
        Ok(Ok(n)) => u32::try_from(n).unwrap_or(u32::MAX),
        Ok(Err(e)) => {
            guest_warn!("virtio-fs: queue {index}: request failed: {e}");
            0
        }
        Err(_) => {
            error!("virtio-fs: queue {index}: FUSE server panicked on a request; dropped");
            0
        }
    }
}

impl DeviceWorker for Context {
    fn queue_notified(&mut self, _index: usize) {
        self.process_all();
    }
}
