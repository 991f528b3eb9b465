//! Interrupting KVM_RUN: a real-time signal with an empty handler makes KVM_RUN return EINTR.
//! Used to stop vCPUs and, periodically, on hosts whose own interrupts do not force guest exits.

use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use crate::error::VmmError;
use carapace_virtio_devices::sync::{lock, wait_timeout_while};

/// Offset of the kick signal from SIGRTMIN.
const KICK_SIGNAL_OFFSET: libc::c_int = 0;

/// The signal used to kick vCPU threads.
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN() + KICK_SIGNAL_OFFSET
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the (empty) kick handler once per process.
pub fn install_kick_handler() -> Result<(), VmmError> {
    static INSTALLED: OnceLock<Result<(), vmm_sys_util::errno::Error>> = OnceLock::new();
    (*INSTALLED.get_or_init(|| register_signal_handler(kick_signal(), on_kick)))
        .map_err(VmmError::Signal)
}

/// Sends the kick signal to `thread` (a live, not yet joined thread).
pub fn kick(thread: libc::pthread_t) -> Result<(), std::io::Error> {
    // SAFETY: callers pass the pthread_t of a thread they have not joined yet, so the handle is
    // valid; the handler installed for the signal does nothing.
    let rc = unsafe { libc::pthread_kill(thread, kick_signal()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::from_raw_os_error(rc))
    }
}

/// A thread kicking a set of threads every `interval` until stopped.
pub struct PeriodicKicker {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl PeriodicKicker {
    /// `targets` must stay unjoined until [`stop`](Self::stop) returns.
    pub fn start(interval: Duration, targets: Vec<libc::pthread_t>) -> Result<Self, VmmError> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("vcpu-kicker".into())
            .spawn(move || {
                let (m, cond) = &*flag;
                let mut stopped = lock(m);
                loop {
                    let (guard, timeout) = wait_timeout_while(cond, stopped, interval, |s| !*s);
                    stopped = guard;
                    if *stopped || !timeout.timed_out() {
                        return;
                    }
                    for t in &targets {
                        if let Err(e) = kick(*t) {
                            tracing::debug!(error = %e, "kick failed");
                        }
                    }
                }
            })
            .map_err(|source| VmmError::Thread { name: "vcpu-kicker".into(), source })?;
        Ok(PeriodicKicker { stop, thread: Some(thread) })
    }

    /// Stops and joins the kicker thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let (m, cond) = &*self.stop;
        *lock(m) = true;
        cond.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for PeriodicKicker {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::thread::JoinHandleExt;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A thread blocked in a syscall that is not restarted comes back with EINTR when kicked.
    #[test]
    fn kick_interrupts_a_blocking_syscall() {
        install_kick_handler().unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let d = done.clone();
        let t = std::thread::spawn(move || {
            let mut fds = [0 as libc::c_int; 2];
            // SAFETY: plain pipe creation into a local array.
            assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
            let mut b = [0u8; 1];
            // SAFETY: reading into a local buffer from our own pipe; nobody writes to it.
            let rc = unsafe { libc::read(fds[0], b.as_mut_ptr().cast(), 1) };
            let err = std::io::Error::last_os_error().raw_os_error();
            d.store(true, Ordering::SeqCst);
            // SAFETY: closing our own descriptors.
            unsafe {
                libc::close(fds[0]);
                libc::close(fds[1]);
            }
            (rc, err)
        });
        let pt = t.as_pthread_t();
        let kicker = PeriodicKicker::start(Duration::from_millis(10), vec![pt]).unwrap();
        for _ in 0..500 {
            if done.load(Ordering::SeqCst) {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        kicker.stop();
        let (rc, err) = t.join().unwrap();
        assert_eq!(rc, -1);
        assert_eq!(err, Some(libc::EINTR));
    }

    #[test]
    fn handler_install_is_idempotent() {
        install_kick_handler().unwrap();
        install_kick_handler().unwrap();
    }
}
