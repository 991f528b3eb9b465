//! Why a VM stopped, and the shared state through which vCPUs and handles report it.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};

use carapace_virtio_devices::sync::{lock, wait};

/// How a VM ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest reset the machine itself (reboot, poweroff, or panic=1 after a panic).
    GuestReset,
    /// The guest reported a crash (KVM system event).
    GuestPanic,
    /// A vCPU triple-faulted (KVM_EXIT_SHUTDOWN); `registers` tells where.
    TripleFault { vcpu: u8, registers: String },
    /// Stopped on request: graceful = the guest shut down after Ctrl+Alt+Del.
    Stopped { graceful: bool },
    /// The VMM could not go on (KVM error, emulation failure...).
    Error(String),
}

impl ExitReason {
    /// The guest went away by itself or on a graceful request.
    pub fn is_clean(&self) -> bool {
        matches!(self, ExitReason::GuestReset | ExitReason::Stopped { graceful: true })
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitReason::GuestReset => write!(f, "guest reset"),
            ExitReason::GuestPanic => write!(f, "guest panicked"),
            ExitReason::TripleFault { vcpu, registers } => {
                write!(f, "vCPU {vcpu} triple-faulted ({registers})")
            }
            ExitReason::Stopped { graceful: true } => write!(f, "stopped gracefully"),
            ExitReason::Stopped { graceful: false } => write!(f, "stopped by force"),
            ExitReason::Error(e) => write!(f, "{e}"),
        }
    }
}

/// Shared by the vCPU threads, the devices, the VM handles and `Vm::run`.
#[derive(Default)]
pub(crate) struct ExitState {
    reason: Mutex<Option<ExitReason>>,
    cond: Condvar,
    stop: AtomicBool,
    graceful_requested: AtomicBool,
}

impl ExitState {
    pub fn new() -> Self {
        ExitState::default()
    }

    /// Records why the VM ends (the first report wins) and tells the vCPUs to stop.
    pub fn report(&self, reason: ExitReason) {
        let reason = match reason {
            ExitReason::GuestReset if self.graceful_requested.load(Ordering::SeqCst) => {
                ExitReason::Stopped { graceful: true }
            }
            r => r,
        };
        let mut slot = lock(&self.reason);
        if slot.is_none() {
            tracing::info!(reason = %reason, "VM stopping");
            *slot = Some(reason);
        }
        self.stop.store(true, Ordering::SeqCst);
        self.cond.notify_all();
    }

    pub fn request_graceful(&self) {
        self.graceful_requested.store(true, Ordering::SeqCst);
    }

    pub fn should_stop(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    pub fn reason(&self) -> Option<ExitReason> {
        lock(&self.reason).clone()
    }

    /// Blocks until a reason is reported.
    pub fn wait(&self) -> ExitReason {
        let mut slot = lock(&self.reason);
        loop {
            if let Some(r) = slot.as_ref() {
                return r.clone();
            }
            slot = wait(&self.cond, slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn first_report_wins() {
        let s = ExitState::new();
        assert!(!s.should_stop());
        s.report(ExitReason::TripleFault { vcpu: 1, registers: String::new() });
        s.report(ExitReason::GuestReset);
        assert!(s.should_stop());
        assert_eq!(s.wait(), ExitReason::TripleFault { vcpu: 1, registers: String::new() });
    }

    #[test]
    fn reset_after_graceful_request_is_a_graceful_stop() {
        let s = ExitState::new();
        s.request_graceful();
        s.report(ExitReason::GuestReset);
        assert_eq!(s.reason(), Some(ExitReason::Stopped { graceful: true }));
    }

    #[test]
    fn wait_wakes_up_from_another_thread() {
        let s = Arc::new(ExitState::new());
        let s2 = s.clone();
        let t = std::thread::spawn(move || s2.wait());
        std::thread::sleep(Duration::from_millis(20));
        s.report(ExitReason::Stopped { graceful: false });
        assert_eq!(t.join().unwrap(), ExitReason::Stopped { graceful: false });
    }

    #[test]
    fn clean_reasons() {
        assert!(ExitReason::GuestReset.is_clean());
        assert!(ExitReason::Stopped { graceful: true }.is_clean());
        assert!(!ExitReason::Stopped { graceful: false }.is_clean());
        assert!(!ExitReason::Error("x".into()).is_clean());
    }
}
