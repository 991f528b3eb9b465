//! `make bench-cri`: the whole CRI lifecycle of a pod through `carapace serve`, timed per step.
//!
//! Starts a throwaway `docker-registry` on 127.0.0.1 with the project's test images
//! (tests/images/build-and-push.sh), starts `carapace serve` with state/run/image dirs in a private
//! directory under /tmp (the daemon passes CARAPACE_VMM_KICK_MS on to its VMMs), pulls
//! test/busybox:latest through the daemon's ImageService, then for N pods (BENCH_N, default 10):
//! RunPodSandbox, CreateContainer (a long-running `sleep` under a shell that exits on SIGTERM,
//! since a bare `sleep` as its namespace's PID 1 ignores SIGTERM and every stop would take the
//! whole grace period), StartContainer, ExecSync (`echo hi`), StopContainer, RemoveContainer,
//! StopPodSandbox, RemovePodSandbox, each timed from request to answer.
//!
//! Peer in the same run: containerd 1.6 + runc (Debian packages), driven through its CRI socket by
//! the same client and steps; its pods use the host network (no CNI needed) and its sandbox_image
//! is a pause-like image (busybox `sleep`) the bench pushes to the same registry. Both pull their
//! images before the first pod (not timed). If containerd is missing or fails, its figures are
//! `n/a` with the reason on a line of its own.
//!
//! Prints the median ms of each step (runp, create, start, exec, stop, rm, stopp, rmp) per runtime,
//! then the carapace/containerd ratio of the median totals; the last line is
//! `cri lifecycle: median total <X> ms over <N> pods` (carapace).

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use carapace_cri::k8s_cri::v1 as cri;
use carapace_tests::containerd::{push_pause_image, Containerd, ContainerdOptions};
use carapace_tests::cri::{
    container_config, pod_config as base_pod_config, pull_image, run_pod, use_host_network, Daemon,
    DaemonOptions,
};
use carapace_tests::median_ms;
use carapace_tests::registry::Registry;

const STEPS: [&str; 8] = ["runp", "create", "start", "exec", "stop", "rm", "stopp", "rmp"];
const STOP_TIMEOUT_S: i64 = 10;

/// A pod; `host_network` for the containerd peer (no CNI needed; carapace pods have their own
/// kernel and ignore it).
fn pod_config(logs: &Path, name: &str, host_network: bool) -> cri::PodSandboxConfig {
    let mut cfg = base_pod_config("bench", name, 0, &logs.join(name));
    if host_network {
        use_host_network(&mut cfg);
    }
    cfg
}

fn container(image: &str) -> cri::ContainerConfig {
    container_config("sleeper", image, &["sh", "-c", "trap 'exit 0' TERM; sleep 1000 & wait $!"])
}

fn main() -> Result<()> {
    let n = carapace_tests::env_or("BENCH_N", 10usize).max(1);
    let reg = Registry::start("benchreg", "warn")?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;

    let ours = {
        // `carapace serve` with private state/run/image dirs under /tmp ("bcri": short, the pods'
        // vsock socket paths live under it and must fit a Unix socket address).
        let daemon = Daemon::start(DaemonOptions {
            dir_prefix: "bcri",
            insecure_registry: Some(reg.addr.clone()),
            log_level: "warn",
            ..Default::default()
        })?;
        let res = rt.block_on(lifecycles(
            "carapace",
            daemon.socket(),
            &daemon.logs_root(),
            &reg.addr,
            &[],
            n,
            false,
        ));
        let per_pod = match res {
            Ok(v) => v,
            Err(e) => bail!("{e:#}\n--- daemon log ---\n{}", daemon.log()),
        };
        let left = daemon.vmm_processes();
        ensure!(left.is_empty(), "VMMs left running after RemovePodSandbox: {left:?}");
        per_pod
    };

    // Peer: containerd 1.6 + runc (Debian), the same client and steps, host-network pods.
    let peer = match containerd_series(&rt, &reg.addr, n) {
        Ok(v) => Some(v),
        Err(e) => {
            println!(
                "containerd: n/a — {}",
                format!("{e:#}").lines().take(3).collect::<Vec<_>>().join(" | ")
            );
            None
        }
    };

    let ours_total = report("carapace", &ours);
    if let Some(peer) = &peer {
        let theirs_total = report("containerd+runc", peer);
        println!(
            "cri lifecycle: carapace/containerd ratio {:.2} \
             (carapace {ours_total:.0} ms, containerd+runc {theirs_total:.0} ms)",
            ours_total / theirs_total
        );
    }
    println!("cri lifecycle: median total {ours_total:.0} ms over {n} pods");
    Ok(())
}

/// Prints the median of each step; returns the median total.
fn report(who: &str, per_pod: &[[f64; 8]]) -> f64 {
    let mut parts = Vec::new();
    for (s, name) in STEPS.iter().enumerate() {
        let mut v: Vec<f64> = per_pod.iter().map(|p| p[s]).collect();
        let m = median_ms(&mut v).unwrap_or(f64::NAN);
        parts.push(format!("{name} {m:.0}"));
    }
    let mut totals: Vec<f64> = per_pod.iter().map(|p| p.iter().sum()).collect();
    let total = median_ms(&mut totals).unwrap_or(f64::NAN);
    println!(
        "{who}: median ms per step over {} pods: {}; total {total:.0}",
        per_pod.len(),
        parts.join(", ")
    );
    total
}

/// Pulls busybox, then runs N pod lifecycles; returns the step times (ms) of each pod.
/// `extra_images` are pulled first too (containerd's sandbox image).
async fn lifecycles(
    who: &str,
    socket: &Path,
    logs: &Path,
    registry: &str,
    extra_images: &[String],
    n: usize,
    host_network: bool,
) -> Result<Vec<[f64; 8]>> {
    let mut c = carapace_cri::client::connect(socket).await?;
    let mut images = carapace_cri::client::connect_images(socket).await?;
    let busybox = format!("{registry}/test/busybox:latest");
    for image in std::iter::once(&busybox).chain(extra_images) {
        let t = Instant::now();
        pull_image(&mut images, image).await?;
        println!("{who}: pull {image}: {:.0} ms (not counted)", t.elapsed().as_secs_f64() * 1000.0);
    }

    let mut all = Vec::new();
    for i in 0..n {
        let mut times = [0f64; 8];
        let mut step = 0;
        let mut lap = |t: &mut Instant| {
            times[step] = t.elapsed().as_secs_f64() * 1000.0;
            step += 1;
            *t = Instant::now();
        };
        let pod_cfg = pod_config(logs, &format!("bench-{i}"), host_network);
        let mut t = Instant::now();
        let pod = run_pod(&mut c, &pod_cfg).await?;
        lap(&mut t);
        let cid = c
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(container(&busybox)),
                sandbox_config: Some(pod_cfg.clone()),
            })
            .await
            .context("CreateContainer")?
            .into_inner()
            .container_id;
        lap(&mut t);
        c.start_container(cri::StartContainerRequest { container_id: cid.clone() })
            .await
            .context("StartContainer")?;
        lap(&mut t);
        let r = c
            .exec_sync(cri::ExecSyncRequest {
                container_id: cid.clone(),
                cmd: vec!["echo".into(), "hi".into()],
                timeout: 60,
            })
            .await
            .context("ExecSync")?
            .into_inner();
        lap(&mut t);
        ensure!(r.exit_code == 0 && r.stdout == b"hi\n", "ExecSync answered {r:?}");
        t = Instant::now();
        c.stop_container(cri::StopContainerRequest {
            container_id: cid.clone(),
            timeout: STOP_TIMEOUT_S,
        })
        .await
        .context("StopContainer")?;
        lap(&mut t);
        c.remove_container(cri::RemoveContainerRequest { container_id: cid.clone() })
            .await
            .context("RemoveContainer")?;
        lap(&mut t);
        c.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: pod.clone() })
            .await
            .context("StopPodSandbox")?;
        lap(&mut t);
        c.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod.clone() })
            .await
            .context("RemovePodSandbox")?;
        lap(&mut t);
        let line: Vec<String> =
            STEPS.iter().zip(times.iter()).map(|(s, v)| format!("{s} {v:.0}")).collect();
        println!(
            "{who} pod {}: {} (ms), total {:.0} ms",
            i + 1,
            line.join(", "),
            times.iter().sum::<f64>()
        );
        all.push(times);
    }
    Ok(all)
}

fn containerd_series(
    rt: &tokio::runtime::Runtime,
    registry: &str,
    n: usize,
) -> Result<Vec<[f64; 8]>> {
    let pause = push_pause_image(registry)?;
    let ctd = Containerd::start(&ContainerdOptions {
        registry: registry.into(),
        sandbox_image: pause.clone(),
        cni: None,
    })?;
    let res = rt.block_on(lifecycles(
        "containerd+runc",
        ctd.socket(),
        &ctd.logs_root(),
        registry,
        std::slice::from_ref(&pause),
        n,
        true,
    ));
    res.map_err(|e| anyhow::anyhow!("{e:#}\n--- containerd log (tail) ---\n{}", ctd.log()))
}
