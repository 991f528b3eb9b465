//! Shared helpers for carapace's end-to-end tests and benchmarks: find the built binaries and the
//! guest image, start a `carapace vmm` process in a private directory, and clean up after it.
//! [`cri`] drives the CRI daemon, [`registry`] runs a local registry with the test images, [`vm`]
//! boots a VM with a shared directory, [`net`] sets up and counts pod networking (CNI),
//! [`containerd`] runs the containerd + runc peer of the benchmarks, [`crictl`] runs the real
//! CRI client against a daemon, [`push`] pushes hand-made (hostile) images to a registry.

pub mod containerd;
pub mod cri;
pub mod crictl;
pub mod net;
pub mod push;
pub mod registry;
pub mod vm;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The `carapace` binary under test: `$CARAPACE_BIN`, else the release build next to this test.
pub fn carapace_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CARAPACE_BIN") {
        return PathBuf::from(p);
    }
    // target/release/deps/<test> -> target/release/carapace
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join("carapace")
}

/// The first file named `name` in a directory of PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// The repository's root (test scripts and images live under it).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A tokio runtime with two worker threads.
pub fn multi_thread_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()
}

/// The guest kernel and initramfs built by `make guest-image`.
#[derive(Debug, Clone)]
pub struct GuestImage {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
}

impl GuestImage {
    pub fn from_env() -> Result<Self> {
        let dir = std::env::var_os("CARAPACE_GUEST_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/lib/carapace/guest"));
        let img = GuestImage { kernel: dir.join("vmlinux"), initramfs: dir.join("initramfs.cpio") };
        for p in [&img.kernel, &img.initramfs] {
            if !p.is_file() {
                bail!("guest image file {} missing: run `make guest-image`", p.display());
            }
        }
        Ok(img)
    }
}

/// vCPU kick period the test host asks for (`CARAPACE_VMM_KICK_MS`), see ENVIRONMENT.md.
pub fn kick_interval_ms() -> Option<u64> {
    std::env::var("CARAPACE_VMM_KICK_MS").ok().and_then(|v| v.parse().ok())
}

/// Options of one VM started by a test.
#[derive(Debug, Clone)]
pub struct VmOptions {
    pub vcpus: u8,
    pub mem_mib: u32,
    pub extra_args: Vec<String>,
}

impl Default for VmOptions {
    fn default() -> Self {
        VmOptions { vcpus: 1, mem_mib: 256, extra_args: Vec::new() }
    }
}

/// A running `carapace vmm` process with its private directory (serial log, vsock socket).
/// Dropping it kills the process if it is still running.
pub struct VmProcess {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub started: Instant,
}

impl VmProcess {
    pub fn spawn(image: &GuestImage, opts: &VmOptions) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("carapace-e2e-").tempdir()?;
        let mut cmd = Command::new(carapace_bin());
        cmd.arg("vmm")
            .arg("--kernel")
            .arg(&image.kernel)
            .arg("--initramfs")
            .arg(&image.initramfs)
            .arg("--vcpus")
            .arg(opts.vcpus.to_string())
            .arg("--mem-mib")
            .arg(opts.mem_mib.to_string())
            .arg("--serial-log")
            .arg(dir.path().join("serial.log"))
            .arg("--vsock-uds")
            .arg(dir.path().join("vsock.sock"))
            .args(&opts.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.path().join("vmm.stderr"))?);
        if let Some(ms) = kick_interval_ms() {
            cmd.arg("--kick-interval-ms").arg(ms.to_string());
        }
        let started = Instant::now();
        let child = cmd.spawn().with_context(|| format!("spawn {}", carapace_bin().display()))?;
        Ok(VmProcess { child, dir, started })
    }

    pub fn vsock_path(&self) -> PathBuf {
        self.dir.path().join("vsock.sock")
    }

    pub fn serial_log(&self) -> String {
        fs::read_to_string(self.dir.path().join("serial.log")).unwrap_or_default()
    }

    pub fn vmm_stderr(&self) -> String {
        fs::read_to_string(self.dir.path().join("vmm.stderr")).unwrap_or_default()
    }

    /// Serial log and VMM stderr, for failure messages.
    pub fn diagnostics(&self) -> String {
        format!(
            "--- serial log ---\n{}\n--- vmm stderr ---\n{}",
            self.serial_log(),
            self.vmm_stderr()
        )
    }

    /// Waits for the process to exit; kills it and fails after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        wait_child(&mut self.child, timeout)
    }
}

impl Drop for VmProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Waits for `child` up to `timeout`; on timeout kills it and returns an error.
pub fn wait_child(child: &mut Child, timeout: Duration) -> Result<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(st) = child.try_wait()? {
            return Ok(st);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("process {} did not exit within {:?}", child.id(), timeout);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The benchmarks' numeric knobs (BENCH_N, ...): the variable `name` parsed, else `default`.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Median of a non-empty list of durations in milliseconds.
pub fn median_ms(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    Some(if n % 2 == 1 { values[n / 2] } else { (values[n / 2 - 1] + values[n / 2]) / 2.0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_lists() {
        assert_eq!(median_ms(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median_ms(&mut [4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median_ms(&mut []), None);
    }
}
