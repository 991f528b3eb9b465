//! A panic on any thread of a process that installed the VMM's panic hook aborts the process.
//! The test runs itself as a child process (the same test binary, selected by an environment
//! variable) that installs the hook and panics on a thread; the child must die of SIGABRT.

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};

const CHILD_ENV: &str = "CARAPACE_TEST_PANIC_CHILD";

#[test]
fn panic_on_a_thread_aborts_the_process() {
    let exe = std::env::current_exe().unwrap();
    let out = Command::new(exe)
        .args(["--exact", "child_panics_on_a_thread", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, "1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.signal(), Some(libc::SIGABRT), "child: {:?}\n{stderr}", out.status);
    assert!(stderr.contains("boom on a vCPU-like thread"), "{stderr}");
}

/// The child's body; does nothing unless run by the test above.
#[test]
fn child_panics_on_a_thread() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    carapace_vmm::install_panic_abort();
    let t = std::thread::Builder::new()
        .name("vcpu0".into())
        .spawn(|| panic!("boom on a vCPU-like thread"))
        .unwrap();
    // Without the hook the panic only ends the thread, and the process goes on and exits 0.
    let _ = t.join();
    std::thread::sleep(std::time::Duration::from_millis(200));
}
