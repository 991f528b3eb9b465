//! The agent as PID 1 of the real guest kernel, booted by QEMU in pure
//! software emulation (TCG; no KVM needed, so it runs on the development
//! machines): mounts, console, hostname from the kernel command line, the
//! ready marker, and Ctrl+Alt+Del → SIGINT → graceful shutdown →
//! reboot(RESTART), which makes `qemu -no-reboot` exit 0.
//!
//! Skipped (with a message) unless qemu-system-x86_64, strip and a guest
//! kernel are available: $CARAPACE_GUEST_KERNEL, or the cached build under
//! $CARAPACE_CACHE (default /var/cache/carapace)/kernel/*/vmlinux.
//! vsock is not covered here (QEMU would need the host's vhost-vsock).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Minimal newc cpio writer (lets the test create /dev/console without root).
struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn new() -> Cpio {
        Cpio { out: Vec::new(), ino: 1 }
    }

    fn pad4(&mut self) {
        while self.out.len() & 3 != 0 {
            self.out.push(0);
        }
    }

    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        let namesize = name.len() + 1;
        let fields = [
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            namesize as u32,
            0,
        ];
        self.ino += 1;
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad4();
        self.out.extend_from_slice(data);
        self.pad4();
    }

    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, (0, 0), &[]);
    }

    fn file(&mut self, name: &str, data: &[u8]) {
        self.entry(name, 0o100755, (0, 0), data);
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.out
    }
}

fn find_kernel() -> Option<PathBuf> {
    if let Ok(k) = std::env::var("CARAPACE_GUEST_KERNEL") {
        return Some(PathBuf::from(k));
    }
    let cache = std::env::var("CARAPACE_CACHE").unwrap_or_else(|_| "/var/cache/carapace".into());
    std::fs::read_dir(Path::new(&cache).join("kernel"))
        .ok()?
        .filter_map(|e| Some(e.ok()?.path().join("vmlinux")))
        .find(|p| p.is_file())
}

fn have(tool: &str) -> bool {
    Command::new(tool).arg("--version").output().map(|o| o.status.success()).unwrap_or(false)
}

/// An initramfs with the (dynamically linked) test build of the agent as
/// /init, its shared libraries, the mount points and /dev/console.
fn build_initramfs(dir: &Path) -> Vec<u8> {
    let bin = Path::new(env!("CARGO_BIN_EXE_carapace-agent"));
    let stripped = dir.join("init");
    std::fs::copy(bin, &stripped).unwrap();
    assert!(Command::new("strip").arg(&stripped).status().unwrap().success());

    let mut cpio = Cpio::new();
    for d in ["dev", "proc", "sys", "run", "tmp", "etc"] {
        cpio.dir(d);
    }
    cpio.entry("dev/console", 0o020600, (5, 1), &[]);
    cpio.file("init", &std::fs::read(&stripped).unwrap());

    let ldd = Command::new("ldd").arg(bin).output().unwrap();
    let mut made = std::collections::BTreeSet::new();
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        let path = match line.split_once("=>") {
            Some((_, rhs)) => rhs.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        let Some(path) = path.filter(|p| p.starts_with('/')) else {
            continue;
        };
        let rel = path.trim_start_matches('/');
        let mut prefix = String::new();
        for comp in Path::new(rel).parent().unwrap().components() {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(&comp.as_os_str().to_string_lossy());
            if made.insert(prefix.clone()) {
                cpio.dir(&prefix);
            }
        }
        cpio.file(rel, &std::fs::read(path).unwrap());
    }
    cpio.finish()
}

#[test]
fn agent_boots_as_pid1_under_qemu_tcg_and_stops_on_ctrl_alt_del() {
    let Some(kernel) = find_kernel() else {
        eprintln!("skipping: no guest kernel (set CARAPACE_GUEST_KERNEL or build it)");
        return;
    };
    if !have("qemu-system-x86_64") || !have("strip") {
        eprintln!("skipping: needs qemu-system-x86_64 and strip");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("initramfs.cpio");
    std::fs::write(&initrd, build_initramfs(dir.path())).unwrap();
    let monitor = dir.path().join("monitor.sock");

    let mut qemu = Command::new("qemu-system-x86_64")
        .args(["-M", "pc", "-accel", "tcg", "-cpu", "max", "-m", "512", "-smp", "1"])
        .args(["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"])
        .args(["-serial", "stdio"])
        .arg("-monitor")
        .arg(format!("unix:{},server,nowait", monitor.display()))
        .arg("-kernel")
        .arg(&kernel)
        .arg("-initrd")
        .arg(&initrd)
        .args([
            "-append",
            "console=ttyS0 reboot=k panic=-1 carapace.hostname=tcg-guest carapace.log=debug",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut kill_on_failure = common::KillOnDrop(Some(qemu.id() as i32));

    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stdout = qemu.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            let _ = tx.send(line);
        }
    });
    let mut console = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(180);
    while !console.iter().any(|l: &String| l.trim_end() == "carapace-agent: ready") {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) => console.push(l),
            Err(_) => panic!("no ready marker; console:\n{}", console.join("\n")),
        }
    }

    let mut mon = std::os::unix::net::UnixStream::connect(&monitor).unwrap();
    mon.write_all(b"sendkey ctrl-alt-delete\n").unwrap();

    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        while let Ok(l) = rx.try_recv() {
            console.push(l);
        }
        if let Some(st) = qemu.try_wait().unwrap() {
            kill_on_failure.0 = None;
            break st;
        }
        assert!(Instant::now() < deadline, "guest did not stop; console:\n{}", console.join("\n"));
        std::thread::sleep(Duration::from_millis(50));
    };
    while let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
        console.push(l);
    }
    let text = console.join("\n");
    assert!(status.success(), "qemu exited with {status}; console:\n{text}");
    for want in [
        "pid1=true",
        "hostname set hostname=\"tcg-guest\"",
        "shutdown signal received signal=2",
        "reboot: Restarting system",
    ] {
        assert!(text.contains(want), "console lacks {want:?}:\n{text}");
    }
    for unwanted in ["mount failed", "Kernel panic", "panicked"] {
        assert!(!text.contains(unwanted), "console has {unwanted:?}:\n{text}");
    }
}
