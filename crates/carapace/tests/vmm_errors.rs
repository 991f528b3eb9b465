//! Bad input to `carapace vmm` gives a clear one-line error, a non-zero exit, and leaves nothing
//! behind. None of these needs a KVM that boots Linux: every error is found before a vCPU runs.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const CARAPACE: &str = env!("CARGO_BIN_EXE_carapace");

/// A kernel path for the tests: the real guest kernel when built, else a syntactically valid
/// 64-bit ELF header is not enough to boot but enough to get past file checks.
fn guest_kernel() -> PathBuf {
    let dir = std::env::var_os("CARAPACE_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/carapace/guest"));
    dir.join("vmlinux")
}

fn vmm(dir: &Path, args: &[&str]) -> Output {
    Command::new(CARAPACE)
        .arg("vmm")
        .arg("--serial-log")
        .arg(dir.join("serial.log"))
        .args(args)
        .output()
        .expect("run carapace vmm")
}

/// Asserts: non-zero exit, exactly one line on stderr that contains `needle`.
fn assert_one_line_error(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure, got {:?}; stderr: {stderr}", out.status);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {stderr}");
    assert!(
        lines[0].to_lowercase().contains(&needle.to_lowercase()),
        "error {:?} should mention {needle:?}",
        lines[0]
    );
}

/// Nothing but the files the test itself made is left in `dir`.
fn assert_left_only(dir: &Path, expected: &[&str]) {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut want: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(names, want, "unexpected files left behind in {}", dir.display());
}

#[test]
fn missing_kernel() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("vsock.sock");
    let out = vmm(
        dir.path(),
        &["--kernel", "/nonexistent/vmlinux", "--vsock-uds", sock.to_str().unwrap()],
    );
    assert_one_line_error(&out, "/nonexistent/vmlinux");
    assert_left_only(dir.path(), &[]);
}

/// The VMM's stderr is `vmm.log` on the pod's disk, which the guest can fill: an error line
/// that cannot be written is dropped and the exit status stays 1 (not a panic, 101).
#[test]
fn a_full_stderr_does_not_turn_an_error_into_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("vsock.sock");
    let full = fs::OpenOptions::new().write(true).open("/dev/full").expect("open /dev/full");
    let status = Command::new(CARAPACE)
        .env("CARAPACE_LOG", "trace")
        .arg("vmm")
        .arg("--serial-log")
        .arg(dir.path().join("serial.log"))
        .args(["--kernel", "/nonexistent/vmlinux", "--vsock-uds", sock.to_str().unwrap()])
        .stderr(full)
        .status()
        .expect("run carapace vmm");
    assert_eq!(status.code(), Some(1), "carapace vmm with stderr on a full disk: {status:?}");
}

/// With `--vmm-log`, the VMM's log lines, its error line and anything on stdout/stderr go to
/// that file, capped: an existing log past the cap is rotated to `<file>.1` before the first
/// new line, and nothing reaches the inherited stderr.
#[test]
fn the_vmm_log_takes_stderr_and_is_capped() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("vmm.log");
    fs::write(&log, vec![b'o'; 5000]).unwrap();
    let out = Command::new(CARAPACE)
        .env("CARAPACE_LOG", "debug")
        .arg("vmm")
        .args(["--vmm-log", log.to_str().unwrap(), "--vmm-log-max-bytes", "4096"])
        .args(["--kernel", "/nonexistent/vmlinux"])
        .output()
        .expect("run carapace vmm");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stderr.is_empty(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(fs::read(dir.path().join("vmm.log.1")).unwrap(), vec![b'o'; 5000]);
    let text = fs::read_to_string(&log).unwrap();
    assert!(text.starts_with("[carapace: VMM log reached 4096 bytes"), "{text}");
    assert!(text.contains("carapace vmm: error:"), "{text}");
    assert!(text.contains("/nonexistent/vmlinux"), "{text}");
    assert!(text.len() <= 4096, "{} bytes", text.len());
}

#[test]
fn corrupt_kernel() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("vmlinux");
    fs::write(&kernel, b"\x7fELF\x02\x01\x01 this is not really a kernel image at all").unwrap();
    let sock = dir.path().join("vsock.sock");
    let out = vmm(
        dir.path(),
        &["--kernel", kernel.to_str().unwrap(), "--vsock-uds", sock.to_str().unwrap()],
    );
    assert_one_line_error(&out, "vmlinux");
    assert_left_only(dir.path(), &["vmlinux"]);
}

#[test]
fn memory_too_small() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = guest_kernel();
    let out = vmm(dir.path(), &["--kernel", kernel.to_str().unwrap(), "--mem-mib", "4"]);
    assert_one_line_error(&out, "memory");
    assert_left_only(dir.path(), &[]);
}

#[test]
fn no_kvm_device() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = guest_kernel();
    let sock = dir.path().join("vsock.sock");
    let out = vmm(
        dir.path(),
        &[
            "--kernel",
            kernel.to_str().unwrap(),
            "--kvm-device",
            "/nonexistent/kvm",
            "--vsock-uds",
            sock.to_str().unwrap(),
        ],
    );
    assert_one_line_error(&out, "/nonexistent/kvm");
    assert_left_only(dir.path(), &[]);
}

#[test]
fn vsock_socket_path_taken() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = guest_kernel();
    let sock = dir.path().join("vsock.sock");
    fs::write(&sock, b"someone else's file").unwrap();
    let out = vmm(
        dir.path(),
        &["--kernel", kernel.to_str().unwrap(), "--vsock-uds", sock.to_str().unwrap()],
    );
    assert_one_line_error(&out, "already taken");
    // The other owner's file is untouched.
    assert_eq!(fs::read(&sock).unwrap(), b"someone else's file");
    assert_left_only(dir.path(), &["vsock.sock"]);
}
