//! The vsock backend thread: waits on the Unix sockets (epoll) and drives the muxer.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use tracing::{debug, error, warn};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::muxer::{Muxer, TOKEN_STOP};

/// Wake up at least this often to run timeouts.
const TICK_MS: i32 = 200;
const MAX_EVENTS: usize = 64;

/// Locks the muxer even if another thread panicked while holding it (its state stays usable:
/// every muxer operation leaves it consistent between packets).
pub fn lock(muxer: &Mutex<Muxer>) -> std::sync::MutexGuard<'_, Muxer> {
    muxer.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A running backend thread; dropping it stops and joins the thread.
pub struct Backend {
    stop: EventFd,
    handle: Option<JoinHandle<()>>,
}

impl Backend {
    pub fn spawn(muxer: Arc<Mutex<Muxer>>, epoll: Arc<Epoll>) -> io::Result<Backend> {
        let stop = EventFd::new(libc::EFD_NONBLOCK)?;
        epoll.ctl(
            ControlOperation::Add,
            stop.as_raw_fd(),
            EpollEvent::new(EventSet::IN, TOKEN_STOP),
        )?;
        let handle = std::thread::Builder::new()
            .name("vsock-backend".into())
            .spawn(move || run(&muxer, &epoll))?;
        Ok(Backend { stop, handle: Some(handle) })
    }
}

fn run(muxer: &Mutex<Muxer>, epoll: &Epoll) {
    let mut events = vec![EpollEvent::default(); MAX_EVENTS];
    loop {
        let n = match epoll.wait(TICK_MS, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                error!("vsock: epoll_wait failed, backend stops: {e}");
                return;
            }
        };
        let ready = events.get(..n).unwrap_or(&[]);
        if ready.iter().any(|ev| ev.data() == TOKEN_STOP) {
            debug!("vsock: backend thread stopping");
            return;
        }
        let mut mux = lock(muxer);
        for ev in ready {
            mux.handle_event(ev.data(), ev.event_set());
        }
        mux.tick(Instant::now());
        mux.process_rx();
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Err(e) = self.stop.write(1) {
            warn!("vsock: cannot signal the backend thread to stop: {e}");
        }
        if let Some(handle) = self.handle.take() {
            if handle.join().is_err() {
                error!("vsock: backend thread panicked");
            }
        }
    }
}
