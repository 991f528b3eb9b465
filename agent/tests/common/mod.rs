//! Helpers shared by the agent's integration tests.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use carapace_agent_client::AGENT_VSOCK_PORT;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

/// Kills the agent if a test fails half-way.
pub struct AgentProc(Option<Child>);

impl AgentProc {
    pub fn start(sock: &Path) -> AgentProc {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_carapace-agent"));
        cmd.arg("--listen-unix").arg(sock);
        AgentProc::start_cmd(cmd)
    }

    /// Starts `cmd` (stdout piped) and waits for the ready marker.
    pub fn start_cmd(mut cmd: Command) -> AgentProc {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn carapace-agent");
        // Wait for the ready marker on stdout.
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if line == "carapace-agent: ready" {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(20)).expect("agent printed the ready marker");
        AgentProc(Some(child))
    }

    pub fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let child = self.0.as_mut().expect("child");
        let end = Instant::now() + within;
        loop {
            if let Some(st) = child.try_wait().expect("try_wait") {
                self.0 = None;
                return st;
            }
            assert!(Instant::now() < end, "agent did not exit within {within:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> i32 {
        self.0.as_ref().map(|c| c.id() as i32).expect("child")
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A fake VMM: accepts host connections on `vm_sock`, reads `CONNECT <port>`,
/// and if port 1024 is wanted and the agent socket accepts, answers
/// `OK 1073741824` and forwards bytes; otherwise closes the connection, as
/// the real VMM does when the guest has no listener.
pub fn spawn_fake_vmm(vm_sock: PathBuf, agent_sock: PathBuf) {
    let listener = UnixListener::bind(&vm_sock).expect("bind fake vmm");
    tokio::spawn(async move {
        loop {
            let Ok((mut host, _)) = listener.accept().await else {
                return;
            };
            let agent_sock = agent_sock.clone();
            tokio::spawn(async move {
                let mut line = Vec::new();
                loop {
                    let mut b = [0u8; 1];
                    match host.read(&mut b).await {
                        Ok(1) if b[0] == b'\n' => break,
                        Ok(1) => line.push(b[0]),
                        _ => return,
                    }
                }
                if line != format!("CONNECT {AGENT_VSOCK_PORT}").into_bytes() {
                    return;
                }
                let Ok(mut guest) = UnixStream::connect(&agent_sock).await else {
                    return; // no listener in the "guest": close
                };
                if host.write_all(b"OK 1073741824\n").await.is_err() {
                    return;
                }
                let _ = tokio::io::copy_bidirectional(&mut host, &mut guest).await;
            });
        }
    });
}

pub fn uname_r() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease").trim().to_owned()
}

/// SIGKILLs a process on drop (cleanup when a test fails half-way). Set
/// the pid to `None` once the process was waited for, so a recycled pid is
/// never signalled.
pub struct KillOnDrop(pub Option<i32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}
