//! End-to-end: a guest that writes its serial console and its shared dir without end is
//! stopped by the bounds (issue 10), and the host keeps its memory. Needs a KVM that boots
//! Linux; run in the test host.
//!
//! One pod with a small disk (`[pods] shared_dir_size_mib`) and a small serial log cap. A
//! privileged container in it (the guest's own doing, nothing from the host) turns off the
//! guest kernel's /dev/kmsg rate limit and writes printk lines to /dev/kmsg without end, so
//! they reach the serial console; once the host has seen the serial log rotate, it mounts the
//! virtio-fs tag itself and writes one file into the share until the write fails, then keeps
//! appending to another for ever. Checked at every poll: the serial log and its one rotated
//! generation stay within the cap (no other generation appears). Then: the fill ended with
//! ENOSPC at about the bound; CreateContainer on the full disk fails with ResourceExhausted
//! naming the key; the daemon still answers (status, ExecSync in the flooding container); host
//! MemAvailable fell by less than the VM's memory plus twice the disk plus slack, and the
//! daemon's and VMM's RSS stay bounded. Afterwards the pod's removal leaves nothing (no disk
//! image, no loop mount).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use carapace_cri::k8s_cri::v1 as cri;
use carapace_cri::tonic;
use carapace_tests::cri::{
    container_config, pod_config, pull_image, run_pod, runtime, with_log, Daemon, DaemonOptions,
};
use carapace_tests::registry::Registry;

const DAEMON_ENV: &str = "CARAPACE_BOUNDS_E2E_DAEMON";
const POD: &str = "bounds";
const DISK_MIB: u64 = 48;
const SERIAL_CAP: u64 = 16384;
/// Room for the marker line a rotation or a drop writes past the cap.
const MARKER_SLACK: u64 = 512;
const MIB: u64 = 1 << 20;

/// Not a test: the daemon process of the test below when `carapace serve` is not available.
#[test]
#[ignore = "needs a KVM that boots Linux guests: run in the test host"]
fn daemon_process() {
    carapace_tests::cri::daemon_process(DAEMON_ENV);
}

/// The flooding container (busybox sh).
const FLOOD: &str = r#"
b=busybox
echo on > /proc/sys/kernel/printk_devkmsg
echo 8 > /proc/sys/kernel/printk
K=/dev/kmsg
if [ ! -c $K ]; then
  $b mkdir -p /kd && $b mount -t tmpfs kd /kd && $b mknod /kd/kmsg c 1 11 && K=/kd/kmsg
fi
L=FLOOD-0123456789abcdefghijklmnopqrstuvwxyz-0123456789abcdefghijklmnopqrstuvwxyz
( i=0; while :; do echo "<2>$L $i" > $K; i=$((i+1)); done ) 2>/dev/null &
S=/tmp/share
$b mkdir -p $S
$b mount -t virtiofs carapace $S || { echo "FLOOD cannot mount the share"; exit 1; }
echo "FLOOD-READY"
while [ ! -e $S/go-fill ]; do $b sleep 1; done
$b dd if=/dev/zero of=$S/fill bs=65536 2>/dev/shm/dd.err
echo "FILL-END $($b stat -c %s $S/fill) $($b tr '\n' ' ' < /dev/shm/dd.err)"
while :; do echo 0123456789abcdef >> $S/more; done 2>/dev/null
"#;

fn mem_available() -> Result<u64> {
    let m = std::fs::read_to_string("/proc/meminfo")?;
    let kb = m
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .context("no MemAvailable in /proc/meminfo")?;
    Ok(kb * 1024)
}

fn rss(pid: impl std::fmt::Display) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = s
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .with_context(|| format!("no VmRSS for {pid}"))?;
    Ok(kb * 1024)
}

fn size(p: &Path) -> u64 {
    std::fs::symlink_metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// The serial log and its rotated generation are within the cap; no other generation exists.
fn check_serial(pod_dir: &Path) -> Result<()> {
    for name in ["serial.log", "serial.log.1"] {
        let n = size(&pod_dir.join(name));
        ensure!(n <= SERIAL_CAP + MARKER_SLACK, "{name} is {n} bytes, over the cap {SERIAL_CAP}");
    }
    let extra: Vec<String> = std::fs::read_dir(pod_dir)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("serial") && n != "serial.log" && n != "serial.log.1")
        .collect();
    ensure!(extra.is_empty(), "more serial log files than one rotation: {extra:?}");
    Ok(())
}

/// The end of each pod's vmm.log, for a failure's message.
fn vmm_logs(d: &Daemon) -> String {
    let mut out = String::new();
    for e in std::fs::read_dir(d.pods_dir()).into_iter().flatten().flatten() {
        let text = std::fs::read_to_string(e.path().join("vmm.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        out.push_str(&format!("--- {}/vmm.log (end) ---\n{tail}\n", e.path().display()));
    }
    out
}

struct Mem {
    avail: u64,
    daemon: u64,
}

/// The pod VM's memory (the default profile's).
fn guest_mem_mib() -> u64 {
    u64::from(carapace_cri::config::VmProfile::default().mem_mib)
}

/// Host memory stays within bounds of the baseline `base`: what the VM may touch, twice the
/// disk (its image in the test host's tmpfs, and its page cache), and slack.
fn check_mem(d: &Daemon, base: &Mem, vmm: i32, when: &str) -> Result<()> {
    let avail = mem_available()?;
    let fell = base.avail.saturating_sub(avail);
    let allowed = (guest_mem_mib() + 2 * DISK_MIB + 192) * MIB;
    ensure!(
        fell <= allowed,
        "{when}: MemAvailable fell by {} MiB (bound {} MiB)",
        fell / MIB,
        allowed / MIB
    );
    let daemon = rss(d.pid().context("daemon gone")?)?;
    ensure!(
        daemon <= base.daemon + 64 * MIB,
        "{when}: daemon RSS grew from {} to {} MiB",
        base.daemon / MIB,
        daemon / MIB
    );
    let v = rss(vmm)?;
    ensure!(v <= (guest_mem_mib() + 160) * MIB, "{when}: VMM RSS is {} MiB", v / MIB);
    Ok(())
}

#[test]
#[ignore = "needs a KVM that boots Linux guests: run in the test host"]
fn a_guest_flooding_its_console_and_shared_dir_is_stopped_by_the_bounds() {
    let started = Instant::now();
    let reg = Registry::start("regb", "info").expect("test registry");
    let extra =
        format!("[pods]\nshared_dir_size_mib = {DISK_MIB}\nserial_log_max_bytes = {SERIAL_CAP}\n");
    let d = Daemon::start(DaemonOptions {
        dir_prefix: "crib",
        insecure_registry: Some(reg.addr.clone()),
        fallback_env: Some(DAEMON_ENV),
        extra_config: extra,
        ..Default::default()
    })
    .expect("daemon");
    let r = runtime().block_on(async {
        let mut c = d.client().await?;
        let mut images = d.image_client().await?;
        let busybox = reg.image("test/busybox:latest");
        pull_image(&mut images, &busybox).await?;
        let pod_cfg = pod_config("e2e", POD, 0, &d.logs_dir(POD));
        let pod = run_pod(&mut c, &pod_cfg).await?;
        let pod_dir = d.pods_dir().join(&pod);
        let vmm = *d.vmm_processes().first().context("no VMM process")?;

        let mut fcfg = container_config("flood", &busybox, &["sh", "-c", FLOOD]);
        fcfg.linux = Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                privileged: true,
                ..Default::default()
            }),
            ..Default::default()
        });
        let flood = c
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(fcfg),
                sandbox_config: Some(pod_cfg.clone()),
            })
            .await?
            .into_inner()
            .container_id;
        let base = Mem { avail: mem_available()?, daemon: rss(d.pid().context("no daemon")?)? };
        c.start_container(cri::StartContainerRequest { container_id: flood.clone() }).await?;
        let flog = d.logs_dir(POD).join("flood/0.log");
        let wait_log = |want: &'static str, secs: u64| {
            let (flog, pod_dir) = (flog.clone(), pod_dir.clone());
            async move {
                let deadline = Instant::now() + Duration::from_secs(secs);
                loop {
                    check_serial(&pod_dir)?;
                    let text = std::fs::read_to_string(&flog).unwrap_or_default();
                    if let Some(l) = text.lines().find(|l| l.contains(want)) {
                        return Ok::<String, anyhow::Error>(l.to_string());
                    }
                    ensure!(!text.contains("cannot mount"), "the flood did not start:\n{text}");
                    ensure!(Instant::now() < deadline, "no {want:?} in the flood's log:\n{text}");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        };
        wait_log("FLOOD-READY", 120).await?;

        // The console flood: the serial log rotates and stays within its cap.
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            check_serial(&pod_dir)?;
            let old = std::fs::read(pod_dir.join("serial.log.1")).unwrap_or_default();
            if String::from_utf8_lossy(&old).contains("FLOOD-") {
                break;
            }
            ensure!(Instant::now() < deadline, "the serial log never rotated under the flood");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        check_mem(&d, &base, vmm, "console flood")?;
        eprintln!("serial log rotated after {:?}", started.elapsed());

        // The shared-dir flood: ENOSPC at about the bound.
        std::fs::write(pod_dir.join("shared/go-fill"), "")?;
        let end = wait_log("FILL-END", 600).await?;
        ensure!(end.contains("No space left on device"), "the fill did not end with ENOSPC: {end}");
        let filled = size(&pod_dir.join("shared/fill"));
        ensure!(
            (DISK_MIB * MIB / 2..=DISK_MIB * MIB).contains(&filled),
            "the fill stopped at {filled} bytes, not about the {DISK_MIB} MiB bound"
        );
        eprintln!("shared dir full at {filled} bytes after {:?}", started.elapsed());

        // A clear error for a call that needs the full disk.
        let late = c
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(container_config("late", &busybox, &["true"])),
                sandbox_config: Some(pod_cfg.clone()),
            })
            .await;
        match late {
            Err(e) => ensure!(
                e.code() == tonic::Code::ResourceExhausted
                    && e.message().contains("pods.shared_dir_size_mib"),
                "CreateContainer on a full disk: {e:?}"
            ),
            Ok(r) => anyhow::bail!("CreateContainer on a full disk succeeded: {r:?}"),
        }

        // The floods go on; the daemon answers and the host keeps its memory.
        for i in 0..10 {
            let when = format!("while flooding ({i})");
            check_serial(&pod_dir).context(when.clone())?;
            check_mem(&d, &base, vmm, &when)?;
            let st = c
                .pod_sandbox_status(cri::PodSandboxStatusRequest {
                    pod_sandbox_id: pod.clone(),
                    verbose: false,
                })
                .await
                .with_context(|| format!("{when}: PodSandboxStatus"))?
                .into_inner();
            let ready = cri::PodSandboxState::SandboxReady as i32;
            ensure!(st.status.map(|s| s.state) == Some(ready), "{when}: pod not ready");
            let out = c
                .exec_sync(cri::ExecSyncRequest {
                    container_id: flood.clone(),
                    cmd: vec!["echo".into(), "alive".into()],
                    timeout: 60,
                })
                .await
                .with_context(|| format!("{when}: ExecSync"))?
                .into_inner();
            ensure!(out.stdout == b"alive\n", "{when}: ExecSync said {out:?}");
            ensure!(size(&pod_dir.join("shared/fill")) <= DISK_MIB * MIB, "{when}: fill grew");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let vmm_log = std::fs::read_to_string(pod_dir.join("vmm.log")).unwrap_or_default();
        eprintln!("vmm.log: {} bytes", vmm_log.len());

        c.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod.clone() }).await?;
        c.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod.clone() }).await?;
        d.assert_clean()?;
        eprintln!("done in {:?}", started.elapsed());
        Ok::<(), anyhow::Error>(())
    });
    with_log(&d, r.map_err(|e| e.context(vmm_logs(&d))));
}
