//! A log file with a cap, for output whose amount someone else decides (the guest's console,
//! the VMM's own log lines that a guest can provoke).
//!
//! When the next write would take the file past its cap, it is renamed to `<file>.1`
//! (replacing the previous one) and a new file starts with a marker line naming the cap; if
//! that rotation fails, further output is dropped after a marker line. On disk: at most twice
//! the cap plus two marker lines. The file is opened with O_NOFOLLOW (a symlink planted at the
//! path is refused, not followed).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Smallest cap (smaller ones are raised to it): room for the marker lines. A VmConfig refuses
/// smaller ones already (`serial_log_max_bytes`, `vmm_log_max_bytes`).
pub const MIN_CAP_BYTES: u64 = 4096;

/// Called with each file the log starts writing to (the first and every one after a rotation).
pub type ReopenHook = Box<dyn FnMut(&File) + Send>;

/// A log file that never grows past its cap: see the module documentation.
pub struct BoundedLog {
    path: PathBuf,
    /// What the marker lines call it ("serial log", "VMM log").
    label: &'static str,
    /// None once output is being dropped.
    file: Option<File>,
    /// Bytes in the current file.
    len: u64,
    max: u64,
    on_reopen: Option<ReopenHook>,
}

fn open_log(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

impl BoundedLog {
    /// Opens `path` for appending; what it already holds counts towards the cap.
    pub fn open(path: &Path, max_bytes: u64, label: &'static str) -> std::io::Result<BoundedLog> {
        let file = open_log(path)?;
        let len = file.metadata()?.len();
        let max = max_bytes.max(MIN_CAP_BYTES);
        Ok(BoundedLog {
            path: path.to_path_buf(),
            label,
            file: Some(file),
            len,
            max,
            on_reopen: None,
        })
    }

    /// Runs `hook` on the current file now and on each new one after a rotation (the VMM
    /// points its stdout and stderr at it).
    pub fn with_reopen_hook(mut self, mut hook: ReopenHook) -> BoundedLog {
        if let Some(file) = &self.file {
            hook(file);
        }
        self.on_reopen = Some(hook);
        self
    }

    /// `<file>.1`
    pub fn rotated_path(&self) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(".1");
        PathBuf::from(name)
    }

    /// Moves the full file to `<file>.1` and starts a new one with a marker line.
    fn rotate(&mut self) -> std::io::Result<()> {
        self.file = None;
        std::fs::rename(&self.path, self.rotated_path())?;
        let mut file = open_log(&self.path)?;
        let marker = format!(
            "[carapace: {} reached {} bytes; earlier output is in {}]\n",
            self.label,
            self.max,
            self.rotated_path().display()
        );
        file.write_all(marker.as_bytes())?;
        self.len = marker.len() as u64;
        if let Some(hook) = self.on_reopen.as_mut() {
            hook(&file);
        }
        self.file = Some(file);
        Ok(())
    }

    /// Gives up after a failed rotation: a marker line if the file is still writable, then
    /// every further byte is dropped.
    fn give_up(&mut self, e: &std::io::Error) {
        tracing::warn!(
            path = %self.path.display(),
            error = %e,
            "cannot rotate the {}; further output is dropped", self.label
        );
        if let Ok(mut file) = open_log(&self.path) {
            let marker =
                format!("[carapace: {} cannot rotate ({e}); output dropped]\n", self.label);
            // Best effort: the marker is all that is left to say.
            let _ = file.write_all(marker.as_bytes());
        }
        self.file = None;
    }
}

impl Write for BoundedLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if buf.is_empty() || self.file.is_none() {
            // Dropped output is reported as written: the writer is not to notice.
            return Ok(buf.len());
        }
        if self.len.saturating_add(buf.len() as u64) > self.max {
            if let Err(e) = self.rotate() {
                self.give_up(&e);
                return Ok(buf.len());
            }
        }
        let room = usize::try_from(self.max.saturating_sub(self.len)).unwrap_or(usize::MAX);
        let part = buf.get(..room.min(buf.len())).unwrap_or_default();
        let Some(file) = self.file.as_mut() else { return Ok(buf.len()) };
        let n = file.write(part)?;
        self.len = self.len.saturating_add(n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self.file.as_mut() {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[test]
    fn the_reopen_hook_sees_the_first_and_each_rotated_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vmm.log");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let mut log = BoundedLog::open(&path, MIN_CAP_BYTES, "VMM log").unwrap().with_reopen_hook(
            Box::new(move |f: &File| {
                let ino = std::os::unix::fs::MetadataExt::ino(&f.metadata().unwrap());
                record.lock().unwrap().push((f.as_raw_fd(), ino));
            }),
        );
        let line = [b'x'; 1000];
        for _ in 0..9 {
            log.write_all(&line).unwrap();
        }
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 3, "opened, then rotated twice: {seen:?}");
        let now = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&path).unwrap());
        assert_eq!(seen.last().unwrap().1, now, "the hook got the current file");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("[carapace: VMM log reached 4096 bytes"), "{text}");
        assert!(text.len() as u64 <= MIN_CAP_BYTES);
        assert!(std::fs::metadata(dir.path().join("vmm.log.1")).unwrap().len() <= MIN_CAP_BYTES);
    }
}
