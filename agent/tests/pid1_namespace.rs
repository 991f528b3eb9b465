//! Runs the real agent as PID 1 of a fresh PID + mount + UTS namespace,
//! chrooted into a scratch root that looks like the initramfs: exercises the
//! PID 1 path (mounts, hostname, reaper, shutdown → reboot(RESTART), which in
//! a child PID namespace makes the kernel kill the namespace's init with
//! SIGHUP instead of restarting the machine). Needs root and unshare(1);
//! skipped (with a message) otherwise.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use carapace_agent_client::{AgentClient, AGENT_VSOCK_PORT};
use common::{spawn_fake_vmm, uname_r, AgentProc};

/// Copies `bin` and the shared objects it needs (per ldd) into `root`.
fn populate_root(root: &Path, bin: &Path) {
    for d in ["dev", "proc", "sys", "run", "tmp", "etc"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(bin, root.join("init")).unwrap();
    let ldd = Command::new("ldd").arg(bin).output().unwrap();
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
        // "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = match line.split_once("=>") {
            Some((_, rhs)) => rhs.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        let Some(path) = path.filter(|p| p.starts_with('/')) else {
            continue;
        };
        let dest = root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(path, &dest).unwrap();
    }
}

/// Children of every thread of `pid` (zombies included until reaped).
fn all_children(pid: i32) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("children")).ok())
        .flat_map(|text| {
            text.split_whitespace().filter_map(|p| p.parse().ok()).collect::<Vec<i32>>()
        })
        .collect()
}

fn child_of(pid: i32) -> Option<i32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_as_pid1_in_namespaces() {
    if !nix::unistd::geteuid().is_root()
        || Command::new("unshare").arg("--version").output().is_err()
    {
        eprintln!("skipping: needs root and unshare(1)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    populate_root(&root, Path::new(env!("CARGO_BIN_EXE_carapace-agent")));

    let mut cmd = Command::new("unshare");
    // --kill-child: if the test fails and kills unshare, the agent (the
    // namespace init, which holds our stderr) dies with it.
    cmd.args([
        "--pid",
        "--fork",
        "--kill-child",
        "--mount",
        "--uts",
        "--ipc",
        "--propagation",
        "private",
    ])
    .arg("chroot")
    .arg(&root)
    .args(["/init", "--listen-unix", "/agent.sock", "--hostname", "testpod"]);
    let mut agent = AgentProc::start_cmd(cmd);

    // The agent's host-side pid: unshare's only child.
    let agent_pid = child_of(agent.pid()).expect("agent pid");
    let mountinfo = std::fs::read_to_string(format!("/proc/{agent_pid}/mountinfo")).unwrap();
    for target in
        ["/proc", "/sys", "/dev", "/dev/pts", "/dev/shm", "/run", "/tmp", "/sys/fs/cgroup"]
    {
        assert!(
            mountinfo.lines().any(|l| l.split(' ').nth(4) == Some(target)),
            "{target} not mounted:\n{mountinfo}"
        );
    }
    let host = Command::new("nsenter")
        .args(["--uts", "--target", &agent_pid.to_string(), "hostname"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&host.stdout).trim(), "testpod");

    // An orphan inside the namespace is adopted by the agent and reaped
    // when it exits (no zombie stays among the agent's children).
    let st = Command::new("nsenter")
        .args([
            "--target",
            &agent_pid.to_string(),
            "--pid",
            "--",
            "/bin/sh",
            "-c",
            "sleep 0.5 & exit 0",
        ])
        .status()
        .unwrap();
    assert!(st.success());
    let adopted_by = std::time::Instant::now() + Duration::from_secs(10);
    while all_children(agent_pid).is_empty() {
        assert!(std::time::Instant::now() < adopted_by, "orphan never adopted by the agent");
        std::thread::sleep(Duration::from_millis(10));
    }
    let reaped_by = std::time::Instant::now() + Duration::from_secs(10);
    while !all_children(agent_pid).is_empty() {
        assert!(
            std::time::Instant::now() < reaped_by,
            "orphan not reaped: children {:?}",
            all_children(agent_pid)
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let vm_sock = dir.path().join("vm.sock");
    spawn_fake_vmm(vm_sock.clone(), root.join("agent.sock"));
    let client = AgentClient::connect(&vm_sock, AGENT_VSOCK_PORT, Duration::from_secs(10))
        .await
        .expect("connect");
    let h = client.health().await.expect("health");
    assert!(h.pid1, "agent should know it is PID 1: {h:?}");
    assert_eq!(h.kernel_version, uname_r());

    client.shutdown().await.expect("shutdown");
    // reboot(RESTART) in a child PID namespace: the kernel SIGHUPs its init;
    // unshare reports that as its own death by SIGHUP (or exit 129).
    let st = agent.wait_exit(Duration::from_secs(15));
    assert!(
        st.signal() == Some(libc::SIGHUP) || st.code() == Some(128 + libc::SIGHUP),
        "unexpected exit {st:?}"
    );
}
