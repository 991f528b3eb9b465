//! Where this process's log lines go: stderr, until `carapace vmm` names its own log file
//! (`VmConfig::vmm_log`), which is then capped and rotated ([`BoundedLog`]) so that the log
//! lines a guest can provoke (rate-limited per call site, but many call sites) take a bounded
//! amount of the pod's disk. stdout and stderr are pointed at the current file after each
//! rotation, so what is written to them directly (the last error line, a panic message) lands
//! in it too.

use std::cell::Cell;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use carapace_vmm::bounded_log::BoundedLog;

static SINK: OnceLock<Mutex<BoundedLog>> = OnceLock::new();

thread_local! {
    /// Set while this thread writes into the sink: a line logged from inside it (the log's own
    /// "cannot rotate" warning) goes straight to stderr instead of waiting on itself.
    static WRITING: Cell<bool> = const { Cell::new(false) };
}

/// Why the VMM log cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum VmmLogError {
    #[error("cannot open the VMM log {}: {source}", path.display())]
    Open { path: std::path::PathBuf, source: std::io::Error },
    #[error("the VMM log is already open")]
    AlreadyOpen,
}

/// Sends every further log line of this process to `path`, capped at `max_bytes`.
pub fn open(path: &Path, max_bytes: u64) -> Result<(), VmmLogError> {
    let open_err = |source| VmmLogError::Open { path: path.to_path_buf(), source };
    let log = BoundedLog::open(path, max_bytes, "VMM log")
        .map_err(open_err)?
        .with_reopen_hook(Box::new(point_stdio_at));
    SINK.set(Mutex::new(log)).map_err(|_| VmmLogError::AlreadyOpen)
}

/// stdout and stderr become `file` (best effort: a failure leaves them where they were).
fn point_stdio_at(file: &std::fs::File) {
    for target in [libc::STDOUT_FILENO, libc::STDERR_FILENO] {
        // SAFETY: dup2 of a descriptor we hold onto a standard descriptor number.
        unsafe { libc::dup2(file.as_raw_fd(), target) };
    }
}

/// The writer of the tracing subscriber (`with_writer(|| LogWriter)`).
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let Some(sink) = SINK.get() else { return std::io::stderr().write(buf) };
        if WRITING.with(Cell::get) {
            return std::io::stderr().write(buf);
        }
        WRITING.with(|w| w.set(true));
        let r = sink.lock().unwrap_or_else(|p| p.into_inner()).write(buf);
        WRITING.with(|w| w.set(false));
        r
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match SINK.get() {
            Some(sink) => sink.lock().unwrap_or_else(|p| p.into_inner()).flush(),
            None => std::io::stderr().flush(),
        }
    }
}
