//! The thread a device does its work on, off the vCPU threads.
//!
//! Each activated device gets one thread that owns its state and its queues. The thread waits
//! (epoll) on one eventfd per queue, which KVM signals directly when the guest writes the
//! queue's index to QueueNotify (an ioeventfd; the transport signals the same eventfd when the
//! write reaches it instead), on a control eventfd (stop), and on whatever other descriptors
//! the device registers in the same epoll (the vsock device's Unix sockets).

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use tracing::{debug, error, warn};
use virtio_queue::Queue;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

/// Epoll token of the control eventfd.
const TOKEN_CONTROL: u64 = u64::MAX;
/// Most queues a device may have (tokens below the control token are theirs).
pub const MAX_QUEUES: usize = 64;
/// Tokens from here up belong to the thread; a device's own descriptors use tokens below it.
pub const FIRST_RESERVED_TOKEN: u64 = TOKEN_CONTROL - MAX_QUEUES as u64;
const MAX_EVENTS: usize = 128;

fn queue_token(index: usize) -> u64 {
    FIRST_RESERVED_TOKEN + index as u64
}

/// A queue handed to a device on activation, with the eventfd that says the guest notified it.
pub struct DeviceQueue {
    pub queue: Queue,
    pub notify: EventFd,
}

/// Why a device thread could not start.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("a device may have at most {MAX_QUEUES} queues, not {0}")]
    TooManyQueues(usize),
    #[error("cannot set up the device thread's epoll: {0}")]
    Epoll(#[source] io::Error),
    #[error("cannot start device thread {name}: {source}")]
    Spawn { name: String, source: io::Error },
}

/// What runs on a device thread.
pub trait DeviceWorker: Send + 'static {
    /// The guest notified queue `index` (also called once per queue when the thread starts,
    /// for buffers the driver made available before DRIVER_OK).
    fn queue_notified(&mut self, index: usize);
    /// A descriptor the device registered in the thread's epoll with `token` is ready.
    fn fd_event(&mut self, token: u64, events: EventSet) {
        let _ = events;
        debug!("device thread: event for unknown token {token}");
    }
    /// After each wake-up (events or timeout).
    fn after_events(&mut self, now: Instant) {
        let _ = now;
    }
    /// How long the thread may sleep without events (milliseconds, -1 = no limit).
    fn tick_ms(&self) -> i32 {
        -1
    }
}

#[cfg(test)]
type Job<W> = Box<dyn FnOnce(&mut W) + Send>;

struct Shared<W> {
    stop: AtomicBool,
    control: EventFd,
    #[cfg(test)]
    jobs: std::sync::Mutex<Vec<Job<W>>>,
    #[cfg(not(test))]
    _worker: std::marker::PhantomData<fn(W)>,
}

/// A running device thread; dropping it stops and joins the thread (and drops the worker).
pub struct DeviceThread<W: DeviceWorker> {
    shared: Arc<Shared<W>>,
    handle: Option<JoinHandle<()>>,
}

impl<W: DeviceWorker> DeviceThread<W> {
    /// Starts thread `name` running `worker` over `notifies` (queue i's eventfd at index i).
    /// `epoll` may already hold the worker's own descriptors (tokens below
    /// [`FIRST_RESERVED_TOKEN`]).
    pub fn spawn(
        name: &str,
        epoll: Arc<Epoll>,
        worker: W,
        notifies: Vec<EventFd>,
    ) -> Result<DeviceThread<W>, WorkerError> {
        if notifies.len() > MAX_QUEUES {
            return Err(WorkerError::TooManyQueues(notifies.len()));
        }
        let control = EventFd::new(libc::EFD_NONBLOCK).map_err(WorkerError::Epoll)?;
        let add = |fd: i32, token: u64| {
            epoll
                .ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, token))
                .map_err(WorkerError::Epoll)
        };
        add(control.as_raw_fd(), TOKEN_CONTROL)?;
        for (i, fd) in notifies.iter().enumerate() {
            add(fd.as_raw_fd(), queue_token(i))?;
        }
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            control,
            #[cfg(test)]
            jobs: std::sync::Mutex::new(Vec::new()),
            #[cfg(not(test))]
            _worker: std::marker::PhantomData,
        });
        let s = shared.clone();
        let handle = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || run(worker, &epoll, &notifies, &s))
            .map_err(|source| WorkerError::Spawn { name: name.to_string(), source })?;
        Ok(DeviceThread { shared, handle: Some(handle) })
    }

    fn wake(&self) {
        if let Err(e) = self.shared.control.write(1) {
            warn!("device thread: cannot wake it: {e}");
        }
    }

    /// Runs `f` on the device thread once it has handled every notification written before
    /// this call, and returns its result (tests use it to wait for the device and look in).
    #[cfg(test)]
    pub fn with<R: Send + 'static>(&self, f: impl FnOnce(&mut W) -> R + Send + 'static) -> R {
        let (tx, rx) = std::sync::mpsc::channel();
        crate::sync::lock(&self.shared.jobs).push(Box::new(move |w: &mut W| {
            let _ = tx.send(f(w));
        }));
        self.wake();
        rx.recv().expect("device thread answers")
    }
}

/// Reads an eventfd's counter; whether it had been signalled.
fn drain(fd: &EventFd) -> bool {
    match fd.read() {
        Ok(_) => true,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
        Err(e) => {
            warn!("device thread: reading a notification eventfd: {e}");
            false
        }
    }
}

fn run<W: DeviceWorker>(mut worker: W, epoll: &Epoll, notifies: &[EventFd], shared: &Shared<W>) {
    for i in 0..notifies.len() {
        worker.queue_notified(i);
    }
    let mut events = vec![EpollEvent::default(); MAX_EVENTS];
    loop {
        let n = match epoll.wait(worker.tick_ms(), &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                error!("device thread: epoll_wait failed, the device stops: {e}");
                return;
            }
        };
        let mut control = false;
        for ev in events.get(..n).unwrap_or(&[]) {
            match ev.data() {
                TOKEN_CONTROL => control = true,
                token if token >= FIRST_RESERVED_TOKEN => {
                    let index = (token - FIRST_RESERVED_TOKEN) as usize;
                    if notifies.get(index).is_some_and(drain) {
                        worker.queue_notified(index);
                    }
                }
                token => worker.fd_event(token, ev.event_set()),
            }
        }
        if control {
            drain(&shared.control);
            if shared.stop.load(Ordering::SeqCst) {
                debug!("device thread stopping");
                return;
            }
            // Notifications that epoll did not report in this batch are handled first.
            for (i, fd) in notifies.iter().enumerate() {
                if drain(fd) {
                    worker.queue_notified(i);
                }
            }
        }
        worker.after_events(Instant::now());
        #[cfg(test)]
        if control {
            let jobs = std::mem::take(&mut *crate::sync::lock(&shared.jobs));
            for job in jobs {
                job(&mut worker);
            }
        }
    }
}

impl<W: DeviceWorker> Drop for DeviceThread<W> {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.wake();
        if let Some(handle) = self.handle.take() {
            if handle.join().is_err() {
                error!("device thread panicked");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Count(Vec<usize>);
    impl DeviceWorker for Count {
        fn queue_notified(&mut self, index: usize) {
            self.0.push(index);
        }
    }

    #[test]
    fn notifications_reach_the_worker_on_its_thread() {
        let fds: Vec<EventFd> = (0..3).map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap()).collect();
        let mine: Vec<EventFd> = fds.iter().map(|f| f.try_clone().unwrap()).collect();
        let epoll = Arc::new(Epoll::new().unwrap());
        let t = DeviceThread::spawn("test-dev", epoll, Count::default(), fds).unwrap();
        assert_eq!(t.with(|w| std::mem::take(&mut w.0)), vec![0, 1, 2]);
        mine[2].write(1).unwrap();
        mine[2].write(1).unwrap();
        mine[0].write(1).unwrap();
        // Two writes may be seen as one notification or two: collect until both queues were
        // served (or a generous deadline passes).
        let mut seen = std::collections::BTreeSet::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while seen.len() < 2 && std::time::Instant::now() < deadline {
            seen.extend(t.with(|w| std::mem::take(&mut w.0)));
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec![0, 2]);
        let name = t.with(|_| std::thread::current().name().map(str::to_string));
        assert_eq!(name.as_deref(), Some("test-dev"));
        drop(t);
        // The thread is gone: its end of the eventfds is closed, ours still works.
        mine[1].write(1).unwrap();
    }

    #[test]
    fn too_many_queues_are_refused() {
        let fds: Vec<EventFd> =
            (0..MAX_QUEUES + 1).map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap()).collect();
        let epoll = Arc::new(Epoll::new().unwrap());
        let err = DeviceThread::spawn("x", epoll, Count::default(), fds).err().unwrap();
        assert!(matches!(err, WorkerError::TooManyQueues(65)));
    }
}
