//! `make bench-exec`: `crictl exec` through carapace's streaming server against containerd 1.6
//! + runc (Debian packages) in the same run, with the same crictl (v1.36.0, SPDY).
//!
//! For each runtime: one pod with one busybox container (`sleep`), then BENCH_N (default 20)
//! round trips of `crictl exec CID true`, timed from spawn to exit (median ms), and BENCH_MIB
//! (default 64) MiB of exec stdout (`head -c ... /dev/zero`, read by the benchmark through a pipe),
//! three runs, median MiB/s. containerd's pod uses the host network (no CNI needed). If
//! containerd is missing or fails, its figures are `n/a` with the reason.
//!
//! Last line:
//! `exec: carapace median <X> ms, runc median <Y> ms, ratio <X/Y>; stream carapace <A> MiB/s,
//! runc <B> MiB/s` (one line).

use std::io::Read;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use carapace_cri::k8s_cri::v1 as cri;
use carapace_tests::containerd::{push_pause_image, Containerd, ContainerdOptions};
use carapace_tests::cri::{
    container_config, create_container, pod_config, pull_image, run_pod, use_host_network,
    wait_container_state, Daemon, DaemonOptions,
};
use carapace_tests::crictl::{describe, Crictl};
use carapace_tests::registry::Registry;
use carapace_tests::{env_or, median_ms};

const RUNNING: i32 = cri::ContainerState::ContainerRunning as i32;
const STREAM_RUNS: usize = 3;

/// The figures of one runtime.
struct Figures {
    exec_ms: f64,
    stream_mib_s: f64,
}

fn main() -> Result<()> {
    let n = env_or("BENCH_N", 20usize).max(1);
    let mib = env_or("BENCH_MIB", 64usize).max(1);
    let reg = Registry::start("benchreg", "warn")?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;

    let ours = {
        let daemon = Daemon::start(DaemonOptions {
            dir_prefix: "bexe",
            insecure_registry: Some(reg.addr.clone()),
            log_level: "warn",
            ..Default::default()
        })?;
        let cid =
            rt.block_on(start_container(daemon.socket(), &daemon.logs_root(), &reg, &[], false));
        let cid =
            cid.map_err(|e| anyhow::anyhow!("{e:#}\n--- daemon log ---\n{}", daemon.log()))?;
        measure("carapace", &Crictl::new(daemon.socket())?, &cid, n, mib)?
    };

    let theirs = (|| -> Result<Figures> {
        let pause = push_pause_image(&reg.addr)?;
        let ctd = Containerd::start(&ContainerdOptions {
            registry: reg.addr.clone(),
            sandbox_image: pause.clone(),
            cni: None,
        })?;
        let cid = rt
            .block_on(start_container(ctd.socket(), &ctd.logs_root(), &reg, &[pause], true))
            .map_err(|e| anyhow::anyhow!("{e:#}\n--- containerd log ---\n{}", ctd.log()))?;
        measure("containerd+runc", &Crictl::new(ctd.socket())?, &cid, n, mib)
    })();
    let theirs = match theirs {
        Ok(f) => Some(f),
        Err(e) => {
            let why = format!("{e:#}").lines().take(3).collect::<Vec<_>>().join(" | ");
            println!("containerd: n/a — {why}");
            None
        }
    };
    let (y, b, ratio) = match &theirs {
        Some(t) => (
            format!("{:.1}", t.exec_ms),
            format!("{:.1}", t.stream_mib_s),
            format!("{:.2}", ours.exec_ms / t.exec_ms),
        ),
        None => ("n/a".into(), "n/a".into(), "n/a".into()),
    };
    println!(
        "exec: carapace median {:.1} ms, runc median {y} ms, ratio {ratio}; \
         stream carapace {:.1} MiB/s, runc {b} MiB/s",
        ours.exec_ms, ours.stream_mib_s
    );
    Ok(())
}

/// Pulls busybox (and `extra` images), runs a pod with a `sleep` container; its ID.
async fn start_container(
    socket: &Path,
    logs: &Path,
    reg: &Registry,
    extra: &[String],
    host_network: bool,
) -> Result<String> {
    let mut c = carapace_cri::client::connect(socket).await?;
    let mut images = carapace_cri::client::connect_images(socket).await?;
    let busybox = reg.image("test/busybox:latest");
    for img in extra.iter().chain([&busybox]) {
        pull_image(&mut images, img).await?;
    }
    let mut pod_cfg = pod_config("bench", "exec", 0, &logs.join("exec"));
    if host_network {
        use_host_network(&mut pod_cfg);
    }
    let pod = run_pod(&mut c, &pod_cfg).await?;
    let cfg = container_config("box", &busybox, &["sleep", "100000"]);
    let id = create_container(&mut c, &pod, &pod_cfg, cfg).await?;
    c.start_container(cri::StartContainerRequest { container_id: id.clone() }).await?;
    wait_container_state(&mut c, &id, RUNNING).await?;
    Ok(id)
}

fn measure(who: &str, k: &Crictl, cid: &str, n: usize, mib: usize) -> Result<Figures> {
    let mut trips = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        let o = k.run("exec", &[cid, "true"])?;
        ensure!(o.status.success(), "{who}: crictl exec true: {}", describe(&o));
        trips.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let exec_ms = median_ms(&mut trips).context("no round trips")?;
    let bytes = mib << 20;
    let mut rates = Vec::new();
    for _ in 0..STREAM_RUNS {
        let gen = format!("head -c {bytes} /dev/zero");
        let t = Instant::now();
        let mut child =
            k.command("exec", &[cid, "sh", "-c", &gen]).stdout(Stdio::piped()).spawn()?;
        let mut out = child.stdout.take().context("stdout")?;
        let mut buf = vec![0u8; 1 << 20];
        let mut got = 0usize;
        loop {
            let r = out.read(&mut buf)?;
            if r == 0 {
                break;
            }
            got += r;
        }
        let st = child.wait()?;
        let secs = t.elapsed().max(Duration::from_millis(1)).as_secs_f64();
        ensure!(st.success() && got == bytes, "{who}: stream got {got} of {bytes} bytes ({st})");
        rates.push(mib as f64 / secs);
    }
    let stream_mib_s = median_ms(&mut rates).context("no stream runs")?;
    let mut sorted = trips.clone();
    sorted.sort_by(|a, b| a.total_cmp(b));
    println!(
        "{who}: exec true median {exec_ms:.1} ms (min {:.1}, max {:.1}, n {n}); \
         stream {stream_mib_s:.1} MiB/s (median of {STREAM_RUNS} x {mib} MiB)",
        sorted.first().copied().unwrap_or(f64::NAN),
        sorted.last().copied().unwrap_or(f64::NAN),
    );
    Ok(Figures { exec_ms, stream_mib_s })
}
