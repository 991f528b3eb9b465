//! A panic anywhere in the VMM process aborts it.
//!
//! The VM's threads (vCPUs, device threads, the kicker) depend on each other: with unwinding, a
//! panicking vCPU thread would just end and leave the others running a guest that can no longer
//! make progress, a VM that hangs instead of stopping. Aborting makes it a dead process, which
//! its supervisor (the CRI daemon) sees and reports.

use std::sync::Once;

/// Installs (once per process) a panic hook that logs the panic, runs the previous hook
/// (Rust's default prints the message and, if enabled, a backtrace) and aborts the process.
pub fn install_panic_abort() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current();
            let name = thread.name().unwrap_or("<unnamed>");
            tracing::error!(thread = name, "VMM panicked, aborting: {info}");
            previous(info);
            std::process::abort();
        }));
    });
}
