//! `make bench-density`: the host memory an idle pod costs, carapace against containerd + runc.
//!
//! Starts a throwaway `docker-registry` with the test images, then N pods (BENCH_N, default 20)
//! through `carapace serve`, each with one idle busybox container (`sleep` under a shell), and
//! lets them settle (BENCH_SETTLE_S, default 20 s: the guests' boot-time allocations freed and
//! reported back). A carapace pod costs the proportional set size (PSS, /proc/<pid>/smaps_rollup)
//! of its VMM process, guest memory included, plus the daemon-side files of the pod that live in
//! RAM (files under the daemon's run dir on a tmpfs; the pod disk is an image on disk). The
//! daemon itself is shared by all pods and not counted, like containerd's daemon below.
//!
//! Peer in the same run: N containerd 1.6 + runc pods (Debian packages, host network, the same
//! client, image and container); a pod costs the PSS of its shim and every process below it
//! (the pause-like sandbox and the container's processes). PSS splits shared pages between their
//! users, so N pods of one runtime add up to what they take together.
//!
//! Prints the per-pod figures of each runtime, then the last line
//! `density: carapace <X> MiB per pod, runc <Y> MiB per pod, ratio <X/Y> over <N> pods`.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use carapace_cri::k8s_cri::v1 as cri;
use carapace_tests::containerd::{push_pause_image, Containerd, ContainerdOptions};
use carapace_tests::cri::{
    pod_config, pull_image, run_pod, start_container, use_host_network, Daemon, DaemonOptions,
};
use carapace_tests::env_or;
use carapace_tests::registry::Registry;

const SLEEPER: [&str; 3] = ["sh", "-c", "trap 'exit 0' TERM; sleep 100000 & wait $!"];
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// PSS of process `pid` in KiB (smaps_rollup), None if it is gone.
fn pss_kib(pid: i32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    text.lines().find_map(|l| {
        let rest = l.strip_prefix("Pss:")?;
        rest.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

/// Every live process and its parent.
fn parents() -> HashMap<i32, i32> {
    let mut map = HashMap::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { continue };
        // "pid (comm) S ppid ...": the comm may hold spaces and parentheses.
        let Some(after) = stat.rsplit_once(')').map(|(_, a)| a) else { continue };
        if let Some(ppid) = after.split_whitespace().nth(1).and_then(|p| p.parse().ok()) {
            map.insert(pid, ppid);
        }
    }
    map
}

/// `root` and every process below it.
fn tree(root: i32, parents: &HashMap<i32, i32>) -> Vec<i32> {
    let mut out = vec![root];
    let mut i = 0;
    while let Some(&p) = out.get(i) {
        out.extend(parents.iter().filter(|(_, &pp)| pp == p).map(|(&c, _)| c));
        i += 1;
    }
    out
}

/// The file system type (statfs f_type) of the directory `dir`.
fn fs_type(dir: &Path) -> Option<i64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statfs(2) fills a zeroed local struct from a NUL-terminated path.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        (libc::statfs(path.as_ptr(), &mut st) == 0).then_some(st.f_type as i64)
    }
}

/// Bytes of the regular files below `dir` that are on a tmpfs (host RAM), not following
/// symlinks.
fn ram_file_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let on_tmpfs = fs_type(&d) == Some(TMPFS_MAGIC);
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(meta) = std::fs::symlink_metadata(e.path()) else { continue };
            if meta.is_dir() {
                stack.push(e.path());
            } else if meta.is_file() && on_tmpfs {
                total += std::os::unix::fs::MetadataExt::blocks(&meta) * 512;
            }
        }
    }
    total
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Starts `n` pods with an idle container through the CRI socket; returns their IDs.
async fn start_pods(
    who: &str,
    socket: &Path,
    logs: &Path,
    image: &str,
    extra_images: &[String],
    n: usize,
    host_network: bool,
) -> Result<Vec<String>> {
    let mut c = carapace_cri::client::connect(socket).await?;
    let mut images = carapace_cri::client::connect_images(socket).await?;
    for img in std::iter::once(&image.to_string()).chain(extra_images) {
        pull_image(&mut images, img).await?;
    }
    let mut pods = Vec::new();
    for i in 0..n {
        let name = format!("density-{i}");
        let mut cfg = pod_config("bench", &name, 0, &logs.join(&name));
        if host_network {
            use_host_network(&mut cfg);
        }
        let pod = run_pod(&mut c, &cfg).await.with_context(|| format!("{who} pod {i}"))?;
        start_container(&mut c, &pod, &cfg, "idle", image, &SLEEPER).await?;
        pods.push(pod);
    }
    println!("{who}: {n} pods with an idle container running");
    Ok(pods)
}

/// Stops and removes `pods` (so containerd's shims and carapace's VMMs and disks go).
async fn remove_pods(socket: &Path, pods: &[String]) -> Result<()> {
    let mut c = carapace_cri::client::connect(socket).await?;
    for pod in pods {
        let id = pod.clone();
        c.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: id.clone() }).await?;
        c.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id }).await?;
    }
    Ok(())
}

/// Per-pod KiB of each carapace pod: its VMM's PSS plus its files in RAM.
fn carapace_costs(daemon: &Daemon, n: usize) -> Result<Vec<(u64, u64)>> {
    let pids = daemon.vmm_processes();
    ensure!(pids.len() == n, "{} VMM processes for {n} pods", pids.len());
    let files = ram_file_bytes(&daemon.pods_dir()) / 1024;
    let per_pod_files = files / n as u64;
    pids.iter().map(|&pid| Ok((pss_kib(pid).context("a VMM exited")?, per_pod_files))).collect()
}

/// Per-pod KiB of each containerd pod: the PSS of its shim's process tree.
fn runc_costs(n: usize) -> Result<Vec<u64>> {
    let parents = parents();
    let shims: Vec<i32> = parents
        .keys()
        .copied()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim().starts_with("containerd-shim"))
        })
        .collect();
    ensure!(shims.len() == n, "{} containerd shims for {n} pods", shims.len());
    Ok(shims
        .iter()
        .map(|&shim| tree(shim, &parents).iter().filter_map(|&p| pss_kib(p)).sum())
        .collect())
}

fn report(who: &str, per_pod_kib: &[u64]) -> f64 {
    let total: u64 = per_pod_kib.iter().sum();
    let mean = mib(total) / per_pod_kib.len().max(1) as f64;
    let (lo, hi) = (
        per_pod_kib.iter().min().copied().unwrap_or(0),
        per_pod_kib.iter().max().copied().unwrap_or(0),
    );
    println!(
        "{who}: {:.1} MiB per pod (min {:.1}, max {:.1}) over {} pods, {:.1} MiB in all",
        mean,
        mib(lo),
        mib(hi),
        per_pod_kib.len(),
        mib(total)
    );
    mean
}

fn main() -> Result<()> {
    let n = env_or("BENCH_N", 20usize).max(1);
    let settle = Duration::from_secs(env_or("BENCH_SETTLE_S", 20u64));
    let reg = Registry::start("densreg", "warn")?;
    let busybox = format!("{}/test/busybox:latest", reg.addr);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;

    let ours = {
        let daemon = Daemon::start(DaemonOptions {
            dir_prefix: "bden",
            insecure_registry: Some(reg.addr.clone()),
            log_level: "warn",
            ..Default::default()
        })?;
        let (sock, logs) = (daemon.socket(), daemon.logs_root());
        let pods = match rt.block_on(start_pods("carapace", sock, &logs, &busybox, &[], n, false)) {
            Ok(p) => p,
            Err(e) => bail!("{e:#}\n--- daemon log ---\n{}", daemon.log()),
        };
        std::thread::sleep(settle);
        let costs = carapace_costs(&daemon, n)?;
        rt.block_on(remove_pods(sock, &pods)).context("removing the carapace pods")?;
        let vmm: Vec<u64> = costs.iter().map(|c| c.0).collect();
        let files: u64 = costs.iter().map(|c| c.1).sum();
        report("carapace VMM PSS", &vmm);
        println!("carapace daemon-side files in RAM: {:.1} MiB in all", mib(files));
        costs.iter().map(|(v, f)| v + f).collect::<Vec<u64>>()
    };

    let peer = (|| -> Result<Vec<u64>> {
        let pause = push_pause_image(&reg.addr)?;
        let ctd = Containerd::start(&ContainerdOptions {
            registry: reg.addr.clone(),
            sandbox_image: pause.clone(),
            cni: None,
        })?;
        let started = rt.block_on(start_pods(
            "containerd+runc",
            ctd.socket(),
            &ctd.logs_root(),
            &busybox,
            std::slice::from_ref(&pause),
            n,
            true,
        ));
        let pods = match started {
            Ok(p) => p,
            Err(e) => bail!("{e:#}\n--- containerd log (tail) ---\n{}", ctd.log()),
        };
        std::thread::sleep(settle);
        let costs = runc_costs(n);
        rt.block_on(remove_pods(ctd.socket(), &pods)).context("removing the containerd pods")?;
        costs
    })();

    let x = report("carapace", &ours);
    let y = match peer {
        Ok(v) => report("containerd+runc", &v),
        Err(e) => {
            println!("containerd+runc: n/a — {}", format!("{e:#}").lines().next().unwrap_or(""));
            f64::NAN
        }
    };
    println!(
        "density: carapace {x:.1} MiB per pod, runc {y:.1} MiB per pod, ratio {:.2} over {n} pods",
        x / y
    );
    Ok(())
}
