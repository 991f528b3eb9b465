//! Runs the real `carapace-agent --listen-unix` behind a fake VMM vsock
//! socket (`CONNECT 1024\n` → `OK 1073741824\n`, then bytes forwarded) and
//! drives it with the real host client.

mod common;

use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use carapace_agent_client::{AgentClient, AGENT_VSOCK_PORT};
use common::{spawn_fake_vmm, uname_r, AgentProc};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_shutdown_through_fake_vmm() {
    let dir = tempfile::tempdir().unwrap();
    let agent_sock = dir.path().join("agent.sock");
    let vm_sock = dir.path().join("vm.sock");
    let mut agent = AgentProc::start(&agent_sock);
    spawn_fake_vmm(vm_sock.clone(), agent_sock.clone());

    let client = AgentClient::connect(&vm_sock, AGENT_VSOCK_PORT, Duration::from_secs(10))
        .await
        .expect("connect");
    let h = client.health().await.expect("health");
    assert_eq!(h.kernel_version, uname_r());
    assert!(h.kernel_build.starts_with('#'), "kernel build {:?}", h.kernel_build);
    assert_eq!(h.agent_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(h.api_version, "carapace.agent.v1");
    assert!(h.mem_total_bytes > 0);
    assert!(h.mem_available_bytes > 0 && h.mem_available_bytes <= h.mem_total_bytes);
    assert!(h.cpu_count >= 1);
    assert!(h.uptime_ms > 0);
    assert!(h.agent_start_uptime_ms <= h.uptime_ms);
    assert!(!h.pid1);
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    let expected_boot = now_ms - h.uptime_ms;
    assert!(h.boot_time_unix_ms.abs_diff(expected_boot) < 5_000, "boot time {h:?}");

    // A second call on the same connection works too.
    let h2 = client.health().await.expect("health again");
    assert!(h2.uptime_ms >= h.uptime_ms);

    client.shutdown().await.expect("shutdown");
    let st = agent.wait_exit(Duration::from_secs(10));
    assert_eq!(st.code(), Some(0), "agent exit status {st:?}");
    assert!(!agent_sock.exists(), "agent removed its socket");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_waits_until_agent_listens() {
    let dir = tempfile::tempdir().unwrap();
    let agent_sock = dir.path().join("agent.sock");
    let vm_sock = dir.path().join("vm.sock");
    spawn_fake_vmm(vm_sock.clone(), agent_sock.clone());

    // The "guest" comes up only after the client started trying.
    let sock = agent_sock.clone();
    let starter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        AgentProc::start(&sock)
    });
    let t = Instant::now();
    let client = AgentClient::connect(&vm_sock, AGENT_VSOCK_PORT, Duration::from_secs(20))
        .await
        .expect("connect after retries");
    assert!(t.elapsed() >= Duration::from_millis(300));
    let mut agent = starter.join().unwrap();
    client.health().await.expect("health");
    client.shutdown().await.expect("shutdown");
    assert_eq!(agent.wait_exit(Duration::from_secs(10)).code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_error_when_agent_never_listens() {
    let dir = tempfile::tempdir().unwrap();
    let vm_sock = dir.path().join("vm.sock");
    spawn_fake_vmm(vm_sock.clone(), dir.path().join("nobody.sock"));
    let err = AgentClient::connect(&vm_sock, AGENT_VSOCK_PORT, Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("agent did not answer on vsock port 1024 within 0.3s"),
        "{err}"
    );
}

#[test]
fn sigterm_stops_dev_mode_agent_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let agent_sock = dir.path().join("agent.sock");
    let mut agent = AgentProc::start(&agent_sock);
    nix_kill_term(agent.pid());
    assert_eq!(agent.wait_exit(Duration::from_secs(10)).code(), Some(0));
}

fn nix_kill_term(pid: i32) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM)
        .expect("kill");
}

#[test]
fn bad_arguments_exit_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_carapace-agent")).arg("--bogus").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown argument"));
}

/// The guest path binds AF_VSOCK; the host can usually bind it too (no
/// loopback transport is needed just to listen). Skipped without AF_VSOCK.
#[test]
fn vsock_listener_binds_and_stops_on_sigterm() {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    if socket(AddressFamily::Vsock, SockType::Stream, SockFlag::empty(), None).is_err() {
        eprintln!("skipping: no AF_VSOCK on this host");
        return;
    }
    // A port unlikely to be in use: derived from our pid.
    let port = 20_000 + std::process::id() % 20_000;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_carapace-agent"));
    cmd.args(["--vsock-port", &port.to_string()]);
    let mut agent = AgentProc::start_cmd(cmd);
    nix_kill_term(agent.pid());
    assert_eq!(agent.wait_exit(Duration::from_secs(10)).code(), Some(0));
}
