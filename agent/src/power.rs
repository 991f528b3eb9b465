//! Ending the guest: stop remaining processes, sync, restart.
//!
//! The VMM treats the guest's reset (i8042 pulse from
//! reboot(LINUX_REBOOT_CMD_RESTART)) as a clean exit of the VM.

use std::time::Duration;

use nix::sys::reboot::{reboot, set_cad_enabled, RebootMode};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Makes Ctrl+Alt+Del arrive at PID 1 as SIGINT instead of an immediate
/// reboot, so it takes the graceful path.
pub fn disable_ctrl_alt_del() -> nix::Result<()> {
    set_cad_enabled(false)
}

/// Sends `sig` to every process but PID 1. True if any process existed.
fn signal_all(sig: Signal) -> bool {
    kill(Pid::from_raw(-1), sig).is_ok()
}

/// SIGTERM everything, give it `grace`, SIGKILL what is left.
pub fn terminate_all(grace: Duration) {
    if signal_all(Signal::SIGTERM) {
        tracing::info!(
            grace_ms = grace.as_millis() as u64,
            "sent SIGTERM to remaining processes"
        );
        std::thread::sleep(grace);
        signal_all(Signal::SIGKILL);
    }
}

/// Syncs and restarts the guest. Never returns: if reboot(2) fails the
/// agent (PID 1) must still not exit, so it parks forever.
pub fn restart() -> ! {
    nix::unistd::sync();
    tracing::info!("restarting the guest");
    let Err(e) = reboot(RebootMode::RB_AUTOBOOT);
    tracing::error!(error = %e, "reboot(RESTART) failed; halting in place");
    park_forever()
}

/// Sleeps forever (PID 1 must never exit).
pub fn park_forever() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
