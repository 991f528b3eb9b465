//! `make bench-container`: container start time inside one pod VM, against runc on the same host.
//!
//! carapace: boots one pod VM (`carapace vmm --shared-dir DIR`, the real guest kernel and
//! initramfs), lays ONE busybox rootfs (tests/rootfs/busybox.sh) into the shared directory and
//! shares it read-only between all containers (`rootfs_readonly`, on virtio-fs at
//! /run/carapace/shared/rootfs). Then N times (BENCH_N, default 20): the time from sending the
//! agent's CreateContainer until StartContainer returned for a `sleep 30` process; each container
//! is then removed (force, not timed).
//!
//! The rootfs transport: the same VM also has the same busybox rootfs in guest RAM (appended to
//! its initramfs at /ramroot), and every virtio-fs container is paired with one started from
//! there. A rootfs in guest RAM is the lower bound of what a block image (erofs/ext4 on
//! virtio-blk, read once into the guest's page cache) could reach, so the ratio
//! virtio-fs/RAM bounds what switching the rootfs to block images could gain.
//!
//! runc (Debian `runc`): the same busybox rootfs laid on this host (under /tmp), one OCI bundle per
//! container with a minimal config.json written here (read-only root, its own pid/ipc/uts/mount/
//! network namespaces, like the agent gives), `runc create` + `runc start` timed the same way,
//! then `runc delete --force` (not timed).
//!
//! Prints per-tool medians; the last line is `container start: median <X> ms over <N>`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use carapace_agent_client::pb;
use carapace_agent_client::GUEST_SHARED_DIR;
use carapace_tests::vm::{busybox_rootfs, initramfs_with_busybox, SharedDirVm};
use carapace_tests::{median_ms, GuestImage};

fn main() -> Result<()> {
    let n = carapace_tests::env_or("BENCH_N", 20usize).max(1);
    let image = GuestImage::from_env()?;

    let (mut ours, mut ram) = carapace_series(&image, n)?;
    let ram_median = median_ms(&mut ram);
    let (mut theirs, runc_note) = match runc_series(n) {
        Ok(v) => (v, None),
        Err(e) => {
            println!("runc: FAILED: {e:#}");
            (Vec::new(), Some(format!("{e:#}")))
        }
    };

    let x = median_ms(&mut ours);
    let y = median_ms(&mut theirs);
    let fmt = |v: Option<f64>| v.map(|v| format!("{v:.1}")).unwrap_or_else(|| "n/a".into());
    println!(
        "carapace (agent in a pod VM, rootfs on virtio-fs): median {} ms over {}",
        fmt(x),
        ours.len()
    );
    println!(
        "carapace (same VM, rootfs in guest RAM): median {} ms over {}",
        fmt(ram_median),
        ram.len()
    );
    if let (Some(x), Some(r)) = (x, ram_median) {
        println!(
            "rootfs transport: virtio-fs/guest-RAM ratio {:.2} \
             (what a block image could gain at most)",
            x / r
        );
    }
    println!(
        "runc (directly on the host, rootfs on tmpfs): median {} ms over {}",
        fmt(y),
        theirs.len()
    );
    if let Some(note) = runc_note {
        println!("runc: n/a — {}", note.lines().next().unwrap_or(""));
    }
    let ratio = match (x, y) {
        (Some(x), Some(y)) if y > 0.0 => format!("{:.2}", x / y),
        _ => "n/a".into(),
    };
    println!(
        "container start: carapace/runc ratio {ratio} (carapace {} ms, runc {} ms)",
        fmt(x),
        fmt(y)
    );
    let Some(x) = x else { bail!("no carapace container started") };
    println!("container start: median {x:.1} ms over {}", ours.len());
    Ok(())
}

/// Where the RAM rootfs sits in the guest (appended to the initramfs).
const RAM_ROOTFS: &str = "ramroot";

/// One VM, one shared read-only rootfs, N containers from it and N from the same rootfs in guest
/// RAM, interleaved; returns ms per create+start (virtio-fs, RAM).
fn carapace_series(image: &GuestImage, n: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    let work = tempfile::Builder::new().prefix("carapace-bench-initramfs-").tempdir()?;
    let image = GuestImage {
        kernel: image.kernel.clone(),
        initramfs: initramfs_with_busybox(&image.initramfs, work.path(), RAM_ROOTFS)?,
    };
    let mut vm = SharedDirVm::boot(&image, "carapace-bench-shared-", |shared| {
        busybox_rootfs(&shared.join("rootfs"))
    })?;
    let rt = carapace_tests::multi_thread_runtime()?;
    let res = rt.block_on(async {
        let agent = vm.connect_agent().await?;
        let mut g = agent.grpc();
        let mut times = Vec::new();
        let mut ram = Vec::new();
        let rootfs_of = |i: usize| -> (PathBuf, &str) {
            if i.is_multiple_of(2) {
                (Path::new(GUEST_SHARED_DIR).join("rootfs"), "virtio-fs")
            } else {
                (Path::new("/").join(RAM_ROOTFS), "RAM")
            }
        };
        // Two untimed warm-up containers (first use of each rootfs's dentries, cgroup setup).
        for i in 0..2 * (n + 1) {
            let (rootfs, kind) = rootfs_of(i);
            let id = format!("bench-{i}");
            let req = pb::CreateContainerRequest {
                id: id.clone(),
                process: Some(pb::Process {
                    args: vec!["sleep".into(), "30".into()],
                    ..Default::default()
                }),
                rootfs_path: rootfs.display().to_string(),
                rootfs_readonly: true,
                hostname: "bench".into(),
                ..Default::default()
            };
            let t = Instant::now();
            g.create_container(req).await.with_context(|| format!("create {id}"))?;
            g.start_container(pb::StartContainerRequest { id: id.clone() })
                .await
                .with_context(|| format!("start {id}"))?;
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            // The process really runs: the agent lists it as running.
            let list = g.list_containers(pb::ListContainersRequest {}).await?.into_inner();
            let state = list.containers.iter().find(|c| c.id == id).map(|c| c.state.clone());
            ensure!(state.as_deref() == Some("running"), "container {id} is {state:?} after start");
            g.remove_container(pb::RemoveContainerRequest { id: id.clone(), force: true })
                .await
                .with_context(|| format!("remove {id}"))?;
            if i < 2 {
                println!("carapace warm-up container ({kind}): {ms:.1} ms (not counted)");
            } else {
                println!("carapace container {} ({kind}): create+start {ms:.1} ms", i / 2);
                if i.is_multiple_of(2) {
                    times.push(ms)
                } else {
                    ram.push(ms)
                }
            }
        }
        agent.shutdown().await.context("shutdown")?;
        Ok::<_, anyhow::Error>((times, ram))
    });
    match res {
        Ok(t) => {
            let _ = vm.vm.wait_exit(Duration::from_secs(30));
            Ok(t)
        }
        Err(e) => Err(e.context(vm.vm.diagnostics())),
    }
}

/// A minimal OCI runtime config for `sleep 30` with a read-only busybox root.
fn runc_config(rootfs: &Path) -> serde_json::Value {
    serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": ["sleep", "30"],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "cwd": "/",
            "noNewPrivileges": true
        },
        "root": {"path": rootfs.display().to_string(), "readonly": true},
        "hostname": "bench",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "nodev"]}
        ],
        "linux": {
            "namespaces": [
                {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
                {"type": "network"}
            ],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list"],
            "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger"]
        }
    })
}

/// Runs runc with its output in `log` (not a pipe: the container inherits runc create's stdio
/// and would hold a pipe open).
fn runc(root: &Path, args: &[&str], log: &Path) -> Result<()> {
    let out = fs::File::create(log)?;
    let st = Command::new("runc")
        .arg("--root")
        .arg(root)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .status()
        .context("runc (Debian package runc)")?;
    ensure!(
        st.success(),
        "runc {}: {st}: {}",
        args.join(" "),
        fs::read_to_string(log).unwrap_or_default().trim()
    );
    Ok(())
}

/// runc create + start of the same busybox rootfs, N times (plus one warm-up).
fn runc_series(n: usize) -> Result<Vec<f64>> {
    let dir = tempfile::Builder::new().prefix("carapace-bench-runc-").tempdir_in("/tmp")?;
    let rootfs = dir.path().join("rootfs");
    busybox_rootfs(&rootfs)?;
    let state = dir.path().join("state");
    fs::create_dir_all(&state)?;
    let config = serde_json::to_vec_pretty(&runc_config(&rootfs))?;
    let log = dir.path().join("runc.log");
    let mut times = Vec::new();
    for i in 0..=n {
        let id = format!("carapace-bench-{}-{i}", std::process::id());
        let bundle = dir.path().join(&id);
        fs::create_dir_all(&bundle)?;
        fs::write(bundle.join("config.json"), &config)?;
        let t = Instant::now();
        let started =
            runc(&state, &["create", "--bundle", &bundle.display().to_string(), &id], &log)
                .and_then(|()| runc(&state, &["start", &id], &log));
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        let cleanup = runc(&state, &["delete", "--force", &id], &log);
        started?;
        cleanup?;
        if i == 0 {
            println!("runc warm-up container: {ms:.1} ms (not counted)");
        } else {
            println!("runc container {i}: create+start {ms:.1} ms");
            times.push(ms);
        }
    }
    Ok(times)
}
