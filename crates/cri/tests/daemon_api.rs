//! The daemon driven the way kubelet does, over its Unix socket with the CRI gRPC client, on
//! this host (no VM needs to boot): Version, Status, RuntimeConfig, and the error cases.
//! A fake `vmm` binary (a shell script) stands in for the VMM where a start must fail.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use carapace_cri::k8s_cri::v1 as cri;
use carapace_cri::{Config, Daemon};
use tonic::Code;

struct Env {
    dir: tempfile::TempDir,
    socket: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

fn script(path: &Path, body: &str) {
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Starts a daemon whose `fake` handler uses existing (fake) guest files and the given fake VMM.
async fn start(vmm_body: &str) -> Env {
    start_with(vmm_body, true).await
}

/// [`start`], with pod networking on (a conf dir `net.d` the test may fill) or off.
async fn start_with(vmm_body: &str, cni: bool) -> Env {
    let dir = tempfile::Builder::new().prefix("cri").tempdir_in("/tmp").unwrap();
    let d = dir.path();
    std::fs::write(d.join("vmlinux"), b"not an ELF").unwrap();
    std::fs::write(d.join("initramfs"), b"").unwrap();
    script(&d.join("vmm"), vmm_body);
    let text = format!(
        r#"
        listen = "unix://{sock}"
        state_dir = "{d}/state"
        run_dir = "{d}/run"
        vmm_binary = "{d}/vmm"
        agent_timeout_s = 1
        stop_timeout_s = 1
        [images]
        root = "{d}/images"
        [profiles.default]
        kernel = "{d}/missing-vmlinux"
        [profiles.fake]
        kernel = "{d}/vmlinux"
        initramfs = "{d}/initramfs"
        [runtime_handlers]
        fake = "fake"
        [cni]
        enabled = {cni}
        conf_dir = "{d}/net.d"
        "#,
        sock = d.join("cri.sock").display(),
        d = d.display()
    );
    let cfg = Config::from_toml_str(&text, Path::new("test"), None).unwrap();
    let socket = cfg.socket.clone();
    let daemon = Daemon::open(cfg).unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        daemon
            .serve(async {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    Env { dir, socket, stop: Some(tx), task: Some(task) }
}

impl Env {
    async fn shutdown(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap();
        }
        assert!(!self.socket.exists(), "socket left behind after shutdown");
    }
}

fn pod_config(name: &str) -> cri::PodSandboxConfig {
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: format!("{name}-uid"),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: format!("/var/log/pods/default_{name}"),
        ..Default::default()
    }
}

fn run_req(name: &str, handler: &str) -> cri::RunPodSandboxRequest {
    cri::RunPodSandboxRequest { config: Some(pod_config(name)), runtime_handler: handler.into() }
}

fn count_entries(p: &Path) -> usize {
    std::fs::read_dir(p).map(|r| r.count()).unwrap_or(0)
}

#[tokio::test]
async fn version_status_and_runtime_config() {
    let env = start("exit 1").await;
    let mut c = carapace_cri::client::connect(&env.socket).await.unwrap();
    let v = c.version(cri::VersionRequest { version: "v1".into() }).await.unwrap().into_inner();
    assert_eq!(v.runtime_name, "carapace");
    assert_eq!(v.runtime_api_version, "v1");
    assert!(!v.runtime_version.is_empty());

    let s = c.status(cri::StatusRequest { verbose: true }).await.unwrap().into_inner();
    let conds = s.status.unwrap().conditions;
    let runtime = conds.iter().find(|c| c.r#type == "RuntimeReady").unwrap();
    // The default profile's kernel is missing here: honestly not ready, saying what is missing.
    assert!(!runtime.status);
    assert!(runtime.message.contains("missing-vmlinux"), "{}", runtime.message);
    let net = conds.iter().find(|c| c.r#type == "NetworkReady").unwrap();
    assert!(!net.status);
    assert_eq!(net.reason, "NetworkPluginNotReady");
    assert!(net.message.contains("no network config found"), "{}", net.message);
    assert!(net.message.contains("net.d"), "{}", net.message);
    assert!(s.info["config"].contains("\"fake\""));
    let handlers: Vec<&str> = s.runtime_handlers.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(handlers, vec!["", "fake"]);

    let rc = c.runtime_config(cri::RuntimeConfigRequest {}).await.unwrap().into_inner();
    assert_eq!(rc.linux.unwrap().cgroup_driver, cri::CgroupDriver::Cgroupfs as i32);
    c.update_runtime_config(cri::UpdateRuntimeConfigRequest {
        runtime_config: Some(cri::RuntimeConfig {
            network_config: Some(cri::NetworkConfig { pod_cidr: "10.88.0.0/16".into() }),
        }),
    })
    .await
    .unwrap();
    let s = c.status(cri::StatusRequest { verbose: true }).await.unwrap().into_inner();
    assert!(s.info["config"].contains("10.88.0.0/16"));
    assert!(s.info["config"].contains("net.d"));

    // NetworkReady follows the CNI conf dir without a restart: an invalid file says why, a
    // valid one makes it true, removing it makes it false again.
    let net_ready = |s: cri::StatusResponse| {
        s.status.unwrap().conditions.into_iter().find(|c| c.r#type == "NetworkReady").unwrap()
    };
    let net_d = env.dir.path().join("net.d");
    std::fs::create_dir(&net_d).unwrap();
    std::fs::write(net_d.join("10-bad.conflist"), "{").unwrap();
    let s = c.status(cri::StatusRequest::default()).await.unwrap().into_inner();
    let net = net_ready(s);
    assert!(!net.status && net.message.contains("10-bad.conflist"), "{net:?}");
    std::fs::write(
        net_d.join("20-ok.conflist"),
        r#"{"cniVersion":"1.0.0","name":"pods","plugins":[{"type":"bridge"}]}"#,
    )
    .unwrap();
    let s = c.status(cri::StatusRequest::default()).await.unwrap().into_inner();
    let net = net_ready(s);
    assert!(net.status, "{net:?}");
    assert!(net.reason.is_empty() && net.message.is_empty(), "{net:?}");
    std::fs::remove_file(net_d.join("20-ok.conflist")).unwrap();
    let s = c.status(cri::StatusRequest::default()).await.unwrap().into_inner();
    assert!(!net_ready(s).status);
    let list =
        c.list_pod_sandbox(cri::ListPodSandboxRequest::default()).await.unwrap().into_inner();
    assert!(list.items.is_empty());
    env.shutdown().await;
}

#[tokio::test]
async fn unknown_ids_and_bad_configs_get_the_right_codes() {
    let env = start("exit 1").await;
    let mut c = carapace_cri::client::connect(&env.socket).await.unwrap();
    let unknown = "0123456789abcdef".to_string();

    let e = c
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: unknown.clone(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(e.message().contains(&unknown));
    // Stopping and removing what is not there is not an error (CRI idempotence).
    c.stop_pod_sandbox(cri::StopPodSandboxRequest { pod_sandbox_id: unknown.clone() })
        .await
        .unwrap();
    c.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: unknown.clone() })
        .await
        .unwrap();
    let e = c
        .pod_sandbox_stats(cri::PodSandboxStatsRequest { pod_sandbox_id: unknown.clone() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = c.pod_sandbox_status(cri::PodSandboxStatusRequest::default()).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    let e = c.run_pod_sandbox(cri::RunPodSandboxRequest::default()).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("config is required"), "{}", e.message());
    let mut no_uid = run_req("web", "fake");
    no_uid.config.as_mut().unwrap().metadata.as_mut().unwrap().uid.clear();
    let e = c.run_pod_sandbox(no_uid).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("metadata.uid"), "{}", e.message());
    let e = c.run_pod_sandbox(run_req("web", "kata")).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("unknown runtime handler \"kata\""), "{}", e.message());
    let mut bad_host = run_req("web", "fake");
    bad_host.config.as_mut().unwrap().hostname = "bad_host".into();
    assert_eq!(c.run_pod_sandbox(bad_host).await.unwrap_err().code(), Code::InvalidArgument);
    let mut host_net = run_req("web", "fake");
    host_net.config.as_mut().unwrap().linux = Some(cri::LinuxPodSandboxConfig {
        security_context: Some(cri::LinuxSandboxSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                network: cri::NamespaceMode::Node as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let e = c.run_pod_sandbox(host_net).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("use a runc RuntimeClass"), "{}", e.message());
    // Default handler: its kernel is missing.
    let e = c.run_pod_sandbox(run_req("web", "")).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("make guest-image"), "{}", e.message());

    // Containers: NotFound / idempotent remove / Unimplemented with the reason.
    let e = c
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: unknown.clone(),
            config: Some(cri::ContainerConfig {
                metadata: Some(cri::ContainerMetadata { name: "c".into(), attempt: 0 }),
                ..Default::default()
            }),
            sandbox_config: Some(pod_config("web")),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = c
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: unknown.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = c
        .container_status(cri::ContainerStatusRequest {
            container_id: unknown.clone(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    c.remove_container(cri::RemoveContainerRequest { container_id: unknown.clone() })
        .await
        .unwrap();
    c.stop_container(cri::StopContainerRequest { container_id: unknown.clone(), timeout: 1 })
        .await
        .unwrap();
    // Streaming: the request is checked, then the container or pod must exist.
    let e = c
        .exec(cri::ExecRequest { container_id: unknown.clone(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("cmd"), "{e:?}");
    let exec = cri::ExecRequest {
        container_id: unknown.clone(),
        cmd: vec!["true".into()],
        stdout: true,
        ..Default::default()
    };
    let e = c.exec(exec).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let attach =
        cri::AttachRequest { container_id: unknown.clone(), stdout: true, ..Default::default() };
    let e = c.attach(attach).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = c
        .port_forward(cri::PortForwardRequest { pod_sandbox_id: unknown.clone(), port: vec![80] })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let list = c.list_containers(cri::ListContainersRequest::default()).await.unwrap().into_inner();
    assert!(list.containers.is_empty());
    env.shutdown().await;
}

#[tokio::test]
async fn failed_starts_leave_nothing_behind() {
    // A VMM that fails at once, then one that never brings up the agent (hangs, ignores SIGTERM).
    for (body, code, text) in [
        (
            "echo 'carapace vmm: error: kernel: not an ELF file' >&2; exit 1",
            Code::Internal,
            "not an ELF",
        ),
        ("trap '' TERM; while :; do sleep 0.1; done", Code::DeadlineExceeded, "did not answer"),
    ] {
        // Without pod networking: the VMM's failure is what the test is about.
        let env = start_with(body, false).await;
        let mut c = carapace_cri::client::connect(&env.socket).await.unwrap();
        let e = tokio::time::timeout(
            Duration::from_secs(30),
            c.run_pod_sandbox(run_req("web", "fake")),
        )
        .await
        .expect("RunPodSandbox hung")
        .unwrap_err();
        assert_eq!(e.code(), code, "{e:?}");
        assert!(e.message().contains(text), "{}", e.message());
        let list =
            c.list_pod_sandbox(cri::ListPodSandboxRequest::default()).await.unwrap().into_inner();
        assert!(list.items.is_empty(), "{:?}", list.items);
        assert_eq!(count_entries(&env.dir.path().join("run/pods")), 0, "pod run dir left behind");
        assert_eq!(count_entries(&env.dir.path().join("state/sandboxes")), 0, "record left behind");
        let disks = env.dir.path().join("state/pod-disks");
        assert_eq!(count_entries(&disks), 0, "pod disk image left behind");
        let root = env.dir.path().display().to_string();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let left: Vec<&str> = mounts.lines().filter(|l| l.contains(&root)).collect();
        assert!(left.is_empty(), "mounts left behind: {left:?}");
        // The name is free again: the same pod fails the same way, not with AlreadyExists.
        let e = c.run_pod_sandbox(run_req("web", "fake")).await.unwrap_err();
        assert_eq!(e.code(), code);
        // No fake VMM survives.
        let out = std::process::Command::new("pgrep")
            .arg("-f")
            .arg(env.dir.path().join("vmm"))
            .output()
            .unwrap();
        assert!(
            out.stdout.is_empty(),
            "VMM processes left: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        env.shutdown().await;
    }
}

#[tokio::test]
async fn networking_without_a_cni_config_fails_the_pod_before_its_vm_and_leaves_nothing() {
    let env = start("echo started >> \"$0.ran\"; exit 1").await;
    let mut c = carapace_cri::client::connect(&env.socket).await.unwrap();
    let e = c.run_pod_sandbox(run_req("web", "fake")).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    let net_d = env.dir.path().join("net.d").display().to_string();
    assert!(e.message().contains(&net_d) && e.message().contains("enabled = false"), "{e:?}");
    assert!(!env.dir.path().join("vmm.ran").exists(), "the VMM was started");
    assert_eq!(count_entries(&env.dir.path().join("run/pods")), 0, "pod run dir left behind");
    assert_eq!(count_entries(&env.dir.path().join("state/sandboxes")), 0, "record left behind");
    let list =
        c.list_pod_sandbox(cri::ListPodSandboxRequest::default()).await.unwrap().into_inner();
    assert!(list.items.is_empty(), "{:?}", list.items);
    env.shutdown().await;
}
