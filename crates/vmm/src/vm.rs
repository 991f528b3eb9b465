//! A built VM: running its vCPUs until it stops, and the handle to stop it from elsewhere.

use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use carapace_virtio_devices::lock;
use kvm_ioctls::{Kvm, VcpuFd, VmFd};

use crate::devices::i8042::I8042;
use crate::devices::mmio_bus::MmioBus;
use crate::devices::pio_bus::PioBus;
use crate::exit::{ExitReason, ExitState};
use crate::kick::{install_kick_handler, kick, PeriodicKicker};
use crate::memory::GuestMemoryMmap;
use crate::panic::install_panic_abort;
use crate::vcpu::{run_vcpu, VcpuContext};

/// How often stopping vCPUs are kicked until they leave KVM_RUN.
const STOP_KICK_PERIOD: Duration = Duration::from_millis(5);
/// How long vCPUs get to leave KVM_RUN once stopped.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// A microVM ready to run, as [`build_vm`](crate::build_vm) returns it.
pub struct Vm {
    // Field order is drop order: vCPUs and devices go before the VM and its memory.
    pub(crate) vcpus: Vec<VcpuFd>,
    pub(crate) pio: Arc<PioBus>,
    pub(crate) mmio: Arc<MmioBus>,
    pub(crate) exit: Arc<ExitState>,
    pub(crate) i8042: Arc<Mutex<I8042>>,
    pub(crate) kick_interval: Option<Duration>,
    pub(crate) _vm_fd: VmFd,
    pub(crate) _kvm: Kvm,
    pub(crate) mem: GuestMemoryMmap,
}

/// Lets other threads stop a VM. Cheap to clone.
#[derive(Clone)]
pub struct VmHandle {
    exit: Arc<ExitState>,
    i8042: Arc<Mutex<I8042>>,
}

impl VmHandle {
    /// Asks the guest to shut down (Ctrl+Alt+Del on the keyboard controller). Returns whether
    /// the key press could be delivered. When the guest then resets, the VM ends with
    /// `Stopped { graceful: true }`.
    pub fn graceful_stop(&self) -> bool {
        self.exit.request_graceful();
        let delivered = lock(&self.i8042).trigger_ctrl_alt_del();
        if !delivered {
            tracing::debug!("guest keyboard not ready: Ctrl+Alt+Del not delivered");
        }
        delivered
    }

    /// Stops the vCPUs now; the VM ends with `Stopped { graceful: false }` (unless it had
    /// already ended).
    pub fn force_stop(&self) {
        self.exit.report(ExitReason::Stopped { graceful: false });
    }

    /// Why the VM ended, once it has.
    pub fn exit_reason(&self) -> Option<ExitReason> {
        self.exit.reason()
    }
}

impl Vm {
    /// A handle to stop this VM from another thread.
    pub fn handle(&self) -> VmHandle {
        VmHandle { exit: self.exit.clone(), i8042: self.i8042.clone() }
    }

    /// Runs the guest until it resets, is stopped or fails. From here on, a panic on any
    /// thread of the process aborts it ([`install_panic_abort`]): a VM whose vCPU or device
    /// thread died half-way must stop, not hang.
    pub fn run(mut self) -> ExitReason {
        install_panic_abort();
        if let Err(e) = install_kick_handler() {
            return ExitReason::Error(e.to_string());
        }
        let ctx =
            VcpuContext { pio: self.pio.clone(), mmio: self.mmio.clone(), exit: self.exit.clone() };
        let running = Arc::new(AtomicUsize::new(0));
        let mut threads: Vec<JoinHandle<()>> = Vec::new();
        for (index, vcpu) in self.vcpus.drain(..).enumerate() {
            let ctx = ctx.clone();
            let running_ = running.clone();
            running.fetch_add(1, Ordering::SeqCst);
            let index = index as u8;
            let spawned =
                std::thread::Builder::new().name(format!("vcpu{index}")).spawn(move || {
                    run_vcpu(index, vcpu, ctx);
                    running_.fetch_sub(1, Ordering::SeqCst);
                });
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => {
                    running.fetch_sub(1, Ordering::SeqCst);
                    self.exit.report(ExitReason::Error(format!(
                        "cannot start vCPU thread {index}: {e}"
                    )));
                    break;
                }
            }
        }
        let targets: Vec<libc::pthread_t> = threads.iter().map(|t| t.as_pthread_t()).collect();
        let kicker = match self.kick_interval {
            Some(interval) => match PeriodicKicker::start(interval, targets.clone()) {
                Ok(k) => Some(k),
                Err(e) => {
                    self.exit.report(ExitReason::Error(e.to_string()));
                    None
                }
            },
            None => None,
        };

        let reason = self.exit.wait();

        // Every vCPU sees the stop flag at its next exit; kick them out of KVM_RUN.
        let deadline = Instant::now() + STOP_TIMEOUT;
        while running.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            for t in &targets {
                let _ = kick(*t);
            }
            std::thread::sleep(STOP_KICK_PERIOD);
        }
        if let Some(k) = kicker {
            k.stop();
        }
        if running.load(Ordering::SeqCst) > 0 {
            tracing::error!("vCPU threads did not stop in {STOP_TIMEOUT:?}; leaving them behind");
            // They may still touch guest memory: keep it mapped for the life of the process.
            std::mem::forget(self.mem.clone());
        } else {
            for t in threads {
                let _ = t.join();
            }
        }
        reason
    }
}
