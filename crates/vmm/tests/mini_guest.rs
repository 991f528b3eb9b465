//! End-to-end tests of the VMM with tiny hand-assembled 64-bit "kernels" (no Linux needed):
//! the boot path (ELF load, page tables, GDT, long mode), the serial log, the i8042 reset and
//! Ctrl+Alt+Del, triple faults, stopping, kicking, and the vsock socket's lifetime.
//! Skipped when /dev/kvm cannot be opened.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use carapace_vmm::{build_vm, ExitReason, VmConfig, VsockConfig};

const LOAD_ADDR: u64 = 0x100_0000;

/// An ELF64 executable with one PT_LOAD segment holding `code` at LOAD_ADDR.
fn elf(code: &[u8]) -> Vec<u8> {
    let mut e = Vec::new();
    e.extend_from_slice(b"\x7fELF\x02\x01\x01\0");
    e.extend_from_slice(&[0u8; 8]);
    e.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    e.extend_from_slice(&0x3eu16.to_le_bytes()); // x86_64
    e.extend_from_slice(&1u32.to_le_bytes());
    e.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // entry
    e.extend_from_slice(&64u64.to_le_bytes()); // phoff
    e.extend_from_slice(&0u64.to_le_bytes()); // shoff
    e.extend_from_slice(&0u32.to_le_bytes()); // flags
    for v in [64u16, 56, 1, 64, 0, 0] {
        e.extend_from_slice(&v.to_le_bytes());
    }
    let offset = 0x1000u64;
    e.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    e.extend_from_slice(&7u32.to_le_bytes()); // RWX
    for v in [offset, LOAD_ADDR, LOAD_ADDR, code.len() as u64, code.len() as u64, 0x1000] {
        e.extend_from_slice(&v.to_le_bytes());
    }
    e.resize(offset as usize, 0);
    e.extend_from_slice(code);
    e
}

fn print(s: &str) -> Vec<u8> {
    let mut c = vec![0x66, 0xba, 0xf8, 0x03]; // mov dx, 0x3f8
    for b in s.bytes() {
        c.extend_from_slice(&[0xb0, b, 0xee]); // mov al, b; out dx, al
    }
    c
}

const RESET: &[u8] = &[0xb0, 0xfe, 0xe6, 0x64]; // mov al, 0xfe; out 0x64, al
const HALT_LOOP: &[u8] = &[0xf4, 0xeb, 0xfd];
const SPIN: &[u8] = &[0xeb, 0xfe];
/// Configures the i8042 like a driver: command 0x60, configuration byte 0x05.
const CONFIGURE_KBD: &[u8] = &[0xb0, 0x60, 0xe6, 0x64, 0xb0, 0x05, 0xe6, 0x60];
/// Polls the i8042 status until a byte is there, then reads it.
const WAIT_KEY: &[u8] = &[0xe4, 0x64, 0xa8, 0x01, 0x74, 0xfa, 0xe4, 0x60];
const UD2: &[u8] = &[0x0f, 0x0b];

/// These guests only use instructions that even a nested paravirtual KVM runs, so any KVM that
/// can be opened will do.
fn kvm_usable() -> bool {
    std::fs::OpenOptions::new().read(true).write(true).open(Path::new("/dev/kvm")).is_ok()
}

struct Guest {
    dir: tempfile::TempDir,
    config: VmConfig,
}

impl Guest {
    fn new(code: Vec<u8>) -> Guest {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinux");
        std::fs::write(&kernel, elf(&code)).unwrap();
        let mut config = VmConfig::new(&kernel);
        config.mem_mib = 64;
        config.serial_log = Some(dir.path().join("serial.log"));
        Guest { dir, config }
    }

    fn serial(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("serial.log")).unwrap_or_default()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

#[test]
fn guest_prints_and_resets() {
    if !kvm_usable() {
        return;
    }
    let g =
        Guest::new([print("hello from the guest\n"), RESET.to_vec(), HALT_LOOP.to_vec()].concat());
    let reason = build_vm(&g.config).unwrap().run();
    assert_eq!(reason, ExitReason::GuestReset);
    assert_eq!(g.serial(), "hello from the guest\n");
}

#[test]
fn unknown_ports_read_all_ones() {
    if !kvm_usable() {
        return;
    }
    // in al, 0x99; mov dx, 0x3f8; out dx, al; reset
    let code =
        [vec![0xe4, 0x99, 0x66, 0xba, 0xf8, 0x03, 0xee, 0xe6, 0x99], RESET.to_vec()].concat();
    let g = Guest::new(code);
    assert_eq!(build_vm(&g.config).unwrap().run(), ExitReason::GuestReset);
    assert_eq!(std::fs::read(g.path("serial.log")).unwrap(), vec![0xff]);
}

#[test]
fn triple_fault_is_reported_with_registers() {
    if !kvm_usable() {
        return;
    }
    let g = Guest::new([print("bye\n"), UD2.to_vec()].concat());
    match build_vm(&g.config).unwrap().run() {
        ExitReason::TripleFault { vcpu: 0, registers } => {
            assert!(registers.contains("rip="), "{registers}")
        }
        other => panic!("expected a triple fault, got {other:?}"),
    }
    assert_eq!(g.serial(), "bye\n");
}

#[test]
fn force_stop_ends_a_spinning_smp_guest() {
    if !kvm_usable() {
        return;
    }
    let mut g = Guest::new([print("spin\n"), SPIN.to_vec()].concat());
    g.config.vcpus = 2;
    let vm = build_vm(&g.config).unwrap();
    let handle = vm.handle();
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        handle.force_stop();
    });
    let started = Instant::now();
    assert_eq!(vm.run(), ExitReason::Stopped { graceful: false });
    assert!(started.elapsed() < Duration::from_secs(5));
    stopper.join().unwrap();
}

#[test]
fn graceful_stop_delivers_ctrl_alt_del() {
    if !kvm_usable() {
        return;
    }
    let mut g = Guest::new(
        [
            CONFIGURE_KBD.to_vec(),
            print("ready\n"),
            WAIT_KEY.to_vec(),
            print("key\n"),
            RESET.to_vec(),
            HALT_LOOP.to_vec(),
        ]
        .concat(),
    );
    g.config.kick_interval = Some(Duration::from_millis(20));
    let vm = build_vm(&g.config).unwrap();
    let handle = vm.handle();
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        assert!(handle.graceful_stop());
    });
    assert_eq!(vm.run(), ExitReason::Stopped { graceful: true });
    stopper.join().unwrap();
    assert_eq!(g.serial(), "ready\nkey\n");
}

#[test]
fn graceful_stop_is_not_delivered_before_the_guest_driver() {
    if !kvm_usable() {
        return;
    }
    let g = Guest::new(SPIN.to_vec());
    let vm = build_vm(&g.config).unwrap();
    let handle = vm.handle();
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        let delivered = handle.graceful_stop();
        handle.force_stop();
        delivered
    });
    assert_eq!(vm.run(), ExitReason::Stopped { graceful: false });
    assert!(!stopper.join().unwrap(), "no driver, so no key press can be delivered");
}

#[test]
fn vsock_socket_lives_as_long_as_the_vm() {
    if !kvm_usable() {
        return;
    }
    let mut g = Guest::new(SPIN.to_vec());
    let sock = g.path("vsock.sock");
    g.config.vsock = Some(VsockConfig { guest_cid: 3, uds_path: sock.clone() });
    let vm = build_vm(&g.config).unwrap();
    assert!(sock.exists());
    let handle = vm.handle();
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        handle.force_stop();
    });
    vm.run();
    stopper.join().unwrap();
    assert!(!sock.exists(), "socket left behind");
}

#[test]
fn failed_build_leaves_nothing_behind() {
    if !kvm_usable() {
        return;
    }
    let mut g = Guest::new(SPIN.to_vec());
    let sock = g.path("taken.sock");
    std::fs::write(&sock, b"not ours").unwrap();
    g.config.vsock = Some(VsockConfig { guest_cid: 3, uds_path: sock.clone() });
    let e = build_vm(&g.config).err().expect("socket path is taken");
    assert!(e.to_string().contains("already taken"), "{e}");
    assert!(!g.path("serial.log").exists());
    assert_eq!(std::fs::read(&sock).unwrap(), b"not ours");
}

#[test]
fn corrupt_kernel_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("vmlinux");
    std::fs::write(&kernel, b"\x7fELF\x02\x01\x01 not a kernel").unwrap();
    let mut config = VmConfig::new(&kernel);
    config.serial_log = Some(dir.path().join("serial.log"));
    if !kvm_usable() {
        return;
    }
    let e = build_vm(&config).err().expect("corrupt kernel");
    assert!(e.to_string().contains("is not a valid vmlinux ELF"), "{e}");
    assert!(!dir.path().join("serial.log").exists());
}
