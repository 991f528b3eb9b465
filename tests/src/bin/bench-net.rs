//! `make bench-net`: TCP throughput and request/response latency from the host to a server in a
//! carapace pod, against the same through a containerd + runc pod on the same CNI config, in
//! one run (inside the test host on these machines).
//!
//! One CNI setup (tests/src/net.rs): a bridge + host-local + portmap + loopback conflist in a
//! private conf dir, on its own bridge (`cnibench0`) and subnet (10.88.4.0/24), host-local's data
//! dir private. `carapace serve` gets that conf dir with Debian's plugin dir (/usr/lib/cni);
//! containerd 1.6's CRI plugin (tests/src/containerd.rs) gets the same conf dir and plugin dir,
//! so both pods take their addresses from the same conflist file, the same host-local store and
//! hang off the same bridge. A local docker-registry serves test/busybox (and containerd's pause
//! image).
//!
//! Each pod runs one busybox container with two `nc -ll` servers: a sink on port 5001 (`dd` to
//! /dev/null, the connection closes when the sender's side ends) and an echo on port 5002
//! (`cat`). From the host netns, by pod IP only:
//! - throughput: BENCH_NET_MIB (default 64) MiB written to the sink, timed from connect until
//!   the server closed the connection after the last byte; BENCH_NET_RUNS (default 5) runs per
//!   runtime, alternating between the two, the median counted;
//! - latency: one connection to the echo server, TCP_NODELAY, BENCH_NET_RR (default 1000) round
//!   trips of one byte after 50 untimed ones, the median round trip counted.
//!
//! A benchmark, not a test: nothing is asserted about the figures. The last line is
//! `net: carapace <X> Mbit/s, runc <Y> Mbit/s, ratio <X/Y>; rr carapace <A> us, runc <B> us,
//! ratio <A/B>` (one line).

use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use carapace_cri::k8s_cri::v1 as cri;
use carapace_cri::k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use carapace_cri::tonic::transport::Channel;
use carapace_tests::containerd::{push_pause_image, Containerd, ContainerdCni, ContainerdOptions};
use carapace_tests::cri::{
    pod_config, pod_network, pull_image, run_pod, start_container, Daemon, DaemonOptions,
};
use carapace_tests::median_ms;
use carapace_tests::net::{CniEnv, DEBIAN_PLUGINS, PORTMAP_AND_LOOPBACK};
use carapace_tests::registry::Registry;

const NET_NAME: &str = "benchnet";
const BRIDGE: &str = "cnibench0";
const SUBNET: &str = "10.88.4.0/24";
const SINK_PORT: u16 = 5001;
const ECHO_PORT: u16 = 5002;
const RR_WARMUP: usize = 50;
const IO_TIMEOUT: Duration = Duration::from_secs(120);

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default).max(1)
}

/// A pod with the sink and echo servers, through one runtime's CRI socket.
struct ServerPod {
    who: &'static str,
    client: RuntimeServiceClient<Channel>,
    id: String,
    ip: IpAddr,
}

impl ServerPod {
    async fn start(
        who: &'static str,
        socket: &Path,
        logs: &Path,
        busybox: &str,
        extra_images: &[String],
    ) -> Result<ServerPod> {
        let mut client = carapace_cri::client::connect(socket).await?;
        let mut images = carapace_cri::client::connect_images(socket).await?;
        for image in std::iter::once(&busybox.to_string()).chain(extra_images) {
            pull_image(&mut images, image).await?;
        }
        let name = format!("net-{}", who.split('+').next().unwrap_or(who));
        let cfg = pod_config("bench", &name, 0, &logs.join(&name));
        let t = Instant::now();
        let id = run_pod(&mut client, &cfg).await?;
        println!("{who}: RunPodSandbox {:.0} ms (not counted)", t.elapsed().as_secs_f64() * 1e3);
        let ip: IpAddr = pod_network(&mut client, &id)
            .await?
            .ip
            .parse()
            .with_context(|| format!("{who}: pod IP"))?;
        let servers = format!(
            "busybox nc -ll -p {SINK_PORT} -e /bin/busybox dd of=/dev/null bs=65536 & \
             busybox nc -ll -p {ECHO_PORT} -e /bin/cat & wait"
        );
        start_container(&mut client, &id, &cfg, "servers", busybox, &["sh", "-c", &servers])
            .await?;
        println!("{who}: pod {id} at {ip}");
        Ok(ServerPod { who, client, id, ip })
    }

    async fn remove(mut self) -> Result<()> {
        let id = self.id.clone();
        self.client
            .stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: id.clone() })
            .await
            .with_context(|| format!("{}: StopPodSandbox", self.who))?;
        self.client
            .remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id })
            .await
            .with_context(|| format!("{}: RemovePodSandbox", self.who))?;
        Ok(())
    }
}

/// Connects to `addr`, retrying for a minute (the server may still be starting).
fn connect(addr: SocketAddr) -> Result<TcpStream> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            Ok(s) => {
                s.set_read_timeout(Some(IO_TIMEOUT))?;
                s.set_write_timeout(Some(IO_TIMEOUT))?;
                return Ok(s);
            }
            Err(e) if Instant::now() > deadline => bail!("connect {addr}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(300)),
        }
    }
}

/// Sends `bytes` to the sink at `ip`; Mbit/s from connect until the server closed.
fn throughput(ip: IpAddr, bytes: usize) -> Result<f64> {
    let chunk = vec![0x5au8; 256 * 1024];
    let t = Instant::now();
    let mut s = connect(SocketAddr::new(ip, SINK_PORT))?;
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len());
        s.write_all(&chunk[..n]).with_context(|| format!("send to {ip}"))?;
        left -= n;
    }
    s.shutdown(Shutdown::Write)?;
    // The sink sends nothing; EOF means it read everything and exited.
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).with_context(|| format!("wait for {ip}'s sink to close"))?;
    let secs = t.elapsed().as_secs_f64();
    Ok(bytes as f64 * 8.0 / secs / 1e6)
}

/// `n` one-byte round trips to the echo server at `ip` over one connection (after untimed
/// warm-up ones); each round trip in microseconds.
fn round_trips(ip: IpAddr, n: usize) -> Result<Vec<f64>> {
    let mut s = connect(SocketAddr::new(ip, ECHO_PORT))?;
    s.set_nodelay(true)?;
    let mut times = Vec::with_capacity(n);
    let mut b = [0u8; 1];
    for i in 0..RR_WARMUP + n {
        let out = [(i % 251) as u8];
        let t = Instant::now();
        s.write_all(&out)?;
        s.read_exact(&mut b).with_context(|| format!("echo from {ip}"))?;
        let us = t.elapsed().as_secs_f64() * 1e6;
        ensure!(b == out, "echo from {ip} answered {b:?} to {out:?}");
        if i >= RR_WARMUP {
            times.push(us);
        }
    }
    Ok(times)
}

fn main() -> Result<()> {
    let mib = env_or("BENCH_NET_MIB", 64);
    let runs = env_or("BENCH_NET_RUNS", 5);
    let rr = env_or("BENCH_NET_RR", 1000);
    let reg = Registry::start("bnreg", "warn")?;
    let busybox = reg.image("test/busybox:latest");
    let cni = CniEnv::new("bnet")?;
    let conflist = cni.write_conflist(NET_NAME, BRIDGE, &[SUBNET], PORTMAP_AND_LOOPBACK)?;
    println!("cni: {} (both runtimes), plugins from {DEBIAN_PLUGINS}", conflist.display());

    // "bnd": short, the pods' vsock socket paths live under it.
    let daemon = Daemon::start(DaemonOptions {
        dir_prefix: "bnd",
        insecure_registry: Some(reg.addr.clone()),
        log_level: "warn",
        cni: Some(cni.dirs()),
        ..Default::default()
    })?;
    let pause = push_pause_image(&reg.addr)?;
    let ctd = Containerd::start(&ContainerdOptions {
        registry: reg.addr.clone(),
        sandbox_image: pause.clone(),
        cni: Some(ContainerdCni { conf_dir: cni.conf_dir(), bin_dir: DEBIAN_PLUGINS.into() }),
    })?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let ours = rt
        .block_on(ServerPod::start("carapace", daemon.socket(), &daemon.logs_root(), &busybox, &[]))
        .map_err(|e| anyhow::anyhow!("{e:#}\n--- daemon log ---\n{}", daemon.log()))?;
    let theirs = rt
        .block_on(ServerPod::start(
            "containerd+runc",
            ctd.socket(),
            &ctd.logs_root(),
            &busybox,
            std::slice::from_ref(&pause),
        ))
        .map_err(|e| anyhow::anyhow!("{e:#}\n--- containerd log (tail) ---\n{}", ctd.log()))?;
    let pods = [&ours, &theirs];

    let bytes = mib * 1024 * 1024;
    for p in pods {
        // Untimed: neighbour resolution, the servers' first fork, the guest's page cache.
        let w =
            throughput(p.ip, bytes.min(4 << 20)).with_context(|| format!("{} warm-up", p.who))?;
        println!("{}: warm-up {w:.1} Mbit/s (not counted)", p.who);
    }
    let mut tput = [Vec::new(), Vec::new()];
    for run in 1..=runs {
        for (i, p) in pods.iter().enumerate() {
            let m = throughput(p.ip, bytes).with_context(|| format!("{} run {run}", p.who))?;
            println!("{}: run {run}: {mib} MiB at {m:.1} Mbit/s", p.who);
            tput[i].push(m);
        }
    }
    let mut rtt = [Vec::new(), Vec::new()];
    for (i, p) in pods.iter().enumerate() {
        rtt[i] = round_trips(p.ip, rr).with_context(|| format!("{} round trips", p.who))?;
    }
    let [x, y] = tput.map(|mut v| median_ms(&mut v).unwrap_or(f64::NAN));
    let [a, b] = rtt.map(|mut v| {
        let mut sorted = v.clone();
        sorted.sort_by(f64::total_cmp);
        let p99 = sorted.get(sorted.len() * 99 / 100).copied().unwrap_or(f64::NAN);
        (median_ms(&mut v).unwrap_or(f64::NAN), p99)
    });
    for (p, (t, (m, p99))) in pods.iter().zip([(x, a), (y, b)]) {
        println!(
            "{}: throughput median {t:.1} Mbit/s over {runs} runs of {mib} MiB; \
             rr median {m:.0} us, p99 {p99:.0} us over {rr}",
            p.who
        );
    }

    rt.block_on(async {
        ours.remove().await?;
        theirs.remove().await
    })?;
    let left = daemon.vmm_processes();
    ensure!(left.is_empty(), "VMMs left running after RemovePodSandbox: {left:?}");
    println!(
        "net: carapace {x:.1} Mbit/s, runc {y:.1} Mbit/s, ratio {:.2}; \
         rr carapace {:.0} us, runc {:.0} us, ratio {:.2}",
        x / y,
        a.0,
        b.0,
        a.0 / b.0
    );
    Ok(())
}
