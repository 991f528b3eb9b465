//! End-to-end: `carapace vmm --shared-dir DIR` shares DIR into the guest through virtio-fs; the
//! agent mounts it at /run/carapace/shared. A busybox rootfs laid INTO the shared directory runs
//! as a container (rootfs on virtio-fs), with a bind volume from the shared directory, and sees
//! (1) a file present before boot, (2) a file the host wrote after the guest was up; the host
//! sees (3) a file the container wrote.
//! Needs a KVM that boots Linux; `make test-e2e` runs it (inside the test host on these machines).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use carapace_agent_client::pb;
use carapace_agent_client::{AgentClient, AGENT_VSOCK_PORT, GUEST_SHARED_DIR};
use carapace_tests::{GuestImage, VmOptions, VmProcess};

const AGENT_DEADLINE: Duration = Duration::from_secs(120);
const EXIT_DEADLINE: Duration = Duration::from_secs(30);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Lays the busybox test rootfs at `dest` (tests/rootfs/busybox.sh).
fn busybox_rootfs(dest: &Path) -> Result<()> {
    let st = Command::new(repo().join("tests/rootfs/busybox.sh"))
        .arg(dest)
        .stdout(Stdio::null())
        .status()
        .context("run tests/rootfs/busybox.sh")?;
    ensure!(st.success(), "tests/rootfs/busybox.sh {}: {st}", dest.display());
    Ok(())
}

/// A container with its rootfs and a read-write bind volume, both inside the shared directory.
fn container(id: &str, script: &str) -> pb::CreateContainerRequest {
    pb::CreateContainerRequest {
        id: id.into(),
        process: Some(pb::Process {
            args: vec!["sh".into(), "-c".into(), script.into()],
            ..Default::default()
        }),
        rootfs_path: format!("{GUEST_SHARED_DIR}/pod/rootfs"),
        mounts: vec![pb::Mount {
            destination: "/vol".into(),
            source: format!("{GUEST_SHARED_DIR}/pod/vol"),
            r#type: "bind".into(),
            options: vec!["rw".into()],
        }],
        hostname: "shared".into(),
        ..Default::default()
    }
}

/// Runs one container to completion; returns (stdout, stderr, exit code).
async fn run_container(agent: &AgentClient, req: pb::CreateContainerRequest) -> Result<(String, String, i32)> {
    let mut g = agent.grpc();
    let id = req.id.clone();
    g.create_container(req).await.with_context(|| format!("create {id}"))?;
    let mut reader = g.clone();
    let stdio = pb::ReadStdioRequest { container_id: id.clone(), exec_id: String::new() };
    let output = tokio::spawn(async move {
        let (mut out, mut err) = (String::new(), String::new());
        if let Ok(resp) = reader.read_stdio(stdio).await {
            let mut s = resp.into_inner();
            while let Ok(Some(c)) = s.message().await {
                let text = String::from_utf8_lossy(&c.data).into_owned();
                if c.stream == pb::stdio_chunk::Stream::Stderr as i32 {
                    err.push_str(&text);
                } else {
                    out.push_str(&text);
                }
            }
        }
        (out, err)
    });
    g.start_container(pb::StartContainerRequest { id: id.clone() })
        .await
        .with_context(|| format!("start {id}"))?;
    let waited = g
        .wait_container(pb::WaitContainerRequest { id: id.clone() })
        .await
        .with_context(|| format!("wait {id}"))?
        .into_inner();
    let (out, err) = tokio::time::timeout(Duration::from_secs(30), output)
        .await
        .context("container output did not end")??;
    g.remove_container(pb::RemoveContainerRequest { id: id.clone(), force: false })
        .await
        .with_context(|| format!("remove {id}"))?;
    Ok((out, err, waited.exit_code))
}

async fn scenario(vm: &VmProcess, host_vol: &Path) -> Result<()> {
    let agent = AgentClient::connect(&vm.vsock_path(), AGENT_VSOCK_PORT, AGENT_DEADLINE)
        .await
        .context("agent not reached")?
        .with_call_timeout(Duration::from_secs(120));

    let (out, err, code) = run_container(&agent, container("before", "cat /vol/before.txt")).await?;
    ensure!(
        (out.as_str(), code) == ("present before boot\n", 0),
        "file present before boot: stdout {out:?} stderr {err:?} exit {code}"
    );

    // The guest is up and has the directory mounted: the host writes a new file now.
    std::fs::write(host_vol.join("after.txt"), "written by the host after boot\n")?;
    let (out, err, code) = run_container(&agent, container("after", "cat /vol/after.txt")).await?;
    ensure!(
        (out.as_str(), code) == ("written by the host after boot\n", 0),
        "file written after boot: stdout {out:?} stderr {err:?} exit {code}"
    );

    let (out, err, code) =
        run_container(&agent, container("writer", "echo written by the guest > /vol/from-guest.txt")).await?;
    ensure!(code == 0, "guest write: stdout {out:?} stderr {err:?} exit {code}");
    let seen = std::fs::read_to_string(host_vol.join("from-guest.txt")).context("host reads the guest's file")?;
    ensure!(seen == "written by the guest\n", "host sees {seen:?}");

    agent.shutdown().await.context("shutdown")?;
    Ok(())
}

#[test]
#[ignore = "needs a KVM that boots Linux guests: run by `make test-e2e`"]
fn guest_sees_the_shared_directory_live_and_runs_a_container_from_it() {
    let image = GuestImage::from_env().expect("guest image");
    let shared = tempfile::Builder::new().prefix("carapace-shared-").tempdir().expect("tempdir");
    let pod = shared.path().join("pod");
    busybox_rootfs(&pod.join("rootfs")).expect("busybox rootfs");
    let vol = pod.join("vol");
    std::fs::create_dir_all(&vol).expect("volume dir");
    std::fs::write(vol.join("before.txt"), "present before boot\n").expect("before.txt");

    let opts = VmOptions {
        mem_mib: 512,
        extra_args: vec!["--shared-dir".into(), shared.path().display().to_string()],
        ..Default::default()
    };
    let mut vm = VmProcess::spawn(&image, &opts).expect("spawn");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = rt.block_on(scenario(&vm, &vol)) {
        panic!("{e:#}\n{}", vm.diagnostics());
    }
    let status = vm
        .wait_exit(EXIT_DEADLINE)
        .unwrap_or_else(|e| panic!("VMM did not exit after shutdown: {e:#}\n{}", vm.diagnostics()));
    assert_eq!(status.code(), Some(0), "VMM exit after shutdown\n{}", vm.diagnostics());
    assert!(
        vm.serial_log().contains("shared directory mounted"),
        "the agent did not log the mount\n{}",
        vm.diagnostics()
    );
}
