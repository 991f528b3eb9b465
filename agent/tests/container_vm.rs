//! Containers in a real guest: `carapace vmm` boots the guest kernel with
//! an initramfs holding this agent as /init and a busybox rootfs at
//! /testroot (tests/rootfs/busybox.sh); the test drives the container API
//! over vsock.
//!
//! Needs a KVM that boots Linux guests: ignored by default. Run it in the
//! test host (after `make agent`, `cargo build --release -p carapace`):
//!   tests/testhost/run --timeout 900 -- env CARAPACE_VMM_KICK_MS=100 \
//!     target/release/deps/container_vm-<hash> --ignored --nocapture
//! Env: CARAPACE_BIN (default target/release/carapace), CARAPACE_AGENT_BIN
//! (default target/x86_64-unknown-linux-gnu/release/carapace-agent),
//! CARAPACE_GUEST_DIR (default /var/lib/carapace/guest: vmlinux).
//! Over 600 lines on purpose: one job (the container API in a real guest); each test is one
//! long scenario in one booted VM, built from the helpers of this file.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use carapace_agent_client::pb::{self, agent_client::AgentClient as Grpc};
use carapace_agent_client::{AgentClient, AGENT_VSOCK_PORT};
use tonic::transport::Channel;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn target_dir() -> PathBuf {
    // target/release/deps/<test> -> target
    let exe = std::env::current_exe().unwrap();
    exe.ancestors().nth(3).unwrap().to_path_buf()
}

fn env_path(var: &str, default: PathBuf) -> PathBuf {
    std::env::var_os(var).map(PathBuf::from).unwrap_or(default)
}

fn run(cmd: &mut Command) {
    let st = cmd.status().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(st.success(), "{cmd:?}: {st}");
}

/// agent initramfs + the busybox rootfs under /testroot, concatenated.
fn build_initramfs(dir: &Path) -> PathBuf {
    let agent = env_path(
        "CARAPACE_AGENT_BIN",
        target_dir().join("x86_64-unknown-linux-gnu/release/carapace-agent"),
    );
    let base = dir.join("base.cpio");
    run(Command::new(repo().join("guest-image/build-initramfs.sh"))
        .arg(&agent)
        .arg(&base)
        .stdout(Stdio::null()));
    let stage = dir.join("stage");
    run(Command::new(repo().join("tests/rootfs/busybox.sh"))
        .arg(stage.join("testroot"))
        .stdout(Stdio::null()));
    std::fs::create_dir_all(stage.join("testdata")).unwrap();
    std::fs::write(stage.join("testdata/greeting"), "hello from a volume\n").unwrap();
    let extra = dir.join("extra.cpio");
    run(Command::new("sh").arg("-c").arg(format!(
        "cd {} && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc --owner=0:0 > {}",
        stage.display(),
        extra.display()
    )));
    let out = dir.join("initramfs.cpio");
    let mut all = std::fs::read(&base).unwrap();
    all.extend(std::fs::read(&extra).unwrap());
    std::fs::write(&out, all).unwrap();
    out
}

struct Vm {
    child: Child,
    dir: PathBuf,
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Vm {
    fn serial(&self) -> String {
        std::fs::read_to_string(self.dir.join("serial.log")).unwrap_or_default()
    }
}

fn boot(dir: &Path, initramfs: &Path) -> Vm {
    let guest = env_path("CARAPACE_GUEST_DIR", "/var/lib/carapace/guest".into());
    let bin = env_path("CARAPACE_BIN", target_dir().join("release/carapace"));
    let mut cmd = Command::new(bin);
    cmd.arg("vmm")
        .arg("--kernel")
        .arg(guest.join("vmlinux"))
        .arg("--initramfs")
        .arg(initramfs)
        .arg("--vcpus")
        .arg("1")
        .arg("--mem-mib")
        .arg("512")
        .arg("--serial-log")
        .arg(dir.join("serial.log"))
        .arg("--vsock-uds")
        .arg(dir.join("vsock.sock"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("vmm.stderr")).unwrap());
    if let Ok(ms) = std::env::var("CARAPACE_VMM_KICK_MS") {
        cmd.arg("--kick-interval-ms").arg(ms);
    }
    Vm { child: cmd.spawn().unwrap(), dir: dir.to_path_buf() }
}

fn process(args: &[&str]) -> pb::Process {
    pb::Process { args: args.iter().map(|s| s.to_string()).collect(), ..Default::default() }
}

fn container(id: &str, args: &[&str]) -> pb::CreateContainerRequest {
    pb::CreateContainerRequest {
        id: id.into(),
        process: Some(process(args)),
        rootfs_path: "/testroot".into(),
        hostname: "pod-h".into(),
        ..Default::default()
    }
}

#[derive(Debug, Default)]
struct Output {
    out: String,
    err: String,
}

/// Collects a process's output until EOF.
fn collect(
    mut g: Grpc<Channel>,
    container_id: &str,
    exec_id: &str,
) -> tokio::task::JoinHandle<Output> {
    let req = pb::ReadStdioRequest { container_id: container_id.into(), exec_id: exec_id.into() };
    tokio::spawn(async move {
        let mut o = Output::default();
        let mut s = g.read_stdio(req).await.expect("read_stdio").into_inner();
        while let Ok(Some(c)) = s.message().await {
            let text = String::from_utf8_lossy(&c.data).into_owned();
            if c.stream == pb::stdio_chunk::Stream::Stderr as i32 {
                o.err.push_str(&text);
            } else {
                o.out.push_str(&text);
            }
        }
        o
    })
}

/// create + start; returns the output collector.
async fn launch(
    g: &mut Grpc<Channel>,
    req: pb::CreateContainerRequest,
) -> tokio::task::JoinHandle<Output> {
    let id = req.id.clone();
    g.create_container(req).await.unwrap_or_else(|e| panic!("create {id}: {e:?}"));
    let out = collect(g.clone(), &id, "");
    g.start_container(pb::StartContainerRequest { id: id.clone() })
        .await
        .unwrap_or_else(|e| panic!("start {id}: {e:?}"));
    out
}

/// Runs a container to completion; removes it.
async fn run_to_end(
    g: &mut Grpc<Channel>,
    req: pb::CreateContainerRequest,
) -> (Output, pb::WaitProcessResponse) {
    let id = req.id.clone();
    let out = launch(g, req).await;
    let w =
        g.wait_container(pb::WaitContainerRequest { id: id.clone() }).await.unwrap().into_inner();
    let o = tokio::time::timeout(Duration::from_secs(30), out).await.unwrap().unwrap();
    g.remove_container(pb::RemoveContainerRequest { id, force: false }).await.unwrap();
    (o, w)
}

async fn exec(
    g: &mut Grpc<Channel>,
    id: &str,
    args: &[&str],
) -> Result<(Output, pb::WaitProcessResponse), tonic::Status> {
    let r = g
        .exec_process(pb::ExecProcessRequest {
            container_id: id.into(),
            exec_id: String::new(),
            process: Some(process(args)),
        })
        .await?
        .into_inner();
    let out = collect(g.clone(), id, &r.exec_id);
    let w = g
        .wait_process(pb::WaitProcessRequest { container_id: id.into(), exec_id: r.exec_id })
        .await?
        .into_inner();
    Ok((tokio::time::timeout(Duration::from_secs(30), out).await.unwrap().unwrap(), w))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a KVM that boots Linux guests: run in the test host (see the file's docs)"]
async fn containers_in_a_real_guest() {
    let tmp = tempfile::tempdir().unwrap();
    let initramfs = build_initramfs(tmp.path());
    let vm = boot(tmp.path(), &initramfs);
    let client = match AgentClient::connect(
        &tmp.path().join("vsock.sock"),
        AGENT_VSOCK_PORT,
        Duration::from_secs(120),
    )
    .await
    {
        Ok(c) => c.with_call_timeout(Duration::from_secs(120)),
        Err(e) => panic!("agent: {e}\n{}", vm.serial()),
    };
    let mut g = client.grpc();
    let step = |s: &str| eprintln!("== {s}");

    step("stdout and stderr separate, exit 3 (default seccomp profile)");
    let mut req = container("c-exit3", &["sh", "-c", "echo out; echo err >&2; exit 3"]);
    req.security = Some(pb::Security {
        seccomp: Some(pb::Seccomp {
            kind: pb::seccomp::Kind::RuntimeDefault as i32,
            profile_json: String::new(),
        }),
        ..Default::default()
    });
    let (o, w) = run_to_end(&mut g, req).await;
    assert_eq!((o.out.as_str(), o.err.as_str()), ("out\n", "err\n"), "{}", vm.serial());
    assert_eq!((w.exit_code, w.exit_reason()), (3, pb::ExitReason::Error));
    assert!(w.finished_at_unix_ms >= w.started_at_unix_ms && w.started_at_unix_ms > 0);

    step("pod hostname, exec, missing binary, localhost between containers, volume");
    let mut web = container(
        "web",
        &[
            "sh",
            "-c",
            "mkdir -p /tmp/www && echo hello > /tmp/www/index.html \
             && exec httpd -f -p 127.0.0.1:8080 -h /tmp/www",
        ],
    );
    web.mounts = vec![pb::Mount {
        destination: "/data".into(),
        source: "/testdata".into(),
        r#type: "bind".into(),
        options: vec!["ro".into()],
    }];
    let _web_out = launch(&mut g, web).await;
    let (o, w) = exec(&mut g, "web", &["cat", "/etc/hostname"]).await.unwrap();
    assert_eq!((o.out.as_str(), w.exit_code), ("pod-h\n", 0), "{o:?}");
    let (o, _) = exec(&mut g, "web", &["cat", "/data/greeting"]).await.unwrap();
    assert_eq!(o.out, "hello from a volume\n");
    let e = exec(&mut g, "web", &["/no/such/binary"]).await.unwrap_err();
    eprintln!("missing binary: {:?}: {}", e.code(), e.message());
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    assert!(e.message().contains("executable '/no/such/binary' not found"), "{e:?}");
    let (o, w) = run_to_end(
        &mut g,
        container(
            "client",
            &[
                "sh",
                "-c",
                "for i in 1 2 3 4 5 6 7 8 9 10; do \
                 wget -qO- http://127.0.0.1:8080/ && exit 0; sleep 1; done; exit 1",
            ],
        ),
    )
    .await;
    assert_eq!((o.out.as_str(), w.exit_code), ("hello\n", 0), "{o:?}");
    let list = g.list_containers(pb::ListContainersRequest {}).await.unwrap().into_inner();
    let webinfo = list.containers.iter().find(|c| c.id == "web").unwrap();
    assert_eq!(webinfo.state, "running");
    assert_eq!(webinfo.exec_ids.len(), 2);
    let st = g
        .container_stats(pb::ContainerStatsRequest { id: "web".into() })
        .await
        .unwrap()
        .into_inner();
    assert!(st.memory_usage_bytes > 0 && st.pids_current >= 1, "{st:?}");
    g.update_container_resources(pb::UpdateContainerResourcesRequest {
        id: "web".into(),
        resources: Some(pb::Resources { memory_limit_bytes: 64 << 20, ..Default::default() }),
    })
    .await
    .unwrap();
    let st = g
        .container_stats(pb::ContainerStatsRequest { id: "web".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(st.memory_limit_bytes, 64 << 20);
    g.remove_container(pb::RemoveContainerRequest { id: "web".into(), force: true }).await.unwrap();

    step("stdin");
    let mut cat = container("cat", &["cat"]);
    cat.process.as_mut().unwrap().stdin = true;
    let out = launch(&mut g, cat).await;
    g.write_stdin(pb::WriteStdinRequest {
        container_id: "cat".into(),
        exec_id: String::new(),
        data: b"ping\n".to_vec(),
        close: true,
    })
    .await
    .unwrap();
    let w =
        g.wait_container(pb::WaitContainerRequest { id: "cat".into() }).await.unwrap().into_inner();
    assert_eq!((out.await.unwrap().out.as_str(), w.exit_code), ("ping\n", 0));
    g.remove_container(pb::RemoveContainerRequest { id: "cat".into(), force: false })
        .await
        .unwrap();

    step("tty: a container and an exec on a terminal, resized, with stdin");
    let mut term = container("term", &["sh", "-c", "tty; stty size; read line; echo got:$line"]);
    {
        let p = term.process.as_mut().unwrap();
        p.tty = true;
        p.stdin = true;
    }
    g.create_container(term)
        .await
        .unwrap_or_else(|e| panic!("create term: {e:?}\n{}", vm.serial()));
    g.resize_tty(pb::ResizeTtyRequest {
        container_id: "term".into(),
        exec_id: String::new(),
        rows: 33,
        cols: 101,
    })
    .await
    .unwrap();
    let out = collect(g.clone(), "term", "");
    g.start_container(pb::StartContainerRequest { id: "term".into() }).await.unwrap();
    g.write_stdin(pb::WriteStdinRequest {
        container_id: "term".into(),
        exec_id: String::new(),
        data: b"typed\n".to_vec(),
        close: false,
    })
    .await
    .unwrap();
    let w = g
        .wait_container(pb::WaitContainerRequest { id: "term".into() })
        .await
        .unwrap()
        .into_inner();
    let o = tokio::time::timeout(Duration::from_secs(30), out).await.unwrap().unwrap();
    assert_eq!(w.exit_code, 0, "{o:?}");
    assert!(o.err.is_empty(), "a terminal has one stream: {o:?}");
    let text = o.out.replace('\r', "");
    // The terminal echoes what was typed, wherever it lands in the output.
    assert!(text.contains("/dev/pts/") && text.contains("33 101\n"), "{text:?}");
    assert!(text.contains("typed\n") && text.contains("got:typed\n"), "{text:?}");
    g.remove_container(pb::RemoveContainerRequest { id: "term".into(), force: false })
        .await
        .unwrap();
    let _sleeper = launch(&mut g, container("plain", &["sleep", "1000"])).await;
    let mut tp = process(&["sh", "-c", "tty; echo $TERM_TEST; stty size"]);
    tp.tty = true;
    tp.env = vec!["TERM_TEST=from-exec".into()];
    let r = g
        .exec_process(pb::ExecProcessRequest {
            container_id: "plain".into(),
            exec_id: "t1".into(),
            process: Some(tp),
        })
        .await
        .unwrap()
        .into_inner();
    let out = collect(g.clone(), "plain", &r.exec_id);
    let w = g
        .wait_process(pb::WaitProcessRequest {
            container_id: "plain".into(),
            exec_id: r.exec_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let o = tokio::time::timeout(Duration::from_secs(30), out).await.unwrap().unwrap();
    let text = o.out.replace('\r', "");
    assert_eq!(w.exit_code, 0, "{o:?}");
    assert!(text.starts_with("/dev/pts/") && text.contains("from-exec\n"), "{text:?}");
    // Without a terminal: resizing is refused, and the exec sees no tty.
    let (o, w) = exec(&mut g, "plain", &["tty"]).await.unwrap();
    assert_eq!((o.out.as_str(), w.exit_code), ("not a tty\n", 1), "{o:?}");
    let e = g
        .resize_tty(pb::ResizeTtyRequest {
            container_id: "plain".into(),
            exec_id: String::new(),
            rows: 10,
            cols: 10,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    let e = g
        .resize_tty(pb::ResizeTtyRequest {
            container_id: "plain".into(),
            exec_id: "t1".into(),
            rows: 0,
            cols: 70_000,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    g.remove_container(pb::RemoveContainerRequest { id: "plain".into(), force: true })
        .await
        .unwrap();

    step("memory limit 32 MiB, 100 MiB allocation -> OOMKilled");
    let mut oom = container("oom", &["dd", "if=/dev/zero", "of=/dev/null", "bs=100M", "count=1"]);
    oom.resources = Some(pb::Resources { memory_limit_bytes: 32 << 20, ..Default::default() });
    let (o, w) = run_to_end(&mut g, oom).await;
    assert_eq!(w.exit_reason(), pb::ExitReason::OomKilled, "{w:?} {o:?}");
    assert_eq!(w.exit_code, 137);

    step("SIGTERM ignored -> killed after the grace period");
    let _out = launch(
        &mut g,
        container(
            "stubborn",
            &["sh", "-c", "trap '' TERM; echo ready; while true; do sleep 1; done"],
        ),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t0 = Instant::now();
    let w = g
        .stop_container(pb::StopContainerRequest {
            id: "stubborn".into(),
            signal: 0,
            timeout_ms: 2000,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(t0.elapsed() >= Duration::from_millis(1900));
    assert_eq!((w.exit_code, w.exit_reason()), (137, pb::ExitReason::Killed), "{w:?}");
    g.remove_container(pb::RemoveContainerRequest { id: "stubborn".into(), force: false })
        .await
        .unwrap();

    step("read-only rootfs -> EROFS; non-root user cannot write root-owned files");
    let mut ro = container("ro", &["touch", "/newfile"]);
    ro.rootfs_readonly = true;
    let (o, w) = run_to_end(&mut g, ro).await;
    assert_ne!(w.exit_code, 0);
    assert!(o.err.contains("Read-only file system"), "{o:?}");
    let mut user = container("user", &["sh", "-c", "id -u; echo x >> /etc/motd"]);
    user.process.as_mut().unwrap().user =
        Some(pb::User { uid: 1000, gid: 1000, additional_gids: vec![] });
    let (o, w) = run_to_end(&mut g, user).await;
    assert_eq!(o.out, "1000\n");
    assert!(o.err.contains("Permission denied"), "{o:?}");
    assert_ne!(w.exit_code, 0);

    step("default seccomp profile (no_new_privs): unshare is refused");
    let mut sc =
        container("seccomp", &["sh", "-c", "unshare -U true && echo allowed || echo refused"]);
    sc.security = Some(pb::Security {
        no_new_privs: true,
        seccomp: Some(pb::Seccomp {
            kind: pb::seccomp::Kind::RuntimeDefault as i32,
            profile_json: String::new(),
        }),
        ..Default::default()
    });
    let (o, _) = run_to_end(&mut g, sc).await;
    assert_eq!(o.out, "refused\n", "{o:?}");

    step("PID namespace shared only when asked");
    let pod_pid = |id: &str, args: &[&str]| {
        let mut c = container(id, args);
        c.namespaces =
            Some(pb::Namespaces { pid: pb::NamespaceMode::Pod as i32, ..Default::default() });
        c
    };
    let _p1 = launch(&mut g, pod_pid("p1", &["sleep", "1000"])).await;
    let (o, _) =
        run_to_end(&mut g, pod_pid("p2", &["sh", "-c", "ps -o comm,args | grep -c '^sleep'"]))
            .await;
    assert_eq!(o.out, "1\n", "shared: {o:?}");
    let (o, _) =
        run_to_end(&mut g, container("p3", &["sh", "-c", "ps -o comm,args | grep -c '^sleep'"]))
            .await;
    assert_eq!(o.out, "0\n", "private: {o:?}");
    g.remove_container(pb::RemoveContainerRequest { id: "p1".into(), force: true }).await.unwrap();

    step("hostile requests get errors; the agent stays up");
    let mut bad = container("bad", &["sh"]);
    bad.rootfs_path = "/testroot/../".into();
    assert_eq!(g.create_container(bad).await.unwrap_err().code(), tonic::Code::InvalidArgument);
    let mut bad = container("bad", &["sh"]);
    bad.mounts = vec![pb::Mount {
        destination: "/../../etc".into(),
        source: "/".into(),
        ..Default::default()
    }];
    assert_eq!(g.create_container(bad).await.unwrap_err().code(), tonic::Code::InvalidArgument);
    let bad = container("../escape", &["sh"]);
    assert_eq!(g.create_container(bad).await.unwrap_err().code(), tonic::Code::InvalidArgument);
    client.health().await.unwrap();
    assert!(g
        .list_containers(pb::ListContainersRequest {})
        .await
        .unwrap()
        .into_inner()
        .containers
        .is_empty());
    client.shutdown().await.unwrap();
    drop(vm);
}

/// Boots a VM with the test rootfs and connects to its agent.
async fn boot_and_connect(dir: &Path) -> (Vm, AgentClient) {
    let initramfs = build_initramfs(dir);
    let vm = boot(dir, &initramfs);
    match AgentClient::connect(&dir.join("vsock.sock"), AGENT_VSOCK_PORT, Duration::from_secs(120))
        .await
    {
        Ok(c) => (vm, c.with_call_timeout(Duration::from_secs(120))),
        Err(e) => panic!("agent: {e}\n{}", vm.serial()),
    }
}

fn runtime_default() -> Option<pb::Seccomp> {
    Some(pb::Seccomp {
        kind: pb::seccomp::Kind::RuntimeDefault as i32,
        profile_json: String::new(),
    })
}

/// The `Name:\tvalue` line of a /proc/<pid>/status text.
fn status_field<'a>(status: &'a str, name: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {name} in {status:?}"))
}

/// What critest checks, agent side: pod sysctls, drop ALL capabilities (init and exec),
/// RuntimeDefault seccomp in init and exec (plain, terminal, no_new_privs), StopContainer of
/// `sh -c top` ending by SIGTERM, and a holder process as PID 1 of the pod's PID namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a KVM that boots Linux guests: run in the test host (see the file's docs)"]
async fn critest_semantics_in_a_real_guest() {
    let tmp = tempfile::tempdir().unwrap();
    let (vm, client) = boot_and_connect(tmp.path()).await;
    let mut g = client.grpc();
    let step = |s: &str| eprintln!("== {s}");

    step("a non-namespaced sysctl is refused");
    let mut bad = container("bad-sysctl", &["true"]);
    bad.pod_sysctls = [("kernel.core_pattern".to_string(), "|/bin/sh".to_string())].into();
    let e = g.create_container(bad).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    let mut bad = container("bad-sysctl", &["true"]);
    bad.pod_sysctls = [("net.ipv4/../../kernel/core_pattern".to_string(), "x".to_string())].into();
    let e = g.create_container(bad).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");

    step("pod sysctls are set in the pod's namespaces (the first container makes them)");
    let mut sys = container(
        "sysctl",
        &["cat", "/proc/sys/kernel/shm_rmid_forced", "/proc/sys/fs/mqueue/msg_max"],
    );
    sys.pod_sysctls = [
        ("kernel.shm_rmid_forced".to_string(), "1".to_string()),
        ("fs.mqueue.msg_max".to_string(), "100".to_string()),
    ]
    .into();
    let (o, w) = run_to_end(&mut g, sys).await;
    assert_eq!((o.out.as_str(), w.exit_code), ("1\n100\n", 0), "{o:?}\n{}", vm.serial());
    // The guest's own namespaces keep their values.
    let host_rmid = std::fs::read_to_string("/proc/sys/kernel/shm_rmid_forced").ok();
    eprintln!("(test host's shm_rmid_forced: {host_rmid:?})");

    step("drop ALL: no capability in any set, in init and in an exec");
    let mut none = container("nocaps", &["sh", "-c", "grep ^Cap /proc/self/status; sleep 1000"]);
    none.security = Some(pb::Security { capabilities_exact: true, ..Default::default() });
    let none_out = launch(&mut g, none).await;
    let (o, w) = exec(&mut g, "nocaps", &["cat", "/proc/self/status"]).await.unwrap();
    assert_eq!(w.exit_code, 0, "{o:?}");
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(status_field(&o.out, set), "0000000000000000", "exec {set}: {}", o.out);
    }
    g.remove_container(pb::RemoveContainerRequest { id: "nocaps".into(), force: true })
        .await
        .unwrap();
    let o = tokio::time::timeout(Duration::from_secs(30), none_out).await.unwrap().unwrap();
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(status_field(&o.out, set), "0000000000000000", "init {set}: {}", o.out);
    }

    step("RuntimeDefault seccomp: filter mode in init, in an exec, in a terminal exec");
    let mut sc = container("sc", &["sleep", "1000"]);
    sc.security = Some(pb::Security { seccomp: runtime_default(), ..Default::default() });
    let _sc_out = launch(&mut g, sc).await;
    let (o, _) = exec(&mut g, "sc", &["cat", "/proc/1/status"]).await.unwrap();
    let init_status = o.out;
    assert_eq!(status_field(&init_status, "Seccomp"), "2", "init: {init_status}");
    let (o, w) = exec(&mut g, "sc", &["cat", "/proc/self/status"]).await.unwrap();
    assert_eq!(w.exit_code, 0, "{o:?}\n{}", vm.serial());
    assert_eq!(status_field(&o.out, "Seccomp"), "2", "exec: {}", o.out);
    // The exec holds the container's capabilities, not the ones it loaded the filter with.
    for set in ["CapPrm", "CapEff", "CapBnd", "CapAmb", "CapInh"] {
        assert_eq!(
            status_field(&o.out, set),
            status_field(&init_status, set),
            "exec {set} differs from init's"
        );
    }
    eprintln!(
        "NoNewPrivs: init {}, exec {}",
        status_field(&init_status, "NoNewPrivs"),
        status_field(&o.out, "NoNewPrivs")
    );
    assert_eq!(status_field(&o.out, "NoNewPrivs"), status_field(&init_status, "NoNewPrivs"));
    // The filter works: unshare(2) is refused with EPERM.
    let (o, _) =
        exec(&mut g, "sc", &["sh", "-c", "unshare -n true 2>&1; echo rc=$?"]).await.unwrap();
    assert!(o.out.contains("rc=1") || o.out.contains("not permitted"), "{o:?}");
    let mut tp = process(&["grep", "-E", "^(Seccomp|CapEff)", "/proc/self/status"]);
    tp.tty = true;
    let r = g
        .exec_process(pb::ExecProcessRequest {
            container_id: "sc".into(),
            exec_id: "tty1".into(),
            process: Some(tp),
        })
        .await
        .unwrap()
        .into_inner();
    let out = collect(g.clone(), "sc", &r.exec_id);
    let w = g
        .wait_process(pb::WaitProcessRequest { container_id: "sc".into(), exec_id: r.exec_id })
        .await
        .unwrap()
        .into_inner();
    let o = tokio::time::timeout(Duration::from_secs(30), out).await.unwrap().unwrap();
    let text = o.out.replace('\r', "");
    assert_eq!(w.exit_code, 0, "{text:?}");
    assert_eq!(status_field(&text, "Seccomp"), "2", "terminal exec: {text}");
    assert_eq!(status_field(&text, "CapEff"), status_field(&init_status, "CapEff"));
    g.remove_container(pb::RemoveContainerRequest { id: "sc".into(), force: true }).await.unwrap();
    let mut nnp = container("nnp", &["sleep", "1000"]);
    nnp.security =
        Some(pb::Security { seccomp: runtime_default(), no_new_privs: true, ..Default::default() });
    let _nnp_out = launch(&mut g, nnp).await;
    let (o, w) = exec(&mut g, "nnp", &["cat", "/proc/self/status"]).await.unwrap();
    assert_eq!(w.exit_code, 0, "{o:?}");
    assert_eq!(
        (status_field(&o.out, "Seccomp"), status_field(&o.out, "NoNewPrivs")),
        ("2", "1"),
        "{}",
        o.out
    );
    let (o1, _) = exec(&mut g, "nnp", &["cat", "/proc/1/status"]).await.unwrap();
    assert_eq!(status_field(&o.out, "CapBnd"), status_field(&o1.out, "CapBnd"));
    g.remove_container(pb::RemoveContainerRequest { id: "nnp".into(), force: true }).await.unwrap();

    step("StopContainer of `sh -c top` ends it by SIGTERM, within the grace period");
    let _top_out = launch(&mut g, container("top", &["sh", "-c", "top"])).await;
    let mut ready = String::new();
    for _ in 0..50 {
        let (o, _) = exec(&mut g, "top", &["cat", "/proc/1/status"]).await.unwrap();
        ready = o.out;
        if status_field(&ready, "Name") == "top"
            && status_field(&ready, "SigCgt") != "0000000000000000"
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "top as PID 1: Name {} SigBlk {} SigIgn {} SigCgt {}",
        status_field(&ready, "Name"),
        status_field(&ready, "SigBlk"),
        status_field(&ready, "SigIgn"),
        status_field(&ready, "SigCgt")
    );
    let w = g
        .stop_container(pb::StopContainerRequest {
            id: "top".into(),
            signal: 0,
            timeout_ms: 60_000,
        })
        .await
        .unwrap()
        .into_inner();
    assert_ne!(w.exit_reason(), pb::ExitReason::Killed, "SIGKILLed after the grace period: {w:?}");
    assert!(
        w.exit_code == 143 || w.signal == libc::SIGTERM,
        "not ended by SIGTERM: {w:?}\n{}",
        vm.serial()
    );
    g.remove_container(pb::RemoveContainerRequest { id: "top".into(), force: false })
        .await
        .unwrap();

    step("POD PID namespace: PID 1 is the pod's holder, not the container; it outlives containers");
    let pod_pid = |id: &str, args: &[&str]| {
        let mut c = container(id, args);
        c.namespaces =
            Some(pb::Namespaces { pid: pb::NamespaceMode::Pod as i32, ..Default::default() });
        c
    };
    let _pp1 = launch(&mut g, pod_pid("pp1", &["sleep", "1000"])).await;
    let (o, _) = exec(&mut g, "pp1", &["cat", "/proc/1/cmdline"]).await.unwrap();
    assert!(!o.out.contains("sleep"), "PID 1 is the container: {o:?}");
    let (o, _) = exec(&mut g, "pp1", &["cat", "/proc/1/comm"]).await.unwrap();
    assert_eq!(o.out, "pod-pid-holder\n");
    let (o, _) = exec(&mut g, "pp1", &["sh", "-c", "kill -9 1; echo rc=$?"]).await.unwrap();
    eprintln!("kill -9 1 from a container: {o:?}");
    g.remove_container(pb::RemoveContainerRequest { id: "pp1".into(), force: true }).await.unwrap();
    let (o, w) =
        run_to_end(&mut g, pod_pid("pp2", &["sh", "-c", "cat /proc/1/comm; echo $$"])).await;
    assert_eq!(w.exit_code, 0, "{o:?}");
    let mut lines = o.out.lines();
    assert_eq!(lines.next(), Some("pod-pid-holder"), "{o:?}");
    assert_ne!(lines.next(), Some("1"), "the container is PID 1: {o:?}");
    // A container with its own PID namespace is its PID 1.
    let (o, _) = run_to_end(&mut g, container("own", &["sh", "-c", "echo $$"])).await;
    assert_eq!(o.out, "1\n");

    client.health().await.unwrap();
    client.shutdown().await.unwrap();
    drop(vm);
}
