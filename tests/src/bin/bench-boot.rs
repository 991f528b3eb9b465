//! `make bench-boot`: boots the same guest kernel + initramfs with carapace's VMM and with
//! `qemu-system-x86_64 -M microvm` (KVM, same memory and vCPUs) in one run and compares the
//! median time from process start to the agent's ready marker on the serial console.
//! For carapace it also reports the time until the agent answers over vsock, and the VMM's
//! memory overhead (RSS minus the guest memory it touched).

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use carapace_agent_client::{AgentClient, AGENT_VSOCK_PORT};
use carapace_tests::{kick_interval_ms, median_ms, which, GuestImage, VmOptions, VmProcess};

const READY_MARKER: &str = "carapace-agent: ready";
const BOOT_TIMEOUT: Duration = Duration::from_secs(90);
const MEM_MIB: u32 = 256;
const VCPUS: u8 = 1;

fn main() -> Result<()> {
    let boots: usize =
        std::env::var("CARAPACE_BENCH_BOOTS").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    let image = GuestImage::from_env()?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;

    let mut ours = Vec::new();
    let mut ours_vsock = Vec::new();
    let mut overhead_kib = Vec::new();
    let mut failures = 0;
    for i in 0..boots {
        match carapace_boot(&rt, &image) {
            Ok(b) => {
                println!(
                    "carapace boot {i}: marker {:.0} ms, agent over vsock {:.0} ms, \
                     VMM RSS {} KiB of which guest {} KiB",
                    b.marker_ms, b.vsock_ms, b.rss_kib, b.guest_kib
                );
                ours.push(b.marker_ms);
                ours_vsock.push(b.vsock_ms);
                overhead_kib.push((b.rss_kib.saturating_sub(b.guest_kib)) as f64);
            }
            Err(e) => {
                failures += 1;
                println!("carapace boot {i}: FAILED: {e:#}");
            }
        }
    }

    let qemu = which("qemu-system-x86_64");
    let mut peer = Vec::new();
    let mut peer_note = None;
    match &qemu {
        None => peer_note = Some("qemu-system-x86_64 is not installed".to_string()),
        Some(qemu) => {
            for i in 0..boots {
                match qemu_boot(qemu, &image) {
                    Ok(ms) => {
                        println!("qemu-microvm boot {i}: marker {ms:.0} ms");
                        peer.push(ms);
                    }
                    Err(e) => {
                        failures += 1;
                        println!("qemu-microvm boot {i}: FAILED: {e:#}");
                        peer_note.get_or_insert_with(|| format!("{e:#}"));
                    }
                }
            }
        }
    }

    if let Some(v) = median_ms(&mut ours_vsock) {
        println!("carapace: median time to agent answering over vsock {v:.0} ms");
    }
    if let Some(v) = median_ms(&mut overhead_kib) {
        println!("carapace: median VMM RSS minus touched guest memory {v:.0} KiB");
    }
    let x = median_ms(&mut ours);
    let y = median_ms(&mut peer);
    if y.is_none() {
        println!(
            "qemu-microvm: n/a — no boot of qemu -M microvm reached the marker here ({})",
            peer_note.as_deref().unwrap_or("no boots")
        );
    }
    let fmt = |v: Option<f64>| v.map(|v| format!("{v:.0}")).unwrap_or_else(|| "n/a".into());
    let ratio = match (x, y) {
        (Some(x), Some(y)) if y > 0.0 => format!("{:.2}", x / y),
        _ => "n/a".into(),
    };
    println!(
        "boot: carapace median {} ms, qemu-microvm median {} ms, ratio {} over {} boots, \
         {} failures",
        fmt(x),
        fmt(y),
        ratio,
        boots,
        failures
    );
    Ok(())
}

struct CarapaceBoot {
    marker_ms: f64,
    vsock_ms: f64,
    rss_kib: u64,
    guest_kib: u64,
}

fn carapace_boot(rt: &tokio::runtime::Runtime, image: &GuestImage) -> Result<CarapaceBoot> {
    let opts = VmOptions { vcpus: VCPUS, mem_mib: MEM_MIB, ..Default::default() };
    let mut vm = VmProcess::spawn(image, &opts)?;
    let serial = vm.dir.path().join("serial.log");
    let marker_ms =
        wait_for_marker(&serial, vm.started, &mut vm.child).with_context(|| vm.diagnostics())?;
    let sock = vm.vsock_path();
    let vsock_ms = rt.block_on(async {
        let agent = AgentClient::connect(&sock, AGENT_VSOCK_PORT, BOOT_TIMEOUT).await?;
        agent.health().await?;
        let ms = vm.started.elapsed().as_secs_f64() * 1000.0;
        Ok::<_, anyhow::Error>((ms, agent))
    });
    let (vsock_ms, agent) = vsock_ms.with_context(|| vm.diagnostics())?;
    let (rss_kib, guest_kib) = memory_of(vm.child.id(), u64::from(MEM_MIB) * 1024)?;
    rt.block_on(agent.shutdown())?;
    let status = vm.wait_exit(Duration::from_secs(30))?;
    if status.code() != Some(0) {
        bail!("VMM exited with {status}\n{}", vm.diagnostics());
    }
    Ok(CarapaceBoot { marker_ms, vsock_ms, rss_kib, guest_kib })
}

/// Boots the same kernel and initramfs with `qemu -M microvm` and returns ms to the marker.
fn qemu_boot(qemu: &Path, image: &GuestImage) -> Result<f64> {
    let dir = tempfile::Builder::new().prefix("carapace-bench-qemu-").tempdir()?;
    let serial = dir.path().join("serial.log");
    let started = Instant::now();
    let mut child = Command::new(qemu)
        .args(["-M", "microvm,x-option-roms=off,isa-serial=on,rtc=off,pit=off,pic=off"])
        .args(["-enable-kvm", "-cpu", "host", "-nodefaults", "-no-user-config", "-nographic"])
        .args(["-no-reboot", "-display", "none"])
        .args(["-smp", &VCPUS.to_string(), "-m", &MEM_MIB.to_string()])
        .arg("-kernel")
        .arg(&image.kernel)
        .arg("-initrd")
        .arg(&image.initramfs)
        // The same command line carapace's VMM gives (minus its virtio-mmio devices).
        .args([
            "-append",
            "console=ttyS0 quiet reboot=k panic=1 i8042.noaux i8042.nomux i8042.dumbkbd",
        ])
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(dir.path().join("qemu.stderr"))?)
        .spawn()
        .context("spawn qemu")?;
    // QEMU has no vCPU kick option: where the test host needs one (ENVIRONMENT.md), kick its
    // vCPU threads from outside with QEMU's own kick signal (SIGUSR1) at the same period.
    let kicker = kick_interval_ms().map(|ms| Kicker::start(child.id(), Duration::from_millis(ms)));
    let res = wait_for_marker(&serial, started, &mut child);
    drop(kicker);
    let _ = child.kill();
    let _ = child.wait();
    res.with_context(|| {
        format!(
            "serial: {}\nqemu stderr: {}",
            tail(&fs::read_to_string(&serial).unwrap_or_default(), 2000),
            fs::read_to_string(dir.path().join("qemu.stderr")).unwrap_or_default()
        )
    })
}

/// Polls the serial log until the ready marker shows; returns ms since `started`.
fn wait_for_marker(serial: &Path, started: Instant, child: &mut Child) -> Result<f64> {
    loop {
        if fs::read_to_string(serial).map(|s| s.contains(READY_MARKER)).unwrap_or(false) {
            return Ok(started.elapsed().as_secs_f64() * 1000.0);
        }
        if let Some(st) = child.try_wait()? {
            bail!("process exited ({st}) before the ready marker");
        }
        if started.elapsed() > BOOT_TIMEOUT {
            bail!("no ready marker within {BOOT_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// (total RSS, RSS of the guest-memory mapping) of `pid`, in KiB. The guest mapping is the
/// anonymous mapping whose size is the guest memory size.
fn memory_of(pid: u32, guest_kib: u64) -> Result<(u64, u64)> {
    let smaps = fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    let (mut total, mut guest) = (0u64, 0u64);
    let mut in_guest = false;
    for line in smaps.lines() {
        let mut f = line.split_whitespace();
        match (f.next(), f.next()) {
            (Some("Size:"), Some(v)) => in_guest = v.parse::<u64>().ok() == Some(guest_kib),
            (Some("Rss:"), Some(v)) => {
                let v: u64 = v.parse().unwrap_or(0);
                total += v;
                if in_guest {
                    guest += v;
                }
            }
            _ => {}
        }
    }
    Ok((total, guest))
}

/// Sends SIGUSR1 to every vCPU thread ("CPU n/KVM") of a QEMU process at a fixed period.
struct Kicker {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Kicker {
    fn start(pid: u32, period: Duration) -> Kicker {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                for tid in vcpu_threads(pid) {
                    // SAFETY: tgkill on a thread of a child process we started.
                    unsafe { libc::syscall(libc::SYS_tgkill, pid as i32, tid, libc::SIGUSR1) };
                }
                std::thread::sleep(period);
            }
        });
        Kicker { stop, thread: Some(thread) }
    }
}

impl Drop for Kicker {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn vcpu_threads(pid: u32) -> Vec<i32> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| {
            let comm = fs::read_to_string(e.path().join("comm")).ok()?;
            if comm.starts_with("CPU ") && comm.contains("/KVM") {
                e.file_name().to_str()?.parse().ok()
            } else {
                None
            }
        })
        .collect()
}

fn tail(s: &str, n: usize) -> &str {
    let start = s.len().saturating_sub(n);
    let mut i = start;
    while !s.is_char_boundary(i) {
        i += 1;
    }
    &s[i..]
}
