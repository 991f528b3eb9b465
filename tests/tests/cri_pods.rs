//! End-to-end: the CRI daemon (`carapace serve`, or this test binary running the same daemon
//! code when the `carapace` binary does not have `serve` yet) driven over its socket like
//! kubelet, with pod sandboxes that are real VMs. Needs a KVM that boots Linux; `make test-e2e`
//! runs it (inside the test host on these machines; CARAPACE_VMM_KICK_MS reaches the VMMs
//! through the daemon).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use carapace_cri::k8s_cri::v1 as cri;
use carapace_cri::k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use carapace_cri::tonic;
use carapace_tests::cri::{
    container_config, e2e_dns, pod_config, pull_image, run_pod, run_pod_request, runtime, with_log,
    Daemon, DaemonOptions,
};
use carapace_tests::net::{is_per_pod_nat_line, CniEnv, Footprint, PORTMAP_AND_LOOPBACK};
use carapace_tests::registry::Registry;
use tonic::transport::Channel;

/// Set (to a config path) when this binary is re-executed to be the daemon.
const DAEMON_ENV: &str = "CARAPACE_CRI_E2E_DAEMON";
const READY: i32 = cri::PodSandboxState::SandboxReady as i32;
const NOTREADY: i32 = cri::PodSandboxState::SandboxNotready as i32;

/// Not a test: the daemon process of the tests below (runs only when DAEMON_ENV is set).
#[test]
#[ignore = "needs a KVM that boots Linux guests: run by `make test-e2e`"]
fn daemon_process() {
    carapace_tests::cri::daemon_process(DAEMON_ENV);
}

/// A daemon process with private state/run dirs under /tmp (Unix sockets need a local fs).
fn start_daemon() -> Result<Daemon> {
    Daemon::start(DaemonOptions {
        dir_prefix: "cri",
        fallback_env: Some(DAEMON_ENV),
        ..Default::default()
    })
}

fn pod(name: &str, attempt: u32) -> cri::RunPodSandboxRequest {
    let mut cfg = pod_config("e2e", name, attempt, Path::new(&format!("/var/log/pods/e2e_{name}")));
    cfg.dns_config = Some(e2e_dns());
    cfg.labels = [("app".to_string(), name.to_string())].into();
    cfg.annotations = [("note".to_string(), "e2e".to_string())].into();
    run_pod_request(cfg)
}

async fn status_of(
    c: &mut RuntimeServiceClient<Channel>,
    id: &str,
) -> Result<cri::PodSandboxStatusResponse> {
    Ok(c.pod_sandbox_status(cri::PodSandboxStatusRequest {
        pod_sandbox_id: id.into(),
        verbose: true,
    })
    .await?
    .into_inner())
}

async fn list(
    c: &mut RuntimeServiceClient<Channel>,
    filter: cri::PodSandboxFilter,
) -> Result<Vec<cri::PodSandbox>> {
    Ok(c.list_pod_sandbox(cri::ListPodSandboxRequest { filter: Some(filter) })
        .await?
        .into_inner()
        .items)
}

#[test]
#[ignore = "needs a KVM that boots Linux guests: run by `make test-e2e`"]
fn cri_pod_runs_ready_lists_stops_and_removes() {
    let d = start_daemon().expect("daemon");
    let r = runtime().block_on(async {
        let mut c = d.client().await?;
        let started = Instant::now();
        let id = c
            .run_pod_sandbox(pod("web", 0))
            .await
            .context("RunPodSandbox")?
            .into_inner()
            .pod_sandbox_id;
        eprintln!("runp: {:?}", started.elapsed());
        let st = status_of(&mut c, &id).await?;
        let s = st.status.clone().context("no status")?;
        ensure!(s.state == READY, "state {} after RunPodSandbox", s.state);
        ensure!(s.created_at > 0 && s.metadata.as_ref().is_some_and(|m| m.name == "web"));
        ensure!(s.labels.get("app").map(String::as_str) == Some("web"));
        ensure!(st.info["info"].contains("kernel_version"), "verbose info: {:?}", st.info);
        let resolv = std::fs::read_to_string(d.pods_dir().join(&id).join("resolv.conf"))?;
        ensure!(
            resolv.contains("nameserver 10.96.0.10") && resolv.contains("options ndots:5"),
            "{resolv}"
        );
        ensure!(d.vmm_processes().len() == 1, "expected one VMM");

        // Same (name, namespace, uid, attempt) again → AlreadyExists, nothing new started.
        let e = c.run_pod_sandbox(pod("web", 0)).await.expect_err("duplicate pod accepted");
        ensure!(e.code() == tonic::Code::AlreadyExists, "duplicate: {e:?}");
        ensure!(e.message().contains(&id), "{}", e.message());

        // List with filters.
        let all = list(&mut c, cri::PodSandboxFilter::default()).await?;
        ensure!(all.len() == 1 && all[0].id == id && all[0].state == READY);
        let by_label = cri::PodSandboxFilter {
            label_selector: [("app".to_string(), "web".to_string())].into(),
            ..Default::default()
        };
        ensure!(list(&mut c, by_label).await?.len() == 1);
        let other_label = cri::PodSandboxFilter {
            label_selector: [("app".to_string(), "db".to_string())].into(),
            ..Default::default()
        };
        ensure!(list(&mut c, other_label).await?.is_empty());
        let by_prefix = cri::PodSandboxFilter { id: id[..12].to_string(), ..Default::default() };
        ensure!(list(&mut c, by_prefix).await?.len() == 1);
        let notready = cri::PodSandboxFilter {
            state: Some(cri::PodSandboxStateValue { state: NOTREADY }),
            ..Default::default()
        };
        ensure!(list(&mut c, notready.clone()).await?.is_empty());

        let stats = c
            .pod_sandbox_stats(cri::PodSandboxStatsRequest { pod_sandbox_id: id.clone() })
            .await?
            .into_inner()
            .stats
            .context("no stats")?;
        let linux = stats.linux.context("no linux stats")?;
        ensure!(linux.cpu.is_some() && linux.memory.is_some(), "stats: {linux:?}");

        let started = Instant::now();
        c.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: id.clone() }).await?;
        eprintln!("stopp: {:?}", started.elapsed());
        ensure!(d.vmm_processes().is_empty(), "VMM still running after StopPodSandbox");
        ensure!(status_of(&mut c, &id).await?.status.context("status")?.state == NOTREADY);
        ensure!(list(&mut c, notready).await?.len() == 1);
        c.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: id.clone() }).await?;
        c.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id.clone() }).await?;
        c.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id.clone() }).await?;
        let e = status_of(&mut c, &id).await.expect_err("removed pod still has a status");
        ensure!(format!("{e:#}").contains("not found"), "{e:#}");
        // The name is free again.
        let id2 = c.run_pod_sandbox(pod("web", 0)).await?.into_inner().pod_sandbox_id;
        // Its VMM has a mount namespace of its own (where the pod's volumes go).
        let vmms = d.vmm_processes();
        ensure!(vmms.len() == 1, "expected one VMM: {vmms:?}");
        let ns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/mnt"));
        ensure!(ns(&vmms[0].to_string())? != ns("self")?, "the VMM shares the daemon's mounts");
        // A VM that dies while the daemon runs makes its pod NotReady.
        // SAFETY: kill(2) on the VMM this test started (its command line names the pods dir).
        unsafe { libc::kill(vmms[0], libc::SIGKILL) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let state = status_of(&mut c, &id2).await?.status.context("status")?.state;
            if state == NOTREADY {
                break;
            }
            ensure!(Instant::now() < deadline, "pod whose VM was killed stays {state}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        c.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id2 }).await?;
        d.assert_clean()
    });
    with_log(&d, r);
}

#[test]
#[ignore = "needs a KVM that boots Linux guests: run by `make test-e2e`"]
fn cri_daemon_killed_with_a_running_pod_reattaches_after_restart() {
    let mut d = start_daemon().expect("daemon");
    let rt = runtime();
    let (live, dead) = with_log(
        &d,
        rt.block_on(async {
            let mut c = d.client().await?;
            let live = c.run_pod_sandbox(pod("live", 0)).await?.into_inner().pod_sandbox_id;
            let dead = c.run_pod_sandbox(pod("dies", 0)).await?.into_inner().pod_sandbox_id;
            Ok::<_, anyhow::Error>((live, dead))
        }),
    );
    let vmms = d.vmm_processes();
    assert_eq!(vmms.len(), 2, "expected two VMMs");
    // A requested stop leaves the pods running too.
    d.terminate().expect("stop the daemon with SIGTERM");
    assert_eq!(d.vmm_processes(), vmms, "VMMs changed after the daemon's SIGTERM");
    d.restart().expect("start the daemon again");
    d.kill9();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(d.vmm_processes().len(), 2, "VMMs died with the daemon\n{}", d.log());
    // While the daemon is down, one VM dies.
    let dies_pid = vmms
        .iter()
        .copied()
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&dead))
        })
        .expect("VMM of the second pod");
    // SAFETY: kill(2) on the VMM this test started (its command line names the pod's ID).
    unsafe { libc::kill(dies_pid, libc::SIGKILL) };
    std::thread::sleep(Duration::from_millis(300));
    d.restart().expect("restart the daemon");
    let r = rt.block_on(async {
        let mut c = d.client().await?;
        let all = list(&mut c, cri::PodSandboxFilter::default()).await?;
        ensure!(all.len() == 2, "after restart: {all:?}");
        let state = |id: &str| all.iter().find(|p| p.id == id).map(|p| p.state);
        ensure!(state(&live) == Some(READY), "live pod not READY after restart");
        ensure!(state(&dead) == Some(NOTREADY), "pod whose VM died is not NOTREADY");
        // The duplicate check survives the restart too.
        let e =
            c.run_pod_sandbox(pod("live", 0)).await.expect_err("duplicate accepted after restart");
        ensure!(e.code() == tonic::Code::AlreadyExists, "{e:?}");
        for id in [&live, &dead] {
            c.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: id.clone() }).await?;
            c.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id.clone() })
                .await?;
        }
        ensure!(list(&mut c, cri::PodSandboxFilter::default()).await?.is_empty());
        d.assert_clean()
    });
    with_log(&d, r);
}

/// The daemon is SIGKILLed during RunPodSandbox, as soon as the VMM process exists (maybe
/// before its PID is saved): after the restart no VMM of that pod is left and the pod is
/// NotReady (or gone).
#[test]
#[ignore = "needs a KVM that boots Linux guests: run by `make test-e2e`"]
fn cri_daemon_killed_during_run_pod_sandbox_leaves_no_vmm() {
    let mut d = start_daemon().expect("daemon");
    let rt = runtime();
    let r = rt.block_on(async {
        let mut c = d.client().await?;
        let call = tokio::spawn(async move { c.run_pod_sandbox(pod("cut", 0)).await });
        let deadline = Instant::now() + Duration::from_secs(60);
        while d.vmm_processes().is_empty() {
            ensure!(!call.is_finished(), "RunPodSandbox ended before a VMM appeared");
            ensure!(Instant::now() < deadline, "no VMM appeared within 60 s");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        d.kill9();
        let answer = call.await?;
        ensure!(answer.is_err(), "RunPodSandbox finished before the daemon was killed");
        ensure!(!d.vmm_processes().is_empty(), "the VMM died with the daemon");
        Ok(())
    });
    with_log(&d, r);
    d.restart().expect("restart the daemon");
    let r = rt.block_on(async {
        let left = d.vmm_processes();
        ensure!(left.is_empty(), "VMMs of the interrupted RunPodSandbox left running: {left:?}");
        let mut c = d.client().await?;
        let all = list(&mut c, cri::PodSandboxFilter::default()).await?;
        ensure!(all.iter().all(|p| p.state == NOTREADY), "after restart: {all:?}");
        for p in all {
            c.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: p.id.clone() }).await?;
            c.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: p.id }).await?;
        }
        // The name is free again: a new RunPodSandbox of the same pod boots.
        let id = c.run_pod_sandbox(pod("cut", 0)).await?.into_inner().pod_sandbox_id;
        c.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: id.clone() }).await?;
        c.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id }).await?;
        d.assert_clean()
    });
    with_log(&d, r);
}

/// The count sees a running pod's network: one netns file, one more bridge port and link (its
/// veth), its IP allocated, portmap's DNAT chain for the hostPort.
fn pod_network_is_counted(now: &Footprint, baseline: &Footprint, ip: &str) -> Result<()> {
    ensure!(now.netns_files.len() == baseline.netns_files.len() + 1, "netns: {now:?}");
    ensure!(now.bridge_ports.len() == baseline.bridge_ports.len() + 1, "bridge ports: {now:?}");
    let new_veth = now.links.iter().any(|l| l.starts_with("veth") && !baseline.links.contains(l));
    ensure!(new_veth, "no new veth: {now:?}");
    ensure!(now.allocations.iter().any(|a| a == ip), "{ip} not allocated: {now:?}");
    let dnat = now.nat.iter().any(|l| {
        is_per_pod_nat_line(l) && l.contains(&CYCLE_HOST_PORT.to_string()) && l.contains("DNAT")
    });
    ensure!(dnat, "no DNAT rule for hostPort {CYCLE_HOST_PORT}: {:?}", now.nat);
    Ok(())
}

/// The network of the run/remove cycles: its own bridge and subnet (no other test uses them).
const CYCLE_NET: &str = "e2ecycles";
const CYCLE_BRIDGE: &str = "cnie2e5";
const CYCLE_SUBNET: &str = "10.88.5.0/24";
const CYCLE_HOST_PORT: u16 = 18085;

#[test]
#[ignore = "needs a KVM that boots Linux guests: run by `make test-e2e`"]
fn cri_run_remove_cycles_leave_nothing_behind() {
    let cycles: u32 =
        std::env::var("CARAPACE_E2E_CRI_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(50);
    // Every 5th cycle also runs a container with a host volume, so that the count covers the
    // container's records, its rootfs in the pod's shared dir and the volume's bind mount.
    // Every pod is networked (bridge + host-local + portmap with a hostPort + loopback, Debian's
    // plugins): while it runs the count sees its netns, veth, IP and DNAT chain, and after its
    // removal nothing of them is left beyond what was there before the first pod (the bridge
    // and portmap's shared chains may stay, as they do under containerd).
    let registry = Registry::start("reg", "warn").expect("registry");
    let net = CniEnv::new("cnic").expect("cni dirs");
    net.write_conflist(CYCLE_NET, CYCLE_BRIDGE, &[CYCLE_SUBNET], PORTMAP_AND_LOOPBACK)
        .expect("conflist");
    let baseline = net.footprint(CYCLE_NET, CYCLE_BRIDGE).expect("network baseline");
    let d = Daemon::start(DaemonOptions {
        dir_prefix: "cri",
        insecure_registry: Some(registry.addr.clone()),
        fallback_env: Some(DAEMON_ENV),
        cni: Some(net.dirs()),
        ..Default::default()
    })
    .expect("daemon");
    let volume = tempfile::tempdir().expect("volume dir");
    std::fs::write(volume.path().join("greeting"), "hello\n").expect("volume file");
    let busybox = registry.image("test/busybox:latest");
    let r = runtime().block_on(async {
        let mut c = d.client().await?;
        pull_image(&mut d.image_client().await?, &busybox).await?;
        for i in 0..cycles {
            let started = Instant::now();
            let mut cfg = pod_config("e2e", "cycle", i, &d.logs_dir("cycle"));
            cfg.dns_config = Some(e2e_dns());
            cfg.port_mappings = vec![cri::PortMapping {
                protocol: cri::Protocol::Tcp as i32,
                container_port: 8080,
                host_port: i32::from(CYCLE_HOST_PORT),
                host_ip: String::new(),
            }];
            let id = run_pod(&mut c, &cfg).await.with_context(|| format!("cycle {i}"))?;
            let st = status_of(&mut c, &id).await?.status.context("status")?;
            ensure!(st.state == READY);
            let ip = st.network.map(|n| n.ip).unwrap_or_default();
            ensure!(ip.starts_with("10.88.5."), "cycle {i}: pod IP {ip:?} not from {CYCLE_SUBNET}");
            pod_network_is_counted(&net.footprint(CYCLE_NET, CYCLE_BRIDGE)?, &baseline, &ip)
                .with_context(|| format!("cycle {i}: while the pod runs"))?;
            if i.is_multiple_of(5) {
                let mut ctr = container_config(
                    "reader",
                    &busybox,
                    &["sh", "-c", "cat /data/greeting; sleep 1000"],
                );
                ctr.mounts = vec![cri::Mount {
                    container_path: "/data".into(),
                    host_path: volume.path().display().to_string(),
                    readonly: true,
                    ..Default::default()
                }];
                let req = cri::CreateContainerRequest {
                    pod_sandbox_id: id.clone(),
                    config: Some(ctr),
                    sandbox_config: Some(cfg),
                };
                let cid = c
                    .create_container(req)
                    .await
                    .with_context(|| format!("cycle {i}: CreateContainer"))?
                    .into_inner()
                    .container_id;
                c.start_container(cri::StartContainerRequest { container_id: cid }).await?;
            }
            // Remove without Stop: RemovePodSandbox stops the containers and the VM itself.
            c.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id.clone() })
                .await?;
            d.assert_clean().with_context(|| format!("after cycle {i}"))?;
            net.footprint(CYCLE_NET, CYCLE_BRIDGE)?
                .ensure_nothing_beyond(&baseline, CYCLE_BRIDGE)
                .with_context(|| format!("network after cycle {i}"))?;
            eprintln!("cycle {i}: {:?}", started.elapsed());
        }
        ensure!(
            std::fs::read_to_string(volume.path().join("greeting"))? == "hello\n",
            "the volume was touched"
        );
        Ok(())
    });
    with_log(&d, r);
}

#[test]
#[ignore = "needs a KVM that boots Linux guests: run by `make test-e2e`"]
fn cri_pods_started_concurrently_all_reach_ready() {
    let n: u32 = std::env::var("CARAPACE_E2E_CRI_CONCURRENT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let d = start_daemon().expect("daemon");
    let rt = carapace_tests::multi_thread_runtime().expect("runtime");
    let r = rt.block_on(async {
        let c = d.client().await?;
        let started = Instant::now();
        let runs: Vec<_> = (0..n)
            .map(|i| {
                let mut c = c.clone();
                tokio::spawn(async move { c.run_pod_sandbox(pod(&format!("conc{i}"), 0)).await })
            })
            .collect();
        let mut ids = Vec::new();
        let mut failures = Vec::new();
        for (i, h) in runs.into_iter().enumerate() {
            match h.await? {
                Ok(r) => ids.push(r.into_inner().pod_sandbox_id),
                Err(e) => failures.push(format!("pod {i}: {e:?}")),
            }
        }
        eprintln!("{} of {n} pods ready in {:?}", ids.len(), started.elapsed());
        let mut c2 = c.clone();
        let ready = cri::PodSandboxFilter {
            state: Some(cri::PodSandboxStateValue { state: READY }),
            ..Default::default()
        };
        let listed = list(&mut c2, ready).await?.len();
        let removes: Vec<_> = ids
            .iter()
            .map(|id| {
                let mut c = c.clone();
                let id = id.clone();
                tokio::spawn(async move {
                    c.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id }).await
                })
            })
            .collect();
        for h in removes {
            h.await??;
        }
        ensure!(failures.is_empty(), "{} pods failed:\n{}", failures.len(), failures.join("\n"));
        ensure!(listed == n as usize, "{listed} of {n} pods listed READY");
        d.assert_clean()
    });
    with_log(&d, r);
}
