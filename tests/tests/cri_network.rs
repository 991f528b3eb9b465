//! End-to-end: pod networking through the CRI daemon (issue 12). The daemon runs Debian's CNI
//! plugins (`containernetworking-plugins`, /usr/lib/cni) from a conflist each test writes into
//! a private conf dir: bridge + host-local (its data dir private too) + portmap + loopback. Pod
//! VMs get the CNI interface's MAC and IPs on a virtio-net NIC behind a tap in the pod's netns.
//! Addresses are private (10.88.x.0/24, fd00:88:x::/64) and live only inside the test host
//! (the daemon's plugins make the bridge in the test host's namespace); no traffic leaves it.
//! Needs a KVM that boots Linux; run with --ignored in the test host.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use carapace_cri::k8s_cri::v1 as cri;
use carapace_cri::k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use carapace_cri::tonic;
use carapace_tests::cri::{
    e2e_dns, pod_config, pod_network, pull_image, run_pod, run_pod_request, runtime,
    start_container, with_log, Daemon, DaemonOptions,
};
use carapace_tests::net::{iptables_nat, links, CniEnv, PORTMAP_AND_LOOPBACK};
use carapace_tests::registry::Registry;
use tonic::transport::Channel;

/// Set (to a config path) when this binary is re-executed to be the daemon.
const DAEMON_ENV: &str = "CARAPACE_CRI_NETWORK_E2E_DAEMON";

/// Not a test: the daemon process of the tests below (runs only when DAEMON_ENV is set).
#[test]
#[ignore = "needs a KVM that boots Linux guests: run by `make test-e2e`"]
fn daemon_process() {
    carapace_tests::cri::daemon_process(DAEMON_ENV);
}

fn start_daemon(reg: Option<&Registry>, net: &CniEnv, prefix: &'static str) -> Result<Daemon> {
    Daemon::start(DaemonOptions {
        dir_prefix: prefix,
        insecure_registry: reg.map(|r| r.addr.clone()),
        fallback_env: Some(DAEMON_ENV),
        cni: Some(net.dirs()),
        ..Default::default()
    })
}

async fn network_ready(c: &mut RuntimeServiceClient<Channel>) -> Result<cri::RuntimeCondition> {
    let st = c.status(cri::StatusRequest { verbose: false }).await?.into_inner();
    st.status
        .and_then(|s| s.conditions.into_iter().find(|c| c.r#type == "NetworkReady"))
        .context("no NetworkReady condition")
}

fn pod_cfg(d: &Daemon, name: &str) -> cri::PodSandboxConfig {
    let mut cfg = pod_config("e2e", name, 0, &d.logs_dir(name));
    cfg.dns_config = Some(e2e_dns());
    cfg
}

/// ExecSync of `cmd` in container `id`: its stdout, failing on a non-zero exit.
async fn exec(c: &mut RuntimeServiceClient<Channel>, id: &str, cmd: &[&str]) -> Result<String> {
    let r = c
        .exec_sync(cri::ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: 30,
        })
        .await
        .with_context(|| format!("ExecSync {cmd:?}"))?
        .into_inner();
    ensure!(
        r.exit_code == 0,
        "{cmd:?} exited {}: {}{}",
        r.exit_code,
        String::from_utf8_lossy(&r.stdout),
        String::from_utf8_lossy(&r.stderr)
    );
    Ok(String::from_utf8_lossy(&r.stdout).into_owned())
}

/// Retries `cmd` in container `id` until its stdout contains `want` (a server may still be
/// starting, a neighbour entry still resolving).
async fn exec_until(
    c: &mut RuntimeServiceClient<Channel>,
    id: &str,
    cmd: &[&str],
    want: &str,
) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let last = match exec(c, id, cmd).await {
            Ok(out) if out.contains(want) => return Ok(out),
            Ok(out) => out,
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() > deadline {
            bail!("{cmd:?} never printed {want:?}; last: {last}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// What a TCP server at `addr` sends first (retried until `want` shows or a minute passed).
fn tcp_read_until(addr: SocketAddr, want: &str) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = (|| -> std::io::Result<String> {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        })();
        match got {
            Ok(out) if out.contains(want) => return Ok(out),
            other if Instant::now() > deadline => {
                bail!("{addr}: never got {want:?}; last: {other:?}")
            }
            _ => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

async fn stop_and_remove(c: &mut RuntimeServiceClient<Channel>, id: &str) -> Result<()> {
    c.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: id.into() })
        .await
        .context("StopPodSandbox")?;
    c.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id.into() })
        .await
        .context("RemovePodSandbox")?;
    Ok(())
}

const NET_NAME: &str = "e2enet";
const SUBNET: &str = "10.88.7.0/24";
const GATEWAY: &str = "10.88.7.1";
const HOST_PORT: u16 = 18081;

#[test]
#[ignore = "needs a KVM that boots Linux guests: run by `make test-e2e`"]
fn cri_network_two_pods_get_ips_and_talk_over_tcp() {
    let reg = Registry::start("regn", "info").expect("test registry");
    let net = CniEnv::new("cnie").expect("cni dirs");
    let mut d = start_daemon(Some(&reg), &net, "crin").expect("daemon");
    let r = runtime().block_on(async {
        let mut c = d.client().await?;
        // No config yet: not ready, with containerd's reason; a config turns it ready without
        // a restart.
        let cond = network_ready(&mut c).await?;
        ensure!(!cond.status && cond.reason == "NetworkPluginNotReady", "{cond:?}");
        net.write_conflist(NET_NAME, "cnie2e0", &[SUBNET], PORTMAP_AND_LOOPBACK)?;
        let cond = network_ready(&mut c).await?;
        ensure!(cond.status, "NetworkReady after writing a conflist: {cond:?}");

        let mut images = d.image_client().await?;
        let busybox = reg.image("test/busybox:latest");
        pull_image(&mut images, &busybox).await?;

        let mut a_cfg = pod_cfg(&d, "net-a");
        a_cfg.port_mappings = vec![cri::PortMapping {
            protocol: cri::Protocol::Tcp as i32,
            container_port: 8080,
            host_port: i32::from(HOST_PORT),
            host_ip: String::new(),
        }];
        let a = run_pod(&mut c, &a_cfg).await?;
        let b_cfg = pod_cfg(&d, "net-b");
        let b = run_pod(&mut c, &b_cfg).await?;

        let (a_net, b_net) = (pod_network(&mut c, &a).await?, pod_network(&mut c, &b).await?);
        let (ip_a, ip_b) = (a_net.ip.clone(), b_net.ip.clone());
        for ip in [&ip_a, &ip_b] {
            ensure!(ip.starts_with("10.88.7.") && ip != GATEWAY, "pod IP {ip:?} not from {SUBNET}");
        }
        ensure!(ip_a != ip_b, "both pods got {ip_a}");
        ensure!(a_net.additional_ips.is_empty(), "{a_net:?}");
        let alloc = net.allocations(NET_NAME);
        ensure!(alloc.contains(&ip_a) && alloc.contains(&ip_b), "host-local files: {alloc:?}");
        ensure!(net.netns_files().len() == 2, "netns files: {:?}", net.netns_files());

        // A server in pod A, a client in pod B.
        let server = start_container(
            &mut c,
            &a,
            &a_cfg,
            "server",
            &busybox,
            &["busybox", "nc", "-ll", "-p", "8080", "-e", "/bin/echo", "hello-from-a"],
        )
        .await?;
        let client =
            start_container(&mut c, &b, &b_cfg, "client", &busybox, &["sleep", "1000"]).await?;

        // eth0 in the container has the pod IP; DNS and /etc/hosts as the pod config says.
        let addr =
            exec(&mut c, &server, &["busybox", "ip", "-4", "addr", "show", "dev", "eth0"]).await?;
        ensure!(addr.contains(&format!("inet {ip_a}/24")), "eth0 of pod A: {addr}");
        let resolv = exec(&mut c, &server, &["cat", "/etc/resolv.conf"]).await?;
        ensure!(
            resolv.contains("nameserver 10.96.0.10")
                && resolv.contains("search e2e.svc.cluster.local")
                && resolv.contains("ndots:5"),
            "resolv.conf: {resolv}"
        );
        let hosts = exec(&mut c, &server, &["cat", "/etc/hosts"]).await?;
        ensure!(
            hosts.lines().any(|l| l.contains(&ip_a) && l.contains("net-a")),
            "/etc/hosts does not name the pod: {hosts}"
        );

        // pod B -> pod A, pod A -> its own IP, host -> pod A by pod IP.
        exec_until(&mut c, &client, &["busybox", "nc", "-w", "5", &ip_a, "8080"], "hello-from-a")
            .await
            .context("pod B -> pod A")?;
        exec_until(&mut c, &server, &["busybox", "nc", "-w", "5", &ip_a, "8080"], "hello-from-a")
            .await
            .context("pod A -> its own IP")?;
        let a_addr: SocketAddr = format!("{ip_a}:8080").parse()?;
        tcp_read_until(a_addr, "hello-from-a").context("host -> pod A")?;

        // hostPort (portmap): the host reaches the container port through a host address.
        let nat = iptables_nat()?;
        ensure!(nat.contains(&HOST_PORT.to_string()), "no portmap rule for {HOST_PORT}:\n{nat}");
        let host_port: SocketAddr = format!("{GATEWAY}:{HOST_PORT}").parse()?;
        tcp_read_until(host_port, "hello-from-a").context("host -> hostPort")?;
        Ok((a, b, ip_a, ip_b))
    });
    let (a, b, ip_a, ip_b) = with_log(&d, r);

    // A daemon killed with running pods: they keep their IPs and connectivity after a restart.
    d.kill9();
    let restarted = d.restart();
    with_log(&d, restarted);
    let r = runtime().block_on(async {
        let mut c = d.client().await?;
        ensure!(pod_network(&mut c, &a).await?.ip == ip_a, "pod A's IP changed");
        ensure!(pod_network(&mut c, &b).await?.ip == ip_b, "pod B's IP changed");
        let a_addr: SocketAddr = format!("{ip_a}:8080").parse()?;
        tcp_read_until(a_addr, "hello-from-a").context("host -> pod A after a daemon restart")?;
        // Stop and remove release the IPs, the netns files, the veths and portmap's rules.
        for id in [&a, &b] {
            stop_and_remove(&mut c, id).await?;
        }
        let alloc = net.allocations(NET_NAME);
        ensure!(!alloc.contains(&ip_a) && !alloc.contains(&ip_b), "IPs not released: {alloc:?}");
        ensure!(net.netns_files().is_empty(), "netns left: {:?}", net.netns_files());
        ensure!(links("veth").is_empty(), "veths left: {:?}", links("veth"));
        let nat = iptables_nat()?;
        ensure!(!nat.contains(&HOST_PORT.to_string()), "portmap rule left:\n{nat}");
        d.assert_clean()
    });
    with_log(&d, r);
}

#[test]
#[ignore = "needs a KVM that boots Linux guests: run by `make test-e2e`"]
fn cri_network_failed_add_fails_the_pod_and_leaves_nothing() {
    let net = CniEnv::new("cnie").expect("cni dirs");
    let d = start_daemon(None, &net, "crif").expect("daemon");
    let r = runtime().block_on(async {
        let mut c = d.client().await?;
        // Enabled without a config: FailedPrecondition saying what to do.
        let e = c
            .run_pod_sandbox(run_pod_request(pod_cfg(&d, "noconf")))
            .await
            .expect_err("a pod without a CNI config");
        ensure!(
            e.code() == tonic::Code::FailedPrecondition && e.message().contains("conflist"),
            "{e:?}"
        );
        // bridge succeeds, then a plugin fails its ADD: the pod fails with the plugin's
        // message and the bridge's veth, IP and netns are undone.
        let veths = links("veth");
        net.write_failing_plugin("e2efail", "e2e plugin refuses the pod")?;
        net.write_conflist("e2efailnet", "cnie2e1", &["10.88.8.0/24"], r#",{"type":"e2efail"}"#)?;
        ensure!(network_ready(&mut c).await?.status, "the failing list is still a valid config");
        let e = c
            .run_pod_sandbox(run_pod_request(pod_cfg(&d, "refused")))
            .await
            .expect_err("a pod whose plugin fails");
        ensure!(e.message().contains("e2e plugin refuses the pod"), "{e:?}");
        ensure!(net.allocations("e2efailnet").is_empty(), "{:?}", net.allocations("e2efailnet"));
        ensure!(net.netns_files().is_empty(), "netns left: {:?}", net.netns_files());
        ensure!(links("veth") == veths, "veths: {:?} before, {:?} after", veths, links("veth"));
        d.assert_clean()
    });
    with_log(&d, r);
}

#[test]
#[ignore = "needs a KVM that boots Linux guests: run by `make test-e2e`"]
fn cri_network_dual_stack_pod_gets_both_families() {
    let reg = Registry::start("regd", "info").expect("test registry");
    let net = CniEnv::new("cnie").expect("cni dirs");
    let d = start_daemon(Some(&reg), &net, "crid").expect("daemon");
    let r = runtime().block_on(async {
        let mut c = d.client().await?;
        net.write_conflist("e2edual", "cnie2e2", &["10.88.6.0/24", "fd00:88:6::/64"], "")?;
        let mut images = d.image_client().await?;
        let busybox = reg.image("test/busybox:latest");
        pull_image(&mut images, &busybox).await?;
        let cfg = pod_cfg(&d, "dual");
        let pod = run_pod(&mut c, &cfg).await?;
        let st = pod_network(&mut c, &pod).await?;
        ensure!(st.ip.starts_with("10.88.6."), "{st:?}");
        let v6: Vec<&str> = st.additional_ips.iter().map(|p| p.ip.as_str()).collect();
        ensure!(v6.len() == 1 && v6[0].starts_with("fd00:88:6:"), "{st:?}");
        let v6 = v6[0].to_string();
        let server = start_container(
            &mut c,
            &pod,
            &cfg,
            "server",
            &busybox,
            &["busybox", "nc", "-ll", "-p", "8080", "-e", "/bin/echo", "hello-v6"],
        )
        .await?;
        let addr =
            exec(&mut c, &server, &["busybox", "ip", "-6", "addr", "show", "dev", "eth0"]).await?;
        ensure!(addr.contains(&format!("inet6 {v6}/64")), "eth0: {addr}");
        let to: SocketAddr = format!("[{v6}]:8080").parse()?;
        tcp_read_until(to, "hello-v6").context("host -> pod v6")?;
        stop_and_remove(&mut c, &pod).await?;
        ensure!(net.allocations("e2edual").is_empty(), "{:?}", net.allocations("e2edual"));
        d.assert_clean()
    });
    with_log(&d, r);
}
