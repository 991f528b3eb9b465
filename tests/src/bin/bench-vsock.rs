//! `make bench-vsock`: host <-> agent vsock throughput and round-trip latency in one pod VM.
//!
//! Boots one VM (`carapace vmm --shared-dir DIR`, the real guest kernel and initramfs) with a
//! busybox rootfs in the shared directory, then:
//! - round trip: the median of N (BENCH_RR_N, default 300) sequential agent `Health` RPCs, each a
//!   small request and a small answer over the vsock connection of one gRPC channel;
//! - throughput: a container writes M MiB (BENCH_VSOCK_MIB, default 16) of zeroes to its stdout
//!   (`head -c`), which the host reads through the agent's `ReadStdio` stream; the figure is the
//!   bytes received over the time from the first to the last chunk (guest -> host direction, the
//!   path of every container's output). One untimed warm-up run comes first.
//!
//! The last line is `vsock: throughput <X> MiB/s, rr median <Y> us`. Timings in the emulated
//! test host are emulated: compare only figures from runs in the same environment.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use carapace_agent_client::pb;
use carapace_agent_client::{AgentClient, GUEST_SHARED_DIR};
use carapace_tests::vm::{busybox_rootfs, SharedDirVm};
use carapace_tests::{median_ms, GuestImage};

const STREAM_DEADLINE: Duration = Duration::from_secs(120);

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default).max(1)
}

fn main() -> Result<()> {
    let rr_n = env_usize("BENCH_RR_N", 300);
    let mib = env_usize("BENCH_VSOCK_MIB", 16);
    let image = GuestImage::from_env()?;
    let mut vm = SharedDirVm::boot(&image, "carapace-bench-vsock-", |shared| {
        busybox_rootfs(&shared.join("rootfs"))
    })?;
    let rt = carapace_tests::multi_thread_runtime()?;
    let res = rt.block_on(async {
        let agent = vm.connect_agent().await?;
        let rr = round_trips(&agent, rr_n).await?;
        stream(&agent, "warm-up", 1).await.context("warm-up stream")?;
        let mibps = stream(&agent, "bench", mib).await?;
        agent.shutdown().await.context("shutdown")?;
        Ok::<_, anyhow::Error>((mibps, rr))
    });
    let (mibps, rr_us) = match res {
        Ok(v) => {
            let _ = vm.vm.wait_exit(Duration::from_secs(30));
            v
        }
        Err(e) => return Err(e.context(vm.vm.diagnostics())),
    };
    println!("vsock: {mib} MiB guest -> host through ReadStdio; {rr_n} Health round trips");
    println!("vsock: throughput {mibps:.1} MiB/s, rr median {rr_us:.0} us");
    Ok(())
}

/// Median microseconds of `n` sequential Health RPCs (after 10 untimed ones).
async fn round_trips(agent: &AgentClient, n: usize) -> Result<f64> {
    let mut g = agent.grpc();
    let mut us = Vec::with_capacity(n);
    for i in 0..n + 10 {
        let t = Instant::now();
        g.health(pb::HealthRequest {}).await.context("health")?;
        if i >= 10 {
            us.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    median_ms(&mut us).context("no round trips")
}

/// Runs a container writing `mib` MiB to stdout and reads it all; returns MiB/s.
async fn stream(agent: &AgentClient, id: &str, mib: usize) -> Result<f64> {
    let mut g = agent.grpc();
    let total = mib << 20;
    let req = pb::CreateContainerRequest {
        id: id.into(),
        process: Some(pb::Process {
            args: vec!["head".into(), "-c".into(), total.to_string(), "/dev/zero".into()],
            ..Default::default()
        }),
        rootfs_path: format!("{GUEST_SHARED_DIR}/rootfs"),
        rootfs_readonly: true,
        hostname: "bench".into(),
        ..Default::default()
    };
    g.create_container(req).await.with_context(|| format!("create {id}"))?;
    let mut reader = g.clone();
    let stdio = pb::ReadStdioRequest { container_id: id.into(), exec_id: String::new() };
    let output = tokio::spawn(async move {
        let mut s = reader.read_stdio(stdio).await?.into_inner();
        let (mut got, mut first, mut last) = (0usize, None, Instant::now());
        while let Some(c) = s.message().await? {
            if c.stream == pb::stdio_chunk::Stream::Stdout as i32 && !c.data.is_empty() {
                first.get_or_insert_with(Instant::now);
                got += c.data.len();
                last = Instant::now();
            }
        }
        Ok::<_, anyhow::Error>((got, first, last))
    });
    g.start_container(pb::StartContainerRequest { id: id.into() })
        .await
        .with_context(|| format!("start {id}"))?;
    let (got, first, last) = tokio::time::timeout(STREAM_DEADLINE, output)
        .await
        .context("container output did not end")?
        .context("ReadStdio task")?
        .context("ReadStdio")?;
    let waited = g.wait_container(pb::WaitContainerRequest { id: id.into() }).await?.into_inner();
    ensure!(waited.exit_code == 0, "{id}: head exited with {}", waited.exit_code);
    g.remove_container(pb::RemoveContainerRequest { id: id.into(), force: true }).await?;
    ensure!(got == total, "{id}: received {got} of {total} bytes");
    let Some(first) = first else { bail!("{id}: no output") };
    let secs = last.duration_since(first).as_secs_f64().max(1e-6);
    let mibps = got as f64 / (1 << 20) as f64 / secs;
    println!("vsock stream {id}: {got} bytes in {:.0} ms ({mibps:.1} MiB/s)", secs * 1000.0);
    Ok(mibps)
}
