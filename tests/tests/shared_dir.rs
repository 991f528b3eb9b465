//! End-to-end: `carapace vmm --shared-dir DIR` shares DIR into the guest through virtio-fs; the
//! agent mounts it at /run/carapace/shared. A busybox rootfs laid INTO the shared directory runs
//! as a container (rootfs on virtio-fs), with a bind volume from the shared directory, and sees
//! (1) a file present before boot, (2) a file the host wrote after the guest was up; the host
//! sees (3) a file the container wrote.
//! Needs a KVM that boots Linux; `make test-e2e` runs it (inside the test host on these machines).

use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use carapace_agent_client::pb;
use carapace_agent_client::{AgentClient, GUEST_SHARED_DIR};
use carapace_tests::vm::{busybox_rootfs, SharedDirVm};
use carapace_tests::GuestImage;

const EXIT_DEADLINE: Duration = Duration::from_secs(30);

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
async fn run_container(
    agent: &AgentClient,
    req: pb::CreateContainerRequest,
) -> Result<(String, String, i32)> {
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

async fn scenario(vm: &SharedDirVm, host_vol: &Path) -> Result<()> {
    let agent = vm.connect_agent().await?;

    let (out, err, code) =
        run_container(&agent, container("before", "cat /vol/before.txt")).await?;
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

    let (out, err, code) = run_container(
        &agent,
        container("writer", "echo written by the guest > /vol/from-guest.txt"),
    )
    .await?;
    ensure!(code == 0, "guest write: stdout {out:?} stderr {err:?} exit {code}");
    let seen = std::fs::read_to_string(host_vol.join("from-guest.txt"))
        .context("host reads the guest's file")?;
    ensure!(seen == "written by the guest\n", "host sees {seen:?}");

    agent.shutdown().await.context("shutdown")?;
    Ok(())
}

#[test]
#[ignore = "needs a KVM that boots Linux guests: run by `make test-e2e`"]
fn guest_sees_the_shared_directory_live_and_runs_a_container_from_it() {
    let image = GuestImage::from_env().expect("guest image");
    let mut vm = SharedDirVm::boot(&image, "carapace-shared-", |shared| {
        let pod = shared.join("pod");
        busybox_rootfs(&pod.join("rootfs"))?;
        let vol = pod.join("vol");
        std::fs::create_dir_all(&vol).context("volume dir")?;
        std::fs::write(vol.join("before.txt"), "present before boot\n").context("before.txt")?;
        Ok(())
    })
    .expect("boot a VM with a shared directory");
    let vol = vm.shared_path().join("pod/vol");
    let rt = carapace_tests::multi_thread_runtime().expect("tokio runtime");
    if let Err(e) = rt.block_on(scenario(&vm, &vol)) {
        panic!("{e:#}\n{}", vm.vm.diagnostics());
    }
    let vm = &mut vm.vm;
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
